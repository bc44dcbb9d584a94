"""Letting go of the pages of LMDB's memory map that this process has read.

LMDB reads through a read-only shared memory map of data.mdb. Every page a
node ever reads (a copy-on-write source, a snapshot copy, a scan) stays mapped
and counts in the node's RSS as file-backed memory, so RSS grows with the size
of the database although those pages are only page cache. Linux maps more than
the page read: a read fault also maps the neighbouring pages that are cached
("fault-around", up to 64 KiB), so removing a few thousand large records, one
fault each, can map hundreds of megabytes. `MADV_DONTNEED` on
a read-only shared file mapping drops the process's page-table entries and
nothing else: the pages stay in the page cache and on disk, and the next read
maps them again with a minor fault. LMDB's own data and its durability are
untouched (without MDB_WRITEMAP, LMDB never writes through the map).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

_MADV_DONTNEED = 4


def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    function: Callable[[int, int, int], int] = madvise
    return function


_MADVISE = _madvise()
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _statm_fd() -> int:
    return os.open("/proc/self/statm", os.O_RDONLY)


def mapped_file_bytes() -> int:
    """Bytes of files and shared memory this process has mapped in (statm's "shared").

    In a node that is LMDB's map of data.mdb plus a steady ~20 MiB of shared
    libraries. One pread of a kept-open /proc file (about a microsecond), so it can
    be asked after every write transaction. 0 where /proc/self/statm is missing.
    """
    try:
        return int(os.pread(_statm_fd(), 128, 0).split()[2]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def mapped_ranges(file_path: str, maps_path: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of every mapping of ``file_path`` in this process."""
    target = os.path.realpath(file_path)
    ranges: list[tuple[int, int]] = []
    try:
        with open(maps_path) as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target:
                    start, _, end = fields[0].partition("-")
                    ranges.append((int(start, 16), int(end, 16)))
    except OSError:
        return []
    return ranges


def release_mapped_pages(file_path: str, ranges: list[tuple[int, int]]) -> int:
    """Drop this process's mappings of the pages in ``ranges`` (of ``file_path``, see
    `mapped_ranges`); the bytes of address range covered.

    Only for read-only shared mappings such as LMDB's (see the module docstring).
    """
    if _MADVISE is None:
        return 0
    released = 0
    for start, end in ranges:
        if _MADVISE(start, end - start, _MADV_DONTNEED) != 0:
            error = os.strerror(ctypes.get_errno())
            logger.warning("madvise(MADV_DONTNEED) on %s failed: %s", file_path, error)
            continue
        released += end - start
    return released
