"""The WebSocket channel (node/routes_channel.py, raftmq/channel.py) against a FakeRaft app."""

import asyncio
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from cluster.errors import Overloaded
from node.app import BODY_BUDGET, OPEN_CHANNELS, make_app
from node.config import Limits
from raftmq.bench import adapter
from raftmq.client import AsyncClient
from raftmq.errors import BadRequest, QueueNotFound, Unavailable
from tests.unit.test_node_app import FakeRaft, node_config

Client = TestClient[Any, Any]
WS = aiohttp.ClientWebSocketResponse
# A guard against hanging forever, never what a test asserts.
GUARD_S = 10.0


@pytest.fixture
async def client(fake: FakeRaft, tmp_path: Path) -> AsyncIterator[Client]:
    config = node_config(
        fake, tmp_path, Limits(max_message_bytes=100, max_receive=50, max_body_bytes=4096)
    )
    async with TestClient(TestServer(make_app(fake, config))) as test_client:
        yield test_client


async def _recv(ws: WS) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), GUARD_S)
    assert msg.type is WSMsgType.TEXT, msg
    frame: dict[str, Any] = msg.json()
    return frame


async def _declare(client: Client, queue: str = "jobs", **config: Any) -> None:
    assert (await client.put(f"/v1/queues/{queue}", json=config)).status == 201


async def _queue(client: Client, queue: str = "jobs") -> dict[str, Any]:
    info: dict[str, Any] = await (await client.get(f"/v1/queues/{queue}")).json()
    return info


async def test_publish_is_confirmed_and_a_resent_id_is_not_enqueued_twice(client: Client) -> None:
    await _declare(client)
    ws = await client.ws_connect("/v1/channel")
    frame = {"op": "publish", "seq": 7, "queue": "jobs", "messages": [{"body": "a", "id": "m1"}]}
    await ws.send_json(frame)
    assert await _recv(ws) == {"op": "confirm", "seq": 7, "ids": ["m1"]}
    await ws.send_json({**frame, "seq": 8, "messages": [{"body": "a", "id": "m1"}, {"body": "b"}]})
    reply = await _recv(ws)
    assert reply["op"] == "confirm" and reply["seq"] == 8 and reply["ids"][0] == "m1"
    assert (await _queue(client))["total"] == 2
    await ws.close()


async def test_bad_frames_answer_errors_and_the_channel_stays_open(client: Client) -> None:
    await _declare(client)
    ws = await client.ws_connect("/v1/channel")

    async def error_of(frame: Any, raw: str | None = None) -> dict[str, Any]:
        await (ws.send_str(raw) if raw is not None else ws.send_json(frame))
        reply = await _recv(ws)
        assert reply["op"] == "error", reply
        return reply

    bad_json = await error_of(None, "{not json")
    assert bad_json["error"]["code"] == "invalid_json" and bad_json["status"] == 400
    unknown = await error_of({"op": "frobnicate", "seq": 1})
    assert (unknown["seq"], unknown["error"]["code"]) == (1, "invalid_request")
    missing = await error_of(
        {"op": "publish", "seq": 2, "queue": "nope", "messages": [{"body": "x"}]}
    )
    assert (missing["seq"], missing["status"], missing["error"]["code"]) == (
        2,
        404,
        "queue_not_found",
    )
    large = await error_of(
        {"op": "publish", "seq": 3, "queue": "jobs", "messages": [{"body": "x" * 101}]}
    )
    assert (large["seq"], large["status"], large["error"]["code"]) == (3, 413, "message_too_large")
    bad_name = await error_of({"op": "ack", "seq": 4, "queue": "a b", "receipts": ["r"]})
    assert bad_name["error"]["code"] == "invalid_name"
    no_sub = await error_of({"op": "subscribe", "sub": "s", "queue": "nope", "prefetch": 1})
    assert (no_sub["sub"], no_sub["error"]["code"]) == ("s", "queue_not_found")
    too_many = await error_of({"op": "subscribe", "sub": "s", "queue": "jobs", "prefetch": 51})
    assert too_many["error"]["code"] == "invalid_request"
    await ws.send_json({"op": "publish", "seq": 5, "queue": "jobs", "messages": [{"body": "x"}]})
    assert (await _recv(ws))["op"] == "confirm"
    assert (await _queue(client))["total"] == 1
    await ws.close()


async def _publish(client: Client, count: int, queue: str = "jobs") -> None:
    messages = [{"body": f"m{i}"} for i in range(count)]
    resp = await client.post(f"/v1/queues/{queue}/messages", json={"messages": messages})
    assert resp.status == 200


async def test_only_receipts_still_leased_count_against_a_resubscription(
    client: Client,
) -> None:
    """A re-subscription names what the client still holds ("held"); a receipt whose
    ack committed (its answer lost) or whose lease ended gives its credit back at once."""
    await _declare(client)
    await _publish(client, 3)

    async def lease_one() -> str:
        resp = await client.post("/v1/queues/jobs/receive", json={"max": 1})
        return str((await resp.json())["messages"][0]["receipt"])

    still_leased, settled = await lease_one(), await lease_one()
    acked = await client.post("/v1/queues/jobs/ack", json={"receipts": [settled]})
    assert (await acked.json())["acked"] == 1
    ws = await client.ws_connect("/v1/channel")
    held = [still_leased, settled, "ffff.gone"]
    await ws.send_json(
        {"op": "subscribe", "sub": "s", "queue": "jobs", "prefetch": 3, "held": held}
    )
    assert await _recv(ws) == {"op": "subscribed", "sub": "s"}
    frame = await _recv(ws)  # two credits of three are free: the third message comes now
    assert frame["op"] == "deliver"
    assert [m["body"] for m in frame["messages"]] == ["m2"]
    await ws.close()


async def test_credit_window_is_never_exceeded_and_acks_refill_it(client: Client) -> None:
    await _declare(client)
    await _publish(client, 20)
    ws = await client.ws_connect("/v1/channel")
    await ws.send_json({"op": "subscribe", "sub": "s1", "queue": "jobs", "prefetch": 3})
    assert await _recv(ws) == {"op": "subscribed", "sub": "s1"}
    outstanding: list[str] = []
    seen: list[str] = []
    seq = 0
    while len(seen) < 20:
        frame = await _recv(ws)
        if frame["op"] == "acked":
            assert frame["acked"] == 1
            continue
        assert frame["op"] == "deliver" and frame["sub"] == "s1", frame
        outstanding += [m["receipt"] for m in frame["messages"]]
        seen += [m["body"] for m in frame["messages"]]
        # Credit comes back only after the node has the ack: counting acks as sent is safe.
        assert len(outstanding) <= 3
        while outstanding and (len(outstanding) == 3 or len(seen) == 20):
            seq += 1
            receipts = [outstanding.pop(0)]
            await ws.send_json({"op": "ack", "seq": seq, "queue": "jobs", "receipts": receipts})
    assert sorted(seen) == sorted(f"m{i}" for i in range(20))
    while (await _queue(client))["total"] != 0:
        await asyncio.sleep(0.01)  # the last acks are still being answered
    await ws.close()


async def test_an_ack_that_frees_credit_carries_the_next_lease(
    client: Client, fake: FakeRaft
) -> None:
    """A starved subscription's next messages are leased right behind the ack that frees
    its credit (delivered before the ack is even answered), never beyond the prefetch."""
    await _declare(client)
    await _publish(client, 9)
    ws = await client.ws_connect("/v1/channel")
    await ws.send_json({"op": "subscribe", "sub": "s1", "queue": "jobs", "prefetch": 3})
    assert await _recv(ws) == {"op": "subscribed", "sub": "s1"}
    first = await _recv(ws)
    assert first["op"] == "deliver" and len(first["messages"]) == 3
    # The pump went on to wait for credit in the same step that wrote this delivery.
    entries_before = len(fake.entries)

    receipts = [m["receipt"] for m in first["messages"]]
    await ws.send_json({"op": "ack", "seq": 1, "queue": "jobs", "receipts": receipts})
    second, answer = await _recv(ws), await _recv(ws)

    assert second["op"] == "deliver" and len(second["messages"]) == 3, second
    assert answer == {"op": "acked", "seq": 1, "acked": 3, "stale": []}
    ops = [[c["op"] for c in entry] for entry in fake.entries[entries_before:]]
    assert ops[:2] == [["ack"], ["receive"]], ops
    assert fake.entries[entries_before + 1][0]["max"] == 3
    info = await _queue(client)
    assert (info["in_flight"], info["total"]) == (3, 6)
    await ws.close()


async def test_an_expired_lease_gives_its_credit_back(client: Client) -> None:
    await _declare(client)
    await _publish(client, 1)
    ws = await client.ws_connect("/v1/channel")
    await ws.send_json(
        {"op": "subscribe", "sub": "s", "queue": "jobs", "prefetch": 1, "visibility_timeout": 0.2}
    )
    assert (await _recv(ws))["op"] == "subscribed"
    first = await _recv(ws)
    [message] = first["messages"]
    assert message["deliveries"] == 1
    # Never acked: after the lease the same message comes again, within the window of 1.
    again = await _recv(ws)
    assert again["op"] == "deliver"
    assert [(m["id"], m["deliveries"]) for m in again["messages"]] == [(message["id"], 2)]
    await ws.send_json({"op": "nack", "seq": 1, "queue": "jobs", "receipts": [message["receipt"]]})
    stale = await _recv(ws)  # the first receipt is stale: the message was redelivered
    assert stale == {"op": "nacked", "seq": 1, "requeued": 0, "stale": [message["receipt"]]}
    await ws.send_json({"op": "cancel", "sub": "s"})
    assert await _recv(ws) == {"op": "cancelled", "sub": "s"}
    await ws.close()


async def _add_user(client: Client, name: str, token: str | None, admin: bool = False) -> str:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    resp = await client.post("/v1/users", json={"name": name, "admin": admin}, headers=headers)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["token"])


async def test_upgrade_needs_a_token_and_frames_need_the_permission(client: Client) -> None:
    await _declare(client)
    admin = await _add_user(client, "admin", None, admin=True)
    reader = await _add_user(client, "reader", admin)
    resp = await client.put(
        "/v1/users/reader/permissions",
        json={"read": "jobs"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert resp.status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/v1/channel")
    assert refused.value.status == 401
    ws = await client.ws_connect("/v1/channel", headers={"Authorization": f"Bearer {reader}"})
    await ws.send_json({"op": "publish", "seq": 1, "queue": "jobs", "messages": [{"body": "x"}]})
    forbidden = await _recv(ws)
    assert (forbidden["op"], forbidden["status"], forbidden["error"]["code"]) == (
        "error",
        403,
        "forbidden",
    )
    await ws.send_json({"op": "subscribe", "sub": "s", "queue": "jobs", "prefetch": 1})
    assert await _recv(ws) == {"op": "subscribed", "sub": "s"}
    await ws.close()


async def _register_other_leader(fake: FakeRaft, http: str) -> None:
    await fake.propose(
        {"op": "register_node", "raft": "127.0.0.1:2", "id": "n2", "http": http, "now_ms": 1}
    )
    fake.leader = "127.0.0.1:2"


async def test_a_follower_redirects_the_upgrade(client: Client, fake: FakeRaft) -> None:
    await _register_other_leader(fake, "http://leader:9")
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    resp = await client.get("/v1/channel", headers=upgrade, allow_redirects=False)
    assert resp.status == 307
    assert resp.headers["Location"] == "http://leader:9/v1/channel"


async def test_losing_leadership_closes_channels_with_not_leader(
    client: Client, fake: FakeRaft
) -> None:
    ws = await client.ws_connect("/v1/channel")
    fake.leader = "127.0.0.1:2"
    msg = await asyncio.wait_for(ws.receive(), GUARD_S)
    assert msg.type is WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (4001, "not_leader")


async def _wait_for(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD_S):
        while not condition():
            await asyncio.sleep(0.005)


async def test_client_channel_publishes_consumes_and_resends_after_a_reconnect(
    client: Client, fake: FakeRaft
) -> None:
    await _declare(client)
    url = str(client.make_url("")).rstrip("/")
    async with AsyncClient(url, retry_deadline=GUARD_S) as mq, mq.channel() as ch:
        first = await asyncio.gather(*(ch.publish("jobs", f"a{i}") for i in range(30)))
        assert len(set(first)) == 30
        assert ch.connects == 1
        fake.leader = None  # this node stops leading: the channel is closed, reconnects wait
        await _wait_for(lambda: not ch._connected.is_set())
        pending = [asyncio.ensure_future(ch.publish("jobs", f"b{i}")) for i in range(30)]
        await asyncio.sleep(0)  # the publishes are framed while there is no connection
        fake.leader = fake.self_raft
        second = await asyncio.gather(*pending)
        assert ch.connects == 2
        assert len(set(first + second)) == 60
        assert (await _queue(client))["total"] == 60

        got: dict[str, int] = {}
        async for msg in ch.consume("jobs", prefetch=7):
            assert isinstance(msg.body, str)
            got[msg.body] = got.get(msg.body, 0) + 1
            assert (await msg.ack()).acked == 1
            if len(got) == 60:
                break
        assert set(got) == {f"a{i}" for i in range(30)} | {f"b{i}" for i in range(30)}
    assert (await _queue(client))["total"] == 0


async def test_a_publish_answered_only_overloaded_fails_at_the_retry_deadline(
    client: Client, fake: FakeRaft, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to be re-sent for as long as the node kept answering a retryable error."""
    await _declare(client)

    async def overloaded(command: dict[str, Any]) -> dict[str, Any]:
        raise Overloaded("100 commands are waiting for Raft")

    url = str(client.make_url("")).rstrip("/")
    async with AsyncClient(url, retry_deadline=0.5) as mq, mq.channel() as ch:
        monkeypatch.setattr(fake, "propose", overloaded)
        with pytest.raises(Unavailable) as failed:
            await asyncio.wait_for(ch.publish("jobs", "x"), GUARD_S)
        assert failed.value.code == "overloaded"
        monkeypatch.undo()
        assert await ch.publish("jobs", "y")  # the channel itself is still usable


async def test_channel_ack_soon_acks_without_being_awaited(client: Client) -> None:
    await _declare(client)
    await _publish(client, 5)
    url = str(client.make_url("")).rstrip("/")
    async with AsyncClient(url, retry_deadline=GUARD_S) as mq, mq.channel() as ch:
        futures = []
        async for msg in ch.consume("jobs", prefetch=5):
            futures.append(ch.ack_soon("jobs", [msg.receipt]))
            if len(futures) == 5:
                break
        await _wait_for(lambda: all(f.done() for f in futures))
        assert [f.result().acked for f in futures] == [1] * 5
    assert (await _queue(client))["total"] == 0


async def test_channel_takes_a_lone_receipt_as_the_client_does(client: Client) -> None:
    """A str was sent as the receipts list itself (and ack_soon counted its characters)."""
    await _declare(client)
    await _publish(client, 3)
    url = str(client.make_url("")).rstrip("/")
    async with AsyncClient(url, retry_deadline=GUARD_S) as mq, mq.channel() as ch:
        msgs = []
        async for msg in ch.consume("jobs", prefetch=3):
            msgs.append(msg)
            if len(msgs) == 3:
                break
        assert (await asyncio.wait_for(ch.ack("jobs", msgs[0].receipt), GUARD_S)).acked == 1
        soon = ch.ack_soon("jobs", msgs[1].receipt)
        assert (await asyncio.wait_for(soon, GUARD_S)).acked == 1
        assert (await asyncio.wait_for(ch.nack("jobs", msgs[2].receipt), GUARD_S)).requeued == 1
    assert (await _queue(client))["total"] == 1


async def test_client_consume_raises_for_a_missing_queue(client: Client) -> None:
    url = str(client.make_url("")).rstrip("/")
    async with AsyncClient(url) as mq, mq.channel() as ch:
        with pytest.raises(QueueNotFound):
            async for _ in ch.consume("nope", prefetch=5):
                pass


async def test_frames_over_the_body_limit_are_refused(client: Client) -> None:
    await _declare(client)
    ws = await client.ws_connect("/v1/channel")
    padding = "x" * 5000  # over the 4096-byte body limit, under twice it: answered
    await ws.send_str(f'{{"op": "publish", "seq": 1, "queue": "jobs", "pad": "{padding}"}}')
    reply = await _recv(ws)
    assert (reply["seq"], reply["status"], reply["error"]["code"]) == (1, 413, "body_too_large")
    await ws.close()

    url = str(client.make_url("")).rstrip("/")
    async with AsyncClient(url, retry_deadline=GUARD_S) as mq, mq.channel() as ch:
        # Over twice the limit: the node closes the channel (1009) without reading it.
        with pytest.raises(BadRequest) as refused:
            await ch.publish("jobs", "y" * 9000)
        assert refused.value.code == "body_too_large"
        await ch.publish("jobs", "fits")
    assert (await _queue(client))["total"] == 1


async def test_channels_per_node_and_frames_in_flight_are_bounded(
    fake: FakeRaft, tmp_path: Path
) -> None:
    config = node_config(fake, tmp_path, Limits(max_channels=1))
    app = make_app(fake, config)
    async with TestClient(TestServer(app)) as client:
        await _declare(client)
        ws = await client.ws_connect("/v1/channel")
        second = await client.get("/v1/channel", headers=_UPGRADE)
        assert second.status == 503
        assert (await second.json())["error"]["code"] == "overloaded"

        budget = app[BODY_BUDGET]
        budget.reserved_bytes = budget.limit_bytes  # bodies being received fill the budget
        await ws.send_json(
            {"op": "publish", "seq": 1, "queue": "jobs", "messages": [{"body": "a"}]}
        )
        reply = await _recv(ws)
        assert (reply["seq"], reply["status"], reply["error"]["code"]) == (1, 503, "overloaded")
        budget.reserved_bytes = 0
        await ws.send_json(
            {"op": "publish", "seq": 2, "queue": "jobs", "messages": [{"body": "a"}]}
        )
        assert (await _recv(ws))["op"] == "confirm"
        await ws.close()
        assert budget.reserved_bytes == 0
        # The closed channel's place is free again.
        await _wait_for(lambda: not app[OPEN_CHANNELS])
        third = await client.ws_connect("/v1/channel")
        await third.close()


_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def test_a_silent_node_does_not_hold_the_handshake_past_the_retry_deadline() -> None:
    """The handshake used to get the whole ``timeout`` however little was left."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections, never answers (a stopped node)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        async with AsyncClient(url, timeout=60.0, retry_deadline=0.5) as mq:
            # Before, the handshake waited out the whole 60 s timeout, past the guard.
            with pytest.raises(Unavailable):
                await asyncio.wait_for(mq.channel().open(), GUARD_S)


async def test_a_pushed_message_carries_what_a_receive_returns(client: Client) -> None:
    """The channel builds its ChannelMessage from the pushed frame as a receive decodes one."""
    await _declare(client)
    url = str(client.make_url("")).rstrip("/")
    async with AsyncClient(url, retry_deadline=GUARD_S) as mq, mq.channel() as ch:
        consumer = ch.consume("jobs", prefetch=1)
        assert isinstance(consumer, AsyncGenerator)
        waiting = asyncio.ensure_future(anext(consumer))
        await asyncio.sleep(0.05)  # the consumer waits on an empty inbox: a push wakes it
        sent = await ch.publish("jobs", b"\x00bytes", headers={"k": "v"}, id="m-1")
        pushed = await asyncio.wait_for(waiting, GUARD_S)
        await consumer.aclose()  # cancelled first, or the nacked message would come back here
        assert (await ch.nack("jobs", pushed.receipt)).requeued == 1
        [received] = await mq.receive("jobs", max=1, wait=GUARD_S)
    assert (pushed.queue, pushed.id, sent) == ("jobs", "m-1", "m-1")
    assert (pushed.body, pushed.headers) == (b"\x00bytes", {"k": "v"})
    assert (received.id, received.body, received.headers) == (
        pushed.id,
        pushed.body,
        pushed.headers,
    )
    assert (pushed.deliveries + 1, pushed.published_at) == (
        received.deliveries,
        received.published_at,
    )


async def test_the_bench_adapter_counts_every_ack_and_its_failures(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its acks are swept for their outcome in bulk (not a done callback each)."""
    monkeypatch.setattr(adapter, "ACK_SWEEP", 3)
    await _declare(client)
    url = str(client.make_url("")).rstrip("/")
    peer = adapter.RaftMQ([url], queue="jobs", transport="ws", retry_deadline=GUARD_S)
    await peer.connect()
    try:
        for i in range(10):
            await peer.publish(f"m{i}".encode())
        got = 0
        async for _body, ack in peer.consume(prefetch=4):
            await ack()
            got += 1
            if got == 10:
                break
        await peer.flush()
        assert (peer.ack_errors, peer._acks, await peer.depth()) == (0, [], 0)
        peer.q = "nope"  # an ack the node refuses (no such queue) is counted
        await peer._acker("1.r")()
        await peer.flush()
        assert peer.ack_errors == 1
    finally:
        await peer.close()
