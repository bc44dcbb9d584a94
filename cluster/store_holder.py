"""Owns the open Store and the lock that lets a snapshot install swap it."""

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from storage import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StoreHolder:
    """The one Store of this node, guarded so readers never see it mid-swap.

    Applies and swaps run on the Raft tick thread, so they never overlap one
    another; HTTP readers take `lock` so that a swap (snapshot install) never
    closes the environment under a read. A snapshot being copied holds its own
    read transaction on another thread (cluster.snapshot.SnapshotJob), and is
    stopped before a swap or close. LMDB's MVCC lets reads and the one writer
    run side by side otherwise.
    """

    def __init__(self, path: str, *, map_size: int, sync: bool) -> None:
        self._path = path
        self._map_size = map_size
        self._sync = sync
        os.makedirs(path, exist_ok=True)
        self.lock = threading.RLock()
        # Held by the threads that use the store outside the tick thread and the
        # readers' lock (the flusher's syncs), so a swap or close waits for them.
        self._lifetime = threading.Lock()
        self.store = Store(path, map_size=map_size, sync=sync)
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self, fn: Callable[[Store], T]) -> T:
        with self.lock:
            return fn(self.store)

    def sync(self) -> None:
        """Write the store's committed pages to disk (fdatasync), from any thread."""
        with self._lifetime:
            if not self._closed:
                self.store.sync()

    def start_writeback(self) -> None:
        """Start writing the store's dirty pages to disk, from any thread."""
        with self._lifetime:
            if not self._closed:
                self.store.start_writeback()

    def replace_data_file(self, data_path: str) -> None:
        """Swap the LMDB data file for `data_path` (a consistent copy) and reopen."""
        with self.lock, self._lifetime:
            self.store.close()
            target = os.path.join(self._path, "data.mdb")
            os.replace(data_path, target)
            lock_file = os.path.join(self._path, "lock.mdb")
            if os.path.exists(lock_file):
                os.remove(lock_file)
            dir_fd = os.open(self._path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self.store = Store(self._path, map_size=self._map_size, sync=self._sync)

    def close(self) -> None:
        with self.lock, self._lifetime:
            self._closed = True
            self.store.close()


class StoreFlusher:
    """Starts the write-back of the store's dirty pages every `period_s`, on its own thread.

    The store is written without syncs (the Raft journal is what makes a write
    durable), so its dirty pages would pile up in the page cache, gigabytes
    under a steady load, until the kernel writes them back in bursts. On ext4
    such a burst stalls every fdatasync on the filesystem, the Raft journal's
    too, for seconds: long enough for elections. Handing the pages to the disk
    every second, without a cache flush and without waiting (an fdatasync of
    the store would put a flush in front of the journal's every second, which
    showed in the p99 of synchronous publishes), keeps write-back a trickle.
    """

    def __init__(self, holder: StoreHolder, period_s: float) -> None:
        self._holder = holder
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raftmq-store-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self._holder.start_writeback()
            except Exception:
                logger.exception("starting the store's write-back failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
