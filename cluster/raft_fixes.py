"""Corrections and latency changes to pysyncobj 0.3.17 made around it.

Documented patch point: mixins placed before SyncObj in the bases of our
SyncObj subclass. They override pysyncobj's tick and name-mangled private
methods, so they depend on the pinned pysyncobj version; each has a test.
"""

from typing import Any

from pysyncobj import SyncObj
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.syncobj import _RAFT_STATE

from cluster.journal import journal_of


class PipelinedReplication:
    """A success ack never moves the leader's next index for a follower backwards.

    pysyncobj sends append-entries ahead of acknowledgements (its next index
    advances as it sends), but on every successful `next_node_idx` it sets the
    next index back to the acknowledged point. Entries still in flight are then
    sent again; the follower, which already holds them, truncates its log from
    the re-sent position and appends them again ("truncating already-applied
    log entries"). Besides the wasted work, entries it had acknowledged are gone
    from its journal until re-appended, which a crash can make permanent.
    Keeping the larger next index is the usual Raft pipelining rule; a real gap
    (lost message, reconnect) is still reported by the follower as a failed
    ack with `reset`, which moves the index back as before.
    """

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        next_index: dict[Any, int] = self._SyncObj__raftNextIndex  # type: ignore[attr-defined]
        before = None
        if (
            message.get("type") == "next_node_idx"
            and message.get("success")
            and not message.get("reset")
        ):
            before = next_index.get(node)
        SyncObj._SyncObj__onMessageReceived(self, node, message)
        if before is not None and node in next_index and next_index[node] < before:
            next_index[node] = before


_LEADER = _RAFT_STATE.LEADER


class LeaderFlushesInParallel:
    """The leader sends append-entries first and fdatasyncs its own journal meanwhile.

    Raft (thesis 10.2.1) lets a leader replicate an entry before its own
    write is durable, provided it counts itself toward the commit of an entry
    only once that entry is durable on its own disk. pysyncobj always counts
    the leader, so the leader's flush must come before the commit computation,
    which runs at the top of `_onTick` on the data the previous poll brought:

    * `_checkCommandsToApply` (where new entries are added and sent, after the
      heartbeat) flushes when it is done, right before the tick's poll: the
      leader's fdatasync overlaps the followers' receive, append and
      fdatasync instead of preceding them;
    * `_onTick` flushes before anything else, for entries added during the
      poll (a new leader's no-op), so no commit ever counts a non-durable
      entry of the leader.

    Every other message (acks of followers, votes) is still flushed before it
    leaves by FlushingTransport, which skips the flush only for append-entries
    of a SyncObj that has this mixin (`flushes_before_counting`).
    """

    flushes_before_counting = True

    def _flush_own_journal(self) -> None:
        journal = journal_of(self)
        if journal is not None and journal.dirty:
            journal.flush()

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self._flush_own_journal()
        super()._onTick(timeToWait)  # type: ignore[misc]

    def _checkCommandsToApply(self) -> None:
        super()._checkCommandsToApply()  # type: ignore[misc]
        self._flush_own_journal()


class CommitRidesOnNextMessage:
    """No extra append-entries round just to tell followers a new commit index.

    In unbatched mode pysyncobj sends append-entries to every follower after
    each apply on the leader, only to carry the new commit index. For a lone
    command that doubles the Raft traffic (two messages and two replies per
    follower per command, each parsed and answered on both sides) and puts a
    pickle + compress + send per follower between the apply and the answer to
    the client, on the thread that holds the GIL. The commit index travels
    with the next entry or the next heartbeat (`append_entries_period_s`)
    instead; a follower's applied state (which serves only stats reads that
    may lag anyway) trails by at most that period. Acknowledgements to clients
    are not affected: the leader answers once it applied.
    """

    def _SyncObj__applyLogEntries(self) -> bool:
        SyncObj._SyncObj__applyLogEntries(self)
        return False


class ReadBeforeElection:
    """Read what has arrived before deciding that the leader is gone.

    pysyncobj checks the election deadline at the top of a tick, before the
    tick's poll reads the network. A follower whose tick thread was kept off
    the CPU (two busy cores, a long apply, the GIL) past its election timeout
    would start an election although a heartbeat is waiting in its socket,
    and the higher term would depose a healthy leader. When the deadline has
    passed, a non-blocking poll first processes whatever is pending; a waiting
    heartbeat moves the deadline, a dead leader sends nothing and the
    election starts as before. This keeps short election timeouts safe from
    scheduling delays on the follower side.
    """

    def _onTick(self, timeToWait: float = 0.0) -> None:
        if (
            self._SyncObj__raftState != _LEADER  # type: ignore[attr-defined]
            and self._SyncObj__raftElectionDeadline < monotonic_time()  # type: ignore[attr-defined]
            and self._SyncObj__transport.ready  # type: ignore[attr-defined]
        ):
            self._poller.poll(0)  # type: ignore[attr-defined]
        super()._onTick(timeToWait)  # type: ignore[misc]


class KeepPeerLinksAlive:
    """Keep the follower-to-follower connections usable for the next election.

    pysyncobj drops a connection on which nothing was read for
    `connectionTimeout`, and it checks that when it *sends*. Followers never
    talk to each other while a leader lives, so their link is always stale
    when the leader dies: the first request_vote a candidate sends to the
    other follower is silently dropped (the connection is closed and retried
    `connectionRetryTime` later). The other follower then times out too and
    the vote splits; measured with a SIGKILLed leader: 0.6-1.8 s to a new
    leader where one election round takes 0.2-0.4 s. Every node therefore
    sends a small `keepalive` message (ignored by pysyncobj's handler) to each
    connected peer every quarter of the connection timeout.
    """

    _keepalive_due = 0.0

    def _onTick(self, timeToWait: float = 0.0) -> None:
        now = monotonic_time()
        if now >= self._keepalive_due:
            conf = self._SyncObj__conf  # type: ignore[attr-defined]
            self._keepalive_due = now + conf.connectionTimeout / 4
            transport = self._SyncObj__transport  # type: ignore[attr-defined]
            if transport.ready:
                for node in self._SyncObj__otherNodes:  # type: ignore[attr-defined]
                    if self.isNodeConnected(node):  # type: ignore[attr-defined]
                        transport.send(node, KEEPALIVE)
        super()._onTick(timeToWait)  # type: ignore[misc]


KEEPALIVE = {"type": "keepalive"}
