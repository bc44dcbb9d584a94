"""Client-side coalescing: many concurrent ``publish``/``ack`` calls, few HTTP requests.

Every call to :meth:`AsyncClient.publish` used to be one ``POST`` and hence one Raft
proposal. When an application publishes (or acks) concurrently, :class:`Coalescer`
gathers the calls made for the same queue into one request carrying all their
messages (receipts), and hands every caller its own slice of the answer.

When a lane (one queue, one kind of call) sends:

* at the end of the current event-loop iteration when nothing is in flight for it,
  so a lone synchronous caller pays no linger at all and callers that started in
  the same iteration still share a request;
* otherwise when the oldest waiting call has lingered ``linger`` seconds, or at once
  when the batch is full (``max_count`` items or ``max_bytes``);
* never more than ``max_in_flight`` requests at a time (pipelining); what arrives
  meanwhile waits and leaves with the next free slot.

A batch is sent through the client's usual request path, so redirects, failover
and retries apply to the whole batch, re-sending the same body (the same message
ids): the server's dedup window keeps a retried batch exactly-once. A definite
refusal of a multi-item batch (a 4xx other than a missing queue, e.g. one message
too large, or ``queue_full``) is retried item by item, so only the offending caller
sees the error, as it would have without coalescing.

Publishes to different queues share a request when the client can send them in
one (``POST /v1/messages``, see :class:`Batcher`'s ``publish_many``): many queues
then cost what one does. Acks never mix queues. Calls for one queue that are
concurrent have no order between them, as before. A caller that awaits each call
before the next keeps its order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from raftmq.errors import BadRequest, Conflict
from raftmq.results import AckResult

__all__ = [
    "DEFAULT_LINGER_MS",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_IN_FLIGHT",
    "Batcher",
    "Coalescer",
    "ItemFailed",
]

log = logging.getLogger(__name__)

DEFAULT_LINGER_MS = 1.0
DEFAULT_MAX_BATCH = 500  # the server takes up to 1000 messages / receipts per request
DEFAULT_MAX_BATCH_BYTES = 1 << 20  # the server takes request bodies up to 8 MiB
DEFAULT_MAX_IN_FLIGHT = 4

I = TypeVar("I")  # noqa: E741 - item
R = TypeVar("R")  # result


@dataclass(frozen=True)
class ItemFailed:
    """A result of ``send`` that fails its own caller only (the rest of the batch succeeded)."""

    error: BaseException


SendFn = Callable[[str, list[I]], Awaitable[Sequence[R | ItemFailed]]]


@dataclass
class _Entry(Generic[I, R]):
    item: I
    count: int
    size: int
    future: asyncio.Future[R]


@dataclass
class _Lane(Generic[I, R]):
    """The waiting calls and in-flight requests of one key (one queue)."""

    pending: list[_Entry[I, R]] = field(default_factory=list)
    count: int = 0
    size: int = 0
    deadline: float = 0.0
    in_flight: int = 0
    timer: asyncio.TimerHandle | None = None
    scheduled: bool = False


class Coalescer(Generic[I, R]):
    """Groups items submitted for the same key into batches handed to ``send``.

    ``send(key, items)`` must return one result per item, in order; whatever it
    raises is raised to every caller of that batch (see ``split_on``).
    """

    def __init__(
        self,
        send: SendFn[I, R],
        *,
        linger: float,
        max_count: int = DEFAULT_MAX_BATCH,
        max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        split_on: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if linger < 0 or max_count < 1 or max_bytes < 1 or max_in_flight < 1:
            raise ValueError("linger must be >= 0 and the batch and in-flight limits >= 1")
        self._send_fn = send
        self._linger = linger
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._split_on = split_on
        self._lanes: dict[str, _Lane[I, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests_sent = 0  # for tests and the benchmark's statistics
        self.items_sent = 0

    # ----------------------------------------------------------------- public

    def submit(self, key: str, item: I, *, count: int = 1, size: int = 0) -> asyncio.Future[R]:
        """Queues ``item`` for ``key``; the future resolves with its own result."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[R] = loop.create_future()
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if not lane.pending:
            lane.deadline = loop.time() + self._linger
        lane.pending.append(_Entry(item, count, size, future))
        lane.count += count
        lane.size += size
        full = lane.count >= self._max_count or lane.size >= self._max_bytes
        if lane.in_flight == 0 or full:
            if not lane.scheduled:
                lane.scheduled = True
                loop.call_soon(self._dispatch, key)
        elif lane.timer is None and not lane.scheduled:
            lane.timer = loop.call_at(lane.deadline, self._dispatch, key)
        return future

    @property
    def pending(self) -> int:
        """Items waiting to be sent (not counting those in flight)."""
        return sum(len(lane.pending) for lane in self._lanes.values())

    async def drain(self) -> None:
        """Sends everything waiting now (ignoring the linger) and waits for all requests."""
        while True:
            for key, lane in list(self._lanes.items()):
                if lane.pending:
                    lane.deadline = 0.0
                    self._dispatch(key)
            if not self._tasks:
                if not any(lane.pending for lane in self._lanes.values()):
                    return
                await asyncio.sleep(0)
                continue
            await asyncio.wait(set(self._tasks))

    # --------------------------------------------------------------- internal

    def _dispatch(self, key: str) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            return
        lane.scheduled = False
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        while lane.pending and lane.in_flight < self._max_in_flight:
            full = lane.count >= self._max_count or lane.size >= self._max_bytes
            if not (full or lane.in_flight == 0 or now >= lane.deadline):
                lane.timer = loop.call_at(lane.deadline, self._dispatch, key)
                return
            batch = self._take(lane)
            if not batch:
                continue  # every waiting caller had given up
            lane.in_flight += 1
            task = loop.create_task(self._send(key, lane, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not lane.pending and lane.in_flight == 0:
            del self._lanes[key]

    def _take(self, lane: _Lane[I, R]) -> list[_Entry[I, R]]:
        """Pops the next batch (at least one entry) off ``lane``; skips cancelled calls."""
        batch: list[_Entry[I, R]] = []
        count = size = 0
        taken = 0
        for entry in lane.pending:
            if batch and (
                count + entry.count > self._max_count or size + entry.size > self._max_bytes
            ):
                break
            taken += 1
            lane.count -= entry.count
            lane.size -= entry.size
            if entry.future.done():
                continue  # its caller was cancelled before we sent it
            batch.append(entry)
            count += entry.count
            size += entry.size
        del lane.pending[:taken]
        return batch

    async def _send(self, key: str, lane: _Lane[I, R], batch: list[_Entry[I, R]]) -> None:
        try:
            await self._deliver(key, batch)
        except asyncio.CancelledError:
            # Only a loop shutting down cancels these tasks: do not start new ones.
            lane.in_flight -= 1
            for entry in lane.pending:
                entry.future.cancel()
            raise
        lane.in_flight -= 1  # a lane with requests in flight is never dropped
        self._dispatch(key)

    async def _deliver(self, key: str, batch: list[_Entry[I, R]]) -> None:
        self.requests_sent += 1
        self.items_sent += len(batch)
        try:
            results = await self._send_fn(key, [e.item for e in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} answered with {len(results)} results")
        except asyncio.CancelledError:
            for entry in batch:
                entry.future.cancel()
            raise
        except Exception as exc:
            if len(batch) > 1 and self._split_on is not None and self._split_on(exc):
                log.debug("raftmq: batch of %d refused (%s); sending one by one", len(batch), exc)
                for entry in batch:
                    if not entry.future.done():
                        await self._deliver(key, [entry])
                return
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        for entry, result in zip(batch, results, strict=True):
            if entry.future.done():
                continue
            if isinstance(result, ItemFailed):
                entry.future.set_exception(result.error)
            else:
                entry.future.set_result(result)


def refused_by_item(exc: BaseException) -> bool:
    """A definite refusal (4xx) that one item of a batch may have caused.

    A missing queue (404) is not one: it would refuse every item alike.
    """
    return isinstance(exc, BadRequest | Conflict)


def _message_size(wire: dict[str, Any]) -> int:
    """A cheap upper-ish estimate of a message's JSON size (exactness is not needed)."""
    size = 64 + len(wire.get("body", "")) + len(str(wire.get("id", "")))
    headers = wire.get("headers")
    if headers:
        size += sum(len(k) + len(v) + 8 for k, v in headers.items())
    return size


PublishFn = Callable[[str, list[dict[str, Any]]], Awaitable[list[str]]]
# (queue, wire messages) per queue -> per queue its ids, or what refused that queue
PublishManyFn = Callable[
    [list[tuple[str, list[dict[str, Any]]]]], Awaitable[list["list[str] | BaseException"]]
]
AckFn = Callable[[str, list[str]], Awaitable[AckResult]]
# The publish lane of a Batcher whose publishes may share requests across queues.
_ALL_QUEUES = ""


class Batcher:
    """The coalescing used by :class:`raftmq.client.AsyncClient`: one lane per queue
    for publishes and one for acks.

    ``publish(queue, wire_messages)`` and ``ack(queue, receipts)`` are the client's
    ordinary (retrying) request functions; messages arrive here already in wire
    form with their ids fixed, so a retry re-sends the same ids. With
    ``publish_many`` all publishes share one lane, and a batch that holds several
    queues goes out as one request; a batch of one queue still uses ``publish``.
    """

    def __init__(
        self,
        publish: PublishFn,
        ack: AckFn,
        *,
        publish_many: PublishManyFn | None = None,
        linger_ms: float = DEFAULT_LINGER_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._publish_fn = publish
        self._publish_many_fn = publish_many
        self._ack_fn = ack
        linger = linger_ms / 1000.0
        # A lane per queue holds wire messages, sent with ``publish`` as they are;
        # the one lane of ``publish_many`` holds (queue, wire) pairs (a pair per
        # message only where it is needed: one object less per message in flight).
        self.publishes: Coalescer[Any, str] = Coalescer(
            publish if publish_many is None else self._send_publishes,
            linger=linger,
            max_count=max_batch,
            max_bytes=max_batch_bytes,
            max_in_flight=max_in_flight,
            split_on=refused_by_item,
        )
        self.acks: Coalescer[list[str], AckResult] = Coalescer(
            self._send_acks,
            linger=linger,
            max_count=max_batch,
            max_bytes=max_batch_bytes,
            max_in_flight=max_in_flight,
            split_on=refused_by_item,
        )

    async def publish(self, queue: str, wire: dict[str, Any]) -> str:
        """Publishes one message (wire form, id set); returns its id."""
        return await self.publish_soon(queue, wire)

    def publish_soon(self, queue: str, wire: dict[str, Any]) -> asyncio.Future[str]:
        """Queues one message (wire form, id set); the future resolves with its id.

        As :meth:`publish` without a coroutine of its own, for callers that await
        the future themselves (the channel: one frame less per message).
        """
        if self._publish_many_fn is None:
            return self.publishes.submit(queue, wire, size=_message_size(wire))
        return self.publishes.submit(_ALL_QUEUES, (queue, wire), size=_message_size(wire))

    async def _send_publishes(
        self, lane: str, items: list[tuple[str, dict[str, Any]]]
    ) -> list[str | ItemFailed]:
        """A batch of the shared lane (``publish_many``)."""
        assert self._publish_many_fn is not None
        groups: dict[str, list[dict[str, Any]]] = {}
        for queue, wire in items:
            groups.setdefault(queue, []).append(wire)
        if len(groups) == 1:
            [(queue, wires)] = groups.items()
            return list(await self._publish_fn(queue, wires))
        outcomes = dict(zip(groups, await self._publish_many_fn(list(groups.items())), strict=True))
        taken = dict.fromkeys(groups, 0)
        results: list[str | ItemFailed] = []
        for queue, _ in items:
            outcome = outcomes[queue]
            if isinstance(outcome, BaseException):
                results.append(ItemFailed(outcome))
            else:
                results.append(outcome[taken[queue]])
                taken[queue] += 1
        return results

    async def ack(self, queue: str, receipts: list[str]) -> AckResult:
        """Acks ``receipts``; the result counts only this caller's receipts."""
        if not receipts:
            return await self._ack_fn(queue, receipts)  # let the server refuse it as before
        return await self.ack_soon(queue, receipts)

    def ack_soon(self, queue: str, receipts: list[str]) -> asyncio.Future[AckResult]:
        """Queues the ack of ``receipts`` (at least one) and returns its future at once."""
        size = sum(map(len, receipts)) + 4 * len(receipts)
        return self.acks.submit(queue, receipts, count=len(receipts), size=size)

    async def drain(self) -> None:
        """Sends whatever waits and waits for every request in flight."""
        await self.publishes.drain()
        await self.acks.drain()

    async def _send_acks(self, queue: str, groups: list[list[str]]) -> list[AckResult]:
        if len(groups) == 1:
            return [await self._ack_fn(queue, groups[0])]
        merged = [r for group in groups for r in group]
        result = await self._ack_fn(queue, merged)
        if not result.stale:
            # The usual answer: every receipt acked, each caller's result its count.
            return [AckResult(len(group)) for group in groups]
        stale = set(result.stale)
        out = []
        for group in groups:
            mine = [r for r in group if r in stale]
            out.append(AckResult(len(group) - len(mine), mine))
        return out
