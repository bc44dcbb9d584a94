"""Exchange and stream HTTP handlers against a fake Raft port backed by a real Store."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cluster.errors import UnknownOutcome
from node.app import WAITERS, make_app
from node.routes_pubsub import stream_wait_key
from tests.unit.test_node_app import FakeRaft, node_config

Client = TestClient[Any, Any]


@pytest.fixture
async def client(fake: FakeRaft, tmp_path: Path) -> AsyncIterator[Client]:
    config = node_config(fake, tmp_path)
    async with TestClient(TestServer(make_app(fake, config))) as test_client:
        yield test_client


async def expect(resp: Any, status: int, code: str | None = None) -> Any:
    body: Any = await resp.json() if resp.status != 204 else None
    assert resp.status == status, body
    if code is not None:
        assert body["error"]["code"] == code
        assert body["error"]["message"]
    return body


async def test_exchange_lifecycle_and_errors(client: Client) -> None:
    body = await expect(await client.put("/v1/exchanges/x", json={"type": "topic"}), 201)
    assert body == {"exchange": "x", "type": "topic", "alternate_queue": None}
    await expect(await client.put("/v1/exchanges/x", json={"type": "topic"}), 200)
    await expect(
        await client.put("/v1/exchanges/x", json={"type": "fanout"}),
        409,
        "exchange_exists_different",
    )
    for bad in ({}, {"type": "headers"}, {"type": "topic", "alternate_queue": 5}, {"x": 1}):
        await expect(await client.put("/v1/exchanges/y", json=bad), 400, "invalid_request")
    await expect(await client.put("/v1/exchanges/bad%20name", json={}), 400, "invalid_name")
    await expect(await client.get("/v1/exchanges/nope"), 404, "exchange_not_found")
    await expect(await client.delete("/v1/exchanges/nope"), 404, "exchange_not_found")
    await expect(
        await client.put("/v1/exchanges/nope/bindings/q", json={"routing_key": "a"}),
        404,
        "exchange_not_found",
    )
    await expect(
        await client.put("/v1/exchanges/x/bindings/q", json={"routing_key": "a"}),
        404,
        "queue_not_found",
    )
    await expect(
        await client.post("/v1/exchanges/nope/publish", json={"messages": [{"body": "m"}]}),
        404,
        "exchange_not_found",
    )
    listed = await expect(await client.get("/v1/exchanges"), 200)
    assert [x["name"] for x in listed["exchanges"]] == ["x"]
    await expect(await client.delete("/v1/exchanges/x"), 204)
    await expect(await client.get("/v1/exchanges/x"), 404, "exchange_not_found")


async def test_bindings_and_routed_publish(client: Client) -> None:
    await expect(await client.put("/v1/exchanges/t", json={"type": "topic"}), 201)
    for queue in ("eu", "all"):
        await expect(await client.put(f"/v1/queues/{queue}", json={}), 201)
    bound = await client.put("/v1/exchanges/t/bindings/eu", json={"routing_key": "*.eu"})
    assert await expect(bound, 201) == {"exchange": "t", "queue": "eu", "routing_key": "*.eu"}
    await expect(await client.put("/v1/exchanges/t/bindings/eu", json={"routing_key": "*.eu"}), 200)
    await expect(await client.put("/v1/exchanges/t/bindings/all", json={"routing_key": "#"}), 201)
    info = await expect(await client.get("/v1/exchanges/t"), 200)
    assert info["bindings"] == [
        {"queue": "all", "routing_key": "#"},
        {"queue": "eu", "routing_key": "*.eu"},
    ]
    published = await client.post(
        "/v1/exchanges/t/publish",
        json={"routing_key": "orders.eu", "messages": [{"body": "a", "id": "m1"}, {"body": "b"}]},
    )
    body = await expect(published, 200)
    assert body["routed"] == {"all": 2, "eu": 2} and body["unroutable"] == 0
    assert body["ids"][0] == "m1" and len(body["ids"]) == 2
    got = await expect(await client.post("/v1/queues/eu/receive", json={"max": 10}), 200)
    assert [m["id"] for m in got["messages"]] == body["ids"]
    # unbind by query string and by body; a second unbind is 404
    await expect(await client.delete("/v1/exchanges/t/bindings/eu?routing_key=*.eu"), 204)
    await expect(
        await client.delete("/v1/exchanges/t/bindings/eu", json={"routing_key": "*.eu"}),
        404,
        "binding_not_found",
    )
    await expect(
        await client.delete("/v1/exchanges/t/bindings/all", json={"routing_key": "#"}), 204
    )
    await expect(
        await client.delete(
            "/v1/exchanges/t/bindings/all?routing_key=a", json={"routing_key": "b"}
        ),
        400,
        "invalid_request",
    )
    unrouted = await client.post("/v1/exchanges/t/publish", json={"messages": [{"body": "x"}]})
    assert (await expect(unrouted, 200))["unroutable"] == 1


async def test_publish_input_errors_and_full_queue(client: Client) -> None:
    await expect(await client.put("/v1/exchanges/f", json={"type": "fanout"}), 201)
    await expect(
        await client.put("/v1/queues/tight", json={"max_length": 1, "overflow": "reject_publish"}),
        201,
    )
    await expect(await client.put("/v1/queues/roomy", json={}), 201)
    await client.put("/v1/exchanges/f/bindings/tight", json={})
    await client.put("/v1/exchanges/f/bindings/roomy", json={})
    bad: dict[str, Any]
    for bad in (
        {},
        {"messages": []},
        {"messages": [{"body": 1}]},
        {"messages": [{"body": "x"}], "routing_key": 5},
        {"messages": [{"body": "x"}], "routing_key": "k" * 256},
        {"messages": [{"body": "x"}], "extra": 1},
    ):
        await expect(await client.post("/v1/exchanges/f/publish", json=bad), 400, "invalid_request")
    two = {"messages": [{"body": "1"}, {"body": "2"}]}
    await expect(await client.post("/v1/exchanges/f/publish", json=two), 409, "queue_full")
    roomy = await expect(await client.get("/v1/queues/roomy"), 200)
    assert roomy["total"] == 0


async def test_publish_wakes_a_long_poll_on_a_bound_queue(client: Client) -> None:
    await client.put("/v1/exchanges/f", json={"type": "fanout"})
    await client.put("/v1/queues/q", json={})
    await client.put("/v1/exchanges/f/bindings/q", json={})
    waiting = asyncio.create_task(client.post("/v1/queues/q/receive", json={"wait": 10}))
    await asyncio.sleep(0.05)
    await client.post("/v1/exchanges/f/publish", json={"messages": [{"body": "late"}]})
    resp = await asyncio.wait_for(waiting, 5)
    assert [m["body"] for m in (await resp.json())["messages"]] == ["late"]


async def test_stream_lifecycle_and_errors(client: Client) -> None:
    created = await client.put("/v1/streams/s", json={"max_age": 60, "max_records": 5})
    assert await expect(created, 201) == {
        "stream": "s",
        "config": {"max_age": 60.0, "max_bytes": None, "max_records": 5},
    }
    await expect(await client.put("/v1/streams/s", json={"max_age": 60, "max_records": 5}), 200)
    await expect(
        await client.put("/v1/streams/s", json={"max_records": 6}), 409, "stream_exists_different"
    )
    for bad in ({"max_age": 0}, {"max_bytes": 0}, {"max_records": True}, {"retention": 1}):
        await expect(await client.put("/v1/streams/t", json=bad), 400, "invalid_request")
    for path in ("", "/records", "/groups/g"):
        await expect(await client.get(f"/v1/streams/nope{path}"), 404, "stream_not_found")
    await expect(
        await client.post("/v1/streams/nope/records", json={"records": [{"body": "x"}]}),
        404,
        "stream_not_found",
    )
    await expect(
        await client.put("/v1/streams/nope/groups/g", json={"offset": 0}), 404, "stream_not_found"
    )
    info = await expect(await client.get("/v1/streams/s"), 200)
    assert (info["first_offset"], info["last_offset"], info["records"], info["bytes"]) == (
        0,
        None,
        0,
        0,
    )
    listed = await expect(await client.get("/v1/streams"), 200)
    assert [s["name"] for s in listed["streams"]] == ["s"]
    await expect(await client.delete("/v1/streams/s"), 204)
    await expect(await client.delete("/v1/streams/s"), 404, "stream_not_found")


async def test_a_leader_that_cannot_commit_serves_no_read(
    client: Client, fake: FakeRaft, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut off from the others it still believes it leads (for up to leader_fallback_s)
    while a new leader commits appends: a read from its store could miss some. Each
    read waits for a barrier through the log; here the barrier never commits."""
    await expect(await client.put("/v1/streams/s", json={}), 201)
    await expect(await client.post("/v1/streams/s/records", json={"records": [{"body": "a"}]}), 200)
    read = await expect(await client.get("/v1/streams/s/records?offset=0"), 200)
    assert [r["body"] for r in read["records"]] == ["a"]

    async def cut_off(command: dict[str, Any]) -> dict[str, Any]:
        raise UnknownOutcome("no Raft outcome within 5 s; retry with the same ids")

    monkeypatch.setattr(fake, "propose", cut_off)
    for path in ("/v1/streams/s/records?offset=0", "/v1/streams/s/groups/g"):
        await expect(await client.get(path), 503, "unknown_outcome")


async def test_append_read_and_groups(client: Client) -> None:
    await client.put("/v1/streams/s", json={})
    records = [
        {"body": "a", "id": "r1"},
        {"body": "b", "headers": {"h": "v"}},
        {"body": "a", "id": "r1"},
    ]
    appended = await expect(
        await client.post("/v1/streams/s/records", json={"records": records}), 200
    )
    assert appended == {"offsets": [0, 1, 0]}
    read = await expect(await client.get("/v1/streams/s/records?offset=0&max=10"), 200)
    assert [(r["offset"], r["body"]) for r in read["records"]] == [(0, "a"), (1, "b")]
    assert read["records"][1]["headers"] == {"h": "v"}
    assert isinstance(read["records"][0]["timestamp"], int)
    assert (read["next_offset"], read["first_offset"]) == (2, 0)
    tail = await expect(await client.get("/v1/streams/s/records?offset=2"), 200)
    assert (tail["records"], tail["next_offset"]) == ([], 2)
    assert await expect(await client.get("/v1/streams/s/groups/g"), 200) == {
        "stream": "s",
        "group": "g",
        "offset": 0,
    }
    await expect(await client.put("/v1/streams/s/groups/g", json={"offset": 1}), 200)
    by_group = await expect(await client.get("/v1/streams/s/records?group=g"), 200)
    assert [r["offset"] for r in by_group["records"]] == [1]
    await expect(
        await client.put("/v1/streams/s/groups/g", json={"offset": 3}), 400, "invalid_request"
    )
    info = await expect(await client.get("/v1/streams/s"), 200)
    assert info["groups"] == {"g": 1}
    assert (await client.delete("/v1/streams/s/groups/g")).status == 204
    assert (await client.delete("/v1/streams/s/groups/g")).status == 204  # idempotent
    assert (await expect(await client.get("/v1/streams/s"), 200))["groups"] == {}
    await expect(await client.delete("/v1/streams/nope/groups/g"), 404, "stream_not_found")
    await expect(await client.delete("/v1/streams/s/groups/bad%20name"), 400, "invalid_name")
    for query in (
        "offset=-1",
        "offset=x",
        "max=0",
        "max=1001",
        "wait=99",
        "offset=0&group=g",
        "group=a%20b",
        "colour=red",
    ):
        await expect(await client.get(f"/v1/streams/s/records?{query}"), 400)
    bad_appends: list[dict[str, Any]] = [
        {"records": []},
        {"records": [{"body": "x", "delay": 1}]},
        {"messages": []},
    ]
    for bad in bad_appends:
        await expect(await client.post("/v1/streams/s/records", json=bad), 400, "invalid_request")
    await expect(
        await client.put("/v1/streams/s/groups/g", json={"offset": -1}), 400, "invalid_request"
    )


async def test_append_errors_name_the_records_field(client: Client) -> None:
    await client.put("/v1/streams/s", json={})
    bad_appends: list[dict[str, Any]] = [
        {},
        {"records": []},
        {"records": "x"},
        {"records": [{"body": "x"}] * 1001},
    ]
    for bad in bad_appends:
        error = await expect(
            await client.post("/v1/streams/s/records", json=bad), 400, "invalid_request"
        )
        assert "records" in error["error"]["message"], error
    info = await expect(await client.get("/v1/streams/s"), 200)
    assert info["next_offset"] == 0


async def test_stream_long_poll_wakes_on_append(client: Client) -> None:
    await client.put("/v1/streams/s", json={})
    waiting = asyncio.create_task(client.get("/v1/streams/s/records?offset=0&wait=10"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await client.post("/v1/streams/s/records", json={"records": [{"body": "late"}]})
    resp = await asyncio.wait_for(waiting, 5)
    assert [r["body"] for r in (await resp.json())["records"]] == ["late"]
    empty = await expect(await client.get("/v1/streams/s/records?offset=1&wait=0.1"), 200)
    assert empty["records"] == [] and empty["next_offset"] == 1


async def test_reads_answered_at_once_leave_no_wake_up_event(client: Client) -> None:
    """Only a read about to wait takes an event: one per read stayed behind until an
    append to that name, so reading ever new missing names grew the node without bound."""
    await client.put("/v1/streams/s", json={})
    await client.post("/v1/streams/s/records", json={"records": [{"body": "a"}]})
    missing = [f"gone{i}" for i in range(3)]
    for stream in missing:
        await expect(await client.get(f"/v1/streams/{stream}/records"), 404, "stream_not_found")
        path = f"/v1/streams/{stream}/records?wait=1"
        await expect(await client.get(path), 404, "stream_not_found")
    await expect(await client.get("/v1/streams/s/records?offset=0&wait=5"), 200)
    await expect(await client.get("/v1/streams/s/records?offset=1"), 200)
    assert client.app is not None
    waiters = client.app[WAITERS]
    assert waiters.watched({stream_wait_key(s) for s in ["s", *missing]}) == set()


async def test_stream_reads_need_the_leader_and_each_takes_a_barrier(
    client: Client, fake: FakeRaft
) -> None:
    await client.put("/v1/streams/s", json={})
    before = fake.store.applied_index()
    await client.get("/v1/streams/s/records")
    await client.get("/v1/streams/s/records")
    await client.get("/v1/streams/s/groups/g")
    # One read barrier each (the real proposer puts concurrent ones in one entry).
    assert fake.store.applied_index() == before + 3
    await fake.propose(
        {
            "op": "register_node",
            "raft": "127.0.0.1:2",
            "id": "n2",
            "http": "http://l:9",
            "now_ms": 1,
        }
    )
    fake.leader = "127.0.0.1:2"
    resp = await client.get("/v1/streams/s/records?offset=3", allow_redirects=False)
    assert resp.status == 307
    assert resp.headers["Location"] == "http://l:9/v1/streams/s/records?offset=3"
    stats = await client.get("/v1/streams/s")  # stats stay local
    assert stats.status == 200
