"""Malformed input to the HTTP API: a 4xx with a JSON error, and nothing changed.

Each test is the reproduction of a defect found by probing the endpoints with
bad input (see also test_fuzz_parsers.py for the parsers on their own).
"""

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from node.app import BODY_BUDGET, make_app
from node.config import Limits
from tests.unit.test_node_app import FakeRaft, node_config

Client = TestClient[Any, Any]
# A guard against hanging forever, never what a test asserts.
GUARD_S = 10.0


@pytest.fixture
async def client(fake: FakeRaft, tmp_path: Path) -> AsyncIterator[Client]:
    limits = Limits(max_message_bytes=100, max_body_bytes=4096)
    async with TestClient(TestServer(make_app(fake, node_config(fake, tmp_path, limits)))) as c:
        yield c


async def _error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


async def _raw(client: Client, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send a request as bytes (headers aiohttp's client would refuse to send); status, body."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD_S)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        body = await reader.readexactly(int(headers["content-length"]))
        return int(lines[0].split()[1]), orjson.loads(body)
    finally:
        writer.close()


# -- authentication --------------------------------------------------------------


@pytest.mark.parametrize("token", [b"\xff\xfe", b"rmq_abc\xff", b"\xc3\xa9"])
async def test_a_token_that_is_not_ascii_is_401_not_500(client: Client, token: bytes) -> None:
    """Header bytes that are not UTF-8 reach the handler as lone surrogates (were a 500)."""
    resp = await client.post("/v1/users", json={"name": "admin", "admin": True})
    assert resp.status == 201
    status, body = await _raw(
        client,
        b"GET /v1/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + token
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert (status, body["error"]["code"]) == (401, "unauthorized")


# -- request bodies --------------------------------------------------------------


async def test_a_body_that_does_not_decode_is_400_and_changes_nothing(client: Client) -> None:
    """A Content-Encoding: gzip body that is not gzip (was a 500)."""
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    resp = await client.post(
        "/v1/queues/jobs/messages",
        data=b"this is not gzip",
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    await _error(resp, 400, "invalid_request")
    assert (await (await client.get("/v1/queues/jobs")).json())["total"] == 0


async def test_a_compressed_body_still_decodes(client: Client) -> None:
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    body = gzip.compress(orjson.dumps({"messages": [{"body": "a" * 50}]}))
    resp = await client.post(
        "/v1/queues/jobs/messages", data=body, headers={"Content-Encoding": "gzip"}
    )
    assert resp.status == 200
    assert (await (await client.get("/v1/queues/jobs")).json())["total"] == 1


async def test_a_compressed_body_reserves_the_largest_body_it_can_inflate_to(
    fake: FakeRaft, tmp_path: Path
) -> None:
    """A few declared bytes of gzip can inflate to the body limit: the budget counts that."""
    limits = Limits(max_body_bytes=4096, max_body_buffer_bytes=10_000)
    app = make_app(fake, node_config(fake, tmp_path, limits))
    async with TestClient(TestServer(app)) as client:
        assert client.port is not None
        compressed = gzip.compress(orjson.dumps({"messages": [{"body": "a" * 3000}]}))
        _, writer = await asyncio.open_connection("127.0.0.1", client.port)
        head = (
            f"POST /v1/queues/jobs/messages HTTP/1.1\r\nHost: x\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(compressed)}\r\n\r\n"
        ).encode()
        writer.write(head + compressed[:10])  # the rest never comes
        await writer.drain()
        budget = app[BODY_BUDGET]
        async with asyncio.timeout(GUARD_S):
            while budget.reserved_bytes == 0:
                await asyncio.sleep(0.01)
        assert budget.reserved_bytes == limits.max_body_bytes
        writer.close()


# -- messages --------------------------------------------------------------------


async def test_the_message_size_limit_is_in_bytes(client: Client) -> None:
    """100 'é' are 100 characters but 200 bytes: over --max-message-bytes 100 (was accepted)."""
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    for path, key in (("/v1/queues/jobs/messages", "messages"),):
        resp = await client.post(path, json={key: [{"body": "é" * 100}]})
        await _error(resp, 413, "message_too_large")
        resp = await client.post(path, json={key: [{"body": "é" * 50}]})
        assert resp.status == 200
    assert (await client.put("/v1/streams/log", json={})).status == 201
    resp = await client.post("/v1/streams/log/records", json={"records": [{"body": "€" * 34}]})
    await _error(resp, 413, "message_too_large")
    assert (await (await client.get("/v1/queues/jobs")).json())["total"] == 1
    assert (await (await client.get("/v1/streams/log")).json())["records"] == 0


# -- cluster membership ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raft", "http"),
    [
        ("10.0.0.9:²", "http://10.0.0.9:7200"),  # isdigit() is true, int() refuses it
        ("10.0.0.9:0", "http://10.0.0.9:7200"),
        ("10.0.0.9:70000", "http://10.0.0.9:7200"),
        (":7100", "http://10.0.0.9:7200"),
        ("a host:7100", "http://10.0.0.9:7200"),
        ("10.0.0.9:7100", "http://10.0.0.9:7200\r\nX-Injected: 1"),
        ("10.0.0.9:7100", "http://a host:7200"),
        ("10.0.0.9:7100", "http://"),
        ("10.0.0.9:7100", "http://10.0.0.9:99999"),
        ("10.0.0.9:7100", "http://10.0.0.9:7200/?x"),
        ("10.0.0.9:7100", "http://hôte:7200"),
    ],
)
async def test_a_member_with_a_bad_address_is_refused_before_anything_changes(
    client: Client, fake: FakeRaft, raft: str, http: str
) -> None:
    """Was 201 with the address registered (replicated) and, in a real cluster, a 500 from
    pysyncobj or a URL that broke every redirect to that node."""
    resp = await client.post("/v1/cluster/members", json={"id": "n9", "raft": raft, "http": http})
    await _error(resp, 400, "invalid_request")
    assert fake.added == []
    assert raft not in fake.read(lambda store: store.nodes())


async def test_a_good_member_is_still_added(client: Client, fake: FakeRaft) -> None:
    for raft, http in (
        ("10.0.0.9:7100", "https://node-9.example:7200/"),
        ("[::1]:7101", "http://[::1]:7201"),
    ):
        body = {"id": "n9", "raft": raft, "http": http}
        assert (await client.post("/v1/cluster/members", json=body)).status == 201
    nodes = fake.read(lambda store: store.nodes())
    assert nodes["10.0.0.9:7100"]["http"] == "https://node-9.example:7200"
    assert fake.added == ["10.0.0.9:7100", "[::1]:7101"]
