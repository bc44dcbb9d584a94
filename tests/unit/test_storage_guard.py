"""The storage alarm: when a node refuses writes that add data, and that the others pass."""

import asyncio
import base64
import logging
from pathlib import Path

import pytest
from pysyncobj import FAIL_REASON

from cluster.errors import StorageFull
from cluster.storage_guard import STORE_FULL_RATIO, StorageGuard, assess
from storage import Store, default_queue_config
from tests.unit.test_proposer import FakeRaft, make

MIB = 1 << 20
PLENTY = 1 << 50  # free disk bytes that no rule notices


def test_room_in_the_store_and_on_the_disk_is_no_alarm() -> None:
    assert assess(10 * MIB, 100 * MIB, PLENTY, 512 * MIB).full is None


def test_a_store_over_its_ratio_of_the_map_is_full() -> None:
    live = int(STORE_FULL_RATIO * 100 * MIB) + 1
    full = assess(live, 100 * MIB, PLENTY, 512 * MIB).full
    assert full is not None and "--store-max-bytes" in full


def test_a_disk_without_room_for_a_snapshot_is_full() -> None:
    # 600 MiB free: more than --min-free-disk, less than that plus the 100 MiB store.
    full = assess(100 * MIB, 1 << 40, 600 * MIB, 512 * MIB).full
    assert full is not None and "--min-free-disk" in full
    assert assess(100 * MIB, 1 << 40, 700 * MIB, 512 * MIB).full is None


class FakeStore:
    def __init__(self) -> None:
        self.live = 0

    def live_bytes(self) -> int:
        return self.live


def _guard(tmp_path: Path, live: int = 0) -> tuple[FakeStore, StorageGuard]:
    """A guard over a 100 MiB store holding `live` bytes, with no disk rule."""
    store = FakeStore()
    store.live = live
    return store, StorageGuard(store.live_bytes, str(tmp_path), 100 * MIB, 0)


def test_admitted_bytes_count_until_the_next_look(tmp_path: Path) -> None:
    store, guard = _guard(tmp_path)
    # 90 MiB before the alarm, 3 store bytes projected for a byte admitted: 30 MiB.
    assert guard.admit(25 * MIB) is None
    refused = guard.admit(25 * MIB)  # would fit alone: the room is used up, the alarm starts
    assert refused is not None and "would hold" in refused
    assert guard.full() == refused
    assert guard.admit(1) == refused  # the alarm refuses even the smallest write
    guard.settled(25 * MIB)  # the first write was applied...
    store.live = 10 * MIB  # ...and this is what the store really holds at the next look
    guard.refresh()
    assert guard.full() is None
    assert guard.admit(25 * MIB) is None


def test_bytes_admitted_and_not_yet_applied_stay_projected_past_the_next_look(
    tmp_path: Path,
) -> None:
    """A look sees only what is applied: a slow commit must not let its bytes be forgotten
    (under load a flood of small publishes overfilled a 16 MiB store that way)."""
    store, guard = _guard(tmp_path)
    assert guard.admit(25 * MIB) is None  # 30 MiB of room at 3 store bytes a byte
    guard.refresh()  # not applied yet: the store still looks empty
    assert guard.admit(10 * MIB) is not None
    guard.settled(25 * MIB)  # applied: now it is in the store
    store.live = 40 * MIB
    guard.refresh()
    assert guard.full() is None
    assert guard.admit(10 * MIB) is None  # (90 - 40) / 3 = 16.7 MiB of room


def test_one_write_too_large_for_the_room_left_is_refused_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, guard = _guard(tmp_path, live=60 * MIB)
    with caplog.at_level(logging.WARNING, logger="cluster.storage_guard"):
        # 30 MiB of room before 90 %: 10 MiB of commands, at 3 store bytes a byte.
        refused = guard.admit(12 * MIB)
        assert refused is not None
        assert refused.startswith("a write of 12288 KiB does not fit: the store would hold")
        assert "over 90% of its 100 MiB (--store-max-bytes)" in refused
        assert guard.full() is None  # no alarm: what was refused was not counted
        assert guard.admit(9 * MIB) is None  # a smaller write still fits
    assert caplog.records == []


def test_a_full_store_stays_full_until_it_is_under_the_lower_ratio(tmp_path: Path) -> None:
    store, guard = _guard(tmp_path)
    store.live = 91 * MIB
    guard.refresh()
    store.live = 88 * MIB  # under the ratio that starts the alarm, over the one that ends it
    guard.refresh()
    assert guard.full() is not None
    store.live = 84 * MIB
    guard.refresh()
    assert guard.full() is None
    store.live = 88 * MIB  # not full again before the upper ratio
    guard.refresh()
    assert guard.full() is None


def test_the_alarm_is_logged_when_it_starts_and_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, guard = _guard(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cluster.storage_guard"):
        store.live = 95 * MIB
        guard.refresh()
        guard.refresh()
        store.live = 5 * MIB
        guard.refresh()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "refused" in messages[0] and "cleared" in messages[1]


def test_an_alarm_started_by_the_projection_is_logged_when_it_starts_and_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, guard = _guard(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cluster.storage_guard"):
        assert guard.admit(29 * MIB) is None
        assert guard.admit(2 * MIB) is not None  # the room is used up: the alarm starts
        assert guard.admit(1) is not None
        store.live = 5 * MIB
        guard.refresh()
        assert guard.full() is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "refused" in messages[0] and "would hold" in messages[0]
    assert "cleared" in messages[1]


async def test_the_proposer_refuses_growing_commands_and_passes_the_others(
    tmp_path: Path,
) -> None:
    store = FakeStore()
    store.live = 95 * MIB
    raft = FakeRaft()
    proposer = make(raft)
    proposer.storage = StorageGuard(store.live_bytes, str(tmp_path), 100 * MIB, 0)
    for op in ("publish", "publish_exchange", "append_records"):
        with pytest.raises(StorageFull):
            await proposer.propose({"op": op})
    ack = asyncio.create_task(proposer.propose({"op": "ack"}))
    while not raft.entries:
        await asyncio.sleep(0)
    commands, callback = raft.entries[0]
    assert [c["op"] for c in commands] == ["ack"]  # nothing refused was proposed
    callback([{"status": "ok"}], FAIL_REASON.SUCCESS)
    assert await ack == {"status": "ok"}


async def test_an_exchange_publish_counts_once_per_queue_it_is_copied_to(
    tmp_path: Path,
) -> None:
    store = FakeStore()
    raft = FakeRaft()
    proposer = make(raft)
    proposer.storage = StorageGuard(store.live_bytes, str(tmp_path), 4 * MIB, 0)
    proposer.exchange_copies = {"fan": 80, "one": 1}.__getitem__
    body = "x" * 60_000
    publish = {"op": "publish_exchange", "exchange": "fan", "messages": [{"body": body}]}
    with pytest.raises(StorageFull, match="copies this publish to 80 queues"):
        await proposer.propose(publish)
    # The same bytes to one queue, or as a plain publish, fit.
    accepted = [
        asyncio.create_task(proposer.propose({**publish, "exchange": "one"})),
        asyncio.create_task(proposer.propose({"op": "publish", "messages": [{"body": body}]})),
    ]
    while len(raft.entries) < 1:
        await asyncio.sleep(0)
    commands, callback = raft.entries[0]
    assert [c["op"] for c in commands] == ["publish_exchange", "publish"]
    callback([{"status": "ok"}, {"status": "ok"}], FAIL_REASON.SUCCESS)
    await asyncio.gather(*accepted)


def test_live_bytes_fall_when_messages_go_and_the_file_does_not(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"), map_size=64 * MIB)
    config = default_queue_config()
    declared = store.apply(
        1, [{"op": "declare_queue", "queue": "q", "config": config, "now_ms": 1}]
    )
    assert declared is not None and declared[0]["status"] == "created"
    body = base64.b64encode(bytes(1024)).decode()
    messages = [{"id": f"m{i}", "body": body, "encoding": "base64"} for i in range(2000)]
    published = store.apply(2, [{"op": "publish", "queue": "q", "now_ms": 1, "messages": messages}])
    assert published is not None and published[0]["status"] == "ok"
    full_live, full_file = store.live_bytes(), store.used_bytes()
    assert full_live > 2 * MIB
    store.apply(3, [{"op": "purge_queue", "queue": "q", "now_ms": 2}])
    index = 4
    while True:
        reaped = store.apply(index, [{"op": "reap", "max_keys": 10_000, "now_ms": 3}])
        assert reaped is not None and reaped[0]["status"] == "ok"
        if not reaped[0]["more"]:
            break
        index += 1
    assert store.live_bytes() < full_live / 10
    assert store.used_bytes() >= full_file  # the data file never shrinks
