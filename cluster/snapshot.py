"""Raft snapshots that carry the LMDB state itself.

pysyncobj's default serializer pickles the SyncObj's attributes, which would
silently drop everything kept in LMDB on a follower restored from a snapshot.
Ours writes one file: a header (pysyncobj's raft data and the store's applied
index) followed by a consistent copy of the LMDB environment. It runs on the
tick thread (never forked), so no apply can interleave with the copy.

File layout: MAGIC (8 B) | header length (u64 BE) | pickled header | data.mdb bytes.
"""

import logging
import os
import pickle
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from cluster.journal import DurableJournal
from cluster.store_holder import StoreHolder
from storage import Store

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


class SnapshotCodec:
    """The serializer / deserializer pair handed to pysyncobj's SyncObjConf."""

    def __init__(self, holder: StoreHolder, work_dir: str) -> None:
        self._holder = holder
        self._work_dir = work_dir
        self._journal: Callable[[], DurableJournal | None] = lambda: None
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

    def serialize(self, path: str, raft_data: Any) -> None:
        """Write a snapshot of the current LMDB state to `path` (pysyncobj renames it)."""
        started = time.monotonic()
        store = self._holder.store
        # The journal before this point is about to be dropped: the state that
        # replaces it must be on disk first (durability rule); copy_data_file syncs.
        applied = store.applied_index()
        header = pickle.dumps({"raft_data": raft_data, "applied_index": applied})
        with open(path, "wb") as out:
            out.write(MAGIC)
            out.write(_LEN.pack(len(header)))
            out.write(header)
            # On the tick thread, which alone applies: no write runs during the copy.
            store.copy_data_file(out)
            out.flush()
            os.fsync(out.fileno())
        logger.info(
            "snapshot written at applied index %d in %.2f s", applied, time.monotonic() - started
        )

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
            restore_dir = tempfile.mkdtemp(dir=self._work_dir)
            data_path = os.path.join(restore_dir, "data.mdb")
            with open(data_path, "wb") as out:
                shutil.copyfileobj(f, out, _COPY_CHUNK)
                out.flush()
                os.fsync(out.fileno())
        try:
            self._holder.replace_data_file(data_path)
        finally:
            shutil.rmtree(restore_dir, ignore_errors=True)
        logger.info("store restored from snapshot at applied index %d", header.applied_index)
        return header.raft_data


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
