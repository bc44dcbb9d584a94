"""Faults on a real cluster: leader kill under load, catch-up by snapshot, restart of all."""

import signal
import threading

from raftmq import Client
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import LocalTestCluster, wait_for
from tests.cluster.workload import ProducerLog, assert_exactly_once, drain, produce


def test_leader_kill_under_load_loses_nothing(cluster: LocalTestCluster) -> None:
    urls = cluster.urls
    with Client(urls) as client:
        client.declare_queue("orders")
    log = ProducerLog()
    stop = threading.Event()
    producers = [
        threading.Thread(target=produce, args=(urls, "orders", f"p{i}", log, stop, 100_000))
        for i in range(8)
    ]
    for producer in producers:
        producer.start()
    try:
        wait_for(lambda: log.acked_count() >= 400, 60, "acks before the kill")
        old_leader = cluster.wait_leader()
        cluster.kill(old_leader, signal.SIGKILL)
        acked_at_kill = log.acked_count()
        new_leader = cluster.wait_leader(60)
        assert new_leader is not old_leader
        wait_for(lambda: log.acked_count() >= acked_at_kill + 400, 60, "acks after the election")
    finally:
        stop.set()
        for producer in producers:
            producer.join(timeout=60)
    cluster.start_node(old_leader)
    cluster.wait_leader(60)
    cluster.wait_converged(60)
    received = drain(urls, "orders")
    assert_exactly_once(log.acked, log.attempted, received)
    assert len(log.acked) >= acked_at_kill + 400


def test_lagging_node_catches_up_by_snapshot(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, ["--snapshot-entries", "50"]).start()
    with Client(cluster.urls) as client:
        client.declare_queue("backlog")
        lagging = cluster.follower()
        cluster.kill(lagging, signal.SIGKILL)
        batch = [{"body": "x" * 64} for _ in range(50)]
        for _ in range(200):
            client.publish_batch("backlog", batch)
    cluster.start_node(lagging)
    wait_for(
        lambda: "restored from snapshot" in lagging.log_path.read_text(errors="replace"),
        60,
        "the lagging node to install a snapshot",
    )
    statuses = cluster.wait_converged(60)
    assert all(s["applied_index"] == statuses[0]["applied_index"] for s in statuses)
    with Client([lagging.url]) as client:
        assert client.queue("backlog")["total"] == 10_000


def test_restart_of_every_node_keeps_acknowledged_messages(cluster: LocalTestCluster) -> None:
    with Client(cluster.urls) as client:
        client.declare_queue("durable")
        acked = [client.publish("durable", f"m{i}", id=f"m{i}") for i in range(300)]
        acked += client.publish_batch(
            "durable", [{"body": f"b{i}", "id": f"b{i}"} for i in range(700)]
        )
    for node in cluster.nodes:
        cluster.kill(node, signal.SIGKILL)
    for node in cluster.nodes:
        cluster.start_node(node)
    cluster.wait_leader(60)
    received = drain(cluster.urls, "durable")
    assert_exactly_once(acked, set(acked), received)
    assert sorted(received) == sorted(acked)
