"""Prometheus metrics: broker state read at scrape time, and HTTP request latency.

Queue depths and Raft facts are read when /metrics is scraped (no bookkeeping
on the hot path); the request histogram is observed by a middleware. Names
follow Prometheus conventions: `raftmq_` prefix, base units, `_total` for
counters.
"""

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cluster.proposer import ENTRY_SIZE_BOUNDS
from node.config import NodeConfig
from node.ports import RaftPort
from node.waiters import QueueWaiters

_ROLES = ("follower", "candidate", "leader")
_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)

_QUEUE_GAUGES = {
    "ready": "Messages ready for delivery.",
    "in_flight": "Messages leased to a consumer and not yet acked.",
    "delayed": "Messages waiting for their delivery delay.",
}
_QUEUE_COUNTERS = {
    "published": ("published_total", "Messages enqueued (duplicates not counted)."),
    "delivered": ("delivered_total", "Deliveries, redeliveries included."),
    "acked": ("acked_total", "Messages acknowledged."),
    "dead_lettered": ("dead_lettered_total", "Messages dead-lettered or dropped."),
}


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class ReapedKeys:
    """Keys of deleted queues and streams this node's applies have removed (an apply
    listener, on the tick thread): how fast `raftmq_deleted_messages_pending` clears."""

    def __init__(self) -> None:
        self.total = 0

    def on_applied(self, commands: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        for command, result in zip(commands, results, strict=False):
            if command.get("op") == "reap":
                self.total += int(result.get("removed", 0))


class BrokerCollector(Collector):
    """Reads queue and Raft state of this node at each scrape."""

    def __init__(
        self, raft: RaftPort, config: NodeConfig, waiters: QueueWaiters, reaped: ReapedKeys
    ) -> None:
        self._raft = raft
        self._config = config
        self._waiters = waiters
        self._reaped = reaped

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._raft_metrics()
        data_dir = self._config.raft.data_dir
        lmdb = GaugeMetricFamily("raftmq_lmdb_file_bytes", "Size of the LMDB data file.")
        lmdb.add_metric([], _file_size(os.path.join(data_dir, "state", "data.mdb")))
        yield lmdb
        buried = GaugeMetricFamily(
            "raftmq_deleted_messages_pending",
            "1 while the keys of deleted or purged queues or deleted streams are still "
            "being removed here.",
        )
        buried.add_metric([], int(self._raft.read(lambda store: store.has_buried())))
        yield buried
        reaped = CounterMetricFamily(
            "raftmq_reaped_keys",
            "Keys of deleted or purged queues and deleted streams removed here.",
        )
        reaped.add_metric([], self._reaped.total)
        yield reaped
        journal = GaugeMetricFamily("raftmq_raft_journal_bytes", "Size of the Raft journal file.")
        journal.add_metric([], _file_size(os.path.join(data_dir, "raft", "journal.bin")))
        yield journal

    def _queues(self) -> Iterator[Metric]:
        now = int(time.time() * 1000)
        queues = self._raft.read(lambda store: store.list_queues(now))
        gauges = {
            key: GaugeMetricFamily(f"raftmq_queue_{key}_messages", text, labels=["queue"])
            for key, text in _QUEUE_GAUGES.items()
        }
        counters = {
            key: CounterMetricFamily(f"raftmq_queue_{key}_messages", text, labels=["queue"])
            for key, (_, text) in _QUEUE_COUNTERS.items()
        }
        for queue in queues:
            for key, family in gauges.items():
                family.add_metric([queue["name"]], queue[key])
            for key, counter in counters.items():
                counter.add_metric([queue["name"]], queue[_QUEUE_COUNTERS[key][0]])
        yield from gauges.values()
        yield from counters.values()

    def _raft_metrics(self) -> Iterator[Metric]:
        status = self._raft.status()
        counters = self._raft.counters()
        role = GaugeMetricFamily(
            "raftmq_raft_role", "1 for this node's current role.", labels=["role"]
        )
        for name in _ROLES:
            role.add_metric([name], 1 if status["role"] == name else 0)
        yield role
        for name, key, text in (
            ("raftmq_raft_term", "term", "Current Raft term."),
            ("raftmq_raft_commit_index", "commit_index", "Highest committed log index known."),
            ("raftmq_raft_applied_index", "last_applied", "Highest log index applied here."),
        ):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], status[key])
            yield gauge
        lag = GaugeMetricFamily(
            "raftmq_raft_follower_lag_entries",
            "On the leader: committed entries a follower has not acknowledged yet.",
            labels=["follower"],
        )
        if status["role"] == "leader":
            for follower, match in sorted(status["match_index"].items()):
                lag.add_metric([follower], max(0, status["commit_index"] - match))
        yield lag
        # Lag stays 0 for a follower that died while no writes came: this shows it.
        up = GaugeMetricFamily(
            "raftmq_raft_member_up",
            "1 while this node has a Raft connection to the member (itself included).",
            labels=["member"],
        )
        for member in status["members"]:
            up.add_metric([member["raft"]], int(member["state"] != "unreachable"))
        yield up
        quorum = GaugeMetricFamily(
            "raftmq_raft_has_quorum", "1 while this node reaches a majority of the members."
        )
        quorum.add_metric([], int(status["has_quorum"]))
        yield quorum
        leader_changes = CounterMetricFamily(
            "raftmq_raft_leader_changes", "Leader changes seen by this node."
        )
        leader_changes.add_metric([], counters["leader_changes"])
        yield leader_changes
        riding = CounterMetricFamily(
            "raftmq_leases_with_publish",
            "Receives of waiting consumers proposed in the same Raft entry as the publish "
            "that fed them (one round instead of two).",
        )
        riding.add_metric([], counters["companions_proposed"])
        yield riding
        long_polls = GaugeMetricFamily(
            "raftmq_long_polls_waiting",
            "Receives, stream reads and push consumers waiting for messages on this node.",
        )
        long_polls.add_metric([], self._waiters.waiting)
        yield long_polls
        put_off = GaugeMetricFamily(
            "raftmq_snapshot_put_off",
            "1 while a snapshot is put off until the Raft journal reaches the log ratio "
            "(--snapshot-log-ratio) of the store's size.",
        )
        put_off.add_metric([], int(counters["snapshot_put_off"]))
        yield put_off
        for name, help_text, value in (
            (
                "raftmq_storage_full",
                "1 while this node refuses publishes and appends (507 storage_full): its "
                "store is over 90% of --store-max-bytes, or its disk is short of "
                "--min-free-disk-bytes plus the store's live size.",
                int(counters["storage_full"] is not None),
            ),
            (
                "raftmq_store_live_bytes",
                "Bytes of the store's pages that hold data (free pages not counted).",
                counters["store_live_bytes"],
            ),
            (
                "raftmq_store_capacity_bytes",
                "The store's capacity (--store-max-bytes, the LMDB map size).",
                counters["store_capacity_bytes"],
            ),
            (
                "raftmq_disk_free_bytes",
                "Free bytes of the data directory's filesystem.",
                counters["disk_free_bytes"],
            ),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value)
            yield gauge
        waiting = GaugeMetricFamily(
            "raftmq_proposals_waiting", "Commands proposed and not answered yet."
        )
        waiting.add_metric([], counters["waiting_proposals"])
        yield waiting
        sizes: list[int] = counters["entry_size_counts"]
        if sizes:
            cumulative, buckets = 0, []
            for bound, count in zip((*ENTRY_SIZE_BOUNDS, float("inf")), sizes, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            histogram = HistogramMetricFamily(
                "raftmq_proposer_entry_commands",
                "Commands per Raft entry (group commit batch size).",
                buckets=buckets,
                sum_value=counters["commands_proposed"],
            )
            yield histogram


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    """The registry of one node, its HTTP middleware and the /metrics handler."""

    def __init__(self, raft: RaftPort, config: NodeConfig, waiters: QueueWaiters) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.reaped = ReapedKeys()
        raft.add_apply_listener(self.reaped.on_applied)
        self.registry.register(BrokerCollector(raft, config, waiters, self.reaped))
        self.requests = Histogram(
            "raftmq_http_request_duration_seconds",
            "HTTP request latency by route and status.",
            labelnames=["method", "route", "status"],
            registry=self.registry,
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
            ),
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            self.requests.labels(request.method, route, str(status)).observe(
                time.perf_counter() - started
            )

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )
