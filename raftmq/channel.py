"""A persistent WebSocket channel (``GET /v1/channel``): confirmed publishes, push consumers.

Use it through :meth:`raftmq.client.AsyncClient.channel`::

    async with client.channel() as ch:
        await ch.publish("jobs", b"payload")
        async for msg in ch.consume("jobs", prefetch=256):
            ...
            await msg.ack()

* ``publish`` calls made in the same event-loop iteration for one queue go out as
  one ``publish`` frame, with up to ``max_in_flight`` frames unconfirmed per queue
  (the coalescing of :mod:`raftmq.batching`); ``msg.ack()`` calls likewise.
* Every message carries a client-made id. When the connection breaks (a follower's
  redirect, a leader change -- the node closes with reason ``not_leader`` --, a lost
  connection), the channel reconnects to the leader through the client's node list
  and re-sends every frame not yet answered, with the same ids: the server's
  deduplication makes a publish that did commit the first time a no-op.
* A consumer is re-subscribed after a reconnect. Messages delivered on the old
  connection and not acked come back when their lease expires (as in AMQP).
* The channel gives up (every pending call raises :class:`Unavailable`) when no
  leader accepts it within the client's ``retry_deadline``; a call the node keeps
  answering with a retryable error (``overloaded``, ``unknown_outcome``...) is
  re-sent until that deadline, then raises :class:`Unavailable` on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import orjson

from raftmq.batching import DEFAULT_LINGER_MS, Batcher
from raftmq.client import (
    MAX_REDIRECTS,
    AckResult,
    AsyncClient,
    NackResult,
    _Attempts,
    _error_from,
    _origin,
    _receipts,
    _received_fields,
    _Response,
    _Retry,
    _too_many_redirects,
    _transport_retry,
    _wire_message,
)
from raftmq.errors import BadRequest, RaftMQError, Unauthorized, Unavailable

__all__ = ["Channel", "ChannelMessage"]

log = logging.getLogger(__name__)

PATH: Final = "/v1/channel"
# Longest silence from the node before a ping; a pong must follow within half of
# it or the connection is dropped and made again (at most the client's timeout).
HEARTBEAT_S: Final = 15.0
# Error codes another try of the same frame may not get (the frame is re-sent).
RETRY_CODES: Final = frozenset(
    {"no_leader", "unknown_outcome", "overloaded", "unavailable", "too_many_waiters"}
)
RETRY_PAUSE: Final = (0.05, 0.15)
DEFAULT_IN_FLIGHT: Final = 16


@dataclass(frozen=True)
class ChannelMessage:
    """A message pushed to a consumer; ``ack``/``nack`` go through the channel."""

    queue: str
    id: str
    body: str | bytes
    headers: dict[str, str]
    receipt: str
    deliveries: int
    published_at: float
    _channel: Channel = field(repr=False, compare=False)

    async def ack(self) -> AckResult:
        """Done with it: it is never delivered again (unless the receipt went stale)."""
        return await self._channel.ack(self.queue, [self.receipt])

    async def nack(self, delay: float | None = None) -> NackResult:
        """Return it to the queue now (or after ``delay`` seconds)."""
        return await self._channel.nack(self.queue, [self.receipt], delay)


@dataclass
class _Request:
    frame: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    # Loop time of the first send: a frame answered only with retryable errors is
    # re-sent until the client's retry_deadline has passed since, then fails.
    sent_at: float


@dataclass
class _Subscription:
    name: str
    queue: str
    prefetch: int
    visibility_timeout: float | None
    # What was pushed to it (or the error that ends it), read by its one consume()
    # loop. A deque and a waiter rather than an asyncio.Queue, whose bookkeeping
    # (task_done counts, getter and putter lists, a get coroutine) cost about as
    # much per message as the rest of a delivery.
    inbox: deque[ChannelMessage | BaseException] = field(default_factory=deque)
    waiter: asyncio.Future[None] | None = None
    # Receipts delivered to it whose ack or nack has not been answered, oldest first.
    # A subscription made again after a reconnect names them ("held"), so that they
    # count against its prefetch on the new connection too. Never more than prefetch:
    # the node leases no more, so older ones have been settled or have expired.
    held: dict[str, None] = field(default_factory=dict)

    def put(self, item: ChannelMessage | BaseException) -> None:
        self.inbox.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def arrival(self) -> None:
        """Returns once the inbox holds something."""
        while not self.inbox:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def hold(self, receipt: str) -> None:
        self.held[receipt] = None
        while len(self.held) > self.prefetch:
            del self.held[next(iter(self.held))]

    def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "op": "subscribe",
            "sub": self.name,
            "queue": self.queue,
            "prefetch": self.prefetch,
        }
        if self.visibility_timeout is not None:
            frame["visibility_timeout"] = self.visibility_timeout
        if self.held:
            frame["held"] = list(self.held)
        return frame


class Channel:
    """One WebSocket to the leader, re-established whenever it breaks; see the module doc."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        linger_ms: float = DEFAULT_LINGER_MS,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        self._client = client
        self._seq = itertools.count(1)
        self._sub_ids = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._subs: dict[str, _Subscription] = {}
        self._out: asyncio.Queue[str] | None = None
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._closing = False
        self._timers: set[asyncio.TimerHandle] = set()
        self.connects = 0  # connections made (for tests and the benchmark)
        self._batcher = Batcher(
            self._publish_frame,
            self._ack_frame,
            linger_ms=max(linger_ms, 0.001),
            max_in_flight=max_in_flight,
        )

    # ------------------------------------------------------------------ public

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(drain=exc_type is None)

    async def open(self) -> None:
        """Connects (following redirects to the leader); raises when it cannot."""
        if self._supervisor is None:
            self._supervisor = asyncio.ensure_future(self._supervise())
        waiter = asyncio.ensure_future(self._connected.wait())
        await asyncio.wait({waiter, self._supervisor}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        self._raise_if_failed()

    async def close(self, *, drain: bool = True) -> None:
        """Waits for every publish and ack made so far (unless ``drain`` is False), then closes."""
        if drain and self._failed is None:
            await self._batcher.drain()
        self._closing = True
        for timer in self._timers:
            timer.cancel()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._fail_all(RaftMQError("the channel is closed", code="channel_closed"))

    async def publish(
        self,
        queue: str,
        body: str | bytes,
        *,
        id: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
    ) -> str:
        """Publishes one message; returns its id once a Raft majority has it."""
        self._raise_if_failed()
        return await self._batcher.publish_soon(queue, _wire_message(body, headers, id, delay))

    async def ack(self, queue: str, receipts: Iterable[str] | str) -> AckResult:
        """Marks deliveries done (a lone receipt may be given as a str, as to the client)."""
        self._raise_if_failed()
        return await self._batcher.ack(queue, _receipts(receipts))

    def ack_soon(self, queue: str, receipts: Iterable[str] | str) -> asyncio.Future[AckResult]:
        """Acks without waiting for the answer, as :meth:`AsyncClient.ack_soon`; raises
        at once if the channel has failed, as every call on it does."""
        self._raise_if_failed()
        wanted = _receipts(receipts)
        if not wanted:
            return asyncio.ensure_future(self.ack(queue, wanted))
        return self._batcher.ack_soon(queue, wanted)

    async def nack(
        self, queue: str, receipts: Iterable[str] | str, delay: float | None = None
    ) -> NackResult:
        frame: dict[str, Any] = {"op": "nack", "queue": queue, "receipts": _receipts(receipts)}
        if delay is not None:
            frame["delay"] = delay
        reply = await self._request(frame)
        return NackResult(int(reply["requeued"]), list(reply["stale"]))

    async def consume(
        self, queue: str, prefetch: int = 256, *, visibility_timeout: float | None = None
    ) -> AsyncIterator[ChannelMessage]:
        """Messages the node pushes, at most ``prefetch`` of them unacked at a time."""
        self._raise_if_failed()
        sub = _Subscription(f"{queue}#{next(self._sub_ids)}", queue, prefetch, visibility_timeout)
        self._subs[sub.name] = sub
        self._send(sub.frame())
        inbox = sub.inbox
        try:
            while True:
                if not inbox:
                    await sub.arrival()
                item = inbox.popleft()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self._subs.pop(sub.name, None) is not None:
                self._send({"op": "cancel", "sub": sub.name})

    # ------------------------------------------------------------- requests

    async def _publish_frame(self, queue: str, messages: list[dict[str, Any]]) -> list[str]:
        reply = await self._request({"op": "publish", "queue": queue, "messages": messages})
        return [str(i) for i in reply["ids"]]

    async def _ack_frame(self, queue: str, receipts: list[str]) -> AckResult:
        reply = await self._request({"op": "ack", "queue": queue, "receipts": receipts})
        return AckResult(int(reply["acked"]), list(reply["stale"]))

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        self._raise_if_failed()
        seq = next(self._seq)
        frame["seq"] = seq
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._requests[seq] = _Request(frame, future, loop.time())
        self._send(frame)
        try:
            return await future
        finally:
            self._requests.pop(seq, None)

    def _send(self, frame: dict[str, Any]) -> None:
        """Sends on the current connection; a frame sent on none goes out on the next."""
        if self._out is not None:
            self._out.put_nowait(orjson.dumps(frame).decode())

    def _resend_later(self, frame: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(timer)
            self._send(frame)

        timer = loop.call_later(random.uniform(*RETRY_PAUSE), fire)
        self._timers.add(timer)

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _fail_all(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc
        for request in list(self._requests.values()):
            if not request.future.done():
                request.future.set_exception(exc)
        for sub in self._subs.values():
            sub.put(exc)

    # ------------------------------------------------------------ connection

    async def _supervise(self) -> None:
        try:
            while not self._closing:
                ws = await self._connect()
                self.connects += 1
                out: asyncio.Queue[str] = asyncio.Queue()
                self._out = out
                # Everything unanswered goes out again: the same ids, so publishes dedup.
                for seq in sorted(self._requests):
                    if not self._requests[seq].future.done():
                        self._send(self._requests[seq].frame)
                for sub in self._subs.values():
                    self._send(sub.frame())
                self._connected.set()
                writer = asyncio.ensure_future(self._write(ws, out))
                try:
                    await self._read(ws)
                finally:
                    self._connected.clear()
                    self._out = None
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await writer
                    await ws.close()
                if ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                    self._fail_largest_request()
                if not self._closing:
                    log.info(
                        "raftmq channel: connection closed (code %s, %s); reconnecting",
                        ws.close_code,
                        self._close_reason or "no reason",
                    )
        except RaftMQError as exc:
            log.warning("raftmq channel: giving up: %s", exc)
            self._fail_all(exc)

    _close_reason: str = ""

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        client = self._client
        session = client._transport._get()
        attempts = _Attempts(client._urls, client._preferred, client._retry_deadline)
        while True:
            target = attempts.url + PATH
            try:
                for _ in range(MAX_REDIRECTS + 1):
                    try:
                        # The handshake gets the client's timeout, as a request does: a
                        # node that accepts the connection and then says nothing (stopped,
                        # stalled) is left for the next one instead of being waited for.
                        async with asyncio.timeout(attempts.timeout(client._timeout)):
                            ws = await session.ws_connect(
                                target,
                                heartbeat=min(HEARTBEAT_S, client._timeout),
                                max_msg_size=0,
                                ssl=client._ssl() if target.startswith("https:") else True,
                                timeout=aiohttp.ClientWSTimeout(ws_close=client._timeout),
                                autoping=True,
                            )
                    except aiohttp.WSServerHandshakeError as e:
                        location = e.headers.get("Location") if e.headers else None
                        if e.status in (301, 302, 303, 307, 308) and location:
                            log.debug("raftmq channel: %s redirected to %s", target, location)
                            target = location
                            continue
                        raise self._handshake_error(target, e) from e
                    # aiohttp follows a 307 itself: the node that upgraded is the
                    # leader, the one to try first next time (its URL, not the follower's).
                    response = getattr(ws, "_response", None)
                    upgraded = str(response.url) if response is not None else target
                    client._preferred = _origin(upgraded)
                    self._close_reason = ""
                    return ws
                raise _too_many_redirects(attempts.url + PATH)
            except _Retry as r:
                client._preferred = attempts.following
                delay = attempts.failed(r)  # raises Unavailable when out of time
                if delay > 0:
                    await asyncio.sleep(delay)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                client._preferred = attempts.following
                delay = attempts.failed(_transport_retry(target, e, sent=False))
                if delay > 0:
                    await asyncio.sleep(delay)

    def _handshake_error(self, url: str, e: aiohttp.WSServerHandshakeError) -> Exception:
        if e.status in (502, 503, 504) or e.status == 200:
            # 503: no leader yet or overloaded (a 200 is a proxy that does not upgrade).
            err = RaftMQError(f"{url}: HTTP {e.status} {e.message}", status=e.status, code="")
            return _Retry(err, answered=True, ambiguous=False, retry_after=0.1)
        resp = _Response(e.status, {}, b"")
        error = _error_from(resp)
        if e.status == 401:
            return Unauthorized(f"{url}: the token was refused", status=401, code="unauthorized")
        return error

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, out: asyncio.Queue[str]) -> None:
        while True:
            text = await out.get()
            await ws.send_str(text)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    frame = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    log.warning("raftmq channel: a frame that is not JSON: %.80r", msg.data)
                    continue
                if isinstance(frame, dict):
                    self._on_frame(frame)
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                self._close_reason = str(msg.extra or "")
                break
            elif msg.type is aiohttp.WSMsgType.ERROR:
                self._close_reason = str(ws.exception())
                break

    def _fail_largest_request(self) -> None:
        """The node closed the channel over a frame too large to read: the largest
        unanswered one (re-sending it would only close the next connection too)."""
        pending = [r for r in self._requests.values() if not r.future.done()]
        if pending:
            largest = max(pending, key=lambda r: len(orjson.dumps(r.frame)))
            largest.future.set_exception(
                BadRequest(
                    "a frame was too large for the node (HTTP equivalent: 413 body_too_large)",
                    status=413,
                    code="body_too_large",
                )
            )

    def _on_frame(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "deliver":
            self._deliver(frame)
        elif op in ("confirm", "acked", "nacked"):
            request = self._requests.get(frame.get("seq"))  # type: ignore[arg-type]
            if request is not None and not request.future.done():
                if op != "confirm":
                    self._settled(request.frame)
                request.future.set_result(frame)
        elif op == "error":
            self._on_error(frame)
        elif op not in ("subscribed", "cancelled"):
            log.debug("raftmq channel: unexpected frame %.200r", frame)

    def _settled(self, frame: dict[str, Any]) -> None:
        """An ack or nack was answered: its receipts no longer lease anything."""
        for sub in self._subs.values():
            if sub.queue == frame["queue"] and sub.held:
                for receipt in frame["receipts"]:
                    sub.held.pop(receipt, None)

    def _deliver(self, frame: dict[str, Any]) -> None:
        sub = self._subs.get(str(frame.get("sub")))
        if sub is None:
            return  # cancelled meanwhile: the leases expire
        queue, hold, put = sub.queue, sub.hold, sub.put
        for raw in frame.get("messages") or []:
            message = ChannelMessage(queue, *_received_fields(raw), self)
            hold(message.receipt)
            put(message)

    def _on_error(self, frame: dict[str, Any]) -> None:
        error = frame.get("error") or {}
        code = str(error.get("code") or "")
        status = int(frame.get("status") or 500)
        exc = _error_from(_Response(status, {}, orjson.dumps({"error": error})))
        if "sub" in frame:
            sub = self._subs.get(str(frame["sub"]))
            if sub is None:
                return
            if code in RETRY_CODES:
                self._resend_later(sub.frame())
            else:
                del self._subs[sub.name]
                sub.put(exc)
            return
        request = self._requests.get(frame.get("seq"))  # type: ignore[arg-type]
        if request is None:
            log.warning("raftmq channel: %s: %s", code, error.get("message"))
        elif request.future.done():
            return
        elif code not in RETRY_CODES:
            request.future.set_exception(exc)
        elif asyncio.get_running_loop().time() - request.sent_at < self._client._retry_deadline:
            self._resend_later(request.frame)
        else:
            request.future.set_exception(
                Unavailable(
                    f"the node answered only {code} for the client's retry_deadline "
                    f"({self._client._retry_deadline:g} s): {error.get('message')}",
                    code=code,
                    status=status,
                    last_error=exc,
                )
            )
