"""Corrections and latency changes to pysyncobj 0.3.17 made around it.

Documented patch point: mixins placed before SyncObj in the bases of our
SyncObj subclass. They override pysyncobj's tick and name-mangled private
methods, so they depend on the pinned pysyncobj version; each has a test.
"""

from collections.abc import Callable
from typing import Any

import orjson
from pysyncobj import FAIL_REASON, SyncObj
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.syncobj import _COMMAND_TYPE, _RAFT_STATE

from cluster.journal import journal_of
from cluster.wire_buffers import pending_send_bytes


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


class AcknowledgeOncePerTick:
    """A follower fdatasyncs once per tick, not once per append-entries it answers.

    Each `next_node_idx` answer must leave only after the entries it covers are
    durable (cluster.transport.FlushingTransport). Answered one by one, the
    append-entries that arrived together in one poll each cost an fdatasync: a
    follower whose disk is slower than the leader's entries come (the leader
    itself flushes once per tick) falls further behind with every entry that
    queues while it waits. The tick's answers are therefore held while it runs
    and sent when it ends, after one fdatasync that covers them all: 5-20
    fdatasyncs instead of 205 for a burst of 200 unbatched entries. Nothing
    leaves before its entries are durable; the first answer of a tick waits
    only for the rest of that tick's poll.
    """

    def _onTick(self, timeToWait: float = 0.0) -> None:
        transport = self._SyncObj__transport  # type: ignore[attr-defined]
        hold = getattr(transport, "hold_acknowledgements", None)
        if hold is None:
            super()._onTick(timeToWait)  # type: ignore[misc]
            return
        hold()
        try:
            super()._onTick(timeToWait)  # type: ignore[misc]
        finally:
            transport.release_acknowledgements()


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


class PreVote:
    """Ask before standing for election (Raft dissertation, section 9.6).

    A node that stops hearing the leader for its election timeout becomes a
    candidate at a higher term, and every node that sees the higher term,
    the healthy leader included, drops its leader: a node that rejoins after a
    restart, or one that was cut off for a moment, deposes a working leader
    (measured: the old leader of a failover test, restarted, stood for
    election three times before the leader's first heartbeat reached it, and
    the cluster had no leader for 0.4-1.1 s). Here the election deadline first
    starts a pre-vote round: the node asks the others whether they would vote
    for it at its next term, without changing any term. A node grants that
    only if it is not the leader, has not heard a leader for PREVOTE_LEASE of
    the minimum election timeout, and the asker's log is as up to date as its
    own. With a majority of grants the election goes ahead on the next tick;
    otherwise the node stays a follower at its term and asks again after
    another timeout, by which time a living leader's heartbeat has reached
    it. An election the leader asked for (pysyncobj's leadership transfer) is
    not held up. Nodes without this class ignore pre-vote messages: in a
    mixed cluster the new nodes still vote in real elections as before.
    Terms still travel: a pre-vote answer carries the answerer's term, and a
    node answers an older leader's append-entries with its own (pysyncobj
    sends nothing back), so a node that got ahead in term while cut off makes
    the leader step down once it can reach it, instead of staying out.
    """

    # pysyncobj's private state and methods this class reads and calls.
    _SyncObj__selfNode: Any
    _SyncObj__otherNodes: Any
    _SyncObj__raftState: Any
    _SyncObj__raftElectionDeadline: float
    _SyncObj__transferInProgress: bool
    _SyncObj__raftCurrentTerm: int
    _SyncObj__raftLeader: Any
    _SyncObj__transport: Any
    _SyncObj__conf: Any
    _SyncObj__connectedToAnyone: Callable[[], bool]
    _SyncObj__generateRaftTimeout: Callable[[], float]
    _SyncObj__getCurrentLogIndex: Callable[[], int]
    _SyncObj__getCurrentLogTerm: Callable[[], int]
    _SyncObj__setCurrentTerm: Callable[[int, str | None], None]
    _SyncObj__setState: Callable[[Any], None]

    _prevote_round = 0
    _prevote_grants: frozenset[str] = frozenset()
    _prevote_won = False
    _asked_at = float("-inf")  # when this node last asked for pre-votes
    _leader_heard_at = float("-inf")

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self._ask_before_election()
        super()._onTick(timeToWait)  # type: ignore[misc]

    def _ask_before_election(self) -> None:
        me = self._SyncObj__selfNode
        others = self._SyncObj__otherNodes
        now = monotonic_time()
        if (
            me is None
            or not others
            or self._SyncObj__raftState == _LEADER
            or self._SyncObj__raftElectionDeadline >= now
            or self._SyncObj__transferInProgress
            or not self._SyncObj__connectedToAnyone()
        ):
            return
        if self._prevote_won:
            self._prevote_won = False
            self._prevote_round += 1  # late grants of the round just used count for nothing
            return  # pysyncobj starts the election in this tick
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        self._prevote_round += 1
        self._prevote_grants = frozenset({me.id})
        self._asked_at = now
        request = {
            "type": PRE_VOTE,
            "round": self._prevote_round,
            "term": self._SyncObj__raftCurrentTerm + 1,
            "last_log_index": self._SyncObj__getCurrentLogIndex(),
            "last_log_term": self._SyncObj__getCurrentLogTerm(),
        }
        transport = self._SyncObj__transport
        for node in others:
            transport.send(node, request)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        kind = message.get("type")
        if kind == PRE_VOTE:
            self._answer_pre_vote(node, message)
            return
        if kind == PRE_VOTE_RESPONSE:
            self._count_pre_vote(node, message)
            return
        if kind == "append_entries":
            term = message.get("term", -1)
            if term >= self._SyncObj__raftCurrentTerm:
                self._leader_heard_at = monotonic_time()
                self._prevote_won = False
                self._prevote_round += 1
            else:
                # pysyncobj drops an older leader's append-entries without an answer,
                # so a node that got ahead in term (cut off while an election ran) could
                # never rejoin: the leader would not learn the term, and pre-votes keep
                # the node from forcing one. Tell the leader (Raft: a response carries
                # the term); it adopts the term and steps down, and an election follows.
                self._send_pre_vote_response(node, -1, granted=False)
        super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]

    def _send_pre_vote_response(self, node: Any, round_id: int, *, granted: bool) -> None:
        """Every answer carries this node's term (see _count_pre_vote)."""
        self._SyncObj__transport.send(
            node,
            {
                "type": PRE_VOTE_RESPONSE,
                "round": round_id,
                "granted": granted,
                "term": self._SyncObj__raftCurrentTerm,
            },
        )

    def _answer_pre_vote(self, node: Any, message: Any) -> None:
        conf = self._SyncObj__conf
        my_last_term = self._SyncObj__getCurrentLogTerm()
        my_last_index = self._SyncObj__getCurrentLogIndex()
        their_log = (message["last_log_term"], message["last_log_index"])
        mine = (my_last_term, my_last_index)
        now = monotonic_time()
        granted = (
            self._SyncObj__raftState != _LEADER
            and now - self._leader_heard_at >= PREVOTE_LEASE * conf.raftMinTimeout
            and message["term"] > self._SyncObj__raftCurrentTerm
            and their_log >= mine
            and not self._yields_to_self(node, their_log == mine)
        )
        if granted:
            # As Raft restarts the election timer on granting a vote: the asker
            # goes first, instead of both standing at the same term and splitting it.
            self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        self._send_pre_vote_response(node, message["round"], granted=granted)

    def _yields_to_self(self, asker: Any, equal_logs: bool) -> bool:
        """Whether this node, asking too, keeps the tie for itself.

        Two survivors of a dead leader often ask within the same tick. Granting
        each other, both would stand at the next term, each vote for itself and
        split the vote (measured: 3 failovers in 30 took one or two more terms).
        A node that has won its own round stands anyway. One that asked moments
        ago keeps a tie between equal logs when its id is the lower, so exactly
        one of the two wins. Only for a moment: were it kept for the whole
        round, a node that cannot win (cut off from part of the cluster) would
        refuse a node that could, every round; past PREVOTE_TIE_WINDOW it
        grants as before, and the randomized timeouts move the two rounds apart.
        """
        if self._prevote_won:
            return True
        window = PREVOTE_TIE_WINDOW * self._SyncObj__conf.raftMinTimeout
        return (
            equal_logs
            and monotonic_time() - self._asked_at < window
            and str(asker.id) > str(self._SyncObj__selfNode.id)
        )

    def _count_pre_vote(self, node: Any, message: Any) -> None:
        term = message.get("term")
        if isinstance(term, int) and term > self._SyncObj__raftCurrentTerm:
            # A pre-vote does not spread terms the way a vote does: learn a higher
            # one here, or a node left behind by a lost vote request could ask
            # forever at a term the others will never grant.
            self._SyncObj__setCurrentTerm(term, None)
            self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
            self._SyncObj__raftLeader = None  # as pysyncobj does on a higher term
            self._prevote_won = False
            return
        if message.get("round") != self._prevote_round or not message.get("granted"):
            return
        self._prevote_grants |= {node.id}
        voters = len(self._SyncObj__otherNodes) + 1
        if len(self._prevote_grants) > voters / 2 and not self._prevote_won:
            self._prevote_won = True
            self._SyncObj__raftElectionDeadline = 0.0  # the election starts on the next tick


PRE_VOTE = "pre_vote"
PRE_VOTE_RESPONSE = "pre_vote_response"
# A node that heard a leader within this fraction of the minimum election timeout
# refuses pre-votes: two heartbeat periods with the default settings, short enough
# that the followers of a leader that just died agree that it is gone.
PREVOTE_LEASE = 0.5
# How long after asking a node keeps a tie for itself (see PreVote._yields_to_self),
# as a fraction of the minimum election timeout: many round trips between nodes
# that ask at the same moment, a small part of the randomized spread of timeouts.
PREVOTE_TIE_WINDOW = 0.25


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


# The only command a follower may hand to the leader (see LeaderRefusesForwardedCommands).
FORWARDABLE_OPS = frozenset({"register_node"})


class LeaderRefusesForwardedCommands:
    """A command is appended only by the node the client asked, while it leads.

    pysyncobj lets a follower hand a command to the leader (`apply_command`),
    and a node that loses the leadership between a proposal and its next tick
    does so with the proposals it still holds. Such a message can arrive much
    later: a node cut off from the others sends it when the link heals. By then
    the client was answered `no_leader` or timed out, retried on the new leader
    and moved on; applied late, the old command undoes what came after it
    (seen in a chaos run: a consumer group's committed offset went back from
    870 to the 823 of a commit retried 3 s before). The leader now refuses
    forwarded commands, answering as a node that does not lead; the proposal
    fails with `no_leader` on the node that made it, definitely not applied,
    and the client retries it. Only a node registering its own address (the
    registration loop runs on followers too, and a registration says the same
    thing whenever it lands) is still taken from a follower.
    """

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if (
            message.get("type") == "apply_command"
            and self._SyncObj__raftState == _LEADER  # type: ignore[attr-defined]
            and not _forwardable(message.get("command"))
        ):
            if "request_id" in message:
                self._SyncObj__transport.send(  # type: ignore[attr-defined]
                    node,
                    {
                        "type": "apply_command_response",
                        "request_id": message["request_id"],
                        "error": FAIL_REASON.NOT_LEADER,
                    },
                )
            return
        super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]


def _forwardable(command: object) -> bool:
    """Whether a forwarded command is a batch of FORWARDABLE_OPS only (see above)."""
    if not isinstance(command, bytes) or command[:1] != bytes((_COMMAND_TYPE.REGULAR,)):
        return False
    try:
        call = pysyncobj_pickle.loads(command[1:])
        payload = call[1][0]
        commands = orjson.loads(payload)
    except Exception:
        return False
    return (
        isinstance(commands, list)
        and bool(commands)
        and all(isinstance(c, dict) and c.get("op") in FORWARDABLE_OPS for c in commands)
    )


# Bytes queued for one follower, beyond what the kernel holds, past which the leader
# sends it nothing more until the poll has drained them (see PacedCatchUp).
CATCH_UP_QUEUE_BYTES = 8 << 20
# The longest the leader's tick thread spends, per call or tick, reading and
# queueing what followers that are behind lack.
CATCH_UP_SLICE_S = 0.005


def queued_bytes(transport: Any, node: Any) -> int:
    """Bytes waiting in the leader's connection to `node` (0 without one)."""
    connection = transport._connections.get(node)
    return 0 if connection is None else pending_send_bytes(connection)


class PacedCatchUp:
    """The leader feeds a follower that is behind in small slices, at its link's pace.

    pysyncobj's `__sendAppendEntries`, which runs at every heartbeat and after
    every new entry, sends a follower that is behind (restarted, newly added,
    or due a snapshot) message after message of up to a MiB for up to
    `appendEntriesPeriod` (50 ms) per call. The leader reads its journal or
    snapshot faster than a follower takes them in, so the messages piled up in
    the connection's write buffer, and the tick thread, which also commits
    every entry, spent 50 ms of each call producing them. With a 1 GiB store,
    lone publishes took 100-300 ms while a restarted follower was sent the
    snapshot (it never got all of it), and the healthy follower, not hearing
    the leader, called elections. Here:

    * queueing for a follower stops once CATCH_UP_QUEUE_BYTES wait on its
      connection, heartbeat included: the queued messages are append-entries
      from this leader too, and a follower receiving them calls no election;
    * a call or tick spends at most CATCH_UP_SLICE_S on followers that are
      behind, and every tick of the leader gives them a slice (the poll wakes
      as their sockets drain), not only heartbeats and new entries;
    * the entries of a message are read one by one (`entries_from`).

    Also corrected: an entry larger than one message goes in parts, and
    pysyncobj marks the last part by comparing the part's end with the length
    of the command instead of the pickled entry it cuts. pysyncobj pickles with
    protocol 2, where each byte of 0x80 or more takes two: an entry of UTF-8
    text or binary data is up to twice its command, so its parts were marked
    'finish' from half way on, and the follower's tick failed (a traceback and
    a pause) for each part until the real last one.
    """

    def _SyncObj__sendAppendEntries(self) -> None:
        raft: Any = self  # pysyncobj's private state, reached by its mangled names
        started = monotonic_time()
        raft._SyncObj__newAppendEntriesTime = started + raft._SyncObj__conf.appendEntriesPeriod
        deadline = started + CATCH_UP_SLICE_S
        for node in raft._SyncObj__otherNodes | raft._SyncObj__readonlyNodes:
            if node not in raft._SyncObj__connectedNodes:
                raft._SyncObj__serializer.cancelTransmisstion(node)
                continue
            self._feed(node, deadline, heartbeat=True)

    def _onTick(self, timeToWait: float = 0.0) -> None:
        super()._onTick(timeToWait)  # type: ignore[misc]
        raft: Any = self
        if raft._SyncObj__raftState != _LEADER:
            return
        deadline = monotonic_time() + CATCH_UP_SLICE_S
        last_index = raft._SyncObj__getCurrentLogIndex()
        for node in raft._SyncObj__otherNodes | raft._SyncObj__readonlyNodes:
            if (
                node in raft._SyncObj__connectedNodes
                and raft._SyncObj__raftNextIndex[node] <= last_index
            ):
                self._feed(node, deadline, heartbeat=False)

    def _feed(self, node: Any, deadline: float, *, heartbeat: bool) -> None:
        """Send `node` what it lacks while its link has room, until `deadline`.

        With `heartbeat`, at least one message goes (entries, a snapshot part or
        an empty append-entries) unless the link is full.
        """
        raft: Any = self
        next_index: dict[Any, int] = raft._SyncObj__raftNextIndex
        batch_bytes = raft._SyncObj__conf.appendEntriesBatchSizeBytes
        first = heartbeat
        while first or next_index[node] <= raft._SyncObj__getCurrentLogIndex():
            if queued_bytes(raft._SyncObj__transport, node) >= CATCH_UP_QUEUE_BYTES:
                return
            if next_index[node] > raft._SyncObj__raftLog[0][1]:
                self._send_entries_from(node, next_index[node], batch_bytes)
            elif (
                not self._send_snapshot_part(node)
                and next_index[node] <= raft._SyncObj__raftLog[0][1]
            ):
                return  # the snapshot is being written (or unreadable): nothing to send yet
            if node not in raft._SyncObj__connectedNodes:
                return
            first = False
            if monotonic_time() > deadline:
                return

    def _send_entries_from(self, node: Any, node_next: int, batch_bytes: int) -> None:
        """Entries from `node_next` (none: a heartbeat), as pysyncobj sends them."""
        raft: Any = self
        prev_index, prev_term = raft._SyncObj__getPrevLogIndexTerm(node_next)
        entries: list[Any] = []
        if node_next <= raft._SyncObj__getCurrentLogIndex():
            entries = entries_from(raft._SyncObj__raftLog, node_next, batch_bytes)
            raft._SyncObj__raftNextIndex[node] = entries[-1][1] + 1
        message = {**self._append_entries(), "prevLogIdx": prev_index, "prevLogTerm": prev_term}
        send = raft._SyncObj__transport.send
        if not (len(entries) == 1 and len(entries[0][0]) >= batch_bytes):
            send(node, {**message, "entries": entries})
            return
        entry = pysyncobj_pickle.dumps(entries[0])
        for start, end, transmission in entry_parts(len(entry), batch_bytes):
            send(node, {**message, "transmission": transmission, "data": entry[start:end]})
            if node not in raft._SyncObj__connectedNodes:
                return

    def _append_entries(self) -> dict[str, Any]:
        """What every append-entries of this leader carries: its term and commit index."""
        raft: Any = self
        return {
            "type": "append_entries",
            "term": raft._SyncObj__raftCurrentTerm,
            "commit_index": raft._SyncObj__raftCommitIndex,
        }

    def _send_snapshot_part(self, node: Any) -> bool:
        """Send the next part of the snapshot; True while more parts follow."""
        raft: Any = self
        part = raft._SyncObj__serializer.getTransmissionData(node)
        raft._SyncObj__transport.send(node, {**self._append_entries(), "serialized": part})
        if not part or node not in raft._SyncObj__connectedNodes:
            return False
        if part[2]:  # the last part: the follower goes on from the snapshot's end
            raft._SyncObj__raftNextIndex[node] = raft._SyncObj__raftLog[1][1] + 1
            return False
        return True


def entries_from(log: Any, index: int, max_bytes: int) -> list[Any]:
    """Entries of `log` from Raft index `index` on, up to the first that reaches `max_bytes`.

    pysyncobj's `__getEntries` slices the log from `index` to its end and keeps
    the first MiB: the journal reads back every command it no longer holds in
    memory, so each message to a follower that was far behind read the whole
    rest of the journal from disk (seconds of the tick thread for a few hundred
    MiB). Here entries are read one by one, only as many as the message takes.
    """
    position = index - log[0][1]
    entries: list[Any] = []
    size = 0
    while position < len(log):
        entry = log[position]
        entries.append(entry)
        size += len(entry[0])
        if size >= max_bytes:
            break
        position += 1
    return entries


def entry_parts(entry_bytes: int, part_bytes: int) -> list[tuple[int, int, str]]:
    """(start, end, transmission) of each part of a pickled entry of `entry_bytes`."""
    parts = []
    for start in range(0, entry_bytes, part_bytes):
        end = min(start + part_bytes, entry_bytes)
        if start == 0:
            transmission = "start"
        elif end == entry_bytes:
            transmission = "finish"
        else:
            transmission = "process"
        parts.append((start, end, transmission))
    return parts
