"""The reaper leaves most of the time to other entries: it paces itself by how long its
own proposals take, which grows when the cluster is busy."""

from typing import Any, cast

import pytest

from node.ports import RaftPort
from node.reaper import REAP_IDLE_S, REAP_PAUSE_S, REAP_TIME_SHARE, reap_forever


class Stop(Exception):
    """Ends the reaper's endless loop from the test's sleep."""


class FakeRaft:
    """A leader with one reap to do per entry of `rounds_s`, each taking that long (fake clock)."""

    def __init__(self, rounds_s: list[float]) -> None:
        self.now = 0.0
        self.rounds_s = list(rounds_s)
        self.proposed: list[dict[str, Any]] = []

    def clock(self) -> float:
        return self.now

    def is_leader(self) -> bool:
        return True

    def has_buried(self) -> bool:
        return bool(self.rounds_s)

    def read(self, fn: Any) -> Any:
        return fn(self)

    async def propose_as_leader(self, command: dict[str, Any]) -> dict[str, Any]:
        self.proposed.append(command)
        self.now += self.rounds_s.pop(0)
        return {"status": "ok", "removed": 10_000, "more": bool(self.rounds_s)}


async def pauses_of(raft: FakeRaft) -> list[float]:
    """The reaper's pauses until it finds nothing buried (its first idle pause)."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        raft.now += seconds
        if seconds == REAP_IDLE_S:
            raise Stop

    with pytest.raises(Stop):
        await reap_forever(cast(RaftPort, raft), clock=raft.clock, sleep=sleep)
    return pauses


async def test_the_reaper_waits_in_proportion_to_how_long_its_reaps_take() -> None:
    raft = FakeRaft([0.02, 0.02, 0.2, 0.001])
    pauses = await pauses_of(raft)
    factor = 1 / REAP_TIME_SHARE - 1
    assert len(raft.proposed) == 4
    assert all(command["op"] == "reap" for command in raft.proposed)
    assert pauses[:3] == pytest.approx([0.02 * factor, 0.02 * factor, 0.2 * factor])
    assert pauses[3] == REAP_IDLE_S  # the last reap found nothing more
    # Its own share of the time while it had work: at most REAP_TIME_SHARE.
    busy = sum([0.02, 0.02, 0.2])
    assert busy / (busy + sum(pauses[:3])) == pytest.approx(REAP_TIME_SHARE)


async def test_quick_reaps_still_leave_a_gap_for_other_entries() -> None:
    raft = FakeRaft([0.0001, 0.0001, 0.0001])
    pauses = await pauses_of(raft)
    assert pauses == [REAP_PAUSE_S, REAP_PAUSE_S, REAP_IDLE_S]
