"""The leader removes what deleted and purged queues left, a bounded batch per Raft entry.

Deleting or purging a queue is one cheap command whatever the queue holds: its
keys are buried (storage: Mutation.delete_queue, Mutation.purge). This task,
on whichever node leads, proposes "reap" commands until nothing is buried,
each removing at most REAP_MAX_KEYS keys, so no entry holds the apply thread
(and so heartbeats) for long. Every replica applies the same reaps.
"""

import asyncio
import logging
import time
from typing import Final

from cluster.errors import ClusterError
from node.clock import now_ms
from node.ports import RaftPort

logger = logging.getLogger(__name__)

# Keys removed per Raft entry: about 4 ms of apply (a 200,000-message queue: 80 reaps).
REAP_MAX_KEYS: Final = 10_000
# Between two reaps, so other commands' entries go first.
REAP_PAUSE_S: Final = 0.005
# How often a node checks for buried keys when there were none.
REAP_IDLE_S: Final = 1.0


async def reap_forever(raft: RaftPort) -> None:
    removed = 0
    started: float | None = None
    while True:
        more = raft.is_leader() and raft.read(lambda store: store.has_buried())
        if more:
            if started is None:
                started, removed = time.monotonic(), 0
                logger.info("removing the stored messages of deleted and purged queues")
            try:
                result = await raft.propose_as_leader(
                    {"op": "reap", "max_keys": REAP_MAX_KEYS, "now_ms": now_ms()}
                )
            except ClusterError as exc:
                logger.debug("reap not committed: %s", exc)
                more = False
            else:
                removed += int(result.get("removed", 0))
                more = bool(result.get("more"))
                if not more:
                    logger.info(
                        "removed %d keys of deleted and purged queues in %.1f s",
                        removed,
                        time.monotonic() - started,
                    )
                    started = None
        await asyncio.sleep(REAP_PAUSE_S if more else REAP_IDLE_S)
