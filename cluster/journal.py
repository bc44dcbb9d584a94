"""A durable Raft journal for pysyncobj.

pysyncobj's FileJournal writes through an mmap and never fsyncs (pysyncobj
issue #84): an entry it reports as stored may exist only in the page cache,
so a power loss can erase entries a majority already acknowledged. Our rule
is that a write is answered 2xx only once a majority has the entry
fdatasync'd, and that term and vote are durable before any message that
reflects them leaves the node.

DurableJournal keeps that rule cheaply:

* ``add`` only appends an encoded record to an in-memory buffer (no syscall);
* ``flush`` hands the buffer to the OS and fdatasyncs it, once for a whole
  batch; ``cluster.transport.FlushingTransport`` calls it before every
  outgoing Raft message, the node calls it before applying;
* ``setCurrentTerm`` writes the meta file atomically and durably at once.

Journal file layout (little endian)::

    header:  MAGIC (8 B) | format version u32 | crc32(MAGIC + version) u32
    record:  len u32 | idx u64 | term u64 | command (len B) | crc32 u32

The record crc covers len, idx, term and command. On load the journal is the
longest prefix of well-formed records with consecutive indexes and
non-decreasing terms; whatever follows (a torn write after a crash, or stale
bytes of a truncation that never reached the disk) is cut off with a warning.
Nothing past that prefix can have been acknowledged: acknowledgements are only
sent after a flush, and a flush makes the whole prefix durable.

Term, vote and commit index live next to it in ``<path>.meta`` (JSON),
replaced atomically (tmp file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, overload

import pysyncobj.journal
import pysyncobj.syncobj

logger = logging.getLogger(__name__)

Entry = tuple[bytes, int, int]
"""One Raft log entry as pysyncobj sees it: (command, index, term)."""

JournalFactory = Callable[[str | None], Any]
"""Signature of pysyncobj's ``createJournal(journalFile)``."""

MAGIC = b"RMQJRNL\x00"
FORMAT_VERSION = 1
_HEADER_BODY = MAGIC + struct.pack("<I", FORMAT_VERSION)
HEADER = _HEADER_BODY + struct.pack("<I", zlib.crc32(_HEADER_BODY))
HEADER_SIZE = len(HEADER)

_REC_HEAD = struct.Struct("<IQQ")
_REC_TAIL = struct.Struct("<I")
_REC_OVERHEAD = _REC_HEAD.size + _REC_TAIL.size

# add() writes the buffer out (without syncing) once it grows past this, so a
# long batch between two flushes does not hold unbounded memory.
_WRITE_THRESHOLD = 1 << 20
_COPY_CHUNK = 1 << 20
# prepare_compaction writes its copy here, fdatasync'd every PRECOPY_SYNC_BYTES.
PRECOMPACT_SUFFIX = ".precompact"
PRECOPY_SYNC_BYTES = 32 << 20
# Commands kept in memory, newest first; older ones are read back from the file.
DEFAULT_RESIDENT_BYTES = 64 << 20
# Stands in for a command that is on disk only (entries before _resident_from).
_ON_DISK = b""
# Synced records are dropped from the page cache once this many bytes gather.
CACHE_DROP_BYTES = 16 << 20


class JournalError(Exception):
    """The journal cannot be used (closed, or a previous fdatasync failed)."""


class JournalCorruptError(JournalError):
    """The file is not a raftmq journal, or its meta file is unreadable."""


@dataclass(frozen=True)
class JournalMeta:
    """Raft state stored next to the journal."""

    current_term: int = 0
    voted_for: str | None = None
    commit_index: int = 1


def meta_path_for(path: str) -> str:
    return path + ".meta"


def load_meta(path: str) -> JournalMeta:
    """Read the meta file of the journal at ``path`` (defaults if there is none).

    An unparseable meta file raises instead of silently resetting term and
    vote, which could make this node vote twice in one term.
    """
    mpath = meta_path_for(path)
    try:
        with open(mpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return JournalMeta()
    try:
        data = json.loads(raw)
        voted_for = data["voted_for"]
        return JournalMeta(
            current_term=int(data["current_term"]),
            voted_for=None if voted_for is None else str(voted_for),
            commit_index=int(data["commit_index"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise JournalCorruptError(f"unreadable journal meta file {mpath!r}: {e}") from e


def _fdatasync(fd: int) -> None:
    # Looked up at call time so tests can monkeypatch os.fdatasync.
    os.fdatasync(fd)


def _fsync_dir(path: str) -> None:
    """Make a rename or a file creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _encode(command: bytes, idx: int, term: int) -> bytes:
    head = _REC_HEAD.pack(len(command), idx, term)
    crc = zlib.crc32(command, zlib.crc32(head))
    return b"".join((head, command, _REC_TAIL.pack(crc)))


class DurableJournal(pysyncobj.journal.Journal):  # type: ignore[misc]
    """pysyncobj journal that fdatasyncs on flush() and stores term/vote durably.

    Entries are (command, idx, term) tuples, as pysyncobj indexes and slices
    the journal like a list. Index and term of every entry stay in memory, but
    only the newest ``resident_bytes`` of commands do: older commands (which
    pysyncobj reads only to catch up a lagging follower) are read back from
    the file, so a long log between two snapshots does not grow the heap.
    Method names follow pysyncobj's Journal interface. Thread-safe; pysyncobj
    uses it from its tick thread; a snapshot's thread calls prepare_compaction.
    """

    def __init__(
        self,
        path: str,
        fsync: bool = True,
        *,
        syncer: Callable[[int], None] | None = None,
        resident_bytes: int = DEFAULT_RESIDENT_BYTES,
    ) -> None:
        """Open (or create) the journal at ``path`` and load it.

        ``fsync=False`` makes flush() only hand data to the OS: for tests and
        throwaway clusters, never for data that must survive a power loss.
        ``syncer`` replaces ``os.fdatasync`` (tests record calls with it).
        """
        self._path = os.path.abspath(path)
        self._dir = os.path.dirname(self._path)
        self._fsync = fsync
        self.syncer: Callable[[int], None] = syncer if syncer is not None else _fdatasync
        self._lock = threading.RLock()
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # file offset of each entry's record
        # Entries before this position hold _ON_DISK: their command is in the file only.
        self._resident_from = 0
        self._resident_bytes = 0
        self._resident_limit = resident_bytes
        self._read_fd: int | None = None
        self._buffer = bytearray()  # encoded records not yet handed to the OS
        self._written = HEADER_SIZE  # bytes of the file handed to the OS
        # Bytes of the file before this offset are synced and dropped from the
        # page cache (see _drop_synced_pages); 0 after loading or replacing it.
        self._cached_from = 0
        self._unsynced = False  # the OS holds bytes (or a truncation) not yet synced
        self._failed: BaseException | None = None
        self._closed = False
        self.flush_count = 0
        self.sync_count = 0
        # Bumped whenever written records change place or content (truncation,
        # compaction): a pre-copy for compaction taken before is then stale.
        self._layout_changes = 0
        # (layout_changes, start, end) of the records already copied to PRECOMPACT.
        self._precopied: tuple[int, int, int] | None = None

        meta = load_meta(self._path)
        self._term = meta.current_term
        self._voted_for = meta.voted_for
        self._commit_index = meta.commit_index
        self._meta_saved = True

        self._fd = self._open_and_load()

    # -- loading ---------------------------------------------------------------

    def _open_and_load(self) -> int:
        try:
            with open(self._path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > HEADER_SIZE:
                    # Mapped, not read: only the commands kept in memory are copied.
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                        return self._load(mapped, len(mapped))
                data = f.read()
        except FileNotFoundError:
            data = b""
        return self._load(data, len(data))

    def _load(self, data: bytes | mmap.mmap, size: int) -> int:
        if size < HEADER_SIZE:
            if not HEADER.startswith(bytes(data)):
                raise JournalCorruptError(f"{self._path!r} is not a raftmq journal")
            # New journal, or a crash while creating it: write a fresh header.
            self._create_file()
            data = HEADER
        elif bytes(data[:HEADER_SIZE]) != HEADER:
            raise JournalCorruptError(
                f"{self._path!r} is not a raftmq journal (format {FORMAT_VERSION} expected)"
            )
        end = self._parse(data, size)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        if end < size:
            logger.warning(
                "journal %s: dropping %d bytes of torn or stale tail after offset %d "
                "(%d entries kept)",
                self._path,
                size - end,
                end,
                len(self._entries),
            )
            try:
                os.ftruncate(fd, end)
                if self._fsync:
                    self.syncer(fd)
            except BaseException:
                os.close(fd)
                raise
        self._written = end
        return fd

    def _parse(self, data: bytes | mmap.mmap, size: int) -> int:
        """Load records from ``data``; returns the offset where the valid prefix ends.

        Every record is checked; only the newest ``resident_bytes`` of commands
        are copied into memory.
        """
        entries = self._entries
        offsets = self._offsets
        lengths: list[int] = []
        unpack_head = _REC_HEAD.unpack_from
        unpack_tail = _REC_TAIL.unpack_from
        crc32 = zlib.crc32
        view = memoryview(data)
        pos = HEADER_SIZE
        prev_idx = -1
        prev_term = -1
        head_size = _REC_HEAD.size
        try:
            while pos + _REC_OVERHEAD <= size:
                length, idx, term = unpack_head(data, pos)
                body = pos + head_size
                tail = body + length
                if tail + _REC_TAIL.size > size:
                    break
                crc = crc32(view[body:tail], crc32(view[pos:body]))
                if crc != unpack_tail(data, tail)[0]:
                    break
                if prev_idx >= 0 and (idx != prev_idx + 1 or term < prev_term):
                    break
                entries.append((_ON_DISK, idx, term))
                offsets.append(pos)
                lengths.append(length)
                prev_idx, prev_term = idx, term
                pos = tail + _REC_TAIL.size
            resident = 0
            first = len(entries)
            while first > 0 and resident + lengths[first - 1] <= self._resident_limit:
                first -= 1
                resident += lengths[first]
            for position in range(first, len(entries)):
                body = offsets[position] + head_size
                _, idx, term = entries[position]
                entries[position] = (bytes(view[body : body + lengths[position]]), idx, term)
        finally:
            view.release()
        self._resident_from = first
        self._resident_bytes = resident
        return pos

    def _create_file(self) -> None:
        tmp = self._path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, HEADER)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        if self._fsync:
            _fsync_dir(self._dir)

    # -- properties --------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def size_bytes(self) -> int:
        """Bytes of the journal file, with what is buffered to be written."""
        return self._written + len(self._buffer)

    @property
    def fsync(self) -> bool:
        return self._fsync

    @property
    def dirty(self) -> bool:
        """True when entries or truncations are not yet made durable by flush()."""
        return bool(self._buffer) or self._unsynced

    # -- durability ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self._path!r} is closed")
        if self._failed is not None:
            # After a failed fdatasync the kernel may have dropped the dirty
            # pages, so a retry could "succeed" without the data: stay failed.
            raise JournalError(f"journal {self._path!r} failed earlier: {self._failed!r}")

    def _fail(self, error: BaseException) -> None:
        """Stop using the journal after an I/O error: the file may not match memory."""
        if self._failed is None:
            self._failed = error
            logger.critical("journal %s failed, refusing further writes: %r", self._path, error)

    def _write_buffer(self) -> None:
        if self._buffer:
            try:
                _write_all(self._fd, self._buffer)
            except BaseException as e:
                self._fail(e)
                raise
            self._written += len(self._buffer)
            self._buffer.clear()
            self._unsynced = True

    def flush(self) -> None:
        """Make every added entry and truncation durable (fdatasync) if dirty.

        With fsync=False the data only reaches the OS (survives a process
        crash, not a power loss).
        """
        with self._lock:
            if not self.dirty:
                return
            self._check_open()
            try:
                self._write_buffer()
                if self._fsync:
                    self.syncer(self._fd)
                    self.sync_count += 1
            except BaseException as e:
                self._fail(e)
                raise
            self._unsynced = False
            self.flush_count += 1
            if self._fsync:
                self._drop_synced_pages()

    def _drop_synced_pages(self) -> None:
        """Tell the kernel it need not cache the records synced so far.

        The journal is written once and read back only to catch up a lagging
        follower or at a restart (the newest commands stay in memory, see
        ``resident_bytes``). Left in the page cache, its gigabytes would push
        out the store's pages, which every apply reads: the pages of old
        dedup records, for one, are read again when their ids expire. Only
        synced, hence clean, pages are dropped, in chunks of CACHE_DROP_BYTES.
        """
        if self._written - self._cached_from < CACHE_DROP_BYTES:
            return
        with contextlib.suppress(OSError):
            os.posix_fadvise(
                self._fd,
                self._cached_from,
                self._written - self._cached_from,
                os.POSIX_FADV_DONTNEED,
            )
        self._cached_from = self._written

    # -- pysyncobj Journal interface -------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        """Append an entry; durable only after the next flush()."""
        command = bytes(command)
        record = _encode(command, idx, term)
        with self._lock:
            self._check_open()
            self._offsets.append(self._written + len(self._buffer))
            self._entries.append((command, idx, term))
            self._buffer += record
            self._resident_bytes += len(command)
            if len(self._buffer) >= _WRITE_THRESHOLD:
                self._write_buffer()
            if self._resident_bytes > self._resident_limit:
                self._evict()

    def clear(self) -> None:
        with self._lock:
            self._check_open()
            self._truncate_at(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop entries ``[entryFrom:]`` (conflicting suffix) by truncating the file."""
        with self._lock:
            self._check_open()
            start = slice(entryFrom, None).indices(len(self._entries))[0]
            self._truncate_at(start)

    def _truncate_at(self, position: int) -> None:
        if position >= len(self._entries):
            return
        cut = self._offsets[position]
        self._layout_changes += 1
        self._cached_from = min(self._cached_from, cut)
        if cut < self._written:
            try:
                os.ftruncate(self._fd, cut)
            except BaseException as e:
                self._fail(e)
                raise
        self._forget_resident(position, len(self._entries))
        del self._entries[position:]
        del self._offsets[position:]
        self._resident_from = min(self._resident_from, position)
        if cut >= self._written:
            del self._buffer[cut - self._written :]
            return
        self._buffer.clear()
        self._written = cut
        # The shorter size must reach the disk before we acknowledge anything
        # built on top of it; fdatasync covers size changes.
        self._unsynced = True

    def prepare_compaction(self, first_kept_index: int) -> None:
        """Copy the records from raft index `first_kept_index` on, ahead of deleteEntriesTo.

        Runs on any thread (the snapshot's, before the snapshot is reported
        done): the copy of a long tail and its fdatasync happen there, chunk
        by chunk, and the deleteEntriesTo that follows on the tick thread
        only adds what was appended since. A truncation in between makes the
        copy stale, and deleteEntriesTo then copies everything itself.
        """
        with self._lock:
            if self._closed or self._failed is not None or not self._entries:
                return
            position = first_kept_index - self._entries[0][1]
            if not 0 < position < len(self._entries):
                return
            self._write_buffer()
            start, end = self._offsets[position], self._written
            layout = self._layout_changes
            self._precopied = None
        tmp = self._path + PRECOMPACT_SUFFIX
        # Records before `end` are only ever changed by this object's truncations
        # and compactions, which bump the layout counter checked below.
        self._copy_records(tmp, start, end, sync_every=PRECOPY_SYNC_BYTES)
        with self._lock:
            if self._layout_changes == layout and not self._closed:
                self._precopied = (layout, start, end)

    def _copy_records(self, tmp: str, start: int, end: int, *, sync_every: int | None) -> None:
        """Write HEADER and the journal's bytes [start, end) to a new file `tmp`."""
        src = os.open(self._path, os.O_RDONLY)
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(out, HEADER)
                self._append_records(src, out, start, end, sync_every=sync_every)
            finally:
                os.close(out)
        finally:
            os.close(src)

    def _append_records(
        self, src: int, out: int, start: int, end: int, *, sync_every: int | None
    ) -> None:
        """Append bytes [start, end) of `src` to `out` (by the kernel), then sync `out`."""
        pos = start
        out_pos = os.fstat(out).st_size
        unsynced = 0
        while pos < end:
            done = os.copy_file_range(src, out, min(_COPY_CHUNK, end - pos), pos, out_pos)
            if done == 0:
                raise JournalError(f"journal {self._path!r} shorter than expected")
            pos += done
            out_pos += done
            unsynced += done
            if sync_every is not None and unsynced >= sync_every and self._fsync:
                self.syncer(out)
                unsynced = 0
        if self._fsync:
            self.syncer(out)

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop entries ``[:entryTo]`` after a snapshot: rewrite the file, then swap.

        The remaining records are copied to a temp file that is fsynced and
        renamed over the journal, then the directory is fsynced, so a crash
        leaves either the old or the new journal, both complete. After a
        matching prepare_compaction only the records appended since are copied.
        """
        with self._lock:
            self._check_open()
            precopied, self._precopied = self._precopied, None
            stop = slice(None, entryTo).indices(len(self._entries))[1]
            if stop <= 0:
                return
            if stop >= len(self._entries):
                self._truncate_at(0)
                return
            self._write_buffer()
            start = self._offsets[stop]
            shift = start - HEADER_SIZE
            if (
                precopied is not None
                and precopied[0] == self._layout_changes
                and precopied[1] == start
                and precopied[2] <= self._written
            ):
                tmp = self._path + PRECOMPACT_SUFFIX
                src = os.open(self._path, os.O_RDONLY)
                try:
                    out = os.open(tmp, os.O_WRONLY)
                    try:
                        self._append_records(src, out, precopied[2], self._written, sync_every=None)
                    finally:
                        os.close(out)
                finally:
                    os.close(src)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._path + PRECOMPACT_SUFFIX)  # stale, if any
                tmp = self._path + ".compact"
                self._copy_records(tmp, start, self._written, sync_every=None)
            self._layout_changes += 1
            os.replace(tmp, self._path)
            try:
                if self._fsync:
                    _fsync_dir(self._dir)
                os.close(self._fd)
                self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            except BaseException as e:
                self._fail(e)
                raise
            self._forget_resident(0, stop)
            del self._entries[:stop]
            self._offsets = [o - shift for o in self._offsets[stop:]]
            self._resident_from = max(0, self._resident_from - stop)
            self._close_read_fd()  # the file was replaced
            self._written -= shift
            self._cached_from = 0  # the copied records, cached as they were written
            # Everything kept is in the new file, synced when fsync is on.
            self._unsynced = False
            logger.debug("journal %s compacted: %d entries dropped", self._path, stop)

    @overload
    def __getitem__(self, item: int) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...

    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        if isinstance(item, slice):
            positions = range(*item.indices(len(self._entries)))
            if not positions or min(positions[0], positions[-1]) >= self._resident_from:
                return self._entries[item]
            return [self._entry_at(position) for position in positions]
        return self._entry_at(item)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        for position in range(len(self._entries)):
            yield self._entry_at(position)

    # -- commands kept in memory, or read back -----------------------------------------

    def _entry_at(self, position: int) -> Entry:
        entry = self._entries[position]
        if position < 0:
            position += len(self._entries)
        if position >= self._resident_from:
            return entry
        with self._lock:
            return (self._read_command(position), entry[1], entry[2])

    def _read_command(self, position: int) -> bytes:
        """The command of an entry whose record was handed to the OS, checked."""
        self._check_open()
        if self._read_fd is None:
            self._read_fd = os.open(self._path, os.O_RDONLY)
        offset = self._offsets[position]
        head = os.pread(self._read_fd, _REC_HEAD.size, offset)
        length, idx, term = _REC_HEAD.unpack(head)
        rest = os.pread(self._read_fd, length + _REC_TAIL.size, offset + _REC_HEAD.size)
        command = rest[:length]
        (crc,) = _REC_TAIL.unpack_from(rest, length)
        expected = self._entries[position]
        if (
            len(rest) != length + _REC_TAIL.size
            or (idx, term) != (expected[1], expected[2])
            or zlib.crc32(command, zlib.crc32(head)) != crc
        ):
            raise JournalError(
                f"journal {self._path!r}: the record of entry {expected[1]} at offset "
                f"{offset} does not read back"
            )
        return command

    def _evict(self) -> None:
        """Drop the oldest commands from memory until the resident bytes fit the limit.

        Only records already handed to the OS can be read back, so those still
        in the write buffer stay.
        """
        entries = self._entries
        position = self._resident_from
        while self._resident_bytes > self._resident_limit and position < len(entries):
            command, idx, term = entries[position]
            if self._offsets[position] + _REC_OVERHEAD + len(command) > self._written:
                break
            entries[position] = (_ON_DISK, idx, term)
            self._resident_bytes -= len(command)
            position += 1
        self._resident_from = position

    def _forget_resident(self, start: int, stop: int) -> None:
        """Entries [start, stop) are about to go: stop counting their resident bytes."""
        for position in range(max(start, self._resident_from), stop):
            self._resident_bytes -= len(self._entries[position][0])

    def _close_read_fd(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        """Remember the commit index; persisted lazily (it can be recomputed)."""
        if raftCommitIndex != self._commit_index:
            self._commit_index = raftCommitIndex
            self._meta_saved = False

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        """Store term and vote durably before returning: Raft sends the vote next."""
        with self._lock:
            self._check_open()
            if term == self._term and votedForNodeId == self._voted_for and self._meta_saved:
                return
            self._term = term
            self._voted_for = votedForNodeId
            # Until the write succeeds the stored meta is stale (even if a retry
            # repeats the same values).
            self._meta_saved = False
            self._write_meta()

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted_for

    def onOneSecondTimer(self) -> None:
        """Bound how long data can sit unflushed; persist a changed commit index."""
        with self._lock:
            if self._closed or self._failed is not None:
                return
            if self.dirty:
                self.flush()
            if not self._meta_saved:
                self._write_meta()

    def _write_meta(self) -> None:
        # A stored commit index must never point past the durable log.
        self.flush()
        mpath = meta_path_for(self._path)
        tmp = mpath + ".tmp"
        payload = json.dumps(
            {
                "current_term": self._term,
                "voted_for": self._voted_for,
                "commit_index": self._commit_index,
            }
        ).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, payload)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, mpath)
        if self._fsync:
            _fsync_dir(self._dir)
        self._meta_saved = True

    def _destroy(self) -> None:
        """Flush entries and meta, then close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._failed is None:
                    self.flush()
                    if not self._meta_saved:
                        self._write_meta()
            finally:
                self._closed = True
                os.close(self._fd)
                self._close_read_fd()

    close = _destroy


def create_journal_factory(fsync: bool) -> JournalFactory:
    """A drop-in for pysyncobj's ``createJournal``: DurableJournal for a path.

    ``None`` (no journal file configured) keeps pysyncobj's MemoryJournal.
    """

    def create_journal(journal_file: str | None = None) -> Any:
        if journal_file is None:
            return pysyncobj.journal.MemoryJournal()
        return DurableJournal(journal_file, fsync=fsync)

    return create_journal


def install_journal(fsync: bool = True) -> JournalFactory:
    """Make every SyncObj created from now on use DurableJournal; returns the old factory.

    pysyncobj offers no journal option: SyncObj.__init__ calls the name
    ``createJournal`` that syncobj.py imported with ``from .journal import
    createJournal``, so the name must be replaced in ``pysyncobj.syncobj``
    (patching ``pysyncobj.journal.createJournal`` would have no effect). This
    is the one documented patch point; FlushingTransport refuses to run on a
    file journal that is not a DurableJournal, so a missed install fails loudly.
    """
    previous: JournalFactory = pysyncobj.syncobj.createJournal
    pysyncobj.syncobj.createJournal = create_journal_factory(fsync)
    return previous


def journal_of(syncobj: object) -> DurableJournal | None:
    """The DurableJournal a SyncObj writes to, or None if it uses another journal.

    Reads pysyncobj's private ``SyncObj.__raftLog`` (pysyncobj is pinned to
    0.3.17): it is exactly the object the SyncObj appends to, with no
    path-matching or registry to get out of sync. If pysyncobj renames it we
    raise rather than silently skip flushes.
    """
    try:
        log = syncobj._SyncObj__raftLog  # type: ignore[attr-defined]
    except AttributeError as e:
        raise RuntimeError(
            "pysyncobj internals changed: SyncObj has no __raftLog; "
            "cluster.journal.journal_of needs updating"
        ) from e
    return log if isinstance(log, DurableJournal) else None
