"""Synthetic histories for checker tests: explicit times, one op at a time per process.

Records have the shapes the harness writes (``chaos.workload`` for queues,
``chaos.pubsub_workload`` for streams and fan-out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from chaos.stream_checker import FINAL_READER

FAN_QUEUES = ("chaos-fan-a", "chaos-fan-b")
STREAM = "chaos-stream"


@dataclass
class HistoryBuilder:
    """Appends records the way the harness writes them (invoke, then completion)."""

    visibility_timeout: float = 10.0
    fanout_queues: tuple[str, ...] = ()
    dedup_window_s: float = 300.0
    records: list[dict[str, Any]] = field(default_factory=list)
    next_op: int = 0

    def __post_init__(self) -> None:
        meta: dict[str, Any] = {
            "type": "meta",
            "t": 0.0,
            "seed": 1,
            "nodes": 3,
            "visibility_timeout": self.visibility_timeout,
            "stream_dedup_window_s": self.dedup_window_s,
        }
        if self.fanout_queues:
            meta["fanout_queues"] = list(self.fanout_queues)
        self.records.append(meta)
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
        self,
        process: str,
        ids: list[str],
        start: float,
        end: float,
        outcome: str = "ok",
        queue: str | None = None,
    ) -> int:
        invoke: dict[str, Any] = {"ids": ids} if queue is None else {"queue": queue, "ids": ids}
        return self._op(process, "publish", start, end, outcome, invoke, {})

    def receive(
        self,
        process: str,
        messages: list[tuple[str, int]],
        start: float,
        end: float,
        outcome: str = "ok",
        queue: str | None = None,
    ) -> int:
        done = {"messages": [list(m) for m in messages]} if outcome == "ok" else {}
        invoke: dict[str, Any] = {
            "max": 5,
            "wait": 1.0,
            "visibility_timeout": self.visibility_timeout,
        }
        if queue is not None:
            invoke["queue"] = queue
        return self._op(process, "receive", start, end, outcome, invoke, done)

    def ack(
        self,
        process: str,
        pairs: list[tuple[str, int]],
        start: float,
        end: float,
        outcome: str = "ok",
        stale: list[tuple[str, int]] | None = None,
        queue: str | None = None,
    ) -> int:
        done: dict[str, Any] = {}
        if outcome == "ok":
            done = {"acked": len(pairs) - len(stale or []), "stale": [list(s) for s in stale or []]}
        invoke: dict[str, Any] = {"pairs": [list(p) for p in pairs]}
        if queue is not None:
            invoke["queue"] = queue
        return self._op(process, "ack", start, end, outcome, invoke, done)

    def consume(
        self,
        process: str,
        messages: list[tuple[str, int]],
        start: float,
        queue: str | None = None,
    ) -> None:
        """A receive of ``messages`` and its successful ack, 0.1 s each."""
        self.receive(process, messages, start, start + 0.1, queue=queue)
        self.ack(process, messages, start + 0.1, start + 0.2, queue=queue)

    # ------------------------------------------------------------- fan-out

    def xpublish(
        self,
        process: str,
        ids: list[str],
        start: float,
        end: float,
        outcome: str = "ok",
        routed: dict[str, int] | None = None,
    ) -> int:
        """A publish to the fan-out exchange bound to ``fanout_queues``."""
        invoke = {"exchange": "chaos-fan", "queues": list(self.fanout_queues), "ids": ids}
        done: dict[str, Any] = {}
        if outcome == "ok":
            every = {q: len(ids) for q in self.fanout_queues}
            done = {"routed": every if routed is None else routed, "unroutable": 0}
        return self._op(process, "xpublish", start, end, outcome, invoke, done)

    # ------------------------------------------------------------- streams

    def append(
        self,
        process: str,
        ids: list[str],
        start: float,
        end: float,
        offsets: list[int] | None = None,
        outcome: str = "ok",
        resent: int = 0,
    ) -> int:
        invoke = {"stream": STREAM, "ids": ids, "resent": resent}
        done = {"offsets": offsets} if outcome == "ok" else {}
        return self._op(process, "append", start, end, outcome, invoke, done)

    def read(
        self,
        process: str,
        records: Sequence[tuple[int, str | None, int]],
        start: float,
        end: float,
        offset: int | None = 0,
        group: str | None = None,
        limit: int = 50,
        next_offset: int | None = None,
    ) -> int:
        """An ``ok`` read of ``records`` (offset, id, timestamp), from an offset or a group."""
        where: dict[str, Any] = {"group": group} if group is not None else {"offset": offset}
        invoke = {"stream": STREAM, **where, "max": limit, "wait": 1.0}
        if next_offset is None:
            next_offset = records[-1][0] + 1 if records else (offset or 0)
        done = {
            "records": [list(r) for r in records],
            "next_offset": next_offset,
            "first_offset": 0,
        }
        return self._op(process, "read", start, end, "ok", invoke, done)

    def commit(
        self, process: str, group: str, offset: int, start: float, end: float, outcome: str = "ok"
    ) -> int:
        invoke = {"stream": STREAM, "group": group, "offset": offset}
        done = {"offset": offset} if outcome == "ok" else {}
        return self._op(process, "commit", start, end, outcome, invoke, done)

    def group_offset(self, process: str, group: str, value: int, start: float, end: float) -> int:
        invoke = {"stream": STREAM, "group": group}
        return self._op(process, "group_offset", start, end, "ok", invoke, {"offset": value})

    def final_read(
        self, records: Sequence[tuple[int, str | None, int]], start: float, complete: bool = True
    ) -> None:
        """The drain-stream read of the whole stream (one page, then the empty one at the end)."""
        self.read(FINAL_READER, records, start, start + 0.1, offset=0, limit=1000)
        end = records[-1][0] + 1 if records else 0
        if complete:
            self.read(FINAL_READER, [], start + 0.1, start + 0.2, offset=end, limit=1000)
        self.records.append(
            {
                "type": "stream_final",
                "t": start + 0.3,
                "stream": STREAM,
                "complete": complete,
                "next_offset": end,
            }
        )

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
