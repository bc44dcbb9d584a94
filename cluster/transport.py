"""pysyncobj TCP transport that makes the journal durable before anything is sent.

Every Raft message depends on local state: an append_entries request carries
entries the leader counts as stored on itself, a successful next_node_idx
response acknowledges entries, a vote carries the term. So before a message
leaves, the node's DurableJournal is flushed (fdatasync) if it holds
anything not yet durable. Flushes are thereby batched per outgoing message
rather than per entry: a follower appending a batch of 500 entries pays one
fdatasync before its single acknowledgement. (Term and vote are already
durable: DurableJournal.setCurrentTerm syncs before returning.)
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
        super().__init__(syncObj, selfNode, otherNodes)

    @property
    def journal(self) -> DurableJournal | None:
        return self._journal

    def send(self, node: Any, message: Any) -> bool:
        """Flush the journal if dirty, then send; a failed flush sends nothing."""
        journal = self._journal
        if journal is not None and journal.dirty:
            journal.flush()
        return bool(super().send(node, message))
