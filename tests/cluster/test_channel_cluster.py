"""The WebSocket channel on a real cluster: the leader is SIGKILLed under channel traffic."""

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from raftmq import Client
from raftmq.channel import ChannelMessage
from raftmq.client import AsyncClient
from raftmq.errors import RaftMQError
from tests.cluster.harness import LocalTestCluster, wait_for

QUEUE = "chan"


@dataclass
class _Log:
    attempted: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    # (id, deliveries) of every delivery the consumer saw
    received: list[tuple[str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    producers_done: threading.Event = field(default_factory=threading.Event)
    connects: list[int] = field(default_factory=list)  # of each channel, at its end
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: Callable[["_Log"], int]) -> int:
        with self.lock:
            return what(self)


async def _workload(
    urls: list[str], log: _Log, stop_producing: threading.Event, stop_all: threading.Event
) -> None:
    async def producer(ch_index: int, mq: AsyncClient) -> None:
        async with mq.channel() as ch:

            async def one(k: int, n: int) -> None:
                body = f"c{ch_index}-{k}-{n}"
                with log.lock:
                    log.attempted.add(body)
                try:
                    message_id = await ch.publish(QUEUE, body, id=body)
                except RaftMQError as exc:
                    with log.lock:
                        log.errors.append(f"publish {body}: {exc}")
                    return
                assert message_id == body
                with log.lock:
                    log.confirmed.add(body)

            async def lane(k: int) -> None:
                n = 0
                while not stop_producing.is_set():
                    # Pipelined: 8 publishes in flight per lane, then the next 8.
                    await asyncio.gather(*(one(k, n + i) for i in range(8)))
                    n += 8
                    await asyncio.sleep(0.02)  # a paced producer: the consumer keeps up

            await asyncio.gather(*(lane(k) for k in range(3)))
            log.connects.append(ch.connects)

    async def consumer(mq: AsyncClient) -> None:
        async with mq.channel() as ch:
            acks: set[asyncio.Task[None]] = set()

            async def ack(msg: ChannelMessage) -> None:
                try:
                    await msg.ack()
                except RaftMQError as exc:  # the message comes again: allowed
                    with log.lock:
                        log.errors.append(f"ack {msg.id}: {exc}")

            async def consume() -> None:
                async for msg in ch.consume(QUEUE, prefetch=64):
                    with log.lock:
                        log.received.append((msg.id, msg.deliveries))
                    # Acks in flight together (coalesced), as a real consumer would.
                    task = asyncio.ensure_future(ack(msg))
                    acks.add(task)
                    task.add_done_callback(acks.discard)

            task = asyncio.ensure_future(consume())
            while not stop_all.is_set() and not task.done():
                await asyncio.sleep(0.05)
            if task.done() and task.exception() is not None:
                with log.lock:
                    log.errors.append(f"consume: {task.exception()!r}")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.connects.append(ch.connects)

    async def producers(mq: AsyncClient) -> None:
        await asyncio.gather(producer(0, mq), producer(1, mq))
        log.producers_done.set()

    async with AsyncClient(urls, retry_deadline=60.0) as mq:
        await asyncio.gather(producers(mq), consumer(mq))


def test_channels_survive_a_leader_kill(cluster: LocalTestCluster) -> None:
    urls = cluster.urls
    with Client(urls) as client:
        # A short lease: deliveries unacked when the leader dies come back soon.
        client.declare_queue(QUEUE, visibility_timeout=2)
    log = _Log()
    stop_producing, stop_all = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_workload(urls, log, stop_producing, stop_all))
        except BaseException as exc:  # reported by the test below
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_for(
            lambda: log.count(lambda x: len(x.received)) >= 1000, 60, "traffic before the kill"
        )
        old_leader = cluster.wait_leader()
        cluster.kill(old_leader, signal.SIGKILL)
        at_kill = log.count(lambda x: len(x.confirmed))
        received_at_kill = log.count(lambda x: len(x.received))
        new_leader = cluster.wait_leader(60)
        assert new_leader is not old_leader
        wait_for(
            lambda: log.count(lambda x: len(x.confirmed)) >= at_kill + 1000,
            60,
            "confirms after the election",
        )
        wait_for(
            lambda: log.count(lambda x: len(x.received)) >= received_at_kill + 1000,
            60,
            "deliveries after the election",
        )
        stop_producing.set()
        wait_for(log.producers_done.is_set, 60, "the producers to finish")

        def all_received() -> bool:
            with log.lock:
                return log.confirmed <= {i for i, _ in log.received}

        wait_for(all_received, 60, "every confirmed message delivered")
    finally:
        stop_producing.set()
        stop_all.set()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert not failure, failure
    with log.lock:
        received_ids = [i for i, _ in log.received]
        assert log.confirmed <= set(received_ids)
        assert set(received_ids) <= log.attempted, "received a message never published"
        # A message seen twice must be a redelivery, never a second copy of the message.
        seen: dict[str, set[int]] = {}
        for message_id, deliveries in log.received:
            assert deliveries not in seen.setdefault(message_id, set()), (message_id, deliveries)
            seen[message_id].add(deliveries)
        assert not [e for e in log.errors if "publish" in e], log.errors[:5]
        # Every channel (two producers, one consumer) was on the old leader and reconnected.
        assert len(log.connects) == 3 and min(log.connects) >= 2, log.connects
