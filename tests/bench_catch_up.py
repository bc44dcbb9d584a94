"""Lone publishes while a restarted follower catches up by snapshot (not collected by pytest).

    python -m tests.bench_catch_up [--fill 300000] [--size 1024] [--json FILE]

A local 3-node cluster (snapshots every --snapshot-entries entries) is filled
with --fill messages of --size bytes; one follower is SIGKILLed, --more messages
are published, and the others compact their logs past it, so that it can only
catch up by receiving the snapshot of the whole store. A client then publishes
one message at a time (--gap-ms apart) for --seconds; the follower is restarted
5 s in. Printed: the confirm latency per 2-second window; when the follower
had installed the snapshot, and when it had applied what the leader had at its
restart (null: not while publishes were measured); the Raft term before and
after (a higher term means the leader was deposed or an election was called).
With a --snapshot-entries larger than the entries written, nobody compacts and
the follower catches up from the leader's journal instead.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from raftmq import AsyncClient
from raftmq.bench.adapter import RaftMQ, pct
from raftmq.bench.workloads import w1
from tests.cluster.harness import LocalTestCluster, NodeProc, wait_for

RESTART_AFTER_S = 5.0
WINDOW_S = 2.0
INSTALLED = "restored from snapshot"


async def publish_window(urls: list[str], queue: str, count: int, size: int) -> float:
    """Publish `count` messages with 256 in flight (raftmq bench's W1); messages per second."""
    peer = RaftMQ(urls, queue=queue, transport="ws")
    await peer.connect()
    try:
        return float((await w1(peer, count, size, 256))["msgs_per_s"])
    finally:
        await peer.close()


async def lone_publishes(
    urls: list[str], queue: str, seconds: float, gap_s: float
) -> list[tuple[float, float | None]]:
    """(start, confirm latency in ms or None on error) of one publish at a time."""
    samples: list[tuple[float, float | None]] = []
    async with AsyncClient(urls) as client, client.channel() as channel:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                await asyncio.wait_for(channel.publish(queue, b"y" * 256), 10)
                samples.append((started, (time.monotonic() - started) * 1000))
            except Exception:  # counted as an error; the run goes on
                samples.append((started, None))
            await asyncio.sleep(gap_s)
    return samples


def windows(samples: list[tuple[float, float | None]], origin: float) -> list[dict[str, Any]]:
    by_window: dict[int, list[float | None]] = {}
    for started, latency in samples:
        by_window.setdefault(int((started - origin) // WINDOW_S), []).append(latency)
    rows = []
    for index in sorted(by_window):
        done = [x for x in by_window[index] if x is not None]
        rows.append(
            {
                "from_s": index * WINDOW_S,
                "confirmed": len(done),
                "errors": len(by_window[index]) - len(done),
                "p50_ms": pct(done, 50),
                "p99_ms": pct(done, 99),
                "max_ms": max(done, default=None),
            }
        )
    return rows


def _applied(cluster: LocalTestCluster, node: NodeProc) -> int:
    """The node's last applied index, or -1 while it does not answer."""
    try:
        return int(cluster.status(node)["last_applied"])
    except (OSError, AssertionError):
        return -1


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    extra = ["--snapshot-entries", str(args.snapshot_entries), "--snapshot-log-ratio", "0"]
    cluster = LocalTestCluster(root, 3, extra)
    cluster.start()
    try:
        cluster.wait_leader(60)

        async def declare() -> None:
            async with AsyncClient(cluster.urls) as client:
                await client.declare_queue("fill")
                await client.declare_queue("probe")

        asyncio.run(declare())
        fill_rate = asyncio.run(publish_window(cluster.urls, "fill", args.fill, args.size))
        behind = cluster.follower()
        cluster.kill(behind, signal.SIGKILL)
        asyncio.run(publish_window(cluster.urls, "fill", args.more, args.size))
        leader = cluster.wait_leader(60)
        term_before = cluster.status(leader)["term"]
        store_mib = sum(
            f.stat().st_size for f in (leader.data_dir / "state").rglob("*") if f.is_file()
        ) / (1 << 20)
        result: dict[str, Any] = {}
        probe = threading.Thread(
            target=lambda: result.update(
                samples=asyncio.run(
                    lone_publishes(cluster.urls, "probe", args.seconds, args.gap_ms / 1000)
                )
            )
        )
        origin = time.monotonic()
        probe.start()
        time.sleep(RESTART_AFTER_S)
        target = cluster.status(leader)["last_applied"]
        cluster.start_node(behind)
        installed_at = caught_up_at = None
        while probe.is_alive():
            if installed_at is None and INSTALLED in behind.log_path.read_text(errors="replace"):
                installed_at = time.monotonic() - origin
            if caught_up_at is None and _applied(cluster, behind) >= target:
                caught_up_at = time.monotonic() - origin
            time.sleep(0.1)
        probe.join()
        wait_for(lambda: cluster.leader() is not None, 60, "a leader")
        statuses = cluster.wait_converged(120)
        return {
            "fill": args.fill,
            "size": args.size,
            "fill_msgs_per_s": round(fill_rate),
            "store_mib": round(store_mib),
            "restarted_at_s": RESTART_AFTER_S,
            "snapshot_installed_at_s": installed_at,
            "caught_up_at_s": caught_up_at,
            "term_before": term_before,
            "term_after": max(s["term"] for s in statuses),
            "windows": windows(result["samples"], origin),
        }
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", type=int, default=300_000)
    parser.add_argument("--more", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--snapshot-entries", type=int, default=1500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep", type=Path, help="run in this new directory and keep it (logs)")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        result = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="raftmq-catch-up-") as tmp:
            result = run(args, Path(tmp))
    for row in result["windows"]:
        p50, p99 = row["p50_ms"], row["p99_ms"]
        sys.stdout.write(
            f"{row['from_s']:5.0f} s  confirmed {row['confirmed']:4d}  errors {row['errors']}"
            + (f"  p50 {p50:8.2f} ms  p99 {p99:8.2f} ms\n" if p50 is not None else "\n")
        )
    summary = {k: v for k, v in result.items() if k != "windows"}
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
