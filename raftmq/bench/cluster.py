"""The cluster a benchmark runs against: one it starts (and always tears down) or URLs.

:class:`BenchCluster` is a :class:`raftmq.supervisor.LocalCluster` in a temporary
data dir on a free block of ports that can also SIGKILL and restart one node (W4)
and read its nodes' CPU time and memory from ``/proc``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from raftmq.supervisor import (
    HTTP_PORT_OFFSET,
    LocalCluster,
    NodeSpec,
    PortInUse,
)

__all__ = ["BenchCluster", "proc_cpu", "proc_memory_kib", "sys_busy"]

log = logging.getLogger(__name__)

PORT_RANGE = (20000, 60000)


def proc_cpu(pids: list[int]) -> float:
    """utime+stime seconds of the given processes (the broker nodes)."""
    total = 0.0
    hz = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / hz
        except (OSError, ValueError, IndexError):
            pass
    return total


def sys_busy() -> float:
    """Machine-wide busy CPU seconds (every process, ours or not)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def proc_memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (peak RSS), ``RssAnon`` (heap) and ``RssFile`` (mapped files,
    LMDB's memory map) of ``pid`` in KiB; empty if it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


class BenchCluster(LocalCluster):
    """A 3-node cluster with ``--fsync always`` in a temp dir that is deleted on stop."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        fsync: str = "always",
        base_port: int | None = None,
        keep_logs: Path | None = None,
    ):
        self._tmp = Path(tempfile.mkdtemp(prefix="raftmq-bench-"))
        self._fixed_port = base_port
        self._keep_logs = keep_logs
        super().__init__(
            nodes,
            data_dir=self._tmp,
            base_port=base_port or _random_base(nodes),
            fsync=fsync,
        )

    @property
    def data_root(self) -> Path:
        return self._tmp

    def start(self) -> None:
        """Starts on a free block of ports (a few random tries unless one was given)."""
        tries = 1 if self._fixed_port else 20
        for attempt in range(tries):
            try:
                super().start()
                return
            except PortInUse:
                if attempt == tries - 1:
                    raise
                base = _random_base(len(self.specs))
                self.specs = [
                    NodeSpec(
                        id=s.id,
                        host=s.host,
                        raft_port=base + k,
                        http_port=base + HTTP_PORT_OFFSET + k,
                        data_dir=s.data_dir,
                    )
                    for k, s in enumerate(self.specs)
                ]

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """Stops every node (SIGTERM, then SIGKILL) and deletes the data dir, after
        copying each node's log to ``keep_logs/<id>.log`` if that was given."""
        try:
            return super().stop(timeout)
        finally:
            if self._keep_logs is not None:
                self._copy_logs(self._keep_logs)
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _copy_logs(self, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(spec.log_path, into / f"{spec.id}.log")

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------- per node

    def pids(self) -> list[int]:
        """PIDs of the node processes that are running now."""
        out = []
        for spec in self.specs:
            proc = self.process(spec.id)
            if proc is not None and proc.poll() is None:
                out.append(proc.pid)
        return out

    def index_of_url(self, url: str) -> int | None:
        """1-based index of the node serving ``url`` (None if it is not ours)."""
        url = url.rstrip("/")
        for k, spec in enumerate(self.specs, start=1):
            if spec.http_url == url:
                return k
        return None

    def kill(self, index: int) -> None:
        """SIGKILLs node ``index`` (1-based) and reaps it."""
        spec = self.specs[index - 1]
        proc = self.process(spec.id)
        if proc is None or proc.poll() is not None:
            return
        log.info("killing %s (pid %d)", spec.id, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, index: int) -> None:
        """Starts node ``index`` again on its data dir (after :meth:`kill`)."""
        spec = self.specs[index - 1]
        old = self.process(spec.id)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{spec.id} is still running")
        self.launch(spec, "restarting")


def _random_base(nodes: int) -> int:
    low, high = PORT_RANGE
    return random.randrange(low, high - HTTP_PORT_OFFSET - nodes)
