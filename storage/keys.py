"""LMDB layout of a raftmq store: every named database, its keys and values.

One environment; the main (unnamed) database only holds LMDB's catalogue of the
named ones. Integers in keys and fixed-width values are u64 big-endian, so byte
order is numeric order. JSON values are orjson with OPT_SORT_KEYS, so the same
state always encodes to the same bytes on every replica.

    qkey  = queue name (UTF-8) + b"\\x00"
            Names match [A-Za-z0-9._-]{1,200} and never hold NUL, so no queue's
            qkey is a prefix of another's: a range scan over qkey sees one queue.
    gkey  = queue or stream name (UTF-8) + b"\\x01" + generation u64: the
            prefix of one generation of a queue's messages ("mgen") or dedup
            entries ("dgen"), or of a stream's keys ("generation", see
            Streams). Generation 0 means qkey (queues and streams declared
            before generations). A generation is never reused (queues and
            streams draw from the one counter), so a deleted or purged
            generation can be removed a bounded batch at a time (graveyard)
            while the name lives on under a new one; b"\\x00" and b"\\x01"
            never occur in names, so no prefix of one queue, stream or
            generation covers another's.
    idkey = message id (UTF-8) when it is at most 255 bytes, else
            b"\\xff" + sha256(id UTF-8). 0xFF never occurs in UTF-8, so the two
            forms cannot collide; the key stays under LMDB's 511-byte limit.

meta
    b"applied_index"             -> u64  last Raft index applied (absent = 0)
    b"last_now"                  -> u64  highest now_ms applied; a command's
                                         effective now is max(now_ms, last_now)
    b"next_generation"           -> u64  the next queue or stream generation
                                         (absent = 1)
queues
    name (UTF-8)                 -> JSON {"config": {...}, "next_seq": int,
                                          "mgen": int, "dgen": int (absent = 0),
                                          "counters": {"total", "ready_count",
                                          "delayed_count", "leased_count",
                                          "published_total", "delivered_total",
                                          "acked_total", "dead_lettered_total"}}
In messages, ready, timers (under mgen) and dedup, dedup_age (under dgen), "qkey"
stands for the queue's generation prefix: gkey, or qkey for generation 0.

messages
    qkey + seq u64               -> JSON {"id", "body", "headers", "encoding"
                                          (only "base64"), "published_at",
                                          "deliveries", "expires_at" (only with
                                          a TTL), "state": "ready" | "delayed" |
                                          "leased", "due" (delayed only),
                                          "lease" + "deadline" (leased only)}
ready
    qkey + seq u64               -> b""   one per message in state "ready"
timers
    qkey + due u64 + seq u64     -> b"d"  delayed message, due = its "due"
                                    b"l"  leased message, due = its "deadline"
dedup
    qkey + idkey                 -> seq u64 + published_at u64
dedup_age
    qkey + published_at u64 + seq u64 -> the idkeys a publish remembered, each
                                         after its length (u8); seq is the first
                                         message it enqueued. Oldest first.
    qkey + published_at u64 + idkey -> b""   one id (written before 2026-11-26)
graveyard
    generation u64 + kind u8 + name (UTF-8) -> b""
                                         a generation of a deleted or purged queue,
                                         or of a deleted stream, whose keys are still
                                         to be removed: kind 0 a queue's messages,
                                         ready and timers, kind 1 a queue's dedup and
                                         dedup_age, kind 2 a stream's records,
                                         stream_dedup, stream_dedup_age and groups
                                         (removed by "reap", oldest generation first)
nodes
    raft address (UTF-8)         -> JSON {"id", "http", "raft", "registered_at"}

Exchanges (storage/exchanges.py). xkey = exchange name + b"\\x00", as qkey.

meta
    b"exchange_version"          -> u64  last version handed to an exchange; every
                                         change of an exchange or its bindings takes
                                         the next one, so (name, version) never repeats
exchanges
    name (UTF-8)                 -> JSON {"type": "direct" | "topic" | "fanout",
                                          "alternate_queue": name | null,
                                          "version": int}
bindings
    xkey + queue name (UTF-8)    -> JSON sorted list of routing keys (strings)
queue_bindings
    qkey + exchange name (UTF-8) -> b""   reverse index: the exchanges a queue is
                                         bound to, so deleting the queue unbinds it

Streams (storage/streams.py). skey = the stream's generation prefix: gkey of
its "generation", or stream name + b"\\x00" (as qkey) for generation 0. A
declare takes a new generation; a delete buries it (graveyard kind 2) and
removes only its streams record, so a stream declared again under the name
starts empty while "reap" removes the old generation's keys.

streams
    name (UTF-8)                 -> JSON {"config": {"max_age_ms", "max_bytes",
                                          "max_records"} (each int | null),
                                          "first_offset", "next_offset", "bytes",
                                          "generation": int (absent = 0)}
                                         records held = next_offset - first_offset
records
    skey + offset u64            -> JSON {"id" (null: none), "body", "headers",
                                          "encoding" (only "base64"), "timestamp",
                                          "size" (UTF-8 bytes of body)}
stream_dedup
    skey + idkey                 -> offset u64 + appended_at u64
stream_dedup_age
    skey + appended_at u64 + idkey -> b""  same entries, oldest first
groups
    skey + group name (UTF-8)    -> u64  the group's committed offset (next to read)

Users (storage/users.py). Authentication is on once `users` is not empty.

users
    name (UTF-8)                 -> JSON {"admin": bool, "token_sha256": hex,
                                          "permissions": {"configure", "write",
                                          "read"} (regexes, "" = nothing),
                                          "created_at"}
user_tokens
    sha256(token) (32 bytes)     -> user name (UTF-8)   index for authentication;
                                         the token itself is never stored
"""

import hashlib
import re
import struct
from typing import Any, Final, TypeGuard

import orjson

META: Final = b"meta"
QUEUES: Final = b"queues"
MESSAGES: Final = b"messages"
READY: Final = b"ready"
TIMERS: Final = b"timers"
DEDUP: Final = b"dedup"
DEDUP_AGE: Final = b"dedup_age"
NODES: Final = b"nodes"
EXCHANGES: Final = b"exchanges"
BINDINGS: Final = b"bindings"
QUEUE_BINDINGS: Final = b"queue_bindings"
STREAMS: Final = b"streams"
RECORDS: Final = b"records"
STREAM_DEDUP: Final = b"stream_dedup"
STREAM_DEDUP_AGE: Final = b"stream_dedup_age"
GROUPS: Final = b"groups"
USERS: Final = b"users"
USER_TOKENS: Final = b"user_tokens"
GRAVEYARD: Final = b"graveyard"
DB_NAMES: Final = (
    META,
    QUEUES,
    MESSAGES,
    READY,
    TIMERS,
    DEDUP,
    DEDUP_AGE,
    NODES,
    EXCHANGES,
    BINDINGS,
    QUEUE_BINDINGS,
    STREAMS,
    RECORDS,
    STREAM_DEDUP,
    STREAM_DEDUP_AGE,
    GROUPS,
    USERS,
    USER_TOKENS,
    GRAVEYARD,
)

APPLIED_INDEX: Final = b"applied_index"
LAST_NOW: Final = b"last_now"
EXCHANGE_VERSION: Final = b"exchange_version"
NEXT_GENERATION: Final = b"next_generation"

BURIED_MESSAGES: Final = 0
BURIED_DEDUP: Final = 1
BURIED_STREAM: Final = 2

TIMER_DELAYED: Final = b"d"
TIMER_LEASE: Final = b"l"

U64: Final = struct.Struct(">Q")
U64_PAIR: Final = struct.Struct(">QQ")
U64_MAX: Final = (1 << 64) - 1

QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,200}")
_ID_INLINE_MAX: Final = 255
_HASHED_ID: Final = b"\xff"


def is_queue_name(name: object) -> TypeGuard[str]:
    """Whether `name` can key a queue without breaking the qkey prefix rule."""
    return isinstance(name, str) and QUEUE_NAME.fullmatch(name) is not None


def qkey(name: str) -> bytes:
    return name.encode() + b"\x00"


def generation_prefix(name: str, generation: int) -> bytes:
    """The key prefix of one generation of a queue or stream (qkey for generation 0)."""
    if generation == 0:
        return qkey(name)
    return name.encode() + b"\x01" + U64.pack(generation)


def messages_prefix(name: str, record: dict[str, Any]) -> bytes:
    """The prefix of the messages, ready and timers keys of a queue, from its record."""
    return generation_prefix(name, record.get("mgen", 0))


def graveyard_key(generation: int, kind: int, name: str) -> bytes:
    return U64.pack(generation) + bytes((kind,)) + name.encode()


def split_graveyard_key(key: bytes) -> tuple[int, int, str]:
    """(generation, kind, queue or stream name) of a graveyard key."""
    return U64.unpack_from(key)[0], key[U64.size], key[U64.size + 1 :].decode()


def idkey(message_id: str) -> bytes:
    raw = message_id.encode()
    if len(raw) <= _ID_INLINE_MAX:
        return raw
    return _HASHED_ID + hashlib.sha256(raw).digest()


def message_key(q: bytes, seq: int) -> bytes:
    return q + U64.pack(seq)


def timer_key(q: bytes, due: int, seq: int) -> bytes:
    return q + U64_PAIR.pack(due, seq)


def split_timer_key(q: bytes, key: bytes) -> tuple[int, int]:
    """(due, seq) of a timers key under qkey `q`."""
    due, seq = U64_PAIR.unpack_from(key, len(q))
    return int(due), int(seq)


def seq_of(q: bytes, key: bytes) -> int:
    """seq of a messages or ready key under qkey `q`."""
    return int(U64.unpack_from(key, len(q))[0])


def dedup_key(q: bytes, idk: bytes) -> bytes:
    return q + idk


def dedup_value(seq: int, published_at: int) -> bytes:
    return U64_PAIR.pack(seq, published_at)


def dedup_published_at(value: bytes) -> int:
    return int(U64_PAIR.unpack(value)[1])


def dedup_age_key(q: bytes, published_at: int, idk: bytes) -> bytes:
    return q + U64.pack(published_at) + idk


def aged_by(key: bytes, q: bytes, bound: int) -> bool:
    """Whether a dedup_age (or stream_dedup_age) `key` is under `q` and its time <= `bound`."""
    return key.startswith(q) and U64.unpack_from(key, len(q))[0] <= bound


def dedup_batch_key(q: bytes, published_at: int, first_seq: int) -> bytes:
    return q + U64_PAIR.pack(published_at, first_seq)


def pack_idkeys(idks: list[bytes]) -> bytes:
    """The value of a dedup_age batch: each idkey (at most 255 bytes) after its length."""
    return b"".join(bytes((len(idk),)) + idk for idk in idks)


def unpack_idkeys(value: bytes) -> list[bytes]:
    idks: list[bytes] = []
    at = 0
    while at < len(value):
        end = at + 1 + value[at]
        idks.append(value[at + 1 : end])
        at = end
    return idks


def encode(value: Any) -> bytes:
    """Canonical JSON: same value, same bytes on every replica."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def decode(raw: bytes) -> Any:
    return orjson.loads(raw)


def receipt(seq: int, lease_token: str) -> str:
    return f"{seq:x}.{lease_token}"


_RECEIPT: Final = re.compile(r"([1-9a-f][0-9a-f]{0,15})\.(.*)", re.DOTALL)


def parse_receipt(text: object) -> tuple[int, str] | None:
    """(seq, lease token) of a receipt in its one canonical form, else None."""
    if not isinstance(text, str):
        return None
    match = _RECEIPT.fullmatch(text)
    if match is None:
        return None
    seq, token = match.groups()
    return int(seq, 16), token
