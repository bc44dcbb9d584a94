"""HTTP handlers against a fake Raft port backed by a real Store (no processes, no network)."""

import asyncio
import concurrent.futures
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cluster.errors import NoLeader, NotLeader
from cluster.proposer import Companions
from cluster.settings import RaftSettings
from node.app import make_app
from node.config import Limits, NodeConfig
from node.ports import ApplyListener
from storage import Store

T = TypeVar("T")


class FakeRaft:
    """Applies each proposal at once to a local Store, as a one-node leader would."""

    def __init__(self, path: Path) -> None:
        self.store = Store(str(path))
        self.leader: str | None = "127.0.0.1:1"
        self.self_raft = "127.0.0.1:1"
        self.nodes: dict[str, str] = {}
        self._index = itertools.count(1)
        self._listeners: list[ApplyListener] = []
        self._companions: Companions | None = None
        self.entries: list[list[dict[str, Any]]] = []  # the commands of each entry applied
        self.membership_gate = asyncio.Event()
        self.membership_gate.set()
        self.added: list[str] = []

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def add_apply_listener(self, listener: ApplyListener) -> None:
        self._listeners.append(listener)

    def set_companions(self, companions: Companions) -> None:
        self._companions = companions

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """Applies `command` and its companions as one entry, as the proposer does."""
        extra = [] if self._companions is None else self._companions([command], 100)
        commands = [command] + [companion for companion, _ in extra]
        results = self.store.apply(next(self._index), commands)
        assert results is not None
        self.entries.append(commands)
        for listener in self._listeners:
            listener(commands, results)
        for (_, future), result in zip(extra, results[1:], strict=True):
            future.set_result(result)
        return results[0]

    async def propose_as_leader(self, command: dict[str, Any]) -> dict[str, Any]:
        self.require_leader()
        return await self.propose(command)

    def require_leader(self) -> None:
        if self.leader is None:
            raise NoLeader("no leader")
        if self.leader != self.self_raft:
            raise NotLeader(self.leader)

    def read(self, fn: Callable[[Store], T]) -> T:
        return fn(self.store)

    def is_leader(self) -> bool:
        return self.leader == self.self_raft

    def leader_raft(self) -> str | None:
        return self.leader

    def is_ready(self) -> bool:
        return self.leader is not None

    def write_backup(self, path: str) -> concurrent.futures.Future[int]:
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self.store.sync()
        future.set_result(self.store.applied_index())
        with open(path, "wb") as f:
            f.write(b"backup of the fake store")
        return future

    def counters(self) -> dict[str, Any]:
        return {
            "leader_changes": 1,
            "entries_proposed": 0,
            "commands_proposed": 0,
            "companions_proposed": 0,
            "entry_size_counts": [],
            "waiting_proposals": 0,
            "snapshot_put_off": False,
            "store_live_bytes": 1 << 20,
            "store_capacity_bytes": 1 << 30,
            "disk_free_bytes": 10 << 30,
            "storage_full": None,
        }

    def members(self) -> list[str]:
        return [self.self_raft]

    def live_members(self) -> set[str]:
        return {self.self_raft}

    async def add_member(self, raft_address: str) -> None:
        await self.membership_gate.wait()
        self.added.append(raft_address)

    async def remove_member(self, raft_address: str) -> None:
        raise NotLeader(self.leader)

    def check_removal(self, raft_address: str) -> None:
        raise NotLeader(self.leader)

    async def transfer_leadership(self) -> str:
        raise NotLeader(self.leader)

    def status(self) -> dict[str, Any]:
        return {
            "role": "leader" if self.is_leader() else "follower",
            "leader_raft": self.leader,
            "term": 1,
            "commit_index": 1,
            "last_applied": 1,
            "log_length": 1,
            "has_quorum": True,
            "members": [{"raft": self.self_raft, "state": "self"}],
            "match_index": {},
        }


def node_config(raft: FakeRaft, data_dir: Path, limits: Limits | None = None) -> NodeConfig:
    """The one-node config the handler tests run an app with."""
    return NodeConfig(
        node_id="n1",
        http_host="127.0.0.1",
        http_port=0,
        advertise_http="http://127.0.0.1:1",
        raft=RaftSettings(raft_address=raft.self_raft, peers=(), data_dir=str(data_dir)),
        limits=limits or Limits(),
    )


@pytest.fixture
async def client(fake: FakeRaft, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    config = node_config(fake, tmp_path)
    async with TestClient(TestServer(make_app(fake, config))) as test_client:
        yield test_client


async def test_publish_then_receive(client: TestClient[Any, Any]) -> None:
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    resp = await client.post("/v1/queues/jobs/messages", json={"messages": [{"body": "a"}]})
    assert resp.status == 200
    [message_id] = (await resp.json())["ids"]
    got = await (await client.post("/v1/queues/jobs/receive", json={"max": 5})).json()
    assert [m["id"] for m in got["messages"]] == [message_id]


async def test_one_request_publishes_to_several_queues_each_on_its_own(
    client: TestClient[Any, Any],
) -> None:
    for queue in ("a", "b"):
        assert (await client.put(f"/v1/queues/{queue}", json={})).status == 201
    body = {
        "publishes": [
            {"queue": "a", "messages": [{"body": "a1", "id": "a1"}, {"body": "a2"}]},
            {"queue": "missing", "messages": [{"body": "m"}]},
            {"queue": "b", "messages": [{"body": "b1"}]},
        ]
    }
    resp = await client.post("/v1/messages", json=body)
    assert resp.status == 200
    results = (await resp.json())["results"]
    assert [r["queue"] for r in results] == ["a", "missing", "b"]
    assert results[0]["ids"][0] == "a1" and len(results[0]["ids"]) == 2
    assert results[1]["status"] == 404 and results[1]["error"]["code"] == "queue_not_found"
    assert "ids" not in results[1]
    got = await (await client.post("/v1/queues/a/receive", json={"max": 5})).json()
    assert [m["body"] for m in got["messages"]] == ["a1", "a2"]
    got = await (await client.post("/v1/queues/b/receive", json={"max": 5})).json()
    assert [m["body"] for m in got["messages"]] == ["b1"]


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({}, "publishes must be"),
        ({"publishes": []}, "publishes must be"),
        ({"publishes": ["a"]}, "must be an object"),
        ({"publishes": [{"messages": [{"body": "x"}]}]}, "needs a queue"),
        ({"publishes": [{"queue": "a b", "messages": [{"body": "x"}]}]}, "is invalid"),
        ({"publishes": [{"queue": "a", "messages": []}]}, "non-empty"),
        ({"publishes": [{"queue": "a", "messages": [{"body": 1}]}]}, "must be a string"),
        ({"publishes": [{"queue": "a", "messages": [{"body": "x"}], "extra": 1}]}, "extra"),
        (
            {
                "publishes": [
                    {"queue": "a", "messages": [{"body": "x"}]},
                    {"queue": "a", "messages": [{"body": "y"}]},
                ]
            },
            "appears twice",
        ),
        (
            {
                "publishes": [
                    {"queue": "a", "messages": [{"body": "x"}] * 3},
                    {"queue": "b", "messages": [{"body": "y"}] * 3},
                ]
            },
            "at most 5 messages",
        ),
    ],
)
async def test_a_bad_multi_queue_publish_changes_nothing(
    fake: FakeRaft, tmp_path: Path, body: dict[str, Any], phrase: str
) -> None:
    config = node_config(fake, tmp_path, Limits(max_batch=5))
    async with TestClient(TestServer(make_app(fake, config))) as client:
        for queue in ("a", "b"):
            assert (await client.put(f"/v1/queues/{queue}", json={})).status == 201
        resp = await client.post("/v1/messages", json=body)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert phrase in error["message"], error
        for queue in ("a", "b"):
            assert (await (await client.get(f"/v1/queues/{queue}")).json())["total"] == 0


async def test_not_leader_redirects_to_the_registered_leader(
    client: TestClient[Any, Any], fake: FakeRaft
) -> None:
    await fake.propose(
        {
            "op": "register_node",
            "raft": "127.0.0.1:2",
            "id": "n2",
            "http": "http://leader:9",
            "now_ms": 1,
        }
    )
    fake.leader = "127.0.0.1:2"
    resp = await client.post("/v1/queues/jobs/messages?x=1", json={}, allow_redirects=False)
    assert resp.status == 307
    assert resp.headers["Location"] == "http://leader:9/v1/queues/jobs/messages?x=1"


async def test_unknown_leader_address_and_no_leader_are_503(
    client: TestClient[Any, Any], fake: FakeRaft
) -> None:
    fake.leader = "127.0.0.1:3"
    resp = await client.put("/v1/queues/jobs", json={})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "no_leader"
    fake.leader = None
    resp = await client.put("/v1/queues/jobs", json={})
    assert resp.status == 503
    # An election takes a fraction of a second: "0", and the client polls.
    assert resp.headers["Retry-After"] == "0"
    assert (await resp.json())["error"]["code"] == "no_leader"


async def test_long_poll_wakes_on_apply(client: TestClient[Any, Any]) -> None:
    assert (await client.put("/v1/queues/jobs", json={})).status == 201
    waiting = asyncio.create_task(client.post("/v1/queues/jobs/receive", json={"wait": 10}))
    await asyncio.sleep(0.05)  # let the receive park before the publish
    await client.post("/v1/queues/jobs/messages", json={"messages": [{"body": "late"}]})
    resp = await asyncio.wait_for(waiting, 5)
    assert [m["body"] for m in (await resp.json())["messages"]] == ["late"]


async def test_unexpected_error_is_500_with_request_id(
    client: TestClient[Any, Any], fake: FakeRaft, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fn: Callable[[Store], Any]) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fake, "read", broken)
    resp = await client.get("/v1/queues")
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["code"] == "internal"
    assert "request id" in body["error"]["message"]


async def test_dashboard_is_served(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert "/v1/cluster" in page and "/v1/queues" in page


async def test_a_second_concurrent_membership_change_is_refused(
    client: TestClient[Any, Any], fake: FakeRaft
) -> None:
    fake.membership_gate.clear()
    member = {"id": "n4", "raft": "127.0.0.1:9004", "http": "http://127.0.0.1:9104"}
    first = asyncio.create_task(client.post("/v1/cluster/members", json=member))
    while member["raft"] not in fake.store.nodes():  # the first change registered n4, waits
        await asyncio.sleep(0.01)
    second = await client.post(
        "/v1/cluster/members",
        json={"id": "n5", "raft": "127.0.0.1:9005", "http": "http://127.0.0.1:9105"},
    )
    assert second.status == 409
    assert (await second.json())["error"]["code"] == "membership_change_in_progress"
    fake.membership_gate.set()
    assert (await first).status == 201
    assert fake.added == ["127.0.0.1:9004"]


async def test_bad_member_is_refused(client: TestClient[Any, Any]) -> None:
    for body in ({}, {"id": "n4", "raft": "nope", "http": "http://x"}, {"id": "n4", "raft": "h:1"}):
        resp = await client.post("/v1/cluster/members", json=body)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_metrics_exposition(client: TestClient[Any, Any]) -> None:
    await client.put("/v1/queues/jobs", json={})
    await client.post("/v1/queues/jobs/messages", json={"messages": [{"body": "a"}, {"body": "b"}]})
    text = await (await client.get("/metrics")).text()
    assert 'raftmq_queue_ready_messages{queue="jobs"} 2.0' in text
    assert 'raftmq_queue_published_messages_total{queue="jobs"} 2.0' in text
    assert 'raftmq_raft_role{role="leader"} 1.0' in text
    assert "raftmq_http_request_duration_seconds_bucket" in text
    assert 'route="/v1/queues/{queue}/messages"' in text
    assert "process_resident_memory_bytes" in text


async def test_metrics_count_the_keys_removed_after_a_delete(
    client: TestClient[Any, Any],
) -> None:
    await client.put("/v1/queues/gone", json={})
    messages = [{"body": str(i)} for i in range(300)]
    assert (await client.post("/v1/queues/gone/messages", json={"messages": messages})).ok
    assert (await client.delete("/v1/queues/gone")).status == 204

    async def scrape() -> dict[str, float]:
        text = await (await client.get("/metrics")).text()
        wanted = ("raftmq_reaped_keys_total", "raftmq_deleted_messages_pending")
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith(wanted)
        }

    deadline = asyncio.get_running_loop().time() + 10
    while (seen := await scrape())["raftmq_deleted_messages_pending"] != 0:
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.05)
    # Each message left a record, a ready entry and a dedup entry; the publish one age entry.
    assert seen["raftmq_reaped_keys_total"] == 3 * 300 + 1


async def test_metrics_show_an_unreachable_member(
    client: TestClient[Any, Any], fake: FakeRaft, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle cluster's lag stays 0 for a dead follower; member_up must show it."""
    status = fake.status()
    status["members"].append({"raft": "127.0.0.1:2", "state": "unreachable"})
    status["members"].append({"raft": "127.0.0.1:3", "state": "connected"})
    status["match_index"] = {"127.0.0.1:2": 1, "127.0.0.1:3": 1}
    monkeypatch.setattr(fake, "status", lambda: status)
    text = await (await client.get("/metrics")).text()
    assert 'raftmq_raft_follower_lag_entries{follower="127.0.0.1:2"} 0.0' in text
    assert 'raftmq_raft_member_up{member="127.0.0.1:1"} 1.0' in text
    assert 'raftmq_raft_member_up{member="127.0.0.1:2"} 0.0' in text
    assert 'raftmq_raft_member_up{member="127.0.0.1:3"} 1.0' in text
    assert "raftmq_raft_has_quorum 1.0" in text
