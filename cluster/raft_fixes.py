"""Corrections to pysyncobj 0.3.17 made around it, each with a test that shows the failure.

Documented patch point: a mixin placed before SyncObj in the bases of our
SyncObj subclass. It overrides pysyncobj's name-mangled message handler, so it
depends on the pinned pysyncobj version.
"""

from typing import Any

from pysyncobj import SyncObj


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
