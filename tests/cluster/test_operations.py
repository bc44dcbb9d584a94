"""Operations on a live cluster: rolling restart, backup and restore."""

import contextlib
import functools
import signal
import threading
from pathlib import Path

from raftmq import Client
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import LocalTestCluster, NodeProc, ctl, request, scrape, wait_for
from tests.cluster.workload import (
    ConsumerLog,
    ProducerLog,
    assert_none_lost,
    consume,
    drain,
    produce,
)


def test_a_stopping_leader_hands_over_before_it_drains(cluster: LocalTestCluster) -> None:
    """SIGTERM: the leader hands the leadership over, then finishes its requests.

    A long poll parked on it keeps it draining for the whole grace period; it used
    to stay the leader meanwhile, taking no new requests, so writes stopped until
    it exited and an election followed.
    """
    leader = cluster.wait_leader()
    with Client([leader.url]) as client:
        client.declare_queue("handover")

    def park() -> None:
        # Its answer does not matter (the node may close it when it stops).
        with contextlib.suppress(OSError):
            request(
                "POST",
                f"{leader.url}/v1/queues/handover/receive",
                {"max": 1, "wait": 20},
                timeout_s=30.0,
            )

    parked = threading.Thread(target=park)
    parked.start()
    try:
        wait_for(lambda: scrape(leader.url)["raftmq_long_polls_waiting"] >= 1, 10, "the long poll")
        assert leader.process is not None
        leader.process.send_signal(signal.SIGTERM)
        others = [n for n in cluster.nodes if n is not leader]

        def another_leads() -> NodeProc | None:
            return next((n for n in others if cluster.status(n)["role"] == "leader"), None)

        wait_for(another_leads, 10, "another node to lead")
        assert leader.alive, "the old leader exited before anyone took over"
        assert leader.process.wait(timeout=30) == 0
    finally:
        parked.join(timeout=30)


def test_rolling_restart_under_load_loses_nothing(cluster: LocalTestCluster) -> None:
    with Client(cluster.urls) as client:
        client.declare_queue("rolling", visibility_timeout=5)
    produced, consumed = ProducerLog(), ConsumerLog()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=produce, args=(cluster.urls, "rolling", f"p{i}", produced, stop, 10**6)
        )
        for i in range(4)
    ]
    threads.append(threading.Thread(target=consume, args=(cluster.urls, "rolling", consumed, stop)))
    for thread in threads:
        thread.start()
    try:
        for node in list(cluster.nodes):
            before = produced.acked_count()
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
            assert node.process.wait(timeout=30) == 0
            # Writes stay available with one node down (apart from an election).
            wait_for(
                functools.partial(produced.reached, before + 100), 60, "writes with a node down"
            )
            cluster.start_node(node)
            leader = cluster.wait_leader(60)
            # Caught up before the next node goes down, as an operator would check.
            target = cluster.status(leader)["commit_index"]
            wait_for(
                functools.partial(caught_up, cluster, node, target),
                60,
                f"{node.node_id} to catch up",
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    remaining = drain(cluster.urls, "rolling")
    assert_none_lost(
        produced.acked, produced.attempted, consumed.received + remaining, consumed.ack_failed
    )
    cluster.wait_converged()


def caught_up(cluster: LocalTestCluster, node: NodeProc, commit_index: int) -> bool:
    return bool(cluster.status(node)["last_applied"] >= commit_index)


def test_backup_then_restore_into_a_new_cluster(
    cluster: LocalTestCluster, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    ids = [f"m{i}" for i in range(2000)]
    with Client(cluster.urls) as client:
        client.declare_queue("keep", max_deliveries=3)
        for start in range(0, len(ids), 500):
            client.publish_batch("keep", [{"body": i, "id": i} for i in ids[start : start + 500]])
    follower = cluster.follower()
    cluster.wait_converged()
    backup = tmp_path / "raftmq.backup"
    done = ctl("--url", follower.url, "--json", "backup", "--out", str(backup))
    assert done.returncode == 0, done.stderr
    assert backup.stat().st_size > 0

    # Disaster recovery: every node of a new cluster starts from the same backup.
    restored = make_cluster(3, ["--restore", str(backup)]).start()
    statuses = restored.wait_converged(60)
    assert len(statuses) == 3
    with Client(restored.urls) as client:
        info = client.queue("keep")
        assert info["total"] == len(ids)
        assert info["config"]["max_deliveries"] == 3
        client.publish("keep", "after the restore", id="new")
    assert sorted(drain(restored.urls, "keep")) == sorted([*ids, "new"])
    # Restarting with the same --restore flag keeps the node's newer state.
    seed: NodeProc = restored.nodes[0]
    restored.restart(seed)
    restored.wait_leader(60)
    assert "--restore ignored" in seed.log_path.read_text()
    with Client(restored.urls) as client:
        assert client.queue("keep")["total"] == 0
