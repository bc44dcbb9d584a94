"""Fuzzing Store.apply: garbage commands never raise, refused ones change nothing, replays no-op."""

import base64
import hashlib
import tempfile
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storage import Store, keys
from storage.commands import HANDLERS

MAP_SIZE = 32 << 20
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Statuses that report a change (or an idempotent no-op); every other one is a refusal.
SUCCESS = {"ok", "created", "deleted", "exists", "purged"}

TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
NAMES = st.one_of(st.sampled_from(["a", "b", "x.y", "dlq"]), TEXT, st.just("a\x00b"))
NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=2_000),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63, 2**64, -1, True]),
)
B64_GARBAGE = st.one_of(
    st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="AB=+/-_!\x00", max_size=12),
)
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
OPS = st.one_of(st.sampled_from(sorted(HANDLERS)), TEXT, JUNK)
FIELDS = [
    "queue",
    "exchange",
    "stream",
    "config",
    "messages",
    "max",
    "lease_ms",
    "lease_token",
    "receipts",
    "delay_ms",
    "dedup_window_ms",
    "routing_key",
    "records",
    "group",
    "offset",
    "raft",
    "id",
    "http",
    "name",
    "type",
]


def _message() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries(
            {"id": TEXT, "body": st.one_of(TEXT, B64_GARBAGE), "headers": st.just({})},
            optional={
                "encoding": st.sampled_from(["base64", "utf-8"]),
                "delay_ms": NUMBERS,
            },
        ),
        JUNK,
    )


def _valid_stream(now: st.SearchStrategy[int]) -> st.SearchStrategy[dict[str, Any]]:
    """Stream commands that mostly succeed, deletes and re-declares included."""
    stream = st.sampled_from(["s", "t"])
    record = st.fixed_dictionaries(
        {"body": TEXT}, optional={"id": st.sampled_from(["r1", "r2", "r3"])}
    )
    return st.one_of(
        st.fixed_dictionaries(
            {
                "op": st.just("declare_stream"),
                "stream": stream,
                "now_ms": now,
                "config": st.sampled_from([{}, {"max_records": 2}]),
            }
        ),
        st.fixed_dictionaries(
            {
                "op": st.just("append_records"),
                "stream": stream,
                "now_ms": now,
                "dedup_window_ms": st.just(1000),
                "records": st.lists(record, min_size=1, max_size=3),
            }
        ),
        st.fixed_dictionaries(
            {
                "op": st.just("commit_offset"),
                "stream": stream,
                "group": st.just("g"),
                "offset": st.integers(0, 4),
                "now_ms": now,
            }
        ),
        st.fixed_dictionaries({"op": st.just("delete_stream"), "stream": stream, "now_ms": now}),
    )


def _valid() -> st.SearchStrategy[dict[str, Any]]:
    now = st.integers(min_value=1, max_value=10_000)
    queue = st.sampled_from(["a", "b"])
    return st.one_of(
        _valid_stream(now),
        st.fixed_dictionaries({"op": st.just("declare_queue"), "queue": queue, "now_ms": now}),
        st.fixed_dictionaries(
            {
                "op": st.just("publish"),
                "queue": queue,
                "now_ms": now,
                "dedup_window_ms": st.just(1000),
                "messages": st.lists(
                    st.fixed_dictionaries(
                        {
                            "id": st.sampled_from(["m1", "m2", "m3"]),
                            "body": TEXT,
                            "headers": st.just({}),
                        }
                    ),
                    min_size=1,
                    max_size=3,
                ),
            }
        ),
        st.fixed_dictionaries(
            {
                "op": st.just("receive"),
                "queue": queue,
                "now_ms": now,
                "max": st.integers(1, 5),
                "lease_ms": st.just(1000),
                "lease_token": st.just("t"),
            }
        ),
        st.fixed_dictionaries({"op": st.just("purge_queue"), "queue": queue, "now_ms": now}),
        st.fixed_dictionaries({"op": st.just("delete_queue"), "queue": queue, "now_ms": now}),
        st.fixed_dictionaries(
            {"op": st.just("reap"), "max_keys": st.integers(-2, 50), "now_ms": now}
        ),
    )


def _garbage() -> st.SearchStrategy[Any]:
    shaped = st.fixed_dictionaries(
        {},
        optional={
            "op": OPS,
            "now_ms": NUMBERS,
            "queue": NAMES,
            "messages": st.one_of(st.lists(_message(), max_size=3), JUNK),
            **{field: st.one_of(NAMES, NUMBERS, JUNK) for field in FIELDS if field != "queue"},
        },
    )
    return st.one_of(shaped, st.dictionaries(TEXT, JUNK, max_size=4), JUNK)


COMMANDS = st.lists(st.one_of(_valid(), _garbage()), min_size=1, max_size=25)
# Streams weigh more here: their deletes are the newest kind of graveyard entry.
VALID_COMMANDS = st.lists(
    st.one_of(_valid(), _valid_stream(st.integers(1, 10_000))), min_size=5, max_size=40
)
DECLARE_ALL: list[dict[str, Any]] = [
    *({"op": "declare_queue", "queue": q, "now_ms": 1} for q in ("a", "b")),
    *({"op": "declare_stream", "stream": s, "now_ms": 1} for s in ("s", "t")),
]


def _state(store: Store) -> str:
    """Digest of everything but the meta table (applied index and clock move on every entry)."""

    def digest(txn: Any, dbs: Any) -> str:
        h = hashlib.sha256()
        for name, db in zip(keys.DB_NAMES, dbs, strict=True):
            if name == keys.META:
                continue
            h.update(name + b"\xff")
            with txn.cursor(db=db) as cursor:
                for key, value in cursor:
                    h.update(len(key).to_bytes(4, "big") + key)
                    h.update(len(value).to_bytes(8, "big") + value)
        return h.hexdigest()

    result: str = store.view(digest)
    return result


# The databases whose keys start with a generation prefix, by the record field naming it.
GENERATION_DBS = {
    (keys.QUEUES, "mgen"): (b"messages", b"ready", b"timers"),
    (keys.QUEUES, "dgen"): (b"dedup", b"dedup_age"),
    (keys.STREAMS, "generation"): (b"records", b"stream_dedup", b"stream_dedup_age", b"groups"),
}


def _generation_keys(store: Store) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """(live, orphans) of the databases whose keys start with a generation prefix.

    live: every queue and stream record and every key under a live generation's
    prefix, each with its value; orphans: (database, key) of every other key.
    """

    def scan(txn: Any, dbs: Any) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        by_name = dict(zip(keys.DB_NAMES, dbs, strict=True))
        live_items: list[bytes] = []
        orphans: list[tuple[bytes, bytes]] = []
        for (records_db, field), db_names in GENERATION_DBS.items():
            with txn.cursor(db=by_name[records_db]) as cursor:
                records = list(cursor)
            live_items += [name + b"=" + raw for name, raw in records]
            live = tuple(
                keys.generation_prefix(name.decode(), keys.decode(raw).get(field, 0))
                for name, raw in records
            )
            for db_name in db_names:
                with txn.cursor(db=by_name[db_name]) as cursor:
                    for key, value in cursor:
                        if key.startswith(live):
                            live_items.append(db_name + b":" + key + b"=" + value)
                        else:
                            orphans.append((db_name, key))
        return live_items, orphans

    result: tuple[list[bytes], list[tuple[bytes, bytes]]] = store.view(scan)
    return result


def _buried_kinds(txn: Any, dbs: Any) -> set[int]:
    with txn.cursor(db=dbs.graveyard) as cursor:
        return {keys.split_graveyard_key(k)[1] for k in cursor.iternext(values=False)}


def _reap_to_the_end(store: Store, index: int) -> None:
    """Reap until nothing is buried: deleted and purged queues and deleted streams leave no key."""
    for kind in sorted(store.view(_buried_kinds)):
        event(f"buried kind {kind}")
    reaps = 0
    while store.has_buried():
        reaps += 1
        [reaped] = store.apply(index + reaps, [{"op": "reap", "max_keys": 7, "now_ms": 1}]) or [{}]
        assert reaped["status"] == "ok" and reaped["removed"] <= 7
    event("reaped" if reaps else "nothing buried")
    assert _generation_keys(store)[1] == []


@FUZZ
@given(COMMANDS)
def test_apply_survives_garbage_and_refusals_change_nothing(commands: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as root, Store(root, map_size=MAP_SIZE) as store:
        for index, cmd in enumerate(commands, start=1):
            before = _state(store)
            results = store.apply(index, [cmd])
            assert results is not None and len(results) == 1
            [result] = results
            event(f"status {result.get('status')}")
            assert isinstance(result, dict) and isinstance(result.get("status"), str), result
            if result["status"] not in SUCCESS:
                assert _state(store) == before, (cmd, result)
            full = store.digest()
            assert store.apply(index, [cmd]) is None
            assert store.apply(index, [{"op": "declare_queue", "queue": "z", "now_ms": 1}]) is None
            assert store.digest() == full
        _reap_to_the_end(store, len(commands))


@FUZZ
@given(COMMANDS)
def test_one_entry_of_mixed_commands_never_raises(commands: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as root, Store(root, map_size=MAP_SIZE) as store:
        results = store.apply(1, commands)
        assert results is not None and len(results) == len(commands)
        full = store.digest()
        assert store.apply(1, commands) is None
        assert store.digest() == full


@FUZZ
@given(VALID_COMMANDS)
def test_reaping_removes_exactly_what_deletes_and_purges_left(commands: list[Any]) -> None:
    """Generations: reaping never touches a live queue or stream, and it always finishes."""
    with tempfile.TemporaryDirectory() as root, Store(root, map_size=MAP_SIZE) as store:
        store.apply(1, DECLARE_ALL)
        for index, cmd in enumerate(commands, start=2):
            store.apply(index, [cmd])
        event("something buried" if store.has_buried() else "nothing buried")
        live, _ = _generation_keys(store)
        _reap_to_the_end(store, len(commands) + 1)
        assert _generation_keys(store) == (live, [])
