"""Receives and settles of batches spanning many LMDB pages, with dead letters in between.

A command reads and writes messages, ready entries and timers through one
cursor per database (storage.mutation): these check that the records, the
indexes and the counters stay in step when one command touches hundreds of
pages and writes another queue's keys between its own.
"""

from typing import Any

from storage import Store, keys
from tests.unit.test_storage import Broker, counts, ids

BODY = "x" * 1000  # about two messages per 4 KiB page


def index_problems(store: Store) -> list[str]:
    """Where a queue's ready and timers entries or counters disagree with its messages."""

    def check(txn: Any, dbs: Any) -> list[str]:
        problems = []
        with txn.cursor(db=dbs.queues) as cursor:
            queues = [(key.decode(), keys.decode(value)) for key, value in cursor]
        for name, record in queues:
            prefix = keys.messages_prefix(name, record)
            ready: set[bytes] = set()
            timers: dict[bytes, bytes] = {}
            states = {"ready": 0, "delayed": 0, "leased": 0}
            with txn.cursor(db=dbs.messages) as cursor:
                for key, value in cursor:
                    if not key.startswith(prefix):
                        continue
                    message = keys.decode(value)
                    seq = keys.seq_of(prefix, key)
                    states[message["state"]] += 1
                    if message["state"] == "ready":
                        ready.add(key)
                    elif message["state"] == "delayed":
                        timers[keys.timer_key(prefix, message["due"], seq)] = keys.TIMER_DELAYED
                    else:
                        timers[keys.timer_key(prefix, message["deadline"], seq)] = keys.TIMER_LEASE
            with txn.cursor(db=dbs.ready) as cursor:
                if {k for k in cursor.iternext(values=False) if k.startswith(prefix)} != ready:
                    problems.append(f"{name}: ready entries")
            with txn.cursor(db=dbs.timers) as cursor:
                if {k: v for k, v in cursor if k.startswith(prefix)} != timers:
                    problems.append(f"{name}: timers")
            counters = record["counters"]
            expected = {f"{state}_count": count for state, count in states.items()}
            expected["total"] = sum(states.values())
            if {counter: counters[counter] for counter in expected} != expected:
                problems.append(f"{name}: counters {counters} for {expected}")
        return problems

    return store.view(check)


def test_batches_over_many_pages_keep_indexes_and_counters_in_step(broker: Broker) -> None:
    for name in ("a", "dlq", "z"):
        broker.declare(name)
    broker.declare("q", max_deliveries=2, dead_letter_queue="dlq")
    for batch in range(4):
        ids_ = [f"m{batch * 100 + i:03}" for i in range(100)]
        broker.publish("q", *({"id": i, "body": BODY, "headers": {}} for i in ids_))
        broker.publish("a", {"id": f"a{batch}", "body": BODY, "headers": {}})
        broker.publish("z", {"id": f"z{batch}", "body": BODY, "headers": {}})

    first = broker.receive("q", max_count=300, lease_ms=10, token="t1")
    assert ids(first) == [f"m{i:03}" for i in range(300)]
    acked = broker.ack("q", *(m["receipt"] for m in first[0::3]))
    assert (acked["acked"], acked["stale"]) == (100, [])
    assert broker.nack("q", *(m["receipt"] for m in first[1::3]), delay_ms=5)["requeued"] == 100
    assert counts(broker, "q") == (100, 100, 100, 300)
    assert index_problems(broker.store) == []

    # Leases of first[2::3] end, delays of first[1::3] too: all 300 are delivered again.
    broker.now += 10
    second = broker.receive("q", max_count=1000, lease_ms=1000, token="t2")
    assert sorted(ids(second)) == sorted(ids(first[1::3] + first[2::3])) + [
        f"m{i}" for i in range(300, 400)
    ]
    assert broker.nack("q", *(m["receipt"] for m in second))["requeued"] == 300
    assert index_problems(broker.store) == []

    # 200 messages are out of deliveries: one receive dead-letters them into dlq
    # between the leases of the 100 others.
    third = broker.receive("q", max_count=1000, token="t3")
    assert ids(third) == [f"m{i}" for i in range(300, 400)]
    assert index_problems(broker.store) == []
    stale = [m["receipt"] for m in second[:5]]
    assert broker.ack("q", *stale, *(m["receipt"] for m in third)) == {
        "status": "ok",
        "acked": 100,
        "stale": stale,
    }
    assert index_problems(broker.store) == []
    stats = broker.stats("q")
    assert counts(broker, "q") == (0, 0, 0, 0)
    assert (stats["acked_total"], stats["delivered_total"], stats["dead_lettered_total"]) == (
        200,
        700,
        200,
    )
    dead = broker.receive("dlq", max_count=1000)
    assert ids(dead) == sorted(ids(first[1::3] + first[2::3]))
    assert {m["headers"]["x-dead-letter-reason"] for m in dead} == {"max_deliveries"}
    assert ids(broker.receive("a")) == ["a0", "a1", "a2", "a3"]
    assert ids(broker.receive("z")) == ["z0", "z1", "z2", "z3"]
    assert index_problems(broker.store) == []
