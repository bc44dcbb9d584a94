"""Deleting or purging a queue is one bounded step; its keys are removed later by "reap"."""

from typing import Any

from storage import Store, keys
from tests.unit.test_storage import Broker, counts, ids

MESSAGE_DBS = ("messages", "ready", "timers", "dedup", "dedup_age")


def keys_of(store: Store, name: str) -> dict[str, int]:
    """Keys per database under any generation of queue `name` (qkey or gkey)."""
    prefixes = (keys.qkey(name), name.encode() + b"\x01")

    def count(txn: Any, dbs: Any) -> dict[str, int]:
        out = {}
        for db_name in MESSAGE_DBS:
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


def test_a_queue_stored_before_generations_works_and_is_reaped(broker: Broker) -> None:
    """Stores written before generations keyed a queue's messages by qkey (generation 0)."""
    broker.declare("old")
    publish_many(broker, "old", 30)
    store = broker.store

    def to_generation_zero(txn: Any, dbs: Any) -> None:
        raw = txn.get(b"old", db=dbs.queues)
        record = keys.decode(raw)
        for db_name in MESSAGE_DBS:
            db = getattr(dbs, db_name)
            old_prefix = keys.generation_prefix("old", record["mgen"])
            moved = [(k, v) for k, v in txn.cursor(db=db) if k.startswith(old_prefix)]
            for key, value in moved:
                txn.delete(key, db=db)
                txn.put(keys.qkey("old") + key[len(old_prefix) :], value, db=db)
        del record["mgen"], record["dgen"]
        txn.put(b"old", keys.encode(record), db=dbs.queues)

    with store._env.begin(write=True) as txn:
        to_generation_zero(txn, store._dbs)
    assert counts(broker, "old") == (30, 0, 0, 30)
    assert ids(broker.receive("old", max_count=2)) == ["m0", "m1"]
    broker.publish("old", "m5", "new")  # m5 is still known to dedup
    assert counts(broker, "old") == (29, 2, 0, 31)
    assert broker.run("purge_queue", queue="old")["purged"] == 31
    broker.publish("old", "after")
    broker.run("delete_queue", queue="old")
    reap_all(broker, max_keys=7)
    assert keys_of(store, "old") == dict.fromkeys(MESSAGE_DBS, 0)
