"""The WebSocket channel when nodes fail: SIGKILL, SIGSTOP, a client that knows only a follower.

Each test runs the channel's traffic on an event loop in a thread of its own while
the test kills or pauses nodes of a real 3-node cluster. Timeouts are guards
against a hang, never what a test asserts.
"""

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from raftmq import Client
from raftmq.channel import ChannelMessage
from raftmq.client import AsyncClient
from raftmq.errors import RaftMQError
from tests.cluster.harness import LocalTestCluster, NodeProc, request, wait_for

QUEUE = "failover"
GUARD_S = 60.0


@dataclass
class _Log:
    attempted: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    publish_errors: list[str] = field(default_factory=list)
    # (id, deliveries, monotonic time) of every delivery the consumer saw
    received: list[tuple[str, int, float]] = field(default_factory=list)
    # id -> monotonic time its ack was confirmed (acked, not stale)
    acked_at: dict[str, float] = field(default_factory=dict)
    other_errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: Callable[["_Log"], int]) -> int:
        with self.lock:
            return what(self)


@contextlib.contextmanager
def _in_thread(coro: Callable[[], Coroutine[Any, Any, None]]) -> Iterator[list[BaseException]]:
    """Runs `coro()` on its own event loop in a thread; yields the list of what it raised."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro())
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        yield failure
    finally:
        worker.join(timeout=GUARD_S)
        assert not worker.is_alive(), "the channel workload did not finish"


async def _produce(ch: Any, log: _Log, prefix: str, stop: threading.Event, limit: int) -> None:
    """Pipelined publishes (4 lanes, 8 in flight each) until `stop` or `limit` attempts."""

    async def one(body: str) -> None:
        with log.lock:
            log.attempted.add(body)
        try:
            message_id = await ch.publish(QUEUE, body, id=body)
        except RaftMQError as exc:
            with log.lock:
                log.publish_errors.append(f"{body}: {exc!r}")
            return
        assert message_id == body
        with log.lock:
            log.confirmed.add(body)

    async def lane(k: int) -> None:
        n = 0
        while not stop.is_set() and log.count(lambda x: len(x.attempted)) < limit:
            await asyncio.gather(*(one(f"{prefix}{k}-{n + i}") for i in range(8)))
            n += 8
            await asyncio.sleep(0.01)

    await asyncio.gather(*(lane(k) for k in range(4)))


async def _consume(ch: Any, log: _Log, prefetch: int, stop: threading.Event) -> None:
    acks: set[asyncio.Task[None]] = set()

    async def ack(msg: ChannelMessage) -> None:
        try:
            result = await msg.ack()
        except RaftMQError as exc:  # the message comes again: allowed
            with log.lock:
                log.other_errors.append(f"ack {msg.id}: {exc!r}")
            return
        if result.acked == 1:
            with log.lock:
                log.acked_at.setdefault(msg.id, time.monotonic())

    async def consume() -> None:
        async for msg in ch.consume(QUEUE, prefetch=prefetch):
            with log.lock:
                log.received.append((msg.id, msg.deliveries, time.monotonic()))
            task = asyncio.ensure_future(ack(msg))
            acks.add(task)
            task.add_done_callback(acks.discard)

    task = asyncio.ensure_future(consume())
    while not stop.is_set() and not task.done():
        await asyncio.sleep(0.05)
    if task.done() and task.exception() is not None:
        with log.lock:
            log.other_errors.append(f"consume: {task.exception()!r}")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _check_deliveries(log: _Log) -> None:
    with log.lock:
        received_ids = {i for i, _, _ in log.received}
        assert log.confirmed <= received_ids, sorted(log.confirmed - received_ids)[:10]
        assert received_ids <= log.attempted, "received a message never published"
        seen: dict[str, set[int]] = {}
        for message_id, deliveries, at in log.received:
            # A message seen twice is a redelivery, never a second copy of the message ...
            assert deliveries not in seen.setdefault(message_id, set()), (message_id, deliveries)
            seen[message_id].add(deliveries)
            # ... and never comes again once its ack was confirmed.
            acked = log.acked_at.get(message_id)
            assert acked is None or at <= acked, f"{message_id} delivered after its ack"


def test_leader_kill_under_pipelined_publishes_and_a_push_consumer(
    cluster: LocalTestCluster,
) -> None:
    urls = cluster.urls
    with Client(urls) as client:
        client.declare_queue(QUEUE, visibility_timeout=3)
    log = _Log()
    stop_producing, stop_all = threading.Event(), threading.Event()

    async def workload() -> None:
        async with AsyncClient(urls, retry_deadline=30.0) as mq:

            async def producer() -> None:
                async with mq.channel() as ch:
                    await _produce(ch, log, "p", stop_producing, 3000)

            async def consumer() -> None:
                async with mq.channel() as ch:
                    await _consume(ch, log, 32, stop_all)

            await asyncio.gather(producer(), consumer())

    with _in_thread(workload) as failure:
        try:
            wait_for(lambda: log.count(lambda x: len(x.received)) >= 300, GUARD_S, "traffic")
            old_leader = cluster.wait_leader()
            cluster.kill(old_leader, signal.SIGKILL)
            at_kill = log.count(lambda x: len(x.confirmed))
            received_at_kill = log.count(lambda x: len(x.received))
            assert cluster.wait_leader(GUARD_S) is not old_leader
            wait_for(
                lambda: log.count(lambda x: len(x.confirmed)) >= at_kill + 300,
                GUARD_S,
                "confirms after the election",
            )
            wait_for(
                lambda: log.count(lambda x: len(x.received)) >= received_at_kill + 300,
                GUARD_S,
                "deliveries after the election",
            )
            stop_producing.set()

            def settled() -> bool:
                # Every publish answered: confirmed or an error to its caller.
                with log.lock:
                    answered = len(log.confirmed) + len(log.publish_errors)
                    delivered = {i for i, _, _ in log.received}
                    return answered == len(log.attempted) and log.confirmed <= delivered

            wait_for(settled, GUARD_S, "every publish answered and every confirmed one delivered")
        finally:
            stop_producing.set()
            stop_all.set()
    assert not failure, failure
    assert not log.publish_errors, log.publish_errors[:5]
    _check_deliveries(log)


def _queue_stats(node: NodeProc) -> dict[str, Any]:
    resp = request("GET", f"{node.url}/v1/queues/{QUEUE}")
    assert resp.status == 200, resp.body
    stats: dict[str, Any] = resp.body
    return stats


def test_prefetch_bounds_the_unacked_deliveries_across_a_leader_kill(
    cluster: LocalTestCluster,
) -> None:
    """Deliveries held unacked from before a failover count against prefetch after it."""
    prefetch = 10
    urls = cluster.urls
    with Client(urls) as client:
        client.declare_queue(QUEUE, visibility_timeout=60)
        for start in range(0, 100, 50):
            client.publish_batch(QUEUE, [{"body": f"m{i}"} for i in range(start, start + 50)])
    held: list[ChannelMessage] = []
    lock = threading.Lock()
    ack_one, stop = threading.Event(), threading.Event()
    connects: list[int] = []

    async def workload() -> None:
        async with AsyncClient(urls, retry_deadline=30.0) as mq, mq.channel() as ch:

            async def consume() -> None:
                async for msg in ch.consume(QUEUE, prefetch=prefetch):
                    with lock:
                        held.append(msg)

            task = asyncio.ensure_future(consume())
            while not stop.is_set() and not task.done():
                connects[:] = [ch.connects]
                if ack_one.is_set():
                    ack_one.clear()
                    result = await held[0].ack()  # a delivery of the old connection
                    assert result.acked == 1, result
                await asyncio.sleep(0.02)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def count() -> int:
        with lock:
            return len(held)

    with _in_thread(workload) as failure:
        try:
            wait_for(lambda: count() == prefetch, GUARD_S, "the first window")
            old_leader = cluster.wait_leader()
            cluster.kill(old_leader, signal.SIGKILL)
            leader = cluster.wait_leader(GUARD_S)
            wait_for(lambda: connects and connects[0] >= 2, GUARD_S, "the channel to reconnect")
            # An ack of one held delivery frees one credit: one more message, not a new window.
            ack_one.set()
            wait_for(lambda: count() > prefetch, GUARD_S, "a delivery after the failover")
            stats = _queue_stats(leader)
            assert count() == prefetch + 1, count()
            assert stats["in_flight"] <= prefetch, stats
        finally:
            stop.set()
    assert not failure, failure


def test_a_stopped_leader_is_left_for_the_new_one_within_the_client_timeout(
    cluster: LocalTestCluster,
) -> None:
    """SIGSTOP the channel's node: calls in flight and new ones go to the new leader,
    without waiting for the stopped node to come back."""
    urls = cluster.urls
    with Client(urls) as client:
        client.declare_queue(QUEUE)
    log = _Log()
    paused = threading.Event()
    stop = threading.Event()

    async def workload() -> None:
        async with AsyncClient(urls, timeout=2.0, retry_deadline=20.0) as mq, mq.channel() as ch:
            await ch.publish(QUEUE, "before", id="before")
            log.confirmed.add("before")
            log.done.set()
            while not paused.is_set() and not stop.is_set():
                await asyncio.sleep(0.02)
            await _produce(ch, log, "p", stop, 64)

    old_leader = cluster.wait_leader()
    assert old_leader.process is not None
    with _in_thread(workload) as failure:
        try:
            wait_for(log.done.is_set, GUARD_S, "the channel to open")
            old_leader.process.send_signal(signal.SIGSTOP)
            paused.set()
            # The new leader is elected while the old one is still stopped.
            wait_for(lambda: log.count(lambda x: len(x.confirmed)) >= 65, GUARD_S, "the publishes")
            assert old_leader.process.poll() is None
        finally:
            stop.set()
            old_leader.process.send_signal(signal.SIGCONT)
    assert not failure, failure
    assert not log.publish_errors, log.publish_errors[:5]


def test_a_channel_given_only_a_follower_follows_the_leader_through_changes(
    cluster: LocalTestCluster,
) -> None:
    """The follower redirects the channel to the leader; killing that follower does not
    disturb it, and after a leader kill it reconnects through the follower's URL."""
    leader = cluster.wait_leader()
    follower = cluster.follower()
    with Client(cluster.urls) as client:
        client.declare_queue(QUEUE)
    step, done, stop = threading.Event(), threading.Event(), threading.Event()
    state: dict[int, tuple[int, str | None]] = {}

    async def workload() -> None:
        async with AsyncClient([follower.url], retry_deadline=30.0) as mq, mq.channel() as ch:
            for n in range(3):
                assert await ch.publish(QUEUE, f"m{n}", id=f"m{n}") == f"m{n}"
                state[n] = (ch.connects, mq._preferred)
                done.set()
                while not step.is_set() and not stop.is_set():
                    await asyncio.sleep(0.02)
                step.clear()

    with _in_thread(workload) as failure:
        try:
            wait_for(done.is_set, GUARD_S, "the first publish")
            assert state[0] == (1, leader.url)
            done.clear()
            cluster.kill(follower)
            step.set()
            wait_for(done.is_set, GUARD_S, "a publish after the follower's kill")
            assert state[1] == (1, leader.url)
            done.clear()
            cluster.start_node(follower)
            cluster.wait_converged()
            cluster.kill(leader)
            new_leader = cluster.wait_leader(GUARD_S)
            step.set()
            wait_for(done.is_set, GUARD_S, "a publish after the leader's kill")
            assert state[2] == (2, new_leader.url)
        finally:
            stop.set()
    assert not failure, failure
    assert _queue_stats(cluster.wait_leader())["total"] == 3
