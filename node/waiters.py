"""Long-poll wake-ups, and consumers parked until a publish can be leased to them.

Two kinds of waiter:

* an event per key (a queue or a stream), replaced each time it fires: a
  waiter takes the current event before it checks, so an apply between the
  check and the wait still wakes it (no lost wake-up);
* a parked consumer of a queue (`park`): it registers before it reads the
  queue, for the same reason, and says how much it would lease. When the
  leader proposes a publish to that queue, `companions` adds the parked
  consumer's receive to the same Raft entry, right after the publish: the
  message is published and leased in one round instead of two (publish,
  wake up, lease). The receive's result goes to the parked consumer's
  future; an apply that merely makes the queue worth a look resolves it with
  None instead.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

from cluster.proposer import Pending
from node.clock import now_ms
from node.validation import receive_command


@dataclass(eq=False)
class Parked:
    """A consumer waiting for messages on `queue`, to lease up to `count` for `lease_ms`."""

    queue: str
    count: int
    lease_ms: int
    # None: look at the queue again; a dict: the result of a receive proposed for it.
    outcome: "asyncio.Future[dict[str, Any] | None]"
    # The receive's now_ms once the proposer took this consumer (its lease starts then).
    claimed_at_ms: int | None = None


class QueueWaiters:
    def __init__(self, max_waiters: int) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._parked: dict[str, list[Parked]] = {}
        self._max_waiters = max_waiters
        self.waiting = 0

    def event(self, queue: str) -> asyncio.Event:
        event = self._events.get(queue)
        if event is None:
            event = self._events[queue] = asyncio.Event()
        return event

    @property
    def full(self) -> bool:
        return self.waiting >= self._max_waiters

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        self.waiting += 1
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1

    def park(self, queue: str, count: int, lease_ms: int) -> Parked:
        """Register a consumer of `queue`; call before reading the queue, `unpark` after."""
        parked = Parked(queue, count, lease_ms, asyncio.get_running_loop().create_future())
        self._parked.setdefault(queue, []).append(parked)
        self.waiting += 1
        return parked

    def unpark(self, parked: Parked) -> None:
        """Done waiting; a consumer already claimed keeps its receive (its future resolves)."""
        self.waiting -= 1
        if parked.claimed_at_ms is not None:
            if not parked.outcome.done():
                # Nobody may await it any more (a client gone): consume its outcome.
                parked.outcome.add_done_callback(_consume_outcome)
            return
        queue_parked = self._parked.get(parked.queue)
        if queue_parked is not None and parked in queue_parked:
            queue_parked.remove(parked)
            if not queue_parked:
                del self._parked[parked.queue]

    async def wait_parked(self, parked: Parked, timeout_s: float) -> dict[str, Any] | None:
        """The receive's result if the proposer took `parked`, else None once woken or timed out."""
        try:
            return await asyncio.wait_for(asyncio.shield(parked.outcome), timeout_s)
        except TimeoutError:
            if parked.claimed_at_ms is None:
                return None
            # Claimed: the proposer resolves the outcome within its own timeout.
            return await parked.outcome

    def companions(self, commands: list[dict[str, Any]], room: int) -> list[Pending]:
        """Receives for consumers parked on the queues `commands` publish to (see module)."""
        published: dict[str, int] = {}
        for command in commands:
            if command.get("op") == "publish" and command.get("queue") in self._parked:
                queue = str(command["queue"])
                published[queue] = published.get(queue, 0) + len(command["messages"])
        extra: list[Pending] = []
        if not published:
            return extra
        now = now_ms()
        for queue, published_count in published.items():
            parked = self._parked[queue]
            unleased = published_count
            while parked and unleased > 0 and len(extra) < room:
                consumer = parked.pop(0)
                consumer.claimed_at_ms = now
                command = receive_command(queue, consumer.count, consumer.lease_ms, now)
                extra.append((command, consumer.outcome))
                unleased -= consumer.count
            if not parked:
                del self._parked[queue]
        return extra

    def watched(self, queues: set[str]) -> set[str]:
        """The queues some long poll waits on; safe to call from the Raft thread.

        A waiter registers before it reads the store and an apply commits
        before it asks, so a queue missing here has no waiter that could miss
        the apply.
        """
        return {queue for queue in queues if queue in self._events or queue in self._parked}

    def notify(self, queues: set[str]) -> None:
        for queue in queues:
            event = self._events.pop(queue, None)
            if event is not None:
                event.set()
            for parked in self._parked.pop(queue, ()):
                if not parked.outcome.done():
                    parked.outcome.set_result(None)

    def notify_all(self) -> None:
        self.notify(set(self._events) | set(self._parked))


def _consume_outcome(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()
