"""The workloads of the peers' bench.py (W1, W1s, W2, W3, W4) against raftmq,
plus the opt-in ``backlog``, ``sizes`` and ``queues``.

W1..W4 are line-for-line ports of bench.py's coroutines (same message sizes,
counts, in-flight windows, pacing, kill/restart times, timeouts, retry rules and
result keys), so a results file is comparable with the peers'. Where raftmq needs
something the peers do not (a message id for a W4 retry, a leader index), the
docstring says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

from raftmq.bench.adapter import HDR, RaftMQ, body, pct
from raftmq.bench.cluster import proc_cpu, proc_memory_kib, sys_busy
from raftmq.bench.progress import Progress
from raftmq.errors import QueueNotFound, RaftMQError

__all__ = [
    "Params",
    "backlog",
    "measured",
    "queues",
    "sizes",
    "w1",
    "w2",
    "w3",
    "w3_consumer",
    "w4",
]

log = logging.getLogger(__name__)

Result = dict[str, Any]


@dataclass
class Params:
    """bench.py's parameters (same names and defaults) plus the extra workloads'."""

    n: int = 50000
    n_sync: int = 5000
    size: int = 256
    inflight: int = 256
    prefetch: int = 256
    rate: float = 1000.0
    duration: float = 10.0
    kill_at: float = 5.0
    restart_at: float = 15.0
    run_for: float = 25.0
    pub_timeout: float = 1.0
    idle: float = 5.0
    # extras
    backlog: int = 1_000_000
    sizes: list[int] = field(default_factory=lambda: [64, 256, 1024, 4096, 16384, 65536])
    sizes_bytes: int = 64 << 20  # per size: as many msgs as fit (at most n_sizes)
    n_sizes: int = 20000
    queue_counts: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])
    n_queues: int = 20000
    # client
    linger_ms: float = 1.0
    receivers: int = 1
    loop: str = "asyncio"
    client_gc: str = "default"  # or "relaxed": see raftmq.bench.cli.relax_client_gc
    transport: str = "ws"  # or "http": one request per publish, long-polling consumers

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1e3


async def measured(coro: Awaitable[Result]) -> Result:
    """Runs a workload; attaches machine-wide CPU use and load average (as bench.py)."""
    b0, w0 = sys_busy(), time.monotonic()
    res = await coro
    res["machine_busy_cpu_s"] = sys_busy() - b0
    res["machine_wall_s"] = time.monotonic() - w0
    res["machine_busy_frac"] = res["machine_busy_cpu_s"] / (
        res["machine_wall_s"] * (os.cpu_count() or 1)
    )
    res["loadavg_1m_after"] = os.getloadavg()[0]
    if "broker_cpu_s" in res and "client_cpu_s" in res and res["broker_cpu_s"]:
        # CPU used by processes that are neither the nodes nor this client (neighbours)
        res["other_cpu_s"] = res["machine_busy_cpu_s"] - res["broker_cpu_s"] - res["client_cpu_s"]
    return res


# ------------------------------------------------------------------------- W1


async def w1(
    peer: RaftMQ,
    n: int,
    size: int,
    inflight: int,
    progress: Progress | None = None,
    *,
    queues: list[str] | None = None,
) -> Result:
    """Pipelined confirmed publish; msgs/s from first send to last confirm.

    ``queues`` (the ``queues`` workload) spreads the messages round-robin.
    """
    prog = progress or Progress(enabled=False)
    sem = asyncio.Semaphore(inflight)
    errors = 0
    lats: list[float] = []
    targets = queues or [peer.q]

    async def one(i: int) -> None:
        nonlocal errors
        t = time.perf_counter()
        try:
            await peer.publish(body(i, size), queue=targets[i % len(targets)])
            lats.append(time.perf_counter() - t)
        except Exception as e:
            errors += 1
            if errors <= 3:
                log.warning("publish failed: %r", e)
        finally:
            sem.release()
            prog.count += 1

    pids = peer.server_pids()
    c0, s0 = time.process_time(), proc_cpu(pids)
    r0 = peer.requests()
    tasks = []
    t0 = time.perf_counter()
    if inflight == 1:
        for i in range(n):
            t = time.perf_counter()
            try:
                await peer.publish(body(i, size))
                lats.append(time.perf_counter() - t)
            except Exception as e:
                errors += 1
                if errors <= 3:
                    log.warning("publish failed: %r", e)
            prog.count += 1
    else:
        for i in range(n):
            await sem.acquire()
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    dt = time.perf_counter() - t0
    ok = n - errors
    return {
        "n": n,
        "inflight": inflight,
        "size": size,
        "confirmed": ok,
        "errors": errors,
        "seconds": dt,
        "msgs_per_s": ok / dt,
        "lat_p50_ms": _ms(pct(lats, 50)),
        "lat_p99_ms": _ms(pct(lats, 99)),
        "lat_max_ms": _ms(max(lats)) if lats else None,
        "client_cpu_s": time.process_time() - c0,
        "broker_cpu_s": proc_cpu(pids) - s0,
        **_batching(r0, peer.requests(), "publish"),
    }


def _batching(before: dict[str, int], after: dict[str, int], kind: str) -> Result:
    """Requests the client sent and the mean messages (receipts) per request."""
    if not after:
        return {}
    requests = after[f"{kind}_requests"] - before.get(f"{kind}_requests", 0)
    items = after[f"{kind}_items"] - before.get(f"{kind}_items", 0)
    return {
        f"{kind}_requests": requests,
        f"{kind}_batch_mean": items / requests if requests else None,
    }


# ------------------------------------------------------------------------- W2


async def w2(peer: RaftMQ, n: int, prefetch: int, progress: Progress | None = None) -> Result:
    """Drain n messages with explicit per-message ack."""
    prog = progress or Progress(enabled=False)
    pids = peer.server_pids()
    c0, s0 = time.process_time(), proc_cpu(pids)
    r0 = peer.requests()
    n0, k0 = peer.received, peer.receives
    got = 0
    ts = time.perf_counter()
    t0: float | None = None
    gen = peer.consume(prefetch)
    async for _data, ack in gen:
        if t0 is None:  # subscription set-up excluded (as bench.py)
            t0 = time.perf_counter()
        await ack()
        got += 1
        prog.count += 1
        if got >= n:
            break
    await peer.flush()
    assert t0 is not None
    dt = time.perf_counter() - t0
    await gen.aclose()
    await asyncio.sleep(0.5)
    left = await peer.depth()
    return {
        "n": n,
        "prefetch": prefetch,
        "acked": got,
        "seconds": dt,
        "msgs_per_s": got / dt,
        "setup_to_first_msg_s": t0 - ts,
        "depth_after": left,
        "ack_errors": peer.ack_errors,
        "client_cpu_s": time.process_time() - c0,
        "broker_cpu_s": proc_cpu(pids) - s0,
        "receive_batch_mean": (peer.received - n0) / max(1, peer.receives - k0),
        **_batching(r0, peer.requests(), "ack"),
    }


# ------------------------------------------------------------------------- W3


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def w3_consumer(peer: RaftMQ, n: int, prefetch: int, idle: float) -> None:
    """Runs in its own process; writes ``ready``, then one JSON line with the latencies."""
    await peer.connect()
    lats: list[float] = []
    seen = 0
    _out("ready")
    gen = peer.consume(prefetch)
    last = time.monotonic()

    async def pump() -> None:
        nonlocal seen, last
        async for data, ack in gen:
            now = time.monotonic_ns()
            _seq, ts = HDR.unpack_from(data)
            lats.append((now - ts) / 1e6)
            await ack()
            seen += 1
            last = time.monotonic()
            if seen >= n:
                return

    task = asyncio.ensure_future(pump())
    while not task.done():
        await asyncio.sleep(0.2)
        if seen and time.monotonic() - last > idle:
            task.cancel()
            break
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await gen.aclose()
    await peer.flush()
    await peer.close()
    _out(
        json.dumps(
            {
                "received": seen,
                "p50_ms": pct(lats, 50),
                "p99_ms": pct(lats, 99),
                "max_ms": max(lats) if lats else None,
                "mean_ms": statistics.fmean(lats) if lats else None,
            }
        )
    )


async def w3(peer: RaftMQ, p: Params, progress: Progress | None = None) -> Result:
    """End-to-end latency: paced producer here, consumer in a separate process."""
    prog = progress or Progress(enabled=False)
    n = int(p.rate * p.duration)
    await peer.reset()
    cmd = [
        sys.executable,
        "-m",
        "raftmq.bench",
        "_w3consumer",
        "--url",
        ",".join(peer.urls),
        "--queue",
        peer.q,
        "--n",
        str(n),
        "--prefetch",
        str(p.prefetch),
        "--idle",
        str(p.idle),
        "--linger-ms",
        str(p.linger_ms),
        "--receivers",
        str(p.receivers),
        "--loop",
        p.loop,
        "--client-gc",
        p.client_gc,
        "--transport",
        p.transport,
    ]
    cons = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    try:
        assert cons.stdout is not None
        line = await asyncio.wait_for(cons.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"W3 consumer did not start: {line!r}")
        await asyncio.sleep(1.0)  # let the consumer's long poll settle
        sem = asyncio.Semaphore(p.inflight)
        errors = 0
        confirm_ms: list[float] = []

        async def one(i: int) -> None:
            nonlocal errors
            try:
                sent = time.monotonic_ns()
                await peer.publish(body(i, p.size))
                confirm_ms.append((time.monotonic_ns() - sent) / 1e6)
            except Exception as e:
                errors += 1
                if errors <= 3:
                    log.warning("publish failed: %r", e)
            finally:
                sem.release()
                prog.count += 1

        tasks = []
        t0 = time.monotonic()
        for i in range(n):
            target = t0 + i / p.rate
            d = target - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
            await sem.acquire()
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        send_dt = time.monotonic() - t0
        out, _ = await asyncio.wait_for(cons.communicate(), 120)
    finally:
        if cons.returncode is None:
            cons.kill()
            await cons.wait()
    res: Result = json.loads(out.decode().strip().splitlines()[-1])
    res.update({"sent": n, "errors": errors, "rate_target": p.rate, "rate_achieved": n / send_dt})
    # Where the end-to-end time goes: the publish's own confirm, the rest is delivery.
    res.update({"confirm_p50_ms": pct(confirm_ms, 50), "confirm_p99_ms": pct(confirm_ms, 99)})
    return res


# ------------------------------------------------------------------------- W4


async def w4(peer: RaftMQ, p: Params, progress: Progress | None = None) -> Result:
    """Failover: SIGKILL the leader under a synchronous producer, restart it later.

    As bench.py, with raftmq specifics: the producer connects to the Raft leader
    first (it leads every queue) and gives every message an id (``w4-<run>-<seq>``),
    so a retry of the same message after a timeout is deduplicated by the broker
    (as the NATS adapter's ``Nats-Msg-Id``). The client fails over by itself.
    """
    prog = progress or Progress(enabled=False)
    cluster = peer.cluster
    if cluster is None:
        raise RuntimeError("W4 needs a cluster started by the benchmark")
    await peer.connect()
    await peer.reset()
    await asyncio.sleep(1.0)
    leader = await peer.leader()
    await peer.close()
    order = [leader] + [i for i in peer.nodes if i != leader]
    await peer.connect(order)
    run = secrets.token_hex(4)
    confirms: list[tuple[int, float]] = []
    attempts = errors = 0
    events: dict[str, Any] = {}
    etypes: dict[str, int] = {}
    stop = asyncio.Event()
    t0 = time.monotonic()

    async def producer() -> None:
        nonlocal attempts, errors
        seq = 0
        while not stop.is_set():
            attempts += 1
            try:
                await asyncio.wait_for(
                    peer.publish(body(seq, p.size), msg_id=f"w4-{run}-{seq}"), p.pub_timeout
                )
                confirms.append((seq, time.monotonic() - t0))
                seq += 1
                prog.count += 1
            except Exception as e:
                errors += 1
                name = type(e).__name__
                if name not in etypes:
                    events["first_" + name] = (time.monotonic() - t0, repr(e)[:300])
                    events["last_" + name] = None
                etypes[name] = etypes.get(name, 0) + 1
                events["last_" + name] = time.monotonic() - t0
                events.setdefault("first_error", (time.monotonic() - t0, repr(e)[:200]))
                await asyncio.sleep(0.01)  # back off 10 ms, then retry the same message

    async def controller() -> None:
        await asyncio.sleep(p.kill_at)
        await asyncio.to_thread(cluster.kill, leader)
        events["killed"] = (time.monotonic() - t0, leader)
        prog.note = f"n{leader} killed"
        await asyncio.sleep(max(0.0, p.restart_at - (time.monotonic() - t0)))
        events["restart_begin"] = time.monotonic() - t0
        await asyncio.to_thread(cluster.restart, leader)
        events["restart_done"] = time.monotonic() - t0
        prog.note = f"n{leader} restarted"
        await asyncio.sleep(max(0.0, p.run_for - (time.monotonic() - t0)))
        stop.set()

    await asyncio.gather(producer(), controller())
    await peer.close()
    ts = [t for _, t in confirms]
    gaps = [(ts[i + 1] - ts[i], ts[i]) for i in range(len(ts) - 1)]
    gmax, gat = max(gaps) if gaps else (None, None)
    kill_t = events["killed"][0]
    after = [t for t in ts if t > kill_t]
    # let the restarted member catch up, then drain everything from a fresh client
    await asyncio.sleep(3)
    await peer.connect()
    new_leader = await peer.leader()
    depth = await peer.depth()
    got: dict[int, int] = {}
    gen = peer.consume(256)

    async def drain() -> None:
        async for data, ack in gen:
            s, _ = HDR.unpack_from(data)
            got[s] = got.get(s, 0) + 1
            await ack()

    task = asyncio.ensure_future(drain())
    last_n, idle = -1, 0.0
    while idle < 3:
        await asyncio.sleep(0.5)
        idle = idle + 0.5 if len(got) == last_n else 0.0
        last_n = len(got)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    await gen.aclose()
    await peer.flush()
    await peer.close()
    confirmed = {s for s, _ in confirms}
    lost = sorted(confirmed - set(got))
    dups = sum(c - 1 for c in got.values())
    return {
        "leader_killed": leader,
        "new_leader": new_leader,
        "confirmed": len(confirms),
        "attempts": attempts,
        "errors": errors,
        "error_types": etypes,
        "reconnects": 0,  # the client fails over internally; see error_types
        "channels_reopened": 0,
        "rmq_naive": False,
        "max_gap_s": gmax,
        "max_gap_starts_at_s": gat,
        "kill_at_s": kill_t,
        "first_confirm_after_kill_s": (after[0] - kill_t) if after else None,
        "events": events,
        "depth_before_drain": depth,
        "drained_unique": len(got),
        "lost_confirmed": len(lost),
        "lost_sample": lost[:10],
        "duplicates": dups,
        "pub_timeout_s": p.pub_timeout,
    }


# ------------------------------------------------------------------- extras


async def _delete_quietly(peer: RaftMQ, name: str) -> None:
    try:
        await peer.mq.delete_queue(name)
    except QueueNotFound:
        pass
    except RaftMQError as e:
        log.warning("could not delete queue %s: %s", name, e)


async def _bounded(coros: list[Coroutine[Any, Any, None]], limit: int) -> None:
    sem = asyncio.Semaphore(limit)

    async def run(c: Coroutine[Any, Any, None]) -> None:
        async with sem:
            await c

    await asyncio.gather(*(run(c) for c in coros))


class _RssSampler:
    """Polls VmRSS of the node processes; keeps each node's maximum, and the largest
    anonymous (heap) and file-backed (LMDB map, page cache) parts of it."""

    def __init__(self, pids: Callable[[], list[int]], period: float = 0.5) -> None:
        self._pids = pids
        self._period = period
        self.max_kib: dict[int, int] = {}
        self.max_anon_kib = 0
        self.max_file_kib = 0
        self.max_total_kib = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        total = 0
        for pid in self._pids():
            memory = proc_memory_kib(pid)
            rss = memory.get("VmRSS", 0)
            self.max_anon_kib = max(self.max_anon_kib, memory.get("RssAnon", 0))
            self.max_file_kib = max(self.max_file_kib, memory.get("RssFile", 0))
            total += rss
            self.max_kib[pid] = max(self.max_kib.get(pid, 0), rss)
        self.max_total_kib = max(self.max_total_kib, total)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._period)

    def __enter__(self) -> _RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sample()


async def backlog(peer: RaftMQ, p: Params, progress: Progress | None = None) -> Result:
    """Publish ``p.backlog`` messages (W1's size and window) into a queue nobody reads.

    Reports the rate over the first and the last 10 % of the confirms and the
    largest RSS of each node (sampled from /proc every 0.5 s; local cluster only).
    """
    prog = progress or Progress(enabled=False)
    n = p.backlog
    name = "bench_backlog"
    await peer.reset(name)
    marks = [max(1, n // 10), max(1, n - n // 10), n]
    stamps: dict[int, float] = {}
    sem = asyncio.Semaphore(p.inflight)
    errors = 0
    done = 0

    async def one(i: int) -> None:
        nonlocal errors, done
        try:
            await peer.publish(body(i, p.size), queue=name)
        except Exception as e:
            errors += 1
            if errors <= 3:
                log.warning("publish failed: %r", e)
        finally:
            sem.release()
            done += 1
            prog.count = done
            if done in marks:
                stamps[done] = time.perf_counter()

    pids = peer.server_pids()
    c0, s0 = time.process_time(), proc_cpu(pids)
    term0 = int((await peer.mq.cluster())["term"])
    sampler = _RssSampler(peer.server_pids)
    with sampler:
        t0 = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        for i in range(n):
            await sem.acquire()
            task = asyncio.ensure_future(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.wait(set(tasks))
        dt = time.perf_counter() - t0
    first, last_from, end = marks
    depth = int((await peer.mq.queue(name))["total"])
    res: Result = {
        "n": n,
        "size": p.size,
        "inflight": p.inflight,
        "confirmed": n - errors,
        "errors": errors,
        "seconds": dt,
        "msgs_per_s": (n - errors) / dt,
        "rate_first_10pct": first / (stamps[first] - t0),
        "rate_last_10pct": (end - last_from) / max(1e-9, stamps[end] - stamps[last_from]),
        "depth_after": depth,
        "rss_max_kib": {f"pid{pid}": kib for pid, kib in sampler.max_kib.items()} or None,
        "rss_max_node_kib": max(sampler.max_kib.values()) if sampler.max_kib else None,
        "rss_anon_max_node_kib": sampler.max_anon_kib or None,
        "rss_file_max_node_kib": sampler.max_file_kib or None,
        "rss_max_total_kib": sampler.max_total_kib or None,
        "client_cpu_s": time.process_time() - c0,
        "broker_cpu_s": proc_cpu(pids) - s0,
        # Each election raises the Raft term by one (won or not).
        "elections": int((await peer.mq.cluster())["term"]) - term0,
    }
    prog.note = "deleting the backlog"
    t = time.perf_counter()
    await _delete_quietly(peer, name)
    res["delete_seconds"] = time.perf_counter() - t
    return res


async def sizes(peer: RaftMQ, p: Params, progress: Progress | None = None) -> Result:
    """W1 (pipelined, confirmed) at each message size; a fresh queue per size."""
    prog = progress or Progress(enabled=False)
    points = []
    for size in p.sizes:
        n = max(100, min(p.n_sizes, p.sizes_bytes // size))
        await peer.reset()
        prog.note = f"{size} B x {n}"
        r = await w1(peer, n, size, p.inflight, prog)
        r["mib_per_s"] = r["msgs_per_s"] * size / (1 << 20)
        points.append(r)
        await _delete_quietly(peer, peer.q)
    return {"points": points}


async def queues(peer: RaftMQ, p: Params, progress: Progress | None = None) -> Result:
    """W1 spread round-robin over 1..1000 queues (each count: fresh queues)."""
    prog = progress or Progress(enabled=False)
    points = []
    for count in p.queue_counts:
        names = [f"bench_q{i}" for i in range(count)]
        prog.note = f"declaring {count} queues"
        await _bounded([peer.reset(q) for q in names], 64)
        prog.note = f"{count} queues"
        r = await w1(peer, p.n_queues, p.size, p.inflight, prog, queues=names)
        r["queues"] = count
        points.append(r)
        prog.note = f"deleting {count} queues"
        await _bounded([_delete_quietly(peer, q) for q in names], 64)
    return {"points": points}
