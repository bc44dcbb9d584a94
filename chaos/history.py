"""The history of a chaos run: one JSON object per line in ``history.jsonl``.

The history is the only thing the checker sees, so it must say everything the
checker needs and nothing it has to guess: every client operation is an
``invoke`` record followed (later, possibly after other processes' records) by
exactly one completion record of type ``ok``, ``fail`` (proven not applied) or
``info`` (outcome unknown), paired by ``op_id``. Times are seconds on the
harness's monotonic clock since the run started, so node clock jumps cannot
reorder them; ``meta`` carries the wall-clock start for matching node logs.

Record types:

* ``meta``: first line; seed, node count, nemeses, queue, visibility timeout,
  workloads, stream, groups, stream dedup window, exchange, fan-out queues.
* ``invoke`` / ``ok`` / ``fail`` / ``info``: client operations (``publish``,
  ``receive``, ``ack``, ``xpublish``, ``append``, ``read``, ``commit``,
  ``group_offset``) with ``process``, ``node`` (the URL last reached),
  ``queue``, ``ids`` (publish, xpublish, append), ``messages`` ``[[id,
  deliveries], ...]`` (receive ok), ``pairs`` ``[[id, deliveries], ...]``
  (ack), ``stale`` (ack ok), ``routed`` (xpublish ok), ``offsets`` (append
  ok), ``records`` ``[[offset, id, timestamp], ...]`` and ``next_offset``
  (read ok), ``offset`` (commit, group_offset), ``error``.
* ``nemesis``: ``phase`` ``start``/``stop`` of fault window ``window``;
  ``removal`` and ``rejoin`` (membership windows: what the removal came to,
  whether the node is a member again); ``error`` (a fault not applied or healed).
* ``phase``: orchestration milestones (``workload_start``, ``workload_end``,
  ``drain_start``, ``drain_end``).
* ``node_exit``: a node process ended without the nemesis killing it.
* ``stream_final``: whether the final full read of the stream completed.
* ``final``: drain and convergence outcome, written once at the end.

Writers append and flush each line, so a run that dies still leaves a
readable prefix; the reader skips a torn last line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

__all__ = [
    "COMPLETIONS",
    "HistoryWriter",
    "Outcome",
    "read_history",
]

log = logging.getLogger(__name__)

Outcome = Literal["ok", "fail", "info"]
COMPLETIONS: frozenset[str] = frozenset({"ok", "fail", "info"})


class HistoryWriter:
    """Thread-safe JSONL appender with its own monotonic time origin.

    One writer serves every workload thread and the nemesis: a single lock
    keeps lines whole and gives op ids a total order that matches file order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("ab")
        self._lock = threading.Lock()
        self._next_op = 0
        self._t0 = time.monotonic()
        self.wall_start = time.time()

    def now(self) -> float:
        """Seconds since the history began (monotonic)."""
        return time.monotonic() - self._t0

    def write(self, record: dict[str, Any]) -> None:
        """Appends ``record`` (stamped with ``t`` when it has none) and flushes."""
        with self._lock:
            self._write_locked(record)

    def _write_locked(self, record: dict[str, Any]) -> None:
        if "t" not in record:
            record["t"] = round(self.now(), 6)
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()

    def invoke(self, process: str, op: str, **fields: Any) -> int:
        """Records the start of an operation; returns the op id its completion must carry."""
        with self._lock:
            op_id = self._next_op
            self._next_op += 1
            self._write_locked(
                {"type": "invoke", "op_id": op_id, "process": process, "op": op, **fields}
            )
        return op_id

    def complete(self, op_id: int, process: str, op: str, outcome: Outcome, **fields: Any) -> None:
        """Records how operation ``op_id`` ended."""
        self.write({"type": outcome, "op_id": op_id, "process": process, "op": op, **fields})

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every record of ``path`` in file order; a torn final line is dropped with a warning."""
    return list(_iter_records(path.read_bytes()))


def _iter_records(data: bytes) -> Iterator[dict[str, Any]]:
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            if number >= len(lines) - 1:
                log.warning("history: ignoring a torn last line (%d bytes)", len(line))
                continue
            raise ValueError(f"history line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise ValueError(f"history line {number} is not a JSON object")
        yield record
