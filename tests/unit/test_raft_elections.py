"""Fast, clean elections: the fixes in cluster.raft_fixes that short election timeouts need.

* KeepPeerLinksAlive: pysyncobj drops a connection nothing was read on for
  `connectionTimeout` when it next sends on it. Followers never talk while a
  leader lives, so without keepalives the first request_vote of the next
  election is dropped and the vote splits.
* ReadBeforeElection: a follower whose tick was held up past its election
  deadline reads the heartbeats waiting in its socket before it calls an
  election, instead of deposing a healthy leader.
* PreVote: a node that does not hear the leader (cut off, or restarted and
  not yet reached) asks before it raises its term, and the others, who still
  hear the leader, say no; a dead leader is still replaced.

Nodes are ticked by hand (autoTick=False) so every step is deterministic;
waits are on conditions, the only sleeps let wall time pass a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pysyncobj import SyncObj

from cluster.raft_fixes import PREVOTE_LEASE, KeepPeerLinksAlive, PreVote, ReadBeforeElection
from tests.unit.raft_cluster import hand_ticked_conf, three_node_clusters

CONNECTION_TIMEOUT = 1.0
ELECTION_MIN = 0.2
ELECTION_MAX = 0.3


class Plain(SyncObj):  # type: ignore[misc]
    def __init__(self, self_addr: str, partners: list[str]) -> None:
        conf = hand_ticked_conf(
            self_addr,
            raftMinTimeout=ELECTION_MIN,
            raftMaxTimeout=ELECTION_MAX,
            connectionTimeout=CONNECTION_TIMEOUT,
            connectionRetryTime=0.1,
            leaderFallbackTimeout=5.0,
        )
        super().__init__(self_addr, partners, conf=conf)


class WithKeepalive(KeepPeerLinksAlive, Plain):
    pass


class WithReadBeforeElection(ReadBeforeElection, Plain):
    pass


class Deafenable(Plain):
    """A node that can be made to drop what the leader sends it (its own messages go out)."""

    deaf_to: str | None = None

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if node.id == self.deaf_to:
            return
        super()._SyncObj__onMessageReceived(node, message)


class WithPreVote(PreVote, Deafenable):
    pass


class WithPreVoteWithoutTieBreak(WithPreVote):
    """Grants every pre-vote otherwise due, even while asking for its own."""

    def _yields_to_self(self, asker: Any, equal_logs: bool) -> bool:
        return False


def tick(nodes: list[Plain], rounds: int = 1) -> None:
    for _ in range(rounds):
        for node in nodes:
            node.doTick(0.002)


def tick_until(nodes: list[Plain], condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick(nodes)


def tick_for(nodes: list[Plain], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick(nodes)


@pytest.fixture
def start() -> Iterator[Callable[[type[Plain]], list[Plain]]]:
    yield from three_node_clusters(_wait_for_leader)


def _wait_for_leader(nodes: list[Plain]) -> None:
    tick_until(nodes, lambda: _leader(nodes) is not None, "a leader")
    tick_until(
        nodes, lambda: all(n._getLeader() is not None for n in nodes), "every node to know it"
    )


def _leader(nodes: list[Plain]) -> Plain | None:
    return next((n for n in nodes if n._isLeader()), None)


def _other_follower_link(nodes: list[Plain]) -> tuple[Plain, Any]:
    followers = [n for n in nodes if not n._isLeader()]
    a, b = followers
    target = next(node for node in a.otherNodes if node.id == b.selfNode.id)
    return a, target


@pytest.mark.timeout(60)
def test_keepalives_keep_the_follower_link_usable(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    nodes = start(WithKeepalive)
    tick_for(nodes, 2 * CONNECTION_TIMEOUT)
    follower, other = _other_follower_link(nodes)
    transport = follower._SyncObj__transport
    assert transport.send(other, {"type": "keepalive"}), "the first vote request would be lost"


@pytest.mark.timeout(60)
def test_without_keepalives_an_idle_follower_link_drops_the_next_message(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    nodes = start(Plain)
    tick_for(nodes, 2 * CONNECTION_TIMEOUT)
    follower, other = _other_follower_link(nodes)
    transport = follower._SyncObj__transport
    assert not transport.send(other, {"type": "keepalive"})


def _stall_one_follower(nodes: list[Plain]) -> tuple[Plain, int]:
    """Ticks everyone but one follower past its election deadline; returns it and its term."""
    leader = _leader(nodes)
    assert leader is not None
    stalled = next(n for n in nodes if n is not leader)
    others = [n for n in nodes if n is not stalled]
    term = stalled.raftCurrentTerm
    # Past its election deadline, within the leader's connection timeout: the
    # heartbeats wait in its socket.
    tick_for(others, (ELECTION_MAX + CONNECTION_TIMEOUT) / 2)
    return stalled, term


@pytest.mark.timeout(60)
def test_a_stalled_follower_reads_waiting_heartbeats_before_an_election(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    nodes = start(WithReadBeforeElection)
    stalled, term = _stall_one_follower(nodes)
    stalled.doTick(0.0)
    assert stalled.raftCurrentTerm == term
    assert stalled._getLeader() is not None


@pytest.mark.timeout(60)
def test_without_reading_first_a_stalled_follower_calls_an_election(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    nodes = start(Plain)
    stalled, term = _stall_one_follower(nodes)
    stalled.doTick(0.0)
    assert stalled.raftCurrentTerm == term + 1


def _cut_off_a_follower(nodes: list[Plain]) -> tuple[Plain, Plain, int]:
    """One follower stops hearing the leader for 1 s, everyone ticking; returns
    (leader, that follower, the leader's term before)."""
    leader = _leader(nodes)
    assert leader is not None
    cut_off = next(n for n in nodes if n is not leader)
    assert isinstance(cut_off, Deafenable)
    term = leader.raftCurrentTerm
    cut_off.deaf_to = leader.selfNode.id
    tick_for(nodes, 1.0)  # 3-5 of its election timeouts
    cut_off.deaf_to = None
    return leader, cut_off, term


@pytest.mark.timeout(60)
def test_with_pre_vote_a_node_cut_off_from_the_leader_does_not_depose_it(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    nodes = start(WithPreVote)
    leader, cut_off, term = _cut_off_a_follower(nodes)
    assert leader._isLeader() and leader.raftCurrentTerm == term
    assert cut_off.raftCurrentTerm == term  # it asked, was refused, and stayed put
    tick_until(nodes, lambda: cut_off._getLeader() == leader.selfNode, "it to follow again")
    assert all(n.raftCurrentTerm == term for n in nodes)


@pytest.mark.timeout(60)
def test_without_pre_vote_a_node_cut_off_from_the_leader_deposes_it(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    nodes = start(Deafenable)
    leader, cut_off, term = _cut_off_a_follower(nodes)
    assert cut_off.raftCurrentTerm > term
    assert not leader._isLeader() or leader.raftCurrentTerm > term


@pytest.mark.timeout(60)
def test_with_pre_vote_the_survivors_replace_a_dead_leader(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    nodes = start(WithPreVote)
    leader = _leader(nodes)
    assert leader is not None
    term = leader.raftCurrentTerm
    leader._destroy()
    survivors = [n for n in nodes if n is not leader]
    tick_until(survivors, lambda: _leader(survivors) is not None, "a new leader")
    new_leader = _leader(survivors)
    assert new_leader is not None and new_leader.raftCurrentTerm == term + 1


def _survivors_ask_at_once(nodes: list[Plain]) -> tuple[Plain, list[Plain], int]:
    """Kill the leader, make both survivors ask in the same tick; (new leader, survivors, term)."""
    leader = _leader(nodes)
    assert leader is not None
    term = leader.raftCurrentTerm
    leader._destroy()
    survivors = [n for n in nodes if n is not leader]
    for node in survivors:
        node._SyncObj__raftElectionDeadline = float("inf")
    tick_for(survivors, PREVOTE_LEASE * ELECTION_MIN + 0.05)  # both stop counting on it
    for node in survivors:
        node._SyncObj__raftElectionDeadline = 0.0
    tick_until(survivors, lambda: _leader(survivors) is not None, "a new leader")
    new_leader = _leader(survivors)
    assert new_leader is not None
    return new_leader, survivors, term


@pytest.mark.timeout(60)
def test_survivors_asking_at_once_elect_one_of_them_at_the_next_term(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    new_leader, survivors, term = _survivors_ask_at_once(start(WithPreVote))
    assert new_leader.raftCurrentTerm == term + 1
    assert new_leader.selfNode.id == min(n.selfNode.id for n in survivors)  # equal logs


@pytest.mark.timeout(60)
def test_without_the_tie_break_survivors_asking_at_once_split_the_vote(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    new_leader, _, term = _survivors_ask_at_once(start(WithPreVoteWithoutTieBreak))
    assert new_leader.raftCurrentTerm > term + 1


@pytest.mark.timeout(60)
def test_a_refused_pre_vote_teaches_the_asker_a_higher_term(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    """Otherwise a node whose request_vote was lost could stay a term behind and ask
    forever at a term the others will not grant (their term is already that high)."""
    nodes = start(WithPreVote)
    leader = _leader(nodes)
    assert isinstance(leader, PreVote)
    follower = next(n for n in nodes if n is not leader)
    assert isinstance(follower, PreVote)
    term = follower.raftCurrentTerm
    answer = {"type": "pre_vote_response", "round": 0, "granted": False, "term": term + 5}
    follower._count_pre_vote(leader.selfNode, answer)
    assert follower.raftCurrentTerm == term + 5
    assert not follower._isLeader()


@pytest.mark.timeout(60)
def test_a_node_ahead_in_term_rejoins_through_an_election(
    start: Callable[[type[Plain]], list[Plain]],
) -> None:
    """A node that raised its term while cut off refuses the leader's older
    append-entries; pysyncobj sends no answer to those, and pre-votes would never
    force the term on the others. The node answers with its term instead, the leader
    steps down, and the cluster agrees again on a leader at a higher term."""
    nodes = start(WithPreVote)
    leader = _leader(nodes)
    assert leader is not None
    ahead = next(n for n in nodes if n is not leader)
    term = leader.raftCurrentTerm
    ahead._SyncObj__setCurrentTerm(term + 3, None)
    tick_until(
        nodes,
        lambda: (
            _leader(nodes) is not None
            and len({n.raftCurrentTerm for n in nodes}) == 1
            and all(n._getLeader() == _leader(nodes).selfNode for n in nodes)  # type: ignore[union-attr]
        ),
        "every node to follow one leader at one term",
    )
    assert nodes[0].raftCurrentTerm > term + 3
