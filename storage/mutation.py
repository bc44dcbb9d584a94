"""Message-level changes inside one command's write transaction.

A `Mutation` reads each queue record at most once, keeps its counters in
memory and writes it back once in `flush`, so a batch of a thousand messages
costs one queue read and one queue write. Every state change of a message goes
through `_move`, which keeps the ready/timers indexes and the counters in step
with the message record.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import lmdb

from storage import keys
from storage.config import OVERFLOW_DROP_HEAD, OVERFLOW_REJECT
from storage.errors import CorruptRecord
from storage.fields import Payload

READY: Final = "ready"
DELAYED: Final = "delayed"
LEASED: Final = "leased"
_STATE_COUNTER: Final = {READY: "ready_count", DELAYED: "delayed_count", LEASED: "leased_count"}
_STATE_FIELDS: Final = ("due", "lease", "deadline")

# Most outdated dedup entries one publish forgets.
DEDUP_EXPIRE_LIMIT: Final = 1000
# A publish forgets outdated ids only once the oldest is outdated by this many ms,
# so that they go in chunks of up to DEDUP_EXPIRE_LIMIT (see Mutation.expire_dedup).
DEDUP_EXPIRE_SLACK_MS: Final = 1000
# How many keys a reap removes between two looks at the mapped bytes.
REAP_MAPPED_CHECK: Final = 256

COUNTERS: Final = (
    "total",
    "ready_count",
    "delayed_count",
    "leased_count",
    "published_total",
    "delivered_total",
    "acked_total",
    "dead_lettered_total",
)

REASON_EXPIRED: Final = "expired"
REASON_MAX_DELIVERIES: Final = "max_deliveries"
REASON_MAX_LENGTH: Final = "max_length"
HEADER_REASON: Final = "x-dead-letter-reason"
HEADER_SOURCE: Final = "x-dead-letter-source"

Message = dict[str, Any]
# (seq, message, dead-letter reason or None when deliverable)
Scanned = tuple[int, Message, str | None]
# Messages a queue has not seen within its dedup window: (message, id key, when the
# id was last published if an outdated entry for it is still stored).
Fresh = list[tuple[Payload, bytes, int | None]]


class Dbs(NamedTuple):
    """Handles of the named databases, in `keys.DB_NAMES` order."""

    meta: lmdb._Database
    queues: lmdb._Database
    messages: lmdb._Database
    ready: lmdb._Database
    timers: lmdb._Database
    dedup: lmdb._Database
    dedup_age: lmdb._Database
    nodes: lmdb._Database
    exchanges: lmdb._Database
    bindings: lmdb._Database
    queue_bindings: lmdb._Database
    streams: lmdb._Database
    records: lmdb._Database
    stream_dedup: lmdb._Database
    stream_dedup_age: lmdb._Database
    groups: lmdb._Database
    users: lmdb._Database
    user_tokens: lmdb._Database
    graveyard: lmdb._Database


@dataclass
class QueueState:
    """A queue record held in memory for the length of one command."""

    name: str
    config: dict[str, Any]
    next_seq: int
    counters: dict[str, int]
    # Generations of the queue's messages and of its dedup entries (see storage.keys).
    mgen: int
    dgen: int
    dirty: bool = False

    @classmethod
    def from_record(cls, name: str, record: dict[str, Any]) -> QueueState:
        return cls(
            name=name,
            config=record["config"],
            next_seq=record["next_seq"],
            counters=record["counters"],
            mgen=record.get("mgen", 0),
            dgen=record.get("dgen", 0),
        )

    def record(self) -> dict[str, Any]:
        record = {"config": self.config, "next_seq": self.next_seq, "counters": self.counters}
        if self.mgen:
            record["mgen"] = self.mgen
        if self.dgen:
            record["dgen"] = self.dgen
        return record

    # Prefixes of the queue's messages, ready and timers keys, and of its dedup keys.
    qkey: bytes = dataclasses.field(init=False)
    dkey: bytes = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.qkey = keys.generation_prefix(self.name, self.mgen)
        self.dkey = keys.generation_prefix(self.name, self.dgen)

    def renew_messages(self, generation: int) -> None:
        """Continue the queue's messages under a new, empty generation."""
        self.mgen = generation
        self.qkey = keys.generation_prefix(self.name, generation)
        self.dirty = True

    def add(self, counter: str, delta: int) -> None:
        self.counters[counter] += delta
        self.dirty = True

    @property
    def total(self) -> int:
        return self.counters["total"]

    def refuses(self, incoming: int) -> str | None:
        """Why `incoming` more messages do not fit (max_length, reject_publish), or None."""
        limit = self.config["max_length"]
        if limit is None or self.config["overflow"] != OVERFLOW_REJECT:
            return None
        if self.total + incoming <= limit:
            return None
        return (
            f"queue {self.name} holds {self.total} of at most {limit} messages; "
            f"{incoming} more do not fit"
        )


def lease_holds(message: Message, token: str, now: int) -> bool:
    """Whether `token` still leases `message` at `now`: a lease ends at its deadline."""
    return bool(
        message["state"] == LEASED and message["lease"] == token and message["deadline"] > now
    )


class Mutation:
    """Applies one command's changes to `txn` at effective time `now`."""

    def __init__(
        self,
        txn: lmdb.Transaction[bytes],
        dbs: Dbs,
        now: int,
        memo: dict[Any, Any] | None = None,
        bound_mapped: Callable[[], object] | None = None,
    ) -> None:
        self.txn = txn
        self.dbs = dbs
        self.now = now
        # Called every REAP_MAPPED_CHECK keys a reap removes (Store.bound_mapped_pages).
        self._bound_mapped = bound_mapped
        # The Store's cache of data derived from LMDB (topic routers). Entries
        # are keyed by versions stored in LMDB, so using it never changes a result.
        self.memo: dict[Any, Any] = {} if memo is None else memo
        self._queues: dict[str, QueueState | None] = {}

    # Queues

    def queue(self, name: str) -> QueueState | None:
        if name not in self._queues:
            raw = self.txn.get(name.encode(), db=self.dbs.queues)
            self._queues[name] = (
                None if raw is None else QueueState.from_record(name, keys.decode(raw))
            )
        return self._queues[name]

    def create_queue(self, name: str, config: dict[str, Any]) -> QueueState:
        generation = self.next_generation()
        state = QueueState(
            name=name,
            config=config,
            next_seq=1,
            counters=dict.fromkeys(COUNTERS, 0),
            mgen=generation,
            dgen=generation,
            dirty=True,
        )
        self._queues[name] = state
        return state

    def delete_queue(self, q: QueueState) -> None:
        """Remove the queue at once; its keys go to the graveyard (see `reap`)."""
        self.bury(q.name, q.mgen, keys.BURIED_MESSAGES)
        self.bury(q.name, q.dgen, keys.BURIED_DEDUP)
        self.txn.delete(q.name.encode(), db=self.dbs.queues)
        self._queues[q.name] = None

    def purge(self, q: QueueState) -> int:
        """Drop every message of `q` whatever its state; returns how many.

        The messages' generation goes to the graveyard and the queue continues
        under a new one, so a purge costs the same for ten messages or ten
        million. Dedup entries stay: a purged message's id is still a duplicate.
        """
        purged = q.total
        self.bury(q.name, q.mgen, keys.BURIED_MESSAGES)
        q.renew_messages(self.next_generation())
        for counter in ("total", *_STATE_COUNTER.values()):
            q.add(counter, -q.counters[counter])
        return purged

    def next_generation(self) -> int:
        """A generation no queue or stream ever had (one counter for both)."""
        raw = self.txn.get(keys.NEXT_GENERATION, db=self.dbs.meta)
        generation = 1 if raw is None else int(keys.U64.unpack(raw)[0])
        self.txn.put(keys.NEXT_GENERATION, keys.U64.pack(generation + 1), db=self.dbs.meta)
        return generation

    def _buried_dbs(self, kind: int) -> tuple[lmdb._Database, ...]:
        if kind == keys.BURIED_MESSAGES:
            return (self.dbs.messages, self.dbs.ready, self.dbs.timers)
        if kind == keys.BURIED_DEDUP:
            return (self.dbs.dedup, self.dbs.dedup_age)
        if kind == keys.BURIED_STREAM:
            dbs = self.dbs
            return (dbs.records, dbs.stream_dedup, dbs.stream_dedup_age, dbs.groups)
        raise CorruptRecord(f"graveyard entry of unknown kind {kind}")

    def bury(self, name: str, generation: int, kind: int) -> None:
        """Leave a generation's keys (in the databases of `kind`) to `reap`, unless it has none."""
        prefix = keys.generation_prefix(name, generation)
        if any(self._has_prefix(db, prefix) for db in self._buried_dbs(kind)):
            grave = keys.graveyard_key(generation, kind, name)
            self.txn.put(grave, b"", db=self.dbs.graveyard)

    def reap(self, max_keys: int) -> tuple[int, bool]:
        """Remove up to `max_keys` keys of buried queue and stream generations, oldest first.

        Returns (keys removed, whether buried keys remain).
        """
        removed = 0
        while removed < max_keys:
            with self.txn.cursor(db=self.dbs.graveyard) as cursor:
                if not cursor.first():
                    return removed, False
                grave = cursor.key()
            generation, kind, name = keys.split_graveyard_key(grave)
            prefix = keys.generation_prefix(name, generation)
            dbs = self._buried_dbs(kind)
            for db in dbs:
                removed += self._delete_prefix(db, prefix, max_keys - removed)
            if any(self._has_prefix(db, prefix) for db in dbs):
                break
            self.txn.delete(grave, db=self.dbs.graveyard)
        with self.txn.cursor(db=self.dbs.graveyard) as cursor:
            return removed, cursor.first()

    def flush(self) -> None:
        """Write back every queue record this command changed."""
        for name in sorted(self._queues):
            state = self._queues[name]
            if state is not None and state.dirty:
                self.txn.put(name.encode(), keys.encode(state.record()), db=self.dbs.queues)
                state.dirty = False

    # Cursors. LMDB looks a key up on the leaf page a cursor is on before it
    # descends from the root. A receive or an ack reads and writes messages,
    # ready entries and timers mostly in key order, many on one page, so the
    # command reads and writes those keys one at a time through one cursor per
    # database: a B-tree descent saved per key, on every node.

    @functools.cached_property
    def _messages(self) -> lmdb.Cursor[bytes]:
        return self.txn.cursor(db=self.dbs.messages)

    @functools.cached_property
    def _ready(self) -> lmdb.Cursor[bytes]:
        return self.txn.cursor(db=self.dbs.ready)

    @functools.cached_property
    def _timers(self) -> lmdb.Cursor[bytes]:
        return self.txn.cursor(db=self.dbs.timers)

    # Messages

    def message(self, q: QueueState, seq: int) -> Message | None:
        """Message `seq` of `q`, or None: a dict of its own (decoded anew) to change freely."""
        raw = self._messages.get(keys.message_key(q.qkey, seq))
        return None if raw is None else keys.decode(raw)

    def enqueue(
        self,
        q: QueueState,
        message_id: str,
        body: str,
        *,
        headers: dict[str, Any],
        encoding: str | None,
        delay_ms: int | None,
    ) -> int:
        """Store a new message at the tail of `q`; delay_ms None means the queue's default.

        Seqs only grow, so seq order is publish order. Every node runs this once
        per message it applies, so it keeps to local names and updates `next_seq`
        and the counters itself (`add` would mark the queue dirty each time).
        """
        now = self.now
        seq = q.next_seq
        q.next_seq = seq + 1
        message: Message = {
            "id": message_id,
            "body": body,
            "headers": headers,
            "published_at": now,
            "deliveries": 0,
        }
        if encoding is not None:
            message["encoding"] = encoding
        config = q.config
        ttl = config["message_ttl_ms"]
        if ttl is not None:
            message["expires_at"] = now + ttl
        delay = config["delivery_delay_ms"] if delay_ms is None else delay_ms
        key = keys.message_key(q.qkey, seq)
        counters = q.counters
        if delay > 0:
            message["state"] = DELAYED
            message["due"] = now + delay
            self._index(q, key, seq, message)
            counters["delayed_count"] += 1
        else:
            message["state"] = READY
            self._append(self.dbs.ready, key, b"")
            counters["ready_count"] += 1
        self._append(self.dbs.messages, key, keys.encode(message))
        counters["total"] += 1
        counters["published_total"] += 1
        q.dirty = True
        return seq

    def remove(self, q: QueueState, seq: int, message: Message) -> None:
        """Delete a message whatever its state (every node runs this per message acked)."""
        key = keys.message_key(q.qkey, seq)
        self._unindex(q, key, seq, message)
        if self._messages.set_key(key):  # as txn.delete(key)
            self._messages.delete()
        counters = q.counters
        counters["total"] -= 1
        counters[_STATE_COUNTER[message["state"]]] -= 1
        q.dirty = True

    def make_ready(self, q: QueueState, seq: int, message: Message) -> None:
        self._move(q, seq, message, READY, {})

    def make_delayed(self, q: QueueState, seq: int, message: Message, delay_ms: int) -> None:
        self._move(q, seq, message, DELAYED, {"due": self.now + delay_ms})

    def lease(self, q: QueueState, seq: int, message: Message, token: str, lease_ms: int) -> None:
        message["deliveries"] += 1
        self._move(q, seq, message, LEASED, {"lease": token, "deadline": self.now + lease_ms})
        q.counters["delivered_total"] += 1  # _move marked q dirty

    def promote_due(self, q: QueueState, limit: int) -> None:
        """Make ready the messages whose delay or lease ended, earliest first, at most `limit`."""
        due_seqs: list[int] = []
        with self.txn.cursor(db=self.dbs.timers) as cursor:
            if cursor.set_range(q.qkey):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(q.qkey) or len(due_seqs) >= limit:
                        break
                    due, seq = keys.split_timer_key(q.qkey, key)
                    if due > self.now:
                        break
                    due_seqs.append(seq)
        for seq in due_seqs:
            message = self.message(q, seq)
            if message is None:
                raise CorruptRecord(f"timer of {q.name} points at missing message {seq}")
            self.make_ready(q, seq, message)

    def oldest(self, q: QueueState, count: int) -> list[tuple[int, Message]]:
        """The `count` messages of `q` with the lowest seq, whatever their state."""
        found: list[tuple[int, Message]] = []
        with self.txn.cursor(db=self.dbs.messages) as cursor:
            if cursor.set_range(q.qkey):
                for key, value in cursor.iternext():
                    if len(found) >= count or not key.startswith(q.qkey):
                        break
                    found.append((keys.seq_of(q.qkey, key), keys.decode(value)))
        return found

    def scan_ready(self, q: QueueState, wanted: int, budget: int) -> list[Scanned]:
        """Walk ready messages in FIFO (seq) order deciding each one's fate.

        Stops once `wanted` messages are deliverable or `budget` records were
        looked at. A message past its TTL or out of deliveries is returned with
        the reason it must be dead-lettered; the others with None.
        """
        max_deliveries = q.config["max_deliveries"]
        scanned: list[Scanned] = []
        deliverable = 0
        # Every node runs the loop once per message received: local names, and
        # a ready key is its message's key, so it reads the message by it.
        qkey, now, get = q.qkey, self.now, self._messages.get
        with self.txn.cursor(db=self.dbs.ready) as cursor:
            if cursor.set_range(qkey):
                for key in cursor.iternext(keys=True, values=False):
                    if deliverable >= wanted or len(scanned) >= budget:
                        break
                    if not key.startswith(qkey):
                        break
                    seq = keys.seq_of(qkey, key)
                    raw = get(key)
                    if raw is None:
                        raise CorruptRecord(f"ready entry of {q.name} points at missing {seq}")
                    message: Message = keys.decode(raw)
                    expires_at = message.get("expires_at")
                    reason: str | None = None
                    if expires_at is not None and expires_at <= now:
                        reason = REASON_EXPIRED
                    elif max_deliveries is not None and message["deliveries"] >= max_deliveries:
                        reason = REASON_MAX_DELIVERIES
                    else:
                        deliverable += 1
                    scanned.append((seq, message, reason))
        return scanned

    # Publishing

    def fresh(self, q: QueueState, messages: list[Payload], window: int) -> Fresh:
        """The messages (ids required) that `q` has not seen within `window` ms, once each."""
        if window == 0:
            return [(message, b"", None) for message in messages]
        cutoff = self.now - window
        fresh: Fresh = []
        seen: set[bytes] = set()
        dkey = q.dkey
        # Ids made by one client sort by time: looked up through one cursor, most
        # are found on (or next to) the page of the one before (see `_messages`).
        with self.txn.cursor(db=self.dbs.dedup) as cursor:
            for message in messages:
                assert message.id is not None
                idk = keys.idkey(message.id)
                if idk in seen:
                    continue
                seen.add(idk)
                raw = cursor.get(dkey + idk)
                published_at = None if raw is None else keys.dedup_published_at(raw)
                if published_at is not None and published_at > cutoff:
                    continue
                fresh.append((message, idk, published_at))
        return fresh

    def publish(self, q: QueueState, fresh: Fresh, window: int) -> None:
        """Enqueue `fresh` (see `fresh`) at the tail of `q` and remember their ids.

        Then forget the oldest outdated ids and, with drop_head, make room.
        """
        remembered: list[bytes] = []
        first_seq = q.next_seq
        for message, idk, previous in fresh:
            assert message.id is not None
            seq = self.enqueue(
                q,
                message.id,
                message.body,
                headers=message.headers,
                encoding=message.encoding,
                delay_ms=message.delay_ms,
            )
            if window > 0:
                self.remember_publish(q, idk, seq, previous)
                remembered.append(idk)
        if remembered:
            # One age entry for the whole publish, not one per id: a put less per
            # message now, and a delete less when the window has passed.
            key = keys.dedup_batch_key(q.dkey, self.now, first_seq)
            self._append(self.dbs.dedup_age, key, keys.pack_idkeys(remembered))
        if window > 0:
            self.expire_dedup(q, self.now - window, DEDUP_EXPIRE_LIMIT, DEDUP_EXPIRE_SLACK_MS)
        if q.config["overflow"] == OVERFLOW_DROP_HEAD:
            self.trim(q, forward=True)

    def remember_publish(self, q: QueueState, idk: bytes, seq: int, previous: int | None) -> None:
        """Record that the id was published now (`publish` adds its age entry)."""
        dkey, dbs = q.dkey, self.dbs
        if previous is not None:
            # An age entry of a single id, as written before batches, goes with it;
            # a batch that names the id is skipped for it when it expires.
            self.txn.delete(keys.dedup_age_key(dkey, previous, idk), db=dbs.dedup_age)
        self._append(dbs.dedup, keys.dedup_key(dkey, idk), keys.dedup_value(seq, self.now))

    def expire_dedup(self, q: QueueState, cutoff: int, limit: int, slack: int = 0) -> None:
        """Forget up to `limit` of the oldest ids published at or before `cutoff`.

        Nothing is forgotten until the oldest id is `slack` ms older than `cutoff`
        (forgotten ids are only disk space: `fresh` ignores outdated records).
        Once a queue has been published to for longer than its dedup window, its
        publishes forget about as many ids as they remember, on every node; with
        the slack, one publish in many forgets a chunk of `limit`, so the oldest
        pages of the dedup B-trees are emptied and freed whole, not copied on
        write, with their branches, by every publish for a few ids each (that
        cost 20 % more bytes written per message).

        Age entries are taken oldest first where the cursor stands (a delete
        moves it to the next); an id whose dedup record is newer than the entry
        (published again since) is left alone. A batch cut short by `limit`
        keeps the ids not yet forgotten.
        """
        dkey = q.dkey
        start = len(dkey) + keys.U64.size
        budget = limit
        with (
            self.txn.cursor(db=self.dbs.dedup_age) as ages,
            self.txn.cursor(db=self.dbs.dedup) as records,
        ):
            if not ages.set_range(dkey) or not keys.aged_by(ages.key(), dkey, cutoff - slack):
                return
            while budget > 0:
                key = ages.key()
                if not keys.aged_by(key, dkey, cutoff):
                    return
                value = ages.value()
                idks = keys.unpack_idkeys(value) if value else [key[start:]]
                for idk in idks[:budget]:
                    record = records.get(dkey + idk)
                    if record is not None and keys.dedup_published_at(record) <= cutoff:
                        records.delete()
                if len(idks) > budget:
                    ages.put(key, keys.pack_idkeys(idks[budget:]))
                    return
                budget -= len(idks)
                if not ages.delete():
                    return

    # Dead-lettering and overflow

    def dead_letter(
        self, q: QueueState, seq: int, message: Message, reason: str, *, forward: bool = True
    ) -> None:
        """Take a message out of `q` and, when `forward`, republish it to the queue's DLQ.

        Messages pushed out of a DLQ by its own drop_head overflow while it takes
        a dead letter are not forwarded again (`forward=False`), which bounds the
        work of one command and rules out DLQ cycles.
        """
        self.remove(q, seq, message)
        q.add("dead_lettered_total", 1)
        target_name = q.config["dead_letter_queue"]
        if not forward or target_name is None or target_name == q.name:
            return
        target = self.queue(target_name)
        if target is None:
            return
        if target.refuses(1) is not None:
            return
        headers = dict(message["headers"])
        headers[HEADER_REASON] = reason
        headers[HEADER_SOURCE] = q.name
        self.enqueue(
            target,
            message["id"],
            message["body"],
            headers=headers,
            encoding=message.get("encoding"),
            delay_ms=None,
        )
        if target.config["overflow"] == OVERFLOW_DROP_HEAD:
            self.trim(target, forward=False)

    def trim(self, q: QueueState, *, forward: bool) -> None:
        """drop_head: dead-letter the oldest messages until `q` is within max_length."""
        limit = q.config["max_length"]
        if limit is None or q.total <= limit:
            return
        for seq, message in self.oldest(q, q.total - limit):
            self.dead_letter(q, seq, message, REASON_MAX_LENGTH, forward=forward)

    # Indexes

    def _append(self, db: lmdb._Database, key: bytes, value: bytes) -> None:
        """Put a key that is usually the database's largest, as a new message's are.

        LMDB splits a full page in the middle, so keys added in order leave every
        page half empty (a 1 KiB message took 4.3 KiB of store, each page holding
        one); MDB_APPEND fills the last page instead (2.3 KiB) and skips the
        search. When the key is not the largest (another queue's keys sort
        after it) LMDB refuses the append and the key is put as usual.
        """
        if not self.txn.put(key, value, db=db, append=True):
            self.txn.put(key, value, db=db)

    def _move(
        self, q: QueueState, seq: int, message: Message, state: str, fields: dict[str, Any]
    ) -> None:
        """Put a stored message in `state` with that state's `fields`, indexes and counters.

        Every node runs this once per message leased or requeued, so it builds
        the message key once and updates the counters directly (as `add` would).
        """
        key = keys.message_key(q.qkey, seq)
        self._unindex(q, key, seq, message)
        counters = q.counters
        counters[_STATE_COUNTER[message["state"]]] -= 1
        counters[_STATE_COUNTER[state]] += 1
        q.dirty = True
        for field in _STATE_FIELDS:
            message.pop(field, None)
        message["state"] = state
        message.update(fields)
        self._index(q, key, seq, message)
        self._messages.put(key, keys.encode(message))

    # `key` is the message's key, keys.message_key(q.qkey, seq): its ready key too.

    def _index(self, q: QueueState, key: bytes, seq: int, message: Message) -> None:
        state = message["state"]
        if state == READY:
            self._ready.put(key, b"")
        elif state == DELAYED:
            self._timers.put(keys.timer_key(q.qkey, message["due"], seq), keys.TIMER_DELAYED)
        else:
            self._timers.put(keys.timer_key(q.qkey, message["deadline"], seq), keys.TIMER_LEASE)

    def _unindex(self, q: QueueState, key: bytes, seq: int, message: Message) -> None:
        state = message["state"]
        if state == READY:
            cursor, index_key = self._ready, key
        else:
            due = message["due"] if state == DELAYED else message["deadline"]
            cursor, index_key = self._timers, keys.timer_key(q.qkey, due, seq)
        if not (cursor.set_key(index_key) and cursor.delete()):  # as txn.delete(index_key)
            raise CorruptRecord(f"message {seq} of {q.name} is {state} but not indexed")

    def _has_prefix(self, db: lmdb._Database, prefix: bytes) -> bool:
        with self.txn.cursor(db=db) as cursor:
            return bool(cursor.set_range(prefix)) and cursor.key().startswith(prefix)

    def _delete_prefix(self, db: lmdb._Database, prefix: bytes, limit: int) -> int:
        """Delete up to `limit` keys starting with `prefix`; returns how many.

        Every REAP_MAPPED_CHECK keys the store may let go of the map pages read so
        far: removing a record whose value has pages of its own reads its first
        page, and the kernel maps the cached pages around it too, so one reap of
        large records (dedup age entries) would otherwise map hundreds of MiB.
        """
        deleted = 0
        with self.txn.cursor(db=db) as cursor:
            if limit <= 0 or not cursor.set_range(prefix):
                return 0
            while deleted < limit and cursor.key().startswith(prefix):
                deleted += 1
                if deleted % REAP_MAPPED_CHECK == 0 and self._bound_mapped is not None:
                    self._bound_mapped()
                if not cursor.delete():
                    break
        return deleted
