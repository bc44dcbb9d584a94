"""Client exchange/stream methods and subscriptions against the real app on a fake Raft port.

The node app runs in a background thread with its own event loop and a real
HTTP listener, so the blocking Client and the AsyncClient both talk to it.
"""

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from node.app import make_app
from node.config import NodeConfig
from raftmq import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ExchangeNotFound,
    Message,
    NotFound,
    QueueNotFound,
    Routed,
    StreamNotFound,
)
from tests.unit.test_node_app import FakeRaft, node_config


class Server:
    """The node app on 127.0.0.1 in a thread; `stop` closes everything it opened."""

    def __init__(self, tmp_path: Path) -> None:
        self.fake = FakeRaft(tmp_path / "store")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = node_config(self.fake, tmp_path)
        self.runner, self.url = self._call(self._start(config))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self, config: NodeConfig) -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(make_app(self.fake, config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return runner, f"http://{host}:{port}"

    def stop(self) -> None:
        self._call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.fake.store.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def mq(server: Server) -> Iterator[Client]:
    with Client([server.url], retry_deadline=2.0) as client:
        yield client


def test_exchange_methods(mq: Client) -> None:
    assert mq.declare_exchange("x", "topic")["type"] == "topic"
    with pytest.raises(Conflict):
        mq.declare_exchange("x", "fanout")
    mq.declare_queue("q1")
    mq.declare_queue("q2")
    assert mq.bind("x", "q1", "a.*") == {"exchange": "x", "queue": "q1", "routing_key": "a.*"}
    mq.bind("x", "q2", "#")
    routed = mq.publish_to_exchange("x", "a.b", ["one", b"\x00\xff", Message("three", id="m3")])
    assert isinstance(routed, Routed)
    assert routed.routed == {"q1": 3, "q2": 3} and routed.unroutable == 0
    assert routed.ids[2] == "m3"
    assert mq.publish_to_exchange("x", "b", "solo").routed == {"q2": 1}
    bodies = [m.body for m in mq.receive("q1", max=10)]
    assert bodies == ["one", b"\x00\xff", "three"]
    assert [b["queue"] for b in mq.exchange("x")["bindings"]] == ["q1", "q2"]
    assert [x["name"] for x in mq.exchanges()] == ["x"]
    mq.unbind("x", "q1", "a.*")
    with pytest.raises(NotFound) as missing_binding:
        mq.unbind("x", "q1", "a.*")
    assert missing_binding.value.code == "binding_not_found"
    mq.delete_exchange("x")
    with pytest.raises(ExchangeNotFound):
        mq.exchange("x")
    with pytest.raises(ExchangeNotFound):
        mq.publish_to_exchange("x", "", "lost")
    with pytest.raises(QueueNotFound):
        mq.declare_exchange("y", "direct")
        mq.bind("y", "nope", "k")


def test_stream_methods(mq: Client) -> None:
    assert mq.declare_stream("s", max_records=100)["config"]["max_records"] == 100
    offsets = mq.append("s", ["a", b"\x01", Message("c", headers={"h": "v"}, id="c1")])
    assert offsets == [0, 1, 2]
    assert mq.append("s", {"body": "c", "id": "c1"}) == [2]  # deduplicated by id
    batch = mq.read("s", offset=1, max=10)
    assert [(r.offset, r.body) for r in batch.records] == [(1, b"\x01"), (2, "c")]
    assert batch.records[1].headers == {"h": "v"} and batch.records[1].id == "c1"
    assert (batch.next_offset, batch.first_offset) == (3, 0)
    assert mq.group_offset("s", "g") == 0
    assert mq.commit_offset("s", "g", 2) == 2
    assert [r.offset for r in mq.read("s", group="g").records] == [2]
    info = mq.stream("s")
    assert (info["records"], info["last_offset"], info["groups"]) == (3, 2, {"g": 2})
    assert [s["name"] for s in mq.streams()] == ["s"]
    with pytest.raises(BadRequest):
        mq.append("s", Message("late", delay=1.0))
    with pytest.raises(BadRequest):
        mq.commit_offset("s", "g", 99)
    mq.delete_stream("s")
    with pytest.raises(StreamNotFound):
        mq.read("s")


def _counters(mq: Client, queue: str) -> tuple[int, int, int]:
    info = mq.queue(queue)
    return info["acked_total"], info["ready"], info["in_flight"]


def test_subscription_acks_each_message_when_the_loop_moves_on(mq: Client) -> None:
    mq.declare_exchange("events", "topic")
    with mq.subscribe("events", "orders.*", queue="audit", max=10, wait=1) as sub:
        mq.publish_to_exchange("events", "orders.new", ["m1", "m2", "m3"])
        mq.publish_to_exchange("events", "users.new", "ignored")
        seen = []
        for message in sub:
            seen.append(message.body)
            acked, _, in_flight = _counters(mq, "audit")
            assert acked == len(seen) - 1  # only the earlier ones are acked so far
            assert in_flight == 3 - acked
            if len(seen) == 2:
                break
    assert seen == ["m1", "m2"]
    # the with block acked m2 and returned m3, which stays for the next subscriber
    assert _counters(mq, "audit") == (2, 1, 0)
    with mq.subscribe("events", "orders.*", queue="audit", wait=1) as again:
        assert next(again).body == "m3"
    assert _counters(mq, "audit") == (3, 0, 0)


def test_an_exception_in_the_loop_body_acks_nothing_more(mq: Client) -> None:
    mq.declare_exchange("events", "fanout")
    with pytest.raises(RuntimeError), mq.subscribe("events", "", queue="work", wait=1) as sub:
        mq.publish_to_exchange("events", "", ["m1", "m2"])
        for message in sub:
            if message.body == "m2":
                raise RuntimeError("handler failed")
    assert _counters(mq, "work") == (1, 1, 0)  # m1 acked, m2 back in the queue


def test_close_after_break_acks_the_last_message(mq: Client) -> None:
    mq.declare_exchange("events", "fanout")
    sub = mq.subscribe("events", "", queue="plain", wait=1)
    mq.publish_to_exchange("events", "", ["m1"])
    for _ in sub:
        break
    sub.close()
    assert _counters(mq, "plain") == (1, 0, 0)
    assert list(sub) == []  # a closed subscription ends


def test_temporary_subscription_queue_is_deleted_on_close(mq: Client) -> None:
    mq.declare_exchange("news", "fanout")
    with mq.subscribe("news", "") as sub:
        assert sub.queue.startswith("sub.news.")
        mq.publish_to_exchange("news", "", "hello")
        assert next(sub).body == "hello"
        assert [b["queue"] for b in mq.exchange("news")["bindings"]] == [sub.queue]
    with pytest.raises(QueueNotFound):
        mq.queue(sub.queue)
    assert mq.exchange("news")["bindings"] == []


async def test_async_client_subscription_and_streams(server: Server) -> None:
    async with AsyncClient([server.url], retry_deadline=2.0) as amq:
        await amq.declare_exchange("events", "direct")
        async with amq.subscribe("events", "k", queue="aq", wait=1) as sub:
            await amq.publish_to_exchange("events", "k", ["m1", "m2"])
            seen = []
            async for message in sub:
                seen.append(message.body)
                if len(seen) == 2:
                    break
        assert seen == ["m1", "m2"]
        info = await amq.queue("aq")
        assert (info["acked_total"], info["total"]) == (2, 0)
        lazy = amq.subscribe("events", "k")  # nothing declared until it starts
        assert lazy.queue.startswith("sub.events.")
        await lazy.aclose()
        await amq.declare_stream("s")
        assert await amq.append("s", ["a", "b"]) == [0, 1]
        reading = asyncio.create_task(amq.read("s", offset=2, wait=5))
        await asyncio.sleep(0.05)
        await amq.append("s", "c")
        batch = await reading
        assert [r.body for r in batch.records] == ["c"]
        await amq.commit_offset("s", "g", 3)
        assert await amq.group_offset("s", "g") == 3


def test_failed_subscribe_leaves_no_temporary_queue(mq: Client) -> None:
    with pytest.raises(ExchangeNotFound):
        mq.subscribe("missing", "#")
    assert not [q["name"] for q in mq.queues() if q["name"].startswith("sub.")]


async def test_failed_async_subscribe_leaves_no_temporary_queue(server: Server) -> None:
    async with AsyncClient([server.url], retry_deadline=2.0) as amq:
        with pytest.raises(ExchangeNotFound):
            async with amq.subscribe("missing", "#"):
                pass
        assert not [q["name"] for q in await amq.queues() if q["name"].startswith("sub.")]
