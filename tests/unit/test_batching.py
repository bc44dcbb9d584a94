"""Client-side coalescing of publish and ack calls (raftmq.batching).

Against the in-process fake API of test_client, plus unit tests of the
:class:`Coalescer` with a scripted ``send``. No timing assertions: where a test
needs "promptly", a generous ``wait_for`` guards against a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from raftmq import AsyncClient, BadRequest, Conflict, QueueNotFound
from raftmq.batching import Batcher, Coalescer
from raftmq.client import AckResult
from tests.unit.test_client import FakeCluster, FakeNode


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[AsyncClient]]:
    made: list[AsyncClient] = []
    yield made
    for client in made:
        await client.close()


def _client(made: list[AsyncClient], urls: list[str] | str, **kw: Any) -> AsyncClient:
    client = AsyncClient(urls, timeout=5.0, retry_deadline=5.0, **kw)
    made.append(client)
    return client


def _queue(fake: FakeCluster, name: str = "q") -> None:
    fake.broker.queues[name] = {"config": {}, "ready": [], "leased": {}}


def _publishes(node: FakeNode) -> list[list[str]]:
    """Message ids of every single-queue publish request the node saw, per request."""
    return [
        [m["id"] for m in s.json["messages"]]
        for s in node.seen
        if s.path.startswith("/v1/queues/") and s.path.endswith("/messages") and s.method == "POST"
    ]


def _shared(node: FakeNode) -> list[dict[str, list[str]]]:
    """Message ids per queue of every multi-queue publish request the node saw."""
    return [
        {g["queue"]: [m["id"] for m in g["messages"]] for g in s.json["publishes"]}
        for s in node.seen
        if s.path == "/v1/messages"
    ]


# ------------------------------------------------------------- through the client


async def test_concurrent_publishes_become_few_requests(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("leader")
    _queue(fake)
    client = _client(clients, leader.url)

    ids = await asyncio.gather(*(client.publish("q", f"body {i}") for i in range(100)))

    requests = _publishes(leader)
    assert 1 <= len(requests) <= 3, "100 concurrent publishes should share a request or two"
    assert sum(len(r) for r in requests) == 100
    assert len(set(ids)) == 100, "every caller gets its own id"
    assert sorted(ids) == sorted(i for r in requests for i in r)
    bodies = [m["body"] for m in fake.broker.queues["q"]["ready"]]
    assert sorted(bodies) == sorted(f"body {i}" for i in range(100))


async def test_each_caller_gets_its_own_given_id(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("leader")
    _queue(fake)
    client = _client(clients, leader.url)

    ids = await asyncio.gather(
        *(client.publish("q", b"\x00bin", id=f"m{i}", headers={"n": str(i)}) for i in range(50))
    )

    assert ids == [f"m{i}" for i in range(50)]
    ready = fake.broker.queues["q"]["ready"]
    assert {m["id"]: m["headers"]["n"] for m in ready} == {f"m{i}": str(i) for i in range(50)}
    assert all(m["encoding"] == "base64" for m in ready)


async def test_a_retried_batch_resends_the_same_ids(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    first = fake.node("first")
    second = fake.node("second")
    _queue(fake)
    # The first node commits the batch but its answer is lost.
    first.fail(status=503, code="unknown_outcome", retry_after="0", after_commit=True)
    client = _client(clients, [first.url, second.url])

    ids = await asyncio.gather(*(client.publish("q", f"m{i}") for i in range(40)))

    sent_first = _publishes(first)
    sent_second = _publishes(second)
    assert len(sent_first) == 1 and len(sent_second) == 1
    assert sent_first[0] == sent_second[0], "the retry re-sends the batch with the same ids"
    assert sorted(ids) == sorted(sent_first[0])
    assert len(fake.broker.queues["q"]["ready"]) == 40, "the retry must not enqueue twice"


async def test_linger_zero_sends_every_publish_alone(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("leader")
    _queue(fake)
    client = _client(clients, leader.url, linger_ms=0)

    ids = await asyncio.gather(*(client.publish("q", f"m{i}") for i in range(10)))

    requests = _publishes(leader)
    assert len(requests) == 10
    assert all(len(r) == 1 for r in requests)
    assert sorted(ids) == sorted(r[0] for r in requests)


async def test_a_lone_publish_does_not_wait_for_the_linger(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("leader")
    _queue(fake)
    # An hour of linger: only the idle-pipe rule can send this call.
    client = _client(clients, leader.url, linger_ms=3_600_000)

    msg_id = await asyncio.wait_for(client.publish("q", "alone", id="solo"), 10)

    assert msg_id == "solo"
    assert _publishes(leader) == [["solo"]]


async def test_one_bad_message_fails_only_its_caller(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("leader")
    _queue(fake)
    client = _client(clients, leader.url)
    leader.fail(status=413, code="message_too_large", path_contains="/messages")
    # The batch is refused once (scripted); the item-by-item resend then succeeds for
    # all but the one message the fake refuses again.
    leader.fail(status=413, code="message_too_large", path_contains="/messages")

    results = await asyncio.gather(
        *(client.publish("q", f"m{i}", id=f"m{i}") for i in range(5)), return_exceptions=True
    )

    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], BadRequest)
    assert errors[0].code == "message_too_large"
    assert sorted(r for r in results if isinstance(r, str)) == [
        f"m{i}" for i in range(5) if results[i] is not errors[0]
    ]
    assert len(fake.broker.queues["q"]["ready"]) == 4


async def test_missing_queue_fails_the_whole_batch_without_splitting(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("leader")
    client = _client(clients, leader.url)

    results = await asyncio.gather(
        *(client.publish("nope", f"m{i}") for i in range(5)), return_exceptions=True
    )

    assert all(isinstance(r, QueueNotFound) for r in results)
    assert len(_publishes(leader)) == 1


async def test_concurrent_acks_are_coalesced_per_queue(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("leader")
    _queue(fake)
    client = _client(clients, leader.url)
    await client.publish_batch("q", [{"body": f"m{i}"} for i in range(60)])
    received = await client.receive("q", max=60)
    receipts = [m.receipt for m in received]
    before = len(leader.seen)

    results = await asyncio.gather(
        *(client.ack("q", r) for r in receipts), client.ack("q", ["gone"])
    )

    ack_requests = [s for s in leader.seen[before:] if s.path.endswith("/ack")]
    assert len(ack_requests) == 1
    assert sorted(ack_requests[0].json["receipts"]) == sorted([*receipts, "gone"])
    assert [(r.acked, r.stale) for r in results[:-1]] == [(1, [])] * 60
    assert (results[-1].acked, results[-1].stale) == (0, ["gone"])
    assert fake.broker.queues["q"]["leased"] == {}


@pytest.mark.parametrize("linger_ms", [1.0, 0.0])
async def test_ack_soon_sends_without_being_awaited_and_reports_through_its_future(
    fake: FakeCluster, linger_ms: float
) -> None:
    """Coalesced with the other acks (or alone without coalescing); the future holds
    this caller's own result."""
    leader = fake.node("leader")
    _queue(fake)
    client = AsyncClient(leader.url, timeout=5.0, retry_deadline=5.0, linger_ms=linger_ms)
    try:
        await client.publish_batch("q", [{"body": f"m{i}"} for i in range(10)])
        receipts = [m.receipt for m in await client.receive("q", max=10)]
        before = len(leader.seen)

        futures = [client.ack_soon("q", r) for r in receipts]
        futures.append(client.ack_soon("q", "gone"))
        assert not any(f.done() for f in futures)  # nothing waited for the answer
        deadline = time.monotonic() + 5
        while fake.broker.queues["q"]["leased"]:
            assert time.monotonic() < deadline, "the acks were never sent"
            await asyncio.sleep(0.001)

        # Every answer first: uncoalesced, the unknown receipt's request may still be
        # on its way when the ten real ones have emptied the queue's leases.
        results = await asyncio.gather(*futures)
        assert [(r.acked, r.stale) for r in results] == [(1, [])] * 10 + [(0, ["gone"])]
        ack_requests = [s for s in leader.seen[before:] if s.path.endswith("/ack")]
        assert len(ack_requests) == (1 if linger_ms else 11)
    finally:
        await client.close()


async def test_close_sends_what_is_still_waiting(fake: FakeCluster) -> None:
    leader = fake.node("leader")
    _queue(fake)
    client = AsyncClient(leader.url, timeout=5.0, retry_deadline=5.0)
    tasks = [asyncio.create_task(client.publish("q", f"m{i}")) for i in range(20)]
    await asyncio.sleep(0)  # the calls are queued, not yet sent

    await client.close()

    assert all(t.done() and not t.cancelled() for t in tasks)
    assert len(fake.broker.queues["q"]["ready"]) == 20


# ---------------------------------------------------------- the coalescer alone


class ScriptedSend:
    """A ``send`` that records batches and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.concurrent = 0
        self.max_concurrent = 0
        self.refuse: set[int] = set()

    async def __call__(self, key: str, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await self.gate.wait()
        finally:
            self.concurrent -= 1
        if self.refuse & set(items):
            raise Conflict("refused", status=409, code="queue_full")
        return [i * 10 for i in items]


async def test_calls_arriving_while_a_batch_is_in_flight_form_the_next_batch() -> None:
    send = ScriptedSend()
    send.gate.clear()
    c: Coalescer[int, int] = Coalescer(send, linger=3600.0, max_in_flight=1)

    first = [c.submit("k", i) for i in range(3)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert send.batches == [[0, 1, 2]]
    later = [c.submit("k", i) for i in range(3, 10)]
    await asyncio.sleep(0)
    assert send.batches == [[0, 1, 2]], "the one slot is busy: the others wait"
    send.gate.set()

    assert await asyncio.wait_for(asyncio.gather(*first, *later), 10) == [i * 10 for i in range(10)]
    assert send.batches == [[0, 1, 2], list(range(3, 10))]


async def test_batches_respect_the_count_and_byte_limits() -> None:
    send = ScriptedSend()
    c: Coalescer[int, int] = Coalescer(send, linger=0.001, max_count=10, max_bytes=1000)

    futures = [c.submit("k", i, size=10) for i in range(25)]
    futures += [c.submit("k", 100 + i, size=600) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*futures), 10)

    assert [len(b) for b in send.batches] == [10, 10, 6, 1, 1]  # 5x10 B + 600 B fit in 1000
    assert [i for b in send.batches for i in b] == [*range(25), 100, 101, 102]


async def test_in_flight_requests_are_bounded_per_key() -> None:
    send = ScriptedSend()
    send.gate.clear()
    c: Coalescer[int, int] = Coalescer(send, linger=0.0, max_count=2, max_in_flight=3)

    futures = [c.submit("a", i) for i in range(20)] + [c.submit("b", i) for i in range(4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert send.max_concurrent == 3 + 2, "3 for key a, 2 for key b"
    send.gate.set()
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert sorted(i for b in send.batches for i in b) == sorted([*range(20), *range(4)])
    assert all(len(b) <= 2 for b in send.batches)


async def test_a_cancelled_call_is_not_sent() -> None:
    send = ScriptedSend()
    c: Coalescer[int, int] = Coalescer(send, linger=0.0)

    keep = c.submit("k", 1)
    drop = c.submit("k", 2)
    drop.cancel()

    assert await asyncio.wait_for(keep, 10) == 10
    assert send.batches == [[1]]


async def test_a_refused_batch_is_retried_item_by_item() -> None:
    send = ScriptedSend()
    send.refuse = {3}
    c: Coalescer[int, int] = Coalescer(send, linger=0.0, split_on=lambda e: isinstance(e, Conflict))

    results = await asyncio.gather(*(c.submit("k", i) for i in range(5)), return_exceptions=True)

    assert results[:3] == [0, 10, 20] and results[4] == 40
    assert isinstance(results[3], Conflict)
    assert send.batches == [[0, 1, 2, 3, 4], [0], [1], [2], [3], [4]]


async def test_drain_sends_everything_and_waits() -> None:
    send = ScriptedSend()
    c: Coalescer[int, int] = Coalescer(send, linger=3600.0, max_in_flight=1)
    send.gate.clear()
    first = c.submit("k", 1)
    await asyncio.sleep(0)
    second = c.submit("k", 2)  # waits: the slot is busy and the linger is an hour
    asyncio.get_running_loop().call_later(0.01, send.gate.set)

    await asyncio.wait_for(c.drain(), 10)

    assert first.result() == 10 and second.result() == 20
    assert c.pending == 0


async def test_a_cancelled_request_cancels_its_callers_and_starts_nothing_new() -> None:
    send = ScriptedSend()
    send.gate.clear()
    c: Coalescer[int, int] = Coalescer(send, linger=3600.0, max_in_flight=1)
    sent = c.submit("k", 1)
    await asyncio.sleep(0)
    waiting = c.submit("k", 2)
    await asyncio.sleep(0)

    tasks = list(c._tasks)  # what a loop shutdown would cancel
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert sent.cancelled() and waiting.cancelled()
    assert send.batches == [[1]]
    assert not c._tasks


# ------------------------------------------------------ publishes to several queues


async def _publish_round_robin(
    client: AsyncClient, queues: list[str], count: int
) -> list[str | BaseException]:
    calls = [client.publish(queues[i % len(queues)], f"m{i}", id=f"m{i}") for i in range(count)]
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def test_publishes_to_several_queues_share_a_request(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("a")
    for name in ("q1", "q2", "q3"):
        _queue(fake, name)
    client = _client(clients, leader.url, linger_ms=50)
    assert await _publish_round_robin(client, ["q1", "q2", "q3"], 30) == [
        f"m{i}" for i in range(30)
    ]
    shared = _shared(leader)
    assert 1 <= len(shared) < 30
    assert _publishes(leader) == []  # no single-queue request was needed
    for k, name in enumerate(("q1", "q2", "q3")):
        assert [m["id"] for m in fake.broker.queues[name]["ready"]] == [
            f"m{i}" for i in range(k, 30, 3)
        ]


async def test_a_missing_queue_fails_only_its_callers_in_a_shared_request(
    fake: FakeCluster, clients: list[AsyncClient]
) -> None:
    leader = fake.node("a")
    _queue(fake, "here")
    client = _client(clients, leader.url, linger_ms=50)
    outcomes = await _publish_round_robin(client, ["here", "gone"], 10)
    assert outcomes[0::2] == [f"m{i}" for i in range(0, 10, 2)]
    assert all(isinstance(o, QueueNotFound) for o in outcomes[1::2])
    assert len(_shared(leader)) >= 1


@pytest.mark.parametrize("node_answer", ["old_node", "forbidden"])
async def test_a_refused_shared_request_is_sent_queue_by_queue(
    fake: FakeCluster, clients: list[AsyncClient], node_answer: str
) -> None:
    """A node without POST /v1/messages (404 not_found), or a 403 for the whole
    request: each queue is then published on its own and answers for itself."""
    leader = fake.node("a")
    for name in ("q1", "q2"):
        _queue(fake, name)
    if node_answer == "old_node":
        fake.broker.multi_queue_publish = False
    else:
        leader.fail(status=403, code="forbidden", path_contains="/v1/messages")
    client = _client(clients, leader.url, linger_ms=50)
    assert await _publish_round_robin(client, ["q1", "q2"], 10) == [f"m{i}" for i in range(10)]
    assert sorted(ids for ids in _publishes(leader)) == [
        [f"m{i}" for i in range(0, 10, 2)],
        [f"m{i}" for i in range(1, 10, 2)],
    ]


async def test_a_batcher_without_publish_many_hands_each_queue_its_messages_as_given() -> None:
    """Lanes per queue hold the wire messages themselves (no (queue, wire) pairs):
    ``publish`` gets those dicts, in order, and each caller its own id."""
    sent: list[tuple[str, list[dict[str, Any]]]] = []

    async def publish(queue: str, wires: list[dict[str, Any]]) -> list[str]:
        sent.append((queue, wires))
        return [w["id"] for w in wires]

    async def ack(queue: str, receipts: list[str]) -> Any:
        raise AssertionError("no acks here")

    batcher = Batcher(publish, ack, linger_ms=50)
    wires = [{"body": f"m{i}", "id": f"id{i}"} for i in range(6)]
    futures = [batcher.publish_soon(f"q{i % 2}", wire) for i, wire in enumerate(wires)]
    assert await asyncio.wait_for(asyncio.gather(*futures), 5) == [f"id{i}" for i in range(6)]
    assert await batcher.publish("q0", {"body": "x", "id": "late"}) == "late"
    assert sorted((q, [id(w) for w in ws]) for q, ws in sent[:2]) == [
        ("q0", [id(w) for w in wires[0::2]]),
        ("q1", [id(w) for w in wires[1::2]]),
    ]
    assert batcher.publishes.requests_sent == 3 and batcher.publishes.items_sent == 7


async def test_merged_acks_give_each_caller_its_own_count_and_stale_receipts() -> None:
    answers: list[AckResult] = [AckResult(3), AckResult(2, ["b2"])]
    calls: list[list[str]] = []

    async def publish(queue: str, wires: list[dict[str, Any]]) -> list[str]:
        raise AssertionError("no publishes here")

    async def ack(queue: str, receipts: list[str]) -> AckResult:
        calls.append(receipts)
        return answers[len(calls) - 1]

    batcher = Batcher(publish, ack, linger_ms=50)
    first = [batcher.ack_soon("q", ["a1"]), batcher.ack_soon("q", ["a2", "a3"])]
    assert [(r.acked, r.stale) for r in await asyncio.gather(*first)] == [(1, []), (2, [])]
    second = [batcher.ack_soon("q", ["b1"]), batcher.ack_soon("q", ["b2", "b3"])]
    assert [(r.acked, r.stale) for r in await asyncio.gather(*second)] == [(1, []), (1, ["b2"])]
    assert calls == [["a1", "a2", "a3"], ["b1", "b2", "b3"]]
