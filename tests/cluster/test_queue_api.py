"""The queue part of the HTTP contract, on a real 3-node cluster (DESIGN.md, HTTP API v1)."""

import base64
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from raftmq import Client
from tests.cluster.harness import (
    LocalTestCluster,
    NodeProc,
    Response,
    request,
    scrape,
    wait_for,
)


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTestCluster]:
    cluster = LocalTestCluster(tmp_path_factory.mktemp("api"), 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def leader(cluster3: LocalTestCluster) -> NodeProc:
    return cluster3.wait_leader()


_counter = iter(range(1_000_000))


@pytest.fixture
def qname() -> str:
    return f"q{next(_counter)}-{time.monotonic_ns()}"


def call(
    node: NodeProc, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> Response:
    return request(method, node.url + path, body, raw)


def assert_error(resp: Response, status: int, code: str) -> None:
    assert resp.status == status, resp.body
    assert resp.body["error"]["code"] == code
    assert isinstance(resp.body["error"]["message"], str) and resp.body["error"]["message"]


def publish(node: NodeProc, queue: str, *bodies: str, **extra: Any) -> list[str]:
    resp = call(
        node,
        "POST",
        f"/v1/queues/{queue}/messages",
        {"messages": [{"body": b, **extra} for b in bodies]},
    )
    assert resp.status == 200, resp.body
    ids: list[str] = resp.body["ids"]
    return ids


def receive(node: NodeProc, queue: str, **params: Any) -> list[dict[str, Any]]:
    resp = call(node, "POST", f"/v1/queues/{queue}/receive", params)
    assert resp.status == 200, resp.body
    messages: list[dict[str, Any]] = resp.body["messages"]
    return messages


def test_declare_is_idempotent_and_conflicts_on_difference(leader: NodeProc, qname: str) -> None:
    created = call(
        leader, "PUT", f"/v1/queues/{qname}", {"visibility_timeout": 5, "max_deliveries": 3}
    )
    assert created.status == 201
    assert created.body["config"]["visibility_timeout"] == 5
    assert created.body["config"]["max_deliveries"] == 3
    again = call(
        leader, "PUT", f"/v1/queues/{qname}", {"visibility_timeout": 5, "max_deliveries": 3}
    )
    assert again.status == 200
    different = call(leader, "PUT", f"/v1/queues/{qname}", {"visibility_timeout": 6})
    assert_error(different, 409, "queue_exists_different")
    info = call(leader, "GET", f"/v1/queues/{qname}")
    assert info.body["config"]["visibility_timeout"] == 5


def test_bad_input_is_refused_and_changes_nothing(leader: NodeProc, qname: str) -> None:
    assert_error(call(leader, "PUT", "/v1/queues/bad%20name", {}), 400, "invalid_name")
    assert_error(
        call(leader, "PUT", f"/v1/queues/{qname}", {"visibility_timeout": -1}),
        400,
        "invalid_request",
    )
    assert_error(
        call(leader, "PUT", f"/v1/queues/{qname}", {"colour": "red"}), 400, "invalid_request"
    )
    assert_error(call(leader, "PUT", f"/v1/queues/{qname}", raw=b"{not json"), 400, "invalid_json")
    assert_error(call(leader, "PUT", f"/v1/queues/{qname}", raw=b"[1, 2]"), 400, "invalid_request")
    assert_error(call(leader, "GET", f"/v1/queues/{qname}"), 404, "queue_not_found")
    assert call(leader, "PUT", f"/v1/queues/{qname}", {}).status == 201
    bad_publishes: list[dict[str, Any]] = [
        {},
        {"messages": []},
        {"messages": [{"headers": {}}]},
        {"messages": [{"body": 5}]},
        {"messages": [{"body": "x", "headers": {"a": 1}}]},
        {"messages": [{"body": "%%%", "encoding": "base64"}]},
        {"messages": [{"body": "x", "delay": "soon"}]},
        {"messages": [{"body": "x"}] * 1001},
    ]
    for body in bad_publishes:
        assert_error(
            call(leader, "POST", f"/v1/queues/{qname}/messages", body), 400, "invalid_request"
        )
    assert_error(
        call(leader, "POST", f"/v1/queues/{qname}/receive", {"max": 0}), 400, "invalid_request"
    )
    assert_error(
        call(leader, "POST", f"/v1/queues/{qname}/receive", {"max": 1001}), 400, "invalid_request"
    )
    assert_error(
        call(leader, "POST", f"/v1/queues/{qname}/ack", {"receipts": []}), 400, "invalid_request"
    )
    assert_error(
        call(leader, "POST", f"/v1/queues/{qname}/nack", {"receipts": [1]}), 400, "invalid_request"
    )
    assert call(leader, "GET", f"/v1/queues/{qname}").body["total"] == 0


def test_body_and_message_size_limits(leader: NodeProc, qname: str) -> None:
    assert call(leader, "PUT", f"/v1/queues/{qname}", {}).status == 201
    huge = orjson.dumps({"messages": [{"body": "x" * (9 << 20)}]})
    assert_error(
        call(leader, "POST", f"/v1/queues/{qname}/messages", raw=huge), 413, "body_too_large"
    )
    big = {"messages": [{"body": "x" * ((1 << 20) + 1)}]}
    assert_error(
        call(leader, "POST", f"/v1/queues/{qname}/messages", big), 413, "message_too_large"
    )
    assert call(leader, "GET", f"/v1/queues/{qname}").body["total"] == 0


def test_unknown_queue_on_every_queue_endpoint(leader: NodeProc) -> None:
    missing = "no-such-queue"
    assert_error(call(leader, "GET", f"/v1/queues/{missing}"), 404, "queue_not_found")
    assert_error(call(leader, "DELETE", f"/v1/queues/{missing}"), 404, "queue_not_found")
    assert_error(call(leader, "POST", f"/v1/queues/{missing}/purge"), 404, "queue_not_found")
    assert_error(
        call(leader, "POST", f"/v1/queues/{missing}/messages", {"messages": [{"body": "x"}]}),
        404,
        "queue_not_found",
    )
    assert_error(call(leader, "POST", f"/v1/queues/{missing}/receive", {}), 404, "queue_not_found")
    assert_error(
        call(leader, "POST", f"/v1/queues/{missing}/ack", {"receipts": ["1.a"]}),
        404,
        "queue_not_found",
    )
    assert_error(
        call(leader, "POST", f"/v1/queues/{missing}/nack", {"receipts": ["1.a"]}),
        404,
        "queue_not_found",
    )
    assert_error(call(leader, "GET", "/v1/nothing-here"), 404, "not_found")
    assert_error(call(leader, "PATCH", "/v1/queues"), 405, "method_not_allowed")


def test_publish_receive_ack_fifo_and_stats(leader: NodeProc, qname: str) -> None:
    assert call(leader, "PUT", f"/v1/queues/{qname}", {"visibility_timeout": 30}).status == 201
    ids = publish(leader, qname, "a", "b", "c")
    assert len(ids) == 3
    info = call(leader, "GET", f"/v1/queues/{qname}").body
    assert (info["ready"], info["in_flight"], info["total"]) == (3, 0, 3)
    got = receive(leader, qname, max=2)
    assert [m["body"] for m in got] == ["a", "b"]
    assert [m["id"] for m in got] == ids[:2]
    assert all(m["deliveries"] == 1 and m["receipt"] and m["published_at"] > 0 for m in got)
    info = call(leader, "GET", f"/v1/queues/{qname}").body
    assert (info["ready"], info["in_flight"]) == (1, 2)
    acked = call(
        leader,
        "POST",
        f"/v1/queues/{qname}/ack",
        {"receipts": [m["receipt"] for m in got] + ["0.bogus"]},
    )
    assert acked.body == {"acked": 2, "stale": ["0.bogus"]}
    again = call(leader, "POST", f"/v1/queues/{qname}/ack", {"receipts": [got[0]["receipt"]]})
    assert again.body == {"acked": 0, "stale": [got[0]["receipt"]]}
    assert [m["body"] for m in receive(leader, qname, max=10)] == ["c"]
    listed = call(leader, "GET", "/v1/queues").body["queues"]
    assert qname in [q["name"] for q in listed]


def test_publish_id_is_deduplicated(leader: NodeProc, qname: str) -> None:
    assert call(leader, "PUT", f"/v1/queues/{qname}", {}).status == 201
    first = publish(leader, qname, "once", id="order-17")
    second = publish(leader, qname, "once", id="order-17")
    assert first == second == ["order-17"]
    assert call(leader, "GET", f"/v1/queues/{qname}").body["total"] == 1


def test_binary_body_round_trips_as_base64(leader: NodeProc, qname: str) -> None:
    assert call(leader, "PUT", f"/v1/queues/{qname}", {}).status == 201
    payload = base64.b64encode(bytes(range(256))).decode()
    publish(leader, qname, payload, encoding="base64", headers={"kind": "bin"})
    [message] = receive(leader, qname)
    assert message["encoding"] == "base64"
    assert base64.b64decode(message["body"]) == bytes(range(256))
    assert message["headers"] == {"kind": "bin"}


def test_nack_redelivers_and_counts_deliveries(leader: NodeProc, qname: str) -> None:
    assert call(leader, "PUT", f"/v1/queues/{qname}", {}).status == 201
    publish(leader, qname, "retry-me")
    [first] = receive(leader, qname)
    nacked = call(
        leader, "POST", f"/v1/queues/{qname}/nack", {"receipts": [first["receipt"], "1.stale"]}
    )
    assert nacked.body == {"requeued": 1, "stale": ["1.stale"]}
    [second] = receive(leader, qname)
    assert second["id"] == first["id"] and second["deliveries"] == 2
    nacked = call(
        leader, "POST", f"/v1/queues/{qname}/nack", {"receipts": [second["receipt"]], "delay": 30}
    )
    assert nacked.body["requeued"] == 1
    info = call(leader, "GET", f"/v1/queues/{qname}").body
    assert (info["ready"], info["delayed"]) == (0, 1)
    assert receive(leader, qname) == []


def test_expired_lease_makes_message_visible_again(leader: NodeProc, qname: str) -> None:
    assert call(leader, "PUT", f"/v1/queues/{qname}", {"visibility_timeout": 0.2}).status == 201
    publish(leader, qname, "slow consumer")
    [first] = receive(leader, qname)
    [second] = receive(leader, qname, wait=5)
    assert second["id"] == first["id"] and second["deliveries"] == 2
    stale = call(leader, "POST", f"/v1/queues/{qname}/ack", {"receipts": [first["receipt"]]})
    assert stale.body["stale"] == [first["receipt"]]


def test_max_deliveries_dead_letters(leader: NodeProc, qname: str) -> None:
    dlq = qname + ".dlq"
    assert call(leader, "PUT", f"/v1/queues/{dlq}", {}).status == 201
    assert (
        call(
            leader, "PUT", f"/v1/queues/{qname}", {"max_deliveries": 2, "dead_letter_queue": dlq}
        ).status
        == 201
    )
    publish(leader, qname, "poison")
    for _ in range(2):
        [m] = receive(leader, qname)
        call(leader, "POST", f"/v1/queues/{qname}/nack", {"receipts": [m["receipt"]]})
    assert receive(leader, qname) == []
    [dead] = receive(leader, dlq)
    assert dead["body"] == "poison"
    assert dead["headers"]["x-dead-letter-reason"] == "max_deliveries"
    assert call(leader, "GET", f"/v1/queues/{qname}").body["dead_lettered_total"] == 1


def test_ttl_delay_and_overflow(leader: NodeProc, qname: str) -> None:
    ttl_q, delay_q, full_q, head_q = (qname + s for s in (".ttl", ".delay", ".full", ".head"))
    assert call(leader, "PUT", f"/v1/queues/{ttl_q}", {"message_ttl": 0.05}).status == 201
    publish(leader, ttl_q, "short-lived")
    assert request("GET", leader.url + f"/v1/queues/{ttl_q}").status == 200
    time.sleep(0.1)  # the TTL itself is what is under test: let it pass
    assert receive(leader, ttl_q) == []
    assert call(leader, "PUT", f"/v1/queues/{delay_q}", {"delivery_delay": 0.3}).status == 201
    publish(leader, delay_q, "later")
    assert receive(leader, delay_q) == []
    assert [m["body"] for m in receive(leader, delay_q, wait=5)] == ["later"]
    assert call(leader, "PUT", f"/v1/queues/{full_q}", {"max_length": 2}).status == 201
    publish(leader, full_q, "1", "2")
    rejected = call(leader, "POST", f"/v1/queues/{full_q}/messages", {"messages": [{"body": "3"}]})
    assert_error(rejected, 409, "queue_full")
    assert call(leader, "GET", f"/v1/queues/{full_q}").body["total"] == 2
    assert (
        call(
            leader, "PUT", f"/v1/queues/{head_q}", {"max_length": 2, "overflow": "drop_head"}
        ).status
        == 201
    )
    publish(leader, head_q, "1", "2", "3")
    assert [m["body"] for m in receive(leader, head_q, max=10)] == ["2", "3"]


def test_long_poll_is_woken_by_a_publish(leader: NodeProc, qname: str) -> None:
    """The waiting consumer is leased the message in the publish's own Raft entry."""
    assert call(leader, "PUT", f"/v1/queues/{qname}", {}).status == 201
    result: dict[str, Any] = {}

    def waiting_consumer() -> None:
        started = time.monotonic()
        result["messages"] = receive(leader, qname, wait=15)
        result["elapsed"] = time.monotonic() - started

    riding_before = scrape(leader.url)["raftmq_leases_with_publish_total"]
    consumer = threading.Thread(target=waiting_consumer)
    consumer.start()
    wait_for(lambda: scrape(leader.url)["raftmq_long_polls_waiting"] >= 1, 10, "the consumer waits")
    publish(leader, qname, "wake up")
    consumer.join(timeout=20)
    assert [m["body"] for m in result["messages"]] == ["wake up"]
    assert result["elapsed"] < 15
    assert scrape(leader.url)["raftmq_leases_with_publish_total"] == riding_before + 1


def test_a_big_queue_goes_at_once_and_its_messages_are_removed_in_the_background(
    cluster3: LocalTestCluster, leader: NodeProc, qname: str
) -> None:
    assert call(leader, "PUT", f"/v1/queues/{qname}", {}).status == 201
    with Client([n.url for n in cluster3.nodes]) as client:
        for batch in range(20):
            client.publish_batch(qname, [{"body": f"{batch}-{i}"} for i in range(1000)])
        assert client.purge(qname) == 20000
        client.publish_batch(qname, [{"body": f"kept-{i}"} for i in range(1000)])
        client.delete_queue(qname)
        client.declare_queue(qname)
        client.publish(qname, "after")
    # About 84,000 keys, removed REAP_MAX_KEYS per Raft entry while the queue is in use again.
    wait_for(
        lambda: all(scrape(n.url)["raftmq_deleted_messages_pending"] == 0 for n in cluster3.nodes),
        60,
        "the deleted messages to be removed on every node",
    )
    cluster3.wait_converged()
    assert [m["body"] for m in receive(leader, qname, max=10)] == ["after"]
    log = leader.log_path.read_text()
    assert "removed" in log and "keys of deleted and purged queues" in log


def test_purge_and_delete(leader: NodeProc, qname: str) -> None:
    assert call(leader, "PUT", f"/v1/queues/{qname}", {}).status == 201
    publish(leader, qname, "1", "2", "3")
    receive(leader, qname)
    assert call(leader, "POST", f"/v1/queues/{qname}/purge").body == {"purged": 3}
    assert call(leader, "GET", f"/v1/queues/{qname}").body["total"] == 0
    deleted = call(leader, "DELETE", f"/v1/queues/{qname}")
    assert deleted.status == 204
    assert_error(call(leader, "GET", f"/v1/queues/{qname}"), 404, "queue_not_found")


def test_follower_redirects_writes_to_the_leader(cluster3: LocalTestCluster, qname: str) -> None:
    leader = cluster3.wait_leader()
    follower = cluster3.follower()
    path = f"/v1/queues/{qname}?trace=1"
    resp = call(follower, "PUT", path, {})
    assert resp.status == 307
    assert resp.headers["location"] == leader.url + path
    assert call(follower, "GET", "/v1/queues").status == 200
    if shutil.which("curl"):
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-L",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{}",
                "-w",
                "\n%{http_code}",
                follower.url + f"/v1/queues/{qname}",
            ],
            capture_output=True,
            check=True,
            text=True,
            timeout=30,
        )
        body, status = out.stdout.rsplit("\n", 1)
        assert status == "201"
        assert orjson.loads(body)["queue"] == qname
    for node in cluster3.nodes:
        with Client([node.url]) as client:
            [message_id] = client.publish_batch(qname, [{"body": f"via {node.node_id}"}])
            assert message_id
    with Client([follower.url]) as client:
        received = client.receive(qname, max=10)
        assert sorted(m.body for m in received) == sorted(
            f"via {n.node_id}" for n in cluster3.nodes
        )
        assert client.ack(qname, [m.receipt for m in received]).acked == 3


def test_cluster_status_on_every_node(cluster3: LocalTestCluster) -> None:
    leader = cluster3.wait_leader()
    for node in cluster3.nodes:
        status = cluster3.status(node)
        assert status["node_id"] == node.node_id
        assert status["leader"]["raft"] == leader.raft
        assert status["leader"]["http"] == leader.url
        assert status["role"] == ("leader" if node is leader else "follower")
        assert {m["raft"] for m in status["members"]} == {n.raft for n in cluster3.nodes}
        assert status["term"] >= 1
        assert request("GET", node.url + "/healthz").status == 200
        assert request("GET", node.url + "/readyz").status == 200
