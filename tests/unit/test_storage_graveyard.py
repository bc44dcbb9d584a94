"""Deleting or purging a queue, or deleting a stream, is one bounded step; "reap" clears up."""

from typing import Any

from storage import Store, keys, streams
from storage.mutation import REAP_MAPPED_CHECK
from tests.unit.test_storage import Broker, counts, ids
from tests.unit.test_storage_pubsub import PubSub

MESSAGE_DBS = ("messages", "ready", "timers", "dedup", "dedup_age")
STREAM_DBS = ("records", "stream_dedup", "stream_dedup_age", "groups")


def keys_of(store: Store, name: str, db_names: tuple[str, ...] = MESSAGE_DBS) -> dict[str, int]:
    """Keys per database under any generation of queue or stream `name` (qkey or gkey)."""
    prefixes = (keys.qkey(name), name.encode() + b"\x01")

    def count(txn: Any, dbs: Any) -> dict[str, int]:
        out = {}
        for db_name in db_names:
            with txn.cursor(db=getattr(dbs, db_name)) as cursor:
                out[db_name] = sum(
                    1 for key in cursor.iternext(values=False) if key.startswith(prefixes)
                )
        return out

    return store.view(count)


def publish_many(broker: Broker, queue: str, count: int, start: int = 0) -> None:
    for first in range(start, start + count, 500):
        batch = [f"m{i}" for i in range(first, min(first + 500, start + count))]
        assert broker.publish(queue, *batch)["status"] == "ok"


def reap_all(broker: Broker, max_keys: int) -> int:
    """Reap until nothing is buried; returns the number of reap commands."""
    rounds = 0
    while True:
        result = broker.run("reap", max_keys=max_keys)
        assert result["status"] == "ok" and result["removed"] <= max_keys
        rounds += 1
        if not result["more"]:
            assert not broker.store.has_buried()
            return rounds
        assert broker.store.has_buried()


def test_a_reap_looks_at_the_mapped_bytes_every_few_hundred_keys(broker: Broker) -> None:
    """A reap reads the first page of every large record it removes (and the kernel maps
    the cached pages around it): it lets the store bound what is mapped as it goes."""
    broker.declare("big")
    publish_many(broker, "big", 3000)
    assert broker.run("delete_queue", queue="big") == {"status": "deleted"}
    removed = sum(keys_of(broker.store, "big").values())
    looks: list[int] = []

    def look() -> bool:
        looks.append(1)
        return False

    broker.store.bound_mapped_pages = look  # type: ignore[method-assign]
    result = broker.run("reap", max_keys=100_000)
    assert result["removed"] == removed and not result["more"]
    # Every REAP_MAPPED_CHECK keys of each database: at least one look per full chunk.
    assert len(looks) >= removed // REAP_MAPPED_CHECK - len(MESSAGE_DBS)
    assert len(looks) >= 20


def test_delete_buries_the_keys_and_reap_removes_them_in_bounded_steps(broker: Broker) -> None:
    broker.declare("big")
    publish_many(broker, "big", 2000)
    broker.receive("big", max_count=10)
    before = keys_of(broker.store, "big")
    assert before["messages"] == 2000 and before["dedup"] == 2000
    assert broker.run("delete_queue", queue="big") == {"status": "deleted"}
    assert broker.store.get_queue("big", broker.now) is None
    assert keys_of(broker.store, "big") == before  # nothing removed yet: one cheap step
    assert broker.store.has_buried()
    total = sum(before.values())
    assert reap_all(broker, max_keys=1000) == -(-total // 1000)
    assert keys_of(broker.store, "big") == dict.fromkeys(MESSAGE_DBS, 0)


def test_a_queue_declared_again_is_untouched_by_reaping_the_old_one(broker: Broker) -> None:
    broker.declare("q")
    publish_many(broker, "q", 600)
    broker.run("delete_queue", queue="q")
    broker.declare("q")
    assert counts(broker, "q") == (0, 0, 0, 0)
    # The new generation does not know the old ids: "m1" is a new message here.
    broker.publish("q", "m1", "fresh")
    reap_all(broker, max_keys=100)
    assert counts(broker, "q") == (2, 0, 0, 2)
    assert ids(broker.receive("q")) == ["m1", "fresh"]
    assert keys_of(broker.store, "q")["messages"] == 2


def test_purge_is_one_step_and_the_queue_goes_on_under_a_new_generation(
    broker: Broker,
) -> None:
    broker.declare("q")
    publish_many(broker, "q", 1500)
    [leased] = broker.receive("q", max_count=1)
    assert broker.run("purge_queue", queue="q") == {"status": "purged", "purged": 1500}
    assert counts(broker, "q") == (0, 0, 0, 0)
    assert broker.store.has_buried()
    broker.publish("q", "after", "m7")  # m7 was published before the purge: a duplicate
    reap_all(broker, max_keys=700)
    assert ids(broker.receive("q")) == ["after"]
    assert broker.ack("q", leased["receipt"])["stale"] == [leased["receipt"]]
    remaining = keys_of(broker.store, "q")
    assert remaining["messages"] == 1 and remaining["dedup"] == 1501


def test_an_empty_queue_leaves_nothing_to_reap(broker: Broker) -> None:
    broker.declare("empty")
    broker.run("purge_queue", queue="empty")
    broker.run("delete_queue", queue="empty")
    assert not broker.store.has_buried()
    assert broker.run("reap", max_keys=10) == {"status": "ok", "removed": 0, "more": False}


def test_reap_needs_a_positive_bound(broker: Broker) -> None:
    assert broker.run("reap", max_keys=0)["status"] == "invalid"
    assert broker.run("reap")["status"] == "invalid"


def to_generation_zero(
    store: Store, records_db: str, name: str, fields: tuple[str, ...], db_names: tuple[str, ...]
) -> None:
    """Rewrite `name` as a store from before generations wrote it: its keys under qkey.

    `fields` are the generation fields of its record in `records_db` (all hold one
    generation here), dropped from the record as the keys move.
    """
    with store._env.begin(write=True) as txn:
        dbs = store._dbs
        raw = txn.get(name.encode(), db=getattr(dbs, records_db))
        assert raw is not None
        record = keys.decode(raw)
        old_prefix = keys.generation_prefix(name, record[fields[0]])
        assert old_prefix != keys.qkey(name)
        for db_name in db_names:
            db = getattr(dbs, db_name)
            moved = [(k, v) for k, v in txn.cursor(db=db) if k.startswith(old_prefix)]
            for key, value in moved:
                txn.delete(key, db=db)
                txn.put(keys.qkey(name) + key[len(old_prefix) :], value, db=db)
        for field in fields:
            del record[field]
        txn.put(name.encode(), keys.encode(record), db=getattr(dbs, records_db))


def test_a_queue_stored_before_generations_works_and_is_reaped(broker: Broker) -> None:
    """Stores written before generations keyed a queue's messages by qkey (generation 0)."""
    broker.declare("old")
    publish_many(broker, "old", 30)
    store = broker.store
    to_generation_zero(store, "queues", "old", ("mgen", "dgen"), MESSAGE_DBS)
    assert counts(broker, "old") == (30, 0, 0, 30)
    assert ids(broker.receive("old", max_count=2)) == ["m0", "m1"]
    broker.publish("old", "m5", "new")  # m5 is still known to dedup
    assert counts(broker, "old") == (29, 2, 0, 31)
    assert broker.run("purge_queue", queue="old")["purged"] == 31
    broker.publish("old", "after")
    broker.run("delete_queue", queue="old")
    reap_all(broker, max_keys=7)
    assert keys_of(store, "old") == dict.fromkeys(MESSAGE_DBS, 0)


# Streams


def append_many(mq: PubSub, stream: str, count: int, start: int = 0) -> None:
    """Append `count` records in batches of 500; every other one has an id ("r<n>")."""
    for first in range(start, start + count, 500):
        batch: list[str | dict[str, Any]] = [
            f"r{i}" if i % 2 == 0 else {"body": f"anonymous {i}"}
            for i in range(first, min(first + 500, start + count))
        ]
        assert mq.append(stream, *batch)["offsets"] == list(range(first, first + len(batch)))


def graves(store: Store) -> list[tuple[int, int, str]]:
    def scan(txn: Any, dbs: Any) -> list[tuple[int, int, str]]:
        with txn.cursor(db=dbs.graveyard) as cursor:
            return [keys.split_graveyard_key(k) for k in cursor.iternext(values=False)]

    return store.view(scan)


def stored_record(store: Store, db_name: str, name: str) -> dict[str, Any]:
    """The JSON record of queue or stream `name` in `db_name` ("queues" or "streams")."""
    raw = store.view(lambda txn, dbs: txn.get(name.encode(), db=getattr(dbs, db_name)))
    assert raw is not None
    record: dict[str, Any] = keys.decode(raw)
    return record


def test_delete_stream_buries_its_keys_and_reap_removes_them_in_bounded_steps(
    store: Store,
) -> None:
    mq = PubSub(store)
    mq.stream("big")
    append_many(mq, "big", 3000)
    mq.run("commit_offset", stream="big", group="g1", offset=1200)
    mq.run("commit_offset", stream="big", group="g2", offset=3000)
    before = keys_of(store, "big", STREAM_DBS)
    assert before == {"records": 3000, "stream_dedup": 1500, "stream_dedup_age": 1500, "groups": 2}
    generation = stored_record(store, "streams", "big")["generation"]
    assert mq.run("delete_stream", stream="big") == {"status": "deleted"}
    assert store.view(lambda txn, dbs: streams.get_stream(txn, dbs, "big")) is None
    assert mq.run("delete_stream", stream="big")["status"] == "stream_not_found"
    assert keys_of(store, "big", STREAM_DBS) == before  # nothing removed yet: one cheap step
    assert store.has_buried()
    assert graves(store) == [(generation, keys.BURIED_STREAM, "big")]
    total = sum(before.values())
    assert reap_all(mq, max_keys=500) == -(-total // 500)
    assert keys_of(store, "big", STREAM_DBS) == dict.fromkeys(STREAM_DBS, 0)
    assert graves(store) == []


def test_a_stream_declared_again_is_untouched_by_reaping_the_old_one(store: Store) -> None:
    mq = PubSub(store)
    mq.stream("s")
    append_many(mq, "s", 1200)
    mq.run("commit_offset", stream="s", group="g", offset=1000)
    mq.run("commit_offset", stream="s", group="old", offset=5)
    mq.run("delete_stream", stream="s")
    assert mq.stream("s")["status"] == "created"
    assert mq.stream_info("s")["records"] == 0 and mq.stream_info("s")["next_offset"] == 0
    assert store.view(lambda txn, dbs: streams.groups(txn, dbs, "s")) == {}
    assert mq.read("s", offset=None, group="g")["records"] == []
    # The new generation does not know the old ids: "r4" is a new record here.
    assert mq.append("s", "r4", "fresh")["offsets"] == [0, 1]
    mq.run("commit_offset", stream="s", group="g", offset=1)
    assert mq.run("reap", max_keys=100)["more"]  # part of the old generation goes first
    assert mq.append("s", "r4", "r6")["offsets"] == [0, 2]
    reap_all(mq, max_keys=100)
    assert [r["id"] for r in mq.read("s")["records"]] == ["r4", "fresh", "r6"]
    assert [r["id"] for r in mq.read("s", offset=None, group="g")["records"]] == ["fresh", "r6"]
    assert store.view(lambda txn, dbs: streams.groups(txn, dbs, "s")) == {"g": 1}
    assert mq.append("s", "fresh", "r6")["offsets"] == [1, 2]  # dedup entries survived
    assert keys_of(store, "s", STREAM_DBS) == {
        "records": 3,
        "stream_dedup": 3,
        "stream_dedup_age": 3,
        "groups": 1,
    }


def test_queues_and_streams_draw_generations_from_one_counter(store: Store) -> None:
    mq = PubSub(store)
    mq.declare("x")
    mq.stream("x")
    mq.declare("y")
    queue, stream = stored_record(store, "queues", "x"), stored_record(store, "streams", "x")
    assert (queue["mgen"], stream["generation"]) == (1, 2)
    mq.publish("x", "m1")
    mq.append("x", "r1")
    mq.run("delete_queue", queue="x")
    mq.run("delete_stream", stream="x")
    assert graves(store) == [
        (1, keys.BURIED_MESSAGES, "x"),
        (1, keys.BURIED_DEDUP, "x"),
        (2, keys.BURIED_STREAM, "x"),
    ]
    mq.stream("x")
    assert stored_record(store, "streams", "x")["generation"] == 4
    reap_all(mq, max_keys=1)
    assert keys_of(store, "x") == dict.fromkeys(MESSAGE_DBS, 0)
    assert keys_of(store, "x", STREAM_DBS) == dict.fromkeys(STREAM_DBS, 0)


def test_an_empty_stream_leaves_nothing_to_reap(store: Store) -> None:
    mq = PubSub(store)
    mq.stream("empty")
    assert mq.run("delete_stream", stream="empty") == {"status": "deleted"}
    assert not store.has_buried()


def test_a_stream_stored_before_generations_works_and_is_reaped(store: Store) -> None:
    """Stores written before generations keyed a stream's keys by skey = qkey (generation 0)."""
    mq = PubSub(store)
    mq.stream("old", max_records=25)
    append_many(mq, "old", 30)
    mq.run("commit_offset", stream="old", group="g", offset=10)
    to_generation_zero(store, "streams", "old", ("generation",), STREAM_DBS)
    assert keys_of(store, "old", STREAM_DBS) == {
        "records": 25,
        "stream_dedup": 15,
        "stream_dedup_age": 15,
        "groups": 1,
    }
    assert [r["offset"] for r in mq.read("old")["records"]] == list(range(5, 30))
    assert mq.read("old", offset=None, group="g")["records"][0]["id"] == "r10"
    assert store.view(lambda txn, dbs: streams.groups(txn, dbs, "old")) == {"g": 10}
    assert mq.append("old", "r2", "new")["offsets"] == [2, 30]  # r2 is still known to dedup
    assert mq.stream_info("old")["first_offset"] == 6  # retention trims generation 0 too
    assert mq.run("commit_offset", stream="old", group="g", offset=31)["status"] == "ok"
    assert "generation" not in stored_record(store, "streams", "old")
    assert mq.run("delete_stream", stream="old") == {"status": "deleted"}
    assert graves(store) == [(0, keys.BURIED_STREAM, "old")]
    mq.stream("old")
    assert mq.append("old", "r2")["offsets"] == [0]
    reap_all(mq, max_keys=7)
    assert [r["id"] for r in mq.read("old")["records"]] == ["r2"]
    assert keys_of(store, "old", STREAM_DBS) == {
        "records": 1,
        "stream_dedup": 1,
        "stream_dedup_age": 1,
        "groups": 0,
    }
