"""Client operations as the checkers see them: invocations paired with completions.

Shared by the queue and fan-out checks (``chaos.checker``) and the stream
checks (``chaos.stream_checker``); pure, like them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.history import COMPLETIONS

__all__ = ["Op", "id_key", "operations", "outcome_by_id"]


@dataclass(frozen=True)
class Op:
    """One client operation: its invocation and (if it was written) its completion."""

    op_id: int
    process: str
    op: str
    invoke_t: float
    complete_t: float
    outcome: str  # ok | fail | info ("info" too when the completion is missing)
    invoke: dict[str, Any]
    completion: dict[str, Any]


def operations(records: Sequence[dict[str, Any]], end_t: float) -> list[Op]:
    """Pairs invocations with completions; an unfinished op counts as ``info``."""
    invokes: dict[int, dict[str, Any]] = {}
    completions: dict[int, dict[str, Any]] = {}
    for record in records:
        kind = record.get("type")
        if kind == "invoke":
            invokes[int(record["op_id"])] = record
        elif kind in COMPLETIONS:
            completions[int(record["op_id"])] = record
    ops = []
    for op_id, inv in sorted(invokes.items()):
        comp = completions.get(op_id)
        ops.append(
            Op(
                op_id=op_id,
                process=str(inv["process"]),
                op=str(inv["op"]),
                invoke_t=float(inv["t"]),
                complete_t=float(comp["t"]) if comp is not None else max(end_t, float(inv["t"])),
                outcome=str(comp["type"]) if comp is not None else "info",
                invoke=inv,
                completion=comp or {},
            )
        )
    return ops


def id_key(msg_id: str) -> tuple[str, int, str]:
    """Sorts ``p3-10`` after ``p3-9``."""
    head, sep, tail = msg_id.rpartition("-")
    if sep and tail.isdigit():
        return (head, int(tail), "")
    return (msg_id, -1, msg_id)


def outcome_by_id(writes: Iterable[Op]) -> dict[str, str]:
    """Per id: ``ok`` if any write of it succeeded, else ``info`` if any is unknown, else fail."""
    rank = {"fail": 0, "info": 1, "ok": 2}
    status: dict[str, str] = {}
    for o in writes:
        for msg_id in o.invoke.get("ids") or []:
            key = str(msg_id)
            if rank[o.outcome] >= rank.get(status.get(key, "fail"), 0):
                status[key] = o.outcome
    return status
