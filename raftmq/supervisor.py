"""Runs an N-node raftmq cluster as local child processes.

Used by ``raftmq cluster up`` (``make run``) and by tests that want a real cluster:
it owns the processes it starts, so whoever holds a :class:`LocalCluster` can always
stop them (SIGTERM, then SIGKILL after a grace period) and never leaks a node.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from raftmq.client import Client
from raftmq.errors import RaftMQError

__all__ = [
    "LocalCluster",
    "NodeExited",
    "NodeSpec",
    "PortInUse",
    "StartupCancelled",
    "StopFlag",
]

log = logging.getLogger(__name__)

HTTP_PORT_OFFSET = 100
POLL_INTERVAL = 0.1
# How often StopFlag.wait looks at the flag (a signal also ends its sleep).
STOP_POLL_S = 0.05


@dataclass(frozen=True)
class NodeSpec:
    """Where one node lives: ids, addresses and files are all derived from its index."""

    id: str
    host: str
    raft_port: int
    http_port: int
    data_dir: Path

    @property
    def raft(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"


class NodeExited(RuntimeError):
    """A node process ended while it was expected to be running."""

    def __init__(self, spec: NodeSpec, returncode: int, log_tail: str) -> None:
        super().__init__(f"node {spec.id} exited with code {returncode}")
        self.spec = spec
        self.returncode = returncode
        self.log_tail = log_tail


class PortInUse(RuntimeError):
    """A port the cluster needs is taken (often: another cluster is still running)."""


class StopFlag:
    """A stop request that a signal handler may set; waited on like a threading.Event.

    ``threading.Event.set`` takes the lock that ``Event.wait`` holds for a few
    bytecodes at every wake-up. A signal handler runs in the main thread between
    bytecodes, so one that calls ``set`` while the main thread is inside that
    window waits for a lock its own thread holds, forever: `cluster up` would
    then never stop. The window is short, but it comes at every wake-up of the
    main loop. Setting this flag takes no lock; ``wait`` looks at it every
    STOP_POLL_S.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """True once set; False after ``timeout`` seconds without."""
        deadline = time.monotonic() + timeout
        while not self._set:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, STOP_POLL_S))
        return True


class StartupCancelled(RuntimeError):
    """``wait_ready`` was interrupted through its ``cancel`` event."""


class LocalCluster:
    """N nodes ``n1..nN`` on ``host``: raft ports ``base_port+K-1``, HTTP ports 100 above.

    ``node_module`` and ``env`` exist so tests can substitute a stand-in server.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        data_dir: str | os.PathLike[str] = ".raftmq-data",
        base_port: int = 7100,
        host: str = "127.0.0.1",
        fsync: str | None = None,
        node_module: str = "node",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if base_port < 1 or base_port + HTTP_PORT_OFFSET + nodes - 1 > 65535:
            raise ValueError(f"base port {base_port} leaves no room for {nodes} nodes")
        root = Path(data_dir)
        self.specs = [
            NodeSpec(
                id=f"n{k}",
                host=host,
                raft_port=base_port + k - 1,
                http_port=base_port + HTTP_PORT_OFFSET + k - 1,
                data_dir=root / f"n{k}",
            )
            for k in range(1, nodes + 1)
        ]
        self.fsync = fsync
        self.node_module = node_module
        self.extra_args = list(extra_args)
        self.env = dict(env) if env is not None else None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ info

    @property
    def urls(self) -> list[str]:
        """HTTP URLs of every node, in id order."""
        return [s.http_url for s in self.specs]

    def spec(self, node_id: str) -> NodeSpec:
        for s in self.specs:
            if s.id == node_id:
                return s
        raise KeyError(node_id)

    def process(self, node_id: str) -> subprocess.Popen[bytes] | None:
        """The node's process, if this cluster started it."""
        return self._procs.get(node_id)

    def command(self, spec: NodeSpec) -> list[str]:
        """The argv that starts ``spec`` (``python -m node ...``)."""
        peers = ",".join(s.raft for s in self.specs if s.id != spec.id)
        cmd = [
            sys.executable,
            "-m",
            self.node_module,
            "--id",
            spec.id,
            "--data-dir",
            str(spec.data_dir),
            "--raft",
            spec.raft,
            "--http",
            spec.http,
            "--peers",
            peers,
            "--advertise-http",
            spec.http_url,
        ]
        if self.fsync is not None:
            cmd += ["--fsync", self.fsync]
        return cmd + self.extra_args

    def log_tail(self, node_id: str, lines: int = 20) -> str:
        """Last ``lines`` lines of the node's log, for explaining a crash."""
        path = self.spec(node_id).log_path
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------- lifecycle

    def check_ports(self) -> None:
        """Fails fast, naming the port, instead of letting a node die on bind."""
        for spec in self.specs:
            for port in (spec.raft_port, spec.http_port):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((spec.host, port))
                    except OSError as e:
                        raise PortInUse(
                            f"port {spec.host}:{port} (for {spec.id}) is in use: "
                            "is another cluster running?"
                        ) from e

    def start(self) -> None:
        """Spawns every node, each in its own session so a terminal Ctrl-C reaches only us."""
        if self._procs:
            raise RuntimeError("cluster already started")
        self.check_ports()
        try:
            for spec in self.specs:
                spec.data_dir.mkdir(parents=True, exist_ok=True)
                self.launch(spec, "starting")
        except BaseException:
            self.stop()
            raise

    def launch(self, spec: NodeSpec, verb: str = "starting") -> subprocess.Popen[bytes]:
        """Spawns one node in its own session, its output appended to its log."""
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = self.command(spec)
        with spec.log_path.open("ab") as logf:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            logf.write(f"--- {stamp} {verb}: {' '.join(cmd)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call, no locks
            )
        self._procs[spec.id] = proc
        log.info("%s %s (pid %d): %s", verb, spec.id, proc.pid, " ".join(cmd))
        return proc

    def exited(self) -> list[tuple[NodeSpec, int]]:
        """Nodes that were started and have since ended, with their exit codes."""
        out = []
        for spec in self.specs:
            proc = self._procs.get(spec.id)
            if proc is not None and proc.poll() is not None:
                out.append((spec, proc.returncode))
        return out

    def newly_exited(self) -> list[tuple[NodeSpec, int]]:
        """Like :meth:`exited` but each death is reported once (for a watch loop)."""
        fresh = [(s, rc) for s, rc in self.exited() if s.id not in self._reported]
        self._reported.update(s.id for s, _ in fresh)
        return fresh

    def statuses(self, timeout: float = 1.0) -> dict[str, dict[str, Any] | None]:
        """Each node's ``/v1/cluster`` (None where it did not answer)."""
        out: dict[str, dict[str, Any] | None] = {}
        for spec in self.specs:
            with Client(spec.http_url, timeout=timeout, retry_deadline=0.0) as c:
                try:
                    out[spec.id] = c.cluster()
                except RaftMQError:
                    out[spec.id] = None
        return out

    def agreed_leader(self, timeout: float = 1.0) -> str | None:
        """The leader id when every node answers and names the same one."""
        leaders = set()
        for status in self.statuses(timeout).values():
            leader = (status or {}).get("leader") or {}
            leaders.add(leader.get("id") if isinstance(leader, dict) else None)
        if len(leaders) == 1:
            (only,) = leaders
            return str(only) if only else None
        return None

    def wait_ready(
        self, timeout: float = 60.0, cancel: StopFlag | threading.Event | None = None
    ) -> str:
        """Blocks until all nodes agree on a leader; returns its id.

        Raises NodeExited if a node dies first (the cause is then in its log),
        TimeoutError after ``timeout`` and StartupCancelled when ``cancel`` is set.
        """
        deadline = time.monotonic() + timeout
        while True:
            for spec, rc in self.exited():
                self._reported.add(spec.id)
                raise NodeExited(spec, rc, self.log_tail(spec.id))
            if cancel is not None and cancel.is_set():
                raise StartupCancelled("startup cancelled")
            leader = self.agreed_leader()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nodes did not agree on a leader within {timeout:.0f}s")
            if cancel is not None:
                cancel.wait(POLL_INTERVAL)
            else:
                time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM every node, SIGKILL what is left after ``timeout``; returns exit codes."""
        with self._lock:
            procs = dict(self._procs)
            for node_id, proc in procs.items():
                if proc.poll() is None:
                    log.info("stopping %s (pid %d)", node_id, proc.pid)
                    _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for proc in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))
            for node_id, proc in procs.items():
                if proc.poll() is None:
                    log.warning("%s ignored SIGTERM for %.0fs; killing it", node_id, timeout)
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
                else:
                    # The node's own children (if any) go with it.
                    _signal_group(proc, signal.SIGKILL)
            self._procs.clear()
            return {node_id: int(proc.returncode) for node_id, proc in procs.items()}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# Loaded in the parent so the child, between fork and exec, only makes one C call.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child before exec: SIGTERM it when its parent dies, so no node is orphaned."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signals the node's process group (it leads one: start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            if proc.poll() is None:
                proc.send_signal(sig)
