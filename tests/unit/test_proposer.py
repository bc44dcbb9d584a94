"""Group commit and outcome mapping of the Proposer, with a fake Raft submit."""

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pysyncobj import FAIL_REASON

from cluster.errors import NoLeader, Overloaded, UnknownOutcome
from cluster.proposer import Proposer

Callback = Callable[[Any, int], None]


class FakeRaft:
    def __init__(self) -> None:
        self.entries: list[tuple[list[dict[str, Any]], Callback]] = []

    def submit(self, payload: bytes, callback: Callback) -> None:
        self.entries.append((orjson.loads(payload), callback))


def make(
    raft: FakeRaft,
    timeout_s: float = 5.0,
    max_per_entry: int = 100,
    max_pending: int = 1000,
    max_entry_bytes: int = 8 << 20,
) -> Proposer:
    return Proposer(
        raft.submit,
        asyncio.get_running_loop(),
        timeout_s=timeout_s,
        max_per_entry=max_per_entry,
        max_pending=max_pending,
        max_entry_bytes=max_entry_bytes,
    )


async def wait_entries(raft: FakeRaft, count: int) -> None:
    while len(raft.entries) < count:
        await asyncio.sleep(0)


async def test_concurrent_proposals_share_one_entry() -> None:
    raft = FakeRaft()
    proposer = make(raft)
    tasks = [asyncio.create_task(proposer.propose({"n": i})) for i in range(10)]
    await wait_entries(raft, 1)
    commands, callback = raft.entries[0]
    assert [c["n"] for c in commands] == list(range(10))
    callback([{"r": i} for i in range(10)], FAIL_REASON.SUCCESS)
    assert await asyncio.gather(*tasks) == [{"r": i} for i in range(10)]
    assert len(raft.entries) == 1


async def test_entry_size_is_bounded() -> None:
    raft = FakeRaft()
    proposer = make(raft, max_per_entry=4)
    tasks = [asyncio.create_task(proposer.propose({"n": i})) for i in range(10)]
    await wait_entries(raft, 3)
    assert [len(c) for c, _ in raft.entries] == [4, 4, 2]
    for commands, callback in raft.entries:
        callback([{} for _ in commands], FAIL_REASON.SUCCESS)
    await asyncio.gather(*tasks)


async def test_entry_bytes_are_bounded_and_a_larger_command_goes_alone() -> None:
    raft = FakeRaft()
    proposer = make(raft, max_entry_bytes=1000)
    sizes = [300, 300, 300, 2500, 100, 600, 600]
    tasks = [asyncio.create_task(proposer.propose({"b": "x" * n})) for n in sizes]
    await wait_entries(raft, 4)
    entries = [[len(c["b"]) for c in commands] for commands, _ in raft.entries]
    assert entries == [[300, 300, 300], [2500], [100, 600], [600]]
    for commands, callback in raft.entries:
        callback([{"n": len(c["b"])} for c in commands], FAIL_REASON.SUCCESS)
    assert [r["n"] for r in await asyncio.gather(*tasks)] == sizes


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        (FAIL_REASON.MISSING_LEADER, NoLeader),
        (FAIL_REASON.LEADER_CHANGED, UnknownOutcome),
        (FAIL_REASON.DISCARDED, UnknownOutcome),
        (FAIL_REASON.UNKNOWN_OUTCOME, UnknownOutcome),
    ],
)
async def test_failure_reasons_map_to_errors(reason: int, error: type[Exception]) -> None:
    raft = FakeRaft()
    proposer = make(raft)
    task = asyncio.create_task(proposer.propose({}))
    await wait_entries(raft, 1)
    raft.entries[0][1](None, reason)
    with pytest.raises(error):
        await task


async def test_lost_callback_answers_unknown_outcome_at_the_deadline() -> None:
    raft = FakeRaft()
    proposer = make(raft, timeout_s=0.05)
    with pytest.raises(UnknownOutcome):
        await proposer.propose({})
    assert proposer.waiting == 0


async def test_replayed_entry_without_results_is_unknown_outcome() -> None:
    raft = FakeRaft()
    proposer = make(raft)
    task = asyncio.create_task(proposer.propose({}))
    await wait_entries(raft, 1)
    raft.entries[0][1](None, FAIL_REASON.SUCCESS)
    with pytest.raises(UnknownOutcome):
        await task


async def test_backpressure_when_too_many_are_waiting() -> None:
    raft = FakeRaft()
    proposer = make(raft, max_pending=2)
    tasks = [asyncio.create_task(proposer.propose({})) for _ in range(2)]
    await wait_entries(raft, 1)
    with pytest.raises(Overloaded):
        await proposer.propose({})
    raft.entries[0][1]([{}, {}], FAIL_REASON.SUCCESS)
    await asyncio.gather(*tasks)


async def test_companions_ride_in_the_entry_and_get_their_results() -> None:
    raft = FakeRaft()
    proposer = make(raft, max_per_entry=3)
    loop = asyncio.get_running_loop()
    companion: asyncio.Future[Any] = loop.create_future()
    seen: list[tuple[list[dict[str, Any]], int]] = []

    def companions(commands: list[dict[str, Any]], room: int) -> list[Any]:
        seen.append((commands, room))
        return [({"n": "companion"}, companion)] if len(seen) == 1 else []

    proposer.companions = companions
    tasks = [asyncio.create_task(proposer.propose({"n": i})) for i in range(2)]
    await wait_entries(raft, 1)
    commands, callback = raft.entries[0]
    assert seen == [([{"n": 0}, {"n": 1}], 1)]
    assert commands == [{"n": 0}, {"n": 1}, {"n": "companion"}]
    callback([{"r": 0}, {"r": 1}, {"r": "c"}], FAIL_REASON.SUCCESS)
    assert await asyncio.gather(*tasks) == [{"r": 0}, {"r": 1}]
    assert await companion == {"r": "c"}
    assert proposer.companions_proposed == 1


async def test_a_companion_without_an_outcome_times_out() -> None:
    raft = FakeRaft()
    proposer = make(raft, timeout_s=0.05)
    companion: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    proposer.companions = lambda commands, room: [({"n": "companion"}, companion)]
    task = asyncio.create_task(proposer.propose({"n": 0}))
    with pytest.raises(UnknownOutcome):
        await task
    with pytest.raises(UnknownOutcome):
        await companion
