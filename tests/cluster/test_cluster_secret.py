"""A node with the wrong --cluster-secret never becomes a member and cannot disturb the cluster.

pysyncobj encrypts and authenticates every Raft message with the secret (Fernet);
a message that does not decrypt closes the connection before it is unpickled,
so a wrong-secret node's vote requests never reach the Raft logic. Joining over
HTTP is refused before the membership changes (the join carries an HMAC proof
of the secret), so the node cannot become an unreachable member either.
"""

import socket
import struct
import time

from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import LocalTestCluster, NodeProc, request, wait_for


def _start_with_secret(cluster: LocalTestCluster, node: NodeProc, secret: str) -> None:
    saved = cluster.extra_args
    cluster.extra_args = [*saved, "--cluster-secret", secret]  # the last flag wins
    try:
        cluster.start_node(node)
    finally:
        cluster.extra_args = saved


def test_wrong_secret_node_never_joins_nor_disrupts(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(extra_args=["--cluster-secret", "secret-A"]).start()
    leader = cluster.wait_leader()
    before = cluster.status(leader)
    members = {m["raft"] for m in before["members"]}

    joiner = cluster._new_node()
    joiner.join_url = leader.url
    _start_with_secret(cluster, joiner, "secret-B")
    assert joiner.process is not None
    assert joiner.process.wait(timeout=60) != 0
    assert "cluster_secret_mismatch" in joiner.log_path.read_text()

    intruder = cluster._new_node()  # --peers lists the three members
    _start_with_secret(cluster, intruder, "secret-B")

    wait_for(lambda: cluster.status(intruder), 30, "the wrong-secret node to answer HTTP")
    # "Nothing happens" needs a window: several election timeouts (0.5-1 s). pysyncobj only
    # campaigns once connected to a peer, and the handshake never completes without the secret.
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        seen = cluster.status(intruder)
        assert seen["leader"] is None and seen["role"] != "leader"
        assert cluster.status(leader)["term"] == before["term"]
        time.sleep(0.2)
    assert intruder.alive

    for node in cluster.founders:
        status = cluster.status(node)
        assert status["term"] == before["term"], node.node_id
        assert {m["raft"] for m in status["members"]} == members
        assert status["leader"]["raft"] == leader.raft
    resp = request("PUT", leader.url + "/v1/queues/after", {})
    assert resp.status == 201
    resp = request("POST", leader.url + "/v1/queues/after/messages", {"messages": [{"body": "x"}]})
    assert resp.status == 200
    cluster.kill(intruder)
    statuses = cluster.wait_converged()
    assert {s["term"] for s in statuses} == {before["term"]}


def test_a_stranger_on_the_raft_port_cannot_make_a_node_buffer(
    make_cluster: ClusterFactory,
) -> None:
    """pysyncobj would buffer whatever a connection sends until the announced length arrives."""
    cluster = make_cluster(extra_args=["--cluster-secret", "secret-A"]).start()
    leader = cluster.wait_leader()
    host, port = leader.raft.rsplit(":", 1)
    junk = b"\x00" * 65536
    for announced in (2**31 - 1, 100):
        sent = 0
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            try:
                sock.sendall(struct.pack("i", announced))
                while sent < 64 << 20:
                    sock.sendall(junk)
                    sent += len(junk)
            except (ConnectionResetError, BrokenPipeError):
                pass
            else:
                raise AssertionError(f"the node took {sent} bytes announced as {announced}")
        assert sent < 16 << 20  # what the kernel buffers held before the reset
    assert "closing a Raft connection that sent more than" in leader.log_path.read_text()
    assert all(node.alive for node in cluster.nodes)
    resp = request("PUT", cluster.wait_leader().url + "/v1/queues/after", {})
    assert resp.status == 201
