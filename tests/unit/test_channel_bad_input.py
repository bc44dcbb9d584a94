"""Malformed frames on the WebSocket channel: an error frame with the HTTP status and code."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from node.app import make_app
from node.config import Limits
from tests.unit.test_node_app import FakeRaft, node_config

Client = TestClient[Any, Any]
WS = aiohttp.ClientWebSocketResponse
# A guard against hanging forever, never what a test asserts.
GUARD_S = 10.0
MAX_BODY_BYTES = 4096


@pytest.fixture
async def client(fake: FakeRaft, tmp_path: Path) -> AsyncIterator[Client]:
    limits = Limits(max_message_bytes=100, max_receive=50, max_body_bytes=MAX_BODY_BYTES)
    async with TestClient(TestServer(make_app(fake, node_config(fake, tmp_path, limits)))) as c:
        yield c


async def _recv(ws: WS) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), GUARD_S)
    assert msg.type is WSMsgType.TEXT, msg
    frame: dict[str, Any] = msg.json()
    return frame


@pytest.mark.parametrize(
    "raw",
    [
        "x" * (MAX_BODY_BYTES + 1),  # not JSON either: was answered 400 invalid_json
        '{"op": "publish", "seq": 1, "queue": "jobs", "messages": [], "pad": "'
        + "x" * MAX_BODY_BYTES
        + '"}',
    ],
)
async def test_a_frame_over_the_limit_is_413_whatever_it_holds(client: Client, raw: str) -> None:
    ws = await client.ws_connect("/v1/channel")
    await ws.send_str(raw)
    reply = await _recv(ws)
    assert reply["op"] == "error"
    assert (reply["status"], reply["error"]["code"]) == (413, "body_too_large")
    await ws.send_str("not json")  # the channel stays open; small bad frames are still 400
    reply = await _recv(ws)
    assert (reply["status"], reply["error"]["code"]) == (400, "invalid_json")
    await ws.close()


@pytest.mark.parametrize("sub", [None, 1, ["s"]])
async def test_cancel_needs_a_subscription_name(client: Client, sub: Any) -> None:
    """A cancel without a string `sub` used to cancel the subscription named str(sub)."""
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    ws = await client.ws_connect("/v1/channel")
    name = str(sub)
    await ws.send_json({"op": "subscribe", "sub": name, "queue": "jobs", "prefetch": 1})
    assert await _recv(ws) == {"op": "subscribed", "sub": name}
    cancel: dict[str, Any] = {"op": "cancel"} if sub is None else {"op": "cancel", "sub": sub}
    await ws.send_json(cancel)
    reply = await _recv(ws)
    assert reply["op"] == "error"
    assert (reply["status"], reply["error"]["code"]) == (400, "invalid_request")
    # The subscription is still there: a cancel that names it works.
    await ws.send_json({"op": "cancel", "sub": name})
    assert await _recv(ws) == {"op": "cancelled", "sub": name}
    await ws.close()


@pytest.mark.parametrize("held", ["1.t", [1], ["x" * 201], ["1.t", "2.t", "3.t"]])
async def test_held_must_be_a_short_list_of_receipts(client: Client, held: Any) -> None:
    """At most prefetch (2 here) strings: what a re-subscription still holds."""
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    ws = await client.ws_connect("/v1/channel")
    frame = {"op": "subscribe", "sub": "s", "queue": "jobs", "prefetch": 2, "held": held}
    await ws.send_json(frame)
    reply = await _recv(ws)
    assert reply["op"] == "error"
    assert (reply["status"], reply["error"]["code"]) == (400, "invalid_request")
    await ws.send_json({**frame, "held": ["1.t", "2.t"]})  # well formed: subscribed
    assert await _recv(ws) == {"op": "subscribed", "sub": "s"}
    await ws.close()
