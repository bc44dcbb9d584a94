"""Publish throughput to a topic exchange with 1,000 bindings (not collected by pytest).

    python -m tests.bench_pubsub storage   # Store.apply micro-benchmark, one process
    python -m tests.bench_pubsub http      # through HTTP on a local 3-node cluster

The bindings: 100 queues, each bound with 10 patterns mixing literal words,
"*" and "#" (1,000 bindings); a routing key matches 1.7 queues on average.
"""

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftmq import AsyncClient, Client, Message
from storage import Store
from storage.topic import TopicTrie
from tests.cluster.harness import LocalTestCluster

QUEUES = 100
PATTERNS_PER_QUEUE = 10
START_MS = 1_700_000_000_000


def bindings() -> list[tuple[str, str]]:
    """(pattern, queue) pairs: 1,000 distinct patterns over 100 queues."""
    forms = [
        "orders.{n}.created",
        "orders.{n}.*",
        "*.{n}.shipped",
        "orders.#.{n}",
        "#.eu.{n}",
        "audit.{n}.#",
        "*.*.{n}",
        "billing.{n}.*.done",
        "{n}.#",
        "#.{n}.x",
    ]
    pairs = []
    for i in range(QUEUES * PATTERNS_PER_QUEUE):
        form = forms[i % len(forms)]
        pairs.append((form.format(n=i // len(forms)), f"q{i % QUEUES}"))
    return pairs


def routing_keys(count: int) -> list[str]:
    kinds = ["created", "shipped", "paid"]
    return [f"orders.{i % 100}.{kinds[i % 3]}" for i in range(count)]


def _regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for word in pattern.split("."):
        if word == "*":
            parts.append(r"\.[^.]*")
        elif word == "#":
            parts.append(r"(?:\.[^.]*)*")
        else:
            parts.append(r"\." + re.escape(word))
    return re.compile("".join(parts), re.DOTALL)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _rate(count: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return count / (time.perf_counter() - started)


def bench_matcher() -> None:
    pairs = bindings()
    trie = TopicTrie(pairs)
    compiled = [(_regex(p), q) for p, q in pairs]
    keys = routing_keys(20_000)
    fanout = sum(len(trie.match(k)) for k in keys) / len(keys)

    def with_trie() -> None:
        for key in keys:
            trie.match(key)

    def scan_all() -> None:
        for key in keys[:2000]:
            {q for rx, q in compiled if rx.fullmatch("." + key)}

    _say(f"matcher: {len(pairs)} bindings, {fanout:.1f} queues per key on average")
    _say(f"  trie          {_rate(len(keys), with_trie):>12,.0f} keys/s")
    _say(f"  regex scan    {_rate(2000, scan_all):>12,.0f} keys/s  (every binding per key)")


def bench_storage(seconds: float) -> None:
    bench_matcher()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "store"), map_size=8 << 30)
        index = 0

        def apply(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
            nonlocal index
            index += 1
            results = store.apply(index, commands)
            assert results is not None
            return results

        now = START_MS
        setup: list[dict[str, Any]] = [
            {"op": "declare_exchange", "exchange": "t", "type": "topic", "now_ms": now}
        ]
        setup += [{"op": "declare_queue", "queue": f"q{i}", "now_ms": now} for i in range(QUEUES)]
        setup += [
            {"op": "bind", "exchange": "t", "queue": q, "routing_key": p, "now_ms": now}
            for p, q in bindings()
        ]
        apply(setup)
        keys = routing_keys(1000)
        for batch in (1, 100):
            for cold in (False, True):
                sent = routed = 0
                started = time.perf_counter()
                n = 0
                while time.perf_counter() - started < seconds:
                    messages = [
                        {"id": f"b{batch}-{cold}-{n}-{i}", "body": "x" * 100} for i in range(batch)
                    ]
                    result = apply(
                        [
                            {
                                "op": "publish_exchange",
                                "exchange": "t",
                                "routing_key": keys[n % len(keys)],
                                "messages": messages,
                                "dedup_window_ms": 300_000,
                                "now_ms": START_MS + n,
                            }
                        ]
                    )[0]
                    assert result["status"] == "ok", result
                    if cold:
                        store._memo.clear()
                    sent += batch
                    routed += sum(result["routed"].values())
                    n += 1
                elapsed = time.perf_counter() - started
                label = f"batch {batch:>3}, router cache {'cold' if cold else 'warm'}"
                _say(
                    f"apply {label}: {sent / elapsed:>9,.0f} msgs/s published, "
                    f"{routed / elapsed:>9,.0f} copies/s enqueued, "
                    f"{n / elapsed:>7,.0f} entries/s"
                )
        store.close()


async def _http_load(
    urls: list[str], batch: int, concurrency: int, seconds: float
) -> tuple[int, int, float]:
    keys = routing_keys(1000)
    sent = 0
    routed = 0
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal sent, routed
        async with AsyncClient(urls) as client:
            n = 0
            while time.monotonic() < deadline:
                messages = [Message("x" * 100) for _ in range(batch)]
                result = await client.publish_to_exchange("t", keys[(w * 7 + n) % 1000], messages)
                sent += batch
                routed += sum(result.routed.values())
                n += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return sent, routed, time.monotonic() - started


def bench_http(seconds: float, fsync: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalTestCluster(Path(tmp), 3, ["--fsync", fsync, "--log-level", "WARNING"])
        try:
            cluster.start()
            leader = cluster.wait_leader()
            with Client([leader.url]) as client:
                client.declare_exchange("t", "topic")
                for i in range(QUEUES):
                    # Bounded so a long run does not fill the disk.
                    client.declare_queue(f"q{i}", max_length=20_000, overflow="drop_head")
                for pattern, queue in bindings():
                    client.bind("t", queue, pattern)
            _say(f"3-node cluster, --fsync {fsync}, 1,000 bindings, 100-byte bodies")
            for batch, concurrency in ((1, 1), (1, 32), (100, 8)):
                sent, routed, elapsed = asyncio.run(
                    _http_load([leader.url], batch, concurrency, seconds)
                )
                _say(
                    f"  batch {batch:>3} x {concurrency:>2} clients: "
                    f"{sent / elapsed:>8,.0f} msgs/s published, "
                    f"{routed / elapsed:>8,.0f} copies/s enqueued"
                )
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_pubsub")
    parser.add_argument("what", choices=["storage", "http"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fsync", choices=["always", "never"], default="always")
    args = parser.parse_args(argv)
    if args.what == "storage":
        bench_storage(args.seconds)
    else:
        bench_http(args.seconds, args.fsync)
    return 0


if __name__ == "__main__":
    sys.exit(main())
