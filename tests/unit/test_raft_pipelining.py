"""pysyncobj re-sends in-flight entries after each ack and followers truncate; our fix stops it."""

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException, replicated

from cluster.raft_fixes import PipelinedReplication
from tests.unit.test_journal_durability import free_ports


class CountingCounter(SyncObj):  # type: ignore[misc]
    """A replicated counter that counts log truncations on this node."""

    def __init__(self, self_addr: str, partners: list[str]) -> None:
        self.value = 0
        self.truncations = 0
        conf = SyncObjConf(
            bindAddress=self_addr,
            maxBindRetries=1,
            autoTickPeriod=0.01,
            appendEntriesUseBatch=False,  # as raftmq runs it: send on every command
            appendEntriesPeriod=0.05,
            raftMinTimeout=0.5,
            raftMaxTimeout=1.0,
            connectionTimeout=2.0,
            connectionRetryTime=0.1,
            leaderFallbackTimeout=5.0,
        )
        super().__init__(self_addr, partners, conf=conf)

    def _SyncObj__deleteEntriesFrom(self, from_index: int) -> None:
        self.truncations += 1
        SyncObj._SyncObj__deleteEntriesFrom(self, from_index)

    @replicated  # type: ignore[untyped-decorator]
    def incr(self) -> int:
        self.value += 1
        return self.value


class FixedCounter(PipelinedReplication, CountingCounter):
    pass


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def start() -> Iterator[Callable[[type[CountingCounter]], list[CountingCounter]]]:
    started: list[CountingCounter] = []

    def run(cls: type[CountingCounter]) -> list[CountingCounter]:
        for _ in range(5):
            addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
            nodes: list[CountingCounter] = []
            try:
                for addr in addrs:
                    nodes.append(cls(addr, [a for a in addrs if a != addr]))
                    started.append(nodes[-1])
                    nodes[-1].waitBinded()
            except SyncObjException:
                continue
            return nodes
        raise RuntimeError("could not bind a 3-node cluster")

    yield run
    for node in started:
        if node.tick_thread_alive():
            node.destroy_synchronous()
        else:
            node._doDestroy()


def _pipelined_load(nodes: list[CountingCounter], total: int) -> None:
    _wait(lambda: len({n._getLeader() for n in nodes} - {None}) == 1, 20, "a leader")
    _wait(lambda: all(n._getLeader() is not None for n in nodes), 20, "a leader known to all")
    leader = next(n for n in nodes if n._isLeader())
    errors: list[Any] = []
    answered = threading.Semaphore(0)

    def done(_result: Any, error: Any) -> None:
        if error != FAIL_REASON.SUCCESS:
            errors.append(error)
        answered.release()

    for _ in range(total):
        leader.incr(callback=done)
    for _ in range(total):
        assert answered.acquire(timeout=30)
    assert errors == []
    _wait(lambda: all(n.value == total for n in nodes), 30, "every node applied every entry")


@pytest.mark.timeout(120)
def test_plain_pysyncobj_truncates_entries_it_already_holds(
    start: Callable[[type[CountingCounter]], list[CountingCounter]],
) -> None:
    nodes = start(CountingCounter)
    _pipelined_load(nodes, 3000)
    assert sum(n.truncations for n in nodes) > 0


@pytest.mark.timeout(120)
def test_pipelined_replication_never_truncates_a_stable_log(
    start: Callable[[type[CountingCounter]], list[CountingCounter]],
) -> None:
    nodes = start(FixedCounter)
    _pipelined_load(nodes, 3000)
    assert sum(n.truncations for n in nodes) == 0
