"""Long-poll wake-ups: a receive waits until an apply makes its queue deliverable."""

import asyncio


class QueueWaiters:
    """One event per queue, replaced each time it fires.

    A waiter takes the current event before it checks the queue, so a publish
    applied between the check and the wait still wakes it (no lost wake-up).
    """

    def __init__(self, max_waiters: int) -> None:
        self._events: dict[str, asyncio.Event] = {}
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

    def watched(self, queues: set[str]) -> set[str]:
        """The queues some long poll waits on; safe to call from the Raft thread.

        A receive registers its event before it reads the store and an apply
        commits before it asks, so a queue missing here has no waiter that
        could miss the apply.
        """
        return {queue for queue in queues if queue in self._events}

    def notify(self, queues: set[str]) -> None:
        for queue in queues:
            event = self._events.pop(queue, None)
            if event is not None:
                event.set()

    def notify_all(self) -> None:
        self.notify(set(self._events))
