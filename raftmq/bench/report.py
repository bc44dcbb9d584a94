"""Results: median/min/max over repeats, markdown tables, peer comparison, a PNG chart.

The results file has bench.py's shape (``peer``, ``params``, ``facts``, ``reps``: one
dict per repeat keyed ``w1``, ``w1s``, ``w2``, ``w3``, ``w4`` ...) plus a ``summary``,
so the peers' ``summarize.py`` reads it and ``--compare`` reads the peers' files.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raftmq.bench.workloads import Params

__all__ = [
    "ROWS",
    "Row",
    "aggregate",
    "chart",
    "compare_table",
    "extras_tables",
    "peer_label",
    "summary",
    "table",
]

Result = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One figure of the table: where it comes from and which way is better."""

    label: str
    workload: str
    key: str | Callable[[Result], float | None]
    fmt: str
    unit: str
    higher_is_better: bool
    target: float | None = None

    def value(self, rep: Result) -> float | None:
        r = rep.get(self.workload)
        if not isinstance(r, dict):
            return None
        try:
            v = self.key(r) if callable(self.key) else r.get(self.key)
        except (KeyError, TypeError, ZeroDivisionError):
            return None
        return None if v is None else float(v)

    def meets(self, v: float) -> bool | None:
        if self.target is None:
            return None
        return v >= self.target if self.higher_is_better else v <= self.target

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        op = ">=" if self.higher_is_better else "<="
        return f"{op} {self.fmt.format(self.target)}"


def _per_1k(field: str) -> Callable[[Result], float | None]:
    def f(r: Result) -> float | None:
        confirmed = r.get("confirmed") or 0
        return 1000 * float(r[field]) / confirmed if confirmed else None

    return f


# The rows of the peers' summarize.py (same labels), with the issue's targets.
ROWS: list[Row] = [
    Row("W1 publish-confirmed, 256 in flight", "w1", "msgs_per_s", "{:,.0f}", "msg/s", True, 40000),
    Row("W1 broker CPU per 1k msgs", "w1", _per_1k("broker_cpu_s"), "{:.3f}", "CPU-s", False),
    Row("W1 client CPU per 1k msgs", "w1", _per_1k("client_cpu_s"), "{:.3f}", "CPU-s", False),
    Row("W1s sync publish (1 in flight)", "w1s", "msgs_per_s", "{:,.0f}", "msg/s", True),
    Row("W1s confirm latency p50", "w1s", "lat_p50_ms", "{:.2f}", "ms", False, 1.0),
    Row("W1s confirm latency p99", "w1s", "lat_p99_ms", "{:.2f}", "ms", False, 3.0),
    Row("W2 consume+ack, prefetch 256", "w2", "msgs_per_s", "{:,.0f}", "msg/s", True, 50000),
    Row("W3 e2e latency p50 @1000 msg/s", "w3", "p50_ms", "{:.2f}", "ms", False, 2.0),
    Row("W3 e2e latency p99 @1000 msg/s", "w3", "p99_ms", "{:.2f}", "ms", False, 10.0),
    Row(
        "W4 first confirm after leader kill",
        "w4",
        "first_confirm_after_kill_s",
        "{:.3f}",
        "s",
        False,
    ),
    Row("W4 longest confirm gap (whole run)", "w4", "max_gap_s", "{:.3f}", "s", False, 0.5),
    Row("W4 confirmed msgs lost", "w4", "lost_confirmed", "{:.0f}", "msgs", False, 0),
    Row("W4 duplicates (retried publishes)", "w4", "duplicates", "{:.0f}", "msgs", False),
]


# The parameters the rows' labels and targets name (bench.py's, Params' defaults).
LABELLED_PARAMS = ("inflight", "prefetch", "rate", "size")


def parameter_note(results: Result) -> str | None:
    """A warning when the run used other values than the labels and targets name."""
    used = results.get("params", {})
    harness = Params().as_dict()
    changed = [
        f"{key} {used[key]:g} (bench.py: {harness[key]:g})"
        for key in LABELLED_PARAMS
        if key in used and used[key] != harness[key]
    ]
    if not changed:
        return None
    return (
        f"note: run with {', '.join(changed)}; the labels and targets name bench.py's "
        "parameters, so these figures are not the ones the targets are about."
    )


@dataclass(frozen=True)
class Agg:
    median: float
    low: float
    high: float
    n: int

    def text(self, fmt: str) -> str:
        if self.n == 1:
            return fmt.format(self.median)
        return (
            f"{fmt.format(self.median)} ({fmt.format(self.low)}–{fmt.format(self.high)}), "  # noqa: RUF001
            f"n={self.n}"
        )


def aggregate(values: Sequence[float | None]) -> Agg | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Agg(statistics.median(vals), min(vals), max(vals), len(vals))


def row_agg(results: Result, row: Row) -> Agg | None:
    return aggregate([row.value(rep) for rep in results.get("reps", [])])


def summary(results: Result) -> dict[str, Any]:
    """Median/min/max/n of every row (and the extras) over the repeats."""
    out: dict[str, Any] = {}
    for row in ROWS:
        a = row_agg(results, row)
        if a is not None:
            out[row.label] = {
                "median": a.median,
                "min": a.low,
                "max": a.high,
                "n": a.n,
                "unit": row.unit,
                "target": row.target,
                "meets_target": row.meets(a.median),
            }
    return out


_PEER_NAMES = {
    "rabbit": "RabbitMQ",
    "rabbitmq": "RabbitMQ",
    "nats": "NATS",
    "raftmq": "raftmq",
}


def peer_label(results: Result) -> str:
    peer = str(results.get("peer", "?"))
    name = _PEER_NAMES.get(peer, peer)
    facts = results.get("facts") or {}
    version = {"rabbit": facts.get("rabbitmq-server"), "nats": facts.get("nats-server")}.get(peer)
    if version:
        name += " " + ".".join(str(version).split("-")[0].split(".")[:2])
    return name


def table(results: Result) -> str:
    """Our figures, as summarize.py prints them, with the targets."""
    lines = [
        "| workload | figure: median (min–max), n=reps | unit | target | met |",  # noqa: RUF001
        "|---|---|---|---|---|",
    ]
    for row in ROWS:
        a = row_agg(results, row)
        if a is None:
            continue
        met = row.meets(a.median)
        mark = "" if met is None else ("yes" if met else "**no**")
        lines.append(
            f"| {row.label} | {a.text(row.fmt)} | {row.unit} | {row.target_text} | {mark} |"
        )
    return "\n".join(lines)


def _ratio(ours: Agg | None, theirs: Agg | None, fmt: str) -> str:
    """raftmq ÷ peer; none when the peer's figure shows as zero (e.g. 0 lost)."""
    if ours is None or theirs is None or float(fmt.format(theirs.median).replace(",", "")) == 0:
        return "–"  # noqa: RUF001
    return f"{ours.median / theirs.median:.2f}"


def compare_table(results: Result, peers: Sequence[Result]) -> str:
    """Medians side by side; ratio = raftmq ÷ peer (see the arrow for which way is better)."""
    head = ["workload", "unit", peer_label(results)]
    for peer in peers:
        name = peer_label(peer)
        head += [name, f"raftmq ÷ {name.split()[0]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        ours = row_agg(results, row)
        theirs = [row_agg(p, row) for p in peers]
        if ours is None and all(t is None for t in theirs):
            continue
        arrow = "↑" if row.higher_is_better else "↓"
        cells = [row.label, f"{row.unit} {arrow}", _median_text(ours, row.fmt)]
        for t in theirs:
            cells += [_median_text(t, row.fmt), _ratio(ours, t, row.fmt)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median_text(a: Agg | None, fmt: str) -> str:
    return "n/a" if a is None else fmt.format(a.median)


def _points(results: Result, workload: str, key: str) -> dict[int, list[Result]]:
    """Extra workloads' points grouped by ``key`` (size or queue count) over repeats."""
    out: dict[int, list[Result]] = {}
    for rep in results.get("reps", []):
        for point in (rep.get(workload) or {}).get("points", []):
            out.setdefault(int(point[key]), []).append(point)
    return out


def _med(points: list[Result], key: str) -> float | None:
    a = aggregate([p.get(key) for p in points])
    return None if a is None else a.median


def _fmt(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


def extras_tables(results: Result) -> str:
    """Tables of the opt-in workloads that ran (medians over repeats)."""
    parts: list[str] = []
    by_size = _points(results, "sizes", "size")
    if by_size:
        lines = [
            "| message size | msgs | msg/s | MiB/s | confirm p50 ms | confirm p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for size, pts in sorted(by_size.items()):
            lines.append(
                f"| {size:,} B | {_fmt(_med(pts, 'n'), '{:,.0f}')} "
                f"| {_fmt(_med(pts, 'msgs_per_s'), '{:,.0f}')} "
                f"| {_fmt(_med(pts, 'mib_per_s'), '{:.1f}')} "
                f"| {_fmt(_med(pts, 'lat_p50_ms'), '{:.1f}')} "
                f"| {_fmt(_med(pts, 'lat_p99_ms'), '{:.1f}')} |"
            )
        parts.append("\n".join(lines))
    by_count = _points(results, "queues", "queues")
    if by_count:
        lines = [
            "| queues | msgs | msg/s | confirm p50 ms | confirm p99 ms |",
            "|---|---|---|---|---|",
        ]
        for count, pts in sorted(by_count.items()):
            lines.append(
                f"| {count:,} | {_fmt(_med(pts, 'n'), '{:,.0f}')} "
                f"| {_fmt(_med(pts, 'msgs_per_s'), '{:,.0f}')} "
                f"| {_fmt(_med(pts, 'lat_p50_ms'), '{:.1f}')} "
                f"| {_fmt(_med(pts, 'lat_p99_ms'), '{:.1f}')} |"
            )
        parts.append("\n".join(lines))
    backlogs = [rep["backlog"] for rep in results.get("reps", []) if "backlog" in rep]
    if backlogs:
        lines = [
            "| backlog msgs | msg/s overall | first 10 % | last 10 % | max node RSS | "
            "max total RSS (3 nodes) | elections | delete |",
            "|---|---|---|---|---|---|---|---|",
        ]
        mib = 1 / 1024
        node = _med(backlogs, "rss_max_node_kib")
        total = _med(backlogs, "rss_max_total_kib")
        lines.append(
            f"| {_fmt(_med(backlogs, 'n'), '{:,.0f}')} "
            f"| {_fmt(_med(backlogs, 'msgs_per_s'), '{:,.0f}')} "
            f"| {_fmt(_med(backlogs, 'rate_first_10pct'), '{:,.0f}')} "
            f"| {_fmt(_med(backlogs, 'rate_last_10pct'), '{:,.0f}')} "
            f"| {_fmt(None if node is None else node * mib, '{:,.0f} MiB')} "
            f"| {_fmt(None if total is None else total * mib, '{:,.0f} MiB')} "
            f"| {_fmt(_med(backlogs, 'elections'), '{:.0f}')} "
            f"| {_fmt(_med(backlogs, 'delete_seconds'), '{:.2f} s')} |"
        )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------- chart

_CHART_GROUPS: list[tuple[str, list[tuple[str, str]], bool]] = [
    (
        "throughput (msg/s, higher is better)",
        [
            ("W1 publish-confirmed, 256 in flight", "W1 publish"),
            ("W1s sync publish (1 in flight)", "W1s sync publish"),
            ("W2 consume+ack, prefetch 256", "W2 consume+ack"),
        ],
        False,
    ),
    (
        "latency (ms, log scale, lower is better)",
        [
            ("W1s confirm latency p50", "W1s p50"),
            ("W1s confirm latency p99", "W1s p99"),
            ("W3 e2e latency p50 @1000 msg/s", "W3 p50"),
            ("W3 e2e latency p99 @1000 msg/s", "W3 p99"),
        ],
        True,
    ),
    (
        "failover (s, lower is better)",
        [("W4 longest confirm gap (whole run)", "W4 longest confirm gap")],
        False,
    ),
]


def chart(results: Result, peers: Sequence[Result], path: str) -> None:
    """A PNG of the main figures (medians), raftmq beside each peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [results, *peers]
    names = [peer_label(s) for s in systems]
    rows = {row.label: row for row in ROWS}
    fig, axes = plt.subplots(
        1, len(_CHART_GROUPS), figsize=(15, 5.2), gridspec_kw={"width_ratios": [3, 4, 1.4]}
    )
    width = 0.8 / len(systems)
    for ax, (title, items, log_scale) in zip(axes, _CHART_GROUPS, strict=True):
        for k, (system, name) in enumerate(zip(systems, names, strict=True)):
            xs, ys = [], []
            for i, (label, _short) in enumerate(items):
                a = row_agg(system, rows[label])
                if a is not None and a.median > 0:
                    xs.append(i + (k - (len(systems) - 1) / 2) * width)
                    ys.append(a.median)
            bars = ax.bar(xs, ys, width, label=name)
            labels = [f"{y:,.0f}" if y >= 100 else f"{y:.3g}" for y in ys]
            ax.bar_label(bars, labels=labels, fontsize=7, rotation=90)
        for i, (label, _short) in enumerate(items):
            target = rows[label].target
            if target:
                ax.hlines(target, i - 0.45, i + 0.45, colors="black", linestyles="dashed")
        ax.set_xticks(range(len(items)), [short for _label, short in items], fontsize=8)
        ax.set_title(title, fontsize=10)
        if log_scale:
            ax.set_yscale("log")
        ax.margins(y=0.25)
    axes[0].legend(fontsize=8)
    facts = results.get("facts") or {}
    fig.suptitle(
        f"3 nodes on one {facts.get('nproc', '?')}-core machine, replicated and confirmed "
        "(dashed: raftmq target); medians of "
        f"{len(results.get('reps', []))} runs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
