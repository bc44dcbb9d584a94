"""The ``raftmq`` command line: parsing, ``ctl`` output and the local-cluster supervisor.

``ctl`` runs against the in-process fake from test_client; the supervisor runs a tiny
stand-in node module (written to tmp_path) so no real Raft is needed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from raftmq.cli import build_parser, main, table
from raftmq.supervisor import LocalCluster, NodeExited
from tests.unit.test_client import FakeCluster, dead_url


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ parsing


def test_ctl_urls_repeat_and_split_on_commas() -> None:
    args = build_parser().parse_args(
        ["ctl", "--url", "http://a:1,http://b:2", "--url", "c:3", "queues"]
    )
    assert args.url == [["http://a:1", "http://b:2"], ["c:3"]]
    assert args.op == "queues"
    assert args.json is False


def test_ctl_options_may_follow_the_subcommand() -> None:
    args = build_parser().parse_args(["ctl", "queues", "--json", "--url", "http://x:1"])
    assert args.json is True
    assert args.url == [["http://x:1"]]


def test_ctl_publish_and_declare_options() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["ctl", "publish", "q", "hi", "--id", "m1", "--header", "a=1", "--header", "b=x=y"]
    )
    assert (args.queue, args.body, args.id, args.header) == (
        "q",
        "hi",
        "m1",
        [("a", "1"), ("b", "x=y")],
    )
    args = parser.parse_args(
        [
            "ctl",
            "declare",
            "q",
            "--visibility-timeout",
            "2.5",
            "--max-length",
            "10",
            "--overflow",
            "drop_head",
        ]
    )
    assert (args.visibility_timeout, args.max_length, args.overflow) == (2.5, 10, "drop_head")
    assert args.dead_letter_queue is None


def test_cluster_up_defaults() -> None:
    args = build_parser().parse_args(["cluster", "up"])
    assert (args.nodes, args.data_dir, args.base_port, args.host, args.fsync) == (
        3,
        ".raftmq-data",
        7100,
        "127.0.0.1",
        None,
    )


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ctl", "publish", "q", "x", "--header", "novalue")
    assert code == 2
    assert "expected KEY=VALUE" in err
    assert run(capsys, "bogus")[0] == 2


def test_node_subcommand_delegates_everything_after_node(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str] | None] = []

    def fake_main(argv: list[str] | None = None) -> int:
        seen.append(argv)
        return 7

    module = types.ModuleType("node.__main__")
    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "node.__main__", module)

    assert main(["node", "--id", "n1", "--help"]) == 7
    assert seen == [["--id", "n1", "--help"]]


def test_table_aligns_columns() -> None:
    text = table(["NAME", "READY"], [["a", 5], ["longer", 12]])
    assert text.splitlines() == ["NAME    READY", "a           5", "longer     12"]


# ---------------------------------------------------------------------- ctl


def test_ctl_json_output_parses(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    node = fake.node("leader")

    code, out, _ = run(
        capsys, "ctl", "--url", node.url, "--json", "declare", "jobs", "--max-length", "5"
    )
    assert code == 0
    assert orjson.loads(out) == {"queue": "jobs", "config": {"max_length": 5}}

    code, out, _ = run(
        capsys, "ctl", "--url", node.url, "--json", "publish", "jobs", "hello", "--header", "k=v"
    )
    assert code == 0
    msg_id = orjson.loads(out)["id"]

    code, out, _ = run(capsys, "ctl", "--url", node.url, "--json", "queues")
    assert code == 0
    (listed,) = orjson.loads(out)
    assert (listed["name"], listed["ready"]) == ("jobs", 1)

    code, out, _ = run(capsys, "ctl", "--url", node.url, "--json", "receive", "jobs", "--max", "3")
    assert code == 0
    (got,) = orjson.loads(out)
    assert (got["id"], got["body"], got["headers"]) == (msg_id, "hello", {"k": "v"})

    code, out, _ = run(
        capsys, "ctl", "--url", node.url, "--json", "ack", "jobs", got["receipt"], "nope"
    )
    assert code == 0
    assert orjson.loads(out) == {"acked": 1, "stale": ["nope"]}

    code, out, _ = run(capsys, "ctl", "--url", node.url, "--json", "status")
    assert code == 0
    assert orjson.loads(out)["leader"]["id"] == "leader"


def test_ctl_human_output(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    node = fake.node("leader")
    url = ["--url", node.url]

    assert run(capsys, "ctl", *url, "queues")[1] == "no queues\n"
    run(capsys, "ctl", *url, "declare", "jobs")
    run(capsys, "ctl", *url, "publish", "jobs", "line1\nline2")

    out = run(capsys, "ctl", *url, "queues")[1]
    header, row = out.splitlines()
    assert header.split() == [
        "NAME",
        "READY",
        "IN_FLIGHT",
        "DELAYED",
        "TOTAL",
        "PUBLISHED",
        "DELIVERED",
        "ACKED",
        "DEAD",
    ]
    assert row.split()[:2] == ["jobs", "1"]

    out = run(capsys, "ctl", *url, "receive", "jobs")[1]
    assert "line1\\nline2" in out
    assert run(capsys, "ctl", *url, "purge", "jobs")[1] == "purged 0 message(s) from 'jobs'\n"
    assert run(capsys, "ctl", *url, "delete", "jobs")[1] == "deleted queue 'jobs'\n"
    status = run(capsys, "ctl", *url, "status")[1]
    assert "leader" in status and "term" in status


def test_ctl_error_is_one_line_on_stderr(
    fake: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    node = fake.node("leader")
    code, out, err = run(capsys, "ctl", "--url", node.url, "delete", "x")
    assert code == 1
    assert out == ""
    assert err == "error: queue_not_found: queue 'x' does not exist\n"


def test_ctl_connection_refused_hint(capsys: pytest.CaptureFixture[str]) -> None:
    url = dead_url()
    code, out, err = run(capsys, "ctl", "--url", url, "--retry-deadline", "0.2", "status")
    assert code == 1
    assert out == ""
    assert err == (
        f'error: no node answered at {url}: is the cluster running? start one with "make run"\n'
    )


# --------------------------------------------------------------- supervisor

FAKE_NODE = textwrap.dedent(
    '''
    """Stand-in for `python -m node`: serves /v1/cluster naming n1 the leader."""
    import argparse, asyncio, os, signal, sys
    from pathlib import Path
    from aiohttp import web

    p = argparse.ArgumentParser()
    for flag in "id data-dir raft http peers advertise-http fsync".split():
        p.add_argument("--" + flag)
    a = p.parse_args()
    if os.environ.get("FAKENODE_CRASH") == a.id:
        print("boom: cannot open the log", flush=True)
        sys.exit(3)
    Path(a.data_dir, "pid").write_text(str(os.getpid()))
    print("argv", sys.argv[1:], flush=True)

    async def cluster(request):
        role = "leader" if a.id == "n1" else "follower"
        return web.json_response({"node_id": a.id, "role": role, "leader": {"id": "n1"}})

    async def serve():
        app = web.Application()
        app.router.add_get("/v1/cluster", cluster)
        runner = web.AppRunner(app)
        await runner.setup()
        host, port = a.http.rsplit(":", 1)
        await web.TCPSite(runner, host, int(port), reuse_address=True).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        parent = os.getppid()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                if os.getppid() != parent:  # orphaned: never outlive the test
                    break
        await runner.cleanup()

    asyncio.run(serve())
    '''
)


@pytest.fixture
def fake_node_path(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkgs" / "fakenode"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_NODE)
    return pkg.parent


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(nodes: int) -> int:
    for _ in range(100):
        base = random.randrange(20000, 40000)
        ports = [base + i for i in range(nodes)] + [base + 100 + i for i in range(nodes)]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range")


def _env(path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _kill_pids(data_dir: Path) -> None:
    """Last-resort cleanup of stand-in nodes by the pids they wrote."""
    for pid_file in data_dir.glob("*/pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_local_cluster_starts_waits_and_stops(tmp_path: Path, fake_node_path: Path) -> None:
    data = tmp_path / "data"
    cluster = LocalCluster(
        3,
        data_dir=data,
        base_port=free_base_port(3),
        node_module="fakenode",
        env=_env(fake_node_path),
    )
    try:
        cluster.start()
        assert cluster.wait_ready(timeout=30) == "n1"
        statuses = cluster.statuses()
        assert [s["role"] if s else None for s in statuses.values()] == [
            "leader",
            "follower",
            "follower",
        ]
        log = (data / "n2" / "node.log").read_text()
        assert f"--peers', '{cluster.specs[0].raft},{cluster.specs[2].raft}'" in log
        assert "--advertise-http', 'http://127.0.0.1:" in log
        procs = [cluster.process(s.id) for s in cluster.specs]
    finally:
        codes = cluster.stop(timeout=10)
        _kill_pids(data)
    assert set(codes) == {"n1", "n2", "n3"}
    assert all(p is not None and p.poll() is not None for p in procs)


def test_local_cluster_reports_a_node_that_dies_early(tmp_path: Path, fake_node_path: Path) -> None:
    data = tmp_path / "data"
    cluster = LocalCluster(
        2,
        data_dir=data,
        base_port=free_base_port(2),
        node_module="fakenode",
        env=_env(fake_node_path, FAKENODE_CRASH="n2"),
    )
    try:
        cluster.start()
        with pytest.raises(NodeExited) as info:
            cluster.wait_ready(timeout=30)
    finally:
        cluster.stop(timeout=10)
        _kill_pids(data)
    assert info.value.spec.id == "n2"
    assert info.value.returncode == 3
    assert "boom: cannot open the log" in info.value.log_tail


def _lines(stream: Any) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str], needle: str, timeout: float = 30.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        seen.append(line)
        if needle in line:
            return seen
        if line == "":
            raise AssertionError(f"output ended before {needle!r}: {''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cluster_up_runs_until_signalled(
    tmp_path: Path, fake_node_path: Path, sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "raftmq",
        "cluster",
        "up",
        "--nodes",
        "2",
        "--data-dir",
        str(data),
        "--base-port",
        str(free_base_port(2)),
        "--node-module",
        "fakenode",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=_env(fake_node_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = _lines(proc.stdout)
        out = "".join(_wait_for_line(lines, "Ctrl-C stops the cluster"))
        assert "ID  HTTP" in out and "leader" in out and "follower" in out
        pids = [int((data / n / "pid").read_text()) for n in ("n1", "n2")]
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        out = "".join(_wait_for_line(lines, "stopped:"))
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        _kill_pids(data)


def test_cluster_up_exits_1_with_the_log_tail_when_a_node_dies(
    tmp_path: Path, fake_node_path: Path
) -> None:
    data = tmp_path / "data"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raftmq",
            "cluster",
            "up",
            "--nodes",
            "2",
            "--data-dir",
            str(data),
            "--base-port",
            str(free_base_port(2)),
            "--node-module",
            "fakenode",
        ],
        cwd=tmp_path,
        env=_env(fake_node_path, FAKENODE_CRASH="n1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _kill_pids(data)
    assert proc.returncode == 1
    assert "error: node n1 exited with code 3 during startup" in proc.stderr
    assert "boom: cannot open the log" in proc.stderr
