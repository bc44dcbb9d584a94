"""DurableJournal: file format, reload, truncation, meta, and fsync accounting."""

from __future__ import annotations

import json
import os
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pysyncobj.journal
import pysyncobj.syncobj
import pytest

from cluster.journal import (
    CACHE_DROP_BYTES,
    DEFAULT_RESIDENT_BYTES,
    HEADER,
    HEADER_SIZE,
    PRECOMPACT_SUFFIX,
    DurableJournal,
    Entry,
    JournalCorruptError,
    JournalError,
    create_journal_factory,
    install_journal,
    journal_of,
    load_meta,
)


def entry(i: int, term: int = 1) -> Entry:
    return (f"command-{i}".encode(), i, term)


def fill(j: DurableJournal, first: int, last: int, term: int = 1) -> list[Entry]:
    added = [entry(i, term) for i in range(first, last + 1)]
    for e in added:
        j.add(*e)
    return added


class SyncRecorder:
    """A syncer that counts calls and still syncs for real."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        os.fdatasync(fd)
        self.calls += 1


@pytest.fixture
def jpath(tmp_path: Path) -> str:
    return str(tmp_path / "raft.journal")


@pytest.fixture
def open_journals() -> Iterator[list[DurableJournal]]:
    """Journals a test opened; closed at teardown even if the test fails."""
    journals: list[DurableJournal] = []
    yield journals
    for j in journals:
        j.close()


Opener = Callable[[], DurableJournal]


@pytest.fixture
def opener(jpath: str, open_journals: list[DurableJournal]) -> Opener:
    """Opens the test's journal again, as a restarted node would."""

    def open_journal() -> DurableJournal:
        j = DurableJournal(jpath)
        open_journals.append(j)
        return j

    return open_journal


def test_new_journal_is_empty_with_default_meta(opener: Opener, jpath: str) -> None:
    j = opener()
    assert len(j) == 0
    assert j[:] == []
    assert j.getCurrentTerm() == 0
    assert j.getVotedForNodeId() is None
    assert j.getRaftCommitIndex() == 1
    assert not j.dirty
    with open(jpath, "rb") as f:
        assert f.read() == HEADER


def test_round_trip(opener: Opener) -> None:
    j = opener()
    added = fill(j, 1, 200, term=3)
    j.add(b"", 201, 4)  # empty command
    j.add(bytes(range(256)) * 10, 202, 4)
    added += [(b"", 201, 4), (bytes(range(256)) * 10, 202, 4)]
    j.close()
    j2 = opener()
    assert j2[:] == added
    assert all(type(cmd) is bytes for cmd, _, _ in j2)


def test_indexing_and_slicing_like_a_list(opener: Opener) -> None:
    j = opener()
    model = fill(j, 5, 30)
    for i in range(-len(model), len(model)):
        assert j[i] == model[i]
    for start in (None, -3, 0, 2, 10, 40):
        for stop in (None, -1, 0, 3, 15, 40):
            assert j[start:stop] == model[start:stop]
    assert j[::2] == model[::2]
    assert j[-1][1] == 30
    assert j[0][1] == 5
    with pytest.raises(IndexError):
        j[len(model)]
    assert list(j) == model


def test_delete_entries_from_then_reopen(opener: Opener) -> None:
    j = opener()
    fill(j, 1, 20)
    j.flush()  # the cut lands in data already handed to the OS
    j.deleteEntriesFrom(15)
    assert j.dirty  # a truncation must be synced before it is acknowledged
    j.add(b"new", 16, 2)
    fill(j, 17, 18, term=2)
    j.deleteEntriesFrom(16)  # position 16 = idx 17: the cut lands in the unwritten buffer
    j.deleteEntriesFrom(100)  # past the end: no-op
    expected = [entry(i) for i in range(1, 16)] + [(b"new", 16, 2)]
    assert j[:] == expected
    j.close()
    assert opener()[:] == expected


def test_delete_entries_to_then_reopen(opener: Opener) -> None:
    j = opener()
    fill(j, 1, 50)
    j.deleteEntriesTo(30)
    assert j[:] == [entry(i) for i in range(31, 51)]
    assert not j.dirty
    fill(j, 51, 55)
    j.deleteEntriesTo(0)  # no-op
    j.close()
    j2 = opener()
    assert j2[:] == [entry(i) for i in range(31, 56)]
    j2.deleteEntriesTo(len(j2))  # everything
    assert len(j2) == 0
    j2.add(*entry(56))
    j2.close()
    assert opener()[:] == [entry(56)]


def test_a_compaction_prepared_ahead_only_adds_what_came_after(opener: Opener, jpath: str) -> None:
    j = opener()
    fill(j, 1, 50)
    j.prepare_compaction(31)  # on the snapshot's thread: entries 31.. are copied
    precopy = Path(jpath + PRECOMPACT_SUFFIX)
    assert precopy.stat().st_size > HEADER_SIZE
    fill(j, 51, 60)
    j.deleteEntriesTo(30)  # keeps index 31 on
    assert not precopy.exists()  # it became the journal
    assert j[:] == [entry(i) for i in range(31, 61)]
    j.close()
    assert opener()[:] == [entry(i) for i in range(31, 61)]


def test_a_truncation_after_the_prepared_copy_makes_compaction_copy_everything(
    opener: Opener, jpath: str
) -> None:
    j = opener()
    fill(j, 1, 50)
    j.prepare_compaction(31)
    j.deleteEntriesFrom(45)  # a new leader's log replaced 46..50
    fill(j, 46, 48, term=2)
    j.deleteEntriesTo(30)
    expected = [entry(i) for i in range(31, 46)] + [entry(i, 2) for i in range(46, 49)]
    assert j[:] == expected
    assert not Path(jpath + PRECOMPACT_SUFFIX).exists()
    j.close()
    assert opener()[:] == expected


def test_clear_then_reopen(opener: Opener) -> None:
    j = opener()
    fill(j, 1, 10)
    j.flush()
    j.clear()
    j.add(*entry(99, 5))
    j.add(*entry(100, 5))
    j.close()
    assert opener()[:] == [entry(99, 5), entry(100, 5)]


def test_large_batches_spill_to_the_os_without_syncing(tmp_path: Path) -> None:
    syncer = SyncRecorder()
    j = DurableJournal(str(tmp_path / "j"), syncer=syncer)
    try:
        big = b"x" * 300_000
        for i in range(1, 11):
            j.add(big, i, 1)
        assert syncer.calls == 0
        assert os.path.getsize(j.path) > HEADER_SIZE  # spilled, not yet synced
        j.deleteEntriesFrom(9)  # spans written and buffered data
        j.deleteEntriesFrom(2)  # only written data
        j.flush()
        assert syncer.calls == 1
    finally:
        j.close()
    j2 = DurableJournal(str(tmp_path / "j"))
    try:
        assert j2[:] == [(big, 1, 1), (big, 2, 1)]
    finally:
        j2.close()


@pytest.mark.parametrize("resident_bytes", [DEFAULT_RESIDENT_BYTES, 100, 0])
def test_random_operations_match_a_list_model(
    jpath: str, open_journals: list[DurableJournal], resident_bytes: int
) -> None:
    """Also with commands evicted from memory (read back from the file) at every size."""

    def opener() -> DurableJournal:
        j = DurableJournal(jpath, resident_bytes=resident_bytes)
        open_journals.append(j)
        return j

    rng = random.Random(1234)
    j = opener()
    model: list[Entry] = []
    next_idx, term = 1, 1
    prepared: int | None = None  # index of the last prepare_compaction
    for _ in range(600):
        op = rng.random()
        if op < 0.6:
            cmd = rng.randbytes(rng.randrange(0, 64))
            j.add(cmd, next_idx, term)
            model.append((cmd, next_idx, term))
            next_idx += 1
        elif op < 0.7 and model:
            k = rng.randrange(len(model))
            j.deleteEntriesFrom(k)
            del model[k:]
            term += 1
            next_idx = model[-1][1] + 1 if model else next_idx
        elif op < 0.75 and model:
            k = rng.randrange(len(model) + 1)
            if prepared is not None and rng.random() < 0.7:
                k = max(0, min(len(model), prepared - model[0][1]))  # the snapshot's index
            j.deleteEntriesTo(k)
            model = model[k:]
            prepared = None
        elif op < 0.78 and model:
            prepared = model[rng.randrange(len(model))][1]
            j.prepare_compaction(prepared)
        elif op < 0.85:
            j.flush()
        elif op < 0.9:
            j.close()
            j = opener()
        assert j[:] == model
        if model:
            k = rng.randrange(len(model))
            assert (j[k], j[-1], j[k:][0]) == (model[k], model[-1], model[k])
    assert list(j) == model
    j.close()
    assert opener()[:] == model


def test_old_commands_leave_memory_and_read_back(jpath: str) -> None:
    j = DurableJournal(jpath, resident_bytes=10_000)
    try:
        added = [(bytes([i % 256]) * 1000, i, 1) for i in range(1, 1001)]
        for e in added:
            j.add(*e)
        j.flush()
        j.add(b"x" * 1000, 1001, 1)
        added.append((b"x" * 1000, 1001, 1))
        assert j._resident_bytes <= 11_000
        assert j[:] == added and j[0] == added[0] and j[-1] == added[-1]
        j.deleteEntriesTo(500)  # compaction rewrites the file: read-backs follow it
        assert j[:] == added[500:]
    finally:
        j.close()
    reopened = DurableJournal(jpath, resident_bytes=10_000)
    try:
        assert reopened._resident_bytes <= 10_000
        assert reopened[:] == added[500:]
    finally:
        reopened.close()


def test_a_command_that_does_not_read_back_is_an_error(jpath: str) -> None:
    j = DurableJournal(jpath, resident_bytes=0)
    try:
        fill(j, 1, 3)
        j.flush()
        j.add(b"next", 4, 1)  # evicts the flushed ones
        with open(jpath, "r+b") as f:
            f.seek(HEADER_SIZE + 20)  # the first record's command
            f.write(b"X")
        with pytest.raises(JournalError, match="does not read back"):
            j[0]
        assert j[1] == entry(2)
    finally:
        j.close()


def corrupt_tail_cases(jpath: str) -> Iterator[tuple[str, bytes]]:
    with open(jpath, "rb") as f:
        data = f.read()
    last_record = len(data) - (20 + len(b"command-10") + 4)
    yield "garbage appended", data + b"\x13\x00\x00\x00garbage that is no record"
    yield "zeros appended", data + b"\x00" * 4096
    yield "truncated mid-record", data[:-7]
    yield "truncated mid-header", data[: last_record + 5]
    flipped = bytearray(data)
    flipped[-6] ^= 0xFF
    yield "bit flip in last record", bytes(flipped)
    # A crc-valid record that does not continue the log (stale bytes of a
    # truncation that never reached the disk).
    head = struct.pack("<IQQ", 3, 42, 1)
    stale = head + b"old" + struct.pack("<I", zlib.crc32(b"old", zlib.crc32(head)))
    yield "stale record with a gap in indexes", data + stale
    head = struct.pack("<IQQ", 3, 11, 0)
    stale = head + b"old" + struct.pack("<I", zlib.crc32(b"old", zlib.crc32(head)))
    yield "stale record with an older term", data + stale


def test_torn_tails_are_dropped_on_load(
    jpath: str, open_journals: list[DurableJournal], caplog: pytest.LogCaptureFixture
) -> None:
    j = DurableJournal(jpath)
    fill(j, 1, 10)
    j.close()
    with open(jpath, "rb") as f:
        intact = f.read()
    for name, data in list(corrupt_tail_cases(jpath)):
        with open(jpath, "wb") as f:
            f.write(data)
        j = DurableJournal(jpath)
        open_journals.append(j)
        expected = [entry(i) for i in range(1, 11)]
        if name in ("truncated mid-record", "bit flip in last record"):
            expected = expected[:-1]
        if name == "truncated mid-header":
            expected = expected[:-1]
        assert j[:] == expected, name
        # The bad tail is cut from the file, so appends continue a valid log.
        j.add(b"after", len(expected) + 1, 1)
        j.close()
        j2 = DurableJournal(jpath)
        open_journals.append(j2)
        assert j2[:] == [*expected, (b"after", len(expected) + 1, 1)], name
        j2.close()
        with open(jpath, "wb") as f:
            f.write(intact)
    assert "torn or stale tail" in caplog.text


def test_not_a_journal_is_refused(jpath: str) -> None:
    with open(jpath, "wb") as f:
        f.write(b"PYSYNCOBJ" + b"\x00" * 100)
    with pytest.raises(JournalCorruptError):
        DurableJournal(jpath)


def test_partial_header_from_a_crash_at_creation_is_rewritten(opener: Opener) -> None:
    path = opener().path
    with open(path, "wb") as f:
        f.write(HEADER[:5])
    j = opener()
    assert len(j) == 0
    j.add(*entry(1))
    j.close()
    assert opener()[:] == [entry(1)]


def test_meta_term_and_vote_are_stored_at_once(opener: Opener) -> None:
    j = opener()
    j.setCurrentTerm(7, "127.0.0.1:9")
    # Read back without closing j: nothing may wait for a later flush.
    meta = load_meta(j.path)
    assert (meta.current_term, meta.voted_for) == (7, "127.0.0.1:9")
    other = opener()
    assert other.getCurrentTerm() == 7
    assert other.getVotedForNodeId() == "127.0.0.1:9"
    j.setCurrentTerm(8, None)
    assert load_meta(j.path).voted_for is None
    assert load_meta(j.path).current_term == 8


def test_set_current_term_fsyncs_before_returning(
    opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = opener()
    calls: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        calls.append(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    j.setCurrentTerm(3, "a:1")
    assert len(calls) == 2  # the new meta file, then the directory for the rename
    j.setCurrentTerm(3, "a:1")  # unchanged: no write
    assert len(calls) == 2


def test_failed_meta_write_is_retried_even_with_the_same_values(
    opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = opener()
    real_replace = os.replace

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "ENOSPC")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        j.setCurrentTerm(4, "b:2")
    assert load_meta(j.path).current_term == 0
    monkeypatch.setattr(os, "replace", real_replace)
    j.setCurrentTerm(4, "b:2")
    assert load_meta(j.path).current_term == 4


def test_commit_index_is_persisted_lazily(opener: Opener) -> None:
    j = opener()
    fill(j, 1, 5)
    j.setRaftCommitIndex(4)
    assert j.getRaftCommitIndex() == 4
    assert load_meta(j.path).commit_index == 1  # not yet
    j.onOneSecondTimer()
    assert load_meta(j.path).commit_index == 4
    assert not j.dirty  # the log was flushed first: commit index <= durable end
    j.setRaftCommitIndex(5)
    j.setCurrentTerm(2, None)  # any meta write carries it
    assert load_meta(j.path).commit_index == 5
    j.setRaftCommitIndex(6)
    j.close()
    assert opener().getRaftCommitIndex() == 6


def test_corrupt_meta_is_refused(jpath: str) -> None:
    with open(jpath + ".meta", "w") as f:
        f.write("{not json")
    with pytest.raises(JournalCorruptError):
        DurableJournal(jpath)
    with open(jpath + ".meta", "w") as f:
        json.dump({"current_term": 1}, f)
    with pytest.raises(JournalCorruptError):
        load_meta(jpath)


def test_flush_batches_adds_into_one_fdatasync(tmp_path: Path) -> None:
    syncer = SyncRecorder()
    j = DurableJournal(str(tmp_path / "j"), syncer=syncer)
    try:
        assert not j.dirty
        fill(j, 1, 100)
        assert j.dirty
        assert syncer.calls == 0  # add() never syncs
        j.flush()
        assert not j.dirty
        assert (syncer.calls, j.flush_count, j.sync_count) == (1, 1, 1)
        j.flush()  # clean: no syscall
        assert syncer.calls == 1
        j.onOneSecondTimer()
        assert syncer.calls == 1
        j.add(*entry(101))
        j.onOneSecondTimer()
        assert syncer.calls == 2
    finally:
        j.close()


def test_fsync_never_mode_writes_without_syncing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(fd: int) -> None:
        raise AssertionError("no fsync expected")

    monkeypatch.setattr(os, "fsync", forbidden)
    monkeypatch.setattr(os, "fdatasync", forbidden)
    path = str(tmp_path / "j")
    j = DurableJournal(path, fsync=False)
    try:
        assert not j.fsync
        fill(j, 1, 10)
        j.setCurrentTerm(2, "x:1")
        j.flush()
        assert not j.dirty
        assert j.flush_count >= 1
        assert j.sync_count == 0
        # Already visible to a reader: the data reached the OS.
        reader = DurableJournal(path, fsync=False)
        assert reader[:] == [entry(i) for i in range(1, 11)]
        assert reader.getCurrentTerm() == 2
        reader.close()
        j.deleteEntriesTo(5)
    finally:
        j.close()
    j2 = DurableJournal(path, fsync=False)
    assert j2[:] == [entry(i) for i in range(6, 11)]
    j2.close()


def test_failed_fdatasync_poisons_the_journal(tmp_path: Path) -> None:
    def failing(fd: int) -> None:
        raise OSError(5, "EIO")

    j = DurableJournal(str(tmp_path / "j"), syncer=failing)
    fill(j, 1, 3)
    with pytest.raises(OSError):
        j.flush()
    # A retry could report success for pages the kernel already dropped.
    j.syncer = os.fdatasync
    with pytest.raises(JournalError):
        j.flush()
    with pytest.raises(JournalError):
        j.add(*entry(4))
    j.close()
    j.close()  # idempotent


def test_closed_journal_refuses_writes(opener: Opener) -> None:
    j = opener()
    j.close()
    with pytest.raises(JournalError):
        j.add(*entry(1))


def test_loading_100k_entries(tmp_path: Path) -> None:
    path = str(tmp_path / "big")
    j = DurableJournal(path, fsync=False)
    for i in range(1, 100_001):
        j.add(b"some command payload of moderate size", i, 1 + i // 10_000)
    j.close()
    j2 = DurableJournal(path, fsync=False)
    try:
        assert len(j2) == 100_000
        assert j2[-1] == (b"some command payload of moderate size", 100_000, 11)
    finally:
        j2.close()


def test_factory_and_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    factory = create_journal_factory(fsync=False)
    assert isinstance(factory(None), pysyncobj.journal.MemoryJournal)
    j = factory(str(tmp_path / "j"))
    assert isinstance(j, DurableJournal)
    assert not j.fsync
    j.close()

    original = pysyncobj.syncobj.createJournal
    monkeypatch.setattr(pysyncobj.syncobj, "createJournal", original)  # restored at teardown
    previous = install_journal(fsync=True)
    assert previous is original
    j = pysyncobj.syncobj.createJournal(str(tmp_path / "k"))
    assert isinstance(j, DurableJournal)
    assert j.fsync
    j.close()


def test_journal_of() -> None:
    class NotASyncObj:
        pass

    with pytest.raises(RuntimeError):
        journal_of(NotASyncObj())
    holder = NotASyncObj()
    holder._SyncObj__raftLog = pysyncobj.journal.MemoryJournal()  # type: ignore[attr-defined]
    assert journal_of(holder) is None


def test_synced_records_are_dropped_from_the_page_cache_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_sizes: list[int] = []
    advised: list[tuple[int, int, int]] = []
    real_fadvise = os.posix_fadvise

    def syncer(fd: int) -> None:
        os.fdatasync(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        # Only bytes already synced may be dropped (they are clean then).
        assert synced_sizes and offset + length <= synced_sizes[-1]
        advised.append((offset, length, advice))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    big = b"x" * (1 << 20)
    j = DurableJournal(str(tmp_path / "j"), syncer=syncer)
    try:
        for i in range(1, CACHE_DROP_BYTES // len(big) + 2):
            j.add(big, i, 1)
        assert advised == []  # nothing synced yet
        j.flush()
        assert advised == [(0, j.size_bytes, os.POSIX_FADV_DONTNEED)]
        dropped_to = j.size_bytes
        fill(j, len(j) + 1, len(j) + 10)
        j.flush()
        assert len(advised) == 1  # below a chunk: kept until more gathers
        # A truncation back into dropped bytes: the rewritten bytes are dropped next.
        j.deleteEntriesFrom(5)
        cut = j.size_bytes
        assert cut < dropped_to
        for i in range(6, 6 + CACHE_DROP_BYTES // len(big) + 1):
            j.add(big, i, 2)
        j.flush()
        assert advised[1] == (cut, j.size_bytes - cut, os.POSIX_FADV_DONTNEED)
        assert [e[1] for e in j[:]] == list(range(1, len(j) + 1))
    finally:
        j.close()


def test_unsynced_journals_leave_the_page_cache_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(fd: int, offset: int, length: int, advice: int) -> None:
        raise AssertionError("pages that are not synced may be dirty: not dropped")

    monkeypatch.setattr(os, "posix_fadvise", forbidden)
    j = DurableJournal(str(tmp_path / "j"), fsync=False)
    try:
        big = b"x" * (1 << 20)
        for i in range(1, CACHE_DROP_BYTES // len(big) + 2):
            j.add(big, i, 1)
        j.flush()
    finally:
        j.close()
