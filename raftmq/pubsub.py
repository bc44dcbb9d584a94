"""Client-side types for exchanges and streams, and topic subscriptions.

A subscription is a queue of its own bound to an exchange: every subscriber
gets its own copy of each matching message (fan-out), and the queue's leases
make delivery at-least-once. ``Client.subscribe`` / ``AsyncClient.subscribe``
build one; see :class:`Subscription` for exactly when messages are acked.
"""

from __future__ import annotations

import binascii
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from raftmq.errors import Conflict

if TYPE_CHECKING:
    from raftmq.client import ReceivedMessage

__all__ = [
    "AsyncSubscription",
    "Routed",
    "StreamBatch",
    "StreamRecord",
    "Subscription",
    "subscription_queue_name",
]


@dataclass(frozen=True)
class Routed:
    """Outcome of a publish to an exchange: messages per queue, and how many matched none."""

    routed: dict[str, int]
    unroutable: int
    ids: list[str]


@dataclass(frozen=True)
class StreamRecord:
    """One record read from a stream; ``timestamp`` is epoch milliseconds of its append."""

    offset: int
    body: str | bytes
    headers: dict[str, str]
    timestamp: int
    id: str | None = None


@dataclass(frozen=True)
class StreamBatch:
    """A read: ``next_offset`` is where the next read goes on; ``first_offset`` the oldest held."""

    records: list[StreamRecord]
    next_offset: int
    first_offset: int


def decode_body(raw: Mapping[str, Any]) -> str | bytes:
    """A message or record body as sent: text, or bytes when it came base64-encoded."""
    body: str | bytes = raw["body"]
    if raw.get("encoding") == "base64":
        body = binascii.a2b_base64(str(body), strict_mode=True)  # b64decode(validate=True)
    return body


def decode_record(raw: Mapping[str, Any]) -> StreamRecord:
    return StreamRecord(
        offset=int(raw["offset"]),
        body=decode_body(raw),
        headers=dict(raw.get("headers") or {}),
        timestamp=int(raw["timestamp"]),
        id=None if raw.get("id") is None else str(raw["id"]),
    )


def decode_batch(raw: Any) -> StreamBatch:
    return StreamBatch(
        records=[decode_record(r) for r in raw["records"]],
        next_offset=int(raw["next_offset"]),
        first_offset=int(raw["first_offset"]),
    )


def subscription_queue_name(exchange: str) -> str:
    """``sub.{exchange}.{uuid}``, the exchange part cut so the name stays within 200 characters."""
    return f"sub.{exchange[:150]}.{uuid.uuid4().hex}"


class _SyncQueues(Protocol):
    def declare_queue(self, name: str, **config: Any) -> dict[str, Any]: ...

    def bind(self, exchange: str, queue: str, routing_key: str = "") -> dict[str, Any]: ...

    def delete_queue(self, name: str) -> None: ...

    def receive(
        self,
        queue: str,
        *,
        max: int = 1,
        wait: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]: ...

    def ack(self, queue: str, receipts: list[str]) -> Any: ...

    def nack(self, queue: str, receipts: list[str], delay: float | None = None) -> Any: ...


class _AsyncQueues(Protocol):
    async def declare_queue(self, name: str, **config: Any) -> dict[str, Any]: ...

    async def bind(self, exchange: str, queue: str, routing_key: str = "") -> dict[str, Any]: ...

    async def delete_queue(self, name: str) -> None: ...

    async def receive(
        self,
        queue: str,
        *,
        max: int = 1,
        wait: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]: ...

    async def ack(self, queue: str, receipts: list[str]) -> Any: ...

    async def nack(self, queue: str, receipts: list[str], delay: float | None = None) -> Any: ...


class _State:
    """What both subscription flavours track: the queue, the message handed out, the rest leased."""

    def __init__(
        self, exchange: str, pattern: str, queue: str | None, max: int, wait: float
    ) -> None:
        self.exchange = exchange
        self.pattern = pattern
        self.temporary = queue is None
        self.queue = subscription_queue_name(exchange) if queue is None else queue
        self.max = max
        self.wait = wait
        self.buffer: collections.deque[ReceivedMessage] = collections.deque()
        self.current: ReceivedMessage | None = None
        self.closed = False

    def take_current(self) -> list[str]:
        current, self.current = self.current, None
        return [] if current is None else [current.receipt]

    def take_buffer(self) -> list[str]:
        receipts = [m.receipt for m in self.buffer]
        self.buffer.clear()
        return receipts


class Subscription(Iterator["ReceivedMessage"]):
    """Messages an exchange routes to this subscriber's queue, acked as the loop moves on.

    Exactly when a message is acked:

    * asking for the next message (the ``for`` loop going round) acks the one
      handed out before it: the loop body finished without raising;
    * ``close()`` acks the last message handed out (call it after a ``break``,
      or let a ``with`` block do it), and nacks any leased but not yet handed
      out so they are delivered again at once;
    * a ``with`` block left by an exception acks nothing more: the message
      being handled and the rest are nacked and come back;
    * a subscription dropped without ``close()`` acks nothing more; its leases
      expire (the queue's visibility timeout) and the messages come back.

    A subscription created without ``queue`` owns a temporary queue
    (``sub.{exchange}.{uuid}``), deleted by ``close()`` or the end of the
    ``with`` block; with ``queue`` the queue and its binding stay, so the next
    subscriber of that queue resumes where this one stopped. The queue is
    declared and bound before ``subscribe`` returns, so nothing published
    after that is missed. The iteration never ends by itself.
    """

    def __init__(
        self,
        client: _SyncQueues,
        exchange: str,
        pattern: str,
        *,
        queue: str | None = None,
        max: int = 100,
        wait: float = 5.0,
    ) -> None:
        self._client = client
        self._state = _State(exchange, pattern, queue, max, wait)
        try:
            client.declare_queue(self._state.queue)
        except Conflict:
            if self._state.temporary:
                raise
            # A named queue declared elsewhere with its own settings: use it as it is.
        try:
            client.bind(exchange, self._state.queue, pattern)
        except BaseException:
            # No Subscription is returned, so nothing would ever delete the queue.
            if self._state.temporary:
                with contextlib.suppress(Exception):
                    client.delete_queue(self._state.queue)
            raise

    @property
    def queue(self) -> str:
        return self._state.queue

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ReceivedMessage:
        state = self._state
        if state.closed:
            raise StopIteration
        done = state.take_current()
        if done:
            self._client.ack(state.queue, done)
        while not state.buffer:
            state.buffer.extend(self._client.receive(state.queue, max=state.max, wait=state.wait))
        state.current = state.buffer.popleft()
        return state.current

    def close(self) -> None:
        """Ack the last message handed out, return the rest, delete a temporary queue."""
        self._finish(completed=True)

    def _finish(self, *, completed: bool) -> None:
        state = self._state
        if state.closed:
            return
        state.closed = True
        current = state.take_current()
        if current and completed:
            self._client.ack(state.queue, current)
        if state.temporary:
            self._client.delete_queue(state.queue)
            return
        back = ([] if completed else current) + state.take_buffer()
        if back:
            self._client.nack(state.queue, back)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(completed=exc_type is None)


class AsyncSubscription(AsyncIterator["ReceivedMessage"]):
    """asyncio twin of :class:`Subscription`, with the same ack rules.

    ``AsyncClient.subscribe`` returns it without waiting: the queue is declared
    and bound by ``async with``, by ``await start()`` or at the first
    ``async for`` step, whichever comes first, and ``aclose()`` (or the end of
    the ``async with`` block) finishes it as ``close()`` does.
    """

    def __init__(
        self,
        client: _AsyncQueues,
        exchange: str,
        pattern: str,
        *,
        queue: str | None = None,
        max: int = 100,
        wait: float = 5.0,
    ) -> None:
        self._client = client
        self._state = _State(exchange, pattern, queue, max, wait)
        self._started = False

    @property
    def queue(self) -> str:
        return self._state.queue

    async def start(self) -> Self:
        """Declare and bind the queue (once)."""
        if not self._started:
            try:
                await self._client.declare_queue(self._state.queue)
            except Conflict:
                if self._state.temporary:
                    raise
            try:
                await self._client.bind(
                    self._state.exchange, self._state.queue, self._state.pattern
                )
            except BaseException:
                # Not started, so aclose() would not delete the temporary queue.
                if self._state.temporary:
                    with contextlib.suppress(Exception):
                        await self._client.delete_queue(self._state.queue)
                raise
            self._started = True
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ReceivedMessage:
        state = self._state
        if state.closed:
            raise StopAsyncIteration
        await self.start()
        done = state.take_current()
        if done:
            await self._client.ack(state.queue, done)
        while not state.buffer:
            batch = await self._client.receive(state.queue, max=state.max, wait=state.wait)
            state.buffer.extend(batch)
        state.current = state.buffer.popleft()
        return state.current

    async def aclose(self) -> None:
        """Ack the last message handed out, return the rest, delete a temporary queue."""
        await self._finish(completed=True)

    async def _finish(self, *, completed: bool) -> None:
        state = self._state
        if state.closed:
            return
        state.closed = True
        if not self._started:
            return
        current = state.take_current()
        if current and completed:
            await self._client.ack(state.queue, current)
        if state.temporary:
            await self._client.delete_queue(state.queue)
            return
        back = ([] if completed else current) + state.take_buffer()
        if back:
            await self._client.nack(state.queue, back)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._finish(completed=exc_type is None)
