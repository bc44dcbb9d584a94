"""Scaling a live cluster in and out (issue: Operations), on real processes under load."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from raftmq import Client
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import LocalTestCluster, NodeProc, request, wait_for
from tests.cluster.workload import (
    ConsumerLog,
    ProducerLog,
    assert_none_lost,
    consume,
    drain,
    produce,
)

QUEUE = "work"


@contextmanager
def load(
    urls: list[str], producers: int, consumers: int
) -> Iterator[tuple[ProducerLog, ConsumerLog]]:
    """Producers and consumers running for the length of the block."""
    produced, consumed = ProducerLog(), ConsumerLog()
    stop = threading.Event()
    threads = [
        threading.Thread(target=produce, args=(urls, QUEUE, f"p{i}", produced, stop, 1_000_000))
        for i in range(producers)
    ] + [
        threading.Thread(target=consume, args=(urls, QUEUE, consumed, stop))
        for _ in range(consumers)
    ]
    for thread in threads:
        thread.start()
    try:
        yield produced, consumed
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def agreed_view(cluster: LocalTestCluster) -> tuple[str, frozenset[str]] | None:
    """(leader, members) when every running node reports the same of both."""
    views = set()
    for node in cluster.members:
        status = cluster.status(node)
        if status["leader"] is None:
            return None
        views.add((status["leader"]["raft"], frozenset(m["raft"] for m in status["members"])))
    return views.pop() if len(views) == 1 else None


def wait_view(cluster: LocalTestCluster, expected: list[NodeProc]) -> None:
    want = frozenset(n.raft for n in expected)

    def matches() -> bool:
        view = agreed_view(cluster)
        return view is not None and view[1] == want and view[0] in want

    wait_for(matches, 60, f"all nodes to agree on members {sorted(want)} and one leader")


def progress(log: ProducerLog, more: int) -> None:
    target = log.acked_count() + more
    wait_for(lambda: log.acked_count() >= target, 60, f"{more} more acknowledged publishes")


def test_three_to_five_to_three_under_load(cluster: LocalTestCluster) -> None:
    n1, n2, n3 = cluster.nodes
    with Client(cluster.urls) as client:
        client.declare_queue(QUEUE, visibility_timeout=5)
    # Clients know every URL the cluster will have; removed nodes just stop answering.
    n4 = cluster.add_node(join_via=n1)
    wait_view(cluster, [n1, n2, n3, n4])
    urls = cluster.urls
    with load(urls, producers=4, consumers=2) as (produced, consumed):
        progress(produced, 200)
        n5 = cluster.add_node(join_via=n2)
        wait_view(cluster, [n1, n2, n3, n4, n5])
        progress(produced, 200)
        cluster.remove_node(n1, via=n3)
        wait_for(lambda: not n1.alive, 30, "the removed node to stop itself")
        wait_view(cluster, [n2, n3, n4, n5])
        progress(produced, 200)
        cluster.remove_node(n2, via=n3)
        wait_for(lambda: not n2.alive, 30, "the removed node to stop itself")
        wait_view(cluster, [n3, n4, n5])
        progress(produced, 200)
    live = [n.url for n in cluster.members]
    remaining = drain(live, QUEUE)
    assert_none_lost(
        produced.acked, produced.attempted, consumed.received + remaining, consumed.ack_failed
    )
    cluster.wait_converged()


def test_removing_the_leader_under_load(cluster: LocalTestCluster) -> None:
    with Client(cluster.urls) as client:
        client.declare_queue(QUEUE, visibility_timeout=5)
    with load(cluster.urls, producers=4, consumers=1) as (produced, consumed):
        progress(produced, 200)
        leader = cluster.wait_leader()
        other = next(n for n in cluster.nodes if n is not leader)
        answer = cluster.remove_node(leader, via=other)
        assert answer["removed"] == leader.raft
        wait_for(lambda: not leader.alive, 30, "the removed leader to stop itself")
        new_leader = cluster.wait_leader()
        assert new_leader is not leader
        progress(produced, 200)
    assert leader.process is not None and leader.process.returncode == 0
    remaining = drain([n.url for n in cluster.members], QUEUE)
    assert_none_lost(
        produced.acked, produced.attempted, consumed.received + remaining, consumed.ack_failed
    )


def test_refuses_a_removal_that_would_lose_the_majority(cluster: LocalTestCluster) -> None:
    leader = cluster.wait_leader()
    down, live = (n for n in cluster.nodes if n is not leader)
    cluster.kill(down)
    resp = request("DELETE", leader.url + f"/v1/cluster/members/{live.node_id}")
    assert resp.status == 409
    assert resp.body["error"]["code"] == "would_lose_quorum"
    removed = cluster.remove_node(down, via=leader)
    assert removed["removed"] == down.raft
    assert {m["raft"] for m in removed["members"]} == {leader.raft, live.raft}


def test_joined_node_catches_up_to_the_same_digest(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3).start()
    with Client(cluster.urls) as client:
        client.declare_queue("big")
        for start in range(0, 50_000, 1000):
            client.publish_batch(
                "big", [{"body": f"m{i}", "id": f"m{i}"} for i in range(start, start + 1000)]
            )
    joined = cluster.add_node(join_via=cluster.nodes[0])
    wait_view(cluster, cluster.nodes)
    statuses = cluster.wait_converged(120)
    assert len(statuses) == 4
    with Client([joined.url]) as client:
        assert client.queue("big")["total"] == 50_000
    # A restart with its data dir does not join again.
    cluster.restart(joined)
    cluster.wait_converged(60)
    assert joined.log_path.read_text().count("joining the cluster at") == 1
