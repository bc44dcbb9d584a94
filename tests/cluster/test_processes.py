"""The processes operators run: `raftmq cluster up` (what `make run` starts) and SIGTERM."""

import signal
import subprocess
import sys
from pathlib import Path

from tests.cluster.harness import LocalTestCluster, port_block_base, request, wait_for


def test_cluster_up_serves_three_nodes_that_agree_on_the_leader(tmp_path: Path) -> None:
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    assert "raftmq cluster up --nodes 3" in makefile
    base = port_block_base()
    urls = [f"http://127.0.0.1:{base + 100 + i}" for i in range(3)]
    args = [sys.executable, "-m", "raftmq", "cluster", "up", "--nodes", "3"]
    args += ["--data-dir", str(tmp_path / "data"), "--base-port", str(base)]
    with open(tmp_path / "cluster-up.log", "wb") as log:
        supervisor = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:

        def same_leader() -> set[str] | None:
            leaders = set()
            for url in urls:
                leader = request("GET", url + "/v1/cluster").body["leader"]
                if leader is None or leader["http"] is None:
                    return None
                leaders.add(leader["http"])
            return leaders if len(leaders) == 1 else None

        [leader_url] = wait_for(same_leader, 60, "all three nodes to name one leader")
        assert leader_url in urls
        assert request("GET", urls[0] + "/").status == 200
        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(timeout=30) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    for url in urls:
        wait_for(lambda u=url: _refused(u), 10, f"{url} to stop")  # type: ignore[misc]


def _refused(url: str) -> bool:
    try:
        request("GET", url + "/healthz", timeout_s=1)
    except OSError:
        return True
    return False


def test_sigterm_stops_a_node_cleanly_and_it_rejoins(cluster: LocalTestCluster) -> None:
    node = cluster.follower()
    assert node.process is not None
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=30) == 0
    assert f"node {node.node_id} stopped" in node.log_path.read_text()
    cluster.start_node(node)
    cluster.wait_leader()
    cluster.wait_converged()
