"""Synthetic histories for checker tests: explicit times, one op at a time per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


@dataclass
class HistoryBuilder:
    """Appends records the way the harness writes them (invoke, then completion)."""

    visibility_timeout: float = 10.0
    records: list[dict[str, Any]] = field(default_factory=list)
    next_op: int = 0

    def __post_init__(self) -> None:
        self.records.append(
            {
                "type": "meta",
                "t": 0.0,
                "seed": 1,
                "nodes": 3,
                "visibility_timeout": self.visibility_timeout,
            }
        )
        self.records.append({"type": "phase", "name": "workload_start", "t": 0.0})

    def _op(
        self,
        process: str,
        op: str,
        start: float,
        end: float,
        outcome: str,
        invoke: dict[str, Any],
        done: dict[str, Any],
    ) -> int:
        op_id = self.next_op
        self.next_op += 1
        self.records.append(
            {"type": "invoke", "op_id": op_id, "process": process, "op": op, "t": start, **invoke}
        )
        self.records.append(
            {"type": outcome, "op_id": op_id, "process": process, "op": op, "t": end, **done}
        )
        return op_id

    def publish(
        self, process: str, ids: list[str], start: float, end: float, outcome: str = "ok"
    ) -> int:
        return self._op(process, "publish", start, end, outcome, {"ids": ids}, {})

    def receive(
        self,
        process: str,
        messages: list[tuple[str, int]],
        start: float,
        end: float,
        outcome: str = "ok",
    ) -> int:
        done = {"messages": [list(m) for m in messages]} if outcome == "ok" else {}
        invoke = {"max": 5, "wait": 1.0, "visibility_timeout": self.visibility_timeout}
        return self._op(process, "receive", start, end, outcome, invoke, done)

    def ack(
        self,
        process: str,
        pairs: list[tuple[str, int]],
        start: float,
        end: float,
        outcome: str = "ok",
        stale: list[tuple[str, int]] | None = None,
    ) -> int:
        done: dict[str, Any] = {}
        if outcome == "ok":
            done = {"acked": len(pairs) - len(stale or []), "stale": [list(s) for s in stale or []]}
        return self._op(
            process, "ack", start, end, outcome, {"pairs": [list(p) for p in pairs]}, done
        )

    def consume(self, process: str, messages: list[tuple[str, int]], start: float) -> None:
        """A receive of ``messages`` and its successful ack, 0.1 s each."""
        self.receive(process, messages, start, start + 0.1)
        self.ack(process, messages, start + 0.1, start + 0.2)

    def nemesis(
        self, window: int, fault: str, start: float, stop: float, targets: list[str]
    ) -> None:
        self.records.append(
            {
                "type": "nemesis",
                "phase": "start",
                "window": window,
                "fault": fault,
                "targets": targets,
                "detail": "",
                "t": start,
            }
        )
        self.records.append(
            {"type": "nemesis", "phase": "stop", "window": window, "fault": fault, "t": stop}
        )

    def finish(self, end: float, drained: bool = True, converged: bool = True) -> None:
        self.records.append({"type": "phase", "name": "workload_end", "t": end})
        self.records.append(
            {"type": "final", "t": end + 1, "drained": drained, "converged": converged}
        )

    def sorted_records(self) -> list[dict[str, Any]]:
        """File order is time order (the writer stamps as it appends)."""
        return sorted(self.records, key=lambda r: float(r["t"]))

    def write(self, path: Path) -> Path:
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in self.sorted_records()))
        return path
