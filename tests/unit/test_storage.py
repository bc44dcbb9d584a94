"""Unit tests of storage.Store: every command, its outcomes, and replica determinism."""

from pathlib import Path
from typing import Any

import lmdb
import pytest

from storage import Store, default_queue_config, keys, normalize_queue_config
from storage.mutation import DEDUP_EXPIRE_LIMIT, DEDUP_EXPIRE_SLACK_MS

START_MS = 1_000_000
WINDOW_MS = 60_000
MAP_SIZE = 64 << 20


class Broker:
    """Feeds commands to a Store one Raft entry at a time, stamping a controllable clock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = 0
        self.now = START_MS
        self.log: list[tuple[int, list[dict[str, Any]]]] = []

    def apply(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        self.index += 1
        stamped = [{"now_ms": self.now, **command} for command in commands]
        results = self.store.apply(self.index, stamped)
        assert results is not None
        self.log.append((self.index, stamped))
        return results

    def run(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.apply({"op": op, **fields})[0]

    def declare(self, queue: str, **config: Any) -> dict[str, Any]:
        return self.run("declare_queue", queue=queue, config=config)

    def publish(
        self, queue: str, *messages: dict[str, Any] | str, window: int = WINDOW_MS
    ) -> dict[str, Any]:
        built = [
            {"id": m, "body": f"body-{m}", "headers": {}} if isinstance(m, str) else m
            for m in messages
        ]
        return self.run("publish", queue=queue, dedup_window_ms=window, messages=built)

    def receive(
        self, queue: str, max_count: int = 10, lease_ms: int = 1000, token: str = "t"
    ) -> list[dict[str, Any]]:
        result = self.run(
            "receive", queue=queue, max=max_count, lease_ms=lease_ms, lease_token=token
        )
        assert result["status"] == "ok"
        messages: list[dict[str, Any]] = result["messages"]
        return messages

    def ack(self, queue: str, *receipts: str) -> dict[str, Any]:
        return self.run("ack", queue=queue, receipts=list(receipts))

    def nack(self, queue: str, *receipts: str, delay_ms: int = 0) -> dict[str, Any]:
        return self.run("nack", queue=queue, receipts=list(receipts), delay_ms=delay_ms)

    def stats(self, queue: str) -> dict[str, Any]:
        stats = self.store.get_queue(queue, self.now)
        assert stats is not None
        return stats


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


def counts(broker: Broker, queue: str) -> tuple[int, int, int, int]:
    s = broker.stats(queue)
    return s["ready"], s["in_flight"], s["delayed"], s["total"]


# Queues


def test_fresh_store_has_applied_nothing(store: Store) -> None:
    assert store.applied_index() == 0
    assert store.list_queues(START_MS) == []
    assert store.nodes() == {}


def test_declare_created_exists_conflict(broker: Broker) -> None:
    created = broker.declare("q", max_length=5)
    assert created == {
        "status": "created",
        "config": {**default_queue_config(), "max_length": 5},
    }
    assert broker.declare("q", max_length=5)["status"] == "exists"
    conflict = broker.declare("q", max_length=6)
    assert conflict == {"status": "conflict", "config": created["config"]}
    assert broker.stats("q")["config"]["max_length"] == 5


def test_normalize_fills_defaults_and_drops_unknown_keys() -> None:
    config = normalize_queue_config({"visibility_timeout_ms": None, "bogus": 1, "max_length": 3})
    assert config == {**default_queue_config(), "max_length": 3}


@pytest.mark.parametrize(
    "config",
    [
        {"visibility_timeout_ms": "30"},
        {"max_length": -1},
        {"max_deliveries": True},
        {"overflow": "sideways"},
        {"dead_letter_queue": "bad name"},
    ],
)
def test_declare_with_bad_config_is_invalid(broker: Broker, config: dict[str, Any]) -> None:
    assert broker.declare("q", **config)["status"] == "invalid"
    assert broker.store.get_queue("q", broker.now) is None


def test_delete_queue_removes_messages_and_dedup(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a", "b")
    assert broker.run("delete_queue", queue="q") == {"status": "deleted"}
    assert broker.store.get_queue("q", broker.now) is None
    assert broker.run("delete_queue", queue="q") == {"status": "not_found"}
    broker.declare("q")
    assert counts(broker, "q") == (0, 0, 0, 0)
    broker.publish("q", "a")
    assert ids(broker.receive("q")) == ["a"]


def test_purge_removes_every_state(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a", "b", {"id": "c", "body": "", "headers": {}, "delay_ms": 500})
    [leased] = broker.receive("q", max_count=1)
    assert counts(broker, "q") == (1, 1, 1, 3)
    assert broker.run("purge_queue", queue="q") == {"status": "purged", "purged": 3}
    assert counts(broker, "q") == (0, 0, 0, 0)
    assert broker.ack("q", leased["receipt"])["stale"] == [leased["receipt"]]
    assert broker.run("purge_queue", queue="nope") == {"status": "not_found"}
    assert broker.stats("q")["published_total"] == 3


def test_purge_keeps_dedup_entries(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a")
    broker.run("purge_queue", queue="q")
    broker.publish("q", "a", "b")
    assert ids(broker.receive("q")) == ["b"]


def test_list_queues_sorted(broker: Broker) -> None:
    for name in ("b", "a.x", "a", "C"):
        broker.declare(name)
    assert [q["name"] for q in broker.store.list_queues(broker.now)] == ["C", "a", "a.x", "b"]


# Publish and receive


def test_fifo_and_receipt_format(broker: Broker) -> None:
    broker.declare("q")
    published = broker.publish("q", *(f"m{i}" for i in range(20)))
    assert published == {"status": "ok", "ids": [f"m{i}" for i in range(20)]}
    first = broker.receive("q", max_count=5, token="tok")
    assert ids(first) == [f"m{i}" for i in range(5)]
    assert [m["receipt"] for m in first] == [f"{seq:x}.tok" for seq in range(1, 6)]
    assert first[0] == {
        "id": "m0",
        "body": "body-m0",
        "headers": {},
        "receipt": "1.tok",
        "deliveries": 1,
        "published_at": START_MS,
    }
    assert ids(broker.receive("q", max_count=100)) == [f"m{i}" for i in range(5, 20)]
    assert broker.receive("q") == []


def test_queues_published_in_turn_keep_their_own_order(broker: Broker) -> None:
    """New keys are appended (MDB_APPEND) when they sort last; "a"'s never do once
    "b" holds messages, and are put the ordinary way."""
    broker.declare("a")
    broker.declare("b")
    for i in range(50):
        broker.publish("b", f"b{i}")
        broker.publish("a", f"a{i}")
    assert ids(broker.receive("a", max_count=100)) == [f"a{i}" for i in range(50)]
    assert ids(broker.receive("b", max_count=100)) == [f"b{i}" for i in range(50)]


def test_a_queue_filled_in_order_fills_its_pages(broker: Broker) -> None:
    """LMDB splits a full page in the middle: keys added in order left each page half
    empty, one 1 KiB message (base64: 1,368 chars) a 4 KiB page. Appended, two share
    a page."""
    broker.declare("q")
    body = "x" * 1368
    messages = [{"id": f"m{i:05}", "body": body, "headers": {}} for i in range(1000)]
    before = broker.store.live_bytes()
    for start in range(0, 1000, 100):
        assert broker.publish("q", *messages[start : start + 100])["status"] == "ok"
    assert (broker.store.live_bytes() - before) / 1000 < 3 * 1024


def test_publish_keeps_headers_and_base64_encoding(broker: Broker) -> None:
    broker.declare("q")
    broker.publish(
        "q",
        {"id": "a", "body": "aGk=", "headers": {"k": "v", "n": 1}, "encoding": "base64"},
        {"id": "b", "body": "plain", "headers": {}, "encoding": None},
    )
    a, b = broker.receive("q")
    assert (a["encoding"], a["body"], a["headers"]) == ("base64", "aGk=", {"k": "v", "n": 1})
    assert "encoding" not in b


def test_unknown_queue_is_not_found(broker: Broker) -> None:
    assert broker.publish("nope", "a") == {"status": "not_found"}
    assert broker.run("receive", queue="nope", max=1, lease_ms=1, lease_token="t") == {
        "status": "not_found"
    }
    assert broker.ack("nope", "1.t") == {"status": "not_found"}
    assert broker.nack("nope", "1.t") == {"status": "not_found"}


def test_lease_expiry_redelivers_with_more_deliveries(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a", "b")
    [first] = broker.receive("q", max_count=1, lease_ms=100, token="t1")
    assert counts(broker, "q") == (1, 1, 0, 2)
    broker.now += 100
    assert counts(broker, "q") == (2, 0, 0, 2)
    assert broker.ack("q", first["receipt"]) == {
        "status": "ok",
        "acked": 0,
        "stale": [first["receipt"]],
    }
    again = broker.receive("q", max_count=2, token="t2")
    assert ids(again) == ["a", "b"]
    assert [m["deliveries"] for m in again] == [2, 1]
    assert again[0]["receipt"] == "1.t2"


def test_ack_validity(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a", "b")
    a, b = broker.receive("q", token="tok")
    bad = ["", "zz", "1", "1.", "01.tok", "1.other", "ff.tok", "0x1.tok", a["receipt"]]
    result = broker.ack("q", a["receipt"], *bad)
    assert result == {"status": "ok", "acked": 1, "stale": bad}
    assert broker.run("ack", queue="q", receipts=[7, None, b["receipt"]]) == {
        "status": "ok",
        "acked": 1,
        "stale": [7, None],
    }
    stats = broker.stats("q")
    assert (stats["total"], stats["acked_total"], stats["delivered_total"]) == (0, 2, 2)


def test_nack_requeues_at_original_position(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a", "b", "c")
    a, b = broker.receive("q", max_count=2)
    assert broker.nack("q", b["receipt"], a["receipt"], a["receipt"]) == {
        "status": "ok",
        "requeued": 2,
        "stale": [a["receipt"]],
    }
    assert ids(broker.receive("q", token="t2")) == ["a", "b", "c"]


def test_nack_with_delay(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a", "b")
    [a] = broker.receive("q", max_count=1)
    assert broker.nack("q", a["receipt"], delay_ms=300)["requeued"] == 1
    assert counts(broker, "q") == (1, 0, 1, 2)
    assert broker.store.next_due_ms("q") == broker.now + 300
    assert ids(broker.receive("q", token="t2")) == ["b"]
    broker.now += 300
    again = broker.receive("q", token="t3")
    assert ids(again) == ["a"]
    assert again[0]["deliveries"] == 2


def test_delays_from_queue_and_message(broker: Broker) -> None:
    broker.declare("q", delivery_delay_ms=200)
    broker.publish(
        "q",
        "late",
        {"id": "now", "body": "", "headers": {}, "delay_ms": 0},
        {"id": "later", "body": "", "headers": {}, "delay_ms": 500},
    )
    assert counts(broker, "q") == (1, 0, 2, 3)
    assert broker.store.next_due_ms("q") == broker.now + 200
    assert ids(broker.receive("q")) == ["now"]
    assert not broker.store.has_deliverable("q", broker.now)
    broker.now += 200
    assert broker.store.has_deliverable("q", broker.now)
    assert counts(broker, "q") == (1, 1, 1, 3)
    assert ids(broker.receive("q")) == ["late"]
    broker.now += 300
    assert ids(broker.receive("q")) == ["later"]


def test_has_deliverable_and_next_due(broker: Broker) -> None:
    broker.declare("q")
    assert not broker.store.has_deliverable("q", broker.now)
    assert broker.store.next_due_ms("q") is None
    assert not broker.store.has_deliverable("missing", broker.now)
    assert broker.store.next_due_ms("missing") is None
    broker.publish("q", "a")
    assert broker.store.has_deliverable("q", broker.now)
    broker.receive("q", lease_ms=50)
    assert not broker.store.has_deliverable("q", broker.now)
    assert broker.store.next_due_ms("q") == broker.now + 50
    assert broker.store.has_deliverable("q", broker.now + 50)


def test_stats_count_due_timers_before_any_receive(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a", "b", "c", {"id": "d", "body": "", "headers": {}, "delay_ms": 100})
    broker.receive("q", max_count=1, lease_ms=50)
    broker.receive("q", max_count=1, lease_ms=500)
    assert counts(broker, "q") == (1, 2, 1, 4)
    broker.now += 100
    assert counts(broker, "q") == (3, 1, 0, 4)
    stats = broker.stats("q")
    assert (stats["published_total"], stats["delivered_total"]) == (4, 2)


# Dead-lettering


def test_max_deliveries_moves_to_dead_letter_queue(broker: Broker) -> None:
    broker.declare("dlq")
    broker.declare("q", max_deliveries=2, dead_letter_queue="dlq")
    broker.publish("q", {"id": "a", "body": "x", "headers": {"h": "1"}}, "b")
    for attempt in (1, 2):
        got = broker.receive("q", max_count=1, lease_ms=10, token=f"t{attempt}")
        assert [(m["id"], m["deliveries"]) for m in got] == [("a", attempt)]
        broker.now += 10
    assert ids(broker.receive("q", max_count=1)) == ["b"]
    [dead] = broker.receive("dlq")
    assert dead["id"] == "a"
    assert dead["body"] == "x"
    assert dead["deliveries"] == 1
    assert dead["headers"] == {
        "h": "1",
        "x-dead-letter-reason": "max_deliveries",
        "x-dead-letter-source": "q",
    }
    assert broker.stats("q")["dead_lettered_total"] == 1
    assert broker.stats("dlq")["published_total"] == 1


def test_ttl_expiry_moves_to_dead_letter_queue(broker: Broker) -> None:
    broker.declare("dlq", message_ttl_ms=5000)
    broker.declare("q", message_ttl_ms=100, dead_letter_queue="dlq")
    broker.publish("q", "a", "b")
    broker.now += 100
    broker.publish("q", "c")
    assert ids(broker.receive("q")) == ["c"]
    dead = broker.receive("dlq")
    assert ids(dead) == ["a", "b"]
    assert {m["headers"]["x-dead-letter-reason"] for m in dead} == {"expired"}
    assert dead[0]["published_at"] == broker.now
    assert broker.stats("q")["dead_lettered_total"] == 2


def test_dead_letters_dropped_without_usable_target(broker: Broker) -> None:
    broker.declare("self", message_ttl_ms=0, dead_letter_queue="self")
    broker.declare("missing", message_ttl_ms=0, dead_letter_queue="gone")
    broker.declare("full", max_length=1)
    broker.declare("q", message_ttl_ms=0, dead_letter_queue="full")
    for name in ("self", "missing", "q"):
        broker.publish(name, "a", "b")
        assert broker.receive(name) == []
        assert broker.stats(name)["dead_lettered_total"] == 2
        assert broker.stats(name)["total"] == 0
    assert ids(broker.receive("full")) == ["a"]


def test_dead_letter_into_drop_head_queue_is_not_forwarded_again(broker: Broker) -> None:
    broker.declare("last")
    broker.declare("dlq", max_length=1, overflow="drop_head", dead_letter_queue="last")
    broker.declare("q", message_ttl_ms=0, dead_letter_queue="dlq")
    broker.publish("q", "a", "b")
    assert broker.receive("q") == []
    assert ids(broker.receive("dlq")) == ["b"]
    assert broker.stats("dlq")["dead_lettered_total"] == 1
    assert broker.stats("last")["total"] == 0


# Overflow


def test_reject_publish_rejects_whole_batch_and_changes_nothing(broker: Broker) -> None:
    broker.declare("q", max_length=3)
    broker.publish("q", "a", "b")
    before = broker.stats("q")
    result = broker.publish("q", "c", "d")
    assert result["status"] == "queue_full"
    assert isinstance(result["message"], str)
    assert broker.stats("q") == before
    assert broker.publish("q", "a", "c", "c")["status"] == "ok"
    assert ids(broker.receive("q")) == ["a", "b", "c"]


def test_drop_head_dead_letters_oldest(broker: Broker) -> None:
    broker.declare("dlq")
    broker.declare("q", max_length=2, overflow="drop_head", dead_letter_queue="dlq")
    broker.publish("q", "a", "b")
    broker.receive("q", max_count=1)
    assert broker.publish("q", "c", "d") == {"status": "ok", "ids": ["c", "d"]}
    assert ids(broker.receive("q")) == ["c", "d"]
    dead = broker.receive("dlq")
    assert ids(dead) == ["a", "b"]
    assert {m["headers"]["x-dead-letter-reason"] for m in dead} == {"max_length"}
    stats = broker.stats("q")
    assert (stats["total"], stats["in_flight"], stats["dead_lettered_total"]) == (2, 2, 2)


# Deduplication


def test_dedup_within_window_and_batch(broker: Broker) -> None:
    broker.declare("q")
    assert broker.publish("q", "a", "a", "b")["ids"] == ["a", "a", "b"]
    broker.now += WINDOW_MS - 1
    assert broker.publish("q", "a", "c")["ids"] == ["a", "c"]
    assert ids(broker.receive("q")) == ["a", "b", "c"]
    assert broker.stats("q")["published_total"] == 3


def test_dedup_forgets_after_window(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a")
    broker.now += WINDOW_MS
    broker.publish("q", "a")
    assert broker.stats("q")["published_total"] == 2
    broker.now += WINDOW_MS - 1
    broker.publish("q", "a")
    received = broker.receive("q")
    assert [m["published_at"] for m in received] == [START_MS, START_MS + WINDOW_MS]


def test_dedup_is_per_queue_and_off_with_zero_window(broker: Broker) -> None:
    broker.declare("q")
    broker.declare("r")
    broker.publish("q", "a")
    broker.publish("r", "a")
    broker.publish("q", "z", "z", window=0)
    assert ids(broker.receive("q")) == ["a", "z", "z"]
    assert ids(broker.receive("r")) == ["a"]


def test_dedup_of_long_ids(broker: Broker) -> None:
    broker.declare("q")
    long_a = "a" * 1000
    long_b = "a" * 999 + "b"
    broker.publish("q", long_a, long_b, long_a)
    assert ids(broker.receive("q")) == [long_a, long_b]


def _entries(store: Store, tmp_path: Path, db_name: bytes) -> int:
    copy = tmp_path / "inspect"
    store.copy_to(str(copy))
    with lmdb.open(str(copy), max_dbs=16, readonly=True, lock=False) as env:
        db = env.open_db(db_name, create=False)
        with env.begin() as txn:
            return txn.stat(db)["entries"]


def test_dedup_entries_expire_lazily_in_bounded_steps(broker: Broker, tmp_path: Path) -> None:
    broker.declare("q")
    count = DEDUP_EXPIRE_LIMIT + 10
    broker.publish("q", *(f"m{i}" for i in range(count)))
    broker.now += WINDOW_MS
    broker.publish("q", "fresh")
    # Outdated, but not yet by the slack: kept on disk, no longer duplicates.
    assert _entries(broker.store, tmp_path, b"dedup") == count + 1
    assert broker.publish("q", "m0")["ids"] == ["m0"]
    broker.now += DEDUP_EXPIRE_SLACK_MS
    broker.publish("q")
    # The oldest chunk of DEDUP_EXPIRE_LIMIT went (m0 stays: published again since).
    assert _entries(broker.store, tmp_path / "2", b"dedup") == 12
    broker.publish("q")
    assert _entries(broker.store, tmp_path / "3", b"dedup") == 2
    assert _entries(broker.store, tmp_path / "4", b"dedup_age") == 2


# Apply mechanics


def test_replayed_index_returns_none_and_changes_nothing(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a")
    digest = broker.store.digest()
    for index, commands in broker.log:
        assert broker.store.apply(index, commands) is None
    assert broker.store.apply(1, [{"op": "purge_queue", "queue": "q", "now_ms": 0}]) is None
    assert broker.store.digest() == digest
    assert broker.store.applied_index() == 2


def test_same_commands_same_digest_and_copy(broker: Broker, tmp_path: Path) -> None:
    broker.declare("dlq")
    broker.declare("q", max_deliveries=1, dead_letter_queue="dlq", max_length=3)
    broker.publish("q", "a", "b", "c")
    [a, _] = broker.receive("q", max_count=2, lease_ms=10)
    broker.ack("q", a["receipt"])
    broker.now += 20
    broker.receive("q")
    broker.run("register_node", raft="h:1", id="n1", http="http://h:2")
    with Store(str(tmp_path / "twin"), map_size=MAP_SIZE) as twin:
        for index, commands in broker.log:
            twin.apply(index, commands)
        assert twin.digest() == broker.store.digest()
    broker.store.copy_to(str(tmp_path / "copy"))
    with Store(str(tmp_path / "copy"), map_size=MAP_SIZE) as copy:
        assert copy.digest() == broker.store.digest()
        assert copy.applied_index() == broker.index
        assert copy.list_queues(broker.now) == broker.store.list_queues(broker.now)


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with Store(path, map_size=MAP_SIZE, sync=True) as store:
        broker = Broker(store)
        broker.declare("q")
        broker.publish("q", "a")
        store.sync()
        digest = store.digest()
    with Store(path, map_size=MAP_SIZE) as store:
        assert store.path == path
        assert store.applied_index() == 2
        assert store.digest() == digest


def test_clock_never_runs_backwards(broker: Broker) -> None:
    broker.declare("q")
    broker.publish("q", "a")
    broker.now -= 500
    broker.publish("q", "b")
    first, second = broker.receive("q", lease_ms=100)
    assert first["published_at"] == second["published_at"] == START_MS
    assert broker.stats("q")["in_flight"] == 2
    broker.now = START_MS + 100
    broker.publish("q")
    broker.now = START_MS
    assert broker.stats("q")["ready"] == 2
    assert broker.store.has_deliverable("q", broker.now)
    assert broker.ack("q", first["receipt"])["acked"] == 0


@pytest.mark.parametrize(
    "command",
    [
        {"op": "bogus", "now_ms": 1},
        {"op": "declare_queue", "queue": "q"},
        {"op": "declare_queue", "queue": "q", "now_ms": -1},
        {"op": "declare_queue", "queue": "bad/name", "now_ms": 1},
        {"op": "declare_queue", "queue": "q", "now_ms": 1, "config": []},
        {"op": "publish", "queue": "q", "now_ms": 1, "messages": "x"},
        {"op": "publish", "queue": "q", "now_ms": 1, "messages": [{"id": 1, "body": ""}]},
        {"op": "publish", "queue": "q", "now_ms": 1, "messages": [{"id": "a", "body": b""}]},
        {"op": "receive", "queue": "q", "now_ms": 1, "max": "1", "lease_token": "t"},
        {"op": "ack", "queue": "q", "now_ms": 1, "receipts": "1.t"},
        {"op": "register_node", "raft": "", "id": "n", "http": "h", "now_ms": 1},
        {"op": 3, "now_ms": 1},
    ],
)
def test_malformed_commands_are_invalid(store: Store, command: dict[str, Any]) -> None:
    [result] = store.apply(1, [command]) or []
    assert result["status"] == "invalid"
    assert isinstance(result["message"], str)


def test_failed_command_rolls_back_alone(broker: Broker) -> None:
    broker.declare("q")
    unserializable = {"id": "b", "body": "", "headers": {"set": {1}}}
    results = broker.apply(
        {
            "op": "publish",
            "queue": "q",
            "dedup_window_ms": WINDOW_MS,
            "messages": [
                {"id": "a", "body": "", "headers": {}},
                unserializable,
            ],
        },
        {
            "op": "publish",
            "queue": "q",
            "dedup_window_ms": WINDOW_MS,
            "messages": [
                {"id": "c", "body": "", "headers": {}},
            ],
        },
    )
    assert [r["status"] for r in results] == ["invalid", "ok"]
    assert broker.store.applied_index() == broker.index
    assert ids(broker.receive("q")) == ["c"]
    assert broker.stats("q")["published_total"] == 1


def test_command_that_is_not_an_object_is_invalid(broker: Broker) -> None:
    not_a_command: Any = "declare_queue"
    results = broker.store.apply(
        1, [not_a_command, {"op": "declare_queue", "queue": "q", "now_ms": 1}]
    )
    assert results is not None
    assert [r["status"] for r in results] == ["invalid", "created"]


def test_receive_defaults_lease_to_visibility_timeout(broker: Broker) -> None:
    broker.declare("q", visibility_timeout_ms=250)
    broker.publish("q", "a")
    broker.run("receive", queue="q", max=1, lease_token="t")
    assert broker.store.next_due_ms("q") == broker.now + 250


# Node registry


def test_register_and_unregister_nodes(broker: Broker) -> None:
    assert broker.run("register_node", raft="h:1", id="n1", http="http://h:8") == {"status": "ok"}
    broker.now += 5
    broker.run("register_node", raft="h:1", id="n1", http="http://h:9")
    broker.run("register_node", raft="h:2", id="n2", http="http://h2:9")
    assert broker.store.nodes() == {
        "h:1": {"id": "n1", "http": "http://h:9", "raft": "h:1", "registered_at": START_MS + 5},
        "h:2": {"id": "n2", "http": "http://h2:9", "raft": "h:2", "registered_at": START_MS + 5},
    }
    assert broker.run("unregister_node", raft="h:1") == {"status": "ok"}
    assert broker.run("unregister_node", raft="h:1") == {"status": "not_found"}
    assert list(broker.store.nodes()) == ["h:2"]


def test_a_receive_stops_once_its_bodies_reach_the_byte_bound(broker: Broker) -> None:
    """`max` times the message size could be a gigabyte; one lease is bounded instead."""
    broker.declare("big")
    body = "x" * 1_000_000
    for i in range(10):
        broker.publish("big", {"id": f"m{i}", "body": body, "headers": {}})
    first = broker.receive("big", max_count=10)
    # 4,000,000 bytes after four bodies is under RECEIVE_MAX_BYTES (4 MiB): five.
    assert ids(first) == [f"m{i}" for i in range(5)]
    assert ids(broker.receive("big", max_count=10)) == [f"m{i}" for i in range(5, 10)]
    broker.declare("huge")
    broker.publish("huge", {"id": "h", "body": "y" * (5 << 20), "headers": {}})
    assert ids(broker.receive("huge", max_count=10)) == ["h"]  # always at least one


def test_an_id_published_again_after_the_window_outlives_its_first_publish(
    broker: Broker,
) -> None:
    """One age entry per publish: when it expires, ids published again since are kept."""
    broker.declare("q")
    broker.publish("q", "a", "b")
    broker.now += WINDOW_MS + DEDUP_EXPIRE_SLACK_MS
    broker.publish("q", "a")  # forgets the first publish's b, not its a
    broker.now += 1
    assert broker.publish("q", "a", "b")["ids"] == ["a", "b"]
    assert ids(broker.receive("q")) == ["a", "b", "a", "b"]


def test_age_entries_of_single_ids_written_before_batches_still_expire(
    broker: Broker, tmp_path: Path
) -> None:
    """A store written before age entries were batched holds one entry per id (value b"")."""
    broker.declare("q")
    store = broker.store
    with store._env.begin(write=True) as txn:  # as an earlier version wrote them
        raw = txn.get(b"q", db=store._dbs.queues)
        assert raw is not None
        record = keys.decode(raw)
        dkey = keys.generation_prefix("q", record.get("dgen", 0))
        for idk in (b"old-1", b"old-2"):
            txn.put(keys.dedup_key(dkey, idk), keys.dedup_value(0, START_MS), db=store._dbs.dedup)
            txn.put(keys.dedup_age_key(dkey, START_MS, idk), b"", db=store._dbs.dedup_age)
    assert broker.publish("q", "old-1")["ids"] == ["old-1"]
    assert ids(broker.receive("q")) == []  # remembered: a duplicate
    broker.now += WINDOW_MS + DEDUP_EXPIRE_SLACK_MS
    broker.publish("q", "new")
    assert _entries(store, tmp_path, b"dedup") == 1
    assert _entries(store, tmp_path / "2", b"dedup_age") == 1
    assert ids(broker.receive("q")) == ["new"]
    assert broker.publish("q", "old-2")["ids"] == ["old-2"]
    assert ids(broker.receive("q")) == ["old-2"]


def test_idkeys_pack_and_unpack() -> None:
    idks = [b"a", b"x" * 255, keys.idkey("y" * 1000), b""]
    assert keys.unpack_idkeys(keys.pack_idkeys(idks)) == idks
