"""Raft snapshots that carry the LMDB state itself.

pysyncobj's default serializer pickles the SyncObj's attributes, which would
silently drop everything kept in LMDB on a follower restored from a snapshot.
Ours writes one file: a header (pysyncobj's raft data and the store's applied
index) followed by a consistent copy of the LMDB environment.

The tick thread (the only writer) only pins the state to copy (a read
transaction and LMDB's meta pages, storage.PinnedState); a SnapshotJob thread
copies the data file by the kernel meanwhile, so applies and heartbeats go on
during a copy that takes seconds for gigabytes. BackgroundSerializer reports
the job to pysyncobj, which drops the journal before the snapshot only once
the file is complete, fsynced and in place.

File layout: MAGIC (8 B) | header length (u64 BE) | pickled header | data.mdb bytes.
"""

import concurrent.futures
import contextlib
import logging
import os
import pickle
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.serializer import Serializer

from cluster.journal import DurableJournal
from cluster.store_holder import StoreHolder
from storage import Store
from storage.store import PinnedState

logger = logging.getLogger(__name__)

MAGIC = b"RAFTMQS1"
_LEN = struct.Struct(">Q")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class SnapshotHeader:
    raft_data: Any
    applied_index: int


def _read_header(f: BinaryIO) -> SnapshotHeader:
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a raftmq snapshot")
    (length,) = _LEN.unpack(f.read(_LEN.size))
    raw = pickle.loads(f.read(length))
    return SnapshotHeader(raft_data=raw["raft_data"], applied_index=int(raw["applied_index"]))


def _sync_and_drop(fd: int, start: int, end: int) -> None:
    """Make bytes start..end of `fd` durable, then drop them from the page cache."""
    os.fdatasync(fd)
    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


def copy_synced(source: int, offset: int, target: int, sync_bytes: int) -> int:
    """Copy `source` from `offset` to its end onto `target` (from its start) by the kernel.

    Each `sync_bytes` written are synced and dropped from the page cache before
    the next: a copy of a whole store never leaves more than that much dirty
    for the filesystem's journal commits, and with them the Raft journal's
    fdatasyncs (on the same disk), to wait for. Returns the bytes copied.
    """
    copied = 0
    while True:
        moved = 0
        while moved < sync_bytes:
            n = os.copy_file_range(source, target, sync_bytes - moved, offset + copied + moved)
            if n == 0:
                break
            moved += n
        if moved:
            _sync_and_drop(target, copied, copied + moved)
            copied += moved
        if moved < sync_bytes:
            return copied


class SnapshotCodec:
    """The serializer / deserializer pair handed to pysyncobj's SyncObjConf."""

    def __init__(
        self,
        holder: StoreHolder,
        work_dir: str,
        *,
        sync_bytes: int = 32 << 20,
        bytes_per_s: int | None = None,
    ) -> None:
        self._holder = holder
        self._work_dir = work_dir
        self._pacing = CopyPacing(sync_bytes, bytes_per_s)
        self._journal: Callable[[], DurableJournal | None] = lambda: None
        self._jobs: set[SnapshotJob] = set()
        self._jobs_lock = threading.Lock()
        os.makedirs(work_dir, exist_ok=True)

    def attach_journal(self, journal: Callable[[], DurableJournal | None]) -> None:
        self._journal = journal

    def _align_journal(self, raft_data: Any) -> None:
        """Drop journal entries before the snapshot's boundary, keeping the tail.

        pysyncobj renames the snapshot into place and compacts the journal on a
        later tick. After a crash between the two, its loader finds a journal
        that does not start at the snapshot's two entries and clears it whole,
        losing durable entries after the snapshot. Compacting here first makes
        its check pass, so the tail is kept and replayed.
        """
        journal = self._journal()
        if journal is None or len(journal) < 2:
            return
        last_entry, before_last, _cluster = raft_data
        position = int(before_last[1]) - int(journal[0][1])
        if position <= 0 or position + 1 >= len(journal):
            return
        if tuple(journal[position]) == tuple(before_last) and tuple(journal[position + 1]) == tuple(
            last_entry
        ):
            logger.warning("journal predates the snapshot at %d: compacting it", before_last[1])
            journal.deleteEntriesTo(position)

    @property
    def sync_bytes(self) -> int:
        """Snapshot files, written or received, are synced every this many bytes."""
        return self._pacing.sync_bytes

    def serialize(self, path: str, raft_data: Any) -> None:
        """Write a snapshot to `path` and wait for it.

        pysyncobj's own Serializer calls this hook synchronously; it serves only
        until ReplicatedBroker swaps in a BackgroundSerializer on its first tick.
        """
        self.start(path, raft_data).future.result()

    def start(
        self, path: str, raft_data: Any, *, compacts_journal_to: int | None = None
    ) -> "SnapshotJob":
        """Pin the current state and write it to `path` on a new thread.

        Call it on the tick thread, which alone applies, so no write runs while
        the state is pinned. With `compacts_journal_to` (the first Raft index the
        journal keeps after this snapshot) the job also prepares that compaction
        (DurableJournal.prepare_compaction) before it reports done.
        """
        journal = self._journal() if compacts_journal_to is not None else None

        def prepare() -> None:
            if journal is not None and compacts_journal_to is not None:
                journal.prepare_compaction(compacts_journal_to)

        job = SnapshotJob(
            self._holder.store.pin(), path, raft_data, self._holder.sync, self._pacing, prepare
        )
        with self._jobs_lock:
            self._jobs.add(job)
        job.future.add_done_callback(lambda _: self._forget(job))
        return job

    def _forget(self, job: "SnapshotJob") -> None:
        with self._jobs_lock:
            self._jobs.discard(job)

    def stop_jobs(self) -> None:
        """Abandon snapshots being written: the store is about to close or be replaced."""
        with self._jobs_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.stop()

    def deserialize(self, path: str) -> Any:
        """Load a snapshot; replace the store only when the snapshot is ahead of it.

        At start-up the local store is normally at or past the snapshot (it was
        synced before the snapshot was taken) and is kept; the journal replay
        then skips what it already holds. A snapshot installed by the leader on
        a follower that fell behind replaces the store.
        """
        with open(path, "rb") as f:
            header = _read_header(f)
            self._align_journal(header.raft_data)
            if self._holder.store.applied_index() >= header.applied_index:
                logger.info(
                    "snapshot at %d not newer than store at %d: store kept",
                    header.applied_index,
                    self._holder.store.applied_index(),
                )
                return header.raft_data
            self.stop_jobs()
            restore_dir = tempfile.mkdtemp(dir=self._work_dir)
            data_path = os.path.join(restore_dir, "data.mdb")
            with open(data_path, "wb") as out:
                copy_synced(f.fileno(), f.tell(), out.fileno(), self._pacing.sync_bytes)
                os.fsync(out.fileno())
        try:
            self._holder.replace_data_file(data_path)
        finally:
            shutil.rmtree(restore_dir, ignore_errors=True)
        logger.info("store restored from snapshot at applied index %d", header.applied_index)
        return header.raft_data


@dataclass(frozen=True)
class CopyPacing:
    """How a snapshot copy shares the disk: synced every `sync_bytes`, at most `bytes_per_s`."""

    sync_bytes: int
    bytes_per_s: int | None


class SnapshotJob:
    """Writes one snapshot file from a pinned store state, on its own thread.

    The file is written as `path`.part, fsynced, and renamed to `path` only
    when complete; the store is synced first, so a node restarting from this
    snapshot finds its store at or past it. `future` gives the applied index.
    """

    def __init__(
        self,
        pinned: PinnedState,
        path: str,
        raft_data: Any,
        sync_store: Callable[[], None],
        pacing: CopyPacing,
        before_done: Callable[[], None] = lambda: None,
    ) -> None:
        self.future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._stop = threading.Event()
        self._pacing = pacing
        self._before_done = before_done
        self._thread = threading.Thread(
            target=self._run,
            args=(pinned, path, raft_data, sync_store),
            name="raftmq-snapshot",
            daemon=True,
        )
        self._thread.start()

    def _run(
        self, pinned: PinnedState, path: str, raft_data: Any, sync_store: Callable[[], None]
    ) -> None:
        started = time.monotonic()
        part = path + ".part"
        try:
            with pinned:
                header = pickle.dumps(
                    {"raft_data": raft_data, "applied_index": pinned.applied_index}
                )
                with open(part, "wb") as out:
                    out.write(MAGIC)
                    out.write(_LEN.pack(len(header)))
                    out.write(header)
                    out.flush()
                    size = pinned.copy_to(
                        out.fileno(),
                        out.tell(),
                        chunk=self._pacing.sync_bytes,
                        between_chunks=self._chunk_done(out.fileno(), out.tell()),
                    )
                    os.fsync(out.fileno())
            # The journal before this state is dropped once the future resolves:
            # the store must hold it durably too (the durability rule).
            sync_store()
            os.replace(part, path)
            _fsync_dir(os.path.dirname(os.path.abspath(path)))
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)
            if isinstance(exc, InterruptedError):
                logger.info("snapshot at applied index %d abandoned", pinned.applied_index)
            else:
                logger.exception("snapshot at applied index %d failed", pinned.applied_index)
            self.future.set_exception(exc)
            return
        logger.info(
            "snapshot written at applied index %d (%.0f MiB) in %.2f s",
            pinned.applied_index,
            size / (1 << 20),
            time.monotonic() - started,
        )
        try:
            self._before_done()
        except Exception:
            logger.exception("preparing the journal's compaction failed (it will copy all)")
        self.future.set_result(pinned.applied_index)

    def _chunk_done(self, fd: int, offset: int) -> Callable[[int], None]:
        """After each chunk: write it to disk, drop it from the page cache, keep the pace.

        Synced chunk by chunk, a copy never leaves more than one chunk of
        dirty pages for the filesystem's journal commits (and so the Raft
        journal's fdatasyncs) to wait for; dropped from the cache, it does not
        push the store's pages out of memory.
        """
        started = time.monotonic()
        synced = 0

        def done(copied: int) -> None:
            nonlocal synced
            if self._stop.is_set():
                raise InterruptedError("snapshot copy stopped")
            _sync_and_drop(fd, offset + synced, offset + copied)
            synced = copied
            rate = self._pacing.bytes_per_s
            if rate:
                ahead = copied / rate - (time.monotonic() - started)
                if ahead > 0 and self._stop.wait(ahead):
                    raise InterruptedError("snapshot copy stopped")

        return done

    def stop(self) -> None:
        """Abandon the copy and wait until the thread has let go of the store."""
        self._stop.set()
        self._thread.join()


def snapshot_due(
    journal_bytes: int, store_bytes: int, *, ratio: float, small_store_bytes: int
) -> bool:
    """Whether a snapshot is worth its copy (RaftSettings.snapshot_log_ratio).

    A snapshot copies the whole store; it is due once the journal it replaces
    holds at least ``ratio`` times the store's size, or at once while the store
    is small (at most ``small_store_bytes``) or the rule is off (``ratio`` 0).
    """
    if ratio <= 0 or store_bytes <= small_store_bytes:
        return True
    return journal_bytes >= ratio * store_bytes


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BackgroundSerializer(Serializer):  # type: ignore[misc]
    """pysyncobj's snapshot file handling, with the snapshot written by a SnapshotJob.

    pysyncobj's Serializer runs a custom serializer synchronously on the tick
    thread and renames its file into place as soon as it returns; this one
    starts a job and reports SERIALIZING until the job has put a complete
    file in place. Transmissions of the snapshot to followers (inherited) wait
    meanwhile, as they do while pysyncobj's own forked serializer runs.
    """

    def __init__(
        self,
        codec: SnapshotCodec,
        path: str,
        transmission_batch_bytes: int,
        due: Callable[[], bool] = lambda: True,
    ) -> None:
        """``due`` is asked each time pysyncobj wants a snapshot; False puts it off."""
        super().__init__(path, transmission_batch_bytes, False, None, codec.deserialize, None)
        self._codec = codec
        self._path = path
        self._due = due
        self._job: SnapshotJob | None = None
        self._job_index: int | None = None
        self._incoming: BinaryIO | None = None
        self._incoming_synced = 0

    def serialize(self, data: Any, id: int) -> None:
        # Declining leaves pysyncobj's own schedule where it was: it asks again
        # on the next tick, and the copy starts once ``due`` agrees.
        if self._job is not None or not self._due():
            return
        try:
            # pysyncobj then drops the entries before `id` from the journal.
            self._job = self._codec.start(self._path, data[1:], compacts_journal_to=id)
        except Exception:
            logger.exception("could not start a snapshot")
            return
        self._job_index = id
        # Nonzero: the inherited getTransmissionData waits until the file is in place.
        self._Serializer__pid = -3

    def setTransmissionData(self, data: Any) -> bool:
        """Write a part of the leader's snapshot; True once the whole file is in place.

        As pysyncobj's, except that the file is synced and dropped from the page
        cache every `sync_bytes` (as a snapshot this node writes itself): written
        unsynced, a snapshot of a large store filled the page cache with dirty
        pages that the kernel then wrote back at once, and the fdatasyncs of the
        Raft journals on the same disk waited seconds for them.
        """
        if data is None:
            return False
        part, is_first, is_last = data
        if is_first:
            self._close_incoming()
            try:
                self._incoming = open(self._path + ".1.tmp", "wb")  # noqa: SIM115
            except OSError:
                logger.exception("could not open a file for the snapshot being received")
                return False
            self._incoming_synced = 0
        incoming = self._incoming
        if incoming is None:
            return False
        try:
            incoming.write(part)
            if is_last or incoming.tell() - self._incoming_synced >= self._codec.sync_bytes:
                incoming.flush()
                _sync_and_drop(incoming.fileno(), self._incoming_synced, incoming.tell())
                self._incoming_synced = incoming.tell()
            if not is_last:
                return False
            self._close_incoming()
            os.replace(self._path + ".1.tmp", self._path)
            _fsync_dir(os.path.dirname(os.path.abspath(self._path)))
        except OSError:
            logger.exception("could not write the snapshot being received")
            self._close_incoming()
            return False
        return True

    def _close_incoming(self) -> None:
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None

    def checkSerializing(self) -> tuple[int, int | None]:
        job = self._job
        if job is None:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        if not job.future.done():
            return SERIALIZER_STATE.SERIALIZING, self._job_index
        self._job = None
        self._Serializer__pid = 0
        if job.future.exception() is not None:
            return SERIALIZER_STATE.FAILED, self._job_index
        # Transmissions in progress read the replaced file: start them again.
        self._Serializer__transmissions: dict[Any, Any] = {}
        return SERIALIZER_STATE.SUCCESS, self._job_index


def snapshot_applied_index(path: str) -> int:
    """The store applied index recorded in a snapshot file."""
    with open(path, "rb") as f:
        return _read_header(f).applied_index


def restore_backup(path: str, store_dir: str, *, map_size: int) -> int:
    """Seed an empty store directory from a backup; return the backup's applied index.

    The restored state is detached from the old cluster's log (see
    Store.detach_from_log): restore one node, start it as a new cluster, and
    add the others with --join.
    """
    if os.path.exists(os.path.join(store_dir, "data.mdb")):
        raise FileExistsError(f"{store_dir} already holds a store; restore into an empty data dir")
    os.makedirs(store_dir, exist_ok=True)
    with open(path, "rb") as f:
        header = _read_header(f)
        with open(os.path.join(store_dir, "data.mdb"), "wb") as out:
            shutil.copyfileobj(f, out, _COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
    store = Store(store_dir, map_size=map_size)
    try:
        store.detach_from_log()
        store.sync()
    finally:
        store.close()
    return header.applied_index
