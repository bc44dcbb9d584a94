"""Client behaviour against an in-process fake of the v1 API.

The fake nodes run in a background thread with their own event loop, so the same
servers serve both the blocking ``Client`` and the ``AsyncClient`` under test.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import itertools
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web

from raftmq import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    Message,
    NotFound,
    QueueNotFound,
    RaftMQError,
    ReceivedMessage,
    Unavailable,
)
from raftmq.client import (
    ELECTION_POLL_FOR,
    ELECTION_POLL_MAX,
    ELECTION_POLL_MIN,
    AckResult,
    NackResult,
    _Attempts,
    _Retry,
    _retry_after,
)

T = TypeVar("T")


# ------------------------------------------------------------------ the fake


def error(status: int, code: str, message: str) -> tuple[int, Any]:
    return status, {"error": {"code": code, "message": message}}


class FakeBroker:
    """Just enough queue semantics (shared by all fake nodes) to exercise a client."""

    def __init__(self) -> None:
        self.queues: dict[str, dict[str, Any]] = {}
        self.seen_ids: set[str] = set()
        self.receipts = itertools.count(1)
        self.leader: FakeNode | None = None
        # False: a node of a version without POST /v1/messages (404 not_found).
        self.multi_queue_publish = True

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/healthz":
            return 200, {"status": "ok"}
        if method == "GET" and path == "/v1/cluster":
            lead = self.leader
            return 200, {
                "node_id": "n1",
                "role": "leader",
                "leader": None if lead is None else {"id": lead.name, "http": lead.url},
                "term": 3,
                "commit_index": 10,
                "applied_index": 10,
                "last_log_index": 10,
                "digest": "abc",
                "members": [{"id": "n1", "raft": "127.0.0.1:1", "http": "x", "state": "voter"}],
            }
        if method == "GET" and path == "/v1/queues":
            return 200, {"queues": [self.stats(n) for n in sorted(self.queues)]}
        if method == "POST" and path == "/v1/messages" and self.multi_queue_publish:
            results: list[dict[str, Any]] = []
            for group in body["publishes"]:
                queue = group["queue"]
                answer = self.handle(method, f"/v1/queues/{queue}/messages", group)
                if answer[0] == 200:
                    results.append({"queue": queue, "ids": answer[1]["ids"]})
                else:
                    results.append({"queue": queue, "status": answer[0], **answer[1]})
            return 200, {"results": results}
        m = re.fullmatch(r"/v1/queues/([A-Za-z0-9._-]+)(/[a-z]+)?", path)
        if m is None:
            return error(404, "not_found", "no such route")
        name, action = m.group(1), m.group(2) or ""
        if method == "PUT" and not action:
            config = dict(body or {})
            if name in self.queues:
                if self.queues[name]["config"] != config:
                    return error(409, "queue_exists_different", f"queue '{name}' differs")
                return 200, {"queue": name, "config": config}
            self.queues[name] = {"config": config, "ready": [], "leased": {}}
            return 201, {"queue": name, "config": config}
        q = self.queues.get(name)
        if q is None:
            return error(404, "queue_not_found", f"queue '{name}' does not exist")
        if method == "GET" and not action:
            return 200, self.stats(name)
        if method == "DELETE" and not action:
            del self.queues[name]
            return 204, None
        if method == "POST" and action == "/purge":
            n = len(q["ready"])
            q["ready"].clear()
            return 200, {"purged": n}
        if method == "POST" and action == "/messages":
            ids = []
            for msg in body["messages"]:
                ids.append(msg["id"])
                if msg["id"] not in self.seen_ids:
                    self.seen_ids.add(msg["id"])
                    q["ready"].append({**msg, "deliveries": 0, "published_at": 1700000000000})
            return 200, {"ids": ids}
        if method == "POST" and action == "/receive":
            limit = body.get("max", 1)
            if not 1 <= limit <= 1000:
                return error(400, "invalid_request", "max must be 1..1000")
            out: list[dict[str, Any]] = []
            while q["ready"] and len(out) < limit:
                msg = q["ready"].pop(0)
                msg["deliveries"] += 1
                receipt = f"r{next(self.receipts)}"
                q["leased"][receipt] = msg
                wire = {k: v for k, v in msg.items() if k != "delay"}
                out.append({**wire, "headers": msg.get("headers", {}), "receipt": receipt})
            return 200, {"messages": out}
        if method == "POST" and action in ("/ack", "/nack"):
            done, stale = 0, []
            for receipt in body["receipts"]:
                msg = q["leased"].pop(receipt, None)
                if msg is None:
                    stale.append(receipt)
                    continue
                done += 1
                if action == "/nack":
                    q["ready"].append(msg)
            key = "acked" if action == "/ack" else "requeued"
            return 200, {key: done, "stale": stale}
        return error(405, "method_not_allowed", "method not allowed")

    def stats(self, name: str) -> dict[str, Any]:
        q = self.queues[name]
        return {
            "name": name,
            "config": q["config"],
            "ready": len(q["ready"]),
            "in_flight": len(q["leased"]),
            "delayed": 0,
            "total": len(q["ready"]) + len(q["leased"]),
            "published_total": 0,
            "delivered_total": 0,
            "acked_total": 0,
            "dead_lettered_total": 0,
        }


@dataclass
class Seen:
    method: str
    path: str
    body: bytes
    peer: Any

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class Fault:
    """A scripted answer: ``after_commit`` applies the request first, like a lost reply."""

    status: int
    code: str
    retry_after: str | None = None
    after_commit: bool = False
    path_contains: str = ""


@dataclass
class FakeNode:
    name: str
    broker: FakeBroker
    url: str = ""
    redirect_to: FakeNode | None = None
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    always_unavailable: bool = False

    def fail(self, count: int = 1, **kw: Any) -> None:
        self.faults.extend(Fault(**kw) for _ in range(count))

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(Seen(request.method, request.path_qs, raw, peer))
        if self.always_unavailable:
            return _response(*error(503, "no_leader", "no leader"), {"Retry-After": "1"})
        if self.redirect_to is not None:
            return web.Response(
                status=307,
                headers={"Location": self.redirect_to.url + request.path_qs},
                body=orjson.dumps({"error": {"code": "not_leader", "message": "elsewhere"}}),
                content_type="application/json",
            )
        fault = next((f for f in self.faults if f.path_contains in request.path), None)
        body = orjson.loads(raw) if raw else None
        if fault is not None:
            self.faults.remove(fault)
            if fault.after_commit:
                self.broker.handle(request.method, request.path, body)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return _response(*error(fault.status, fault.code, "scripted failure"), headers)
        return _response(*self.broker.handle(request.method, request.path, body))


def _response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class FakeCluster:
    """Fake nodes served from one background thread and event loop."""

    def __init__(self) -> None:
        self.broker = FakeBroker()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def node(self, name: str) -> FakeNode:
        """A node serving the shared broker (the first one made is the leader)."""
        node = FakeNode(name, self.broker)
        node.url = self._call(self._serve(node))
        if self.broker.leader is None:
            self.broker.leader = node
        return node

    async def _serve(self, node: FakeNode) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", node.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        site = web.SockSite(runner, sock)
        await site.start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def close(self) -> None:
        async def cleanup() -> None:
            for runner in self.runners:
                await runner.cleanup()

        self._call(cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def dead_url() -> str:
    """A URL where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -------------------------------------------------------------- fixtures


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster()
    try:
        yield cluster
    finally:
        cluster.close()


AnyClient = Client | AsyncClient
MakeClient = Callable[..., AnyClient]


@pytest.fixture(params=["sync", "async"])
async def make_client(
    request: pytest.FixtureRequest, fake: FakeCluster
) -> AsyncIterator[MakeClient]:
    """Builds Client or AsyncClient (by param) and closes them all afterwards."""
    made: list[AnyClient] = []

    def make(urls: list[str] | str, **kw: Any) -> AnyClient:
        kw.setdefault("retry_deadline", 5.0)
        kw.setdefault("timeout", 5.0)
        client: AnyClient = (
            Client(urls, **kw) if request.param == "sync" else AsyncClient(urls, **kw)
        )
        made.append(client)
        return client

    yield make
    for client in made:
        if isinstance(client, AsyncClient):
            await client.close()
        else:
            client.close()


async def call(client: AnyClient, method: str, *args: Any, **kw: Any) -> Any:
    """Calls ``method`` on either client flavour (the fake lives in another thread)."""
    result = getattr(client, method)(*args, **kw)
    if inspect.isawaitable(result):
        result = await result
    return result


# ----------------------------------------------------------------- tests


async def test_redirect_is_followed_with_the_same_body(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    leader = fake.node("leader")
    follower = fake.node("follower")
    follower.redirect_to = leader
    fake.broker.queues["q"] = {"config": {}, "ready": [], "leased": {}}
    client = make_client(follower.url)

    msg_id = await call(client, "publish", "q", "hello", headers={"k": "v"}, id="m1")

    assert msg_id == "m1"
    assert [s.method for s in follower.seen] == ["POST"]
    assert [s.method for s in leader.seen] == ["POST"]
    assert leader.seen[0].path == follower.seen[0].path == "/v1/queues/q/messages"
    assert leader.seen[0].body == follower.seen[0].body
    assert leader.seen[0].json == {
        "messages": [{"body": "hello", "headers": {"k": "v"}, "id": "m1"}]
    }

    # The leader is remembered: the next call skips the follower.
    await call(client, "publish", "q", "again")
    assert len(follower.seen) == 1
    assert len(leader.seen) == 2


async def test_503_with_retry_after_moves_to_the_next_url(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    leader = fake.node("leader")
    other = fake.node("other")
    other.fail(status=503, code="no_leader", retry_after="1")
    client = make_client([other.url, leader.url])

    started = time.monotonic()
    queues = await call(client, "queues")
    elapsed = time.monotonic() - started

    assert queues == []
    assert len(other.seen) == 1
    assert len(leader.seen) == 1
    assert elapsed >= 0.9, "Retry-After: 1 should be honoured"


async def test_no_leader_is_polled_quickly(
    fake: FakeCluster, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 no_leader with Retry-After: 0 (an election) is retried every 20-40 ms."""
    leader = fake.node("leader")
    leader.fail(3, status=503, code="no_leader", retry_after="0")
    pauses: list[float] = []
    failed = _Attempts.failed

    def recording(self: _Attempts, r: _Retry) -> float:
        pause = failed(self, r)
        pauses.append(pause)
        return pause

    monkeypatch.setattr(_Attempts, "failed", recording)
    client = make_client([leader.url])

    assert await call(client, "queues") == []
    assert len(leader.seen) == 4
    assert len(pauses) == 3
    assert all(ELECTION_POLL_MIN <= p <= ELECTION_POLL_MAX for p in pauses), pauses


def test_no_leader_polling_gives_way_to_backoff_and_to_a_longer_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def no_leader(retry_after: float | None) -> _Retry:
        err = RaftMQError("no leader", status=503, code="no_leader")
        return _Retry(err, answered=True, ambiguous=False, retry_after=retry_after)

    attempts = _Attempts(["http://a", "http://b"], None, budget=60.0)
    early = []
    for _ in range(6):
        early.append(attempts.failed(no_leader(0.0)))
        clock[0] += early[-1]
    assert all(ELECTION_POLL_MIN <= p <= ELECTION_POLL_MAX for p in early), early
    # Leaderless for longer than an election takes: exponential backoff again.
    clock[0] += ELECTION_POLL_FOR
    later = [attempts.failed(no_leader(0.0)) for _ in range(8)]
    assert max(later) > ELECTION_POLL_MAX, later
    # An explicit, longer Retry-After from the server is honoured.
    assert _Attempts(["http://a"], None, budget=60.0).failed(no_leader(1.0)) >= 1.0
    # Any other 503 keeps the exponential backoff (an unknown outcome is not an election).
    other = _Retry(RaftMQError("x", status=503, code="overloaded"), answered=True, ambiguous=True)
    fresh = _Attempts(["http://a"], None, budget=60.0)
    assert [fresh.failed(other) for _ in range(6)][-1] > ELECTION_POLL_MAX


async def test_connection_refused_node_is_skipped(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    leader = fake.node("leader")
    client = make_client([dead_url(), leader.url])

    info = await call(client, "cluster")

    assert info["leader"]["id"] == "leader"
    assert len(leader.seen) == 1


async def test_retried_publish_resends_the_same_generated_ids(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    first = fake.node("first")
    second = fake.node("second")
    fake.broker.queues["q"] = {"config": {}, "ready": [], "leased": {}}
    # The first node applies the publish but its answer is lost.
    first.fail(status=503, code="unknown_outcome", retry_after="0", after_commit=True)
    client = make_client([first.url, second.url])

    ids = await call(
        client,
        "publish_batch",
        "q",
        [Message("a"), {"body": "b", "headers": {"x": "1"}}, Message(b"\x00c", id="given")],
    )

    sent_first = [m["id"] for m in first.seen[0].json["messages"]]
    sent_second = [m["id"] for m in second.seen[0].json["messages"]]
    assert ids == sent_first == sent_second
    assert ids[2] == "given"
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[:2])
    assert len(fake.broker.queues["q"]["ready"]) == 3, "the retry must not enqueue twice"


async def test_single_publish_retry_on_same_node_keeps_its_id(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    leader = fake.node("leader")
    fake.broker.queues["q"] = {"config": {}, "ready": [], "leased": {}}
    leader.fail(status=503, code="timeout", retry_after="0", after_commit=True)
    client = make_client(leader.url)

    msg_id = await call(client, "publish", "q", "once")

    assert [s.json["messages"][0]["id"] for s in leader.seen] == [msg_id, msg_id]
    assert len(fake.broker.queues["q"]["ready"]) == 1


async def test_404_raises_queue_not_found_at_once(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    leader = fake.node("leader")
    client = make_client(leader.url)

    with pytest.raises(QueueNotFound) as info:
        await call(client, "queue", "missing")

    assert info.value.status == 404
    assert info.value.code == "queue_not_found"
    assert info.value.message == "queue 'missing' does not exist"
    assert str(info.value) == "queue_not_found: queue 'missing' does not exist"
    assert len(leader.seen) == 1, "4xx must not be retried"


async def test_conflict_and_bad_request_mapping(fake: FakeCluster, make_client: MakeClient) -> None:
    leader = fake.node("leader")
    client = make_client(leader.url)
    created = await call(client, "declare_queue", "q", visibility_timeout=30, max_length=None)
    assert created == {"queue": "q", "config": {"visibility_timeout": 30}}
    assert await call(client, "declare_queue", "q", visibility_timeout=30) == created

    with pytest.raises(Conflict) as conflict:
        await call(client, "declare_queue", "q", visibility_timeout=5)
    assert (conflict.value.status, conflict.value.code) == (409, "queue_exists_different")

    with pytest.raises(BadRequest) as bad:
        await call(client, "receive", "q", max=0)
    assert (bad.value.status, bad.value.code) == (400, "invalid_request")

    with pytest.raises(BadRequest) as invalid:
        await call(client, "queue", "no spaces/allowed")
    assert invalid.value.code == "invalid_name"
    assert len(leader.seen) == 4, "an invalid name is rejected before any request"


async def test_bytes_body_round_trips_as_base64(fake: FakeCluster, make_client: MakeClient) -> None:
    leader = fake.node("leader")
    client = make_client(leader.url)
    await call(client, "declare_queue", "bin")
    payload = bytes(range(256))

    await call(client, "publish", "bin", payload)
    await call(client, "publish", "bin", "text")
    got: list[ReceivedMessage] = await call(client, "receive", "bin", max=10)

    wire = leader.seen[1].json["messages"][0]
    assert wire["encoding"] == "base64"
    assert base64.b64decode(wire["body"]) == payload
    assert [m.body for m in got] == [payload, "text"]
    assert got[0].deliveries == 1
    assert got[0].published_at == 1700000000000


async def test_receive_ack_nack_cycle(fake: FakeCluster, make_client: MakeClient) -> None:
    leader = fake.node("leader")
    client = make_client(leader.url)
    await call(client, "declare_queue", "q")
    await call(client, "publish_batch", "q", [Message("1"), Message("2")])

    got: list[ReceivedMessage] = await call(client, "receive", "q", max=5, wait=0.5)
    assert [m.body for m in got] == ["1", "2"]
    assert await call(client, "ack", "q", [got[0].receipt]) == AckResult(1, [])
    assert await call(client, "ack", "q", got[0].receipt) == AckResult(0, [got[0].receipt])
    assert await call(client, "nack", "q", [got[1].receipt], delay=1) == NackResult(1, [])
    assert leader.seen[-1].json == {"receipts": [got[1].receipt], "delay": 1}
    assert (await call(client, "queue", "q"))["ready"] == 1
    assert await call(client, "purge", "q") == 1
    assert await call(client, "publish_batch", "q", []) == []
    assert await call(client, "health") == {"status": "ok"}


async def test_gives_up_with_unavailable_after_the_deadline(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    a, b = fake.node("a"), fake.node("b")
    a.always_unavailable = b.always_unavailable = True
    client = make_client([a.url, b.url], retry_deadline=0.3)

    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await call(client, "queues")

    assert not isinstance(info.value, ConnectionFailed)
    assert info.value.code == "no_leader"
    assert isinstance(info.value.last_error, RaftMQError)
    assert info.value.last_error.status == 503
    assert time.monotonic() - started < 3.0


async def test_gives_up_with_connection_failed_when_nobody_listens(
    make_client: MakeClient,
) -> None:
    urls = [dead_url(), dead_url()]
    client = make_client(urls, retry_deadline=0.2)

    with pytest.raises(ConnectionFailed) as info:
        await call(client, "cluster")

    assert info.value.urls == urls
    assert info.value.message == f"no node answered at {urls[0]}, {urls[1]}"


async def test_redirect_loop_is_bounded(fake: FakeCluster, make_client: MakeClient) -> None:
    a, b = fake.node("a"), fake.node("b")
    a.redirect_to, b.redirect_to = b, a
    client = make_client(a.url, retry_deadline=0.0)

    with pytest.raises(Unavailable) as info:
        await call(client, "purge", "q")

    assert info.value.code == "too_many_redirects"
    assert len(a.seen) + len(b.seen) == 6


async def test_delete_retried_after_a_lost_reply_succeeds(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    leader = fake.node("leader")
    fake.broker.queues["q"] = {"config": {}, "ready": [], "leased": {}}
    leader.fail(status=503, code="unknown_outcome", retry_after="0", after_commit=True)
    client = make_client(leader.url)

    assert await call(client, "delete_queue", "q") is None
    assert "q" not in fake.broker.queues
    with pytest.raises(QueueNotFound):
        await call(client, "delete_queue", "q")


def test_delete_user_retried_after_a_lost_reply_succeeds(fake: FakeCluster) -> None:
    leader = fake.node("leader")  # the fake knows no users: a retried delete finds none
    leader.fail(status=503, code="unknown_outcome", retry_after="0", path_contains="/v1/users")
    with Client(leader.url, retry_deadline=5.0) as client:
        client.delete_user("alice")  # before: NotFound, though the first try deleted it
        with pytest.raises(NotFound):
            client.delete_user("alice")


def test_sync_client_reuses_one_connection_per_node(fake: FakeCluster) -> None:
    leader = fake.node("leader")
    with Client(leader.url) as client:
        for _ in range(5):
            client.queues()
    assert len({s.peer for s in leader.seen}) == 1


def test_retry_after_is_capped() -> None:
    assert _retry_after("1") == 1.0
    assert _retry_after("3600") == 2.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert _retry_after(None) is None


def test_every_error_class_is_exported() -> None:
    """``except raftmq.Forbidden`` and ``from raftmq.errors import *`` see them all."""
    import raftmq
    import raftmq.errors

    classes = {
        name
        for name, value in vars(raftmq.errors).items()
        if isinstance(value, type) and issubclass(value, RaftMQError)
    }
    assert classes <= set(raftmq.errors.__all__)
    assert classes <= set(raftmq.__all__)


def test_urls_are_normalised() -> None:
    with Client("127.0.0.1:1, http://127.0.0.1:2/") as client:
        assert client.urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    with pytest.raises(ValueError):
        Client([])
    with pytest.raises(ValueError):
        Client("ftp://x")


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A node that accepts connections and never answers (paused, or cut off mid-way)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


async def test_a_node_that_timed_out_is_not_the_next_calls_first_stop(
    fake: FakeCluster, make_client: MakeClient, silent_url: str
) -> None:
    leader = fake.node("leader")
    client = make_client([silent_url, leader.url], timeout=0.3, retry_deadline=0.1)

    with pytest.raises(Unavailable):
        await call(client, "queues")  # the deadline runs out at the silent node
    assert leader.seen == []
    assert await call(client, "queues") == []
    assert len(leader.seen) == 1


async def test_a_silent_node_does_not_hold_a_call_past_its_retry_deadline(
    fake: FakeCluster, make_client: MakeClient, silent_url: str
) -> None:
    leader = fake.node("leader")
    client = make_client([silent_url, leader.url], timeout=60.0, retry_deadline=0.5)

    started = time.monotonic()
    with pytest.raises(Unavailable):
        await call(client, "queues")
    # Before, the silent node held the call for the whole 60 s timeout.
    assert time.monotonic() - started < 30.0


class DyingNode:
    """Answers its first request; applies the second, then dies before answering it."""

    def __init__(self, apply: Callable[[], object]) -> None:
        self.apply = apply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _read_head(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            self._read_head(conn)
            body = b'{"queues": []}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self._read_head(conn)
            self.apply()
            self.sock.close()  # gone: the redial is refused


async def test_delete_whose_node_died_after_applying_it_succeeds(
    fake: FakeCluster, make_client: MakeClient
) -> None:
    fake.broker.queues["q"] = {"config": {}, "ready": [], "leased": {}}
    dying = DyingNode(lambda: fake.broker.queues.pop("q"))
    survivor = fake.node("survivor")
    client = make_client([dying.url, survivor.url])
    assert await call(client, "queues") == []  # a kept-alive connection to the dying node

    # The connection drops after the delete went out, the redial is refused and the
    # next node has no such queue: the delete did happen, and is not an error.
    assert await call(client, "delete_queue", "q") is None
    assert "q" not in fake.broker.queues
    dying.thread.join(timeout=5)
