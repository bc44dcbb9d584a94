"""``raftmq bench`` without a real cluster: options, reports, ``--url`` against the fake API."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftmq.bench import report
from raftmq.bench.cli import build_parser, main, params_from
from raftmq.bench.cluster import proc_cpu, proc_memory_kib
from raftmq.bench.workloads import Params
from raftmq.cli import main as raftmq_main
from tests.unit.test_client import FakeCluster


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_defaults_are_bench_py_s() -> None:
    p = params_from(_args())
    assert (p.n, p.n_sync, p.size, p.inflight, p.prefetch) == (50000, 5000, 256, 256, 256)
    assert (p.rate, p.duration) == (1000.0, 10.0)
    assert (p.kill_at, p.restart_at, p.run_for, p.pub_timeout, p.idle) == (5, 15, 25, 1, 5)
    assert _args().workloads == ["W1", "W1s", "W2", "W3", "W4"]
    assert p.backlog == 1_000_000


def test_scale_shrinks_counts_and_explicit_values_win() -> None:
    p = params_from(_args("--scale", "0.01", "--n-sync", "7"))
    assert (p.n, p.n_sync, p.backlog) == (500, 7, 10000)
    assert p.duration == pytest.approx(0.5)
    assert p.kill_at == 5.0, "times of W4 are not scaled"


def test_workload_names_are_case_insensitive_and_ordered() -> None:
    assert _args("--workloads", "w2,BACKLOG,w1s").workloads == ["W1s", "W2", "backlog"]
    assert _args("--workloads", "all,sizes").workloads == [
        "W1",
        "W1s",
        "W2",
        "W3",
        "W4",
        "sizes",
    ]
    with pytest.raises(SystemExit):
        _args("--workloads", "W9")


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-option"]) == 2
    assert "usage: raftmq bench" in capsys.readouterr().err


def test_raftmq_bench_help_is_wired_into_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert raftmq_main(["bench", "--help"]) == 0
    assert "--workloads" in capsys.readouterr().out


def test_proc_readers_see_this_process() -> None:
    import os

    assert proc_cpu([os.getpid()]) >= 0
    assert proc_memory_kib(os.getpid())["VmRSS"] > 0
    assert proc_memory_kib(2**22 + 12345) == {}


# ------------------------------------------------------------------ reports


def _rep(w1: float, p50: float, gap: float) -> dict[str, Any]:
    return {
        "w1": {"msgs_per_s": w1, "confirmed": 1000, "broker_cpu_s": 1.0, "client_cpu_s": 0.5},
        "w1s": {"msgs_per_s": 900.0, "lat_p50_ms": p50, "lat_p99_ms": 2 * p50},
        "w4": {"max_gap_s": gap, "lost_confirmed": 0, "duplicates": 1},
    }


def _results(peer: str, reps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"peer": peer, "params": {}, "facts": {"nproc": 2}, "reps": reps}


def test_summary_takes_median_min_max_over_repeats() -> None:
    results = _results("raftmq", [_rep(100, 1.0, 0.3), _rep(300, 3.0, 0.9), _rep(200, 2.0, 0.4)])

    s = report.summary(results)

    w1 = s["W1 publish-confirmed, 256 in flight"]
    assert (w1["median"], w1["min"], w1["max"], w1["n"]) == (200, 100, 300, 3)
    assert w1["meets_target"] is False
    assert s["W1 broker CPU per 1k msgs"]["median"] == pytest.approx(1.0)
    assert s["W4 longest confirm gap (whole run)"]["meets_target"] is True
    assert "W2 consume+ack, prefetch 256" not in s


def test_tables_and_comparison() -> None:
    ours = _results("raftmq", [_rep(20000, 1.5, 0.4)])
    rabbit = _results("rabbit", [_rep(4000, 1.0, 0.2)])
    rabbit["facts"]["rabbitmq-server"] = "3.10.8-1.1+deb12u1"

    text = report.table(ours)
    assert "| W1 publish-confirmed, 256 in flight | 20,000 | msg/s | >= 40,000 | **no** |" in text
    assert "| W4 confirmed msgs lost | 0 | msgs | <= 0 | yes |" in text

    cmp = report.compare_table(ours, [rabbit])
    assert "| workload | unit | raftmq | RabbitMQ 3.10 | raftmq ÷ RabbitMQ |" in cmp
    assert "| W1 publish-confirmed, 256 in flight | msg/s ↑ | 20,000 | 4,000 | 5.00 |" in cmp
    assert "| W4 duplicates (retried publishes) | msgs ↓ | 1 | 1 | 1.00 |" in cmp


def test_extras_tables() -> None:
    rep = {
        "sizes": {"points": [{"size": 64, "n": 10, "msgs_per_s": 5.0, "mib_per_s": 0.1}]},
        "queues": {"points": [{"queues": 10, "n": 10, "msgs_per_s": 7.0}]},
        "backlog": {
            "n": 100,
            "msgs_per_s": 9.0,
            "rate_first_10pct": 10.0,
            "rate_last_10pct": 8.0,
            "rss_max_node_kib": 2048,
            "rss_max_total_kib": 6144,
        },
    }

    text = report.extras_tables(_results("raftmq", [rep]))

    assert "| 64 B | 10 | 5 | 0.1 | n/a | n/a |" in text
    assert "| 10 | 10 | 7 | n/a | n/a |" in text
    assert "| 100 | 9 | 10 | 8 | 2 MiB | 6 MiB |" in text


def test_from_json_with_compare_and_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = tmp_path / "ours.json"
    peer = tmp_path / "nats.json"
    ours.write_text(json.dumps(_results("raftmq", [_rep(20000, 1.5, 0.4)])))
    peer.write_text(json.dumps(_results("nats", [_rep(17000, 0.5, 6.0)])))
    png = tmp_path / "chart.png"

    code = main(
        [
            "--from-json",
            str(ours),
            "--compare",
            str(peer),
            "--markdown",
            "--chart",
            str(png),
        ]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert "### beside the peers" in out and "raftmq ÷ NATS" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------- --url mode


def test_url_mode_runs_w1_w2_and_skips_w4(
    fake: FakeCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = fake.node("n1")
    out = tmp_path / "r.json"

    code = main(
        [
            "--url",
            node.url,
            "--transport",
            "http",  # the in-process fake serves the HTTP API, not the channel
            "--workloads",
            "W1,W2,W4",
            "--n",
            "300",
            "--out",
            str(out),
        ]
    )

    assert code == 0
    captured = capsys.readouterr()
    assert "W4 skipped" in captured.err
    results = json.loads(out.read_text())
    (rep,) = results["reps"]
    assert set(rep) == {"w1", "w2"}
    assert rep["w1"]["confirmed"] == 300
    assert rep["w2"]["acked"] == 300 and rep["w2"]["depth_after"] == 0
    assert rep["w1"]["broker_cpu_s"] == 0, "no node PIDs for a cluster we did not start"
    assert results["facts"]["cluster"] == "given"
    publishes = [s for s in node.seen if s.path.endswith("/messages")]
    assert len(publishes) < 300, "the client coalesces concurrent publishes"
    assert "W1 publish-confirmed" in captured.out


def test_params_dataclass_round_trips() -> None:
    p = Params()
    assert Params(**p.as_dict()) == p


def test_a_run_with_other_labelled_parameters_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = _results("raftmq", [_rep(43000, 1.5, 0.4)])
    results["params"] = {**Params().as_dict(), "inflight": 1024}
    assert report.parameter_note(results) == (
        "note: run with inflight 1024 (bench.py: 256); the labels and targets name "
        "bench.py's parameters, so these figures are not the ones the targets are about."
    )
    results["params"] = {**Params().as_dict(), "n": 500}  # counts are not in the labels
    assert report.parameter_note(results) is None
    results["params"]["prefetch"] = 64
    path = tmp_path / "ours.json"
    path.write_text(json.dumps(results))
    assert main(["--from-json", str(path)]) == 0
    assert "note: run with prefetch 64 (bench.py: 256)" in capsys.readouterr().out
