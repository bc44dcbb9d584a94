"""`GET /v1/channel`: a persistent WebSocket channel for publishing and push consuming.

Frames are JSON text. Client -> server:

  {"op": "publish", "seq", "queue", "messages": [...]} -> {"op": "confirm", "seq", "ids"}
  {"op": "subscribe", "sub", "queue", "prefetch", "visibility_timeout"?, "held"?}
      -> {"op": "subscribed", "sub"}, then while credit {"op": "deliver", "sub", "messages"}
  {"op": "ack", "seq", "queue", "receipts"} -> {"op": "acked", "seq", "acked", "stale"}
  {"op": "nack", "seq", "queue", "receipts", "delay"?}
      -> {"op": "nacked", "seq", "requeued", "stale"}
  {"op": "cancel", "sub"} -> {"op": "cancelled", "sub"}

A frame that fails answers {"op": "error", "seq" (or "sub"), "status", "error": {"code",
"message"}} with the HTTP API's status and code; the channel stays open. Every
frame is validated by node/validation.py, checked by node/auth.py as its HTTP
twin, and proposed through `propose_as_leader` (the Proposer's group commit),
one task per frame so concurrent frames share Raft entries.

A subscription's credit is `prefetch` minus its deliveries not yet acked,
nacked or expired (lease time on this node's clock). Its pump leases at most
the credit with a `receive` command and waits on the queue waiters when the
queue is empty. While the pump waits for credit, an ack frame for its queue
also leases the credit that the ack frees, proposed right behind the ack so
both share one Raft entry: the ack applies first, so `prefetch` still bounds
what is leased at every point of the log, and a consumer that acks what it
was given gets the next messages one Raft round later instead of two. When
this node stops leading, or stops, every channel is closed with reason
"not_leader"; the client reconnects to the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from cluster.errors import ClusterError, NotLeader
from node import auth
from node.app import (
    BODY_BUDGET,
    CONFIG,
    OPEN_CHANNELS,
    RAFT,
    STOP,
    WAITERS,
)
from node.clock import now_ms
from node.delivery import TooManyWaiters, deliverable_state, lease_or_wait
from node.errors import ApiError, bad_request, from_cluster_error, from_result, ok_or_raise
from node.validation import (
    check_name,
    publish_command,
    receipts_command,
    receive_command,
    receive_params,
    reject_unknown,
)
from storage import Store

logger = logging.getLogger(__name__)

PATH: Final = "/v1/channel"
HEARTBEAT_S: Final = 15.0
# How often a channel checks that this node still leads.
LEADER_CHECK_S: Final = 0.1
# Frames of one channel being handled at once; then the channel stops reading.
MAX_FRAMES_IN_FLIGHT: Final = 64
# Close codes (the reason is what the client keys on).
CLOSE_NOT_LEADER: Final = 4001
NOT_LEADER: Final = b"not_leader"
# Wait between tries after an error a later try may not have (unknown_outcome...).
_PUMP_RETRY_S: Final = 0.1
# Longest wait of a push consumer's round before it looks again.
_PUMP_WAIT_S: Final = 1.0

_ROUTES: Final = {
    "publish": auth.PUBLISH_ROUTE,
    "subscribe": ("POST", "/v1/queues/{queue}/receive"),
    "ack": ("POST", "/v1/queues/{queue}/ack"),
    "nack": ("POST", "/v1/queues/{queue}/nack"),
}


def _dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def _error_frame(error: ApiError, key: str, value: Any) -> dict[str, Any]:
    return {"op": "error", key: value, "status": error.status, **error.body()}


# A proposal's result, or what it raised (asyncio.gather with return_exceptions).
Outcome = dict[str, Any] | BaseException


@dataclass
class _Sub:
    name: str
    queue: str
    prefetch: int
    lease_ms: int | None
    # receipt -> loop time its lease ends (as this node reckons it)
    leased: dict[str, float] = field(default_factory=dict)
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # The pump waits for credit (an ack may then lease for it); an ack is leasing for it.
    starved: bool = False
    riding: bool = False

    def credit(self, now: float) -> int:
        for receipt in [r for r, end in self.leased.items() if end <= now]:
            del self.leased[receipt]
        return self.prefetch - len(self.leased)

    def next_expiry(self) -> float | None:
        return min(self.leased.values(), default=None)

    def release(self, receipts: list[str]) -> None:
        freed = False
        for receipt in receipts:
            freed |= self.leased.pop(receipt, None) is not None
        if freed:
            self.freed.set()


class _Channel:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.raft = request.app[RAFT]
        self.limits = request.app[CONFIG].limits
        self.waiters = request.app[WAITERS]
        self.stop = request.app[STOP]
        self.subs: dict[str, _Sub] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_FRAMES_IN_FLIGHT)
        self.read_store = auth.store_lookup(self.raft)
        self.closing: bytes | None = None

    # -- plumbing

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(_dumps(frame))

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self, code: int, reason: bytes) -> None:
        if self.closing is None:
            self.closing = reason
            logger.info("closing channel: %s", reason.decode())
            await self.ws.close(code=code, message=reason)

    async def watch_leadership(self) -> None:
        while not self.ws.closed:
            await asyncio.sleep(LEADER_CHECK_S)
            if self.stop.is_set():
                await self.close(WSCloseCode.GOING_AWAY, NOT_LEADER)
            elif not self.raft.is_leader():
                await self.close(CLOSE_NOT_LEADER, NOT_LEADER)

    async def run(self) -> None:
        self.spawn(self.watch_leadership())
        try:
            async for msg in self.ws:
                if msg.type is WSMsgType.TEXT:
                    await self.slots.acquire()
                    self.spawn(self.frame(msg.data))
                elif msg.type is WSMsgType.BINARY:
                    error = bad_request("frames are JSON text", "invalid_json")
                    await self.send(_error_frame(error, "seq", None))
        finally:
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.wait(set(self.tasks))

    # -- frames

    async def frame(self, raw: str) -> None:
        key, value = "seq", None
        reserved = contextlib.ExitStack()
        try:
            parsed = True
            try:
                frame = orjson.loads(raw)
            except orjson.JSONDecodeError:
                frame, parsed = None, False
            op = frame.get("op") if isinstance(frame, dict) else None
            if op in ("subscribe", "cancel"):
                key = "sub"
            if isinstance(frame, dict):
                value = frame.get(key)
            # Checked before the frame's form, as the HTTP API refuses a body over the
            # limit before it looks at it (the frame was parsed only to name its seq).
            if len(raw) > self.limits.max_body_bytes:
                raise ApiError(
                    413, "body_too_large", f"a frame is over {self.limits.max_body_bytes} bytes"
                )
            if not parsed:
                raise bad_request("the frame is not valid JSON", "invalid_json")
            if not isinstance(frame, dict):
                raise bad_request("a frame must be a JSON object")
            # Frames being handled share the budget of request bodies being received.
            reserved.enter_context(self.request.app[BODY_BUDGET].reserve(len(raw)))
            if op == "publish":
                await self.publish(frame)
            elif op in ("ack", "nack"):
                await self.receipts(str(op), frame)
            elif op == "subscribe":
                await self.subscribe(frame)
            elif op == "cancel":
                await self.cancel(frame)
            else:
                raise bad_request(f"unknown op {str(op)[:40]!r}")
        except ApiError as exc:
            await self.send(_error_frame(exc, key, value))
        except NotLeader:
            await self.close(CLOSE_NOT_LEADER, NOT_LEADER)
        except ClusterError as exc:
            await self.send(_error_frame(from_cluster_error(exc), key, value))
        except Exception:
            logger.exception("channel frame failed")
            error = ApiError(500, "internal", "internal error; see the node log")
            await self.send(_error_frame(error, key, value))
        finally:
            reserved.close()
            self.slots.release()

    def queue_of(self, frame: dict[str, Any], op: str) -> str:
        queue = frame.get("queue")
        if not isinstance(queue, str):
            raise bad_request("queue must be a queue name", "invalid_name")
        check_name(queue)
        auth.authorize(self.request, self.read_store, _ROUTES[op], {"queue": queue})
        return queue

    async def publish(self, frame: dict[str, Any]) -> None:
        reject_unknown(frame, {"op", "seq", "queue", "messages"})
        queue = self.queue_of(frame, "publish")
        body = {"messages": frame.get("messages")}
        command = publish_command(queue, body, self.limits, now_ms())
        result = ok_or_raise(await self.raft.propose_as_leader(command), queue)
        await self.send({"op": "confirm", "seq": frame.get("seq"), "ids": result["ids"]})

    async def receipts(self, op: str, frame: dict[str, Any]) -> None:
        reject_unknown(frame, {"op", "seq", "queue", "receipts", "delay"})
        queue = self.queue_of(frame, op)
        body = {k: v for k, v in frame.items() if k in ("receipts", "delay")}
        command = receipts_command(op, queue, body, self.limits, now_ms())
        rider = self.starved_sub(queue, command["receipts"]) if op == "ack" else None
        if rider is None:
            result = ok_or_raise(await self.raft.propose_as_leader(command), queue)
        else:
            result = ok_or_raise(await self.ack_and_lease(rider, command), queue)
        for sub in self.subs.values():
            if sub.queue == queue:
                sub.release(command["receipts"])
        count = "acked" if op == "ack" else "requeued"
        await self.send(
            {
                "op": "acked" if op == "ack" else "nacked",
                "seq": frame.get("seq"),
                count: result[count],
                "stale": result["stale"],
            }
        )

    async def subscribe(self, frame: dict[str, Any]) -> None:
        reject_unknown(frame, {"op", "sub", "queue", "prefetch", "visibility_timeout", "held"})
        name = frame.get("sub")
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise bad_request("sub must be a string of 1-200 characters")
        if name in self.subs:
            raise bad_request(f"subscription {name[:60]!r} exists on this channel")
        queue = self.queue_of(frame, "subscribe")
        self.raft.require_leader()
        # prefetch is validated as a receive's max (1..max_receive).
        params = {k: frame.get(k) for k in ("visibility_timeout",)}
        params["max"] = frame.get("prefetch")
        if params["max"] is None:
            raise bad_request(f"prefetch must be between 1 and {self.limits.max_receive}")
        try:
            prefetch, _, lease_ms = receive_params(params, self.limits)
        except ApiError as exc:  # say which field the frame named
            raise bad_request(exc.message.replace("max ", "prefetch ", 1)) from None
        held = frame.get("held", [])
        if not isinstance(held, list) or len(held) > prefetch:
            raise bad_request("held must be a list of at most prefetch receipts")
        if not all(isinstance(receipt, str) and len(receipt) <= 200 for receipt in held):
            raise bad_request("held must be a list of receipts")
        now = now_ms()

        def look(store: Store) -> tuple[dict[str, Any] | None, dict[str, int]]:
            return store.get_queue(queue, now), store.lease_deadlines(queue, held, now)

        info, deadlines = self.raft.read(look)
        if info is None:
            raise from_result({"status": "not_found"}, queue)
        sub = self.subs[name] = _Sub(name, queue, prefetch, lease_ms)
        # Receipts the client still holds from an earlier connection count against
        # prefetch until acked or nacked, or until their lease ends; those whose lease
        # already ended, or that were settled (an ack whose answer was lost), do not.
        loop_now = asyncio.get_running_loop().time()
        for receipt, deadline_ms in deadlines.items():
            sub.leased[receipt] = loop_now + max(0, deadline_ms - now) / 1000
        await self.send({"op": "subscribed", "sub": name})
        sub.task = self.spawn(self.pump(sub))

    async def cancel(self, frame: dict[str, Any]) -> None:
        reject_unknown(frame, {"op", "sub"})
        name = frame.get("sub")
        if not isinstance(name, str):  # str() would make a missing sub name one called "None"
            raise bad_request("sub must be the name of a subscription on this channel")
        sub = self.subs.pop(name, None)
        if sub is None:
            raise bad_request(f"no subscription {name[:60]!r} on this channel")
        if sub.task is not None:
            sub.task.cancel()
        await self.send({"op": "cancelled", "sub": sub.name})

    # -- push consumer

    def starved_sub(self, queue: str, receipts: list[str]) -> _Sub | None:
        """A subscription to `queue` whose pump waits for the credit these receipts free."""
        for sub in self.subs.values():
            waiting = sub.queue == queue and sub.starved and not sub.riding
            if waiting and any(receipt in sub.leased for receipt in receipts):
                return sub
        return None

    async def ack_and_lease(self, sub: _Sub, ack: dict[str, Any]) -> dict[str, Any]:
        """Propose `ack` and, right behind it, a lease of the credit it frees; the ack's result.

        Both are proposed in one loop iteration, so the Proposer puts them in one
        entry, ack first. The lease's outcome never fails the ack: if it did not
        happen, the pump leases as usual once the ack is in.
        """
        loop = asyncio.get_running_loop()
        sub.riding = True
        try:
            now = now_ms()
            info = self.raft.read(functools.partial(deliverable_state, queue=sub.queue, now=now))
            if info is None or not info[0]:
                return await self.raft.propose_as_leader(ack)
            mine = sum(1 for receipt in ack["receipts"] if receipt in sub.leased)
            lease_ms = sub.lease_ms or info[1]
            receive = receive_command(sub.queue, sub.credit(loop.time()) + mine, lease_ms, now)
            outcomes: tuple[Outcome, Outcome] = await asyncio.gather(
                self.raft.propose_as_leader(ack),
                self.raft.propose_as_leader(receive),
                return_exceptions=True,
            )
            acked, leased = outcomes
            if isinstance(acked, dict) and acked.get("status") == "ok":
                sub.release(ack["receipts"])
            if isinstance(leased, dict) and leased.get("status") == "ok" and leased["messages"]:
                await self.deliver(sub, leased["messages"], lease_ms, now)
            elif isinstance(leased, BaseException):
                logger.debug("lease behind an ack on %s: %r", sub.queue, leased)
            if isinstance(acked, BaseException):
                raise acked
            return acked
        finally:
            sub.riding = False
            sub.freed.set()

    async def deliver(
        self, sub: _Sub, messages: list[dict[str, Any]], lease_ms: int, leased_at_ms: int
    ) -> None:
        loop = asyncio.get_running_loop()
        # Counted from the receive's clock: the lease ends no later than this.
        elapsed_s = max(0, now_ms() - leased_at_ms) / 1000
        end = loop.time() + lease_ms / 1000 - elapsed_s
        for message in messages:
            sub.leased[message["receipt"]] = end
        await self.send({"op": "deliver", "sub": sub.name, "messages": messages})

    async def pump(self, sub: _Sub) -> None:
        """Lease up to the credit, deliver, repeat; wait for credit or messages between."""
        loop = asyncio.get_running_loop()
        try:
            while self.subs.get(sub.name) is sub:
                credit = sub.credit(loop.time())
                if credit <= 0 or sub.riding:
                    sub.freed.clear()
                    expiry = sub.next_expiry()
                    timeout = 1.0 if expiry is None else max(0.001, expiry - loop.time())
                    sub.starved = not sub.riding
                    try:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(sub.freed.wait(), min(timeout, 1.0))
                    finally:
                        sub.starved = False
                    continue
                try:
                    await self.lease(sub, credit)
                except NotLeader:
                    raise
                except ClusterError as exc:  # no leader for a moment, overloaded...
                    logger.debug("channel subscription on %s: %s", sub.queue, exc)
                    await asyncio.sleep(_PUMP_RETRY_S)
        except ApiError as exc:
            self.subs.pop(sub.name, None)
            await self.send(_error_frame(exc, "sub", sub.name))
        except NotLeader:
            await self.close(CLOSE_NOT_LEADER, NOT_LEADER)
        except Exception:
            logger.exception("channel subscription on %s failed", sub.queue)
            self.subs.pop(sub.name, None)
            error = ApiError(500, "internal", "internal error; see the node log")
            await self.send(_error_frame(error, "sub", sub.name))

    async def lease(self, sub: _Sub, credit: int) -> None:
        """One round: lease and deliver, or wait until the queue may have something."""
        try:
            # On a ClusterError the lease may or may not have happened: its messages
            # come back on expiry (the pump retries).
            lease = await lease_or_wait(
                self.raft, self.waiters, sub.queue, credit, sub.lease_ms, _PUMP_WAIT_S
            )
        except TooManyWaiters:
            await asyncio.sleep(_PUMP_WAIT_S)
            return
        if lease.messages:
            await self.deliver(sub, lease.messages, lease.lease_ms, lease.leased_at_ms)


async def channel(request: web.Request) -> web.StreamResponse:
    request.app[RAFT].require_leader()  # a follower answers 307 to the leader, before upgrading
    limits = request.app[CONFIG].limits
    # Frames up to twice the body limit are read and answered 413 body_too_large
    # (a frame's characters may be up to 4 bytes each); larger ones close the
    # channel with 1009, which the client turns into an error for its largest frame.
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S, max_msg_size=2 * limits.max_body_bytes, compress=False
    )
    if not ws.can_prepare(request).ok:
        raise bad_request(f"GET {PATH} expects a WebSocket upgrade")
    open_channels = request.app[OPEN_CHANNELS]
    if len(open_channels) >= limits.max_channels:
        raise ApiError(
            503,
            "overloaded",
            f"this node has {len(open_channels)} channels open, its limit; retry shortly",
            {"Retry-After": "1"},
        )
    await ws.prepare(request)
    session = _Channel(request, ws)
    open_channels.add(session)
    logger.debug("channel opened by %s", request.remote)
    try:
        await session.run()
    finally:
        open_channels.discard(session)
        if not ws.closed:
            await ws.close()
    return ws


def routes() -> list[web.RouteDef]:
    return [web.get(PATH, channel)]
