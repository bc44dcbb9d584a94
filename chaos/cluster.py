"""Node processes for chaos runs, and the network they live on.

Two topologies:

* :class:`LoopbackTopology`: every node on one random ``127.a.b.c`` address
  (fixed ports, so no port races with other tests, which use 127.0.0.1).
  Enough for kill, pause and restart-all.
* :class:`NetnsTopology`: one network namespace per node, each joined by a
  veth pair to a bridge in the root namespace, addresses in a private /24
  chosen per run (``10.213.N.0/24``; the harness is ``.254`` on the bridge).
  Partitions are firewall rules inside the node namespaces (nftables, or
  iptables when nft is missing) that drop packets to and from given peers: a
  real kernel-level fault, not a simulation. The harness address is never
  dropped, so clients keep reaching every node (Jepsen style: partitions are
  between nodes).

Every name carries a per-run suffix; everything created is removed in
``teardown()``, which runs from ``finally`` blocks and from ``atexit``, and a
state file under ``/run/raftmq-chaos`` lets a later run remove what a run
that was SIGKILLed left behind. Processes are only ever signalled by the PID
this module got from ``Popen``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import http.client
import ipaddress
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

import orjson

from raftmq.supervisor import die_with_parent

__all__ = [
    "ChaosCluster",
    "HttpResult",
    "LoopbackTopology",
    "NetnsError",
    "NetnsTopology",
    "NodeSpec",
    "Placement",
    "Removal",
    "Topology",
    "http_json",
    "netns_unavailable_reason",
]

log = logging.getLogger(__name__)

RAFT_PORT = 7100
HTTP_PORT = 7200
STATE_DIR = Path("/run/raftmq-chaos")
NFT_TABLE = "rmqchaos"
STOP_GRACE_S = 10.0
COMMAND_TIMEOUT_S = 20.0
# A removal's request waits for up to three Raft steps on the leader (hand-over,
# unregistration, configuration change: 5 s each at most), so a slower answer is a
# timeout of ours, not theirs.
REMOVAL_REQUEST_TIMEOUT_S = 20.0
# Codes of a refused removal: nothing changed, the window records it and ends.
REMOVAL_REFUSALS = frozenset({"membership_change_in_progress", "would_lose_quorum"})


class NetnsError(RuntimeError):
    """Setting up or changing the namespace topology failed."""


# ----------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class HttpResult:
    """One HTTP exchange without redirects; ``status`` None when no answer came."""

    status: int | None
    body: Any
    headers: dict[str, str]
    error: str | None = None


def http_json(method: str, url: str, body: Any = None, timeout: float = 2.0) -> HttpResult:
    """One request to exactly ``url`` (a 307 is returned, not followed)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        data = None if body is None else orjson.dumps(body)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        parsed: Any = payload.decode("utf-8", "replace")
        if headers.get("content-type", "").startswith("application/json") and payload:
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(payload)
        return HttpResult(resp.status, parsed, headers)
    except (OSError, http.client.HTTPException) as e:
        return HttpResult(None, None, {}, f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def _error_code(body: Any) -> str | None:
    """``code`` of an API error body ``{"error": {"code": ...}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None


def _refused(error: str | None) -> bool:
    """The connection was refused: the request never reached a node."""
    return error is not None and error.startswith("ConnectionRefusedError")


# ------------------------------------------------------------------ commands


def _run(argv: Sequence[str], *, check: bool = True, stdin: str | None = None) -> str:
    """Runs a short system command; raises NetnsError (with stderr) when it fails and ``check``."""
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        if check:
            raise NetnsError(f"{' '.join(argv)}: {e}") from e
        return ""
    if proc.returncode != 0 and check:
        raise NetnsError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _firewall_tool() -> str | None:
    if shutil.which("nft"):
        return "nft"
    if shutil.which("iptables"):
        return "iptables"
    return None


def netns_unavailable_reason() -> str | None:
    """Why real partitions cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces and firewall rules need root (run as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (package iproute2) is not installed"
    if _firewall_tool() is None:
        return "neither `nft` (package nftables) nor `iptables` is installed"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    return None


# ----------------------------------------------------------------- topologies


@dataclass(frozen=True)
class NodeSpec:
    """Where one node lives; everything is derived from its index and the topology."""

    id: str
    host: str
    data_dir: Path
    log_path: Path
    netns: str | None = None
    raft_port: int = RAFT_PORT
    http_port: int = HTTP_PORT

    @property
    def raft(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


@dataclass(frozen=True)
class Placement:
    """Where the topology put one node."""

    host: str
    netns: str | None
    raft_port: int = RAFT_PORT
    http_port: int = HTTP_PORT


class Topology(Protocol):
    """Addresses for the nodes, how to launch into them, and (maybe) partitions."""

    name: str
    supports_partition: bool

    def setup(self, size: int) -> list[Placement]:
        """Creates the network; returns where each node goes."""
        ...

    def launch_prefix(self, netns: str | None) -> list[str]: ...

    def cut(self, hosts: dict[str, str], pairs: Iterable[tuple[str, str]]) -> None: ...

    def heal(self, hosts: dict[str, str]) -> None: ...

    def teardown(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class LoopbackTopology:
    """All nodes on one random loopback address; no partitions."""

    name = "loopback"
    supports_partition = False

    def __init__(self) -> None:
        self.host = ""
        self.base_port = RAFT_PORT

    def setup(self, size: int) -> list[Placement]:
        rng = random.SystemRandom()
        for attempt in range(200):
            host = f"127.{rng.randint(64, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
            # The usual ports first; random ones (below the ephemeral range) if something
            # holds them on every address (a listener on 0.0.0.0).
            base = RAFT_PORT if attempt < 10 else rng.randrange(20000, 32000, 200)
            ports = [base + k for k in range(size)] + [base + 100 + k for k in range(size)]
            if all(_port_free(host, p) for p in ports):
                self.host, self.base_port = host, base
                return [Placement(host, None, base + k, base + 100 + k) for k in range(size)]
        raise RuntimeError("no free loopback address and ports found")

    def launch_prefix(self, netns: str | None) -> list[str]:
        return []

    def cut(self, hosts: dict[str, str], pairs: Iterable[tuple[str, str]]) -> None:
        raise NetnsError("the loopback topology cannot partition")

    def heal(self, hosts: dict[str, str]) -> None:
        return None

    def teardown(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"topology": self.name, "host": self.host, "base_port": self.base_port}


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live owner from a reused PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class NetnsTopology:
    """One namespace per node on a bridge in the root namespace; nftables partitions."""

    name = "netns"
    supports_partition = True

    def __init__(self, firewall: str | None = None) -> None:
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsError(reason)
        self.firewall = firewall or _firewall_tool() or "nft"
        self.suffix = os.urandom(2).hex()
        self.bridge = f"rmqb{self.suffix}"
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.subnet = ""
        self.harness_ip = ""
        self._lock = threading.Lock()
        self._torn_down = False
        self._state_file = STATE_DIR / f"{self.suffix}.json"

    # ---------------------------------------------------------------- setup

    def setup(self, size: int) -> list[Placement]:
        atexit.register(self.teardown)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        cleanup_stale()
        try:
            with (STATE_DIR / "subnet.lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                prefix = _free_prefix()
                self.subnet = f"{prefix}.0/24"
                self.harness_ip = f"{prefix}.254"
                self._save_state()
                _run(["ip", "link", "add", self.bridge, "type", "bridge"])
                self.links.append(self.bridge)
                self._save_state()
                _run(["ip", "addr", "add", f"{self.harness_ip}/24", "dev", self.bridge])
                _run(["ip", "link", "set", self.bridge, "up"])
            out: list[Placement] = []
            for k in range(1, size + 1):
                host = f"{prefix}.{k}"
                ns = f"rmq{self.suffix}n{k}"
                self._add_node(ns, host, k)
                out.append(Placement(host, ns))
            self._check_firewall(out[0].netns or "")
            log.info(
                "netns topology %s: bridge %s, subnet %s, namespaces %s (firewall: %s)",
                self.suffix,
                self.bridge,
                self.subnet,
                ",".join(self.namespaces),
                self.firewall,
            )
            return out
        except BaseException:
            self.teardown()
            raise

    def _add_node(self, ns: str, host: str, k: int) -> None:
        host_end = f"rmq{self.suffix}n{k}h"
        ns_end = f"rmq{self.suffix}n{k}c"
        _run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self._save_state()
        _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end])
        self.links.append(host_end)
        self._save_state()
        _run(["ip", "link", "set", host_end, "master", self.bridge])
        _run(["ip", "link", "set", host_end, "up"])
        _run(["ip", "link", "set", ns_end, "netns", ns])
        inside = ["ip", "netns", "exec", ns]
        _run([*inside, "ip", "link", "set", ns_end, "name", "eth0"])
        _run([*inside, "ip", "addr", "add", f"{host}/24", "dev", "eth0"])
        _run([*inside, "ip", "link", "set", "eth0", "up"])
        _run([*inside, "ip", "link", "set", "lo", "up"])

    def _check_firewall(self, ns: str) -> None:
        """Proves the firewall tool works inside a namespace now, not mid-run."""
        try:
            self._apply(ns, [])
        except NetnsError as e:
            if self.firewall == "nft" and shutil.which("iptables"):
                log.warning("nft does not work here (%s); using iptables", e)
                self.firewall = "iptables"
                self._apply(ns, [])
            else:
                raise

    def _save_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "start_time": _start_time(os.getpid()),
            "namespaces": self.namespaces,
            "links": self.links,
            "subnet": self.subnet,
        }
        self._state_file.write_bytes(orjson.dumps(state))

    def launch_prefix(self, netns: str | None) -> list[str]:
        if netns is None:
            raise NetnsError("a node of the netns topology needs its namespace")
        return ["ip", "netns", "exec", netns]

    # ------------------------------------------------------------ partitions

    def cut(self, hosts: dict[str, str], pairs: Iterable[tuple[str, str]]) -> None:
        """Drops traffic between each pair of nodes (by namespace), in both directions."""
        blocked: dict[str, set[str]] = {ns: set() for ns in hosts}
        for a, b in pairs:
            blocked[a].add(hosts[b])
            blocked[b].add(hosts[a])
        with self._lock:
            for ns, peers in blocked.items():
                self._apply(ns, sorted(peers))

    def heal(self, hosts: dict[str, str]) -> None:
        with self._lock:
            for ns in hosts:
                self._apply(ns, [])

    def _apply(self, ns: str, peers: list[str]) -> None:
        """Replaces ``ns``'s drop rules by drops to and from ``peers`` (none: heal)."""
        inside = ["ip", "netns", "exec", ns]
        if self.firewall == "nft":
            script = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
            if peers:
                addrs = ", ".join(peers)
                script += (
                    f"table inet {NFT_TABLE} {{\n"
                    "  chain input {\n"
                    "    type filter hook input priority 0; policy accept;\n"
                    f"    ip saddr {{ {addrs} }} drop\n"
                    "  }\n"
                    "  chain output {\n"
                    "    type filter hook output priority 0; policy accept;\n"
                    f"    ip daddr {{ {addrs} }} drop\n"
                    "  }\n"
                    "}\n"
                )
            _run([*inside, "nft", "-f", "-"], stdin=script)
            return
        _run([*inside, "iptables", "-w", "-F", "INPUT"])
        _run([*inside, "iptables", "-w", "-F", "OUTPUT"])
        for peer in peers:
            _run([*inside, "iptables", "-w", "-A", "INPUT", "-s", peer, "-j", "DROP"])
            _run([*inside, "iptables", "-w", "-A", "OUTPUT", "-d", peer, "-j", "DROP"])

    def rules(self, ns: str) -> str:
        """The firewall rules now in ``ns`` (for logs and tests)."""
        inside = ["ip", "netns", "exec", ns]
        if self.firewall == "nft":
            return _run([*inside, "nft", "list", "ruleset"], check=False)
        return _run([*inside, "iptables", "-S"], check=False)

    def tcp_probe(self, ns: str, host: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from inside ``ns`` to ``host:port`` succeeds in time."""
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(({host!r},{port}),timeout={timeout})\n"
            "s.close()\n"
        )
        try:
            proc = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", code],
                capture_output=True,
                timeout=timeout + 10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    # -------------------------------------------------------------- teardown

    def teardown(self) -> None:
        """Removes namespaces, veths and the bridge; safe to call twice and after a failure."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        _remove(self.namespaces, self.links)
        with contextlib.suppress(OSError):
            self._state_file.unlink()
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)
        log.info("netns topology %s removed", self.suffix)

    def describe(self) -> dict[str, Any]:
        return {
            "topology": self.name,
            "subnet": self.subnet,
            "bridge": self.bridge,
            "namespaces": list(self.namespaces),
            "firewall": self.firewall,
            "harness_ip": self.harness_ip,
        }


def _remove(namespaces: Iterable[str], links: Iterable[str]) -> None:
    existing = set(_run(["ip", "netns", "list"], check=False).split())
    for ns in namespaces:
        if ns in existing:
            _run(["ip", "netns", "del", ns], check=False)
    for link in reversed(list(links)):
        if Path(f"/sys/class/net/{link}").exists():
            _run(["ip", "link", "del", link], check=False)


def _free_prefix() -> str:
    """A ``10.213.N`` no interface or route on this host uses yet."""
    used = _run(["ip", "-4", "-o", "addr", "show"], check=False)
    used += _run(["ip", "-4", "route", "show", "table", "all"], check=False)
    taken: list[ipaddress.IPv4Network] = []
    for token in used.split():
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.IPv4Network(token, strict=False))
    candidates = list(range(1, 255))
    random.SystemRandom().shuffle(candidates)
    for n in candidates:
        net = ipaddress.IPv4Network(f"10.213.{n}.0/24")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return f"10.213.{n}"
    raise NetnsError("no free 10.213.N.0/24 subnet")


def cleanup_stale() -> list[str]:
    """Removes what earlier runs left when they died without cleaning up (owner PID gone)."""
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for path in STATE_DIR.glob("*.json"):
        try:
            state = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        pid = int(state.get("pid", 0))
        if pid > 0 and _start_time(pid) == state.get("start_time"):
            continue  # its owner is alive
        log.warning("removing leftovers of a dead chaos run: %s", path.name)
        _remove(state.get("namespaces") or [], state.get("links") or [])
        with contextlib.suppress(OSError):
            path.unlink()
        removed.append(path.stem)
    return removed


# ------------------------------------------------------------------ processes


def _spawn(cmd: list[str], logf: BinaryIO, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Runs on the spawner thread (see ChaosCluster.__post_init__)."""
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call, no locks
    )


@dataclass
class _Node:
    spec: NodeSpec
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    expected_down: bool = False  # killed by us (or never started)
    starts: int = 0
    # Its removal was asked for: when it stops itself, that is not a crash.
    leaving: bool = False
    # Started with an empty data dir and --join since it was removed; restarts keep --join.
    joined: bool = False


@dataclass(frozen=True)
class Removal:
    """What ``DELETE /v1/cluster/members/{id}`` came to.

    ``outcome``: ``removed`` (200), ``refused`` (409 with one of REMOVAL_REFUSALS),
    ``timeout`` (sent, no answer in time: it may still complete) or ``failed``
    (any other answer, or no node took the request).
    """

    outcome: str
    status: int | None = None
    code: str | None = None
    via: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class NodeExit:
    """A node process that ended while it should have been running."""

    node: str
    returncode: int
    log_tail: str


@dataclass
class ChaosCluster:
    """N raftmq node processes on a topology; kill, pause, restart, partition, remove, re-join."""

    root: Path
    size: int
    topology: Topology
    extra_args: list[str] = field(default_factory=list)
    nodes: dict[str, _Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._set_up = False
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the
        # process: nodes (re)started from the nemesis thread would get SIGTERM when it
        # finishes. One long-lived thread forks them all, so they die with the harness.
        self._spawner = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="chaos-spawner"
        )

    # ---------------------------------------------------------------- info

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    @property
    def urls(self) -> list[str]:
        return [n.spec.url for n in self.nodes.values()]

    def spec(self, node_id: str) -> NodeSpec:
        return self.nodes[node_id].spec

    def running(self, node_id: str) -> bool:
        """The process exists and has not exited (it may be stopped with SIGSTOP)."""
        proc = self.nodes[node_id].process
        return proc is not None and proc.poll() is None

    def paused(self, node_id: str) -> bool:
        """Stopped by :meth:`pause` and not resumed yet."""
        return self.nodes[node_id].paused

    def responsive(self) -> list[str]:
        """Nodes that run and are not stopped with SIGSTOP."""
        return [i for i in self.nodes if self.running(i) and not self.paused(i)]

    def pid(self, node_id: str) -> int | None:
        """The PID we signal; with ``ip netns exec`` it is the node itself (exec in place)."""
        proc = self.nodes[node_id].process
        return None if proc is None else proc.pid

    # --------------------------------------------------------------- setup

    def setup(self) -> None:
        """Creates the network and node directories (nodes are not started)."""
        placements = self.topology.setup(self.size)
        self._set_up = True
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        for k, place in enumerate(placements, 1):
            node_id = f"n{k}"
            spec = NodeSpec(
                id=node_id,
                host=place.host,
                data_dir=self.root / "nodes" / node_id,
                log_path=self.root / "nodes" / f"{node_id}.log",
                netns=place.netns,
                raft_port=place.raft_port,
                http_port=place.http_port,
            )
            spec.data_dir.mkdir(parents=True, exist_ok=True)
            self.nodes[node_id] = _Node(spec, expected_down=True)

    def command(self, spec: NodeSpec) -> list[str]:
        """``python -m node ...`` for ``spec``, inside its namespace when it has one.

        A node that joined (after its removal) gets ``--join`` for good, never
        ``--peers``: with its data dir it starts from the members it saved
        (``peers.json``) and does not join again, and if it died before its first
        join completed it asks again instead of starting as a stray founder.
        """
        if self.nodes[spec.id].joined:
            membership = ["--join", self.join_url(spec.id)]
        else:
            peers = ",".join(n.spec.raft for n in self.nodes.values() if n.spec.id != spec.id)
            membership = ["--peers", peers]
        return [
            *self.topology.launch_prefix(spec.netns),
            sys.executable,
            "-m",
            "node",
            "--id",
            spec.id,
            "--data-dir",
            str(spec.data_dir),
            "--raft",
            spec.raft,
            "--http",
            spec.http,
            *membership,
            "--advertise-http",
            spec.url,
            *self.extra_args,
        ]

    def start(self) -> None:
        """Starts every node (not waiting for a leader: see :meth:`wait_ready`)."""
        for node_id in self.nodes:
            self.start_node(node_id)

    def start_node(self, node_id: str) -> None:
        """Starts ``node_id`` unless it already runs."""
        with self._lock:
            node = self.nodes[node_id]
            if self.running(node_id):
                return
            cmd = self.command(node.spec)
            env = dict(os.environ)
            env["PYTHONUNBUFFERED"] = "1"
            self._mark(node_id, f"starting: {' '.join(cmd)}")
            with node.spec.log_path.open("ab") as logf:
                node.process = self._spawner.submit(_spawn, cmd, logf, env).result()
            node.paused = False
            node.expected_down = False
            node.leaving = False
            node.starts += 1
            log.info("started %s (pid %d)", node_id, node.process.pid)

    def _mark(self, node_id: str, text: str) -> None:
        """A line in the node's log, so its own lines can be read against the faults."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.nodes[node_id].spec.log_path.open("ab") as logf:
            logf.write(f"--- chaos {stamp}: {text}\n".encode())

    # -------------------------------------------------------------- faults

    def kill(self, node_id: str) -> None:
        """SIGKILL (works on a stopped process too) and reap."""
        with self._lock:
            node = self.nodes[node_id]
            node.expected_down = True
            proc = node.process
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                self._mark(node_id, f"SIGKILL pid {proc.pid}")
            node.paused = False

    def pause(self, node_id: str) -> None:
        """SIGSTOP: the process keeps its sockets, so peers and clients time out, not fail."""
        with self._lock:
            node = self.nodes[node_id]
            if node.process is not None and node.process.poll() is None and not node.paused:
                node.process.send_signal(signal.SIGSTOP)
                node.paused = True
                self._mark(node_id, f"SIGSTOP pid {node.process.pid}")

    def resume(self, node_id: str) -> None:
        """SIGCONT after :meth:`pause` (a no-op otherwise)."""
        with self._lock:
            node = self.nodes[node_id]
            if node.process is not None and node.process.poll() is None and node.paused:
                node.process.send_signal(signal.SIGCONT)
                self._mark(node_id, f"SIGCONT pid {node.process.pid}")
            node.paused = False

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drops traffic between each pair of node ids."""
        hosts = {n.spec.netns or n.spec.id: n.spec.host for n in self.nodes.values()}
        ns_of = {n.spec.id: n.spec.netns or n.spec.id for n in self.nodes.values()}
        pairs = list(pairs)
        for node_id in self.nodes:
            peers = sorted(
                {b for a, b in pairs if a == node_id} | {a for a, b in pairs if b == node_id}
            )
            if peers:
                self._mark(node_id, f"partition: cut from {','.join(peers)}")
        self.topology.cut(hosts, [(ns_of[a], ns_of[b]) for a, b in pairs])

    def heal(self) -> None:
        """Removes every cut (all nodes, whether cut or not: healing must be total)."""
        hosts = {n.spec.netns or n.spec.id: n.spec.host for n in self.nodes.values()}
        self.topology.heal(hosts)
        for node_id in self.nodes:
            self._mark(node_id, "partition healed")

    def unexpected_exits(self) -> list[NodeExit]:
        """Nodes that ended on their own since the last call (each reported once).

        A node whose removal was asked for (:meth:`expect_removal`) stops itself
        when it applies it: its exit is not reported while it is marked leaving.
        The nemesis clears the mark when the removal did not happen, and a crash
        in the meantime is reported then.
        """
        out = []
        with self._lock:
            for node_id, node in self.nodes.items():
                proc = node.process
                if node.expected_down or node.leaving or proc is None or proc.poll() is None:
                    continue
                node.expected_down = True
                out.append(NodeExit(node_id, int(proc.returncode), self.log_tail(node_id)))
        return out

    # ---------------------------------------------------------- membership

    def expect_removal(self, node_id: str, leaving: bool = True) -> None:
        """Marks ``node_id`` as leaving (its own exit is no crash), or not any more."""
        with self._lock:
            self.nodes[node_id].leaving = leaving

    def join_url(self, node_id: str) -> str:
        """The URL a (re)joining ``node_id`` asks: a responsive other node, else any other."""
        others = [i for i in self.nodes if i != node_id]
        live = [i for i in self.responsive() if i != node_id]
        return self.spec((live or others)[0]).url

    def remove_member(self, node_id: str, via: str, deadline_s: float) -> Removal:
        """``DELETE /v1/cluster/members/{node_id}`` at ``via``, as ``raftmq ctl remove-node``.

        Follows the leader's redirect and retries ``503 no_leader`` (an election,
        e.g. after removing the leader handed its leadership over) and refused
        connections on another responsive node, until ``deadline_s``. A request
        that was sent and got no answer is a ``timeout``: it may still complete.
        """
        deadline = time.monotonic() + deadline_s
        url = f"{via}/v1/cluster/members/{node_id}"
        last = Removal("failed", via=via, error="no attempt")
        while time.monotonic() < deadline:
            res = http_json("DELETE", url, timeout=REMOVAL_REQUEST_TIMEOUT_S)
            node_url = url.split("/v1/", 1)[0]
            code = _error_code(res.body)
            if res.status == 200:
                return Removal("removed", 200, via=node_url)
            if res.status == 307 and res.headers.get("location"):
                url = res.headers["location"]
                continue
            if res.status == 409 and code in REMOVAL_REFUSALS:
                return Removal("refused", 409, code, via=node_url)
            if res.status is None and not _refused(res.error):
                return Removal("timeout", via=node_url, error=res.error)
            if res.status == 503 and code == "unknown_outcome":
                return Removal("timeout", 503, code, via=node_url)
            last = Removal("failed", res.status, code, via=node_url, error=res.error)
            if res.status is not None and res.status != 503:
                return last
            others = [i for i in self.responsive() if i != node_id] or [node_id]
            url = f"{self.spec(random.choice(others)).url}/v1/cluster/members/{node_id}"
            time.sleep(0.2)
        return last

    def wait_exit(self, node_id: str, timeout: float) -> int | None:
        """The exit code of ``node_id`` once its process ends; None if it still runs."""
        proc = self.nodes[node_id].process
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def wipe(self, node_id: str) -> None:
        """Empties the data dir of a node that is not running (its log stays)."""
        with self._lock:
            if self.running(node_id):
                raise RuntimeError(f"{node_id} runs; its data dir cannot be wiped")
            data_dir = self.spec(node_id).data_dir
            shutil.rmtree(data_dir, ignore_errors=True)
            data_dir.mkdir(parents=True, exist_ok=True)
            self._mark(node_id, f"data dir {data_dir} wiped")

    def rejoin(self, node_id: str) -> str:
        """Starts a removed node again from an empty data dir with ``--join``; the URL asked."""
        with self._lock:
            self.wipe(node_id)
            self.nodes[node_id].joined = True
            url = self.join_url(node_id)
            self.start_node(node_id)
            return url

    def is_member(self, node_id: str) -> bool | None:
        """Whether the leader counts ``node_id`` as a connected member and it is caught up.

        None when no responsive node names a leader that answers.
        """
        raft = self.spec(node_id).raft
        for other in self.responsive():
            st = self.status(other)
            leader_url = ((st or {}).get("leader") or {}).get("http")
            if not leader_url:
                continue
            res = http_json("GET", f"{leader_url}/v1/cluster", timeout=1.0)
            if res.status != 200 or not isinstance(res.body, dict):
                continue
            states = {m.get("raft"): m.get("state") for m in res.body.get("members") or []}
            if states.get(raft) not in ("connected", "leader"):
                return False
            ready = http_json("GET", f"{self.spec(node_id).url}/readyz", timeout=1.0)
            return ready.status == 200
        return None

    def in_configuration(self, node_id: str) -> bool | None:
        """Whether the leader's Raft configuration still has ``node_id`` (None: no leader)."""
        raft = self.spec(node_id).raft
        for other in self.responsive():
            st = self.status(other)
            if st is None or st.get("role") != "leader":
                continue
            return any(m.get("raft") == raft for m in st.get("members") or [])
        return None

    # ---------------------------------------------------------------- stop

    def stop(self) -> dict[str, int | None]:
        """SIGCONT + SIGTERM every node, SIGKILL the ones still there after the grace period."""
        with self._lock:
            procs = {i: n.process for i, n in self.nodes.items() if n.process is not None}
            for node_id, proc in procs.items():
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        if self.nodes[node_id].paused:
                            proc.send_signal(signal.SIGCONT)
                        proc.send_signal(signal.SIGTERM)
                self.nodes[node_id].expected_down = True
                self.nodes[node_id].paused = False
            deadline = time.monotonic() + STOP_GRACE_S
            for node_id, proc in procs.items():
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s ignored SIGTERM; killing pid %d", node_id, proc.pid)
                    proc.kill()
                    proc.wait(timeout=30)
            return {i: p.returncode for i, p in procs.items()}

    def teardown(self) -> None:
        """Stops every node, then removes the network; never raises."""
        try:
            self.stop()
        except Exception:
            log.exception("stopping nodes failed")
        self._spawner.shutdown(wait=True)
        if self._set_up:
            try:
                self.topology.teardown()
            except Exception:
                log.exception("removing the topology failed")

    # -------------------------------------------------------------- status

    def status(
        self, node_id: str, digest: bool = False, timeout: float = 1.0
    ) -> dict[str, Any] | None:
        """``GET /v1/cluster`` of one node; None when it does not answer in time."""
        url = self.spec(node_id).url + "/v1/cluster" + ("?digest=1" if digest else "")
        res = http_json("GET", url, timeout=timeout)
        return res.body if res.status == 200 and isinstance(res.body, dict) else None

    def leader(self, timeout: float = 1.0) -> str | None:
        """The responsive node that says it leads, with the highest term (None if none)."""
        best: tuple[int, str] | None = None
        for node_id in self.responsive():
            st = self.status(node_id, timeout=timeout)
            if st is not None and st.get("role") == "leader":
                term = int(st.get("term") or 0)
                if best is None or term > best[0]:
                    best = (term, node_id)
        return None if best is None else best[1]

    def ready_leader(self) -> str | None:
        """A leader every running node names, whose registry knows every running member's URL."""
        running = self.responsive()
        if not running:
            return None
        named = set()
        for node_id in running:
            st = self.status(node_id)
            if st is None or not st.get("leader") or not st["leader"].get("http"):
                return None
            named.add(st["leader"].get("id"))
        if len(named) != 1:
            return None
        leader = named.pop()
        if leader not in self.nodes:
            return None
        st = self.status(str(leader))
        if st is None or st.get("role") != "leader":
            return None
        raft_running = {self.spec(i).raft for i in running}
        members = st.get("members") or []
        if any(m.get("http") is None for m in members if m.get("raft") in raft_running):
            return None
        return str(leader)

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Blocks until :meth:`ready_leader` names one; raises TimeoutError (or on a crash)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node_id, node in self.nodes.items():
                proc = node.process
                if not node.expected_down and proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"node {node_id} exited with code {proc.returncode} while starting:\n"
                        + self.log_tail(node_id)
                    )
            leader = self.ready_leader()
            if leader is not None:
                return leader
            time.sleep(0.1)
        raise TimeoutError(f"no agreed, registered leader within {timeout:.0f} s")

    def log_tail(self, node_id: str, lines: int = 30) -> str:
        """The end of the node's log, for reports of a node that died."""
        path = self.spec(node_id).log_path
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
