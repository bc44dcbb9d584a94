"""Writes what a run found: ``results.json`` and ``timeline.png``.

``results.json`` is for machines and for the person rerunning a seed: the
counts per class (queue, fan-out and stream) with example ids, availability,
convergence, the schedule and how to rerun. ``timeline.png`` is for eyes: the
latency of every operation over time (ok / fail / info in distinct colours,
a marker per operation type) with each fault window shaded and labelled by
nemesis type, above the successful operations per second, so
an unavailability lines up with the fault that caused it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from chaos.checker import CheckResult, Op, Window, operations

__all__ = ["FAULT_COLORS", "render_timeline", "results_document", "write_results"]

log = logging.getLogger(__name__)

OUTCOME_COLORS = {"ok": "#2ca02c", "fail": "#d62728", "info": "#ff7f0e"}
FAULT_COLORS = {
    "kill": "#d62728",
    "pause": "#9467bd",
    "partition": "#1f77b4",
    "restart-all": "#8c564b",
    "membership": "#17becf",
}
OP_MARKERS = {
    "publish": "o",
    "receive": "s",
    "ack": "^",
    "xpublish": "*",
    "append": "D",
    "read": "v",
    "commit": "P",
    "group_offset": "x",
}


def results_document(result: CheckResult, run: dict[str, Any]) -> dict[str, Any]:
    """The results.json content: ``run`` (seed, nemeses, ...) plus what the checker found."""
    return {
        **run,
        "valid": result.valid,
        "problems": result.problems,
        "counts": result.counts(),
        "examples": result.examples(),
        "operations": result.operations,
        "messages": result.messages,
        "violation_classes": result.violation_classes(),
        "fanout": {q: {"messages": v.messages} for q, v in sorted(result.fanout.items())},
        "stream": result.stream.stats,
        "availability": result.availability.to_dict(),
        "convergence": {k: v for k, v in (result.final or {}).items() if k not in ("type", "t")},
    }


def write_results(path: Path, document: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def render_timeline(
    path: Path,
    records: Sequence[dict[str, Any]],
    result: CheckResult,
    title: str,
) -> None:
    """Latency scatter and ok-ops/s with fault windows shaded; written even for an empty run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    end_t = max((float(r.get("t", 0.0)) for r in records), default=1.0)
    ops = operations(records, end_t)
    fig, (ax, ax_rate) = plt.subplots(
        2, 1, figsize=(15, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    try:
        _scatter(ax, ops)
        _rate(ax_rate, result)
        for axis in (ax, ax_rate):
            _shade(axis, result.windows, label=axis is ax)
        _phases(ax, records)
        handles = [
            ax.scatter([], [], c=color, s=12, label=f"{name}")
            for name, color in OUTCOME_COLORS.items()
        ]
        present = {o.op for o in ops}
        handles += [
            ax.scatter([], [], c="grey", marker=marker, s=12, label=op)
            for op, marker in OP_MARKERS.items()
            if op in present or op in ("publish", "receive", "ack")
        ]
        kinds = sorted({w.fault for w in result.windows})
        handles += [
            Patch(facecolor=FAULT_COLORS.get(k, "#7f7f7f"), alpha=0.25, label=f"fault: {k}")
            for k in kinds
        ]
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.005, 1.0),
            fontsize=8,
            frameon=False,
        )
        ax.set_ylabel("latency (s, log)")
        ax.set_yscale("log")
        if not ops:
            ax.set_ylim(1e-3, 10.0)  # a log axis needs a range even with nothing on it
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax_rate.set_ylabel("ok ops/s")
        ax_rate.set_xlabel("seconds since start (harness monotonic clock)")
        ax_rate.grid(True, alpha=0.3)
        ax.set_xlim(0, max(end_t, 1.0))
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)


def _scatter(ax: Any, ops: Sequence[Op]) -> None:
    for outcome, color in OUTCOME_COLORS.items():
        for op, marker in OP_MARKERS.items():
            sel = [o for o in ops if o.outcome == outcome and o.op == op]
            if not sel:
                continue
            ax.scatter(
                [o.invoke_t for o in sel],
                [max(o.complete_t - o.invoke_t, 1e-4) for o in sel],
                c=color,
                marker=marker,
                s=6 if outcome == "ok" else 14,
                alpha=0.5 if outcome == "ok" else 0.9,
                linewidths=0,
            )


def _rate(ax: Any, result: CheckResult) -> None:
    avail = result.availability
    xs = [avail.start + i + 0.5 for i in range(len(avail.per_second))]
    ax.bar(xs, avail.per_second, width=1.0, color="#2ca02c", alpha=0.7)


def _shade(ax: Any, windows: Sequence[Window], label: bool) -> None:
    for w in windows:
        color = FAULT_COLORS.get(w.fault, "#7f7f7f")
        ax.axvspan(w.start, w.stop, color=color, alpha=0.18, linewidth=0)
        if label:
            text = f"{w.fault} {','.join(w.targets)}" if w.fault != "partition" else w.detail
            ax.text(
                w.start,
                0.98,
                f"#{w.number} {text}",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color=color,
            )


def _phases(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    for r in records:
        if r.get("type") == "phase" and r.get("name") in ("workload_end", "drain_end"):
            ax.axvline(float(r["t"]), color="black", linestyle=":", linewidth=1)
            ax.text(
                float(r["t"]),
                0.02,
                str(r["name"]),
                transform=ax.get_xaxis_transform(),
                rotation=90,
                fontsize=7,
                va="bottom",
                ha="right",
            )
