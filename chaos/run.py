"""``raftmq chaos run``: start a cluster, load it, break it, heal it, judge it.

The phases, each with its own deadline so a run always ends by itself:

1. set up the network (namespaces when a partition is requested) and start
   the nodes; wait for an agreed, registered leader;
2. declare the queue, stream and fan-out exchange of the selected workloads,
   start their client processes and the nemesis;
3. after ``--duration`` stop the nemesis (healing its current fault) and the
   workload, then heal everything (every node running, nothing paused, no
   partition) and wait for a leader;
4. drain: receive and ack until every node reports every queue empty, then
   read the whole stream from offset 0 and every group's committed offset;
5. wait until every node reports the same applied index and state digest;
6. tear everything down, check the history, write results.json and
   timeline.png. Exit 0 when the checker finds nothing, 1 when it finds a
   violation, 2 for a usage error, 3 when the cluster could not even start.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from chaos.checker import CheckResult, check
from chaos.cluster import (
    ChaosCluster,
    LoopbackTopology,
    NetnsError,
    NetnsTopology,
    Topology,
    http_json,
    netns_unavailable_reason,
)
from chaos.history import HistoryWriter, read_history
from chaos.nemesis import KINDS, Nemesis, membership_summary, plan
from chaos.pubsub_workload import declare, final_stream_read, processes
from chaos.report import render_timeline, results_document, write_results
from chaos.workload import WORKLOADS, Workload, WorkloadConfig, drain
from node.config import Limits
from raftmq.client import Client
from raftmq.errors import RaftMQError

__all__ = ["build_parser", "main"]

log = logging.getLogger("chaos")

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2
EXIT_SETUP = 3

STARTUP_TIMEOUT_S = 60.0
RECOVERY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0
CONVERGE_TIMEOUT_S = 60.0
STREAM_READ_TIMEOUT_S = 60.0
DEFAULT_NEMESES = "kill,pause,partition"
DEFAULT_WORKLOADS = ",".join(WORKLOADS)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _nemeses(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown nemesis {', '.join(unknown)}; choose from {', '.join(KINDS)}"
        )
    return list(dict.fromkeys(items))


def _workloads(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in WORKLOADS]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown workload {', '.join(unknown) or '(none)'}; choose from {', '.join(WORKLOADS)}"
        )
    return [w for w in WORKLOADS if w in items]


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftmq chaos", description="Fault-injection runs against a local raftmq cluster."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="one bounded chaos run; exit 1 if the checker finds a violation",
        description="Starts its own cluster, runs producers and consumers under faults, "
        "drains, checks the history and tears everything down.",
        epilog="example: raftmq chaos run --nodes 5 --duration 120 "
        "--nemesis kill,pause,partition --seed 7 --out chaos-out/seed7",
    )
    run.add_argument("--nodes", type=int, choices=[3, 5], default=3)
    run.add_argument("--duration", type=_positive, default=60.0, metavar="S")
    run.add_argument(
        "--nemesis",
        type=_nemeses,
        default=_nemeses(DEFAULT_NEMESES),
        metavar="LIST",
        help=f"comma-separated, from {','.join(KINDS)} (default {DEFAULT_NEMESES})",
    )
    run.add_argument(
        "--workload",
        type=_workloads,
        default=_workloads(DEFAULT_WORKLOADS),
        metavar="LIST",
        help="comma-separated promises to exercise, from "
        f"{','.join(WORKLOADS)} (default {DEFAULT_WORKLOADS})",
    )
    run.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    run.add_argument("--out", type=Path, default=None, help="default chaos-out/<timestamp>-seed<N>")
    run.add_argument("--producers", type=int, default=3)
    run.add_argument("--consumers", type=int, default=3)
    run.add_argument(
        "--rate", type=_positive, default=60.0, help="messages/s published in total (default 60)"
    )
    run.add_argument(
        "--stream-rate",
        type=_positive,
        default=20.0,
        help="stream records/s appended in total (default 20)",
    )
    run.add_argument(
        "--fanout-rate",
        type=_positive,
        default=16.0,
        help="messages/s published to the fan-out exchange in total (default 16)",
    )
    run.add_argument(
        "--visibility-timeout", type=_positive, default=10.0, metavar="S", help="default 10"
    )
    run.add_argument(
        "--snapshot-entries",
        type=int,
        default=1000,
        help="nodes compact their log this often, so restarts exercise snapshots (default 1000)",
    )
    run.add_argument(
        "--keep-data", action="store_true", help="keep node data dirs even after a clean run"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    return parser


@dataclass
class Options:
    nodes: int
    duration: float
    nemeses: list[str]
    seed: int
    out: Path
    producers: int
    consumers: int
    rate: float
    visibility_timeout: float
    snapshot_entries: int
    keep_data: bool
    workloads: list[str] = dataclasses.field(default_factory=lambda: list(WORKLOADS))
    stream_rate: float = 20.0
    fanout_rate: float = 16.0

    def rerun_command(self) -> str:
        mix = "" if self.workloads == list(WORKLOADS) else f" --workload {','.join(self.workloads)}"
        return (
            f"raftmq chaos run --nodes {self.nodes} --duration {self.duration:g} "
            f"--nemesis {','.join(self.nemeses)}{mix} --seed {self.seed}"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``raftmq chaos``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    out = args.out or Path("chaos-out") / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    if out.exists() and any(out.iterdir()):
        _err(f"error: {out} exists and is not empty; pick another --out")
        return EXIT_USAGE
    out.mkdir(parents=True, exist_ok=True)
    options = Options(
        nodes=args.nodes,
        duration=args.duration,
        nemeses=list(args.nemesis),
        seed=seed,
        out=out,
        producers=args.producers,
        consumers=args.consumers,
        rate=args.rate,
        visibility_timeout=args.visibility_timeout,
        snapshot_entries=args.snapshot_entries,
        keep_data=args.keep_data,
        workloads=list(args.workload),
        stream_rate=args.stream_rate,
        fanout_rate=args.fanout_rate,
    )
    with _logging(out / "chaos.log", args.verbose), _terminate_as_exit():
        return run(options)


@contextlib.contextmanager
def _logging(path: Path, verbose: bool) -> Iterator[None]:
    """Everything at INFO into the run's chaos.log; stderr gets INFO (DEBUG with -v)."""
    root = logging.getLogger()
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    )
    file_handler.setLevel(logging.INFO)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("chaos %(asctime)s %(levelname)s: %(message)s", "%X"))
    stream.setLevel(logging.DEBUG if verbose else logging.INFO)
    previous = root.level
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(file_handler)
    root.addHandler(stream)
    for noisy in ("matplotlib", "PIL", "raftmq.client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(file_handler)
        root.removeHandler(stream)
        root.setLevel(previous)
        file_handler.close()


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C does, so every ``finally`` cleanup runs."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _topology(options: Options, skipped: dict[str, str]) -> Topology:
    """Namespaces when a partition is requested and possible; loopback otherwise."""
    if "partition" not in options.nemeses:
        return LoopbackTopology()
    reason = netns_unavailable_reason()
    if reason is None:
        try:
            return NetnsTopology()
        except NetnsError as e:
            reason = str(e)
    skipped["partition"] = reason
    _err(f"skipping nemesis partition: {reason}")
    return LoopbackTopology()


def run(options: Options) -> int:
    """One whole run; see the module docstring for the phases."""
    skipped: dict[str, str] = {}
    topology = _topology(options, skipped)
    cluster = ChaosCluster(
        options.out,
        options.nodes,
        topology,
        extra_args=["--snapshot-entries", str(options.snapshot_entries)],
    )
    history_path = options.out / "history.jsonl"
    history: HistoryWriter | None = None
    setup_error: str | None = None
    started = False
    faults = []
    try:
        try:
            cluster.setup()
        except NetnsError as e:
            if "partition" not in options.nemeses:
                raise
            skipped["partition"] = f"network namespaces could not be set up: {e}"
            _err(f"skipping nemesis partition: {skipped['partition']}")
            cluster.teardown()
            cluster = ChaosCluster(
                options.out, options.nodes, LoopbackTopology(), extra_args=cluster.extra_args
            )
            cluster.setup()
        nemeses = [n for n in options.nemeses if n not in skipped]
        faults = plan(options.seed, nemeses, options.duration, options.nodes)
        config = _config(options)
        history = HistoryWriter(history_path)
        history.write(
            {
                "type": "meta",
                "seed": options.seed,
                "nodes": options.nodes,
                "nemeses": nemeses,
                "skipped_nemeses": skipped,
                "duration": options.duration,
                "queue": config.queue,
                "visibility_timeout": options.visibility_timeout,
                "workloads": list(config.workloads),
                "stream": config.stream,
                "groups": [f"g{k}" for k in range(config.groups)],
                "stream_dedup_window_s": Limits().dedup_window_s,
                "exchange": config.exchange,
                "fanout_queues": list(config.fanout_queues),
                "wall_start": history.wall_start,
                "topology": cluster.topology.describe(),
                "node_urls": dict(zip(cluster.ids, cluster.urls, strict=True)),
                "schedule": [f.to_dict() for f in faults],
            }
        )
        cluster.start()
        leader = cluster.wait_ready(STARTUP_TIMEOUT_S)
        log.info("cluster ready: %s leads; urls %s", leader, ",".join(cluster.urls))
        started = True
        _exercise(options, config, cluster, history, faults)
    except (OSError, RuntimeError, TimeoutError, NetnsError, RaftMQError) as e:
        log.exception("the run could not complete")
        setup_error = f"{type(e).__name__}: {e}"
    finally:
        if history is not None:
            history.close()
        cluster.teardown()
    if not started:
        _err(f"error: the run did not start: {setup_error}")
    # Reported even when nothing ran: results.json says why, timeline.png is empty.
    code = _report(options, cluster, faults, skipped, setup_error)
    return code if started else EXIT_SETUP


def _config(options: Options) -> WorkloadConfig:
    return WorkloadConfig(
        producers=options.producers,
        consumers=options.consumers,
        publish_rate=options.rate,
        visibility_timeout=options.visibility_timeout,
        seed=options.seed,
        workloads=tuple(options.workloads),
        append_rate=options.stream_rate,
        fanout_rate=options.fanout_rate,
    )


def _exercise(
    options: Options,
    config: WorkloadConfig,
    cluster: ChaosCluster,
    history: HistoryWriter,
    faults: list[Any],
) -> None:
    with Client(cluster.urls, timeout=5.0, retry_deadline=30.0) as client:
        if "queue" in config.workloads:
            client.declare_queue(config.queue, visibility_timeout=options.visibility_timeout)
        declare(client, config)
    history.write({"type": "phase", "name": "workload_start"})
    nemesis = Nemesis(cluster, history, faults, options.seed, history.now())
    workload = Workload(cluster.urls, history, config, extra=processes(config))
    workload.start()
    nemesis.start()
    stopped = threading.Event()
    try:
        stopped.wait(options.duration)  # the run's length, not a synchronisation
    finally:
        history.write({"type": "phase", "name": "workload_end"})
        nemesis.stop()
        workload.stop()
        nemesis.heal_all()
    for error in nemesis.errors:
        log.error("nemesis: %s", error)
    try:
        leader = cluster.wait_ready(RECOVERY_TIMEOUT_S)
        log.info("after the final heal %s leads", leader)
    except (TimeoutError, RuntimeError) as e:
        log.error("no leader after the final heal: %s", e)
    history.write({"type": "phase", "name": "drain_start"})

    def totals(queue: str) -> dict[str, int | None]:
        nemesis.watch_exits()
        out: dict[str, int | None] = {}
        for node_id in cluster.ids:
            res = http_json("GET", f"{cluster.spec(node_id).url}/v1/queues/{queue}")
            ok = res.status == 200 and isinstance(res.body, dict)
            out[node_id] = int(res.body["total"]) if ok else None
        return out

    drained, queue_totals = drain(cluster.urls, history, config, totals, DRAIN_TIMEOUT_S)
    history.write({"type": "phase", "name": "drain_end"})
    log.info("drain %s: totals %s", "complete" if drained else "INCOMPLETE", queue_totals)
    stream_read: dict[str, Any] = {}
    if "stream" in config.workloads:
        complete, next_offset = final_stream_read(
            cluster.urls, history, config, STREAM_READ_TIMEOUT_S
        )
        stream_read = {"stream_read_complete": complete, "stream_next_offset": next_offset}
        log.info(
            "final stream read %s: %d records",
            "complete" if complete else "INCOMPLETE",
            next_offset,
        )
    converged, statuses, waited = _converge(cluster, nemesis)
    history.write(
        {
            "type": "final",
            "drained": drained,
            "queue_totals": queue_totals,
            **stream_read,
            "converged": converged,
            "convergence_wait_s": round(waited, 3),
            "nodes": statuses,
        }
    )


def _converge(
    cluster: ChaosCluster, nemesis: Nemesis
) -> tuple[bool, dict[str, dict[str, Any] | None], float]:
    """Polls every node until all report one applied index and digest, or the deadline passes."""
    start = time.monotonic()
    statuses: dict[str, dict[str, Any] | None] = {}
    while True:
        nemesis.watch_exits()
        statuses = {}
        for node_id in cluster.ids:
            st = cluster.status(node_id, digest=True, timeout=2.0)
            statuses[node_id] = (
                None
                if st is None
                else {
                    k: st.get(k)
                    for k in (
                        "role",
                        "term",
                        "commit_index",
                        "last_applied",
                        "applied_index",
                        "digest",
                    )
                }
            )
        keys = {(s["applied_index"], s["digest"]) if s else None for s in statuses.values()}
        waited = time.monotonic() - start
        if len(keys) == 1 and None not in keys:
            return True, statuses, waited
        if waited > CONVERGE_TIMEOUT_S:
            log.error("replicas did not converge: %s", statuses)
            return False, statuses, waited
        time.sleep(0.2)


def _report(
    options: Options,
    cluster: ChaosCluster,
    faults: list[Any],
    skipped: dict[str, str],
    setup_error: str | None,
) -> int:
    path = options.out / "history.jsonl"
    records = read_history(path) if path.exists() else []
    result = check(records)
    if setup_error is not None:
        result.problems.append(f"the run failed: {setup_error}")
    run_info: dict[str, Any] = {
        "seed": options.seed,
        "nodes": options.nodes,
        "nemeses": [n for n in options.nemeses if n not in skipped],
        "requested_nemeses": options.nemeses,
        "skipped_nemeses": skipped,
        "duration_s": options.duration,
        "topology": cluster.topology.describe(),
        "schedule": [f.to_dict() for f in faults],
        "workloads": options.workloads,
        "rerun": options.rerun_command(),
        **({"membership": membership_summary(records)} if "membership" in options.nemeses else {}),
        "files": {
            "history": "history.jsonl",
            "timeline": "timeline.png",
            "chaos_log": "chaos.log",
            "node_logs": [f"nodes/{i}.log" for i in cluster.ids],
        },
    }
    document = results_document(result, run_info)
    write_results(options.out / "results.json", document)
    title = (
        f"raftmq chaos: seed {options.seed}, {options.nodes} nodes, "
        f"{','.join(run_info['nemeses']) or 'no nemesis'}, {options.duration:g} s, "
        f"workloads {','.join(options.workloads)}"
    )
    render_timeline(options.out / "timeline.png", records, result, title)
    if result.valid and not options.keep_data:
        for node_id in cluster.ids:
            shutil.rmtree(cluster.spec(node_id).data_dir, ignore_errors=True)
    _summary(options, result, run_info)
    return EXIT_OK if result.valid else EXIT_VIOLATION


def _summary(options: Options, result: CheckResult, run_info: dict[str, Any]) -> None:
    counts = result.counts()
    avail = result.availability
    final = result.final or {}
    kinds: dict[str, int] = {}
    for w in result.windows:
        kinds[w.fault] = kinds.get(w.fault, 0) + 1
    topo = run_info["topology"]
    _out(
        f"chaos run: seed {options.seed}, {options.nodes} nodes, {options.duration:g} s, "
        f"nemeses {','.join(run_info['nemeses']) or '-'}, "
        f"workloads {','.join(options.workloads)}, topology {topo.get('topology')}"
        + (f" {topo['subnet']}" if topo.get("subnet") else "")
    )
    for name, reason in run_info["skipped_nemeses"].items():
        _out(f"  skipped {name}: {reason}")
    _out(
        f"  fault windows: {len(result.windows)} "
        + ("(" + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ")" if kinds else "")
    )
    for op, per in sorted(result.operations.items()):
        ok, fail, info = per.get("ok", 0), per.get("fail", 0), per.get("info", 0)
        _out(f"  {op:12} ok {ok:6}  fail {fail:5}  info {info:5}")
    workloads = run_info.get("workloads", [])
    if "queue" in workloads:
        _out(
            f"  queue: lost {counts['lost']}, unexpected {counts['unexpected']}, "
            f"failed-but-delivered {counts['failed_publish_delivered']}, "
            f"duplicates {counts['duplicates']} (violations {counts['duplicate_violations']}), "
            f"fifo violations {counts['fifo_violations']}; unknown publishes "
            f"{counts['unknown_publishes_present']} present, "
            f"{counts['unknown_publishes_absent']} absent"
        )
    if "fanout" in workloads:
        _out(
            f"  fan-out ({len(result.fanout)} queues): lost {counts['fanout_lost']}, "
            f"unexpected {counts['fanout_unexpected']}, "
            f"failed-but-delivered {counts['fanout_failed_publish_delivered']}, "
            f"duplicates {counts['fanout_duplicates']} "
            f"(violations {counts['fanout_duplicate_violations']}), "
            f"fifo violations {counts['fanout_fifo_violations']}, "
            f"misrouted {counts['fanout_misrouted']}; unknown publishes "
            f"{counts['fanout_unknown_publishes_present']} present, "
            f"{counts['fanout_unknown_publishes_absent']} absent"
        )
    if "stream" in workloads:
        stats = result.stream.stats
        _out(
            f"  stream: lost {counts['stream_lost']}, unexpected {counts['stream_unexpected']}, "
            f"failed-but-present {counts['stream_failed_append_present']}, "
            f"duplicates {counts['stream_duplicates']} "
            f"(violations {counts['stream_duplicate_violations']}), "
            f"order violations {counts['stream_order_violations']}, "
            f"rewritten offsets {counts['stream_rewritten_offsets']}, "
            f"stale reads {counts['stream_stale_reads']}, "
            f"bad bodies {counts['stream_bad_bodies']}"
        )
        _out(
            f"  groups: offset violations {counts['group_offset_violations']}, "
            f"backward moves explained by unknown commits {counts['group_offset_regressions']}; "
            f"unknown appends {counts['stream_unknown_appends_present']} present, "
            f"{counts['stream_unknown_appends_absent']} absent; final read "
            f"{stats.get('final_records', 0)} records"
            + ("" if stats.get("final_read_complete") else " (INCOMPLETE)")
        )
    if "membership" in run_info:
        changes = run_info["membership"]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(changes["removals"].items()))
        _out(
            f"  membership: removals {sum(changes['removals'].values())}"
            + (f" ({outcomes})" if outcomes else "")
            + f", re-joins {changes['rejoins']}, re-joins that failed {changes['rejoins_failed']}"
        )
    _out(f"  node crashes {counts['node_exits']}")
    _out(
        f"  availability: {avail.ok_ops_per_s:.1f} ok ops/s, {avail.ok_publishes_per_s:.1f} "
        f"ok writes/s; longest gap without an ok op {avail.longest_gap_s:.2f} s "
        f"({avail.longest_gap[0]:.1f}-{avail.longest_gap[1]:.1f}), without an ok write "
        f"{avail.longest_publish_gap_s:.2f} s"
    )
    _out(
        f"  drained: {'yes' if final.get('drained') else 'NO'}, converged: "
        f"{'yes' if final.get('converged') else 'NO'}"
    )
    _out("  result: " + ("VALID" if result.valid else "INVALID: " + "; ".join(result.problems)))
    _out(f"  output: {options.out} (results.json, history.jsonl, timeline.png, nodes/*.log)")
    _out(f"  rerun:  {options.rerun_command()}")
