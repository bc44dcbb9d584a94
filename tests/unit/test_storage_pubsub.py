"""Storage commands of exchanges and streams: outcomes, atomicity, retention, determinism."""

from pathlib import Path
from typing import Any

import pytest

from storage import Store, keys, streams
from storage.exchanges import get_exchange
from storage.fields import keys_with_prefix
from storage.mutation import DEDUP_EXPIRE_LIMIT, DEDUP_EXPIRE_SLACK_MS
from tests.unit.test_storage import MAP_SIZE, START_MS, Broker

WINDOW_MS = 60_000


class PubSub(Broker):
    """Broker plus the exchange and stream commands."""

    def exchange(self, name: str, kind: str, alternate: str | None = None) -> dict[str, Any]:
        return self.run("declare_exchange", exchange=name, type=kind, alternate_queue=alternate)

    def bind(self, exchange: str, queue: str, key: str = "") -> dict[str, Any]:
        return self.run("bind", exchange=exchange, queue=queue, routing_key=key)

    def unbind(self, exchange: str, queue: str, key: str = "") -> dict[str, Any]:
        return self.run("unbind", exchange=exchange, queue=queue, routing_key=key)

    def route(self, exchange: str, key: str, *ids: str, window: int = WINDOW_MS) -> dict[str, Any]:
        messages = [{"id": i, "body": f"body-{i}", "headers": {}} for i in ids]
        return self.run(
            "publish_exchange",
            exchange=exchange,
            routing_key=key,
            messages=messages,
            dedup_window_ms=window,
        )

    def ids(self, queue: str) -> list[str]:
        """Ids of every message in the queue, in FIFO order (leases them)."""
        return [m["id"] for m in self.receive(queue, max_count=1000)]

    def stream(self, name: str, **config: Any) -> dict[str, Any]:
        return self.run("declare_stream", stream=name, config=config)

    def append(self, stream: str, *records: str | dict[str, Any], window: int = WINDOW_MS) -> Any:
        built = [{"id": r, "body": f"r-{r}"} if isinstance(r, str) else r for r in records]
        return self.run("append_records", stream=stream, records=built, dedup_window_ms=window)

    def read(self, stream: str, offset: int | None = 0, **kw: Any) -> dict[str, Any]:
        params = {"offset": offset, "group": None, "limit": 1000, "max_bytes": 1 << 30, **kw}
        result = self.store.view(lambda txn, dbs: streams.read_records(txn, dbs, stream, **params))
        assert result is not None
        return result

    def stream_info(self, stream: str) -> dict[str, Any]:
        info = self.store.view(lambda txn, dbs: streams.get_stream(txn, dbs, stream))
        assert info is not None
        return info


@pytest.fixture
def mq(store: Store) -> PubSub:
    return PubSub(store)


# -- exchanges ------------------------------------------------------------------


def test_exchange_copies_count_bound_queues_or_the_alternate(mq: PubSub) -> None:
    for queue in ("q0", "q1", "q2"):
        mq.declare(queue)
    mq.exchange("t", "topic")
    mq.exchange("alt", "fanout", alternate="q0")
    assert mq.store.exchange_copies("t") == 0
    assert mq.store.exchange_copies("alt") == 1  # nothing bound: the alternate queue
    mq.bind("t", "q1", "a.*")
    mq.bind("t", "q1", "#")  # a queue bound twice is still one copy
    mq.bind("t", "q2", "b")
    assert mq.store.exchange_copies("t") == 2
    assert mq.store.exchange_copies("nope") == 0
    assert mq.store.exchange_copies("") == 0


def test_declare_exchange_created_exists_conflict_invalid(mq: PubSub) -> None:
    assert mq.exchange("x", "topic")["status"] == "created"
    assert mq.exchange("x", "topic")["status"] == "exists"
    conflict = mq.exchange("x", "fanout")
    assert conflict["status"] == "exchange_conflict"
    assert conflict["config"] == {"type": "topic", "alternate_queue": None}
    assert mq.exchange("x", "topic", "alt")["status"] == "exchange_conflict"
    assert mq.exchange("y", "headers")["status"] == "invalid"
    assert mq.exchange("bad name", "topic")["status"] == "invalid"
    assert mq.run("delete_exchange", exchange="y")["status"] == "exchange_not_found"


def test_bind_unbind_outcomes(mq: PubSub) -> None:
    assert mq.bind("x", "q", "a")["status"] == "exchange_not_found"
    mq.exchange("x", "direct")
    assert mq.bind("x", "q", "a")["status"] == "not_found"
    mq.declare("q")
    assert mq.bind("x", "q", "a")["status"] == "created"
    assert mq.bind("x", "q", "a")["status"] == "exists"
    assert mq.bind("x", "q", "b")["status"] == "created"
    assert mq.bind("x", "q", "x" * 256)["status"] == "invalid"
    view = mq.store.view(lambda txn, dbs: get_exchange(txn, dbs, "x"))
    assert view is not None
    assert view["bindings"] == [
        {"queue": "q", "routing_key": "a"},
        {"queue": "q", "routing_key": "b"},
    ]
    assert mq.unbind("x", "q", "a")["status"] == "deleted"
    assert mq.unbind("x", "q", "a")["status"] == "binding_not_found"
    assert mq.unbind("x", "other", "b")["status"] == "binding_not_found"
    assert mq.unbind("x", "q", "b")["status"] == "deleted"
    assert _reverse_index(mq, "q") == []


def _reverse_index(mq: PubSub, queue: str) -> list[bytes]:
    prefix = keys.qkey(queue)
    found = mq.store.view(lambda txn, dbs: keys_with_prefix(txn, dbs.queue_bindings, prefix))
    return [key[len(prefix) :] for key, _ in found]


def test_topic_publish_routes_to_each_matching_queue_once(mq: PubSub) -> None:
    mq.exchange("t", "topic")
    for queue in ("all", "eu", "orders", "none"):
        mq.declare(queue)
    mq.bind("t", "all", "#")
    mq.bind("t", "eu", "*.eu.*")
    mq.bind("t", "orders", "orders.#")
    mq.bind("t", "orders", "*.eu.created")  # two matching bindings: still one copy
    mq.bind("t", "none", "nothing")
    result = mq.route("t", "orders.eu.created", "m1", "m2")
    assert result == {
        "status": "ok",
        "routed": {"all": 2, "eu": 2, "orders": 2},
        "unroutable": 0,
        "ids": ["m1", "m2"],
    }
    for queue in ("all", "eu", "orders"):
        assert mq.ids(queue) == ["m1", "m2"]
    assert mq.stats("none")["total"] == 0


def test_unroutable_and_alternate_queue(mq: PubSub) -> None:
    mq.exchange("d", "direct")
    mq.declare("q")
    mq.bind("d", "q", "k")
    assert mq.route("d", "other", "m1") == {
        "status": "ok",
        "routed": {},
        "unroutable": 1,
        "ids": ["m1"],
    }
    mq.exchange("d2", "direct", "alt")  # the alternate queue does not exist yet
    assert mq.route("d2", "k", "m2")["unroutable"] == 1
    mq.declare("alt")
    result = mq.route("d2", "k", "m3", "m4")
    assert (result["routed"], result["unroutable"]) == ({"alt": 2}, 0)
    assert mq.ids("alt") == ["m3", "m4"]
    assert mq.route("missing", "k", "m5")["status"] == "exchange_not_found"


def test_fanout_keeps_ids_and_dedups_per_queue(mq: PubSub) -> None:
    mq.exchange("f", "fanout")
    mq.declare("a")
    mq.declare("b")
    mq.bind("f", "a")
    mq.bind("f", "b", "ignored")
    mq.publish("b", "p1")  # b saw p1 already through a direct publish
    first = mq.route("f", "whatever", "p1", "p2", "p2")
    assert first["routed"] == {"a": 3, "b": 3}
    again = mq.route("f", "", "p1", "p2")
    assert again["routed"] == {"a": 2, "b": 2}  # a retry answers the same
    assert mq.ids("a") == ["p1", "p2"]
    assert mq.ids("b") == ["p1", "p2"]


def test_full_reject_publish_queue_refuses_the_whole_publish(mq: PubSub) -> None:
    mq.exchange("f", "fanout")
    mq.declare("roomy")
    mq.declare("tight", max_length=2, overflow="reject_publish")
    mq.bind("f", "roomy")
    mq.bind("f", "tight")
    assert mq.route("f", "", "m1", "m2")["status"] == "ok"
    before = _queue_state(mq)
    refused = mq.route("f", "", "m3")
    assert refused["status"] == "queue_full"
    assert "tight" in refused["message"]
    assert _queue_state(mq) == before
    assert mq.stats("roomy")["total"] == 2
    # A duplicate of what the full queue already holds fits: dedup runs before the check.
    assert mq.route("f", "", "m2")["routed"] == {"roomy": 1, "tight": 1}


def _queue_state(mq: PubSub) -> list[list[tuple[bytes, bytes]]]:
    """Every entry of the queue databases (not meta, which records the applied index)."""
    names = ("queues", "messages", "ready", "timers", "dedup", "dedup_age")
    return [_entries(mq, n) for n in names]


def _entries(mq: PubSub, db_name: str) -> list[tuple[bytes, bytes]]:
    def scan(txn: Any, dbs: Any) -> list[tuple[bytes, bytes]]:
        return keys_with_prefix(txn, getattr(dbs, db_name), b"")

    return mq.store.view(scan)


def test_drop_head_queue_makes_room(mq: PubSub) -> None:
    mq.exchange("f", "fanout")
    mq.declare("ring", max_length=2, overflow="drop_head")
    mq.bind("f", "ring")
    mq.route("f", "", "m1", "m2", "m3")
    assert mq.ids("ring") == ["m2", "m3"]


def test_deleting_a_queue_removes_its_bindings(mq: PubSub) -> None:
    mq.exchange("t", "topic")
    mq.exchange("f", "fanout")
    mq.declare("q")
    mq.declare("keep")
    mq.bind("t", "q", "a.*")
    mq.bind("t", "keep", "a.*")
    mq.bind("f", "q")
    assert mq.route("t", "a.b", "m1")["routed"] == {"keep": 1, "q": 1}  # warms the cache
    assert sorted(_reverse_index(mq, "q")) == [b"f", b"t"]
    assert mq.run("delete_queue", queue="q")["status"] == "deleted"
    assert _reverse_index(mq, "q") == []
    assert mq.route("t", "a.b", "m2")["routed"] == {"keep": 1}
    assert mq.route("f", "", "m3")["unroutable"] == 1
    mq.declare("q")  # a new queue of the same name is not bound
    assert mq.route("t", "a.b", "m4")["routed"] == {"keep": 1}


def test_deleting_an_exchange_removes_its_bindings(mq: PubSub) -> None:
    mq.exchange("t", "topic")
    mq.declare("q")
    mq.bind("t", "q", "#")
    mq.route("t", "k", "m1")
    assert mq.run("delete_exchange", exchange="t")["status"] == "deleted"
    assert _reverse_index(mq, "q") == []
    mq.exchange("t", "topic")  # recreated: same name, no bindings, a new version
    assert mq.route("t", "k", "m2")["unroutable"] == 1


def test_router_cache_follows_binding_changes(mq: PubSub) -> None:
    mq.exchange("t", "topic")
    mq.declare("a")
    mq.declare("b")
    mq.bind("t", "a", "x.*")
    assert mq.route("t", "x.y", "m1")["routed"] == {"a": 1}
    mq.bind("t", "b", "#.y")
    assert mq.route("t", "x.y", "m2")["routed"] == {"a": 1, "b": 1}
    mq.unbind("t", "a", "x.*")
    assert mq.route("t", "x.y", "m3")["routed"] == {"b": 1}


def _exchange_log() -> list[dict[str, Any]]:
    commands: list[dict[str, Any]] = [
        {"op": "declare_exchange", "exchange": "t", "type": "topic"},
        {"op": "declare_exchange", "exchange": "f", "type": "fanout", "alternate_queue": "q0"},
    ]
    commands += [{"op": "declare_queue", "queue": f"q{i}"} for i in range(4)]
    patterns = ["a.*", "#", "a.#.c", "*.b"]
    for i, pattern in enumerate(patterns):
        commands.append({"op": "bind", "exchange": "t", "queue": f"q{i}", "routing_key": pattern})
    for n, key in enumerate(["a.b", "a.x.c", "z", "a.b"]):
        messages = [{"id": f"m{n}", "body": "x"}]
        commands.append(
            {
                "op": "publish_exchange",
                "exchange": "t",
                "routing_key": key,
                "messages": messages,
                "dedup_window_ms": WINDOW_MS,
            }
        )
        if n == 1:
            commands.append({"op": "unbind", "exchange": "t", "queue": "q1", "routing_key": "#"})
            commands.append({"op": "delete_queue", "queue": "q3"})
    return commands


def test_replicas_agree_whether_or_not_their_router_cache_is_warm(tmp_path: Path) -> None:
    with (
        Store(str(tmp_path / "warm"), map_size=MAP_SIZE) as warm,
        Store(str(tmp_path / "cold"), map_size=MAP_SIZE) as cold,
    ):
        for index, command in enumerate(_exchange_log(), start=1):
            stamped = {"now_ms": START_MS + index, **command}
            assert warm.apply(index, [stamped]) == cold.apply(index, [stamped])
            cold._memo.clear()
        assert warm.digest() == cold.digest()
        reopened_digest = cold.digest()
    with Store(str(tmp_path / "cold"), map_size=MAP_SIZE) as reopened:
        assert reopened.digest() == reopened_digest


# -- streams --------------------------------------------------------------------


def test_declare_stream_created_exists_conflict(mq: PubSub) -> None:
    assert mq.stream("s", max_records=10)["status"] == "created"
    assert mq.stream("s", max_records=10)["status"] == "exists"
    conflict = mq.stream("s")
    assert conflict["status"] == "stream_conflict"
    assert conflict["config"] == {"max_age_ms": None, "max_bytes": None, "max_records": 10}
    assert mq.stream("t", max_records=0)["status"] == "invalid"
    assert mq.run("delete_stream", stream="t")["status"] == "stream_not_found"


def test_append_assigns_dense_offsets_and_dedups(mq: PubSub) -> None:
    assert mq.append("s", "a")["status"] == "stream_not_found"
    mq.stream("s")
    assert mq.append("s", "a", "b", "a")["offsets"] == [0, 1, 0]
    assert mq.append("s", "c", "b")["offsets"] == [2, 1]
    assert mq.append("s", {"body": "no id"}, {"body": "no id"})["offsets"] == [3, 4]
    mq.now += WINDOW_MS + 1  # out of the window: appended again
    assert mq.append("s", "a")["offsets"] == [5]
    read = mq.read("s")
    assert [r["offset"] for r in read["records"]] == [0, 1, 2, 3, 4, 5]
    assert [r["id"] for r in read["records"]] == ["a", "b", "c", None, None, "a"]
    assert read["records"][0] == {
        "offset": 0,
        "id": "a",
        "body": "r-a",
        "headers": {},
        "timestamp": START_MS,
    }
    assert (read["next_offset"], read["first_offset"]) == (6, 0)
    info = mq.stream_info("s")
    assert (info["first_offset"], info["last_offset"], info["records"]) == (0, 5, 6)
    assert info["bytes"] == sum(len(r["body"]) for r in read["records"])


def test_stream_dedup_ids_are_forgotten_in_chunks_once_the_slack_has_passed(mq: PubSub) -> None:
    mq.stream("s")
    count = DEDUP_EXPIRE_LIMIT + 5
    mq.append("s", *(f"r{i}" for i in range(count)))
    mq.now += WINDOW_MS
    # Outdated: appended again, though the old records are not forgotten yet.
    assert mq.append("s", "r0")["offsets"] == [count]
    assert len(_entries(mq, "stream_dedup")) == count
    assert len(_entries(mq, "stream_dedup_age")) == count
    mq.now += DEDUP_EXPIRE_SLACK_MS
    assert mq.append("s", "r0")["offsets"] == [count]  # a duplicate of the new r0
    # One chunk went: the oldest DEDUP_EXPIRE_LIMIT ids (r0 had moved to the newest).
    assert len(_entries(mq, "stream_dedup")) == 5
    mq.append("s")
    assert len(_entries(mq, "stream_dedup")) == 1
    assert len(_entries(mq, "stream_dedup_age")) == 1


def test_read_windows_and_limits(mq: PubSub) -> None:
    mq.stream("s")
    mq.append("s", *[f"r{i}" for i in range(10)])
    page = mq.read("s", offset=3, limit=4)
    assert [r["offset"] for r in page["records"]] == [3, 4, 5, 6]
    assert page["next_offset"] == 7
    end = mq.read("s", offset=10)
    assert (end["records"], end["next_offset"]) == ([], 10)
    past = mq.read("s", offset=50)
    assert (past["records"], past["next_offset"]) == ([], 50)
    one = mq.read("s", offset=0, max_bytes=1)  # always at least one record
    assert [r["offset"] for r in one["records"]] == [0]
    two = mq.read("s", offset=0, max_bytes=len("r-r0") + 1)
    assert [r["offset"] for r in two["records"]] == [0, 1]


def test_max_records_retention_and_reads_below_the_first_offset(mq: PubSub) -> None:
    mq.stream("s", max_records=3)
    mq.append("s", *[f"r{i}" for i in range(5)])
    info = mq.stream_info("s")
    assert (info["first_offset"], info["last_offset"], info["records"]) == (2, 4, 3)
    read = mq.read("s", offset=0)
    assert [r["offset"] for r in read["records"]] == [2, 3, 4]
    assert read["first_offset"] == 2
    # The dedup window remembers trimmed records: the original offset comes back.
    assert mq.append("s", "r0")["offsets"] == [0]


def test_max_bytes_retention_keeps_the_newest_record(mq: PubSub) -> None:
    mq.stream("s", max_bytes=10)
    mq.append("s", {"id": "a", "body": "12345"}, {"id": "b", "body": "12345"})
    assert mq.stream_info("s")["records"] == 2
    mq.append("s", {"id": "c", "body": "1"})
    info = mq.stream_info("s")
    assert (info["first_offset"], info["bytes"]) == (1, 6)
    mq.append("s", {"id": "big", "body": "x" * 50})
    info = mq.stream_info("s")
    assert (info["first_offset"], info["records"], info["bytes"]) == (3, 1, 50)


def test_max_age_retention_trims_on_append_with_command_time(mq: PubSub) -> None:
    mq.stream("s", max_age_ms=1000)
    mq.append("s", "old1", "old2")
    mq.now += 500
    mq.append("s", "mid")
    mq.now += 600  # old1 and old2 are now 1100 ms old, mid 600 ms
    assert mq.stream_info("s")["records"] == 3  # reads never trim
    mq.append("s", "new")
    info = mq.stream_info("s")
    assert (info["first_offset"], info["records"]) == (2, 2)
    mq.now += 5000
    mq.append("s", "newest")
    assert mq.stream_info("s")["first_offset"] == 4


def test_one_append_trims_at_most_the_trim_limit(
    mq: PubSub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "TRIM_LIMIT", 3)
    mq.stream("s", max_age_ms=10)
    mq.append("s", *[f"r{i}" for i in range(8)])
    mq.now += 100
    mq.append("s", "n1")
    assert mq.stream_info("s")["first_offset"] == 3
    mq.append("s", "n2")
    assert mq.stream_info("s")["first_offset"] == 6
    mq.append("s", "n3")
    assert mq.stream_info("s")["first_offset"] == 8  # n1 onwards are young


def test_consumer_group_offsets(mq: PubSub) -> None:
    mq.stream("s")
    mq.append("s", "a", "b", "c")
    assert mq.read("s", offset=None, group="g")["records"][0]["offset"] == 0
    ok = mq.run("commit_offset", stream="s", group="g", offset=2)
    assert ok == {"status": "ok", "offset": 2}
    assert [r["offset"] for r in mq.read("s", offset=None, group="g")["records"]] == [2]
    assert mq.run("commit_offset", stream="s", group="g", offset=3)["status"] == "ok"
    assert mq.run("commit_offset", stream="s", group="g", offset=4)["status"] == "out_of_range"
    assert mq.run("commit_offset", stream="x", group="g", offset=0)["status"] == (
        "stream_not_found"
    )
    assert mq.store.view(lambda txn, dbs: streams.groups(txn, dbs, "s")) == {"g": 3}
    assert mq.run("delete_group", stream="s", group="g") == {"status": "ok", "deleted": True}
    assert mq.run("delete_group", stream="s", group="g") == {"status": "ok", "deleted": False}
    assert mq.store.view(lambda txn, dbs: streams.groups(txn, dbs, "s")) == {}
    assert mq.read("s", offset=None, group="g")["records"][0]["offset"] == 0  # from the start
    assert mq.run("delete_group", stream="x", group="g")["status"] == "stream_not_found"


def test_delete_stream_then_reap_removes_records_dedup_and_groups(mq: PubSub) -> None:
    mq.stream("s")
    mq.append("s", "a", "b")
    mq.run("commit_offset", stream="s", group="g", offset=1)
    assert mq.run("delete_stream", stream="s") == {"status": "deleted"}
    assert _entries(mq, "streams") == []
    assert mq.run("reap", max_keys=100) == {"status": "ok", "removed": 7, "more": False}
    for db in ("records", "stream_dedup", "stream_dedup_age", "groups", "graveyard"):
        left = _entries(mq, db)
        assert left == [], db
    mq.stream("s")
    assert mq.append("s", "a")["offsets"] == [0]
    assert mq.store.view(lambda txn, dbs: streams.group_offset(txn, dbs, "s", "g")) == 0


def test_read_barrier_changes_only_the_applied_index(mq: PubSub) -> None:
    assert mq.run("read_barrier") == {"status": "ok"}
    assert mq.store.applied_index() == mq.index
