"""Abuse: 200 concurrent clients mixing oversized, malformed, slow and valid requests for 30 s.

The node under fire stays up with bounded memory, every bad request gets its
error, and every publish that was acknowledged is in the queue afterwards.
"""

import asyncio
import base64
import collections
import itertools
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

from raftmq import Client
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import NodeProc

CLIENTS = 200
DURATION_S = 30.0
# Small limits, so oversized bodies are refused without moving much data over loopback.
MAX_BODY = 64 * 1024
MAX_MESSAGE = 16 * 1024
# No node may grow past this while the flood runs (an idle node is ~80 MiB).
RSS_BOUND_BYTES = 400 << 20
NODE_ARGS = [
    "--max-body-bytes",
    str(MAX_BODY),
    "--max-message-bytes",
    str(MAX_MESSAGE),
    "--body-timeout",
    "1",
    "--idle-timeout",
    "2",
]
QUEUE = "flood"

Attack = Callable[[aiohttp.ClientSession, str], Awaitable[str]]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def _status(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: object
) -> tuple[int, str]:
    async with session.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
        body = await resp.read()
        code = ""
        if resp.content_type == "application/json" and resp.status >= 400:
            code = orjson.loads(body)["error"]["code"]
        return resp.status, code


class Flood:
    def __init__(self, leader: str, follower: str) -> None:
        self.leader = leader
        self.follower = follower
        self.acked: set[str] = set()
        self.sent: set[str] = set()
        self.answers: collections.Counter[tuple[str, int, str]] = collections.Counter()
        self.unexpected: list[str] = []

    def expect(self, kind: str, status: int, code: str, allowed: set[tuple[int, str]]) -> None:
        self.answers[(kind, status, code)] += 1
        # 503s are the node protecting itself (bodies in flight, proposer queue): allowed.
        if (status, code) not in allowed and status != 503:
            self.unexpected.append(f"{kind}: {status} {code}")

    async def valid_publish(self, session: aiohttp.ClientSession, base: str) -> None:
        ids = [uuid.uuid4().hex for _ in range(random.randint(1, 20))]
        body = {"messages": [{"body": f"m-{i}", "id": i} for i in ids]}
        self.sent.update(ids)
        try:
            status, code = await _status(
                session, "POST", f"{base}/v1/queues/{QUEUE}/messages", data=orjson.dumps(body)
            )
        except (aiohttp.ClientError, TimeoutError):
            return  # no answer: not acknowledged
        if status == 200:
            self.acked.update(ids)
        self.expect("valid", status, code, {(200, "")})

    async def bad(self, session: aiohttp.ClientSession, base: str, rng: random.Random) -> None:
        url = f"{base}/v1/queues/{QUEUE}/messages"
        kind = rng.choice(
            [
                "oversized_body",
                "declared_huge",
                "oversized_message",
                "malformed_json",
                "wrong_types",
                "bad_base64",
                "nul_name",
                "huge_numbers",
                "too_many_messages",
                "unknown_route",
                "slow_body",
            ]
        )
        expected: set[tuple[int, str]]
        headers: dict[str, str] = {}
        if kind == "oversized_body":
            data: object = os.urandom(MAX_BODY + 1024)
            expected = {(413, "body_too_large")}
        elif kind == "declared_huge":
            data = b'{"messages": []}'
            headers = {"Content-Length": str(10**12)}
            expected = {(413, "body_too_large")}
        elif kind == "oversized_message":
            data = orjson.dumps({"messages": [{"body": "x" * (MAX_MESSAGE + 1)}]})
            expected = {(413, "message_too_large")}
        elif kind == "malformed_json":
            data = rng.choice([b"{", b"\xff\xfe", b'{"messages": [}', b"null" * 100, b"[1,2"])
            expected = {(400, "invalid_json"), (400, "invalid_request")}
        elif kind == "wrong_types":
            data = rng.choice(
                [b'{"messages": 5}', b'{"messages": [5]}', b'{"messages": [{"body": {}}]}', b"[]"]
            )
            expected = {(400, "invalid_request")}
        elif kind == "bad_base64":
            data = b'{"messages": [{"body": "%%%not base64", "encoding": "base64"}]}'
            expected = {(400, "invalid_request")}
        elif kind == "nul_name":
            url = f"{base}/v1/queues/fl%00od/messages"
            data = b'{"messages": [{"body": "x"}]}'
            expected = {(400, "invalid_name")}
        elif kind == "huge_numbers":
            data = b'{"messages": [{"body": "x", "delay": 1' + b"0" * 400 + b"}]}"
            expected = {(400, "invalid_request"), (400, "invalid_json")}
        elif kind == "too_many_messages":
            data = orjson.dumps({"messages": [{"body": ""}] * 1001})
            expected = {(400, "invalid_request")}
        elif kind == "unknown_route":
            url = f"{base}/v1/{base64.b32encode(os.urandom(5)).decode()}"
            data = b"{}"
            expected = {(404, "not_found"), (405, "method_not_allowed")}
        else:
            await self.slow_body(self.leader)  # a follower redirects before reading a body
            return
        try:
            status, code = await _status(session, "POST", url, data=data, headers=headers)
        except (aiohttp.ClientError, TimeoutError):
            # A refused oversized body may close the connection before the client
            # finished sending it: that is the node's answer too.
            self.answers[(kind, 0, "closed")] += 1
            return
        self.expect(kind, status, code, expected)

    async def slow_body(self, base: str) -> None:
        """Headers and part of a body, then nothing: the node must give up (408), not wait."""
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"POST /v1/queues/{QUEUE}/messages HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
            # 307: two cores flooded by 200 clients can starve the leader's Raft thread
            # past an election timeout; the node this targets is then a follower, which
            # redirects before reading any body. Either way it did not wait for the body.
            self.expect("slow_body", int(head.split()[1]), "", {(408, ""), (307, "")})
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.unexpected.append(f"slow_body: {exc!r}")
        finally:
            writer.close()

    async def client(self, index: int, deadline: float) -> None:
        rng = random.Random(index)
        base = self.follower if index % 10 == 0 else self.leader
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for turn in itertools.count():
                if time.monotonic() >= deadline:
                    return
                if turn % 3 == 0:
                    await self.valid_publish(session, base)
                else:
                    await self.bad(session, base, rng)


def test_flood_of_bad_and_good_requests(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(extra_args=NODE_ARGS).start()
    leader = cluster.wait_leader()
    follower = cluster.follower()
    with Client([leader.url]) as client:
        client.declare_queue(QUEUE)
    flood = Flood(leader.url, follower.url)
    peak_rss: dict[str, int] = {}

    async def watch_memory(nodes: list[NodeProc], stop: asyncio.Event) -> None:
        while not stop.is_set():
            for node in nodes:
                assert node.process is not None and node.alive, f"{node.node_id} died"
                rss = _rss_bytes(node.process.pid)
                peak_rss[node.node_id] = max(peak_rss.get(node.node_id, 0), rss)
            await asyncio.sleep(0.2)

    async def run() -> None:
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_memory(cluster.members, stop))
        deadline = time.monotonic() + DURATION_S
        await asyncio.gather(*(flood.client(i, deadline) for i in range(CLIENTS)))
        stop.set()
        await watcher

    asyncio.run(run())

    assert all(node.alive for node in cluster.nodes), cluster.dump_logs()
    assert not flood.unexpected, collections.Counter(flood.unexpected).most_common(10)
    kinds = {kind for kind, _, _ in flood.answers}
    assert len(kinds) == 12, flood.answers  # every kind of request was sent and answered
    assert max(peak_rss.values()) < RSS_BOUND_BYTES, peak_rss
    assert len(flood.acked) > 1000, flood.answers
    assert cluster.leader() is not None

    received: set[str] = set()
    with Client([leader.url]) as client:
        assert client.queue(QUEUE)["total"] >= len(flood.acked)
        while batch := client.receive(QUEUE, max=1000):
            received.update(m.id for m in batch)
            client.ack(QUEUE, [m.receipt for m in batch])
    # Every acknowledged publish is there; anything else is a publish whose answer was lost.
    assert flood.acked <= received <= flood.sent
