"""A nearly full store: publishes answer 507 storage_full, consumers go on, nothing is lost.

Without the alarm, the entry that fills LMDB's map fails to apply on every
replica alike; each node stops, restarts from its journal and fails there
again, and the cluster stays down with the messages that would empty it.
"""

import base64

import pytest

from raftmq import Client, Message, StorageFull
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import LocalTestCluster, NodeProc, request, scrape, wait_for

CAPACITY = 16 << 20  # --store-max-bytes: full above 90 %, ≈ 14 MiB
BATCH = 100
MAX_BATCHES = 200  # 20,000 messages of 1 KiB: well past the capacity, a bound on the test


@pytest.mark.timeout(180)
def test_a_full_store_refuses_publishes_and_consumers_make_room(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(
        extra_args=["--store-max-bytes", str(CAPACITY), "--min-free-disk-bytes", "0"]
    ).start()
    leader = cluster.wait_leader()
    client = Client(cluster.urls, timeout=10.0, retry_deadline=30.0)
    try:
        _fill_refuse_and_drain(cluster, leader, client)
    finally:
        client.close()


def _fill_refuse_and_drain(cluster: LocalTestCluster, leader: NodeProc, client: Client) -> None:
    client.declare_queue("fill")
    body = bytes(1024)
    confirmed: list[str] = []
    refusal: StorageFull | None = None
    for batch in range(MAX_BATCHES):
        messages = [Message(body=body, id=f"m{batch}-{i}") for i in range(BATCH)]
        try:
            confirmed.extend(client.publish_batch("fill", messages))
        except StorageFull as exc:
            refusal = exc
            break
    assert refusal is not None, "the store never reported full"
    assert refusal.status == 507 and refusal.code == "storage_full"
    assert "--store-max-bytes" in str(refusal)

    # The refusal changed nothing, no node stopped, and the alarm shows.
    assert all(node.alive for node in cluster.members)
    assert client.queue("fill")["total"] == len(confirmed)
    assert scrape(leader.url)["raftmq_storage_full"] == 1
    storage = request("GET", f"{leader.url}/v1/cluster").body["storage"]
    assert "--store-max-bytes" in storage["full"]
    assert storage["capacity_bytes"] == CAPACITY
    raw = request(
        "POST",
        f"{leader.url}/v1/queues/fill/messages",
        {"messages": [{"body": base64.b64encode(body).decode(), "encoding": "base64"}]},
    )
    assert raw.status == 507 and raw.body["error"]["code"] == "storage_full"

    # Consumers are served and make room; then publishes are accepted again.
    received: set[str] = set()
    while len(received) < len(confirmed):
        got = client.receive("fill", max=1000, wait=1.0)
        assert got, "a consumer got nothing while confirmed messages were queued"
        received.update(m.id for m in got)
        client.ack("fill", [m.receipt for m in got])
    assert received == set(confirmed)  # every confirmed message, once
    wait_for(
        lambda: scrape(leader.url)["raftmq_storage_full"] == 0,
        timeout_s=30.0,
        what="the alarm to clear",
    )
    assert client.publish_batch("fill", [Message(body=body, id="after")]) == ["after"]
    assert request("GET", f"{leader.url}/v1/cluster").body["storage"]["full"] is None
    assert all(node.alive for node in cluster.members)
    cluster.wait_converged()
