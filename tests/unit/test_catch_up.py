"""cluster.raft_fixes.PacedCatchUp: a follower that is behind, and what the leader does for it.

In-process nodes ticked by hand: the follower that is behind is simply not
ticked, so it reads nothing and its socket fills, as a slow or restarting node's.
"""

from __future__ import annotations

import base64
import itertools
import os
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pysyncobj import FAIL_REASON, SyncObj, replicated

from cluster import raft_fixes
from cluster.raft_fixes import PacedCatchUp, entries_from, entry_parts, queued_bytes
from cluster.wire_framing import install_stored_framing
from cluster.wire_guard import install_wire_guard
from tests.unit.raft_cluster import hand_ticked_conf, three_node_clusters

BLOB = 64 << 10
BLOBS = 96  # 6 MiB for the follower that is behind
QUEUE_BOUND = 256 << 10


class Blobs(SyncObj):  # type: ignore[misc]
    """Replicates blobs, keeping their sizes."""

    def __init__(self, self_addr: str, partners: list[str]) -> None:
        self.sizes: list[int] = []
        conf = hand_ticked_conf(
            self_addr,
            appendEntriesBatchSizeBytes=BLOB,
            raftMinTimeout=5.0,  # nobody calls an election while one node is not ticked
            raftMaxTimeout=6.0,
            connectionTimeout=30.0,
            leaderFallbackTimeout=30.0,
        )
        super().__init__(self_addr, partners, conf=conf)

    @replicated  # type: ignore[untyped-decorator]
    def put(self, blob: bytes) -> int:
        self.sizes.append(len(blob))
        return len(self.sizes)


class PacedBlobs(PacedCatchUp, Blobs):
    pass


def tick_until(nodes: list[Blobs], condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        for node in nodes:
            node.doTick(0.001)


@pytest.fixture
def start(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[type[Blobs]], list[Blobs]]]:
    install_wire_guard()
    install_stored_framing()
    monkeypatch.setattr(raft_fixes, "CATCH_UP_QUEUE_BYTES", QUEUE_BOUND)
    yield from three_node_clusters(_tick_until_led)


def _tick_until_led(nodes: list[Blobs]) -> None:
    nodes[0]._SyncObj__raftElectionDeadline = 0.0  # stand now, not after the long timeout
    tick_until(nodes, lambda: all(n._getLeader() is not None for n in nodes), "a leader")


def _leave_one_behind(nodes: list[Blobs]) -> tuple[Blobs, Blobs, Any]:
    """Commit BLOBS blobs without ticking one follower; (leader, that follower, its node)."""
    leader = next(n for n in nodes if n._isLeader())
    behind = next(n for n in nodes if n is not leader)
    ticked = [n for n in nodes if n is not behind]
    answers: list[Any] = []
    for _ in range(BLOBS):
        # Incompressible, and pickled at its own length (unlike random bytes, below).
        blob = base64.b64encode(os.urandom(BLOB * 3 // 4))
        leader.put(blob, callback=lambda result, error: answers.append(error))
    tick_until(ticked, lambda: len(answers) == BLOBS, "the blobs to commit")
    assert answers == [FAIL_REASON.SUCCESS] * BLOBS
    for _ in range(200):  # heartbeats and catch-up ticks while it still reads nothing
        for node in ticked:
            node.doTick(0.001)
    node = next(n for n in leader._SyncObj__otherNodes if n.id == behind.selfNode.id)
    return leader, behind, node


def test_the_leader_queues_a_bounded_amount_for_a_follower_that_reads_nothing(
    start: Callable[[type[Blobs]], list[Blobs]],
) -> None:
    nodes = start(PacedBlobs)
    leader, behind, node = _leave_one_behind(nodes)

    queued = queued_bytes(leader._SyncObj__transport, node)
    assert 0 < queued <= QUEUE_BOUND + 2 * BLOB

    tick_until(nodes, lambda: len(behind.sizes) == BLOBS, "the follower to catch up")
    assert behind.sizes == leader.sizes


def test_without_pacing_the_leader_queues_all_it_has_for_that_follower(
    start: Callable[[type[Blobs]], list[Blobs]],
) -> None:
    nodes = start(Blobs)
    leader, _, node = _leave_one_behind(nodes)

    # pysyncobj's loop queued everything the kernel did not take (10 MiB here).
    assert queued_bytes(leader._SyncObj__transport, node) > 4 * QUEUE_BOUND


def test_an_entry_longer_pickled_than_its_command_reaches_the_followers(
    start: Callable[[type[Blobs]], list[Blobs]],
) -> None:
    """Random bytes pickle (pysyncobj's protocol 2) to about 1.6 times their length."""
    nodes = start(PacedBlobs)
    leader = next(n for n in nodes if n._isLeader())
    answers: list[Any] = []
    leader.put(os.urandom(BLOB), callback=lambda result, error: answers.append(error))

    tick_until(nodes, lambda: all(n.sizes == [BLOB] for n in nodes), "every node to apply it")
    assert answers == [FAIL_REASON.SUCCESS]


def test_pysyncobj_marks_such_an_entry_finished_too_early(
    start: Callable[[type[Blobs]], list[Blobs]],
) -> None:
    """The negative control: a follower's tick fails unpickling half an entry."""
    nodes = start(Blobs)
    leader = next(n for n in nodes if n._isLeader())
    leader.put(os.urandom(BLOB))

    with pytest.raises((EOFError, pickle.UnpicklingError, UnicodeDecodeError)):
        tick_until(nodes, lambda: all(n.sizes == [BLOB] for n in nodes), "every node to apply it")


class ReadCountingLog:
    """A list of entries that records which positions are read."""

    def __init__(self, entries: list[tuple[bytes, int, int]]) -> None:
        self.entries = entries
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            positions = list(range(*item.indices(len(self.entries))))
            self.read.extend(positions)
            return [self.entries[p] for p in positions]
        self.read.append(item % len(self.entries))
        return self.entries[item]


def _log() -> ReadCountingLog:
    return ReadCountingLog([(b"c" * 100, index, 1) for index in range(11, 111)])


def test_entries_for_a_message_read_only_the_entries_it_takes() -> None:
    log = _log()
    entries = entries_from(log, 21, max_bytes=250)

    assert [e[1] for e in entries] == [21, 22, 23]  # the third reaches the bound
    assert sorted(set(log.read)) == [0, 10, 11, 12]

    assert [e[1] for e in entries_from(_log(), 109, max_bytes=1 << 20)] == [109, 110]


def test_pysyncobj_reads_every_entry_to_the_end_for_one_message() -> None:
    """The negative control: the journal would read back all 90 commands from disk."""

    class Holder:
        _SyncObj__raftLog = _log()

    holder = Holder()
    entries = SyncObj._SyncObj__getEntries(holder, 21, None, 250)

    assert [e[1] for e in entries] == [21, 22, 23]
    assert len(set(holder._SyncObj__raftLog.read)) == 91


@pytest.mark.parametrize("part", [1000, 4096])
def test_an_entry_goes_in_parts_marked_start_process_and_finish_once(part: int) -> None:
    for size in range(part + 1, 4 * part + 2):
        parts = entry_parts(size, part)
        assert parts[0][0] == 0 and parts[-1][1] == size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        labels = [p[2] for p in parts]
        assert labels == ["start", *["process"] * (len(parts) - 2), "finish"], size
