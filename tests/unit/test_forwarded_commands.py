"""A follower's `apply_command` reaches the log only for a node registering itself.

pysyncobj hands a command made on a follower (or on a leader that lost the
leadership before proposing it) to the leader, however late that message
arrives; applied after the client retried elsewhere, it undid newer writes.
In-process nodes ticked by hand, as in test_raft_elections.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pysyncobj import FAIL_REASON, replicated

from cluster.raft_fixes import LeaderRefusesForwardedCommands
from tests.unit.test_raft_elections import Plain, _leader, start, tick_until

__all__ = ["start"]  # the fixture, used by name


class Recording(Plain):
    def __init__(self, self_addr: str, partners: list[str]) -> None:
        self.applied: list[list[dict[str, Any]]] = []
        super().__init__(self_addr, partners)

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, payload: bytes) -> str:
        self.applied.append(orjson.loads(payload))
        return "applied"


class Refusing(LeaderRefusesForwardedCommands, Recording):
    pass


def _propose_on_a_follower(nodes: list[Plain], commands: list[dict[str, Any]]) -> tuple[Any, int]:
    leader = _leader(nodes)
    follower = next(n for n in nodes if n is not leader)
    assert isinstance(follower, Recording)
    outcome: list[tuple[Any, int]] = []
    follower.apply_batch(orjson.dumps(commands), callback=lambda r, e: outcome.append((r, e)))
    tick_until(nodes, lambda: bool(outcome), "the proposal's outcome")
    return outcome[0]


@pytest.mark.timeout(60)
def test_the_leader_refuses_a_forwarded_command(start: Any) -> None:
    nodes = start(Refusing)
    result, error = _propose_on_a_follower(nodes, [{"op": "commit_offset", "offset": 823}])
    assert (result, error) == (None, FAIL_REASON.NOT_LEADER)
    assert all(not n.applied for n in nodes)


@pytest.mark.timeout(60)
def test_a_node_registering_itself_may_still_go_through_the_leader(start: Any) -> None:
    nodes = start(Refusing)
    register = [{"op": "register_node", "raft": "127.0.0.1:1", "id": "n9", "http": "http://x"}]
    assert _propose_on_a_follower(nodes, register) == ("applied", FAIL_REASON.SUCCESS)
    tick_until(nodes, lambda: all(n.applied == [register] for n in nodes), "every node to apply")


@pytest.mark.timeout(60)
def test_without_the_fix_a_forwarded_command_is_applied(start: Any) -> None:
    nodes = start(Recording)
    assert _propose_on_a_follower(nodes, [{"op": "commit_offset", "offset": 823}]) == (
        "applied",
        FAIL_REASON.SUCCESS,
    )
