"""Limits on what one client can hold: body size before reading, body time, bodies in total,
idle connections; and every limit is a documented flag."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from node.app import BODY_BUDGET, make_app
from node.config import Limits, limit_flag, parse_config
from tests.unit.test_node_app import FakeRaft, node_config

README = Path(__file__).resolve().parents[2] / "README.md"
NODE_ARGS = ["--id", "n1", "--data-dir", "d", "--raft", "127.0.0.1:1", "--http", "127.0.0.1:2"]


@pytest.fixture
async def server(fake: FakeRaft, tmp_path: Path) -> AsyncIterator[TestServer]:
    limits = Limits(max_body_bytes=4096, max_body_buffer_bytes=1000, body_timeout_s=0.3)
    test_server = TestServer(make_app(fake, node_config(fake, tmp_path, limits)))
    await test_server.start_server(keepalive_timeout=0.3, lingering_time=0.1)
    yield test_server
    await test_server.close()


async def _connect(server: TestServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert server.port is not None
    return await asyncio.open_connection("127.0.0.1", server.port)


def _head(path: str, content_length: int) -> bytes:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    body = orjson.loads(await reader.readexactly(int(headers["content-length"])))
    return int(lines[0].split()[1]), body


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await reader.read(1) == b""


async def _request(
    server: TestServer, head: bytes, body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    reader, writer = await _connect(server)
    writer.write(head + body)
    await writer.drain()
    try:
        return await _response(reader)
    finally:
        writer.close()


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(server: TestServer) -> None:
    reader, writer = await _connect(server)
    writer.write(_head("/v1/queues/q", 10**9))
    await writer.drain()
    status, body = await _response(reader)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert await _closed(reader)
    writer.close()


async def test_a_body_that_does_not_arrive_in_time_is_408(server: TestServer) -> None:
    reader, writer = await _connect(server)
    writer.write(_head("/v1/queues/q", 100) + b'{"visibility')
    await writer.drain()
    status, body = await _response(reader)
    assert (status, body["error"]["code"]) == (408, "request_timeout")
    assert await _closed(reader)
    writer.close()
    assert await _request(server, _get("/v1/queues")) == (200, {"queues": []})


async def test_bodies_in_flight_share_one_budget(server: TestServer) -> None:
    slow_reader, slow_writer = await _connect(server)
    declared = 800
    slow_writer.write(_head("/v1/queues/a", declared) + b"{")
    await slow_writer.drain()
    # The slow body holds 800 of the 1000 budget bytes until it completes.
    budget = server.app[BODY_BUDGET]
    async with asyncio.timeout(10):
        while budget.reserved_bytes < declared:
            await asyncio.sleep(0.005)
    body = orjson.dumps({"visibility_timeout": 5}).ljust(300)
    status, answer = await _request(server, _head("/v1/queues/b", len(body)), body)
    assert (status, answer["error"]["code"]) == (503, "overloaded")
    slow_writer.write(b" " * (declared - 2) + b"}")
    await slow_writer.drain()
    assert (await _response(slow_reader))[0] == 201
    slow_writer.close()
    assert (await _request(server, _head("/v1/queues/b", len(body)), body))[0] == 201
    assert budget.reserved_bytes == 0


async def test_a_connection_without_a_complete_request_head_is_closed(
    server: TestServer,
) -> None:
    reader, writer = await _connect(server)
    writer.write(b"GET /v1/queues HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), timeout=30) == b""
    writer.close()


def test_every_limit_is_a_flag_and_documented() -> None:
    readme = README.read_text()
    for limit in dataclasses.fields(Limits):
        flag = limit_flag(limit.name)
        assert f"`{flag}`" in readme, f"README does not document {flag}"
        config = parse_config([*NODE_ARGS, flag, "7"])
        assert getattr(config.limits, limit.name) == 7
    assert "`--max-pending-commands`" in readme


def test_a_limit_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config([*NODE_ARGS, "--max-batch", "0"])
    assert "--max-batch must be positive" in capsys.readouterr().err


def test_addresses_need_a_port_of_ascii_digits_in_range(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for flag, wrong in (("--raft", "h:²"), ("--http", "h:0"), ("--peers", "a:1,b:99999")):
        with pytest.raises(SystemExit):
            parse_config([*NODE_ARGS, flag, wrong])
        assert "port of 1-65535" in capsys.readouterr().err


def test_election_timeout_flag(capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config([*NODE_ARGS, "--election-timeout", "0.5,1.5"])
    assert (config.raft.election_timeout_min_s, config.raft.election_timeout_max_s) == (0.5, 1.5)
    for wrong in ("1", "0.5,0.2", "a,b", "0,1"):
        with pytest.raises(SystemExit):
            parse_config([*NODE_ARGS, "--election-timeout", wrong])
    assert "expected" in capsys.readouterr().err
