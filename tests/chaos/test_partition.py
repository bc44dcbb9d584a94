"""Partitions are kernel-level faults between namespaces, and a minority never acknowledges.

Needs root, iproute2 and nftables (or iptables); skipped with the reason otherwise.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from pathlib import Path

import orjson
import pytest

from chaos.cluster import (
    STATE_DIR,
    ChaosCluster,
    HttpResult,
    NetnsTopology,
    cleanup_stale,
    http_json,
    netns_unavailable_reason,
)
from raftmq import Client
from tests.chaos.conftest import NetnsClusterFactory
from tests.cluster.harness import wait_for

QUEUE = "minority"


def reachable(cluster: ChaosCluster, src: str, dst: str, timeout: float = 1.0) -> bool:
    """A TCP connect from inside ``src``'s namespace to ``dst``'s Raft port."""
    ns = cluster.spec(src).netns
    assert ns is not None
    assert isinstance(cluster.topology, NetnsTopology)
    target = cluster.spec(dst)
    return cluster.topology.tcp_probe(ns, target.host, target.raft_port, timeout)


def test_a_cut_node_cannot_reach_its_peers_until_the_heal(
    netns_cluster: NetnsClusterFactory,
) -> None:
    cluster = netns_cluster(3)
    assert all(cluster.spec(i).netns for i in cluster.ids), "every node has its own namespace"
    namespaces = {cluster.spec(i).netns for i in cluster.ids}
    assert len(namespaces) == 3
    assert reachable(cluster, "n1", "n2") and reachable(cluster, "n1", "n3")

    cluster.cut([("n1", "n2"), ("n1", "n3")])
    assert isinstance(cluster.topology, NetnsTopology)
    rules = cluster.topology.rules(str(cluster.spec("n1").netns))
    assert "drop" in rules.lower(), rules
    assert not reachable(cluster, "n1", "n2")
    assert not reachable(cluster, "n1", "n3")
    assert not reachable(cluster, "n2", "n1"), "the cut holds in both directions"
    assert reachable(cluster, "n2", "n3"), "the majority side still talks"
    # The harness (clients) still reaches the cut node: partitions are between nodes.
    assert cluster.status("n1") is not None

    cluster.heal()
    assert reachable(cluster, "n1", "n2") and reachable(cluster, "n1", "n3")
    assert reachable(cluster, "n2", "n1")
    cluster.wait_ready(60.0)


def test_teardown_removes_namespaces_and_links(netns_cluster: NetnsClusterFactory) -> None:
    cluster = netns_cluster(3)
    described = cluster.topology.describe()
    cluster.teardown()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not set(described["namespaces"]) & set(listed.stdout.split())
    assert not Path(f"/sys/class/net/{described['bridge']}").exists()


def test_leftovers_of_a_dead_run_are_removed_by_the_next_one() -> None:
    """A harness killed with SIGKILL cannot clean up; its state file lets the next run."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"real partitions are not possible here: {reason}")
    suffix = os.urandom(2).hex()
    ns, bridge = f"rmq{suffix}n1", f"rmqb{suffix}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {"pid": os.getpid(), "start_time": "not-this-process", "namespaces": [ns]}
        (STATE_DIR / f"{suffix}.json").write_bytes(orjson.dumps({**state, "links": [bridge]}))
        assert suffix in cleanup_stale()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        assert ns not in listed.stdout.split()
        assert not Path(f"/sys/class/net/{bridge}").exists()
        assert not (STATE_DIR / f"{suffix}.json").exists()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def _publish_direct(url: str, msg_id: str) -> HttpResult:
    """One publish to exactly this node: a 307 is an answer, not something to follow."""
    body = {"messages": [{"body": f"body of {msg_id}", "id": msg_id}]}
    return http_json("POST", f"{url}/v1/queues/{QUEUE}/messages", body, timeout=8.0)


def _code(answer: HttpResult) -> str | None:
    error = answer.body.get("error") if isinstance(answer.body, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else None


def _drain(urls: list[str]) -> list[str]:
    received: list[str] = []
    with Client(urls, timeout=5.0, retry_deadline=30.0) as client:

        def empty_everywhere() -> bool:
            batch = client.receive(QUEUE, max=100, wait=0.5)
            if batch:
                received.extend(m.id for m in batch)
                client.ack(QUEUE, [m.receipt for m in batch])
                return False
            totals = [http_json("GET", f"{u}/v1/queues/{QUEUE}").body["total"] for u in urls]
            return all(t == 0 for t in totals)

        wait_for(empty_everywhere, 60.0, "the queue to drain on every node")
    return received


def test_an_isolated_leader_never_acknowledges_a_write(
    netns_cluster: NetnsClusterFactory,
) -> None:
    cluster = netns_cluster(3)
    with Client(cluster.urls, timeout=5.0, retry_deadline=30.0) as client:
        client.declare_queue(QUEUE, visibility_timeout=5)
        for k in range(5):
            client.publish(QUEUE, f"body of before-{k}", id=f"before-{k}")
    old = cluster.wait_ready(30.0)
    majority = [i for i in cluster.ids if i != old]
    old_url = cluster.spec(old).url

    cluster.cut([(old, other) for other in majority])
    # Writes straight to the cut-off leader, several at once so some arrive while it
    # still believes it leads (it steps down after leader_fallback_s without a quorum).
    minority_ids = [f"minority-{k}" for k in range(12)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        answers = dict(
            zip(
                minority_ids,
                pool.map(lambda i: _publish_direct(old_url, i), minority_ids),
                strict=True,
            )
        )
    for msg_id, answer in answers.items():
        assert answer.status is None or answer.status in (307, 503), (msg_id, answer)
    # The interesting case happened: the old leader took writes it could not commit.
    undecided = [
        i
        for i, a in answers.items()
        if a.status is None or (isinstance(a.body, dict) and _code(a) == "unknown_outcome")
    ]
    assert undecided, f"no write reached the old leader while it still led: {answers}"

    # Meanwhile the majority elects a leader of its own and acknowledges writes.
    def majority_leader() -> str | None:
        for node_id in majority:
            status = cluster.status(node_id)
            if status and status["role"] == "leader":
                return node_id
        return None

    new = wait_for(majority_leader, 30.0, "a leader on the majority side")
    assert new != old
    majority_urls = [cluster.spec(i).url for i in majority]
    with Client(majority_urls, timeout=5.0, retry_deadline=30.0) as client:
        for k in range(5):
            client.publish(QUEUE, f"body of majority-{k}", id=f"majority-{k}")

    cluster.heal()
    cluster.wait_ready(60.0)
    received = _drain(cluster.urls)
    leaked = sorted(set(received) & set(minority_ids))
    assert not leaked, f"writes the minority never acknowledged were applied: {leaked}"
    expected = {f"before-{k}" for k in range(5)} | {f"majority-{k}" for k in range(5)}
    assert expected <= set(received)

    def converged() -> bool:
        statuses = [cluster.status(i, digest=True) for i in cluster.ids]
        keys = {(s["applied_index"], s["digest"]) if s else None for s in statuses}
        return len(keys) == 1 and None not in keys

    wait_for(converged, 60.0, "replicas to converge after the heal")
