"""The stream and fan-out rules of the checker on synthetic histories.

Each planted fault (a lost append, a rewritten offset, a stale read, a group
offset that goes back, a fan-out copy that never arrives, a record or message
nobody wrote, ...) must make the history invalid and be reported in its own
class; the clean histories, including the allowed cases (a resent append that
was deduplicated, a duplicate after the dedup window, a group offset moved back
by a commit whose outcome was unknown), must pass.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from chaos.checker import CheckResult, check
from chaos.report import render_timeline, results_document
from tests.chaos.history_builder import FAN_QUEUES, HistoryBuilder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TS = 1_700_000_000_000  # append timestamps, epoch ms as the node stamps them
FAN_A, FAN_B = FAN_QUEUES


def rec(offset: int, record_id: str, ts: int | None = None) -> tuple[int, str, int]:
    """A record as a read reports it; by default its timestamp follows from the offset."""
    return (offset, record_id, TS + 10 * offset if ts is None else ts)


FINAL = [rec(0, "a0-0"), rec(1, "a1-0"), rec(2, "a1-1"), rec(3, "a0-1")]


def clean_stream(final: bool = True) -> HistoryBuilder:
    """Two appenders (one resend after an unknown outcome), two readers, one group."""
    h = HistoryBuilder()
    h.append("a0", ["a0-0"], 1.0, 1.1, offsets=[0])
    h.append("a1", ["a1-0", "a1-1"], 1.0, 1.2, offsets=[1, 2])
    h.append("a0", ["a0-1"], 1.3, 2.0, outcome="info")  # applied or not: unknown
    h.append("a0", ["a0-1"], 2.1, 2.2, offsets=[3], resent=1)  # the same id again
    h.read("r0", FINAL[:3], 1.5, 1.6, offset=0)
    h.read("r0", FINAL[3:], 2.3, 2.4, offset=3)
    h.read("r1", FINAL[1:3], 2.5, 2.6, offset=1, limit=2)  # a replay, a full answer
    h.read("g0", FINAL[:3], 1.5, 1.6, offset=None, group="g0")
    h.commit("g0", "g0", 3, 1.6, 1.7)
    h.read("g0", FINAL[3:], 2.3, 2.4, offset=None, group="g0")  # resumes at the commit
    h.commit("g0", "g0", 4, 2.4, 2.5)
    h.group_offset("g0", "g0", 4, 2.6, 2.7)
    h.finish(3.0)
    if final:
        h.final_read(FINAL, 4.0)
        h.group_offset("drain-stream", "g0", 4, 4.5, 4.6)
    return h


def clean_fanout() -> HistoryBuilder:
    """Two publishers to a fanout exchange bound to two queues; each queue gets everything."""
    h = HistoryBuilder(fanout_queues=FAN_QUEUES)
    h.xpublish("x0", ["x0-0"], 1.0, 1.1)
    h.xpublish("x1", ["x1-0", "x1-1"], 1.0, 1.2)
    h.xpublish("x0", ["x0-1"], 1.2, 1.3)
    h.consume("f0", [("x0-0", 1), ("x1-0", 1)], 2.0, queue=FAN_A)
    h.consume("f0", [("x1-1", 1), ("x0-1", 1)], 2.5, queue=FAN_A)
    h.consume("f1", [("x0-0", 1)], 2.0, queue=FAN_B)
    h.consume("f1", [("x1-0", 1), ("x1-1", 1), ("x0-1", 1)], 2.5, queue=FAN_B)
    h.finish(4.0)
    return h


def violations(result: CheckResult) -> dict[str, int]:
    return {name: n for name, n in result.violation_classes().items() if n}


# ------------------------------------------------------------------ streams


def test_a_clean_stream_history_passes() -> None:
    result = check(clean_stream().sorted_records())
    assert result.valid, result.problems
    assert violations(result) == {}
    assert result.stream.stats["final_records"] == 4
    assert result.stream.stats["resent_appends"] == 1
    assert result.stream.unknown_present == []  # a0-1's resend succeeded: it is acknowledged


def test_a_lost_append_is_reported_by_id() -> None:
    h = clean_stream()
    h.append("a1", ["a1-2"], 2.6, 2.7, offsets=[4])  # acknowledged, not in the final read
    result = check(h.sorted_records())
    assert result.stream.lost == ["a1-2"]
    assert not result.valid
    assert "stream_lost: 1" in result.problems


def test_a_rewritten_offset_is_reported() -> None:
    """A reader saw a record at offset 3 that the final read has not there: history changed."""
    h = clean_stream()
    h.append("a1", ["a1-2"], 1.8, 2.9, outcome="info")
    h.read("r1", [rec(3, "a1-2", ts=TS + 99)], 2.0, 2.1, offset=3, limit=1)
    result = check(h.sorted_records())
    (change,) = result.stream.rewritten_offsets
    assert change["offset"] == 3
    assert change["seen"] == ["a1-2", TS + 99]
    assert change["final"] == ["a0-1", TS + 30]
    assert not result.valid
    assert result.stream.unknown_absent == ["a1-2"]


def test_the_same_id_reappended_at_an_offset_is_a_rewrite() -> None:
    """Same id, different append timestamp: not the record the reader saw."""
    h = clean_stream()
    h.read("r1", [rec(3, "a0-1", ts=TS + 5)], 2.3, 2.4, offset=3, limit=1)
    result = check(h.sorted_records())
    assert [c["offset"] for c in result.stream.rewritten_offsets] == [3]


def test_an_append_answer_the_final_read_contradicts_is_a_rewrite() -> None:
    h = clean_stream()
    h.append("a1", ["a1-1"], 2.3, 2.35, offsets=[1], resent=1)  # dedup answer: wrong offset
    result = check(h.sorted_records())
    (change,) = result.stream.rewritten_offsets
    assert change["by"] == "append answer"
    assert change["seen"] == ["a1-1", None]
    assert change["final"] == ["a1-0", TS + 10]


def test_offsets_out_of_order_or_skipped_in_a_read_are_reported() -> None:
    h = clean_stream()
    h.read("r1", [rec(2, "a1-1"), rec(1, "a1-0")], 2.3, 2.4, offset=2, limit=2)
    h.read("r1", [rec(0, "a0-0"), rec(2, "a1-1")], 2.5, 2.6, offset=0, limit=2)
    h.read("r0", [rec(2, "a1-1")], 2.7, 2.8, offset=1, limit=1)
    result = check(h.sorted_records())
    problems = [v["problem"] for v in result.stream.order_violations]
    assert problems == [
        "offset 1 after 2: not strictly increasing",
        "offset 2 after 0: offsets 1-1 skipped",
        "asked for offset 1, first record at 2",
    ]
    assert not result.valid


def test_a_stale_read_that_misses_an_acknowledged_append_is_reported() -> None:
    h = clean_stream()
    # Invoked after a0-1 was acknowledged at offset 3 (2.2), yet ends at offset 3.
    h.read("r1", FINAL[1:3], 2.5, 2.6, offset=1, limit=50)
    result = check(h.sorted_records())
    (stale,) = result.stream.stale_reads
    assert stale["next_offset"] == 3
    assert stale["missed_offset"] == 3
    assert stale["appended_by"] == "a0"
    assert not result.valid


def test_a_group_offset_that_goes_back_is_reported() -> None:
    h = clean_stream()
    h.group_offset("g0", "g0", 3, 2.8, 2.9)  # 4 was acknowledged at 2.5
    result = check(h.sorted_records())
    (backward,) = result.stream.group_violations
    assert (backward["observed"], backward["acknowledged"]) == (3, 4)
    assert "went back below offset 4" in backward["reason"]
    assert not result.valid
    assert "group_offset_violations: 1" in result.problems


def test_a_group_read_that_starts_before_the_acknowledged_offset_is_reported() -> None:
    h = clean_stream()
    h.read("g0", FINAL[3:], 2.8, 2.9, offset=None, group="g0")  # starts at 3, 4 was committed
    result = check(h.sorted_records())
    assert [(v["observed"], v["op"]) for v in result.stream.group_violations] == [(3, "read")]


def test_a_group_offset_back_to_an_unknown_commit_is_allowed() -> None:
    h = HistoryBuilder()
    h.append("a0", ["a0-0", "a0-1", "a0-2"], 0.5, 0.6, offsets=[0, 1, 2])
    h.commit("g0", "g0", 2, 1.0, 2.0, outcome="info")  # may apply late
    h.commit("g0", "g0", 3, 2.1, 2.2)
    h.group_offset("g0", "g0", 2, 2.5, 2.6)
    h.finish(3.0)
    h.final_read([rec(0, "a0-0"), rec(1, "a0-1"), rec(2, "a0-2")], 4.0)
    result = check(h.sorted_records())
    assert result.valid, result.problems
    assert [r["observed"] for r in result.stream.group_regressions] == [2]


def test_a_group_offset_nobody_committed_is_reported() -> None:
    h = clean_stream()
    h.group_offset("g0", "g0", 2, 2.8, 2.9)
    result = check(h.sorted_records())
    reasons = [v["reason"] for v in result.stream.group_violations]
    assert reasons == ["a value no commit of the group carried"]


def test_a_record_nobody_appended_is_unexpected() -> None:
    h = clean_stream(final=False)
    h.final_read([*FINAL, rec(4, "ghost-1")], 4.0)
    result = check(h.sorted_records())
    assert result.stream.unexpected == ["ghost-1"]
    assert result.stream.lost == []
    assert not result.valid


def test_a_failed_append_in_the_stream_is_reported() -> None:
    h = clean_stream(final=False)
    h.append("a1", ["a1-2"], 2.6, 2.7, outcome="fail")
    h.final_read([*FINAL, rec(4, "a1-2")], 4.0)
    result = check(h.sorted_records())
    assert result.stream.failed_append_present == ["a1-2"]
    assert not result.valid


def test_an_id_appended_twice_within_the_dedup_window_is_a_violation() -> None:
    h = clean_stream(final=False)
    h.final_read([*FINAL, rec(4, "a0-1", ts=TS + 60_000)], 4.0)  # a minute after offset 3
    result = check(h.sorted_records())
    (dup,) = result.stream.duplicate_violations
    assert (dup["id"], dup["offsets"]) == ("a0-1", [3, 4])
    assert not result.valid


def test_an_id_appended_again_after_the_dedup_window_is_an_allowed_duplicate() -> None:
    h = clean_stream(final=False)
    h.final_read([*FINAL, rec(4, "a0-1", ts=TS + 301_000)], 4.0)
    result = check(h.sorted_records())
    assert result.valid, result.problems
    assert [d["id"] for d in result.stream.duplicates] == ["a0-1"]


def test_an_incomplete_final_read_makes_the_run_invalid() -> None:
    h = clean_stream(final=False)
    h.final_read(FINAL[:2], 4.0, complete=False)
    result = check(h.sorted_records())
    assert any("final read did not complete" in p for p in result.problems)
    assert result.stream.lost == ["a0-1", "a1-1"]  # reported, but not final


# ------------------------------------------------------------------ fan-out


def test_a_clean_fanout_history_passes() -> None:
    result = check(clean_fanout().sorted_records())
    assert result.valid, result.problems
    assert violations(result) == {}
    assert sorted(result.fanout) == sorted(FAN_QUEUES)
    assert all(v.messages["distinct_delivered"] == 4 for v in result.fanout.values())


def test_a_missing_fanout_copy_is_reported_with_its_queue() -> None:
    h = clean_fanout()
    h.xpublish("x1", ["x1-2"], 2.6, 2.7)
    h.consume("f0", [("x1-2", 1)], 3.0, queue=FAN_A)  # only one bound queue delivered it
    result = check(h.sorted_records())
    assert result.counts()["fanout_lost"] == 1
    assert result.examples()["fanout_lost"] == [f"{FAN_B}:x1-2"]
    assert result.fanout[FAN_A].lost == []
    assert not result.valid
    assert "fanout_lost: 1" in result.problems


def test_a_message_nobody_published_to_the_exchange_is_unexpected() -> None:
    h = clean_fanout()
    h.publish("p0", ["p0-0"], 1.0, 1.1, queue="chaos")  # a direct publish to another queue
    h.consume("c0", [("p0-0", 1)], 2.0, queue="chaos")
    h.consume("f1", [("p0-0", 1), ("ghost-2", 1)], 3.0, queue=FAN_B)
    result = check(h.sorted_records())
    assert result.examples()["fanout_unexpected"] == [f"{FAN_B}:ghost-2", f"{FAN_B}:p0-0"]
    assert result.unexpected == []
    assert not result.valid


def test_a_fanout_publish_routed_to_fewer_queues_is_misrouted() -> None:
    h = clean_fanout()
    h.xpublish("x0", ["x0-2"], 2.6, 2.7, routed={FAN_A: 1})
    h.consume("f0", [("x0-2", 1)], 3.0, queue=FAN_A)
    h.consume("f1", [("x0-2", 1)], 3.0, queue=FAN_B)
    result = check(h.sorted_records())
    (bad,) = result.fanout_misrouted
    assert bad["ids"] == ["x0-2"]
    assert bad["routed"] == {FAN_A: 1}
    assert not result.valid


def test_a_fanout_reorder_in_one_queue_is_reported() -> None:
    h = HistoryBuilder(fanout_queues=FAN_QUEUES)
    h.xpublish("x0", ["x0-0"], 1.0, 1.1)
    h.xpublish("x0", ["x0-1"], 1.2, 1.3)
    h.consume("f0", [("x0-0", 1), ("x0-1", 1)], 2.0, queue=FAN_A)
    h.consume("f1", [("x0-1", 1)], 2.0, queue=FAN_B)  # completes at 2.1 ...
    h.consume("f1", [("x0-0", 1)], 2.5, queue=FAN_B)  # ... x0-0 first leased after it
    h.finish(4.0)
    result = check(h.sorted_records())
    (reorder,) = result.examples()["fanout_fifo_violations"]
    assert (reorder["queue"], reorder["earlier"], reorder["later"]) == (FAN_B, "x0-0", "x0-1")
    assert not result.valid


def test_a_resent_fanout_publish_delivered_twice_is_a_duplicate_violation() -> None:
    """Dedup is per queue: a resend with the same id must not be a second first delivery."""
    h = clean_fanout()
    h.xpublish("x0", ["x0-2"], 2.6, 2.7, outcome="info")
    h.xpublish("x0", ["x0-2"], 2.8, 2.9)
    h.consume("f0", [("x0-2", 1)], 3.0, queue=FAN_A)
    h.consume("f0", [("x0-2", 1)], 3.5, queue=FAN_A)
    h.consume("f1", [("x0-2", 1)], 3.0, queue=FAN_B)
    result = check(h.sorted_records())
    (dup,) = result.examples()["fanout_duplicate_violations"]
    assert (dup["queue"], dup["id"]) == (FAN_A, "x0-2")
    assert "observed twice" in dup["reason"]


def test_report_of_a_mixed_history(tmp_path: Path) -> None:
    h = clean_stream()
    for record in clean_fanout().records[2:]:  # the same ops, op ids shifted past the stream's
        if record["type"] not in ("phase", "final"):
            shifted = {"op_id": record["op_id"] + 1000} if "op_id" in record else {}
            h.records.append({**record, **shifted})
    h.nemesis(1, "partition", 1.5, 2.5, ["n1", "n2", "n3"])
    result = check(h.sorted_records())
    assert result.valid, result.problems
    document = orjson.loads(orjson.dumps(results_document(result, {"seed": 1})))
    assert document["stream"]["final_records"] == 4
    assert set(document["fanout"]) == set(FAN_QUEUES)
    assert document["violation_classes"]["stream_stale_reads"] == 0
    png = tmp_path / "timeline.png"
    render_timeline(png, h.sorted_records(), result, "mixed")
    assert png.read_bytes().startswith(PNG_MAGIC)
