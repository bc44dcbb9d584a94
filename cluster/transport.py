"""pysyncobj TCP transport that makes the journal durable before anything is sent.

Every Raft message depends on local state: an append_entries request carries
entries the leader counts as stored on itself, a successful next_node_idx
response acknowledges entries, a vote carries the term. So before a message
leaves, the node's DurableJournal is flushed (fdatasync) if it holds
anything not yet durable. Flushes are thereby batched per outgoing message
rather than per entry: a follower appending a batch of 500 entries pays one
fdatasync before its single acknowledgement. (Term and vote are already
durable: DurableJournal.setCurrentTerm syncs before returning.)

Followers flush once per tick rather than once per acknowledgement: while the
tick thread holds acknowledgements (``hold_acknowledgements``, see
cluster.raft_fixes.AcknowledgeOncePerTick), a ``next_node_idx`` is queued;
``release_acknowledgements`` then makes the journal durable with one
fdatasync and sends the queued messages in order. Append-entries that pile up
in the socket while a follower waits for its disk are thereby stored with one
fdatasync between them instead of one each. Any other message sent meanwhile
first releases the queue, so the order of messages to a node never changes.

One exception: the append_entries requests of a SyncObj that flushes its
journal itself before it counts its own entries toward a commit
(``flushes_before_counting``, see cluster.raft_fixes.LeaderFlushesInParallel)
leave at once, so the leader's fdatasync runs while the followers store the
entries rather than before they even receive them. The durability rule is
unchanged: an entry is committed, and so acknowledged, only once a majority
has it fdatasync'd, the leader counting itself only after its own flush.
"""

from __future__ import annotations

import logging
from typing import Any

import pysyncobj.transport

from cluster.journal import DurableJournal, journal_of

__all__ = ["FlushingTransport", "journal_of"]

logger = logging.getLogger(__name__)


class FlushingTransport(pysyncobj.transport.TCPTransport):  # type: ignore[misc]
    """TCPTransport whose send() flushes the journal first.

    Pass it as ``SyncObj(..., transportClass=FlushingTransport)`` after
    ``cluster.journal.install_journal()``. The journal is found once, at
    construction, through ``journal_of(syncObj)``: pysyncobj creates the
    journal just before the transport, and the journal object never changes
    for the life of the SyncObj.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        journal = journal_of(syncObj)
        if journal is None and syncObj.conf.journalFile is not None:
            # A file journal that never fsyncs would silently break the
            # durability rule: refuse to start instead.
            raise TypeError(
                "FlushingTransport needs a DurableJournal: call "
                "cluster.journal.install_journal() before creating the SyncObj"
            )
        self._journal: DurableJournal | None = journal
        self._leader_flushes_itself = bool(getattr(syncObj, "flushes_before_counting", False))
        self._holding = False
        self._held: list[tuple[Any, Any]] = []
        super().__init__(syncObj, selfNode, otherNodes)

    @property
    def journal(self) -> DurableJournal | None:
        return self._journal

    def hold_acknowledgements(self) -> None:
        """Queue ``next_node_idx`` messages until ``release_acknowledgements``."""
        self._holding = True

    def release_acknowledgements(self) -> None:
        """Flush once, then send what was queued; a failed flush sends nothing."""
        self._holding = False
        self._send_held()

    def _send_held(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        self._flush_if_dirty()
        for node, message in held:
            super().send(node, message)

    def _flush_if_dirty(self) -> None:
        journal = self._journal
        if journal is not None and journal.dirty:
            journal.flush()

    def send(self, node: Any, message: Any) -> bool:
        """Flush the journal if dirty, then send; a failed flush sends nothing.

        Append-entries of a leader that flushes before counting itself are
        sent without waiting for the flush, and acknowledgements are queued
        while they are held (see the module docstring).
        """
        kind = message.get("type") if isinstance(message, dict) else None
        if self._holding and kind == "next_node_idx":
            self._held.append((node, message))
            return True
        self._send_held()
        if not (self._leader_flushes_itself and kind == "append_entries"):
            self._flush_if_dirty()
        return bool(super().send(node, message))
