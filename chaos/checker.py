"""Judges a chaos history against the queue, fan-out and stream promises.

Pure: ``check(records)`` looks only at the records it is given (``check_file``
reads them first) and returns a :class:`CheckResult`. Nothing here talks to a
node, so the rules can be tested on synthetic histories and a saved
``history.jsonl`` can be re-checked after the cluster is gone.

The rules (also in ``chaos/DESIGN.md``):

* **lost**: a publish completed ``ok`` but its id was never seen by an ``ok``
  receive. Only final once the drain emptied the queue (``final.drained``).
* **unexpected**: an ``ok`` receive returned an id no publish ever carried.
* **failed_publish_delivered**: an id whose every publish completed ``fail``
  (proven not applied) was delivered anyway.
* **duplicates**: an id seen by more than one ``ok`` receive. Each later
  delivery is checked against the one before it (ordered by delivery count):
  it is allowed only when its count is higher, it did not complete before
  the earlier receive began, the earlier lease may have expired (the later
  receive completed at least one visibility timeout after the earlier receive
  was invoked) and the earlier delivery was not acknowledged (its ack failed,
  had an unknown outcome, was never sent, or was answered ``stale``). Anything
  else is a ``duplicate_violation``.
* **fifo**: among first deliveries (``deliveries == 1``). For messages A and B
  of one producer where A's publish completed ``ok`` before B's publish was
  invoked (or A precedes B inside one publish batch), A was committed ahead of
  B, so A must be leased no later than B. A violation is observed when the
  receive that first delivered A was *invoked after* the receive that first
  delivered B had *completed* (the two leases are then ordered in real time),
  or when both came in one receive with B listed before A. Receives whose
  windows overlap say nothing, nor does a message whose first delivery was
  never observed (its receive timed out): the rule then cannot misfire under
  concurrent consumers.
* **unknown publishes** (``info``) may be present or absent; both are counted.

Fan-out: every queue bound to the exchange is judged by the same rules, with
the exchange publishes (``xpublish``) as its publishes (one Raft entry puts a
message in every bound queue, so each must get every acknowledged message
once, FIFO per publisher for first deliveries); the classes are prefixed
``fanout_`` and their entries name the queue. **fanout_misrouted**: an ``ok``
exchange publish whose answer did not route every message to every bound
queue. Streams: ``chaos.stream_checker``.

Availability is measured on successful operations of the workload phase: the
longest stretch without one (overall, for writes alone: publishes, exchange
publishes and appends, and the longest stretch that overlaps each fault
window) plus throughput per second.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.history import read_history
from chaos.ops import Op, id_key, operations, outcome_by_id
from chaos.stream_checker import StreamVerdict, judge_stream

__all__ = [
    "Availability",
    "CheckResult",
    "Delivery",
    "Op",
    "QueueVerdict",
    "Window",
    "check",
    "check_file",
    "judge_queue",
    "operations",
]

# Seconds of slack when comparing the harness clock with lease deadlines that
# the leader computed from its wall clock (same machine; covers rounding).
CLOCK_TOLERANCE_S = 0.25
EXAMPLES = 10
DRAIN_PREFIX = "drain"
# Operations that add messages or records: "without an ok publish" means none of them.
WRITE_OPS = frozenset({"publish", "xpublish", "append"})


@dataclass(frozen=True)
class Delivery:
    """A message as one ``ok`` receive returned it."""

    id: str
    deliveries: int
    op: Op
    position: int


@dataclass(frozen=True)
class Window:
    """A fault window of the nemesis, as recorded."""

    number: int
    fault: str
    start: float
    stop: float
    targets: list[str]
    detail: str


@dataclass
class Availability:
    """Throughput and gaps without a successful operation (seconds, harness clock)."""

    start: float = 0.0
    end: float = 0.0
    ok_ops: int = 0
    ok_ops_per_s: float = 0.0
    ok_publishes: int = 0
    ok_publishes_per_s: float = 0.0
    per_second: list[int] = field(default_factory=list)
    longest_gap_s: float = 0.0
    longest_gap: tuple[float, float] = (0.0, 0.0)
    longest_publish_gap_s: float = 0.0
    longest_publish_gap: tuple[float, float] = (0.0, 0.0)
    windows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload_start": round(self.start, 3),
            "workload_end": round(self.end, 3),
            "ok_ops": self.ok_ops,
            "ok_ops_per_s": round(self.ok_ops_per_s, 2),
            "ok_publishes": self.ok_publishes,
            "ok_publishes_per_s": round(self.ok_publishes_per_s, 2),
            "ok_ops_per_second": self.per_second,
            "longest_gap_s": round(self.longest_gap_s, 3),
            "longest_gap": [round(t, 3) for t in self.longest_gap],
            "longest_publish_gap_s": round(self.longest_publish_gap_s, 3),
            "longest_publish_gap": [round(t, 3) for t in self.longest_publish_gap],
            "windows": self.windows,
        }


@dataclass
class QueueVerdict:
    """The queue rules applied to one queue and the publishes that feed it."""

    queue: str = ""
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    failed_publish_delivered: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    duplicate_violations: list[dict[str, Any]] = field(default_factory=list)
    fifo_violations: list[dict[str, Any]] = field(default_factory=list)
    unknown_present: list[str] = field(default_factory=list)
    unknown_absent: list[str] = field(default_factory=list)
    messages: dict[str, int] = field(default_factory=dict)


# Fan-out classes (summed over the bound queues) and where each comes from.
FANOUT_CLASSES = (
    ("fanout_lost", "lost"),
    ("fanout_unexpected", "unexpected"),
    ("fanout_failed_publish_delivered", "failed_publish_delivered"),
    ("fanout_duplicates", "duplicates"),
    ("fanout_duplicate_violations", "duplicate_violations"),
    ("fanout_fifo_violations", "fifo_violations"),
    ("fanout_unknown_publishes_present", "unknown_present"),
    ("fanout_unknown_publishes_absent", "unknown_absent"),
)
FANOUT_VIOLATIONS = frozenset(
    {
        "fanout_lost",
        "fanout_unexpected",
        "fanout_failed_publish_delivered",
        "fanout_duplicate_violations",
        "fanout_fifo_violations",
        "fanout_misrouted",
    }
)


@dataclass
class CheckResult:
    """What the checker found; ``valid`` is False when any violation class is non-empty.

    The top-level queue fields are the point-to-point queue's; ``fanout`` has
    the same verdict per queue bound to the fan-out exchange, ``stream`` the
    stream rules' (``chaos.stream_checker``).
    """

    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    failed_publish_delivered: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    duplicate_violations: list[dict[str, Any]] = field(default_factory=list)
    fifo_violations: list[dict[str, Any]] = field(default_factory=list)
    unknown_present: list[str] = field(default_factory=list)
    unknown_absent: list[str] = field(default_factory=list)
    node_exits: list[dict[str, Any]] = field(default_factory=list)
    fanout: dict[str, QueueVerdict] = field(default_factory=dict)
    fanout_misrouted: list[dict[str, Any]] = field(default_factory=list)
    stream: StreamVerdict = field(default_factory=StreamVerdict)
    operations: dict[str, dict[str, int]] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    final: dict[str, Any] | None = None
    windows: list[Window] = field(default_factory=list)
    availability: Availability = field(default_factory=Availability)
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def _classes(self) -> dict[str, list[Any]]:
        classes: dict[str, list[Any]] = {
            "lost": self.lost,
            "unexpected": self.unexpected,
            "failed_publish_delivered": self.failed_publish_delivered,
            "duplicates": self.duplicates,
            "duplicate_violations": self.duplicate_violations,
            "fifo_violations": self.fifo_violations,
            "unknown_publishes_present": self.unknown_present,
            "unknown_publishes_absent": self.unknown_absent,
            "node_exits": self.node_exits,
        }
        for name, attr in FANOUT_CLASSES:
            classes[name] = [
                _tagged(queue, item)
                for queue, verdict in sorted(self.fanout.items())
                for item in getattr(verdict, attr)
            ]
        classes["fanout_misrouted"] = self.fanout_misrouted
        classes.update(self.stream.violations())
        classes.update(self.stream.allowed())
        return classes

    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self._classes().items()}

    def examples(self, limit: int = EXAMPLES) -> dict[str, list[Any]]:
        return {name: items[:limit] for name, items in self._classes().items()}

    def violation_classes(self) -> dict[str, int]:
        """The violation classes (not the allowed ones) with their counts."""
        names = [
            "lost",
            "unexpected",
            "failed_publish_delivered",
            "duplicate_violations",
            "fifo_violations",
            "node_exits",
            *sorted(FANOUT_VIOLATIONS),
            *self.stream.violations(),
        ]
        counts = self.counts()
        return {name: counts[name] for name in names}


def _tagged(queue: str, item: Any) -> Any:
    """A fan-out finding named with its queue: ``queue:id`` or the dict with ``queue``."""
    return {"queue": queue, **item} if isinstance(item, dict) else f"{queue}:{item}"


# ------------------------------------------------------------------- parsing


def _windows(records: Sequence[dict[str, Any]], end_t: float) -> list[Window]:
    starts: dict[int, dict[str, Any]] = {}
    stops: dict[int, float] = {}
    for record in records:
        if record.get("type") != "nemesis":
            continue
        number = int(record["window"])
        if record.get("phase") == "start":
            starts[number] = record
        elif record.get("phase") == "stop":
            stops[number] = float(record["t"])
    return [
        Window(
            number=n,
            fault=str(rec.get("fault")),
            start=float(rec["t"]),
            stop=stops.get(n, end_t),
            targets=[str(t) for t in rec.get("targets") or []],
            detail=str(rec.get("detail") or ""),
        )
        for n, rec in sorted(starts.items())
    ]


def _pairs(value: Any) -> list[tuple[str, int]]:
    return [(str(item[0]), int(item[1])) for item in value or []]


def _queue_of(o: Op, main: str) -> str:
    """The queue a publish, receive or ack went to (histories before fan-out name none)."""
    return str(o.invoke.get("queue") or main)


# ------------------------------------------------------------------- checking


def check_file(path: Path) -> CheckResult:
    """Reads ``path`` (a history.jsonl) and checks it."""
    return check(read_history(path))


def check(records: Sequence[dict[str, Any]]) -> CheckResult:
    """Checks a history given as its records, in file order."""
    end_t = max((float(r.get("t", 0.0)) for r in records), default=0.0)
    meta = next((r for r in records if r.get("type") == "meta"), {})
    default_vt = float(meta.get("visibility_timeout", 30.0))
    main = str(meta.get("queue") or "chaos")
    ops = operations(records, end_t)
    result = CheckResult()
    result.windows = _windows(records, end_t)
    result.final = next((r for r in reversed(records) if r.get("type") == "final"), None)
    result.node_exits = [
        {k: v for k, v in r.items() if k != "type"} for r in records if r.get("type") == "node_exit"
    ]
    result.operations = _operation_counts(ops)

    publishes = [o for o in ops if o.op == "publish" and _queue_of(o, main) == main]
    queue = judge_queue(main, publishes, ops, default_vt, main)
    result.lost, result.unexpected = queue.lost, queue.unexpected
    result.failed_publish_delivered = queue.failed_publish_delivered
    result.duplicates, result.duplicate_violations = queue.duplicates, queue.duplicate_violations
    result.fifo_violations = queue.fifo_violations
    result.unknown_present, result.unknown_absent = queue.unknown_present, queue.unknown_absent
    result.messages = queue.messages

    xpublishes = [o for o in ops if o.op == "xpublish"]
    bound = list(meta.get("fanout_queues") or [])
    for o in xpublishes:
        bound += [str(q) for q in o.invoke.get("queues") or [] if q not in bound]
    for q in bound:
        feeding = [o for o in xpublishes if q in (o.invoke.get("queues") or [])]
        result.fanout[q] = judge_queue(q, feeding, ops, default_vt, main)
    result.fanout_misrouted = _check_routing(xpublishes)
    result.stream = judge_stream(ops, records)
    result.availability = _availability(records, ops, result.windows, end_t)
    result.problems = _problems(result, records)
    return result


def judge_queue(
    queue: str, publishes: Sequence[Op], ops: Sequence[Op], default_vt: float, main: str
) -> QueueVerdict:
    """The queue rules for ``queue``: ``publishes`` put ids in it, receives and acks name it."""
    verdict = QueueVerdict(queue=queue)
    mine = [o for o in ops if o.op in ("receive", "ack") and _queue_of(o, main) == queue]
    deliveries = _deliveries(mine)
    by_id: dict[str, list[Delivery]] = defaultdict(list)
    for d in deliveries:
        by_id[d.id].append(d)

    status = outcome_by_id(publishes)
    for msg_id, st in sorted(status.items(), key=lambda kv: id_key(kv[0])):
        seen = msg_id in by_id
        if st == "ok" and not seen:
            verdict.lost.append(msg_id)
        elif st == "info":
            (verdict.unknown_present if seen else verdict.unknown_absent).append(msg_id)
        elif st == "fail" and seen:
            verdict.failed_publish_delivered.append(msg_id)
    verdict.unexpected = sorted((i for i in by_id if i not in status), key=id_key)

    acks = _ack_status(mine)
    _check_duplicates(by_id, acks, default_vt, verdict)
    _check_fifo(publishes, deliveries, verdict)
    verdict.messages = {
        "published_ids": len(status),
        "published_ok": sum(1 for s in status.values() if s == "ok"),
        "published_unknown": sum(1 for s in status.values() if s == "info"),
        "published_failed": sum(1 for s in status.values() if s == "fail"),
        "deliveries_observed": len(deliveries),
        "distinct_delivered": len(by_id),
        "redeliveries_observed": sum(1 for d in deliveries if d.deliveries > 1),
    }
    return verdict


def _check_routing(xpublishes: Iterable[Op]) -> list[dict[str, Any]]:
    """An ``ok`` fan-out publish must have routed every message to every bound queue."""
    out = []
    for o in xpublishes:
        if o.outcome != "ok":
            continue
        want = len(o.invoke.get("ids") or [])
        routed = {str(k): int(v) for k, v in (o.completion.get("routed") or {}).items()}
        short = {q: routed.get(q, 0) for q in o.invoke.get("queues") or [] if routed.get(q) != want}
        unroutable = int(o.completion.get("unroutable") or 0)
        if short or unroutable:
            out.append(
                {
                    "ids": list(o.invoke.get("ids") or []),
                    "process": o.process,
                    "routed": routed,
                    "expected_per_queue": want,
                    "unroutable": unroutable,
                    "at": round(o.complete_t, 3),
                }
            )
    return out


def _operation_counts(ops: Iterable[Op]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for o in ops:
        per = counts.setdefault(o.op, {"ok": 0, "fail": 0, "info": 0})
        per[o.outcome] = per.get(o.outcome, 0) + 1
    return counts


def _deliveries(ops: Iterable[Op]) -> list[Delivery]:
    out = []
    for o in ops:
        if o.op != "receive" or o.outcome != "ok":
            continue
        for position, (msg_id, count) in enumerate(_pairs(o.completion.get("messages"))):
            out.append(Delivery(msg_id, count, o, position))
    return out


def _ack_status(ops: Iterable[Op]) -> dict[tuple[str, int], str]:
    """Per delivery (id, count): acked | stale | unknown | failed (best outcome wins)."""
    rank = {"failed": 0, "unknown": 1, "stale": 2, "acked": 3}
    out: dict[tuple[str, int], str] = {}
    for o in ops:
        if o.op != "ack":
            continue
        stale = set(_pairs(o.completion.get("stale"))) if o.outcome == "ok" else set()
        for pair in _pairs(o.invoke.get("pairs")):
            if o.outcome == "ok":
                st = "stale" if pair in stale else "acked"
            else:
                st = "unknown" if o.outcome == "info" else "failed"
            if rank[st] >= rank.get(out.get(pair, "failed"), 0):
                out[pair] = st
    return out


def _check_duplicates(
    by_id: dict[str, list[Delivery]],
    acks: dict[tuple[str, int], str],
    default_vt: float,
    result: QueueVerdict,
) -> None:
    for msg_id in sorted(by_id, key=id_key):
        seen = sorted(by_id[msg_id], key=lambda d: (d.deliveries, d.op.invoke_t))
        if len(seen) < 2:
            continue
        reasons = []
        for prev, nxt in itertools.pairwise(seen):
            ack = acks.get((msg_id, prev.deliveries), "never_acked")
            vt = float(prev.op.invoke.get("visibility_timeout", default_vt))
            violation = None
            if nxt.deliveries == prev.deliveries:
                violation = f"delivery count {prev.deliveries} observed twice"
            elif nxt.op.complete_t < prev.op.invoke_t:
                violation = (
                    f"delivery {nxt.deliveries} completed at {nxt.op.complete_t:.3f} before the "
                    f"receive of delivery {prev.deliveries} began at {prev.op.invoke_t:.3f}"
                )
            elif ack == "acked":
                violation = (
                    f"delivered again (count {nxt.deliveries}) after delivery "
                    f"{prev.deliveries} was acknowledged"
                )
            elif nxt.op.complete_t < prev.op.invoke_t + vt - CLOCK_TOLERANCE_S:
                violation = (
                    f"delivery {nxt.deliveries} completed "
                    f"{nxt.op.complete_t - prev.op.invoke_t:.3f} s after delivery "
                    f"{prev.deliveries} was requested, before its {vt:g} s lease could expire"
                )
            entry = {
                "id": msg_id,
                "earlier": [prev.deliveries, prev.op.process, round(prev.op.invoke_t, 3)],
                "later": [nxt.deliveries, nxt.op.process, round(nxt.op.complete_t, 3)],
                "earlier_ack": ack,
            }
            if violation is not None:
                result.duplicate_violations.append({**entry, "reason": violation})
            reasons.append(ack)
        result.duplicates.append(
            {
                "id": msg_id,
                "deliveries": [d.deliveries for d in seen],
                "explained_by": sorted(set(reasons)),
            }
        )


@dataclass(frozen=True)
class _Seen:
    """The observed first delivery of a message, as a FIFO comparison needs it."""

    id: str
    invoke_t: float
    complete_t: float
    op_id: int
    position: int


def _check_fifo(
    publishes: Sequence[Op], deliveries: Sequence[Delivery], result: QueueVerdict
) -> None:
    first: dict[str, _Seen] = {}
    for d in deliveries:
        if d.deliveries == 1 and d.id not in first:
            first[d.id] = _Seen(d.id, d.op.invoke_t, d.op.complete_t, d.op.op_id, d.position)
    by_producer: dict[str, list[Op]] = defaultdict(list)
    for o in publishes:
        by_producer[o.process].append(o)
    # Precedence inside a producer: (rank of op among its ok ops, position), used for
    # pairs that arrive in one receive.
    order: dict[str, tuple[str, int, int, bool]] = {}
    for producer, plist in sorted(by_producer.items()):
        plist.sort(key=lambda o: (o.invoke_t, o.op_id))
        latest: _Seen | None = None  # the latest-invoked first delivery among earlier ok ops
        for seq, o in enumerate(plist):
            ids = [str(i) for i in o.invoke.get("ids") or []]
            within: _Seen | None = None
            for position, msg_id in enumerate(ids):
                order.setdefault(msg_id, (producer, seq, position, o.outcome == "ok"))
                seen = first.get(msg_id)
                if seen is None:
                    continue
                for earlier in (latest, within):
                    if earlier is not None and earlier.invoke_t > seen.complete_t:
                        result.fifo_violations.append(
                            {
                                "producer": producer,
                                "earlier": earlier.id,
                                "later": msg_id,
                                "rule": "earlier message first-delivered by a receive invoked "
                                "after the later one's receive completed",
                                "earlier_receive": [
                                    round(earlier.invoke_t, 3),
                                    round(earlier.complete_t, 3),
                                ],
                                "later_receive": [
                                    round(seen.invoke_t, 3),
                                    round(seen.complete_t, 3),
                                ],
                            }
                        )
                        break
                if within is None or seen.invoke_t > within.invoke_t:
                    within = seen
            if (
                o.outcome == "ok"
                and within is not None
                and (latest is None or within.invoke_t > latest.invoke_t)
            ):
                latest = within
    _check_fifo_within_receive(first, order, result)


def _check_fifo_within_receive(
    first: dict[str, _Seen],
    order: dict[str, tuple[str, int, int, bool]],
    result: QueueVerdict,
) -> None:
    by_receive: dict[int, list[_Seen]] = defaultdict(list)
    for seen in first.values():
        by_receive[seen.op_id].append(seen)
    for op_id in sorted(by_receive):
        listed = sorted(by_receive[op_id], key=lambda s: s.position)
        for i, later in enumerate(listed):
            for earlier in listed[i + 1 :]:
                if _precedes(order.get(earlier.id), order.get(later.id)):
                    result.fifo_violations.append(
                        {
                            "producer": order[earlier.id][0],
                            "earlier": earlier.id,
                            "later": later.id,
                            "rule": "one receive listed the later message before the earlier one",
                            "receive_op": op_id,
                        }
                    )


def _precedes(a: tuple[str, int, int, bool] | None, b: tuple[str, int, int, bool] | None) -> bool:
    """A was committed before B: same producer and A's publish ok before B's, or same batch."""
    if a is None or b is None or a[0] != b[0]:
        return False
    if a[1] == b[1]:
        return a[2] < b[2]
    return a[3] and a[1] < b[1]


# --------------------------------------------------------------- availability


def _gaps(times: Sequence[float], start: float, end: float) -> list[tuple[float, float]]:
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return [(a, b) for a, b in itertools.pairwise(points) if b > a]


def _longest(gaps: Sequence[tuple[float, float]]) -> tuple[float, tuple[float, float]]:
    if not gaps:
        return 0.0, (0.0, 0.0)
    a, b = max(gaps, key=lambda g: g[1] - g[0])
    return b - a, (a, b)


def _phase(records: Sequence[dict[str, Any]], name: str) -> float | None:
    for r in records:
        if r.get("type") == "phase" and r.get("name") == name:
            return float(r["t"])
    return None


def _availability(
    records: Sequence[dict[str, Any]], ops: Sequence[Op], windows: Sequence[Window], end_t: float
) -> Availability:
    workload = [o for o in ops if not o.process.startswith(DRAIN_PREFIX)]
    start = _phase(records, "workload_start")
    end = _phase(records, "workload_end")
    if start is None:
        start = min((o.invoke_t for o in workload), default=0.0)
    if end is None:
        end = max((o.complete_t for o in workload), default=end_t)
    ok = [o.complete_t for o in workload if o.outcome == "ok" and start <= o.complete_t <= end]
    ok_pub = [o.complete_t for o in workload if o.outcome == "ok" and o.op in WRITE_OPS]
    span = max(end - start, 1e-9)
    avail = Availability(start=start, end=end)
    avail.ok_ops = len(ok)
    avail.ok_ops_per_s = len(ok) / span
    avail.ok_publishes = sum(1 for t in ok_pub if start <= t <= end)
    avail.ok_publishes_per_s = avail.ok_publishes / span
    buckets = [0] * max(1, math.ceil(span))
    for t in ok:
        buckets[min(len(buckets) - 1, int(t - start))] += 1
    avail.per_second = buckets
    gaps = _gaps(ok, start, end)
    avail.longest_gap_s, avail.longest_gap = _longest(gaps)
    avail.longest_publish_gap_s, avail.longest_publish_gap = _longest(_gaps(ok_pub, start, end))
    for w in windows:
        overlapping = [g for g in gaps if g[1] > w.start and g[0] < w.stop]
        length, (a, b) = _longest(overlapping)
        after = [t for t in ok if t >= w.stop]
        avail.windows.append(
            {
                "window": w.number,
                "fault": w.fault,
                "detail": w.detail,
                "targets": w.targets,
                "start": round(w.start, 3),
                "stop": round(w.stop, 3),
                "longest_gap_s": round(length, 3),
                "longest_gap": [round(a, 3), round(b, 3)],
                "first_ok_after_heal_s": round(min(after) - w.stop, 3) if after else None,
            }
        )
    return avail


def _problems(result: CheckResult, records: Sequence[dict[str, Any]]) -> list[str]:
    problems = [f"{name}: {n}" for name, n in result.violation_classes().items() if n]
    errors = [r for r in records if r.get("type") == "nemesis" and r.get("phase") == "error"]
    if errors:
        problems.append(f"nemesis errors: {len(errors)} (a planned fault could not be applied)")
    final = result.final
    if final is None:
        problems.append("the history has no final record: the run did not finish")
    else:
        if not final.get("drained"):
            problems.append("the queue was not drained (lost counts are not final)")
        stream = result.stream
        if stream.exercised and not stream.final_complete:
            problems.append(
                "the stream's final read did not complete (stream lost counts are not final)"
            )
        if not final.get("converged"):
            problems.append("the replicas did not converge to one applied index and digest")
    return problems
