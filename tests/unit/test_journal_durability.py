"""Durability ordering: nothing leaves a node before what it reflects is on disk.

Acceptance: no append_entries (next_node_idx) response leaves a node before
the entries it covers were fdatasync'd there, no append_entries request of a
plain SyncObj either, and term and vote survive a SIGKILL. A leader with
cluster.raft_fixes.LeaderFlushesInParallel sends its entries before its own
fdatasync; for it (and for every node) no commit index that leaves a node and
no apply may cover an entry that is not fdatasync'd on a majority.

The cluster tests run three real pysyncobj nodes in this process, each with
its own tick thread and TCP sockets. A checker wraps each journal's syncer
(recording what was durable at each fdatasync) and sits in the transport
right below FlushingTransport's flush, checking every outgoing message
against what that node had made durable. The same checker run over a plain
TCPTransport must find violations, which shows the check is not vacuous.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pysyncobj.syncobj
import pysyncobj.transport
import pytest
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException, replicated
from pysyncobj.journal import MemoryJournal

from cluster.journal import DurableJournal, install_journal, journal_of, load_meta
from cluster.raft_fixes import (
    AcknowledgeOncePerTick,
    CommitRidesOnNextMessage,
    LeaderFlushesInParallel,
)
from cluster.transport import FlushingTransport
from cluster.wire_framing import install_stored_framing
from cluster.wire_guard import install_wire_guard

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("journal_child.py")
FLUSHED_ENTRIES = 1000  # journal_child.FLUSHED_ENTRIES


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# -- the checker -------------------------------------------------------------------


class DurabilityChecker:
    """Models what each node has fdatasync'd; checks outgoing Raft messages against it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # journal path -> {idx: term} of the entries in the journal at its last fdatasync
        self._durable: dict[str, dict[int, int]] = {}
        self.violations: list[str] = []
        self.checked: collections.Counter[str] = collections.Counter()
        self.nodes = 3

    def watch(self, journal: DurableJournal) -> None:
        real_syncer = journal.syncer

        def syncer(fd: int) -> None:
            real_syncer(fd)
            # flush() wrote every in-memory entry before syncing: all are durable now.
            snapshot = {idx: term for _, idx, term in journal[:]}
            with self._lock:
                self._durable[journal.path] = snapshot

        journal.syncer = syncer

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    def _not_on_a_majority(self, journal: DurableJournal, up_to: int) -> list[tuple[int, int]]:
        """Entries of ``journal`` up to index ``up_to`` not fdatasync'd on a majority."""
        with self._lock:
            durables = [dict(d) for d in self._durable.values()]
        majority = self.nodes // 2 + 1
        return [
            (idx, term)
            for _, idx, term in journal[:]
            if idx <= up_to and sum(d.get(idx) == term for d in durables) < majority
        ]

    def on_apply(self, journal: DurableJournal, idx: int) -> None:
        self.checked["apply"] += 1
        for entry in self._not_on_a_majority(journal, idx):
            self._violation(f"{journal.path}: applies {idx} while {entry} is not on a majority")

    def on_send(
        self,
        journal: DurableJournal,
        self_id: str,
        dest_id: str,
        message: Any,
        *,
        leader_flushes_itself: bool = False,
    ) -> None:
        kind = message.get("type")
        with self._lock:
            durable = dict(self._durable.get(journal.path, {}))
        where = f"{self_id} -> {dest_id} {kind}"
        if kind == "append_entries":
            commit = int(message.get("commit_index", 0))
            if commit > 0:
                self.checked["commit_index"] += 1
                for entry in self._not_on_a_majority(journal, commit):
                    self._violation(
                        f"{where}: commit index {commit} covers {entry}, not on a majority"
                    )
        if kind == "append_entries" and message.get("entries"):
            self.checked[kind] += 1
            for _, idx, term in message["entries"]:
                if durable.get(idx) != term:
                    if leader_flushes_itself:
                        self.checked["sent_before_own_flush"] += 1
                    else:
                        self._violation(f"{where}: entry ({idx}, {term}) not fdatasync'd")
        elif kind == "next_node_idx" and message["success"]:
            self.checked[kind] += 1
            acked = message["next_node_idx"] - 1
            for _, idx, term in journal[:]:
                if idx <= acked and durable.get(idx) != term:
                    self._violation(f"{where}: acks ({idx}, {term}) not fdatasync'd")
        elif kind in ("request_vote", "response_vote"):
            self.checked[kind] += 1
            voted_for = self_id if kind == "request_vote" else dest_id
            meta = load_meta(journal.path)  # what a restart would read
            if (meta.current_term, meta.voted_for) != (message["term"], voted_for):
                self._violation(f"{where}: term/vote {message['term']}/{voted_for} not stored")


def recording_transport(checker: DurabilityChecker, *, flush: bool) -> type[Any]:
    """A transport class that reports each outgoing message to ``checker``.

    With ``flush`` the recording layer sits below FlushingTransport
    (MRO: FlushingTransport.send flushes, then RecordingTransport.send
    records, then TCPTransport.send sends), so it sees exactly what the
    network would see. Without it, it is a plain TCPTransport.
    """

    class RecordingTransport(pysyncobj.transport.TCPTransport):  # type: ignore[misc]
        def send(self, node: Any, message: Any) -> bool:
            journal = journal_of(self._syncObj)
            if journal is not None:
                checker.on_send(
                    journal,
                    self._selfNode.id,
                    node.id,
                    message,
                    leader_flushes_itself=getattr(self._syncObj, "flushes_before_counting", False),
                )
            return bool(super().send(node, message))

    if not flush:
        return RecordingTransport

    class FlushingRecordingTransport(FlushingTransport, RecordingTransport):
        pass

    return FlushingRecordingTransport


# -- the cluster -------------------------------------------------------------------


class CounterNode(SyncObj):  # type: ignore[misc]
    checker: DurabilityChecker | None = None  # set by the start_cluster fixture

    def __init__(self, self_addr: str, partners: list[str], conf: Any, transport: Any) -> None:
        self.value = 0
        super().__init__(self_addr, partners, conf=conf, transportClass=transport)

    @replicated  # type: ignore[untyped-decorator]
    def incr(self) -> int:
        journal = journal_of(self)
        if self.checker is not None and journal is not None:
            self.checker.on_apply(journal, int(self.raftLastApplied) + 1)
        self.value += 1
        return self.value


class ParallelFlushNode(LeaderFlushesInParallel, CommitRidesOnNextMessage, CounterNode):
    """As ReplicatedBroker: the leader fdatasyncs while its append-entries travel."""


class CountsItselfUnflushed(CounterNode):
    """Wrong on purpose: claims to flush before counting itself, and does not."""

    flushes_before_counting = True


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free right now (distinct across xdist workers).

    pysyncobj binds them itself a moment later; should another process take
    one in between, that bind fails and start_cluster retries with new ports.
    """
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_nodes(nodes: list[CounterNode]) -> None:
    for node in nodes:
        if node.tick_thread_alive():
            node.destroy_synchronous()
        else:
            # Its tick thread gave up (bind failure): release sockets and journal.
            node._doDestroy()


StartCluster = Callable[..., list[CounterNode]]


@pytest.fixture
def checker() -> DurabilityChecker:
    return DurabilityChecker()


@pytest.fixture
def durable_journals(monkeypatch: pytest.MonkeyPatch, checker: DurabilityChecker) -> None:
    """install_journal(fsync=True), with the checker watching each journal created."""
    monkeypatch.setattr(
        pysyncobj.syncobj, "createJournal", pysyncobj.syncobj.createJournal
    )  # restored at teardown
    install_journal(fsync=True)
    installed = pysyncobj.syncobj.createJournal

    def create_journal(path: str | None) -> Any:
        journal = installed(path)
        if isinstance(journal, DurableJournal):
            checker.watch(journal)  # before pysyncobj can flush anything
        return journal

    monkeypatch.setattr(pysyncobj.syncobj, "createJournal", create_journal)


@pytest.fixture
def start_cluster(
    tmp_path: Path, durable_journals: None, checker: DurabilityChecker
) -> Iterator[StartCluster]:
    clusters: list[list[CounterNode]] = []
    # The connections as a node's have them (ReplicatedBroker installs these), so the
    # timing of a burst does not depend on which tests ran before in this process.
    install_wire_guard()
    install_stored_framing()

    def start(
        transport: type[Any], node_class: type[CounterNode] = CounterNode, **conf: Any
    ) -> list[CounterNode]:
        for attempt in range(5):
            ports = free_ports(3)
            addrs = [f"127.0.0.1:{port}" for port in ports]
            workdir = tmp_path / f"cluster{len(clusters)}-attempt{attempt}"
            workdir.mkdir()
            nodes: list[CounterNode] = []
            try:
                for i, addr in enumerate(addrs):
                    node_conf = SyncObjConf(
                        journalFile=str(workdir / f"node{i}.journal"),
                        bindAddress=addr,
                        maxBindRetries=1,
                        autoTickPeriod=0.01,
                        appendEntriesPeriod=0.02,
                        raftMinTimeout=0.15,
                        raftMaxTimeout=0.4,
                        connectionTimeout=2.0,
                        connectionRetryTime=0.1,
                        leaderFallbackTimeout=2.0,
                        **conf,
                    )
                    node = node_class(addr, [a for a in addrs if a != addr], node_conf, transport)
                    node.checker = checker
                    nodes.append(node)
                    nodes[-1].waitBinded()
            except SyncObjException:
                stop_nodes(nodes)
                continue
            clusters.append(nodes)
            return nodes
        raise RuntimeError("could not bind a 3-node cluster in 5 attempts")

    yield start
    for nodes in clusters:
        stop_nodes(nodes)


def run_increments(
    nodes: list[CounterNode],
    per_node: int,
    expect_total: int | None = None,
    through: list[CounterNode] | None = None,
) -> None:
    """Elect a leader, increment through every node, wait until all applied all."""

    def leader_agreed() -> bool:
        leaders = {n._getLeader() for n in nodes}
        return len(leaders) == 1 and None not in leaders

    wait_until(leader_agreed, 20, "a leader known to all nodes")
    results: list[Any] = []
    lock = threading.Lock()

    def done(result: Any, error: Any) -> None:
        with lock:
            results.append(error)

    senders = nodes if through is None else through
    for _ in range(per_node):
        for node in senders:
            node.incr(callback=done)
    total = per_node * len(senders)
    wait_until(lambda: len(results) == total, 20, "all increments answered")
    assert results == [FAIL_REASON.SUCCESS] * total
    final = total if expect_total is None else expect_total
    wait_until(lambda: all(n.value == final for n in nodes), 20, "all nodes applied")


@pytest.mark.timeout(90)
def test_no_message_leaves_before_its_entries_are_fdatasynced(
    start_cluster: StartCluster, checker: DurabilityChecker
) -> None:
    nodes = start_cluster(recording_transport(checker, flush=True))
    journals = [journal_of(n) for n in nodes]
    assert all(isinstance(j, DurableJournal) for j in journals)
    run_increments(nodes, per_node=10)

    assert checker.violations == []
    # The check looked at real traffic of every kind it covers.
    assert checker.checked["append_entries"] >= 2
    assert checker.checked["next_node_idx"] >= 2
    assert checker.checked["request_vote"] >= 1
    assert checker.checked["response_vote"] >= 1
    assert checker.checked["commit_index"] >= 1
    assert checker.checked["apply"] >= 1
    assert all(j is not None and j.sync_count > 0 for j in journals)


def stop_a_follower(nodes: list[CounterNode]) -> list[CounterNode]:
    """Stops one follower; the leader then counts itself to reach a majority."""
    follower = next(n for n in nodes if not n._isLeader())
    follower.destroy_synchronous()
    return [n for n in nodes if n is not follower]


@pytest.mark.timeout(90)
def test_a_leader_flushing_in_parallel_commits_only_what_a_majority_synced(
    start_cluster: StartCluster, checker: DurabilityChecker
) -> None:
    nodes = start_cluster(recording_transport(checker, flush=True), ParallelFlushNode)
    run_increments(nodes, per_node=10)
    # With one follower gone every commit needs the leader's own flush.
    live = stop_a_follower(nodes)
    run_increments(live, per_node=10, expect_total=50)

    assert checker.violations == []
    # Not vacuous: the leader did send entries before its own fdatasync.
    assert checker.checked["sent_before_own_flush"] >= 1
    assert checker.checked["commit_index"] >= 1
    assert checker.checked["apply"] >= 1


@pytest.mark.timeout(90)
def test_checker_catches_a_leader_that_counts_itself_before_flushing(
    start_cluster: StartCluster, checker: DurabilityChecker
) -> None:
    nodes = start_cluster(recording_transport(checker, flush=True), CountsItselfUnflushed)
    run_increments(nodes, per_node=2)
    live = stop_a_follower(nodes)
    # Through the leader only: a command forwarded by a follower makes the
    # leader send an apply_command_response, whose flush would hide the bug.
    leader = next(n for n in live if n._isLeader())
    run_increments(live, per_node=20, expect_total=26, through=[leader])

    assert any("not on a majority" in v for v in checker.violations), checker.violations


@pytest.mark.timeout(90)
def test_checker_catches_a_transport_that_does_not_flush(
    start_cluster: StartCluster, checker: DurabilityChecker
) -> None:
    nodes = start_cluster(recording_transport(checker, flush=False))
    run_increments(nodes, per_node=3)

    # The new leader's no-op goes out right after being added, and followers
    # acknowledge entries right after appending them: both must be caught.
    assert any("append_entries: entry" in v for v in checker.violations), checker.violations
    assert any("next_node_idx: acks" in v for v in checker.violations), checker.violations


class OncePerTickNode(AcknowledgeOncePerTick, ParallelFlushNode):
    """As ReplicatedBroker: followers answer a tick's append-entries after one fdatasync."""


def follower_syncs_for_a_burst(nodes: list[CounterNode], commands: int) -> list[int]:
    """Fires ``commands`` increments at the leader at once; each follower's fdatasync count.

    Unbatched pysyncobj sends one append-entries per command, so the followers
    receive the burst as that many messages, several per poll.
    """
    run_increments(nodes, per_node=1)
    leader = next(n for n in nodes if n._isLeader())
    followers = [n for n in nodes if n is not leader]
    journals = [journal_of(n) for n in followers]
    before = [j.sync_count for j in journals if j is not None]
    run_increments(nodes, per_node=commands, expect_total=3 + commands, through=[leader])
    return [j.sync_count - b for j, b in zip(journals, before, strict=True) if j is not None]


@pytest.mark.timeout(90)
def test_followers_store_a_burst_with_one_fdatasync_per_tick(
    start_cluster: StartCluster, checker: DurabilityChecker
) -> None:
    nodes = start_cluster(
        recording_transport(checker, flush=True), OncePerTickNode, appendEntriesUseBatch=False
    )
    syncs = follower_syncs_for_a_burst(nodes, 200)

    assert checker.violations == []  # every answer still left after its entries' fdatasync
    assert all(count < 100 for count in syncs), syncs  # 5-20 measured for 200 entries


@pytest.mark.timeout(90)
def test_followers_answering_one_by_one_sync_once_per_message(
    start_cluster: StartCluster, checker: DurabilityChecker
) -> None:
    nodes = start_cluster(
        recording_transport(checker, flush=True), ParallelFlushNode, appendEntriesUseBatch=False
    )
    syncs = follower_syncs_for_a_burst(nodes, 200)

    # The negative control of the test above: one fdatasync per append-entries.
    assert checker.violations == []
    assert all(count >= 150 for count in syncs), syncs


# -- the transport in isolation -------------------------------------------------------


class FakeSyncObj:
    """The little of SyncObj that a read-only TCPTransport touches."""

    def __init__(self, journal_file: str | None, journal: Any) -> None:
        self.conf = SyncObjConf(journalFile=journal_file)
        self._SyncObj__raftLog = journal
        self.tick_callbacks: list[Callable[[], None]] = []

    def addOnTickCallback(self, callback: Callable[[], None]) -> None:
        self.tick_callbacks.append(callback)


@contextlib.contextmanager
def _isolated_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, failing_sync: bool = False
) -> Iterator[tuple[FlushingTransport, DurableJournal, list[str]]]:
    """A FlushingTransport over a real journal; ``events`` records each fdatasync and send.

    With ``failing_sync`` every fdatasync raises EIO (and records nothing).
    """
    events: list[str] = []

    def syncer(fd: int) -> None:
        if failing_sync:
            raise OSError(5, "EIO")
        os.fdatasync(fd)
        events.append("fdatasync")

    def tcp_send(self: Any, node: Any, message: Any) -> bool:
        events.append(f"send {message['type']} {message.get('n', '')}".rstrip())
        return False

    monkeypatch.setattr(pysyncobj.transport.TCPTransport, "send", tcp_send)
    journal = DurableJournal(str(tmp_path / "j"), syncer=syncer)
    transport = FlushingTransport(FakeSyncObj(journal.path, journal), None, [])
    try:
        yield transport, journal, events
    finally:
        transport.destroy()
        journal.close()


def test_send_flushes_a_dirty_journal_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _isolated_transport(tmp_path, monkeypatch) as (transport, journal, events):
        assert transport.journal is journal
        journal.add(b"a", 1, 1)
        journal.add(b"b", 2, 1)
        transport.send(object(), {"type": "append_entries"})
        transport.send(object(), {"type": "append_entries"})  # clean: no second sync
        journal.add(b"c", 3, 1)
        transport.send(object(), {"type": "next_node_idx"})
        assert events == [
            "fdatasync",
            "send append_entries",
            "send append_entries",
            "fdatasync",
            "send next_node_idx",
        ]


def test_held_acknowledgements_leave_in_order_after_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _isolated_transport(tmp_path, monkeypatch) as (transport, journal, events):
        transport.hold_acknowledgements()
        for n in (1, 2, 3):
            journal.add(b"x", n, 1)
            transport.send(object(), {"type": "next_node_idx", "n": n})
        assert events == []  # nothing left, nothing synced yet
        transport.release_acknowledgements()
        assert events == [
            "fdatasync",
            "send next_node_idx 1",
            "send next_node_idx 2",
            "send next_node_idx 3",
        ]

        # Another message sent while answers are held goes out after them.
        events.clear()
        transport.hold_acknowledgements()
        journal.add(b"x", 4, 1)
        transport.send(object(), {"type": "next_node_idx", "n": 4})
        transport.send(object(), {"type": "response_vote"})
        transport.release_acknowledgements()
        assert events == ["fdatasync", "send next_node_idx 4", "send response_vote"]


def test_held_acknowledgements_are_dropped_when_the_fdatasync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _isolated_transport(tmp_path, monkeypatch, failing_sync=True) as (
        transport,
        journal,
        sent,
    ):
        transport.hold_acknowledgements()
        journal.add(b"a", 1, 1)
        transport.send(object(), {"type": "next_node_idx"})
        with pytest.raises(OSError):
            transport.release_acknowledgements()
        transport.release_acknowledgements()  # nothing is left to send
        assert sent == []


def test_send_after_a_failed_fdatasync_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _isolated_transport(tmp_path, monkeypatch, failing_sync=True) as (
        transport,
        journal,
        sent,
    ):
        journal.add(b"a", 1, 1)
        with pytest.raises(OSError):
            transport.send(object(), {"type": "next_node_idx"})
        assert sent == []


def test_transport_refuses_a_file_journal_that_is_not_durable(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="install_journal"):
        FlushingTransport(FakeSyncObj(str(tmp_path / "j"), MemoryJournal()), None, [])
    # No journal file configured: nothing to flush, nothing to refuse.
    transport = FlushingTransport(FakeSyncObj(None, MemoryJournal()), None, [])
    assert transport.journal is None
    transport.destroy()


# -- SIGKILL -----------------------------------------------------------------------


@pytest.fixture
def spawn() -> Iterator[Callable[[str, str], subprocess.Popen[bytes]]]:
    """Starts journal_child.py; every child is killed and reaped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(mode: str, path: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), mode, path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(REPO_ROOT),
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if readable else b""
    if line != b"ready\n":
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"child not ready: {line!r} {proc.stderr.read().decode()}")


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_term_and_vote_survive_sigkill(
    tmp_path: Path, spawn: Callable[[str, str], subprocess.Popen[bytes]]
) -> None:
    path = str(tmp_path / "raft.journal")
    proc = spawn("meta", path)
    wait_ready(proc)
    sigkill(proc)
    journal = DurableJournal(path)
    try:
        assert journal.getCurrentTerm() == 7
        assert journal.getVotedForNodeId() == "127.0.0.1:9"
    finally:
        journal.close()


@pytest.mark.timeout(60)
def test_flushed_entries_survive_sigkill(
    tmp_path: Path, spawn: Callable[[str, str], subprocess.Popen[bytes]]
) -> None:
    path = str(tmp_path / "raft.journal")
    proc = spawn("entries", path)
    wait_ready(proc)
    sigkill(proc)
    journal = DurableJournal(path)
    try:
        expected = [(f"entry-{i}".encode(), i, 1 + i // 100) for i in range(1, FLUSHED_ENTRIES + 1)]
        # The 50 entries added after the flush were only in the process's
        # buffer: they are gone, and they leave no partial record behind.
        assert journal[:] == expected
    finally:
        journal.close()


@pytest.mark.timeout(60)
def test_sigkill_while_writing_leaves_a_loadable_prefix(
    tmp_path: Path, spawn: Callable[[str, str], subprocess.Popen[bytes]]
) -> None:
    path = str(tmp_path / "raft.journal")
    proc = spawn("stream", path)
    wait_ready(proc)
    wait_until(lambda: os.path.getsize(path) > 1 << 20, 30, "the child to write 1 MiB")
    sigkill(proc)
    journal = DurableJournal(path)
    try:
        assert len(journal) >= 100
        for n, (command, idx, term) in enumerate(journal, start=1):
            assert (command, idx, term) == (f"entry-{n}".encode() * 20, n, 1 + n // 1000)
    finally:
        journal.close()
