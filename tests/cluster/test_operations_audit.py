"""README's Operations procedures followed literally, with the `raftmq ctl` commands as written.

Adding and removing nodes under a bounded producer and consumer, re-adding a
removed node with an empty data dir, restarting a removed node with its old
data dir, and backup and restore of queues, exchanges, bindings and streams.
"""

import json
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from raftmq import Client, RaftMQError
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import (
    LocalTestCluster,
    NodeProc,
    ctl,
    free_port,
    request,
    wait_for,
)

QUEUE = "audit"
MESSAGES = 1500


def ready(node: NodeProc) -> bool:
    return node.alive and request("GET", node.url + "/readyz").status == 200


def agreed_members(cluster: LocalTestCluster, expected: list[NodeProc]) -> bool:
    """Every running node names the same leader (one of `expected`) and exactly `expected`,
    each registered with its id and URL, and connected (or self/leader) as seen from the leader."""
    want = {(n.node_id, n.raft, n.url) for n in expected}
    leaders = set()
    for node in cluster.members:
        status = cluster.status(node)
        if status["leader"] is None:
            return False
        leaders.add(status["leader"]["raft"])
        if {(m["id"], m["raft"], m["http"]) for m in status["members"]} != want:
            return False
    if len(leaders) != 1 or leaders.copy().pop() not in {n.raft for n in expected}:
        return False
    leader = next(n for n in expected if n.raft in leaders)
    states = {m["state"] for m in cluster.status(leader)["members"]}
    return states <= {"leader", "connected"}


def rejoin_empty(cluster: LocalTestCluster, node: NodeProc, via: NodeProc) -> None:
    """README: wipe the removed machine's data dir and start it with --join."""
    shutil.rmtree(node.data_dir)
    node.data_dir.mkdir()
    node.join_url = via.url
    cluster.start_node(node)


@dataclass
class Traffic:
    """A bounded producer and a consumer; what was confirmed, delivered and acked."""

    confirmed: set[str] = field(default_factory=set)
    delivered: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    after_ack: list[str] = field(default_factory=list)
    ack_failed: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    produced_all: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def confirmed_count(self) -> int:
        with self.lock:
            return len(self.confirmed)

    def produce(self, urls: list[str]) -> None:
        with Client(urls, retry_deadline=30.0) as client:
            for n in range(MESSAGES):
                if self.stop.is_set():
                    break
                try:
                    client.publish(QUEUE, f"body {n}", id=f"m{n}")
                except RaftMQError:
                    continue
                with self.lock:
                    self.confirmed.add(f"m{n}")
        self.produced_all.set()

    def record(self, ids: list[str]) -> None:
        with self.lock:
            self.delivered.extend(ids)
            self.after_ack.extend(i for i in ids if i in self.acked)

    def consume(self, urls: list[str]) -> None:
        with Client(urls, retry_deadline=30.0) as client:
            while not self.stop.is_set():
                try:
                    batch = client.receive(QUEUE, max=50, wait=0.2)
                except RaftMQError:
                    continue
                self.record([m.id for m in batch])
                if not batch:
                    continue
                try:
                    result = client.ack(QUEUE, [m.receipt for m in batch])
                except RaftMQError:
                    with self.lock:
                        self.ack_failed.update(m.id for m in batch)
                    continue
                with self.lock:
                    self.acked.update(m.id for m in batch if m.receipt not in result.stale)

    def drain(self, urls: list[str]) -> None:
        with Client(urls) as client:
            while True:
                batch = client.receive(QUEUE, max=500, wait=0.5)
                if not batch:
                    if client.queue(QUEUE)["total"] == 0:
                        return
                    continue
                self.record([m.id for m in batch])
                result = client.ack(QUEUE, [m.receipt for m in batch])
                self.acked.update(m.id for m in batch if m.receipt not in result.stale)

    def check(self) -> None:
        lost = self.confirmed - set(self.delivered)
        assert not lost, f"confirmed but never delivered: {sorted(lost)[:20]}"
        assert not self.after_ack, f"delivered after their ack: {self.after_ack[:20]}"
        unexpected = set(self.delivered) - {f"m{n}" for n in range(MESSAGES)}
        assert not unexpected, f"delivered but never published: {sorted(unexpected)[:20]}"
        twice = {i for i, count in Counter(self.delivered).items() if count > 1}
        assert twice <= self.ack_failed, f"delivered twice: {sorted(twice - self.ack_failed)[:20]}"


def test_readded_node_with_an_empty_data_dir_stays_a_member(cluster: LocalTestCluster) -> None:
    """A node removed and started again with an empty data dir and --join (README) must
    not replay its old removal, stop, and stay in the configuration as a dead member."""
    n1, n2, n3 = cluster.nodes
    with Client(cluster.urls) as client:
        client.declare_queue(QUEUE)
        client.publish_batch(QUEUE, [{"body": str(i), "id": str(i)} for i in range(50)])
    done = ctl("--url", n2.url, "remove-node", n1.node_id)
    assert done.returncode == 0, done.stderr
    assert "leader" in done.stdout  # the member table names the leader in its ROLE column
    assert n1.process is not None and n1.process.wait(timeout=30) == 0

    rejoin_empty(cluster, n1, via=n2)
    wait_for(lambda: agreed_members(cluster, [n1, n2, n3]), 60, "n1 to be a live member again")
    statuses = cluster.wait_converged()
    assert len(statuses) == 3
    assert n1.alive, n1.log_path.read_text()[-2000:]
    assert not (n1.data_dir / "REMOVED").exists()
    with Client([n1.url]) as client:
        assert client.queue(QUEUE)["total"] == 50
    # It restarts with its data dir (it was not marked removed) and is still a member.
    cluster.restart(n1)
    wait_for(lambda: ready(n1), 60, "the re-added node to restart")
    wait_for(lambda: agreed_members(cluster, [n1, n2, n3]), 60, "n1 to be a member after restart")


def test_add_and_remove_nodes_under_load_as_the_readme_says(cluster: LocalTestCluster) -> None:
    n1, n2, n3 = cluster.nodes
    with Client(cluster.urls) as client:
        client.declare_queue(QUEUE, visibility_timeout=60)
    n4 = cluster._new_node()
    # Clients know the founders' URLs and n4's; removed nodes stop answering.
    urls = cluster.urls
    traffic = Traffic()
    threads = [
        threading.Thread(target=traffic.produce, args=(urls,)),
        threading.Thread(target=traffic.consume, args=(urls,)),
    ]
    for thread in threads:
        thread.start()
    try:

        def progress(more: int) -> None:
            target = min(traffic.confirmed_count() + more, MESSAGES)
            wait_for(lambda: traffic.confirmed_count() >= target, 60, f"{target} confirmed")

        progress(100)
        # Adding a node: an empty data dir and --join pointing at any member.
        n4.join_url = n1.url
        cluster.start_node(n4)
        wait_for(lambda: ready(n4), 60, "n4 ready")
        wait_for(lambda: agreed_members(cluster, [n1, n2, n3, n4]), 60, "four members")
        members = ctl("--url", n4.url, "members")
        assert members.returncode == 0, members.stderr
        assert all(n.node_id in members.stdout for n in (n1, n2, n3, n4))
        progress(100)

        # Removing a follower.
        leader = cluster.wait_leader()
        follower = next(n for n in (n1, n2, n3) if n is not leader)
        done = ctl("--url", n4.url, "remove-node", follower.node_id)
        assert done.returncode == 0, done.stderr
        assert follower.process is not None and follower.process.wait(timeout=30) == 0
        rest = [n for n in (n1, n2, n3, n4) if n is not follower]
        wait_for(lambda: agreed_members(cluster, rest), 60, "three members")
        progress(100)

        # Removing the leader (through another node: it redirects to the new leader).
        leader = cluster.wait_leader()
        other = next(n for n in rest if n is not leader)
        done = ctl("--url", other.url, "remove-node", leader.node_id)
        assert done.returncode == 0, done.stderr
        assert leader.process is not None and leader.process.wait(timeout=30) == 0
        rest = [n for n in rest if n is not leader]
        wait_for(lambda: agreed_members(cluster, rest), 60, "two members")
        progress(100)

        # A removed node restarted with its old data dir refuses to start.
        cluster.start_node(leader)
        assert leader.process is not None and leader.process.wait(timeout=60) == 2
        assert "was removed from its cluster" in leader.log_path.read_text()

        # The removed follower comes back with an empty data dir and --join.
        rejoin_empty(cluster, follower, via=rest[0])
        rest.append(follower)
        wait_for(lambda: ready(follower), 60, "the re-added node ready")
        wait_for(lambda: agreed_members(cluster, rest), 60, "the re-added node a member")
        progress(100)
        assert traffic.produced_all.wait(timeout=120), "the producer did not finish"
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    # A client whose first URL is a removed (stopped) node recovers.
    traffic.drain([leader.url, *urls])
    traffic.check()
    assert len(traffic.confirmed) == MESSAGES
    statuses = cluster.wait_converged()
    assert len(statuses) == 3
    status = ctl("--url", follower.url, "--json", "status")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert {m["id"] for m in view["members"]} == {n.node_id for n in rest}
    assert view["leader"]["id"] in {n.node_id for n in rest}
    # As people read it: every line has a value (there is no last log index, and a
    # digest only when asked for; both used to print "-").
    human = ctl("--url", follower.url, "status").stdout
    assert "log length" in human and "digest" not in human
    values = [line.split()[-1] for line in human.splitlines()[:7] if line.strip()]
    assert values and "-" not in values


def test_backup_and_restore_keeps_queues_exchanges_bindings_and_streams(
    cluster: LocalTestCluster, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    ids = [f"o{i}" for i in range(300)]
    with Client(cluster.urls) as client:
        client.declare_queue("orders.dlq")
        client.declare_queue(
            "orders", visibility_timeout=30, max_deliveries=5, dead_letter_queue="orders.dlq"
        )
        client.declare_queue("later", delivery_delay=600)
        client.declare_exchange("events", "topic", alternate_queue="orders.dlq")
        client.bind("events", "orders", "orders.#")
        client.declare_stream("clicks", max_records=1000)
        client.append("clicks", [f"c{i}" for i in range(50)])
        client.commit_offset("clicks", "dashboard", 20)
        client.publish_batch("orders", [{"body": i, "id": i} for i in ids])
        routed = client.publish_to_exchange("events", "orders.eu", {"body": "x", "id": "via-x"})
        assert routed.routed == {"orders": 1}
        client.publish("later", "in ten minutes", id="later-1")
        before = {q["name"]: q for q in client.queues()}
        exchanges, streams = client.exchanges(), client.streams()
    follower = cluster.follower()
    cluster.wait_converged()
    backup = tmp_path / "raftmq.backup"
    # The first URL answers nothing: the backup comes from the next node that does.
    nobody = f"http://127.0.0.1:{free_port()}"
    done = ctl("--url", f"{nobody},{follower.url}", "backup", "--out", str(backup))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {backup}: ")

    restored = make_cluster(3, ["--restore", str(backup)]).start()
    restored.wait_converged(60)
    with Client(restored.urls) as client:
        after = {q["name"]: q for q in client.queues()}
        assert after.keys() == before.keys()
        for name, info in before.items():
            assert after[name]["config"] == info["config"]
            assert after[name]["total"] == info["total"]
        assert client.exchanges() == exchanges
        assert [{**s, "groups": None} for s in client.streams()] == [
            {**s, "groups": None} for s in streams
        ]
        assert client.group_offset("clicks", "dashboard") == 20
        assert [r.offset for r in client.read("clicks", group="dashboard", max=3).records] == [
            20,
            21,
            22,
        ]
        # Publish ids are still remembered: a retry is not a duplicate.
        client.publish("orders", "again", id="o1")
        assert client.queue("orders")["total"] == len(ids) + 1
    remaining: list[str] = []
    with Client(restored.urls) as client:
        while batch := client.receive("orders", max=500, wait=0.5):
            remaining.extend(m.id for m in batch)
            client.ack("orders", [m.receipt for m in batch])
    assert sorted(remaining) == sorted([*ids, "via-x"])
