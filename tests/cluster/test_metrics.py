"""Prometheus metrics scraped from every node of a cluster after publish, receive and ack."""

import re

from raftmq import Client
from tests.cluster.harness import LocalTestCluster, scrape, wait_for


def test_every_node_exposes_queue_raft_http_and_process_metrics(cluster: LocalTestCluster) -> None:
    with Client(cluster.urls) as client:
        client.declare_queue("metered")
        client.publish_batch("metered", [{"body": str(i)} for i in range(10)])
        received = client.receive("metered", max=4)
        client.ack("metered", [m.receipt for m in received[:3]])
    leader = cluster.wait_leader()
    cluster.wait_converged()

    def queue_metrics_everywhere() -> bool:
        return all(
            scrape(n.url).get('raftmq_queue_acked_messages_total{queue="metered"}') == 3.0
            for n in cluster.nodes
        )

    wait_for(queue_metrics_everywhere, 30, "queue counters on every node")
    for node in cluster.nodes:
        samples = scrape(node.url)
        queue = '{queue="metered"}'
        assert samples[f"raftmq_queue_ready_messages{queue}"] == 6.0
        assert samples[f"raftmq_queue_in_flight_messages{queue}"] == 1.0
        assert samples[f"raftmq_queue_delayed_messages{queue}"] == 0.0
        assert samples[f"raftmq_queue_published_messages_total{queue}"] == 10.0
        assert samples[f"raftmq_queue_delivered_messages_total{queue}"] == 4.0
        assert samples[f"raftmq_queue_dead_lettered_messages_total{queue}"] == 0.0
        role = "leader" if node is leader else "follower"
        assert samples[f'raftmq_raft_role{{role="{role}"}}'] == 1.0
        assert samples["raftmq_raft_term"] >= 1
        assert samples["raftmq_raft_applied_index"] >= samples["raftmq_raft_commit_index"] - 5
        assert samples["raftmq_raft_leader_changes_total"] >= 1
        assert samples["process_resident_memory_bytes"] > 10e6
        assert samples["raftmq_lmdb_file_bytes"] > 0
        assert samples["raftmq_raft_journal_bytes"] > 0
        assert any(k.startswith("raftmq_http_request_duration_seconds_count") for k in samples)
    leader_samples = scrape(leader.url)
    followers = [n for n in cluster.nodes if n is not leader]
    for follower in followers:
        assert f'raftmq_raft_follower_lag_entries{{follower="{follower.raft}"}}' in leader_samples
    assert leader_samples['raftmq_proposer_entry_commands_bucket{le="+Inf"}'] >= 4
    assert any(
        re.match(
            r'raftmq_http_request_duration_seconds_count\{.*route="/v1/queues/\{queue\}/receive"', k
        )
        for k in leader_samples
    )
