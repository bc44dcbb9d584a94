"""raftmq as a peer of the peers' bench.py: the same adapter methods, on AsyncClient.

What each method means for raftmq (the HTTP API):

* ``publish`` is ``AsyncClient.publish`` -- it returns once the message is committed
  by a Raft majority (each node fdatasyncs its journal with ``--fsync always``);
  concurrent calls are coalesced by the client (``raftmq.batching``).
* ``consume(prefetch)`` long-polls ``receive(max=prefetch)`` (a lease, itself a Raft
  write) and yields each message with an ``ack`` that, like an AMQP ``basic.ack`` or a
  JetStream ``msg.ack()``, does not wait for the broker's answer: the ack call runs
  as a task (coalesced with the others by the client) and ``flush()`` waits until
  every ack so far has been committed.
* ``depth`` is the queue's ``total`` (ready + leased + delayed).
* ``leader`` is the 1-based index of the Raft leader (it leads every queue).

With ``transport="ws"`` publishes and the consumer go through one WebSocket channel
(``AsyncClient.channel()``, ``raftmq.channel``) instead: publish frames with confirms,
and a push subscription with ``prefetch`` as its credit window; acks stay tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from raftmq.bench.cluster import BenchCluster
from raftmq.channel import Channel
from raftmq.client import AsyncClient, ReceivedMessage
from raftmq.errors import QueueNotFound, RaftMQError

__all__ = ["HDR", "RaftMQ", "body", "pct"]

log = logging.getLogger(__name__)

HDR = struct.Struct("<QQ")  # seq, monotonic_ns at send (as bench.py)

Ack = Callable[[], Awaitable[None]]
# Pending acks the adapter keeps before it looks which are done (at least).
ACK_SWEEP = 1024


def body(seq: int, size: int) -> bytes:
    """``size`` bytes: the sequence number and CLOCK_MONOTONIC ns, then padding."""
    b = HDR.pack(seq, time.monotonic_ns())
    return b + b"x" * (size - len(b))


def pct(xs: list[float], p: float) -> float | None:
    """The nearest-rank percentile bench.py uses (None for no samples)."""
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100.0 * (len(s) - 1))))
    return s[k]


class RaftMQ:
    """One client connection (an ``AsyncClient``) to a raftmq cluster."""

    name = "raftmq"

    def __init__(
        self,
        urls: list[str],
        cluster: BenchCluster | None = None,
        *,
        queue: str = "bench_q",
        linger_ms: float = 1.0,
        timeout: float = 10.0,
        retry_deadline: float = 30.0,
        receivers: int = 1,
        transport: str = "http",
    ) -> None:
        self.urls = list(urls)
        self.cluster = cluster
        self.q = queue
        self.linger_ms = linger_ms
        self.timeout = timeout
        self.retry_deadline = retry_deadline
        self.receivers = receivers
        self.transport = transport
        self.channel: Channel | None = None
        self.client: AsyncClient | None = None
        self.node: int | None = None
        # Acks not yet seen done, swept for outcomes now and then (see _acker).
        self._acks: list[asyncio.Future[Any]] = []
        self._sweep_at = ACK_SWEEP
        self.ack_errors = 0
        self.receives = 0  # receive calls that returned messages
        self.received = 0

    @property
    def nodes(self) -> list[int]:
        return list(range(1, len(self.urls) + 1))

    @property
    def mq(self) -> AsyncClient:
        if self.client is None:
            raise RuntimeError("not connected")
        return self.client

    async def connect(self, order: list[int] | None = None) -> int:
        """A client trying the nodes in ``order`` (1-based) first; returns the first."""
        order = order or self.nodes
        urls = [self.urls[i - 1] for i in order]
        urls += [u for u in self.urls if u not in urls]
        self.client = AsyncClient(
            urls,
            timeout=self.timeout,
            retry_deadline=self.retry_deadline,
            linger_ms=self.linger_ms,
        )
        if self.transport == "ws":
            self.channel = self.client.channel(linger_ms=self.linger_ms)
            await self.channel.open()
        self.node = order[0]
        return order[0]

    async def reset(self, queue: str | None = None) -> None:
        """(Re)creates the queue, empty."""
        name = queue or self.q
        with contextlib.suppress(QueueNotFound):
            await self.mq.delete_queue(name)
        await self.mq.declare_queue(name)

    def publish(
        self, data: bytes, msg_id: str | None = None, queue: str | None = None
    ) -> Awaitable[str]:
        # The client's own coroutine, not one more wrapped around it.
        if self.channel is not None:
            return self.channel.publish(queue or self.q, data, id=msg_id)
        return self.mq.publish(queue or self.q, data, id=msg_id)

    async def consume(self, prefetch: int) -> AsyncGenerator[tuple[bytes, Ack], None]:
        """Yields (body, ack) of leased messages, at most ``prefetch`` leased per round.

        ``receivers`` long polls run at once, each for ``prefetch // receivers``
        messages, so a message published while one lease is being committed is
        picked up by the next poll rather than after that round trip.
        """
        if self.channel is not None:
            async for pushed in self.channel.consume(self.q, prefetch):
                self.received += 1
                raw = pushed.body
                yield raw if isinstance(raw, bytes) else raw.encode(), self._acker(pushed.receipt)
            return
        k = max(1, min(self.receivers, prefetch))
        per = prefetch // k
        polls: set[asyncio.Task[list[ReceivedMessage]]] = set()
        try:
            while True:
                while len(polls) < k:
                    polls.add(asyncio.ensure_future(self._receive(per)))
                done, polls = await asyncio.wait(polls, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    for m in task.result():
                        data = m.body if isinstance(m.body, bytes) else m.body.encode()
                        yield data, self._acker(m.receipt)
        finally:
            for task in polls:
                task.cancel()
            if polls:
                await asyncio.wait(polls)

    async def _receive(self, limit: int) -> list[ReceivedMessage]:
        try:
            got = await self.mq.receive(self.q, max=limit, wait=1.0)
            if got:
                self.receives += 1
                self.received += len(got)
            return got
        except RaftMQError as e:
            log.warning("receive failed (%s); retrying", e)
            await asyncio.sleep(0.05)
            return []

    def _acker(self, receipt: str) -> Ack:
        async def ack() -> None:
            acker = self.mq if self.channel is None else self.channel
            pending: asyncio.Future[Any] = acker.ack_soon(self.q, receipt)
            # Collected in a list and swept in bulk rather than with a done callback
            # each (a callback is one more event-loop turn per message).
            self._acks.append(pending)
            if len(self._acks) >= self._sweep_at:
                self._sweep()

        return ack

    def _sweep(self) -> None:
        """Counts the acks that are done (a failure logged) and keeps the rest."""
        waiting = []
        for pending in self._acks:
            if not pending.done():
                waiting.append(pending)
            elif not pending.cancelled() and pending.exception() is not None:
                self.ack_errors += 1
                log.warning("ack failed: %s", pending.exception())
        self._acks = waiting
        self._sweep_at = max(ACK_SWEEP, 2 * len(waiting))

    async def flush(self) -> None:
        """Returns once every ack made so far has been committed (or has failed)."""
        while self._acks:
            await asyncio.wait(set(self._acks))
            self._sweep()

    def requests(self) -> dict[str, int]:
        """How many publish/ack requests the client's coalescing sent (for batch sizes)."""
        batcher = getattr(self.channel or self.client, "_batcher", None)
        if batcher is None:
            return {}
        return {
            "publish_requests": batcher.publishes.requests_sent,
            "publish_items": batcher.publishes.items_sent,
            "ack_requests": batcher.acks.requests_sent,
            "ack_items": batcher.acks.items_sent,
        }

    async def depth(self) -> int:
        return int((await self.mq.queue(self.q))["total"])

    async def leader(self) -> int:
        """1-based index (in ``urls``) of the node that leads (Raft leader)."""
        info = await self.mq.cluster()
        leader = info.get("leader") or {}
        url = str(leader.get("http") or "").rstrip("/")
        for k, u in enumerate(self.urls, start=1):
            if u.rstrip("/") == url:
                return k
        raise RaftMQError(f"the leader {leader!r} is not one of {self.urls}", code="no_leader")

    async def close(self) -> None:
        if self.client is not None:
            try:
                await asyncio.wait_for(self.flush(), 10)
            except TimeoutError:
                log.warning("%d acks still pending at close", len(self._acks))
                for task in list(self._acks):
                    task.cancel()
            if self.channel is not None:
                try:
                    await asyncio.wait_for(self.channel.close(), 10)
                except TimeoutError:
                    log.warning("channel close timed out")
                self.channel = None
            try:
                await asyncio.wait_for(self.client.close(), 10)
            except TimeoutError:
                log.warning("client close timed out")
            self.client = None

    def server_pids(self) -> list[int]:
        return self.cluster.pids() if self.cluster is not None else []
