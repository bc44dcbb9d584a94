"""Starting the write-back of a file's dirty pages without waiting for it.

The store is written without syncs (the Raft journal makes writes durable),
so its dirty pages would pile up in the page cache until the kernel writes
them back in bursts that stall every fdatasync on the filesystem, the Raft
journal's too. `sync_file_range(SYNC_FILE_RANGE_WRITE)` hands the dirty pages
to the disk now, without a cache flush and without waiting, so write-back
stays a steady trickle. Linux only; a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    function = libc.sync_file_range
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    typed: Callable[[int, int, int, int], int] = function
    return typed


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(path: str) -> None:
    """Start writing `path`'s dirty pages to disk; returns without waiting for them."""
    if _SYNC_FILE_RANGE is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), path)
    finally:
        os.close(fd)
