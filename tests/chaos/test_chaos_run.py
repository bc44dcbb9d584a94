"""The whole tool, as a user runs it: a 60 s mixed run and a membership run must end clean.

``raftmq chaos run`` starts its own cluster (in network namespaces when it may
partition; without root it says why and skips the partition nemesis), runs
queue producers and consumers, stream appenders, readers and consumer groups,
and fan-out publishers and consumers under kill, pause and partition faults,
drains, reads the stream back, checks and tears down. The subprocess has a
hard timeout so a hung run fails the test instead of the suite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from chaos.history import read_history
from chaos.run import main as chaos_main
from raftmq.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def raftmq_command() -> list[str]:
    """The installed ``raftmq`` script next to this interpreter, else ``python -m raftmq``."""
    script = Path(sys.executable).with_name("raftmq")
    if script.exists():
        return [str(script)]
    found = shutil.which("raftmq")
    return [found] if found else [sys.executable, "-m", "raftmq"]


def run_chaos(
    out: Path, *, duration: int, nemesis: str, seed: int
) -> tuple[subprocess.CompletedProcess[str], str, dict[str, Any]]:
    """One real 3-node ``raftmq chaos run``; it must exit 0. Its results.json."""
    argv = [
        *raftmq_command(),
        "chaos",
        "run",
        "--nodes",
        "3",
        "--duration",
        str(duration),
        "--nemesis",
        nemesis,
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=280, check=False)
    report = f"stdout:\n{proc.stdout}\nstderr (tail):\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, report
    results: dict[str, Any] = orjson.loads((out / "results.json").read_bytes())
    return proc, report, results


@pytest.mark.timeout(300)
def test_a_60_second_mixed_run_finds_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, report, results = run_chaos(out, duration=60, nemesis="kill,pause,partition", seed=1)
    assert results["counts"]["lost"] == 0, report
    assert results["counts"]["unexpected"] == 0, report
    assert results["valid"] is True, report
    assert results["convergence"]["converged"] is True
    assert results["seed"] == 1
    assert results["availability"]["windows"], "the nemesis ran no fault window"
    # The default mix exercises all three promises, and each was checked.
    assert results["workloads"] == ["queue", "stream", "fanout"]
    assert not any(results["violation_classes"].values()), report
    assert results["stream"]["final_read_complete"] is True, report
    assert results["stream"]["appended_ok"] > 0
    assert results["stream"]["commits_ok"] > 0
    assert set(results["fanout"]) == {"chaos-fan-a", "chaos-fan-b"}
    assert all(q["messages"]["published_ok"] > 0 for q in results["fanout"].values())
    assert "stream:" in proc.stdout and "fan-out (2 queues):" in proc.stdout
    assert (out / "timeline.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "history.jsonl").stat().st_size > 0


@pytest.mark.timeout(300)
def test_a_node_removed_and_rejoined_under_load_loses_nothing(tmp_path: Path) -> None:
    """Seed 12 of kill,membership: a node is removed and re-joined with an empty data dir,
    killed and restarted (still a member), then removed and re-joined again."""
    out = tmp_path / "out"
    proc, report, results = run_chaos(out, duration=35, nemesis="kill,membership", seed=12)
    assert results["valid"] is True, report
    assert not any(results["violation_classes"].values()), report
    nemesis = [r for r in read_history(out / "history.jsonl") if r.get("type") == "nemesis"]
    removed = {r["node"] for r in nemesis if r["phase"] == "removal" and r["outcome"] == "removed"}
    rejoined = {r["node"] for r in nemesis if r["phase"] == "rejoin" and r["member"]}
    assert removed, report
    assert rejoined == removed, report
    assert results["membership"]["rejoins"] >= 1
    assert results["membership"]["rejoins_failed"] == 0
    # The re-joined node ends with the same applied index and state digest as the others.
    assert results["convergence"]["converged"] is True
    assert all(results["convergence"]["nodes"].values())
    assert "membership: removals" in proc.stdout


def test_unknown_nemesis_and_bad_node_count_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert chaos_main(["run", "--nemesis", "flood"]) == 2
    assert "unknown nemesis flood" in capsys.readouterr().err
    assert chaos_main(["run", "--nodes", "4"]) == 2


def test_unknown_workload_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert chaos_main(["run", "--workload", "queue,log"]) == 2
    assert "unknown workload log" in capsys.readouterr().err
    assert chaos_main(["run", "--workload", ","]) == 2


def test_help_lists_the_run_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["chaos", "run", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--nodes", "--duration", "--nemesis", "--workload", "--seed", "--out"):
        assert option in text
