"""Exchanges and streams on a real 3-node cluster: routing end to end, and leader kills."""

import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from raftmq import Client, Message, RaftMQError
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import LocalTestCluster, request, scrape, wait_for
from tests.cluster.workload import drain
from tests.unit.test_topic_matcher import TOPIC_TABLE, reference_match


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTestCluster]:
    cluster = LocalTestCluster(tmp_path_factory.mktemp("pubsub"), 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _received_bodies(client: Client, queue: str) -> list[str]:
    """Every body in the queue, sorted; waits out leases a lost (retried) receive took."""
    bodies: list[str] = []
    wait = 0.0
    while True:
        batch = client.receive(queue, max=1000, wait=wait, visibility_timeout=1)
        if batch:
            bodies.extend(str(m.body) for m in batch)
            client.ack(queue, [m.receipt for m in batch])
        elif client.queue(queue)["total"] == 0:
            return sorted(bodies)
        else:
            wait = 1.0  # some are leased: long-poll until they come back


def test_routing_end_to_end_matches_the_reference_table(cluster3: LocalTestCluster) -> None:
    follower = cluster3.follower()
    patterns = sorted({pattern for pattern, _, _ in TOPIC_TABLE})
    routing_keys = sorted({key for _, key, _ in TOPIC_TABLE})
    # Through a follower: every write is redirected to the leader.
    with Client([follower.url]) as client:
        client.declare_exchange("e2e.topic", "topic")
        client.declare_exchange("e2e.direct", "direct")
        client.declare_exchange("e2e.fanout", "fanout", alternate_queue="e2e.never")
        client.declare_exchange("e2e.alt", "direct", alternate_queue="e2e.unrouted")
        client.declare_queue("e2e.unrouted")
        for i, pattern in enumerate(patterns):
            client.declare_queue(f"e2e.t{i}")
            client.bind("e2e.topic", f"e2e.t{i}", pattern)
        for i, key in enumerate(routing_keys[:5]):
            client.declare_queue(f"e2e.d{i}")
            client.bind("e2e.direct", f"e2e.d{i}", key)
            client.bind("e2e.fanout", f"e2e.d{i}", "ignored")
        client.bind("e2e.alt", "e2e.unrouted", "known")
        for n, key in enumerate(routing_keys):
            message = Message(key, id=f"k{n}")
            routed = client.publish_to_exchange("e2e.topic", key, message)
            expected = {f"e2e.t{i}" for i, p in enumerate(patterns) if reference_match(p, key)}
            assert set(routed.routed) == expected, key
            assert routed.unroutable == (0 if expected else 1)
            client.publish_to_exchange("e2e.direct", key, message)
        client.publish_to_exchange("e2e.fanout", "whatever", [Message("f1", id="f1")])
        alt = client.publish_to_exchange("e2e.alt", "unknown", [Message("a1", id="a1")])
        assert (alt.routed, alt.unroutable) == ({"e2e.unrouted": 1}, 0)
        for i, pattern in enumerate(patterns):
            wanted = sorted(k for k in routing_keys if reference_match(pattern, k))
            assert _received_bodies(client, f"e2e.t{i}") == wanted, pattern
        for i, key in enumerate(routing_keys[:5]):
            assert _received_bodies(client, f"e2e.d{i}") == sorted([key, "f1"])
        assert _received_bodies(client, "e2e.unrouted") == ["a1"]


def test_subscribe_and_stream_reads_through_a_follower(cluster3: LocalTestCluster) -> None:
    follower = cluster3.follower()
    with Client([follower.url]) as client:
        client.declare_exchange("sub.x", "topic")
        with (
            client.subscribe("sub.x", "logs.#", wait=2) as first,
            client.subscribe("sub.x", "logs.error", wait=2) as second,
        ):
            client.publish_to_exchange("sub.x", "logs.error", ["boom"])
            client.publish_to_exchange("sub.x", "logs.info", ["fine"])
            assert [next(first).body, next(first).body] == ["boom", "fine"]
            assert next(second).body == "boom"
        client.declare_stream("sub.s", max_records=3)
        assert client.append("sub.s", ["a", "b", "c", "d"]) == [0, 1, 2, 3]
        batch = client.read("sub.s", offset=0)
        assert [(r.offset, r.body) for r in batch.records] == [(1, "b"), (2, "c"), (3, "d")]
        assert batch.first_offset == 1
        # Stats are local: wait until the follower applied the append.
        wait_for(lambda: client.stream("sub.s")["next_offset"] == 4, 10, "the follower's apply")


BIG_STREAM_BATCHES = 20
BIG_STREAM_BATCH = 1000
REMOVED = re.compile(r"removed (\d+) keys of ")


def _removed_since(cluster: LocalTestCluster, offsets: dict[str, int]) -> int:
    """Keys the reapers logged as removed after each node's log was `offsets` long."""
    texts = (n.log_path.read_bytes()[offsets[n.node_id] :].decode() for n in cluster.nodes)
    return sum(int(count) for text in texts for count in REMOVED.findall(text))


def test_a_big_stream_goes_at_once_and_its_records_are_removed_in_the_background(
    cluster3: LocalTestCluster,
) -> None:
    leader = cluster3.wait_leader()
    with Client(cluster3.urls) as client:
        client.declare_stream("big.s")
        for n in range(BIG_STREAM_BATCHES):
            records = [Message(f"body {n}.{i}", id=f"b{n}.{i}") for i in range(BIG_STREAM_BATCH)]
            assert client.append("big.s", records) == list(
                range(n * BIG_STREAM_BATCH, (n + 1) * BIG_STREAM_BATCH)
            )
        client.commit_offset("big.s", "readers", 15_000)
        logged = {n.node_id: n.log_path.stat().st_size for n in cluster3.nodes}
        deleted = request("DELETE", f"{leader.url}/v1/streams/big.s")
        assert deleted.status == 204, deleted.body
        client.declare_stream("big.s")
        assert client.append("big.s", [Message("after", id="b0.0")]) == [0]
        client.commit_offset("big.s", "readers", 1)
        # 20,000 records, as many dedup and dedup-age entries, one group offset:
        # removed REAP_MAX_KEYS keys per Raft entry while the stream is in use again.
        wait_for(
            lambda: all(
                scrape(n.url)["raftmq_deleted_messages_pending"] == 0 for n in cluster3.nodes
            ),
            60,
            "the deleted stream's keys to be removed on every node",
        )
        cluster3.wait_converged()
        buried = 3 * BIG_STREAM_BATCHES * BIG_STREAM_BATCH + 1
        wait_for(lambda: _removed_since(cluster3, logged) >= buried, 10, "the reaper's log")
        batch = client.read("big.s", offset=0)
        assert [(r.offset, r.body) for r in batch.records] == [(0, "after")]
        assert client.group_offset("big.s", "readers") == 1
        assert client.append("big.s", [Message("again", id="b0.0")]) == [0]


@dataclass
class FanoutLog:
    attempted: set[str] = field(default_factory=set)
    acked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


def _publish_fanout(urls: list[str], name: str, log: FanoutLog, stop: threading.Event) -> None:
    with Client(urls, retry_deadline=30.0) as client:
        n = 0
        while not stop.is_set():
            message_id = f"{name}-{n}"
            n += 1
            with log.lock:
                log.attempted.add(message_id)
            try:
                client.publish_to_exchange("fan", "", Message(message_id, id=message_id))
            except RaftMQError:
                continue
            with log.lock:
                log.acked.append(message_id)


def test_fanout_publish_survives_a_leader_kill(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster().start()
    urls = cluster.urls
    queues = ["fan.a", "fan.b", "fan.c"]
    with Client(urls) as client:
        client.declare_exchange("fan", "fanout")
        for queue in queues:
            client.declare_queue(queue)
            client.bind("fan", queue)
    log = FanoutLog()
    stop = threading.Event()
    producers = [
        threading.Thread(target=_publish_fanout, args=(urls, f"p{i}", log, stop)) for i in range(6)
    ]
    for producer in producers:
        producer.start()
    try:
        wait_for(lambda: log.acked_count() >= 300, 60, "acks before the kill")
        old_leader = cluster.wait_leader()
        cluster.kill(old_leader, signal.SIGKILL)
        acked_at_kill = log.acked_count()
        assert cluster.wait_leader(60) is not old_leader
        wait_for(lambda: log.acked_count() >= acked_at_kill + 300, 60, "acks after the election")
    finally:
        stop.set()
        for producer in producers:
            producer.join(timeout=60)
    cluster.start_node(old_leader)
    cluster.wait_leader(60)
    cluster.wait_converged(60)
    contents = {queue: drain(urls, queue) for queue in queues}
    for queue, received in contents.items():
        duplicates = [i for i, count in Counter(received).items() if count > 1]
        assert not duplicates, f"{queue} holds twice: {duplicates[:20]}"
        lost = set(log.acked) - set(received)
        assert not lost, f"{queue} lacks acknowledged {sorted(lost)[:20]}"
        assert set(received) <= log.attempted
    first = set(contents[queues[0]])
    for queue in queues[1:]:
        assert set(contents[queue]) == first, f"{queue} differs from {queues[0]}"


STREAM_RECORDS = 100_000
BATCH = 1000


def _append_all(urls: list[str], progress: list[int], kill_at: threading.Event) -> None:
    """Append every batch, retrying each with the same ids until it is acknowledged."""
    with Client(urls, retry_deadline=60.0) as client:
        for n in range(STREAM_RECORDS // BATCH):
            records = [Message(f"body {n}.{i}", id=f"r{n}.{i}") for i in range(BATCH)]
            while True:
                try:
                    offsets = client.append("log", records)
                    break
                except RaftMQError:
                    continue
            assert len(offsets) == BATCH
            progress.append(n)
            if n == 30:
                kill_at.set()


def test_stream_append_across_a_leader_kill_and_group_resume(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster().start()
    urls = cluster.urls
    with Client(urls) as client:
        client.declare_stream("log")
    progress: list[int] = []
    kill_at = threading.Event()
    producer = threading.Thread(target=_append_all, args=(urls, progress, kill_at))
    producer.start()
    try:
        assert kill_at.wait(120), "the producer did not reach the kill point"
        old_leader = cluster.wait_leader()
        cluster.kill(old_leader, signal.SIGKILL)
        cluster.wait_leader(60)
        cluster.start_node(old_leader)
    finally:
        producer.join(timeout=180)
    assert len(progress) == STREAM_RECORDS // BATCH
    with Client(urls) as client:
        offsets: list[int] = []
        ids: list[str | None] = []
        next_offset = 0
        while next_offset < STREAM_RECORDS:
            batch = client.read("log", offset=next_offset, max=1000, wait=1)
            assert batch.first_offset == 0
            offsets.extend(r.offset for r in batch.records)
            ids.extend(r.id for r in batch.records)
            next_offset = batch.next_offset
        assert client.read("log", offset=next_offset).records == []
        assert offsets == list(range(STREAM_RECORDS))
        assert len(set(ids)) == STREAM_RECORDS
        assert set(ids) == {
            f"r{n}.{i}" for n in range(STREAM_RECORDS // BATCH) for i in range(BATCH)
        }

        # A consumer group commits, loses the node it read from, and resumes there.
        first = client.read("log", group="readers", max=500)
        assert [r.offset for r in first.records] == list(range(500))
        client.commit_offset("log", "readers", first.next_offset)
        serving = cluster.wait_leader()  # group reads are served by the leader
        cluster.kill(serving, signal.SIGKILL)
        cluster.wait_leader(60)
        assert client.group_offset("log", "readers") == 500
        resumed = client.read("log", group="readers", max=10)
        assert [r.offset for r in resumed.records] == list(range(500, 510))
    cluster.start_node(serving)
    cluster.wait_converged(60)
