"""One consumer round, shared by the HTTP long poll and the channel's push consumers.

Lease what the queue has now; if it has nothing, park (node.waiters) until a
publish is leased to this consumer in the publish's own Raft entry, the
queue may have something (a nack, a delay ending, a publish the parked
consumer was not chosen for), or the wait ends.
"""

import functools
from dataclasses import dataclass
from typing import Any

from node.clock import now_ms
from node.errors import ApiError, from_result, ok_or_raise
from node.ports import RaftPort
from node.validation import receive_command
from node.waiters import QueueWaiters
from storage import Store


class TooManyWaiters(ApiError):
    def __init__(self) -> None:
        super().__init__(
            503, "too_many_waiters", "too many long polls on this node", {"Retry-After": "1"}
        )


@dataclass(frozen=True)
class Lease:
    messages: list[dict[str, Any]]
    lease_ms: int
    # The receive's clock: the lease ends lease_ms after this (wall ms).
    leased_at_ms: int


def deliverable_state(store: Store, queue: str, now: int) -> tuple[bool, int, int | None] | None:
    """(anything deliverable now, visibility timeout ms, next due time) of a queue, or None."""
    info = store.get_queue(queue, now)
    if info is None:
        return None
    visibility_ms = int(info["config"]["visibility_timeout_ms"])
    return store.has_deliverable(queue, now), visibility_ms, store.next_due_ms(queue)


async def lease_or_wait(
    raft: RaftPort,
    waiters: QueueWaiters,
    queue: str,
    count: int,
    lease_ms: int | None,
    wait_s: float,
) -> Lease:
    """Up to `count` messages leased for `lease_ms` (None: the queue's timeout), or none.

    Waits at most `wait_s` (plus a Raft round when a publish was leased to it
    at the last moment). Raises ApiError (not_found, TooManyWaiters) and the
    cluster's errors of a proposal.
    """
    if wait_s > 0 and waiters.full:
        raise TooManyWaiters()
    # Parked before the read, so an apply between the two still wakes it.
    parked = waiters.park(queue, count, 0) if wait_s > 0 else None
    try:
        now = now_ms()
        info = raft.read(functools.partial(deliverable_state, queue=queue, now=now))
        if info is None:
            raise from_result({"status": "not_found"}, queue)
        deliverable, visibility_ms, next_due = info
        lease_ms = lease_ms or visibility_ms
        if deliverable or parked is None:
            if parked is not None:
                waiters.unpark(parked)
                parked = None
            if not deliverable:
                return Lease([], lease_ms, now)
            result = await raft.propose_as_leader(receive_command(queue, count, lease_ms, now))
            return Lease(ok_or_raise(result, queue)["messages"], lease_ms, now)
        parked.lease_ms = lease_ms
        timeout = wait_s
        if next_due is not None:
            timeout = min(timeout, max(0.001, (next_due - now) / 1000))
        outcome = await waiters.wait_parked(parked, timeout)
        if outcome is not None and parked.claimed_at_ms is not None:
            return Lease(ok_or_raise(outcome, queue)["messages"], lease_ms, parked.claimed_at_ms)
        raft.require_leader()
        return Lease([], lease_ms, now)
    finally:
        if parked is not None:
            waiters.unpark(parked)
