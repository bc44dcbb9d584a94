"""Snapshots are copied from a pinned LMDB state on their own thread while applies go on."""

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.config import SERIALIZER_STATE

from cluster.journal import PRECOMPACT_SUFFIX, DurableJournal
from cluster.raft_node import RaftNode
from cluster.settings import RaftSettings
from cluster.snapshot import (
    BackgroundSerializer,
    SnapshotCodec,
    snapshot_applied_index,
    snapshot_due,
)
from cluster.store_holder import StoreFlusher, StoreHolder
from storage import Store
from tests.unit.test_journal_durability import free_ports

MAP_SIZE = 256 << 20


class Writer:
    """Applies entries to a store, churning pages so that LMDB reuses freed ones."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = 0
        self.published = 0

    def apply(self, *commands: dict[str, Any]) -> None:
        self.index += 1
        stamped = [{"now_ms": 1000 + self.index, **c} for c in commands]
        assert self.store.apply(self.index, stamped) is not None

    def publish(self, queue: str, count: int) -> None:
        for _ in range(0, count, 500):
            batch = [{"id": f"m{self.published + i}", "body": "x" * 300} for i in range(500)]
            self.published += 500
            self.apply({"op": "publish", "queue": queue, "dedup_window_ms": 0, "messages": batch})

    def churn(self) -> None:
        """Free most pages of the state and write new ones, which reuse them."""
        self.apply({"op": "purge_queue", "queue": "q"})
        self.apply({"op": "reap", "max_keys": 1_000_000})
        self.publish("q", 3000)
        self.apply({"op": "declare_queue", "queue": "other"})


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[StoreHolder]:
    opened = StoreHolder(str(tmp_path / "state"), map_size=MAP_SIZE, sync=False)
    yield opened
    opened.close()


def filled(store: Store) -> Writer:
    writer = Writer(store)
    writer.apply({"op": "declare_queue", "queue": "q"})
    writer.publish("q", 3000)
    return writer


def copy_of(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    return directory / "data.mdb"


def test_a_pinned_state_copies_whole_while_writes_go_on(
    holder: StoreHolder, tmp_path: Path
) -> None:
    writer = filled(holder.store)
    digest, index = holder.store.digest(), holder.store.applied_index()
    pinned = holder.store.pin()
    writer.churn()
    writer.churn()
    target = copy_of(tmp_path, "copy")
    with pinned, open(target, "wb") as out:
        assert pinned.copy_to(out.fileno(), 0, chunk=1 << 16) == pinned.size
    with Store(str(target.parent), map_size=MAP_SIZE) as copy:
        assert copy.applied_index() == index == pinned.applied_index
        assert copy.digest() == digest
    assert holder.store.digest() != digest  # the writes happened


def test_without_the_pin_the_same_copy_is_not_that_state(
    holder: StoreHolder, tmp_path: Path
) -> None:
    """Negative control: the read transaction is what keeps the pages."""
    writer = filled(holder.store)
    digest = holder.store.digest()
    pinned = holder.store.pin()
    pinned._txn.abort()
    writer.churn()
    writer.churn()
    target = copy_of(tmp_path, "copy")
    with pinned, open(target, "wb") as out:
        pinned.copy_to(out.fileno(), 0)
    try:
        with Store(str(target.parent), map_size=MAP_SIZE) as copy:
            assert copy.digest() != digest
    except Exception:
        pass


def test_a_snapshot_job_writes_a_file_that_restores_the_pinned_state(
    holder: StoreHolder, tmp_path: Path
) -> None:
    writer = filled(holder.store)
    digest, index = holder.store.digest(), holder.store.applied_index()
    codec = SnapshotCodec(holder, str(tmp_path / "tmp"))
    path = str(tmp_path / "snapshot.bin")
    job = codec.start(path, ("raft", "data"))
    writer.churn()  # while the job copies
    assert job.future.result(timeout=30) == index
    assert snapshot_applied_index(path) == index
    assert not os.path.exists(path + ".part")

    follower = StoreHolder(str(tmp_path / "follower"), map_size=MAP_SIZE, sync=False)
    try:
        raft_data = SnapshotCodec(follower, str(tmp_path / "tmp2")).deserialize(path)
        assert raft_data == ("raft", "data")
        assert follower.store.applied_index() == index
        assert follower.store.digest() == digest
    finally:
        follower.close()


def test_a_received_snapshot_is_synced_as_it_arrives_and_restores_the_state(
    holder: StoreHolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower writes the leader's snapshot a chunk at a time, each chunk synced."""
    filled(holder.store)
    digest, index = holder.store.digest(), holder.store.applied_index()
    sent = str(tmp_path / "leader.bin")
    SnapshotCodec(holder, str(tmp_path / "tmp")).start(sent, ("raft", "data")).future.result(30)
    with open(sent, "rb") as f:
        # As pysyncobj's getTransmissionData: parts, then an empty last one.
        parts = [*iter(lambda: f.read(1 << 14), b""), b""]
    syncs: list[int] = []
    fdatasync = os.fdatasync

    def counted(fd: int) -> None:
        syncs.append(fd)
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counted)

    follower = StoreHolder(str(tmp_path / "follower"), map_size=MAP_SIZE, sync=False)
    try:
        codec = SnapshotCodec(follower, str(tmp_path / "tmp2"), sync_bytes=1 << 16)
        received = str(tmp_path / "follower.bin")
        serializer = BackgroundSerializer(codec, received, 1 << 14)
        last = len(parts) - 1
        done = [serializer.setTransmissionData((p, i == 0, i == last)) for i, p in enumerate(parts)]
        assert done == [False] * last + [True]
        assert not os.path.exists(received + ".1.tmp")
        assert len(syncs) >= os.path.getsize(sent) // (1 << 16)
        with open(sent, "rb") as a, open(received, "rb") as b:
            assert a.read() == b.read()

        assert codec.deserialize(received) == ("raft", "data")
        assert follower.store.applied_index() == index
        assert follower.store.digest() == digest
    finally:
        follower.close()


def test_stopping_a_job_abandons_its_file(holder: StoreHolder, tmp_path: Path) -> None:
    filled(holder.store)
    # Paced to 64 KiB/s: the copy would take about a minute.
    codec = SnapshotCodec(holder, str(tmp_path / "tmp"), sync_bytes=1 << 16, bytes_per_s=1 << 16)
    path = str(tmp_path / "snapshot.bin")
    job = codec.start(path, None)
    codec.stop_jobs()
    with pytest.raises(InterruptedError):
        job.future.result(timeout=30)
    assert not os.path.exists(path) and not os.path.exists(path + ".part")


def test_the_serializer_reports_the_job_to_pysyncobj(holder: StoreHolder, tmp_path: Path) -> None:
    filled(holder.store)
    codec = SnapshotCodec(holder, str(tmp_path / "tmp"))
    path = str(tmp_path / "snapshot.bin")
    journal = DurableJournal(str(tmp_path / "journal.bin"))
    for raft_index in range(1, 51):
        journal.add(b"command", raft_index, 1)
    codec.attach_journal(lambda: journal)
    serializer = BackgroundSerializer(codec, path, 1 << 20)
    assert serializer.checkSerializing() == (SERIALIZER_STATE.NOT_SERIALIZING, None)
    # As pysyncobj: (state, last applied entry, the one before, cluster), and the
    # index of the one before, from which on the journal is kept.
    raft_data = ((b"command", 42, 1), (b"command", 41, 1), "cluster")
    serializer.serialize((None, *raft_data), 41)
    states = []
    index: int | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state, index = serializer.checkSerializing()
        states.append(state)
        if state != SERIALIZER_STATE.SERIALIZING:
            break
    assert states[-1] == SERIALIZER_STATE.SUCCESS and index == 41
    assert set(states[:-1]) <= {SERIALIZER_STATE.SERIALIZING}
    assert serializer.checkSerializing() == (SERIALIZER_STATE.NOT_SERIALIZING, None)
    # The journal's compaction to index 41 was prepared before SUCCESS was reported...
    precopy = str(tmp_path / "journal.bin") + PRECOMPACT_SUFFIX
    assert os.path.exists(precopy)
    # ...and loading the snapshot aligns the journal to it (through that copy).
    assert serializer.deserialize()[1:] == raft_data
    assert journal[0][1] == 41 and len(journal) == 10
    assert not os.path.exists(precopy)
    journal.close()


def test_a_snapshot_copy_is_paced_and_goes_chunk_by_chunk(
    holder: StoreHolder, tmp_path: Path
) -> None:
    filled(holder.store)
    with holder.store.pin() as pinned:
        size = pinned.size
    chunks: list[int] = []
    codec = SnapshotCodec(holder, str(tmp_path / "tmp"), sync_bytes=1 << 18, bytes_per_s=size * 4)
    pinned = holder.store.pin()
    job_started = time.monotonic()
    job = codec.start(str(tmp_path / "snapshot.bin"), None)
    job.future.result(timeout=30)
    # A quarter of a second at four sizes per second, give or take the header.
    assert time.monotonic() - job_started >= 0.2
    with pinned, open(tmp_path / "copy.mdb", "wb") as out:
        pinned.copy_to(out.fileno(), 0, chunk=1 << 18, between_chunks=chunks.append)
    assert chunks == sorted(chunks) and chunks[-1] == pinned.size
    assert all(b - a == 1 << 18 for a, b in itertools.pairwise(chunks[:-1]))


def test_the_flusher_writes_the_store_back_until_stopped(holder: StoreHolder) -> None:
    synced = threading.Semaphore(0)

    class CountingHolder:
        def start_writeback(self) -> None:
            holder.start_writeback()
            synced.release()

    flusher = StoreFlusher(CountingHolder(), 0.01)  # type: ignore[arg-type]
    for _ in range(3):
        assert synced.acquire(timeout=10)
    flusher.stop()
    while synced.acquire(timeout=0.05):  # at most one sync was under way
        pass
    assert not synced.acquire(timeout=0.1)
    holder.close()
    holder.start_writeback()  # a closed holder's does nothing
    holder.sync()


@pytest.mark.parametrize(
    ("journal_bytes", "store_bytes", "ratio", "due"),
    [
        (10 << 20, 50 << 20, 1.0, True),  # a small store: every time pysyncobj asks
        (100 << 20, 200 << 20, 1.0, False),  # the journal is half the store
        (200 << 20, 200 << 20, 1.0, True),
        (60 << 20, 200 << 20, 0.25, True),
        (1, 200 << 20, 0.0, True),  # the rule is off
    ],
)
def test_a_snapshot_is_due_once_the_journal_reaches_the_log_ratio(
    journal_bytes: int, store_bytes: int, ratio: float, due: bool
) -> None:
    assert snapshot_due(journal_bytes, store_bytes, ratio=ratio, small_store_bytes=64 << 20) is due


def test_the_serializer_starts_nothing_while_the_snapshot_is_not_due(
    holder: StoreHolder, tmp_path: Path
) -> None:
    filled(holder.store)
    codec = SnapshotCodec(holder, str(tmp_path / "tmp"))
    path = str(tmp_path / "snapshot.bin")
    verdicts = [False, True]
    serializer = BackgroundSerializer(codec, path, 1 << 20, lambda: verdicts.pop(0))
    raft_data = (None, (b"command", 42, 1), (b"command", 41, 1), "cluster")
    serializer.serialize(raft_data, 41)
    assert serializer.checkSerializing() == (SERIALIZER_STATE.NOT_SERIALIZING, None)
    assert not os.path.exists(path) and not os.path.exists(path + ".part")
    serializer.serialize(raft_data, 41)  # pysyncobj asks again on a later tick
    deadline = time.monotonic() + 30
    while serializer.checkSerializing()[0] == SERIALIZER_STATE.SERIALIZING:
        assert time.monotonic() < deadline
    assert snapshot_applied_index(path) == 3000 // 500 + 1


def _single_node(tmp_path: Path, ratio: float) -> RaftNode:
    [port] = free_ports(1)
    return RaftNode(
        RaftSettings(
            raft_address=f"127.0.0.1:{port}",
            peers=(),
            data_dir=str(tmp_path),
            fsync=False,
            snapshot_entries=20,
            snapshot_log_ratio=ratio,
            snapshot_small_store_bytes=0,
        )
    )


@pytest.mark.parametrize("ratio", [0.0, 1000.0])
async def test_a_node_puts_its_snapshot_off_until_the_journal_reaches_the_ratio(
    tmp_path: Path, ratio: float
) -> None:
    """With the rule off the node snapshots after --snapshot-entries; with a ratio
    its journal cannot reach, it says so (the metric's counter) and writes nothing."""
    node = _single_node(tmp_path, ratio)
    try:
        node.attach_loop(asyncio.get_running_loop())
        while not node.is_leader():
            await asyncio.sleep(0.01)
        await node.propose({"op": "declare_queue", "queue": "q", "now_ms": 1})
        for i in range(40):
            message = {"id": f"m{i}", "body": "x" * 100}
            command = {"op": "publish", "queue": "q", "messages": [message], "now_ms": 2 + i}
            assert (await node.propose(command))["status"] == "ok"
        snapshot = tmp_path / "raft" / "snapshot.bin"
        deadline = time.monotonic() + 30
        while not (snapshot.exists() or node.counters()["snapshot_put_off"]):
            assert time.monotonic() < deadline, "pysyncobj never asked for a snapshot"
            await asyncio.sleep(0.01)
        assert snapshot.exists() is (ratio == 0.0)
        assert node.counters()["snapshot_put_off"] is (ratio != 0.0)
    finally:
        node.close()
