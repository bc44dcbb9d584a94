"""Judges the stream part of a chaos history: the log, its offsets and the consumer groups.

Pure, as ``chaos.checker`` (which calls :func:`judge_stream`). The reference
is the *final read*: the ``ok`` reads of process ``drain-stream`` after the
drain, which together read the whole stream from offset 0 (the stream has no
retention, so nothing is trimmed). Observations are ``[offset, id,
timestamp]`` triples (``timestamp`` is the append's, fixed when the record was
appended, so it tells two appends of one id apart) from every ``ok`` read, and
``(id, offset)`` pairs from every ``ok`` append.

The rules (also in ``chaos/DESIGN.md``):

* **lost**: an id of an ``ok`` append is not in the final read.
* **unexpected**: a record in any read whose id no append carried (or has no id).
* **failed_append_present**: an id whose every append was ``fail`` (proven not
  applied) is in the stream.
* **duplicates**: an id at two offsets of the final read. The stream promises
  that an id seen within the dedup window (``meta.stream_dedup_window_s``)
  answers its original offset and is not appended again; the node applies it
  with the append timestamps, so two copies less than a window apart by their
  own timestamps are a ``duplicate_violation``; further apart, an allowed
  duplicate (the window had passed).
* **order**: in every read the offsets strictly increase, by exactly one (dense
  offsets), starting at the requested offset (reads from an offset; the
  stream holds every offset from 0); ``next_offset`` is one past the last.
  The final read is dense from 0.
* **rewritten offsets**: every record seen at offset ``o`` during the run, and
  every ``ok`` append's answer "id X is at ``o``", must match the final read
  at ``o`` (same id and timestamp): a replay reads the same history.
* **stale reads**: a read returned fewer records than it asked for, so it
  claims the stream ended at its ``next_offset``; an append acknowledged
  (completed ``ok``) before the read was invoked at an offset at or past that
  end was not seen. The README promises reads see every acknowledged append.
  (The 4 MiB cap of one answer never cuts these reads short: the workload's
  bodies are a few dozen bytes.)
* **group offsets**: a group's committed offset as observed (the start of a
  ``group=`` read, or ``GET .../groups/{g}``) must not be below an offset
  whose commit completed ``ok`` before the observation was invoked. A lower
  value is allowed only when a commit of exactly that value had an unknown
  outcome (it may have applied late), or was itself invoked after the higher
  one completed; allowed ones are counted as ``group_regressions``. A value
  other than 0 that no ``ok``/unknown commit of the group carried is a
  violation too.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.ops import Op, id_key, outcome_by_id

__all__ = ["FINAL_READER", "StreamVerdict", "judge_stream"]

FINAL_READER = "drain-stream"
DEFAULT_DEDUP_WINDOW_S = 300.0

Observation = tuple[int, str | None, int | None]  # offset, id, timestamp


@dataclass
class StreamVerdict:
    """What the stream rules found; every list but the allowed ones is a violation class."""

    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    failed_append_present: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    duplicate_violations: list[dict[str, Any]] = field(default_factory=list)
    order_violations: list[dict[str, Any]] = field(default_factory=list)
    rewritten_offsets: list[dict[str, Any]] = field(default_factory=list)
    stale_reads: list[dict[str, Any]] = field(default_factory=list)
    group_regressions: list[dict[str, Any]] = field(default_factory=list)
    group_violations: list[dict[str, Any]] = field(default_factory=list)
    bad_bodies: list[dict[str, Any]] = field(default_factory=list)
    unknown_present: list[str] = field(default_factory=list)
    unknown_absent: list[str] = field(default_factory=list)
    exercised: bool = False
    final_complete: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    def violations(self) -> dict[str, list[Any]]:
        """The violation classes by name (``stream_`` prefixed as in ``counts``)."""
        return {
            "stream_lost": self.lost,
            "stream_unexpected": self.unexpected,
            "stream_failed_append_present": self.failed_append_present,
            "stream_duplicate_violations": self.duplicate_violations,
            "stream_order_violations": self.order_violations,
            "stream_rewritten_offsets": self.rewritten_offsets,
            "stream_stale_reads": self.stale_reads,
            "stream_bad_bodies": self.bad_bodies,
            "group_offset_violations": self.group_violations,
        }

    def allowed(self) -> dict[str, list[Any]]:
        return {
            "stream_duplicates": self.duplicates,
            "group_offset_regressions": self.group_regressions,
            "stream_unknown_appends_present": self.unknown_present,
            "stream_unknown_appends_absent": self.unknown_absent,
        }


def _observations(o: Op) -> list[Observation]:
    out: list[Observation] = []
    for item in o.completion.get("records") or []:
        ts = item[2] if len(item) > 2 else None
        out.append(
            (
                int(item[0]),
                None if item[1] is None else str(item[1]),
                None if ts is None else int(ts),
            )
        )
    return out


def judge_stream(ops: Sequence[Op], records: Sequence[dict[str, Any]]) -> StreamVerdict:
    """Applies the stream rules to ``ops`` (every operation of the history)."""
    verdict = StreamVerdict()
    meta = next((r for r in records if r.get("type") == "meta"), {})
    appends = [o for o in ops if o.op == "append"]
    reads = [o for o in ops if o.op == "read" and o.outcome == "ok"]
    commits = [o for o in ops if o.op == "commit"]
    group_reads = [o for o in ops if o.op == "group_offset" and o.outcome == "ok"]
    final_record = next((r for r in reversed(records) if r.get("type") == "stream_final"), None)
    verdict.exercised = bool(appends or reads or final_record is not None)
    if not verdict.exercised:
        return verdict
    verdict.final_complete = bool(final_record and final_record.get("complete"))
    window_ms = 1000.0 * float(meta.get("stream_dedup_window_s", DEFAULT_DEDUP_WINDOW_S))

    final_reads = sorted((o for o in reads if o.process == FINAL_READER), key=lambda o: o.op_id)
    final: dict[int, Observation] = {}
    for o in final_reads:
        for obs in _observations(o):
            earlier = final.setdefault(obs[0], obs)
            if earlier != obs:
                verdict.rewritten_offsets.append(_rewrite(obs[0], earlier, obs, o, "final read"))

    _check_order(reads, final, verdict)
    _check_stable(reads, appends, final, verdict)
    status = outcome_by_id(appends)
    _check_presence(status, reads, final, window_ms, verdict)
    _check_stale(reads, appends, verdict)
    _check_groups(reads, group_reads, commits, verdict)
    for o in reads:
        for offset in o.completion.get("bad_bodies") or []:
            verdict.bad_bodies.append(
                {"offset": int(offset), "process": o.process, "read_at": round(o.invoke_t, 3)}
            )
    verdict.stats = {
        "appended_ids": len(status),
        "appended_ok": sum(1 for s in status.values() if s == "ok"),
        "appended_unknown": sum(1 for s in status.values() if s == "info"),
        "appended_failed": sum(1 for s in status.values() if s == "fail"),
        "resent_appends": sum(1 for o in appends if o.invoke.get("resent")),
        "reads_ok": sum(1 for o in reads if o.process != FINAL_READER),
        "replays": sum(1 for o in reads if o.invoke.get("replay")),
        "records_observed": sum(len(o.completion.get("records") or []) for o in reads),
        "final_records": len(final),
        "final_read_complete": verdict.final_complete,
        "commits_ok": sum(1 for o in commits if o.outcome == "ok"),
        "group_observations": len(group_reads) + sum(1 for o in reads if "group" in o.invoke),
    }
    return verdict


def _rewrite(
    offset: int, final: Observation | None, seen: Observation, o: Op, how: str
) -> dict[str, Any]:
    return {
        "offset": offset,
        "seen": [seen[1], seen[2]],
        "final": None if final is None else [final[1], final[2]],
        "by": how,
        "process": o.process,
        "op_id": o.op_id,
        "at": round(o.complete_t, 3),
        "node": o.completion.get("node"),
    }


def _check_order(
    reads: Sequence[Op], final: dict[int, Observation], verdict: StreamVerdict
) -> None:
    for o in reads:
        offsets = [obs[0] for obs in _observations(o)]
        problem = None
        for a, b in itertools.pairwise(offsets):
            if b <= a:
                problem = f"offset {b} after {a}: not strictly increasing"
                break
            if b != a + 1:
                problem = f"offset {b} after {a}: offsets {a + 1}-{b - 1} skipped"
                break
        requested = o.invoke.get("offset")
        first_held = int(o.completion.get("first_offset", 0))
        next_offset = o.completion.get("next_offset")
        if problem is None and offsets and requested is not None:
            expected = max(int(requested), first_held)
            if offsets[0] != expected:
                problem = f"asked for offset {requested}, first record at {offsets[0]}"
        if (
            problem is None
            and offsets
            and next_offset is not None
            and int(next_offset) != offsets[-1] + 1
        ):
            problem = f"next_offset {next_offset} after last record {offsets[-1]}"
        if problem is not None:
            verdict.order_violations.append(
                {
                    "process": o.process,
                    "op_id": o.op_id,
                    "at": round(o.complete_t, 3),
                    "node": o.completion.get("node"),
                    "problem": problem,
                }
            )
    missing = sorted(set(range(max(final) + 1)) - set(final)) if final else []
    if missing:
        verdict.order_violations.append(
            {
                "process": FINAL_READER,
                "problem": f"the final read has no record at offsets {missing[:10]}"
                + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""),
            }
        )


def _check_stable(
    reads: Sequence[Op],
    appends: Sequence[Op],
    final: dict[int, Observation],
    verdict: StreamVerdict,
) -> None:
    """Every record seen at an offset during the run is the final read's record there."""
    reported: set[tuple[int, Observation]] = set()
    complete = verdict.final_complete
    for o in reads:
        if o.process == FINAL_READER:
            continue
        for obs in _observations(o):
            now = final.get(obs[0])
            if now == obs or (now is None and not complete):
                continue
            if (obs[0], obs) not in reported:
                reported.add((obs[0], obs))
                verdict.rewritten_offsets.append(_rewrite(obs[0], now, obs, o, "read"))
    for o in appends:
        if o.outcome != "ok":
            continue
        ids = [str(i) for i in o.invoke.get("ids") or []]
        for msg_id, offset in zip(ids, o.completion.get("offsets") or [], strict=False):
            now = final.get(int(offset))
            if (now is not None and now[1] == msg_id) or (now is None and not complete):
                continue
            verdict.rewritten_offsets.append(
                _rewrite(int(offset), now, (int(offset), msg_id, None), o, "append answer")
            )


def _check_presence(
    status: dict[str, str],
    reads: Sequence[Op],
    final: dict[int, Observation],
    window_ms: float,
    verdict: StreamVerdict,
) -> None:
    at: dict[str, list[Observation]] = defaultdict(list)
    for obs in sorted(final.values()):
        if obs[1] is not None:
            at[obs[1]].append(obs)
    for msg_id, st in sorted(status.items(), key=lambda kv: id_key(kv[0])):
        present = msg_id in at
        if st == "ok" and not present:
            verdict.lost.append(msg_id)
        elif st == "info":
            (verdict.unknown_present if present else verdict.unknown_absent).append(msg_id)
        elif st == "fail" and present:
            verdict.failed_append_present.append(msg_id)
    seen_ids: set[str] = set()
    nameless: set[int] = set()
    for o in reads:
        for offset, record_id, _ in _observations(o):
            if record_id is None:
                nameless.add(offset)
            else:
                seen_ids.add(record_id)
    verdict.unexpected = sorted((i for i in seen_ids if i not in status), key=id_key)
    verdict.unexpected += [f"offset {offset} (no id)" for offset in sorted(nameless)]
    for msg_id in sorted(at, key=id_key):
        copies = at[msg_id]
        if len(copies) < 2:
            continue
        for first, later in itertools.pairwise(copies):
            apart = None if first[2] is None or later[2] is None else later[2] - first[2]
            entry = {
                "id": msg_id,
                "offsets": [first[0], later[0]],
                "apart_ms": apart,
            }
            if apart is None or apart < window_ms:
                verdict.duplicate_violations.append(
                    {**entry, "reason": f"appended again within the {window_ms / 1000:g} s window"}
                )
            else:
                verdict.duplicates.append({**entry, "explained_by": "dedup window passed"})


def _check_stale(reads: Sequence[Op], appends: Sequence[Op], verdict: StreamVerdict) -> None:
    """A read that reached the end must include every append acknowledged before it began."""
    acked = sorted(
        (o.complete_t, max(int(x) for x in o.completion["offsets"]), o)
        for o in appends
        if o.outcome == "ok" and o.completion.get("offsets")
    )
    times = [a[0] for a in acked]
    best: list[tuple[int, Op]] = []
    for _, offset, o in acked:
        best.append((offset, o) if not best or offset > best[-1][0] else best[-1])
    for o in reads:
        limit = o.invoke.get("max")
        got = len(o.completion.get("records") or [])
        next_offset = o.completion.get("next_offset")
        if limit is None or next_offset is None or got >= int(limit):
            continue  # a full answer may have stopped before the end
        k = bisect.bisect_left(times, o.invoke_t)
        if k == 0:
            continue
        offset, append = best[k - 1]
        if offset >= int(next_offset):
            verdict.stale_reads.append(
                {
                    "process": o.process,
                    "op_id": o.op_id,
                    "read": [round(o.invoke_t, 3), round(o.complete_t, 3)],
                    "node": o.completion.get("node"),
                    "next_offset": int(next_offset),
                    "missed_offset": offset,
                    "appended_by": append.process,
                    "append_acknowledged_at": round(append.complete_t, 3),
                    "append_node": append.completion.get("node"),
                }
            )


def _observed_group_offset(o: Op) -> int | None:
    if o.op == "group_offset":
        return int(o.completion["offset"])
    if "group" not in o.invoke:
        return None
    observed = _observations(o)
    if observed:
        return observed[0][0]
    next_offset = o.completion.get("next_offset")
    return None if next_offset is None else int(next_offset)


def _check_groups(
    reads: Sequence[Op],
    group_reads: Sequence[Op],
    commits: Sequence[Op],
    verdict: StreamVerdict,
) -> None:
    by_group: dict[str, list[Op]] = defaultdict(list)
    for o in commits:
        by_group[str(o.invoke.get("group"))].append(o)
    observed = [(o, _observed_group_offset(o)) for o in (*reads, *group_reads)]
    for o, value in sorted(observed, key=lambda x: x[0].op_id):
        if value is None:
            continue
        group = str(o.invoke["group"])
        mine = by_group.get(group, [])
        acked = [c for c in mine if c.outcome == "ok" and c.complete_t < o.invoke_t]
        floor = max(acked, key=lambda c: int(c.invoke["offset"]), default=None)
        entry: dict[str, Any] = {
            "group": group,
            "observed": value,
            "process": o.process,
            "op": o.op,
            "op_id": o.op_id,
            "read": [round(o.invoke_t, 3), round(o.complete_t, 3)],
            "node": o.completion.get("node"),
        }
        carried = [
            c
            for c in mine
            if int(c.invoke["offset"]) == value
            and c.outcome in ("ok", "info")
            and c.invoke_t < o.complete_t
        ]
        if value != 0 and not carried:
            failed = any(int(c.invoke["offset"]) == value for c in mine)
            reason = (
                "a commit answered as not applied took effect"
                if failed
                else "a value no commit of the group carried"
            )
            verdict.group_violations.append({**entry, "reason": reason})
            continue
        if floor is None or value >= int(floor.invoke["offset"]):
            continue
        entry["acknowledged"] = int(floor.invoke["offset"])
        entry["acknowledged_at"] = round(floor.complete_t, 3)
        late = [c for c in carried if c.outcome == "info" or c.invoke_t > floor.complete_t]
        if late:
            verdict.group_regressions.append(
                {**entry, "explained_by": "commit of the lower offset with an unknown outcome"}
            )
        else:
            verdict.group_violations.append(
                {
                    **entry,
                    "reason": f"went back below offset {entry['acknowledged']}, whose commit "
                    "was acknowledged before this observation began",
                }
            )
