"""Waiting consumers are leased a publish in the publish's own Raft entry (node.waiters)."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from node.app import WAITERS, make_app
from node.waiters import QueueWaiters
from tests.unit.test_node_app import FakeRaft, node_config

Client = TestClient[Any, Any]


@pytest.fixture
async def client(fake: FakeRaft, tmp_path: Path) -> AsyncIterator[Client]:
    async with TestClient(TestServer(make_app(fake, node_config(fake, tmp_path)))) as c:
        yield c


def waiters_of(client: Client) -> QueueWaiters:
    assert client.app is not None
    waiters: QueueWaiters = client.app[WAITERS]
    return waiters


async def parked(client: Client, count: int) -> None:
    """Until `count` long polls wait on the node."""
    waiters = waiters_of(client)
    while waiters.waiting < count:
        await asyncio.sleep(0.001)


def receive(client: Client, queue: str, **body: Any) -> "asyncio.Task[Any]":
    async def call() -> list[str]:
        resp = await client.post(f"/v1/queues/{queue}/receive", json=body)
        assert resp.status == 200, await resp.text()
        return [m["body"] for m in (await resp.json())["messages"]]

    return asyncio.create_task(call())


async def publish(client: Client, queue: str, *bodies: str) -> None:
    resp = await client.post(
        f"/v1/queues/{queue}/messages", json={"messages": [{"body": b} for b in bodies]}
    )
    assert resp.status == 200, await resp.text()


async def test_a_waiting_consumer_is_leased_the_message_in_the_publish_entry(
    client: Client, fake: FakeRaft
) -> None:
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    consumer = receive(client, "jobs", wait=10, max=5)
    await parked(client, 1)
    entries_before = len(fake.entries)
    await publish(client, "jobs", "late")
    assert await asyncio.wait_for(consumer, 5) == ["late"]
    # One entry: the publish, then the consumer's receive; no second round.
    assert [[c["op"] for c in entry] for entry in fake.entries[entries_before:]] == [
        ["publish", "receive"]
    ]
    assert waiters_of(client).waiting == 0
    metrics = await (await client.get("/metrics")).text()
    assert "raftmq_long_polls_waiting 0.0" in metrics


async def test_only_as_many_consumers_as_the_publish_feeds_are_claimed_in_order(
    client: Client, fake: FakeRaft
) -> None:
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    first = receive(client, "jobs", wait=10, max=1)
    await parked(client, 1)
    second = receive(client, "jobs", wait=10, max=1)
    await parked(client, 2)
    await publish(client, "jobs", "one")
    assert await asyncio.wait_for(first, 5) == ["one"]
    # The second was woken by the apply, found nothing and waits again.
    await parked(client, 1)
    assert not second.done()
    await publish(client, "jobs", "two")
    assert await asyncio.wait_for(second, 5) == ["two"]
    assert [c["op"] for c in fake.entries[-1]] == ["publish", "receive"]


async def test_a_consumer_of_another_queue_is_not_claimed(client: Client, fake: FakeRaft) -> None:
    for queue in ("jobs", "other"):
        assert (await client.put(f"/v1/queues/{queue}", json={})).status == 201
    consumer = receive(client, "other", wait=0.3)
    await parked(client, 1)
    await publish(client, "jobs", "not yours")
    assert [c["op"] for c in fake.entries[-1]] == ["publish"]
    assert await asyncio.wait_for(consumer, 5) == []
    assert waiters_of(client).waiting == 0


async def test_a_consumer_waiting_on_a_deleted_queue_is_answered_not_found(
    client: Client, fake: FakeRaft
) -> None:
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    consumer = asyncio.create_task(client.post("/v1/queues/jobs/receive", json={"wait": 10}))
    await parked(client, 1)
    # Deleted through Raft while the consumer waits: the delete wakes it.
    assert (await client.delete("/v1/queues/jobs")).status == 204
    resp = await asyncio.wait_for(consumer, 5)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "queue_not_found"


async def test_a_message_leased_to_a_consumer_that_left_comes_back_after_its_lease(
    client: Client, fake: FakeRaft
) -> None:
    assert (await client.put("/v1/queues/jobs", json={"visibility_timeout": 0.2})).status == 201
    gone = receive(client, "jobs", wait=10)
    await parked(client, 1)
    waiters = waiters_of(client)
    # The proposer takes the consumer, then its client disconnects before the result.
    [(command, outcome)] = waiters.companions(
        [{"op": "publish", "queue": "jobs", "messages": [{}]}], 10
    )
    gone.cancel()
    await publish(client, "jobs", "again")
    # The claimed receive commits after the publish, leasing the message to nobody.
    result = await fake.propose(command)
    assert [m["body"] for m in result["messages"]] == ["again"]
    outcome.set_result(result)
    again = receive(client, "jobs", wait=5)
    assert await asyncio.wait_for(again, 5) == ["again"]
