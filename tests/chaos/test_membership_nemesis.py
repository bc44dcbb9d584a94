"""The membership nemesis's decisions, against a cluster model instead of processes.

Which outcome of a removal leads to a wiped data dir and a re-join, and which
leaves the node alone with its data (a member that loses its log can lose
committed writes), and that a run stopped in the middle of a membership window
still ends with every node a running member. The real run is in
test_chaos_run.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from chaos.cluster import ChaosCluster, NodeExit, Removal
from chaos.history import HistoryWriter, read_history
from chaos.nemesis import Fault, Nemesis
from node.membership import REMOVED_FILE

IDS = ("n1", "n2", "n3")


@dataclass
class ModelNode:
    data_dir: Path
    running: bool = True
    member: bool = True
    leaving: bool = False
    joined: bool = False
    expected_down: bool = False
    returncode: int | None = None


@dataclass
class ModelCluster:
    """The part of ChaosCluster the nemesis uses; a removal does what the product does."""

    root: Path
    removal: Removal
    nodes: dict[str, ModelNode] = field(default_factory=dict)
    wiped: list[str] = field(default_factory=list)
    topology: Any = field(default_factory=lambda: SimpleNamespace(supports_partition=False))

    def __post_init__(self) -> None:
        for node_id in IDS:
            data_dir = self.root / node_id
            data_dir.mkdir(parents=True)
            (data_dir / "journal").write_text("entries")
            self.nodes[node_id] = ModelNode(data_dir)

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    def spec(self, node_id: str) -> SimpleNamespace:
        return SimpleNamespace(url=f"http://{node_id}", data_dir=self.nodes[node_id].data_dir)

    def leader(self) -> str | None:
        return "n1"

    def responsive(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.running]

    def running(self, node_id: str) -> bool:
        return self.nodes[node_id].running

    def stop_itself(self, node_id: str) -> None:
        """A removed node applies its removal: it marks its data dir and exits 0."""
        node = self.nodes[node_id]
        node.member = False
        (node.data_dir / REMOVED_FILE).write_text("removed")
        node.running, node.returncode = False, 0

    def remove_member(self, node_id: str, via: str, deadline_s: float) -> Removal:
        if self.removal.outcome == "removed":
            self.stop_itself(node_id)
        return self.removal

    def expect_removal(self, node_id: str, leaving: bool = True) -> None:
        self.nodes[node_id].leaving = leaving

    def wait_exit(self, node_id: str, timeout: float) -> int | None:
        node = self.nodes[node_id]
        return None if node.running else node.returncode

    def crash(self, node_id: str) -> None:
        self.nodes[node_id].running, self.nodes[node_id].returncode = False, -9

    def kill(self, node_id: str) -> None:
        self.nodes[node_id].running, self.nodes[node_id].expected_down = False, True

    def wipe(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert not node.running
        for path in node.data_dir.iterdir():
            path.unlink()
        self.wiped.append(node_id)

    def start_node(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert not (node.data_dir / REMOVED_FILE).exists(), "a removed data dir refuses to start"
        node.running, node.leaving, node.expected_down = True, False, False
        if node.joined:
            node.member = True

    def rejoin(self, node_id: str) -> str:
        self.wipe(node_id)
        self.nodes[node_id].joined = True
        self.start_node(node_id)
        return "http://n2"

    def is_member(self, node_id: str) -> bool | None:
        node = self.nodes[node_id]
        return node.running and node.member

    def in_configuration(self, node_id: str) -> bool | None:
        return self.nodes[node_id].member

    def unexpected_exits(self) -> list[NodeExit]:
        out = []
        for node_id, node in self.nodes.items():
            if node.expected_down or node.leaving or node.running:
                continue
            node.expected_down = True
            out.append(NodeExit(node_id, node.returncode or 0, ""))
        return out

    def resume(self, node_id: str) -> None:
        return None

    def log_tail(self, node_id: str) -> str:
        return ""


def nemesis_for(tmp_path: Path, removal: Removal) -> tuple[Nemesis, ModelCluster, HistoryWriter]:
    model = ModelCluster(tmp_path / "nodes", removal)
    history = HistoryWriter(tmp_path / "history.jsonl")
    window = Fault(1, "membership", 0.0, 3600.0, "random")
    nemesis = Nemesis(cast(ChaosCluster, model), history, [window], seed=1, origin=history.now())
    return nemesis, model, history


def nemesis_records(history: HistoryWriter) -> list[dict[str, Any]]:
    return [r for r in read_history(history.path) if r.get("type") in ("nemesis", "node_exit")]


def start_until_removal(nemesis: Nemesis, history: HistoryWriter) -> str:
    """Starts the nemesis and returns the victim once its removal is recorded."""
    nemesis.start()
    deadline = time.monotonic() + 30
    while True:
        removal = [r for r in nemesis_records(history) if r.get("phase") == "removal"]
        if removal:
            return str(removal[0]["node"])
        assert time.monotonic() < deadline, "the window never started"
        time.sleep(0.01)


def stop_and_heal(nemesis: Nemesis, history: HistoryWriter) -> list[dict[str, Any]]:
    """What run.py does at the end of a run, here inside the (hour-long) window."""
    nemesis.stop()
    nemesis.heal_all()
    history.close()
    return nemesis_records(history)


def test_a_run_stopped_mid_window_ends_with_the_node_rejoined(tmp_path: Path) -> None:
    nemesis, model, history = nemesis_for(tmp_path, Removal("removed", 200, via="http://n2"))
    victim = start_until_removal(nemesis, history)
    records = stop_and_heal(nemesis, history)
    assert [(r["type"], r.get("phase")) for r in records] == [
        ("nemesis", "start"),
        ("nemesis", "removal"),
        ("nemesis", "rejoin"),
        ("nemesis", "stop"),
    ]
    assert records[1]["outcome"] == "removed" and records[1]["returncode"] == 0
    assert records[2]["node"] == victim and records[2]["member"] is True
    assert set(model.wiped) == {victim}
    assert all(n.running and n.member for n in model.nodes.values())
    assert model.nodes[victim].joined
    assert not nemesis.errors


@pytest.mark.parametrize("code", ["membership_change_in_progress", "would_lose_quorum"])
def test_a_refused_removal_changes_nothing_and_a_later_crash_is_a_crash(
    tmp_path: Path, code: str
) -> None:
    nemesis, model, history = nemesis_for(tmp_path, Removal("refused", 409, code))
    victim = start_until_removal(nemesis, history)
    model.crash(victim)
    records = stop_and_heal(nemesis, history)
    assert [r for r in records if r.get("phase") in ("rejoin", "error")] == []
    assert [r["node"] for r in records if r["type"] == "node_exit"] == [victim]
    assert not model.wiped, "a member's data must never be wiped"
    assert (model.nodes[victim].data_dir / "journal").exists()
    assert all(n.running for n in model.nodes.values())


def test_an_unanswered_removal_that_took_effect_is_rejoined(tmp_path: Path) -> None:
    nemesis, model, history = nemesis_for(tmp_path, Removal("timeout", error="TimeoutError"))
    victim = start_until_removal(nemesis, history)
    model.stop_itself(victim)  # the removal completed after its answer was given up on
    records = stop_and_heal(nemesis, history)
    assert not [r for r in records if r["type"] == "node_exit" or r.get("phase") == "error"]
    assert [r["node"] for r in records if r.get("phase") == "rejoin" and r["member"]] == [victim]
    assert all(n.running and n.member for n in model.nodes.values())


def test_an_unanswered_removal_that_did_not_happen_keeps_the_node_and_its_data(
    tmp_path: Path,
) -> None:
    nemesis, model, history = nemesis_for(tmp_path, Removal("timeout", error="TimeoutError"))
    start_until_removal(nemesis, history)
    records = stop_and_heal(nemesis, history)
    assert [r for r in records if r.get("phase") in ("rejoin", "error")] == []
    assert not model.wiped
    assert all(n.running and not n.leaving for n in model.nodes.values())
