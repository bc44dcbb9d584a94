"""The broker state in one LMDB environment, changed only by `Store.apply`.

Apply is a deterministic function of (state, index, commands): no clock, no
randomness, no threads. Replicas that apply the same Raft entries hold the same
bytes, which `digest` lets tests and operators check.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import lmdb

from storage import exchanges, keys
from storage.commands import Command, Result, command_now, execute
from storage.errors import InvalidCommand
from storage.mapped import mapped_file_bytes, mapped_ranges, release_mapped_pages
from storage.mutation import Dbs, Mutation, lease_holds
from storage.writeback import start_writeback

T = TypeVar("T")

# Mapped file bytes (LMDB's map and shared libraries) above which the store lets
# go of the map's pages: see `Store.bound_mapped_pages`.
MAPPED_BOUND_BYTES = 64 << 20


def _by_name(named_db: tuple[bytes, object]) -> bytes:
    return named_db[0]


class Store:
    """One replica's queues, messages and node registry."""

    def __init__(
        self,
        path: str,
        *,
        map_size: int = 8 << 30,
        sync: bool = False,
        mapped_bound: int = MAPPED_BOUND_BYTES,
    ) -> None:
        self._path = path
        self._mapped_bound = mapped_bound
        self._env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=len(keys.DB_NAMES),
            subdir=True,
            sync=sync,
            metasync=sync,
            writemap=False,
            lock=True,
            readahead=False,
        )
        with self._env.begin(write=True) as txn:
            self._dbs = Dbs(*(self._env.open_db(name, txn=txn) for name in keys.DB_NAMES))
        # Derived data (topic routers) keyed by versions stored in LMDB; see Mutation.memo.
        self._memo: dict[Any, Any] = {}
        # Address ranges of LMDB's map of data.mdb, found on first release.
        self._map_ranges: list[tuple[int, int]] | None = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._env.close()

    @property
    def path(self) -> str:
        return self._path

    def _meta(self, txn: lmdb.Transaction[bytes], key: bytes) -> int:
        raw = txn.get(key, db=self._dbs.meta)
        return 0 if raw is None else int(keys.U64.unpack(raw)[0])

    def applied_index(self) -> int:
        with self._env.begin() as txn:
            return self._meta(txn, keys.APPLIED_INDEX)

    def apply(self, index: int, commands: list[Command]) -> list[Result] | None:
        """Apply one Raft entry in one write transaction; None when `index` is already applied.

        Each command runs in a nested transaction: a command that fails is
        rolled back alone and answered with status "invalid", the rest commit.
        LMDB errors (map full, I/O) are not about the command and propagate:
        skipping the command on this replica only would make it diverge.
        """
        txn = self._env.begin(write=True)
        try:
            if index <= self._meta(txn, keys.APPLIED_INDEX):
                txn.abort()
                return None
            last_now = self._meta(txn, keys.LAST_NOW)
            results: list[Result] = []
            for cmd in commands:
                result, last_now = self._apply_one(txn, cmd, last_now)
                results.append(result)
            txn.put(keys.APPLIED_INDEX, keys.U64.pack(index), db=self._dbs.meta)
            txn.put(keys.LAST_NOW, keys.U64.pack(last_now), db=self._dbs.meta)
            txn.commit()
        except BaseException:
            txn.abort()
            # Versions written by the aborted entry will be handed out again.
            self._memo.clear()
            raise
        return results

    def _apply_one(
        self, txn: lmdb.Transaction[bytes], cmd: Command, last_now: int
    ) -> tuple[Result, int]:
        child = self._env.begin(write=True, parent=txn)
        try:
            now = max(command_now(cmd), last_now)
            mutation = Mutation(child, self._dbs, now, self._memo, self.bound_mapped_pages)
            result = execute(mutation, cmd)
        except lmdb.Error:
            child.abort()
            raise
        except InvalidCommand as exc:
            child.abort()
            return {"status": "invalid", "message": str(exc)}, last_now
        except Exception as exc:
            child.abort()
            return {"status": "invalid", "message": f"{type(exc).__name__}: {exc}"}, last_now
        child.commit()
        return result, now

    def sync(self) -> None:
        self._env.sync(True)

    def start_writeback(self) -> None:
        """Hand the data file's dirty pages to the disk without waiting (storage/writeback.py)."""
        start_writeback(os.path.join(self._path, "data.mdb"))

    def release_mapped_pages(self) -> None:
        """Stop counting the database's pages this process has read in its RSS.

        They stay in the page cache; see storage/mapped.py. Readers and the
        one writer may run meanwhile (see `bound_mapped_pages`).
        """
        data_file = os.path.join(self._path, "data.mdb")
        if self._map_ranges is None:
            # LMDB maps the file once, at open, for the environment's life.
            self._map_ranges = mapped_ranges(data_file)
        release_mapped_pages(data_file, self._map_ranges)

    def bound_mapped_pages(self) -> bool:
        """`release_mapped_pages` if this process has more than the store's
        `mapped_bound` of files mapped in; whether it did.

        Cheap enough to ask after every entry, and while a command removes many
        keys. Releasing while a write transaction is open is safe: the map is
        read-only, pages stay in the page cache, and no page this transaction
        can reach changes before it commits (LMDB writes through the file).
        """
        if mapped_file_bytes() <= self._mapped_bound:
            return False
        self.release_mapped_pages()
        return True

    def pin(self) -> PinnedState:
        """Hold the last committed state for a copy that may run while writes go on.

        Call it where no write transaction runs (the thread that applies),
        then copy from any one thread and `close` the pin there. See PinnedState.
        """
        return PinnedState(self._env, os.path.join(self._path, "data.mdb"), self._dbs.meta)

    def used_bytes(self) -> int:
        """Bytes of the data file up to its last used page: what a snapshot copies."""
        return (int(self._env.info()["last_pgno"]) + 1) * int(self._env.stat()["psize"])

    def exchange_copies(self, exchange: str) -> int:
        """The most queues a publish to `exchange` is copied to (exchanges.bound_queue_count)."""
        return self.view(lambda txn, dbs: exchanges.bound_queue_count(txn, dbs, exchange))

    def live_bytes(self) -> int:
        """Bytes of the pages that hold data now, free pages not counted.

        The data file never shrinks: pages freed by acks and deletes are reused
        by later writes, so this, not `used_bytes`, is what a full map is near.
        """
        main = self._env.stat()  # the main database: it names the others
        with self._env.begin() as txn:
            stats = [main, *(txn.stat(db) for db in self._dbs)]
        pages = 2 + sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
        return int(pages * main["psize"])

    def copy_to(self, path: str) -> None:
        """Write a compacted, consistent copy of the environment into directory `path`."""
        os.makedirs(path, exist_ok=True)
        self._env.copy(path, compact=True)

    def digest(self) -> str:
        """sha256 over every named database's entries, length-prefixed, in key order."""
        h = hashlib.sha256()
        with self._env.begin() as txn:
            for name, db in sorted(zip(keys.DB_NAMES, self._dbs, strict=True), key=_by_name):
                h.update(len(name).to_bytes(4, "big") + name)
                with txn.cursor(db=db) as cursor:
                    for key, value in cursor:
                        h.update(len(key).to_bytes(4, "big") + key)
                        h.update(len(value).to_bytes(8, "big") + value)
                h.update(b"\xff" * 4)
        return h.hexdigest()

    # Read side: each call is one read transaction at the caller's now.

    def view(self, fn: Callable[[lmdb.Transaction[bytes], Dbs], T]) -> T:
        """Run `fn` in one read transaction (the exchange and stream readers use it)."""
        with self._env.begin() as txn:
            return fn(txn, self._dbs)

    def _now(self, txn: lmdb.Transaction[bytes], now_ms: int) -> int:
        """The caller's clock, never behind the time applied commands already saw."""
        return max(now_ms, self._meta(txn, keys.LAST_NOW))

    def _view(
        self, txn: lmdb.Transaction[bytes], name: str, record: dict[str, Any], now: int
    ) -> dict[str, Any]:
        """Visible stats: timers due by `now` count as ready even before a receive promotes them."""
        q = keys.messages_prefix(name, record)
        due_delayed = 0
        due_leases = 0
        with txn.cursor(db=self._dbs.timers) as cursor:
            if cursor.set_range(q):
                for key, kind in cursor.iternext():
                    if not key.startswith(q) or keys.split_timer_key(q, key)[0] > now:
                        break
                    if kind == keys.TIMER_DELAYED:
                        due_delayed += 1
                    else:
                        due_leases += 1
        counters = record["counters"]
        return {
            "name": name,
            "config": record["config"],
            "ready": counters["ready_count"] + due_delayed + due_leases,
            "in_flight": counters["leased_count"] - due_leases,
            "delayed": counters["delayed_count"] - due_delayed,
            "total": counters["total"],
            "published_total": counters["published_total"],
            "delivered_total": counters["delivered_total"],
            "acked_total": counters["acked_total"],
            "dead_lettered_total": counters["dead_lettered_total"],
        }

    def get_queue(self, name: str, now_ms: int) -> dict[str, Any] | None:
        if not keys.is_queue_name(name):
            return None
        with self._env.begin() as txn:
            raw = txn.get(name.encode(), db=self._dbs.queues)
            if raw is None:
                return None
            return self._view(txn, name, keys.decode(raw), self._now(txn, now_ms))

    def list_queues(self, now_ms: int) -> list[dict[str, Any]]:
        with self._env.begin() as txn:
            now = self._now(txn, now_ms)
            with txn.cursor(db=self._dbs.queues) as cursor:
                records = [(key.decode(), keys.decode(value)) for key, value in cursor]
            return [self._view(txn, name, record, now) for name, record in records]

    def lease_deadlines(self, name: str, receipts: list[str], now_ms: int) -> dict[str, int]:
        """The receipts of `name` whose lease still holds at `now_ms`, with its deadline (ms)."""
        if not keys.is_queue_name(name):
            return {}
        held: dict[str, int] = {}
        with self._env.begin() as txn:
            raw = txn.get(name.encode(), db=self._dbs.queues)
            if raw is None:
                return {}
            prefix = keys.messages_prefix(name, keys.decode(raw))
            now = self._now(txn, now_ms)
            for receipt in receipts:
                parsed = keys.parse_receipt(receipt)
                if parsed is None:
                    continue
                stored = txn.get(keys.message_key(prefix, parsed[0]), db=self._dbs.messages)
                message = None if stored is None else keys.decode(stored)
                if message is not None and lease_holds(message, parsed[1], now):
                    held[receipt] = int(message["deadline"])
        return held

    def has_deliverable(self, name: str, now_ms: int) -> bool:
        """Cheap long-poll hint: a ready message or a timer already due (may be a dead letter)."""
        if not keys.is_queue_name(name):
            return False
        with self._env.begin() as txn:
            raw = txn.get(name.encode(), db=self._dbs.queues)
            if raw is None:
                return False
            record = keys.decode(raw)
            if record["counters"]["ready_count"] > 0:
                return True
            due = self._first_due(txn, name, record)
            return due is not None and due <= self._now(txn, now_ms)

    def next_due_ms(self, name: str) -> int | None:
        """Earliest delay end or lease deadline of the queue, possibly already past."""
        if not keys.is_queue_name(name):
            return None
        with self._env.begin() as txn:
            raw = txn.get(name.encode(), db=self._dbs.queues)
            return None if raw is None else self._first_due(txn, name, keys.decode(raw))

    def _first_due(
        self, txn: lmdb.Transaction[bytes], name: str, record: dict[str, Any]
    ) -> int | None:
        q = keys.messages_prefix(name, record)
        with txn.cursor(db=self._dbs.timers) as cursor:
            if cursor.set_range(q) and cursor.key().startswith(q):
                return keys.split_timer_key(q, cursor.key())[0]
        return None

    def has_buried(self) -> bool:
        """Whether deleted or purged queues left keys for `reap` commands to remove."""
        with self._env.begin() as txn, txn.cursor(db=self._dbs.graveyard) as cursor:
            return bool(cursor.first())

    def detach_from_log(self) -> None:
        """Make restored state the starting point of a new cluster's Raft log.

        The applied index counts entries of the log the state came from; a new
        cluster's log starts again at 1 and must not be skipped as "already
        applied". The old cluster's node registry goes too: its addresses mean
        nothing to the new cluster.
        """
        with self._env.begin(write=True) as txn:
            txn.put(keys.APPLIED_INDEX, keys.U64.pack(0), db=self._dbs.meta)
            txn.drop(self._dbs.nodes, delete=False)

    def nodes(self) -> dict[str, dict[str, Any]]:
        with self._env.begin() as txn, txn.cursor(db=self._dbs.nodes) as cursor:
            return {key.decode(): keys.decode(value) for key, value in cursor}


class PinnedState:
    """One committed state of an LMDB environment, kept by a read transaction.

    A copy of LMDB's data file made while writers run is consistent if it
    takes the two meta pages as they were when no write transaction ran and
    the pages up to that state's last page: every page reachable from that
    state stays untouched while a read transaction holds it (MVCC), and pages
    written since are unreachable from it. This is how mdb_env_copy works
    without compaction; here the pages go from file to file by the kernel
    (copy_file_range), not through the memory map, so the copy neither grows
    the process's RSS nor holds the GIL for long.

    Created where no write transaction runs (Store.pin); `copy_to` and
    `close` may then run on another thread, one at a time.
    """

    def __init__(self, env: lmdb.Environment, data_file: str, meta_db: lmdb._Database) -> None:
        self._txn = env.begin()
        self._fd = -1
        try:
            info = env.info()
            if info["last_txnid"] != self._txn.id():
                raise RuntimeError("a write transaction ran while the state was being pinned")
            raw = self._txn.get(keys.APPLIED_INDEX, db=meta_db)
            self.applied_index = 0 if raw is None else int(keys.U64.unpack(raw)[0])
            page_size = int(env.stat()["psize"])
            self.size = (int(info["last_pgno"]) + 1) * page_size
            self._fd = os.open(data_file, os.O_RDONLY)
            self._meta = os.pread(self._fd, 2 * page_size, 0)
            if len(self._meta) != 2 * page_size:
                raise RuntimeError(f"{data_file} is shorter than its meta pages")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PinnedState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def copy_to(
        self,
        out_fd: int,
        offset: int,
        *,
        chunk: int = 64 << 20,
        between_chunks: Callable[[int], None] = lambda copied: None,
    ) -> int:
        """Write the state's data file at `offset` of `out_fd`; returns its size.

        `between_chunks(bytes copied so far)` runs after every `chunk` bytes
        (to sync, pace or stop the copy by raising).
        """
        os.pwrite(out_fd, self._meta, offset)
        copied = len(self._meta)
        while copied < self.size:
            done = os.copy_file_range(
                self._fd, out_fd, min(chunk, self.size - copied), copied, offset + copied
            )
            if done == 0:
                raise RuntimeError(f"data file ended at {copied} of {self.size} bytes")
            copied += done
            between_chunks(copied)
        return copied

    def close(self) -> None:
        self._txn.abort()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
