"""The docker-compose topology, run as plain processes with the file's own commands.

No Docker engine runs where the tests do; `make compose-check` validates the
file itself with docker-compose. This test reads each service's command from
the file and runs it as a local process, mapping service host names and ports
to loopback ports, so the flags the file passes are the flags that are tested.
"""

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from raftmq.supervisor import die_with_parent
from tests.cluster.harness import free_port, request, wait_for

COMPOSE = Path(__file__).parents[2] / "docker-compose.cluster.yml"
SECRET = "compose-test-secret"


class Topology:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = yaml.safe_load(COMPOSE.read_text())
        self.raft_ports: dict[str, int] = {}
        self.http_ports: dict[str, int] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for name in self.spec["services"]:
            self.raft_ports[name] = free_port()
            self.http_ports[name] = free_port()

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.http_ports[service]}"

    def localize(self, service: str, arg: str) -> str:
        """One command argument of `service`, with names and ports moved to loopback."""
        arg = arg.replace("${RAFTMQ_CLUSTER_SECRET:?set RAFTMQ_CLUSTER_SECRET}", SECRET)
        if arg == "/data":
            return str(self.root / service)
        if arg == "0.0.0.0:7200":
            return f"127.0.0.1:{self.http_ports[service]}"

        def to_raft(match: re.Match[str]) -> str:
            return f"127.0.0.1:{self.raft_ports[match.group(1)]}"

        def to_http(match: re.Match[str]) -> str:
            return self.url(match.group(1))

        arg = re.sub(r"http://(n\d+):7200", to_http, arg)
        return re.sub(r"\b(n\d+):7100\b", to_raft, arg)

    def start(self, service: str) -> None:
        command = [self.localize(service, a) for a in self.spec["services"][service]["command"]]
        assert "${" not in " ".join(command), command
        log = open(self.root / f"{service}.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.processes[service] = subprocess.Popen(
                [sys.executable, "-m", "raftmq", *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call, no locks
            )
        finally:
            log.close()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)

    def ready(self, service: str) -> bool:
        """The compose health check: GET /readyz answers 200."""
        try:
            return request("GET", self.url(service) + "/readyz", timeout_s=2).status == 200
        except OSError:
            return False

    def view(self, service: str) -> tuple[Any, frozenset[str]]:
        status = request("GET", self.url(service) + "/v1/cluster").body
        leader = status["leader"]["http"] if status["leader"] else None
        return leader, frozenset(str(m["id"]) for m in status["members"])


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    topo = Topology(tmp_path)
    try:
        yield topo
    finally:
        topo.stop()


def test_compose_services_are_a_three_node_cluster_and_n4_joins(topology: Topology) -> None:
    services = topology.spec["services"]
    founders = [name for name, spec in services.items() if "profiles" not in spec]
    assert founders == ["n1", "n2", "n3"]
    for service in services.values():
        assert "--cluster-secret" in service["command"]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
    for name in founders:
        topology.start(name)
    wait_for(lambda: all(topology.ready(n) for n in founders), 60, "every node ready")

    def agreed(names: list[str]) -> bool:
        views = {topology.view(n) for n in names}
        return len(views) == 1 and next(iter(views))[1] == frozenset(names)

    wait_for(lambda: agreed(founders), 60, "one leader and three members")
    leader_url, _ = topology.view("n1")
    assert leader_url in {topology.url(n) for n in founders}

    topology.start("n4")
    wait_for(lambda: topology.ready("n4") and agreed([*founders, "n4"]), 60, "n4 to join")
