"""The seeded schedule, partition shapes and how a client error becomes fail or info.

A rerun of a seed is only useful if the schedule is a function of the seed, and
the checker is only sound if ``fail`` is reserved for requests that provably
did not apply; both are pinned here without starting a node.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from chaos.cluster import ChaosCluster, LoopbackTopology
from chaos.nemesis import PARTITION_SHAPES, partition_pairs, plan
from chaos.workload import Attempt, attempt_maybe_applied, classify

IDS3 = ["n1", "n2", "n3"]
IDS5 = ["n1", "n2", "n3", "n4", "n5"]


def test_the_schedule_is_a_function_of_the_seed() -> None:
    kinds = ["kill", "pause", "partition"]
    assert plan(7, kinds, 120, 5) == plan(7, kinds, 120, 5)
    assert plan(7, kinds, 120, 5) != plan(8, kinds, 120, 5)


@pytest.mark.parametrize("seed", range(20))
def test_every_requested_nemesis_appears_and_windows_do_not_overlap(seed: int) -> None:
    faults = plan(seed, ["kill", "pause", "partition"], 60, 3)
    assert {f.kind for f in faults} == {"kill", "pause", "partition"}
    for a, b in itertools.pairwise(faults):
        assert a.start + a.duration < b.start
    assert faults[-1].start + faults[-1].duration <= 60
    assert all(f.target in PARTITION_SHAPES for f in faults if f.kind == "partition")


def test_membership_windows_come_from_the_seed() -> None:
    kinds = ["kill", "membership"]
    assert plan(12, kinds, 35, 3) == plan(12, kinds, 35, 3)
    assert plan(12, kinds, 35, 3) != plan(13, kinds, 35, 3)
    assert [(f.kind, f.target) for f in plan(12, kinds, 35, 3)] == [
        ("membership", "random"),
        ("kill", "random"),
        ("membership", "random"),
    ]
    targets = {f.target for seed in range(20) for f in plan(seed, ["membership"], 60, 3)}
    assert targets == {"leader", "random"}


def test_adding_membership_leaves_the_other_schedules_alone() -> None:
    """A seed rerun without membership keeps the schedule it had before membership existed."""
    faults = plan(7, ["kill", "pause", "partition"], 60, 5)
    assert [(f.kind, f.target, round(f.start, 2)) for f in faults] == [
        ("partition", "isolate-leader", 3.0),
        ("kill", "leader", 11.66),
        ("pause", "leader", 19.57),
        ("kill", "leader", 28.84),
        ("pause", "leader", 37.6),
        ("partition", "bridge", 45.73),
    ]


def test_a_joined_node_restarts_with_join_not_peers(tmp_path: Path) -> None:
    """After a re-join, later restarts must not start the node as a founder with --peers."""
    cluster = ChaosCluster(tmp_path, 3, LoopbackTopology())
    cluster.setup()
    founder = cluster.command(cluster.spec("n1"))
    assert "--peers" in founder
    assert "--join" not in founder
    cluster.nodes["n1"].joined = True
    joined = cluster.command(cluster.spec("n1"))
    assert "--peers" not in joined
    join_url = joined[joined.index("--join") + 1]
    assert join_url in {cluster.spec("n2").url, cluster.spec("n3").url}


def _sides(pairs: list[tuple[str, str]]) -> dict[str, set[str]]:
    cut: dict[str, set[str]] = {}
    for a, b in pairs:
        cut.setdefault(a, set()).add(b)
        cut.setdefault(b, set()).add(a)
    return cut


@pytest.mark.parametrize("ids", [IDS3, IDS5])
def test_isolating_the_leader_cuts_it_from_everyone(ids: list[str]) -> None:
    pairs, detail = partition_pairs("isolate-leader", ids, "n2", random.Random(1))
    assert _sides(pairs)["n2"] == set(ids) - {"n2"}
    assert all("n2" in p for p in pairs)
    assert detail.startswith("isolate n2 (leader)")


@pytest.mark.parametrize("ids", [IDS3, IDS5])
def test_a_split_leaves_a_strict_majority(ids: list[str]) -> None:
    pairs, _ = partition_pairs("split", ids, None, random.Random(3))
    cut = _sides(pairs)
    minority = {i for i in ids if len(cut.get(i, ())) > len(ids) // 2}
    assert 0 < len(minority) < len(ids) / 2


@pytest.mark.parametrize("ids", [IDS3, IDS5])
def test_a_bridge_node_sees_both_sides(ids: list[str]) -> None:
    pairs, detail = partition_pairs("bridge", ids, None, random.Random(5))
    cut = _sides(pairs)
    bridges = [i for i in ids if i not in cut]
    assert len(bridges) == 1
    assert detail.startswith(f"bridge {bridges[0]} sees")
    side_a = {a for a, _ in pairs}
    side_b = {b for _, b in pairs}
    assert side_a and side_b and not side_a & side_b
    assert side_a | side_b | set(bridges) == set(ids)


@pytest.mark.parametrize(
    ("status", "code", "sent", "maybe"),
    [
        (None, "connection_error", False, False),  # refused: nothing was sent
        (None, "connection_error", True, True),  # timeout or reset after sending
        (307, None, True, False),
        (400, "invalid_request", True, False),
        (404, "queue_not_found", True, False),
        (503, "no_leader", True, False),
        (503, "overloaded", True, False),
        (503, "unknown_outcome", True, True),
        (500, "internal", True, True),
        (200, None, True, True),
    ],
)
def test_which_attempts_may_have_applied(
    status: int | None, code: str | None, sent: bool, maybe: bool
) -> None:
    assert attempt_maybe_applied(status, code, sent) is maybe


def test_a_call_fails_only_when_no_attempt_may_have_applied() -> None:
    refused = Attempt("http://a", None, "connection_error", False)
    no_leader = Attempt("http://b", 503, "no_leader", False)
    timed_out = Attempt("http://c", None, "connection_error", True)
    assert classify([refused, no_leader]) == "fail"
    assert classify([refused, timed_out, no_leader]) == "info"
    assert classify([]) == "fail"
