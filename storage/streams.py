"""Streams: append-only logs of records at dense offsets, trimmed from the head by retention.

Offsets start at 0 and grow by one per appended record, so a reader that keeps
`next_offset` never skips or repeats one. Retention only removes whole records
from the head, deterministically, at the end of an append (time is the
command's effective now): while the stream holds more than `max_records`, more
than `max_bytes` of bodies, or its oldest record is at least `max_age_ms` old.
The newest record is never trimmed, and one append trims at most
`TRIM_LIMIT` records (later appends continue), which bounds one Raft entry's work.

A record id seen within the dedup window answers the offset it was first
appended at (even if retention has trimmed it since) and is not appended again.

A stream's records, dedup entries and group offsets are keyed under its
generation (storage.keys): deleting a stream buries that generation and removes
only the stream's own record, so the delete is one bounded step whatever the
stream holds, and "reap" removes the keys later, a bounded batch per command.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any, Final

import lmdb

from storage import keys
from storage.errors import CorruptRecord, InvalidCommand
from storage.fields import (
    Command,
    Result,
    integer,
    keys_with_prefix,
    listing,
    name,
    payload,
)
from storage.mutation import DEDUP_EXPIRE_LIMIT, DEDUP_EXPIRE_SLACK_MS, Dbs, Mutation

TRIM_LIMIT: Final = 10000
RETENTION_KEYS: Final = ("max_age_ms", "max_bytes", "max_records")


def record_key(stream_key: bytes, offset: int) -> bytes:
    return stream_key + keys.U64.pack(offset)


def _not_found(stream: str) -> Result:
    return {"status": "stream_not_found", "message": f"stream {stream!r} does not exist"}


@dataclass
class StreamState:
    name: str
    config: dict[str, int | None]
    first_offset: int
    next_offset: int
    bytes: int
    # The generation the stream's keys live under (0: skey of streams declared before).
    generation: int
    # skey: the prefix of the stream's records, stream_dedup, stream_dedup_age and groups keys.
    prefix: builtins.bytes = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = keys.generation_prefix(self.name, self.generation)

    @property
    def records(self) -> int:
        return self.next_offset - self.first_offset

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "config": self.config,
            "first_offset": self.first_offset,
            "next_offset": self.next_offset,
            "bytes": self.bytes,
        }
        if self.generation:
            record["generation"] = self.generation
        return record


def _load(txn: lmdb.Transaction[bytes], dbs: Dbs, stream: str) -> StreamState | None:
    raw = txn.get(stream.encode(), db=dbs.streams)
    if raw is None:
        return None
    record = keys.decode(raw)
    return StreamState(
        stream,
        record["config"],
        record["first_offset"],
        record["next_offset"],
        record["bytes"],
        record.get("generation", 0),
    )


def _save(m: Mutation, state: StreamState) -> None:
    m.txn.put(state.name.encode(), keys.encode(state.record()), db=m.dbs.streams)


def _retention(cmd: Command) -> dict[str, int | None]:
    partial = cmd.get("config")
    if partial is None:
        partial = {}
    if not isinstance(partial, dict):
        raise InvalidCommand("config must be an object")
    config: dict[str, int | None] = {}
    for key in RETENTION_KEYS:
        value = partial.get(key)
        if value is not None and (integer(partial, key) < 1):
            raise InvalidCommand(f"{key} must be null or at least 1")
        config[key] = value
    return config


def declare_stream(m: Mutation, cmd: Command) -> Result:
    stream = name(cmd, "stream")
    config = _retention(cmd)
    existing = _load(m.txn, m.dbs, stream)
    if existing is None:
        _save(m, StreamState(stream, config, 0, 0, 0, m.next_generation()))
        return {"status": "created", "config": config}
    if existing.config == config:
        return {"status": "exists", "config": config}
    return {
        "status": "stream_conflict",
        "message": f"stream {stream!r} exists with a different retention",
        "config": existing.config,
    }


def delete_stream(m: Mutation, cmd: Command) -> Result:
    """Remove the stream at once; its generation's keys go to the graveyard (Mutation.reap)."""
    stream = name(cmd, "stream")
    state = _load(m.txn, m.dbs, stream)
    if state is None:
        return _not_found(stream)
    m.bury(stream, state.generation, keys.BURIED_STREAM)
    m.txn.delete(stream.encode(), db=m.dbs.streams)
    return {"status": "deleted"}


def append_records(m: Mutation, cmd: Command) -> Result:
    """Append records at the next offsets; returns each record's offset (a duplicate's original)."""
    stream = name(cmd, "stream")
    window = integer(cmd, "dedup_window_ms", default=0)
    records = [payload(raw, id_required=False) for raw in listing(cmd, "records")]
    state = _load(m.txn, m.dbs, stream)
    if state is None:
        return _not_found(stream)
    prefix = state.prefix
    cutoff = m.now - window
    offsets: list[int] = []
    in_batch: dict[bytes, int] = {}
    for record in records:
        idk = b""
        previous: int | None = None
        if window > 0 and record.id is not None:
            idk = keys.idkey(record.id)
            if idk in in_batch:
                offsets.append(in_batch[idk])
                continue
            raw = m.txn.get(prefix + idk, db=m.dbs.stream_dedup)
            if raw is not None:
                offset, appended_at = keys.U64_PAIR.unpack(raw)
                if appended_at > cutoff:
                    offsets.append(int(offset))
                    continue
                previous = int(appended_at)
        offset = state.next_offset
        state.next_offset += 1
        size = len(record.body.encode())
        stored: dict[str, Any] = {
            "id": record.id,
            "body": record.body,
            "headers": record.headers,
            "timestamp": m.now,
            "size": size,
        }
        if record.encoding is not None:
            stored["encoding"] = record.encoding
        m.txn.put(record_key(prefix, offset), keys.encode(stored), db=m.dbs.records)
        state.bytes += size
        if idk:
            if previous is not None:
                old_age_key = keys.dedup_age_key(prefix, previous, idk)
                m.txn.delete(old_age_key, db=m.dbs.stream_dedup_age)
            m.txn.put(prefix + idk, keys.dedup_value(offset, m.now), db=m.dbs.stream_dedup)
            m.txn.put(keys.dedup_age_key(prefix, m.now, idk), b"", db=m.dbs.stream_dedup_age)
            in_batch[idk] = offset
        offsets.append(offset)
    if window > 0:
        _expire_dedup(m, prefix, cutoff)
    _trim(m, state)
    _save(m, state)
    return {"status": "ok", "offsets": offsets}


def _expire_dedup(m: Mutation, prefix: bytes, cutoff: int) -> None:
    """Forget the oldest ids appended at or before `cutoff`, in chunks (as queues do).

    Nothing is forgotten until the oldest is DEDUP_EXPIRE_SLACK_MS older than
    `cutoff`; then up to DEDUP_EXPIRE_LIMIT go at once (see Mutation.expire_dedup).
    """
    expired: list[bytes] = []
    with m.txn.cursor(db=m.dbs.stream_dedup_age) as cursor:
        if not cursor.set_range(prefix):
            return
        if not keys.aged_by(cursor.key(), prefix, cutoff - DEDUP_EXPIRE_SLACK_MS):
            return
        for key in cursor.iternext(keys=True, values=False):
            if len(expired) >= DEDUP_EXPIRE_LIMIT or not keys.aged_by(key, prefix, cutoff):
                break
            expired.append(key)
    start = len(prefix) + keys.U64.size
    for key in expired:
        m.txn.delete(key, db=m.dbs.stream_dedup_age)
        m.txn.delete(prefix + key[start:], db=m.dbs.stream_dedup)


def _trim(m: Mutation, state: StreamState) -> None:
    """Drop head records the retention rules no longer allow (never the newest one)."""
    config = state.config
    max_records, max_bytes, max_age = (
        config[k] for k in ("max_records", "max_bytes", "max_age_ms")
    )
    if max_records is None and max_bytes is None and max_age is None:
        return
    prefix = state.prefix
    for _ in range(TRIM_LIMIT):
        if state.records <= 1:
            return
        over = (max_records is not None and state.records > max_records) or (
            max_bytes is not None and state.bytes > max_bytes
        )
        key = record_key(prefix, state.first_offset)
        raw = m.txn.get(key, db=m.dbs.records)
        if raw is None:
            raise CorruptRecord(f"stream {state.name} misses its first record")
        head = keys.decode(raw)
        if not over and (max_age is None or head["timestamp"] > m.now - max_age):
            return
        m.txn.delete(key, db=m.dbs.records)
        state.first_offset += 1
        state.bytes -= int(head["size"])


def commit_offset(m: Mutation, cmd: Command) -> Result:
    stream = name(cmd, "stream")
    group = name(cmd, "group")
    offset = integer(cmd, "offset")
    state = _load(m.txn, m.dbs, stream)
    if state is None:
        return _not_found(stream)
    if offset > state.next_offset:
        return {
            "status": "out_of_range",
            "message": f"offset {offset} is past the end of stream {stream!r} "
            f"(next offset {state.next_offset})",
        }
    m.txn.put(state.prefix + group.encode(), keys.U64.pack(offset), db=m.dbs.groups)
    return {"status": "ok", "offset": offset}


def delete_group(m: Mutation, cmd: Command) -> Result:
    """Forget a consumer group's committed offset; `deleted` says whether it had one."""
    stream = name(cmd, "stream")
    group = name(cmd, "group")
    state = _load(m.txn, m.dbs, stream)
    if state is None:
        return _not_found(stream)
    deleted = m.txn.delete(state.prefix + group.encode(), db=m.dbs.groups)
    return {"status": "ok", "deleted": bool(deleted)}


def read_barrier(m: Mutation, cmd: Command) -> Result:
    """Changes nothing: once applied, every entry committed before it has been applied too."""
    return {"status": "ok"}


HANDLERS: Final = {
    "declare_stream": declare_stream,
    "delete_stream": delete_stream,
    "append_records": append_records,
    "commit_offset": commit_offset,
    "delete_group": delete_group,
    "read_barrier": read_barrier,
}


# Read side (Store.view)


def _view(state: StreamState) -> dict[str, Any]:
    return {
        "name": state.name,
        "config": state.config,
        "first_offset": state.first_offset,
        "last_offset": state.next_offset - 1 if state.records else None,
        "next_offset": state.next_offset,
        "records": state.records,
        "bytes": state.bytes,
    }


def get_stream(txn: lmdb.Transaction[bytes], dbs: Dbs, stream: str) -> dict[str, Any] | None:
    if not keys.is_queue_name(stream):
        return None
    state = _load(txn, dbs, stream)
    return None if state is None else _view(state)


def list_streams(txn: lmdb.Transaction[bytes], dbs: Dbs) -> list[dict[str, Any]]:
    with txn.cursor(db=dbs.streams) as cursor:
        names = [key.decode() for key in cursor.iternext(keys=True, values=False)]
    states = [_load(txn, dbs, stream) for stream in names]
    return [_view(state) for state in states if state is not None]


def group_offset(txn: lmdb.Transaction[bytes], dbs: Dbs, stream: str, group: str) -> int:
    """The group's committed offset, 0 when it never committed (or there is no such stream)."""
    state = _load(txn, dbs, stream)
    return 0 if state is None else _group_offset(txn, dbs, state, group)


def _group_offset(txn: lmdb.Transaction[bytes], dbs: Dbs, state: StreamState, group: str) -> int:
    raw = txn.get(state.prefix + group.encode(), db=dbs.groups)
    return 0 if raw is None else int(keys.U64.unpack(raw)[0])


def groups(txn: lmdb.Transaction[bytes], dbs: Dbs, stream: str) -> dict[str, int]:
    state = _load(txn, dbs, stream)
    if state is None:
        return {}
    prefix = state.prefix
    return {
        key[len(prefix) :].decode(): int(keys.U64.unpack(value)[0])
        for key, value in keys_with_prefix(txn, dbs.groups, prefix)
    }


def read_records(
    txn: lmdb.Transaction[bytes],
    dbs: Dbs,
    stream: str,
    *,
    offset: int | None,
    group: str | None,
    limit: int,
    max_bytes: int,
) -> dict[str, Any] | None:
    """Up to `limit` records from `offset` (or the group's offset), clamped to the first held.

    Stops early once the bodies passed `max_bytes` (always at least one record).
    None when the stream does not exist.
    """
    if not keys.is_queue_name(stream):
        return None
    state = _load(txn, dbs, stream)
    if state is None:
        return None
    if offset is None:
        offset = 0 if group is None else _group_offset(txn, dbs, state, group)
    start = max(offset, state.first_offset)
    prefix = state.prefix
    out: list[dict[str, Any]] = []
    total = 0
    next_offset = start
    with txn.cursor(db=dbs.records) as cursor:
        if cursor.set_range(record_key(prefix, start)):
            for key, value in cursor.iternext():
                if len(out) >= limit or total >= max_bytes or not key.startswith(prefix):
                    break
                record = keys.decode(value)
                at = int(keys.U64.unpack_from(key, len(prefix))[0])
                item: dict[str, Any] = {
                    "offset": at,
                    "id": record["id"],
                    "body": record["body"],
                    "headers": record["headers"],
                    "timestamp": record["timestamp"],
                }
                if "encoding" in record:
                    item["encoding"] = record["encoding"]
                out.append(item)
                total += int(record["size"])
                next_offset = at + 1
    return {"records": out, "next_offset": next_offset, "first_offset": state.first_offset}
