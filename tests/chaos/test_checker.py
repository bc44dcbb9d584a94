"""The checker on synthetic histories: each planted fault is reported by id, clean passes.

Also the history round trip and the timeline (written for any history, with
the fault windows drawn), because a checker that cannot read what the harness
writes, or a report that breaks on an odd history, would hide violations.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from chaos.checker import check, check_file
from chaos.history import HistoryWriter, read_history
from chaos.report import render_timeline, results_document
from tests.chaos.history_builder import HistoryBuilder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def clean_history() -> HistoryBuilder:
    """Two producers, two consumers, everything delivered once in order and acked."""
    h = HistoryBuilder()
    h.publish("p0", ["p0-0"], 1.0, 1.1)
    h.publish("p1", ["p1-0", "p1-1"], 1.0, 1.2)
    h.publish("p0", ["p0-1"], 1.2, 1.3)
    h.consume("c0", [("p0-0", 1), ("p1-0", 1)], 2.0)
    h.consume("c1", [("p1-1", 1)], 2.5)
    h.consume("c0", [("p0-1", 1)], 3.0)
    h.finish(4.0)
    return h


def test_a_clean_history_passes() -> None:
    result = check(clean_history().sorted_records())
    assert result.valid, result.problems
    counts = result.counts()
    assert {k: counts[k] for k in list(counts)[:9]} == {
        "lost": 0,
        "unexpected": 0,
        "failed_publish_delivered": 0,
        "duplicates": 0,
        "duplicate_violations": 0,
        "fifo_violations": 0,
        "unknown_publishes_present": 0,
        "unknown_publishes_absent": 0,
        "node_exits": 0,
    }
    assert not any(counts.values()), "no fan-out or stream class without such operations"
    assert not result.stream.exercised
    assert result.messages["published_ok"] == 4
    assert result.messages["distinct_delivered"] == 4


def test_a_planted_loss_is_reported_by_id() -> None:
    h = clean_history()
    h.publish("p0", ["p0-2"], 3.5, 3.6)  # acknowledged, never delivered
    result = check(h.sorted_records())
    assert result.lost == ["p0-2"]
    assert not result.valid
    assert "lost: 1" in result.problems


def test_a_planted_unexpected_message_is_reported_by_id() -> None:
    h = clean_history()
    h.consume("c1", [("ghost-7", 1)], 3.5)  # nobody ever published it
    result = check(h.sorted_records())
    assert result.unexpected == ["ghost-7"]
    assert result.lost == []
    assert not result.valid


def test_a_planted_reorder_is_reported_by_id() -> None:
    h = HistoryBuilder()
    h.publish("p0", ["p0-0"], 1.0, 1.1)
    h.publish("p0", ["p0-1"], 1.2, 1.3)  # invoked after p0-0 was acknowledged
    h.consume("c0", [("p0-1", 1)], 2.0)  # receive completes at 2.1 ...
    h.consume("c1", [("p0-0", 1)], 2.5)  # ... and p0-0's first delivery is requested after
    h.finish(4.0)
    result = check(h.sorted_records())
    assert len(result.fifo_violations) == 1
    violation = result.fifo_violations[0]
    assert (violation["earlier"], violation["later"]) == ("p0-0", "p0-1")
    assert violation["producer"] == "p0"
    assert not result.valid


def test_a_reorder_inside_one_receive_is_reported() -> None:
    h = HistoryBuilder()
    h.publish("p0", ["p0-0", "p0-1"], 1.0, 1.1)  # one batch: p0-0 is ahead
    h.consume("c0", [("p0-1", 1), ("p0-0", 1)], 2.0)
    h.finish(4.0)
    result = check(h.sorted_records())
    assert [(v["earlier"], v["later"]) for v in result.fifo_violations] == [("p0-0", "p0-1")]


def test_overlapping_receives_are_not_a_reorder() -> None:
    """Concurrent consumers: B's receive returns first although A's lease came first."""
    h = HistoryBuilder()
    h.publish("p0", ["p0-0"], 1.0, 1.1)
    h.publish("p0", ["p0-1"], 1.2, 1.3)
    h.receive("c0", [("p0-0", 1)], 2.0, 2.9)  # slow answer
    h.receive("c1", [("p0-1", 1)], 2.1, 2.2)
    h.ack("c0", [("p0-0", 1)], 2.9, 3.0)
    h.ack("c1", [("p0-1", 1)], 2.2, 2.3)
    h.finish(4.0)
    assert check(h.sorted_records()).valid


def test_an_unknown_publish_may_be_reordered_or_missing() -> None:
    h = HistoryBuilder()
    h.publish("p0", ["p0-0"], 1.0, 5.0, outcome="info")  # may commit late
    h.publish("p0", ["p0-1"], 5.1, 5.2)
    h.publish("p0", ["p0-2"], 5.3, 5.4, outcome="info")
    h.consume("c0", [("p0-1", 1)], 6.0)
    h.consume("c0", [("p0-0", 1)], 7.0)  # after p0-1: allowed, its ack was unknown
    h.finish(8.0)
    result = check(h.sorted_records())
    assert result.valid, result.problems
    assert result.unknown_present == ["p0-0"]
    assert result.unknown_absent == ["p0-2"]


def test_a_failed_publish_that_is_delivered_is_reported() -> None:
    h = HistoryBuilder()
    h.publish("p0", ["p0-0"], 1.0, 1.1, outcome="fail")
    h.consume("c0", [("p0-0", 1)], 2.0)
    h.finish(3.0)
    result = check(h.sorted_records())
    assert result.failed_publish_delivered == ["p0-0"]
    assert not result.valid


def test_redelivery_after_an_unknown_ack_and_expiry_is_an_allowed_duplicate() -> None:
    h = HistoryBuilder(visibility_timeout=10.0)
    h.publish("p0", ["p0-0"], 1.0, 1.1)
    h.receive("c0", [("p0-0", 1)], 2.0, 2.1)
    h.ack("c0", [("p0-0", 1)], 2.1, 6.0, outcome="info")
    h.consume("c1", [("p0-0", 2)], 12.5)  # lease of delivery 1 expired at >= 12.0
    h.finish(14.0)
    result = check(h.sorted_records())
    assert result.valid, result.problems
    assert [d["id"] for d in result.duplicates] == ["p0-0"]
    assert result.duplicates[0]["explained_by"] == ["unknown"]


def test_redelivery_after_a_successful_ack_is_a_violation() -> None:
    h = HistoryBuilder(visibility_timeout=10.0)
    h.publish("p0", ["p0-0"], 1.0, 1.1)
    h.consume("c0", [("p0-0", 1)], 2.0)  # acked ok, not stale
    h.consume("c1", [("p0-0", 2)], 20.0)
    h.finish(21.0)
    result = check(h.sorted_records())
    assert [v["id"] for v in result.duplicate_violations] == ["p0-0"]
    assert "acknowledged" in result.duplicate_violations[0]["reason"]
    assert not result.valid


def test_redelivery_before_the_lease_can_expire_is_a_violation() -> None:
    h = HistoryBuilder(visibility_timeout=10.0)
    h.publish("p0", ["p0-0"], 1.0, 1.1)
    h.receive("c0", [("p0-0", 1)], 2.0, 2.1)  # never acked
    h.consume("c1", [("p0-0", 2)], 5.0)  # 3 s later: the 10 s lease still held
    h.finish(6.0)
    result = check(h.sorted_records())
    assert [v["id"] for v in result.duplicate_violations] == ["p0-0"]
    assert "before its 10 s lease could expire" in result.duplicate_violations[0]["reason"]


def test_the_same_delivery_count_twice_is_a_violation() -> None:
    h = HistoryBuilder()
    h.publish("p0", ["p0-0"], 1.0, 1.1)
    h.receive("c0", [("p0-0", 1)], 2.0, 2.1)
    h.receive("c1", [("p0-0", 1)], 15.0, 15.1)
    h.finish(16.0)
    result = check(h.sorted_records())
    assert [v["id"] for v in result.duplicate_violations] == ["p0-0"]


def test_a_stale_ack_explains_a_redelivery() -> None:
    h = HistoryBuilder(visibility_timeout=10.0)
    h.publish("p0", ["p0-0"], 1.0, 1.1)
    h.receive("c0", [("p0-0", 1)], 2.0, 2.1)
    h.receive("c1", [("p0-0", 2)], 12.5, 12.6)
    h.ack("c0", [("p0-0", 1)], 12.7, 12.8, stale=[("p0-0", 1)])
    h.ack("c1", [("p0-0", 2)], 12.7, 12.8)
    h.finish(14.0)
    result = check(h.sorted_records())
    assert result.valid, result.problems
    assert result.duplicates[0]["explained_by"] == ["stale"]


def test_an_unfinished_run_is_not_valid() -> None:
    h = clean_history()
    h.records = [r for r in h.records if r["type"] != "final"]
    assert "the history has no final record: the run did not finish" in check(h.records).problems
    h.finish(5.0, drained=False, converged=False)
    problems = check(h.sorted_records()).problems
    assert any("not drained" in p for p in problems)
    assert any("did not converge" in p for p in problems)


def test_a_node_that_exits_by_itself_is_reported() -> None:
    h = clean_history()
    h.records.append({"type": "node_exit", "t": 2.0, "node": "n2", "returncode": 70})
    result = check(h.sorted_records())
    assert result.node_exits[0]["node"] == "n2"
    assert not result.valid


def test_availability_finds_the_longest_gap_and_the_one_in_each_window() -> None:
    h = HistoryBuilder()
    for k, t in enumerate([1.0, 2.0, 3.0, 8.0, 9.0]):
        h.publish("p0", [f"p0-{k}"], t - 0.05, t)
        h.consume("c0", [(f"p0-{k}", 1)], t + 0.01)
    h.publish("p0", ["p0-9"], 3.5, 7.9, outcome="info")  # the op stuck in the gap
    h.nemesis(1, "kill", 3.2, 6.0, ["n1"])
    h.finish(10.0)
    result = check(h.sorted_records())
    avail = result.availability
    assert avail.longest_gap_s == pytest.approx(8.0 - 3.21)
    assert avail.longest_gap == pytest.approx((3.21, 8.0))
    assert avail.longest_publish_gap_s == pytest.approx(5.0)
    (window,) = avail.windows
    assert window["fault"] == "kill"
    assert window["longest_gap_s"] == pytest.approx(8.0 - 3.21, abs=1e-3)
    assert window["first_ok_after_heal_s"] == pytest.approx(2.0, abs=1e-3)
    assert avail.ok_ops == 15
    assert sum(avail.per_second) == 15


def test_history_round_trip_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    writer = HistoryWriter(path)
    op = writer.invoke("p0", "publish", ids=["p0-0"])
    writer.complete(op, "p0", "publish", "ok", node="http://10.0.0.1:7200")
    writer.close()
    with path.open("ab") as f:
        f.write(b'{"type": "invo')  # the harness died mid-line
    records = read_history(path)
    assert [r["type"] for r in records] == ["invoke", "ok"]
    assert records[0]["t"] <= records[1]["t"]
    assert records[1]["op_id"] == records[0]["op_id"] == op


def test_check_file_reads_what_the_builder_writes(tmp_path: Path) -> None:
    h = clean_history()
    h.publish("p0", ["p0-5"], 3.5, 3.6)
    assert check_file(h.write(tmp_path / "history.jsonl")).lost == ["p0-5"]


def test_timeline_and_results_for_a_history_with_faults(tmp_path: Path) -> None:
    h = clean_history()
    h.publish("p1", ["p1-9"], 2.0, 3.0, outcome="info")
    h.publish("p1", ["p1-8"], 3.0, 3.2, outcome="fail")
    h.nemesis(1, "kill", 1.5, 2.5, ["n1"])
    h.nemesis(2, "partition", 2.6, 3.5, ["n1", "n2", "n3"])
    result = check(h.sorted_records())
    png = tmp_path / "timeline.png"
    render_timeline(png, h.sorted_records(), result, "synthetic")
    assert png.read_bytes().startswith(PNG_MAGIC)
    document = results_document(result, {"seed": 1})
    encoded = orjson.loads(orjson.dumps(document))
    assert encoded["counts"]["lost"] == 0
    assert [w["fault"] for w in encoded["availability"]["windows"]] == ["kill", "partition"]


def test_timeline_of_an_empty_history(tmp_path: Path) -> None:
    png = tmp_path / "timeline.png"
    render_timeline(png, [], check([]), "empty")
    assert png.read_bytes().startswith(PNG_MAGIC)
