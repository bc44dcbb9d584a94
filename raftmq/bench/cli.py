"""``raftmq bench``: the peers' workloads (and a few more) against a raftmq cluster.

Starts a 3-node ``--fsync always`` cluster of its own (temp data dir, free ports,
torn down afterwards whatever happens) unless ``--url`` names a running one, runs
the chosen workloads ``--repeat`` times and reports median/min/max.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from raftmq.bench import report
from raftmq.bench.adapter import RaftMQ
from raftmq.bench.cluster import BenchCluster
from raftmq.bench.progress import Progress
from raftmq.bench.workloads import (
    Params,
    backlog,
    measured,
    queues,
    sizes,
    w1,
    w2,
    w3,
    w3_consumer,
    w4,
)

__all__ = ["WORKLOADS", "build_parser", "main"]

log = logging.getLogger(__name__)

CORE = ["W1", "W1s", "W2", "W3", "W4"]
EXTRAS = ["sizes", "queues", "backlog"]
WORKLOADS = CORE + EXTRAS
_CANON = {w.lower(): w for w in WORKLOADS}

Result = dict[str, Any]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ parsing


def _workloads(value: str) -> list[str]:
    chosen = []
    for raw in value.split(","):
        name = raw.strip()
        if not name:
            continue
        if name.lower() == "all":
            chosen += CORE
            continue
        canon = _CANON.get(name.lower())
        if canon is None:
            raise argparse.ArgumentTypeError(
                f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)} (or all)"
            )
        chosen.append(canon)
    if not chosen:
        raise argparse.ArgumentTypeError("no workload given")
    return [w for w in WORKLOADS if w in chosen]


def _ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {value!r}"
        ) from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("expected positive integers")
    return out


def _positive_float(value: str) -> float:
    v = float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return v


def _positive_int(value: str) -> int:
    v = int(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raftmq bench",
        description=(
            "Run the peers' benchmark workloads (W1 W1s W2 W3 W4) and the opt-in "
            "sizes, queues and backlog against raftmq; medians over --repeat runs."
        ),
        epilog=(
            "example:\n"
            "  raftmq bench --repeat 3 --out results/raftmq.json --markdown \\\n"
            "      --compare rabbit.json --compare nats.json\n"
            "  raftmq bench --workloads W1,W2 --scale 0.01 --out /tmp/smoke.json\n"
            "  raftmq bench --workloads backlog --backlog 1000000\n"
            "  raftmq bench --url http://10.0.0.1:7200,http://10.0.0.2:7200 --workloads W1,W1s\n"
            "  raftmq bench --from-json results/raftmq.json --markdown --chart bench.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        metavar="URL[,URL...]",
        help="benchmark this running cluster (W4 is then skipped: it kills the leader)",
    )
    p.add_argument(
        "--workloads",
        type=_workloads,
        default=list(CORE),
        metavar="LIST",
        help=f"comma-separated from {', '.join(WORKLOADS)}; default all five W*",
    )
    p.add_argument("--repeat", "--reps", type=_positive_int, default=1, metavar="N")
    p.add_argument("--out", metavar="FILE.json", help="write results (bench.py's shape)")
    p.add_argument("--markdown", action="store_true", help="markdown tables on stdout")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="FILE.json",
        help="a peer's results from bench.py, shown beside ours with ratios (repeatable)",
    )
    p.add_argument("--chart", metavar="FILE.png", help="bar chart of the table (matplotlib)")
    p.add_argument(
        "--from-json",
        metavar="FILE.json",
        help="do not run anything: report on an earlier --out file",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    g = p.add_argument_group("cluster (when --url is not given)")
    g.add_argument("--nodes", type=_positive_int, default=3)
    g.add_argument("--fsync", choices=["always", "never"], default="always")
    g.add_argument("--base-port", type=int, help="raft ports from here, HTTP +100 (default: free)")
    g.add_argument(
        "--keep-logs",
        metavar="DIR",
        type=Path,
        help="copy each node's log to DIR/<id>.log when the cluster stops "
        "(its data directory is deleted)",
    )

    g = p.add_argument_group("client")
    g.add_argument(
        "--linger-ms",
        type=float,
        default=Params.linger_ms,
        help="AsyncClient coalescing linger; 0 sends every call alone (default %(default)s)",
    )
    g.add_argument(
        "--receivers",
        type=_positive_int,
        default=Params.receivers,
        help="consumers' concurrent long polls, each for prefetch/N (default %(default)s)",
    )
    g.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default=Params.loop,
        help="event loop of the benchmark's clients (default %(default)s, as bench.py)",
    )
    g.add_argument(
        "--client-gc",
        choices=["default", "relaxed"],
        default=Params.client_gc,
        help="garbage collection in the benchmark's clients: CPython's thresholds (default, "
        "as bench.py) or collections 70 times rarer, as a throughput-tuned application would",
    )
    g.add_argument(
        "--transport",
        choices=["http", "ws"],
        default=Params.transport,
        help="HTTP requests, or one WebSocket channel per client (default %(default)s)",
    )

    g = p.add_argument_group("workload parameters (bench.py's names and defaults)")
    g.add_argument(
        "--scale",
        type=_positive_float,
        default=1.0,
        help="multiply every message count and W3's duration (e.g. 0.01 for a smoke run)",
    )
    defaults = Params()
    for flag, kind, text in [
        ("--n", int, "W1/W2 messages"),
        ("--n-sync", int, "W1s messages"),
        ("--size", int, "message size, bytes"),
        ("--inflight", int, "W1/W3 unconfirmed publishes"),
        ("--prefetch", int, "W2/W3 receive batch"),
        ("--rate", float, "W3 msg/s"),
        ("--duration", float, "W3 seconds"),
        ("--kill-at", float, "W4: SIGKILL the leader at (s)"),
        ("--restart-at", float, "W4: restart it at (s)"),
        ("--run-for", float, "W4: stop producing at (s)"),
        ("--pub-timeout", float, "W4: per-attempt confirm timeout (s)"),
        ("--idle", float, "W3: consumer stops after this long without a message (s)"),
        ("--backlog", int, "backlog: messages"),
        ("--n-sizes", int, "sizes: at most this many messages per size"),
        ("--n-queues", int, "queues: messages per queue count"),
    ]:
        dest = flag[2:].replace("-", "_")
        g.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"{text} (default {getattr(defaults, dest)})",
        )
    g.add_argument("--sizes", type=_ints, default=None, help="sizes: bytes, comma-separated")
    g.add_argument(
        "--queue-counts", type=_ints, default=None, help="queues: counts, comma-separated"
    )
    return p


def params_from(args: argparse.Namespace) -> Params:
    """Defaults, scaled by --scale, then any explicit value."""
    p = Params(
        linger_ms=args.linger_ms,
        receivers=args.receivers,
        loop=args.loop,
        client_gc=args.client_gc,
        transport=args.transport,
    )
    s = args.scale
    if s != 1.0:
        p.n = max(10, round(p.n * s))
        p.n_sync = max(10, round(p.n_sync * s))
        p.duration = max(0.5, p.duration * s)
        p.backlog = max(100, round(p.backlog * s))
        p.n_sizes = max(10, round(p.n_sizes * s))
        p.sizes_bytes = max(1 << 16, round(p.sizes_bytes * s))
        p.n_queues = max(10, round(p.n_queues * s))
    for name in (
        "n",
        "n_sync",
        "size",
        "inflight",
        "prefetch",
        "rate",
        "duration",
        "kill_at",
        "restart_at",
        "run_for",
        "pub_timeout",
        "idle",
        "backlog",
        "n_sizes",
        "n_queues",
        "sizes",
        "queue_counts",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(p, name, value)
    if p.size < 16:
        raise ValueError("--size must be at least 16 bytes (the sequence and timestamp)")
    if min(p.sizes) < 16:
        raise ValueError("--sizes must be at least 16 bytes each")
    return p


# ------------------------------------------------------------------ running


def facts(cluster: BenchCluster | None, urls: list[str], fsync: str | None) -> Result:
    """The machine and versions (as bench.py's ``facts``), plus the cluster's shape."""

    def sh(cmd: list[str]) -> str:
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=20, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    def read(path: str, key: str) -> str:
        try:
            with open(path) as f:
                for line in f:
                    k, sep, v = line.partition(":" if ":" in line else "=")
                    if sep and k.strip() == key:
                        return v.strip().strip('"')
        except OSError:
            pass
        return ""

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return ""

    mem_kib = read("/proc/meminfo", "MemTotal").split()[:1]
    where = str(cluster.data_root) if cluster is not None else "."
    df = sh(["df", "-hT", where]).splitlines()
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "mem": f"{round(int(mem_kib[0]) / (1 << 20))} GiB" if mem_kib else "",
        "cpu": read("/proc/cpuinfo", "model name"),
        "os": read("/etc/os-release", "PRETTY_NAME"),
        "python": platform.python_version(),
        "raftmq": ver("raftmq"),
        "pysyncobj": ver("pysyncobj"),
        "aiohttp": ver("aiohttp"),
        "lmdb": ver("lmdb"),
        "uvloop": ver("uvloop"),
        "disk": df[-1] if df else "",
        "loadavg_at_start": list(os.getloadavg()),
        "cluster": "local" if cluster is not None else "given",
        "nodes": len(urls),
        "fsync": fsync if cluster is not None else "unknown (--url)",
    }


class Runner:
    """Runs the chosen workloads ``repeat`` times, writing results after each repeat."""

    def __init__(
        self,
        args: argparse.Namespace,
        params: Params,
        urls: list[str],
        cluster: BenchCluster | None,
        progress: Progress,
    ) -> None:
        self.args = args
        self.p = params
        self.urls = urls
        self.cluster = cluster
        self.progress = progress
        self.failed: list[str] = []
        self.results: Result = {
            "peer": "raftmq",
            "params": {
                **params.as_dict(),
                "cmd": "all",
                "reps": args.repeat,
                "workloads": args.workloads,
                "scale": args.scale,
            },
            "facts": facts(cluster, urls, args.fsync),
            "reps": [],
        }

    def peer(self) -> RaftMQ:
        return RaftMQ(
            self.urls,
            self.cluster,
            linger_ms=self.p.linger_ms,
            receivers=self.p.receivers,
            transport=self.p.transport,
        )

    async def run(self) -> Result:
        self.progress.attach()
        try:
            for r in range(self.args.repeat):
                self.progress.prefix = f"[rep {r + 1}/{self.args.repeat}] "
                rep: Result = {}
                self.results["reps"].append(rep)
                await self.one_rep(rep)
                self.save()
        finally:
            await self.progress.detach()
        self.results["summary"] = report.summary(self.results)
        self.save()
        return self.results

    def save(self) -> None:
        if self.args.out:
            tmp = self.args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.results, f, indent=1)
            os.replace(tmp, self.args.out)

    async def step(
        self,
        rep: Result,
        key: str,
        label: str,
        total: int | None,
        make: Callable[[], Coroutine[Any, Any, Result]],
        summarize: Callable[[Result], str],
    ) -> Result | None:
        self.progress.start(label, total)
        try:
            res = await measured(make())
        except Exception as e:
            log.debug("%s failed", label, exc_info=True)
            self.failed.append(label)
            rep[key] = {"error": f"{type(e).__name__}: {e}"}
            self.progress.finish(f"FAILED: {type(e).__name__}: {e}")
            return None
        rep[key] = res
        self.progress.finish(summarize(res))
        return res

    async def one_rep(self, rep: Result) -> None:
        wl = self.args.workloads
        p = self.p
        prog = self.progress
        if "W1" in wl or "W2" in wl:
            peer = self.peer()
            await peer.connect()
            try:
                await peer.reset()
                if "W1" in wl:
                    await self.step(
                        rep,
                        "w1",
                        "W1",
                        p.n,
                        lambda: w1(peer, p.n, p.size, p.inflight, prog),
                        lambda r: f"{r['msgs_per_s']:,.0f} msg/s, errors {r['errors']}",
                    )
                else:  # W2 drains what W1 published: publish it without reporting
                    prog.start("W2 prefill", p.n)
                    pre = await w1(peer, p.n, p.size, p.inflight, prog)
                    prog.finish(f"{pre['confirmed']:,} msgs")
            finally:
                await peer.close()
        if "W2" in wl:
            n = p.n
            if isinstance(rep.get("w1"), dict) and "confirmed" in rep["w1"]:
                n = rep["w1"]["confirmed"]
            peer = self.peer()
            await peer.connect()
            try:
                await self.step(
                    rep,
                    "w2",
                    "W2",
                    n,
                    lambda: w2(peer, n, p.prefetch, prog),
                    lambda r: f"{r['msgs_per_s']:,.0f} msg/s, depth after {r['depth_after']}",
                )
            finally:
                await peer.close()
        if "W1s" in wl or "W3" in wl:
            peer = self.peer()
            await peer.connect()
            try:
                await peer.reset()
                if "W1s" in wl:
                    await self.step(
                        rep,
                        "w1s",
                        "W1s",
                        p.n_sync,
                        lambda: w1(peer, p.n_sync, p.size, 1, prog),
                        lambda r: (
                            f"{r['msgs_per_s']:,.0f} msg/s, p50 {r['lat_p50_ms']:.2f} ms, "
                            f"p99 {r['lat_p99_ms']:.2f} ms"
                        ),
                    )
                if "W3" in wl:
                    await self.step(
                        rep,
                        "w3",
                        "W3",
                        int(p.rate * p.duration),
                        lambda: w3(peer, p, prog),
                        lambda r: (
                            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                            f"received {r['received']}/{r['sent']}"
                        ),
                    )
            finally:
                await peer.close()
        for name, fn, total in [
            ("sizes", sizes, None),
            ("queues", queues, p.n_queues * len(p.queue_counts)),
            ("backlog", backlog, p.backlog),
        ]:
            if name not in wl:
                continue
            peer = self.peer()
            await peer.connect()
            try:
                await self.step(
                    rep,
                    name,
                    name,
                    total,
                    lambda fn=fn, peer=peer: fn(peer, p, prog),  # type: ignore[misc]
                    _extra_summary(name),
                )
            finally:
                await peer.close()
        if "W4" in wl:
            if self.cluster is None:
                prog.message("W4 skipped: it kills the leader, so it only runs on a cluster")
                prog.message("    that `raftmq bench` starts itself (drop --url)")
                return
            peer = self.peer()
            res = await self.step(
                rep,
                "w4",
                "W4",
                None,
                lambda: w4(peer, p, prog),
                lambda r: (
                    f"max gap {_num(r['max_gap_s'], '{:.3f}')} s, "
                    f"lost {r['lost_confirmed']}, duplicates {r['duplicates']}"
                ),
            )
            await peer.close()
            if res is not None:
                await asyncio.sleep(5)


def _num(v: Any, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


def _extra_summary(name: str) -> Callable[[Result], str]:
    def f(r: Result) -> str:
        if name == "backlog":
            return (
                f"{r['msgs_per_s']:,.0f} msg/s; first 10 % {r['rate_first_10pct']:,.0f}, "
                f"last 10 % {r['rate_last_10pct']:,.0f} msg/s; max node RSS "
                f"{_num(r['rss_max_node_kib'] and r['rss_max_node_kib'] / 1024, '{:,.0f}')} MiB"
            )
        key = "size" if name == "sizes" else "queues"
        return ", ".join(
            f"{pt[key]:,}: {pt['msgs_per_s']:,.0f} msg/s" for pt in r.get("points", [])
        )

    return f


# ------------------------------------------------------------------ output


def _plain(results: Result) -> str:
    from raftmq.cli import table

    rows = []
    for row in report.ROWS:
        a = report.row_agg(results, row)
        if a is None:
            continue
        met = row.meets(a.median)
        rows.append(
            [
                row.label,
                row.fmt.format(a.median),
                row.fmt.format(a.low),
                row.fmt.format(a.high),
                row.unit,
                row.target_text or "-",
                "-" if met is None else ("yes" if met else "NO"),
            ]
        )
    return table(["workload", "median", "min", "max", "unit", "target", "met"], rows)


def emit(results: Result, args: argparse.Namespace) -> None:
    peers = []
    for path in args.compare:
        with open(path) as f:
            peers.append(json.load(f))
    n = len(results.get("reps", []))
    note = report.parameter_note(results)
    if args.markdown:
        _out(f"### raftmq (median of {n} run{'s' if n != 1 else ''})\n")
        _out(report.table(results))
        if note:
            _out(f"\n{note}")
        if peers:
            _out("\n### beside the peers (medians; ratio = raftmq ÷ peer)\n")
            _out(report.compare_table(results, peers))
        extras = report.extras_tables(results)
        if extras:
            _out("\n### extra workloads (medians)\n")
            _out(extras)
    else:
        sections = []
        if any(report.row_agg(results, row) is not None for row in report.ROWS):
            sections.append(_plain(results) + (f"\n{note}" if note else ""))
        if peers:
            sections.append(report.compare_table(results, peers))
        extras = report.extras_tables(results)
        if extras:
            sections.append(extras)
        _out("\n\n".join(sections))
    if args.chart:
        report.chart(results, peers, args.chart)
        _out(f"\nchart written to {args.chart}")


# ------------------------------------------------------------------ entry


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cluster is stopped and its dir removed."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Allocations between two young-generation collections with --client-gc relaxed.
RELAXED_GC_YOUNG_THRESHOLD = 50_000


def relax_client_gc() -> None:
    """What --client-gc relaxed does to this process (a node does the same to itself).

    bench.py's W1 keeps a finished task per message until its final ``gather``:
    every collection of the older generations walks all of them, and CPython's
    default thresholds run one every few thousand allocations. That was about a
    third of the client's CPU in W1 (27 -> 18 us per message).
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(RELAXED_GC_YOUNG_THRESHOLD, older, oldest)


def _run_loop(coro: Coroutine[Any, Any, Any], loop: str, client_gc: str) -> Any:
    if client_gc == "relaxed":
        relax_client_gc()
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    """``raftmq bench``; returns the exit code (1 when a workload failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_w3consumer":
        return _consumer_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.from_json:
        with open(args.from_json) as f:
            emit(json.load(f), args)
        return 0
    try:
        params = params_from(args)
    except ValueError as e:
        sys.stderr.write(f"raftmq bench: {e}\n")
        return 2
    progress = Progress(enabled=not args.quiet)
    with _sigterm_as_interrupt():
        try:
            if args.url:
                urls = [u.strip().rstrip("/") for u in args.url.split(",") if u.strip()]
                urls = [u if "://" in u else "http://" + u for u in urls]
                runner = Runner(args, params, urls, None, progress)
                results = _run_loop(runner.run(), params.loop, params.client_gc)
            else:
                with BenchCluster(
                    args.nodes, fsync=args.fsync, base_port=args.base_port, keep_logs=args.keep_logs
                ) as c:
                    progress.message(
                        f"starting a {args.nodes}-node cluster (--fsync {args.fsync}) "
                        f"on {c.specs[0].host}:{c.specs[0].raft_port}+ in {c.data_root}"
                    )
                    leader = c.wait_ready(60.0)
                    progress.message(f"cluster ready, leader {leader}")
                    runner = Runner(args, params, c.urls, c, progress)
                    results = _run_loop(runner.run(), params.loop, params.client_gc)
        except KeyboardInterrupt:
            sys.stderr.write("raftmq bench: interrupted; the cluster was stopped\n")
            return 130
    emit(results, args)
    if runner.failed:
        sys.stderr.write(f"raftmq bench: failed workloads: {', '.join(runner.failed)}\n")
        return 1
    return 0


def _consumer_main(argv: list[str]) -> int:
    """The W3 consumer process (started by W3 itself)."""
    p = argparse.ArgumentParser(prog="raftmq bench _w3consumer")
    p.add_argument("--url", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--prefetch", type=int, required=True)
    p.add_argument("--idle", type=float, required=True)
    p.add_argument("--linger-ms", type=float, default=Params.linger_ms)
    p.add_argument("--receivers", type=int, default=Params.receivers)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--client-gc", choices=["default", "relaxed"], default=Params.client_gc)
    p.add_argument("--transport", choices=["http", "ws"], default=Params.transport)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    peer = RaftMQ(
        args.url.split(","),
        queue=args.queue,
        linger_ms=args.linger_ms,
        receivers=args.receivers,
        transport=args.transport,
    )
    _run_loop(w3_consumer(peer, args.n, args.prefetch, args.idle), args.loop, args.client_gc)
    return 0
