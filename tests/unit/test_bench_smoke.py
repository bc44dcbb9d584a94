"""``raftmq bench`` end to end with tiny counts on a real cluster it starts itself.

W1 and W2 only, ``--scale 0.01`` (500 messages): checks the JSON it writes has
bench.py's shape and that nothing is left behind. No timing assertions.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from raftmq.bench.cluster import proc_cpu

pytestmark = pytest.mark.timeout(120)

W1_KEYS = {
    "n",
    "inflight",
    "size",
    "confirmed",
    "errors",
    "seconds",
    "msgs_per_s",
    "lat_p50_ms",
    "lat_p99_ms",
    "lat_max_ms",
    "client_cpu_s",
    "broker_cpu_s",
    "machine_busy_cpu_s",
    "machine_wall_s",
    "machine_busy_frac",
    "loadavg_1m_after",
}
W2_KEYS = {
    "n",
    "prefetch",
    "acked",
    "seconds",
    "msgs_per_s",
    "setup_to_first_msg_s",
    "depth_after",
    "client_cpu_s",
    "broker_cpu_s",
}


def _bench_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "raftmq-bench-*")))


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "raftmq", "bench", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bench_w1_w2_on_its_own_cluster_writes_valid_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    before = _bench_dirs()
    logs = tmp_path / "logs"
    proc = _bench(
        "--workloads", "W1,W2", "--scale", "0.01", "--out", str(out), "--markdown",
        "--keep-logs", str(logs),
    )  # fmt: skip

    results = json.loads(out.read_text())
    assert results["peer"] == "raftmq"
    assert {"params", "facts", "reps", "summary"} <= set(results)
    assert results["params"]["n"] == 500
    assert results["params"]["transport"] == "ws"  # the default: one channel per client
    assert results["facts"]["fsync"] == "always" and results["facts"]["nodes"] == 3
    (rep,) = results["reps"]
    assert set(rep) == {"w1", "w2"}
    assert set(rep["w1"]) >= W1_KEYS
    assert set(rep["w2"]) >= W2_KEYS
    assert rep["w1"]["confirmed"] == 500 and rep["w1"]["errors"] == 0
    assert rep["w2"]["acked"] == 500 and rep["w2"]["depth_after"] == 0
    # Tick-sampled: 500 messages may cost a node less than one tick (see the test below).
    assert rep["w1"]["broker_cpu_s"] >= 0
    assert "W1 publish-confirmed, 256 in flight" in results["summary"]
    assert "| W2 consume+ack, prefetch 256 |" in proc.stdout

    assert _bench_dirs() <= before, "the cluster's temp data dir must be removed"
    # --keep-logs: each node's log outlives the data dir.
    kept = sorted(p.name for p in logs.iterdir())
    assert kept == ["n1.log", "n2.log", "n3.log"]
    assert all("leader is" in (logs / name).read_text() for name in kept)


def test_proc_cpu_reads_the_cpu_time_of_processes() -> None:
    before = proc_cpu([os.getpid()])
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert proc_cpu([os.getpid()]) - before >= 0.1
    assert proc_cpu([]) == 0.0


def test_bench_tuned_clients_run_w3_with_its_consumer_process(tmp_path: Path) -> None:
    """--client-gc relaxed and --loop uvloop reach W3's consumer, a process of its own."""
    out = tmp_path / "results.json"
    _bench(
        *("--workloads", "W3", "--scale", "0.02", "--idle", "2"),
        *("--client-gc", "relaxed", "--loop", "uvloop", "--out", str(out), "--quiet"),
    )
    results = json.loads(out.read_text())
    assert results["params"]["client_gc"] == "relaxed"
    assert results["params"]["loop"] == "uvloop"
    (rep,) = results["reps"]
    assert rep["w3"]["received"] == rep["w3"]["sent"] > 0
