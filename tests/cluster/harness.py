"""Real raftmq node processes on 127.0.0.1 for cluster tests.

Ports: each pytest-xdist worker owns a disjoint range below the kernel's
ephemeral range, so no other worker and no outgoing connection can take a
port between the probe and the node's bind. Every process started is killed
in `stop()`; the fixture calls it even when the test fails, and dumps the
node logs of a failed test.
"""

import http.client
import itertools
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from raftmq.supervisor import die_with_parent

T = TypeVar("T")

_PORTS_PER_WORKER = 600
# The last 200 ports of each worker's range are a block for `raftmq cluster up`,
# which numbers its ports from a base (raft base.., http base+100..).
_BLOCK_PORTS = 200
_PORT_BASE = 20000


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


_RANGE_START = _PORT_BASE + _worker_index() * _PORTS_PER_WORKER
_port_cycle = itertools.cycle(range(_RANGE_START, _RANGE_START + _PORTS_PER_WORKER - _BLOCK_PORTS))


def port_block_base() -> int:
    """Base of this worker's block: base..base+99 and base+100..base+199 are ours."""
    return _RANGE_START + _PORTS_PER_WORKER - _BLOCK_PORTS


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    for _ in range(_PORTS_PER_WORKER - _BLOCK_PORTS):
        port = next(_port_cycle)
        if _port_is_free(port):
            return port
    raise RuntimeError("no free port in this worker's range")


def wait_for(
    condition: Callable[[], T | None], timeout_s: float = 30.0, what: str = "condition"
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what} (last error: {last_error})"
    )


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    """`raftmq ctl ARGS` as an operator types it (its output captured, never raising)."""
    return subprocess.run(
        [sys.executable, "-m", "raftmq", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any


def request(
    method: str,
    url: str,
    body: Any = None,
    raw: bytes | None = None,
    timeout_s: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> Response:
    """One HTTP(S) request without following redirects; `context` verifies https nodes."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    conn = (
        http.client.HTTPSConnection(host, parts.port, timeout=timeout_s, context=context)
        if parts.scheme == "https"
        else http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
    )
    try:
        data = raw if raw is not None else (None if body is None else orjson.dumps(body))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        is_json = headers.get("content-type", "").startswith("application/json")
        parsed = orjson.loads(payload) if payload and is_json else payload.decode(errors="replace")
        return Response(resp.status, headers, parsed)
    finally:
        conn.close()


@dataclass
class NodeProc:
    node_id: str
    raft: str
    http_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    join_url: str | None = None
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalTestCluster:
    """N nodes as separate processes; `extra_args` go to every node.

    With `scheme="https"` (the nodes get --tls-* in `extra_args`) the harness's
    own requests verify the nodes with `context`.
    """

    def __init__(
        self,
        root: Path,
        size: int = 3,
        extra_args: list[str] | None = None,
        scheme: str = "http",
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.root = root
        self.extra_args = list(extra_args or [])
        self.scheme = scheme
        self.context = context
        self.nodes: list[NodeProc] = []
        self.founders: list[NodeProc] = []
        for _ in range(size):
            self.founders.append(self._new_node())

    def _new_node(self) -> NodeProc:
        node_id = f"n{len(self.nodes) + 1}"
        data_dir = self.root / node_id
        data_dir.mkdir(parents=True, exist_ok=True)
        node = NodeProc(
            node_id=node_id,
            raft=f"127.0.0.1:{free_port()}",
            http_port=free_port(),
            data_dir=data_dir,
            log_path=self.root / f"{node_id}.log",
            scheme=self.scheme,
        )
        self.nodes.append(node)
        return node

    def add_node(self, join_via: NodeProc) -> NodeProc:
        """Start a new node with an empty data dir that joins through `join_via`."""
        node = self._new_node()
        node.join_url = join_via.url
        self.start_node(node)
        return node

    def remove_node(self, node: NodeProc, via: NodeProc) -> dict[str, Any]:
        """DELETE the member through `via`, following redirects; return the answer."""
        url = via.url + f"/v1/cluster/members/{node.node_id}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            resp = request("DELETE", url, timeout_s=30, context=self.context)
            if resp.status == 307:
                url = resp.headers["location"]
                continue
            if resp.status == 503:  # election after a leadership hand-over: retry, as ctl does
                url = via.url + f"/v1/cluster/members/{node.node_id}"
                time.sleep(0.2)
                continue
            assert resp.status == 200, resp.body
            body: dict[str, Any] = resp.body
            return body
        raise AssertionError(
            f"could not remove {node.node_id} within 60 s; last answer {resp.status} {resp.body}"
        )

    @property
    def members(self) -> list[NodeProc]:
        """Nodes that are running (removed nodes stop themselves)."""
        return [n for n in self.nodes if n.alive]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> "LocalTestCluster":
        for node in self.nodes:
            self.start_node(node)
        self.wait_leader()
        return self

    def start_node(self, node: NodeProc) -> None:
        peers = ",".join(n.raft for n in self.founders if n is not node)
        args = [
            sys.executable,
            "-m",
            "node",
            "--id",
            node.node_id,
            "--data-dir",
            str(node.data_dir),
            "--raft",
            node.raft,
            "--http",
            f"127.0.0.1:{node.http_port}",
            "--peers",
            "" if node.join_url else peers,
            *(["--join", node.join_url] if node.join_url else []),
            *self.extra_args,
        ]
        log = open(node.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        try:
            node.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call, no locks
            )
        finally:
            log.close()

    def kill(self, node: NodeProc, sig: int = signal.SIGKILL) -> None:
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(sig)
            node.process.wait(timeout=30)

    def restart(self, node: NodeProc) -> None:
        self.kill(node)
        self.start_node(node)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
        for node in self.nodes:
            if node.process is not None:
                node.process.wait(timeout=30)

    def status(self, node: NodeProc, digest: bool = False) -> dict[str, Any]:
        resp = request(
            "GET",
            node.url + "/v1/cluster" + ("?digest=1" if digest else ""),
            context=self.context,
        )
        assert resp.status == 200, resp.body
        body: dict[str, Any] = resp.body
        return body

    def leader(self) -> NodeProc | None:
        """The node every live node names as leader, once they agree and it is registered."""
        seen = set()
        for node in self.nodes:
            if not node.alive:
                continue
            leader = self.status(node)["leader"]
            if leader is None or leader.get("http") is None:
                return None
            seen.add(leader["raft"])
        if len(seen) != 1:
            return None
        raft = seen.pop()
        return next(n for n in self.nodes if n.raft == raft)

    def wait_leader(self, timeout_s: float = 30.0) -> NodeProc:
        def registered_leader() -> NodeProc | None:
            leader = self.leader()
            if leader is None or not leader.alive:
                return None
            members = self.status(leader)["members"]
            live = {n.raft for n in self.nodes if n.alive}
            if any(m["http"] is None for m in members if m["raft"] in live):
                return None
            return leader

        return wait_for(registered_leader, timeout_s, "an agreed, registered leader")

    def follower(self) -> NodeProc:
        leader = self.wait_leader()
        return next(n for n in self.nodes if n is not leader and n.alive)

    def wait_converged(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Wait until every live node reports the same applied index and state digest."""

        def converged() -> list[dict[str, Any]] | None:
            statuses = [self.status(n, digest=True) for n in self.nodes if n.alive]
            keys = {(s["applied_index"], s["digest"]) for s in statuses}
            return statuses if len(keys) == 1 else None

        return wait_for(converged, timeout_s, "replicas to converge")

    def dump_logs(self) -> str:
        parts = []
        for node in self.nodes:
            text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
            parts.append(f"===== {node.node_id} ({node.raft}, {node.url}) =====\n{text[-20000:]}")
        return "\n".join(parts)


def scrape(url: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample in the exposition."""
    resp = request("GET", url + "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in str(resp.body).splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples
