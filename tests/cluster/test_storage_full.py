"""A nearly full store: publishes answer 507 storage_full, consumers go on, nothing is lost.

Without the alarm, the entry that fills LMDB's map fails to apply on every
replica alike; each node stops, restarts from its journal and fails there
again, and the cluster stays down with the messages that would empty it.
"""

import base64
import functools

import pytest

from raftmq import Client, Message, StorageFull
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import LocalTestCluster, NodeProc, request, scrape, wait_for

CAPACITY = 16 << 20  # --store-max-bytes: full above 90 %, ≈ 14 MiB
BATCH = 100
RECEIVE_NEAR_FULL = 100
LARGE_BODY = bytes(700 << 10)  # 933 KiB as base64, under the 1 MiB body limit
LARGE_PER_REQUEST = 9  # 8.2 MiB a request
LARGE_CAPACITY = 32 << 20


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
    refusals: list[StorageFull] = []
    batches = iter(range(1_000_000))

    def publish_until_the_alarm() -> bool:
        """One batch; True once refused by an alarm that the store's own size keeps on.

        Between two looks the bytes admitted are projected onto the last one (an
        upper bound), and a refusal may come from that projection; the next look
        ends such an alarm while the store is under the lower ratio (85 %).
        """
        batch = next(batches)
        messages = [Message(body=body, id=f"m{batch}-{i}") for i in range(BATCH)]
        try:
            confirmed.extend(client.publish_batch("fill", messages))
        except StorageFull as exc:
            refusals.append(exc)
            storage = request("GET", f"{leader.url}/v1/cluster").body["storage"]
            return storage["full"] is not None and storage["live_bytes"] > 0.85 * CAPACITY
        return False

    wait_for(publish_until_the_alarm, timeout_s=120.0, what="the storage alarm")
    refusal = refusals[-1]
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
        # A lease rewrites the messages it takes (new pages before the old are
        # freed): near a 16 MiB map's alarm, 1,000 of them would not fit.
        got = client.receive("fill", max=RECEIVE_NEAR_FULL, wait=1.0)
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


@pytest.mark.timeout(180)
def test_large_writes_never_take_the_store_past_its_map(make_cluster: ClusterFactory) -> None:
    """Each request is admitted only if its own bytes fit in the room left.

    Before, a request was judged by what came before it: with requests of
    8.2 MiB into a 32 MiB store, the fourth was admitted after a look that saw
    24.6 MiB (under the alarm's 85 %, as the projection of the third had
    started the alarm) and overfilled LMDB's map: the entry failed to apply
    with MDB_MAP_FULL on every node, and the cluster stayed down.
    """
    cluster = make_cluster(
        extra_args=[
            "--store-max-bytes",
            str(LARGE_CAPACITY),
            "--min-free-disk-bytes",
            "0",
            "--max-body-bytes",
            str(16 << 20),
        ]
    ).start()
    leader = cluster.wait_leader()
    client = Client(cluster.urls, timeout=10.0, retry_deadline=30.0)
    try:
        client.declare_queue("large")
        confirmed: list[str] = []
        refusal: StorageFull | None = None
        for batch in range(LARGE_CAPACITY // len(LARGE_BODY)):  # more than can ever fit
            live_before = _live_bytes(leader)
            messages = [
                Message(body=LARGE_BODY, id=f"l{batch}-{i}") for i in range(LARGE_PER_REQUEST)
            ]
            try:
                confirmed.extend(client.publish_batch("large", messages))
            except StorageFull as exc:
                refusal = exc
                break
            # The next request is judged on a look that saw this one.
            wait_for(functools.partial(_grew, leader, live_before), what="the leader's next look")
        assert refusal is not None and refusal.code == "storage_full"
        assert "--store-max-bytes" in str(refusal), str(refusal)
        assert confirmed, "not even the first large write was accepted"

        # Nothing was overfilled: the nodes run, a small write fits once the
        # leader has looked again, and every confirmed message is there.
        assert all(node.alive for node in cluster.members)
        small = Message(body=b"small", id="small")
        wait_for(lambda: _publish_accepted(client, "large", small), what="a small write to fit")
        assert client.queue("large")["total"] == len(confirmed) + 1
        cluster.wait_converged()
        assert all(node.alive for node in cluster.members)
    finally:
        client.close()


def _publish_accepted(client: Client, queue: str, message: Message) -> bool:
    try:
        return client.publish_batch(queue, [message]) == [message.id]
    except StorageFull:
        return False


def _grew(node: NodeProc, live_before: int) -> bool:
    return _live_bytes(node) > live_before


def _live_bytes(node: NodeProc) -> int:
    return int(request("GET", f"{node.url}/v1/cluster").body["storage"]["live_bytes"])


FANOUT_QUEUES = 80
FANOUT_CAPACITY = 4 << 20


@pytest.mark.timeout(180)
def test_a_fanout_publish_is_weighed_by_the_queues_it_is_copied_to(
    make_cluster: ClusterFactory,
) -> None:
    """One 60 KB message to a fanout exchange bound to 80 queues stores 80 copies.

    Before, the leader weighed it by its request (60 KB) and admitted it; the
    entry overfilled a 4 MiB store on every node (MDB_MAP_FULL), and each node
    stopped at it again after every restart.
    """
    cluster = make_cluster(
        extra_args=["--store-max-bytes", str(FANOUT_CAPACITY), "--min-free-disk-bytes", "0"]
    ).start()
    cluster.wait_leader()
    client = Client(cluster.urls, timeout=10.0, retry_deadline=30.0)
    try:
        client.declare_exchange("fan", "fanout")
        for i in range(FANOUT_QUEUES):
            client.declare_queue(f"copy{i}")
            client.bind("fan", f"copy{i}")
        with pytest.raises(StorageFull) as refused:
            client.publish_to_exchange("fan", "", Message(body=bytes(45_000), id="big"))
        assert f"copies this publish to {FANOUT_QUEUES} queues" in str(refused.value)

        # Nothing was stored, the nodes run, and a small fanout still fits.
        assert all(node.alive for node in cluster.members)
        routed = client.publish_to_exchange("fan", "", Message(body=b"small", id="small"))
        assert len(routed.routed) == FANOUT_QUEUES
        assert {client.queue(f"copy{i}")["total"] for i in range(FANOUT_QUEUES)} == {1}
        cluster.wait_converged()
        assert all(node.alive for node in cluster.members)
    finally:
        client.close()
