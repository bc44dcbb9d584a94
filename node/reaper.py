"""The leader removes what deleted queues and streams left, a bounded batch per Raft entry.

Deleting or purging a queue, or deleting a stream, is one cheap command whatever
it holds: its keys are buried (storage: Mutation.delete_queue, Mutation.purge,
streams.delete_stream). This task, on whichever node leads, proposes "reap"
commands until nothing is buried, each removing at most REAP_MAX_KEYS keys, so
no entry holds the apply thread (and so heartbeats) for long. Every replica
applies the same reaps.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from cluster.errors import ClusterError
from node.clock import now_ms
from node.ports import RaftPort

logger = logging.getLogger(__name__)

# What the buried keys are the remains of, for the log.
BURIED: Final = "deleted and purged queues and deleted streams"
# Keys removed per Raft entry: ~2.5 ms of apply on every node, which is how long a
# publish that arrives meanwhile may wait behind it (10,000: p99 of lone publishes
# during a reap 13-14 ms, at most ~100 ms; 2,500: 7 ms, at most ~25 ms).
REAP_MAX_KEYS: Final = 2_500
# Least pause between two reaps, so other commands' entries go first.
REAP_PAUSE_S: Final = 0.005
# Share of the time the reaper's entries may take. After a reap whose proposal took t
# to come back (waiting behind other entries, the Raft round, every node's apply), the
# next waits t * (1 / share - 1): a busy cluster slows the reaper down by itself, and
# the publishes of an application filling a new queue keep most of the apply thread.
REAP_TIME_SHARE: Final = 0.25
# How often a node checks for buried keys when there were none.
REAP_IDLE_S: Final = 1.0


async def reap_forever(
    raft: RaftPort,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    removed = 0
    started: float | None = None
    while True:
        more = raft.is_leader() and raft.read(lambda store: store.has_buried())
        pause = REAP_IDLE_S
        if more:
            if started is None:
                started, removed = clock(), 0
                logger.info("removing the stored keys of %s", BURIED)
            proposed = clock()
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
                        "removed %d keys of %s in %.1f s", removed, BURIED, clock() - started
                    )
                    started = None
            if more:
                pause = max(REAP_PAUSE_S, (clock() - proposed) * (1 / REAP_TIME_SHARE - 1))
        await sleep(pause)
