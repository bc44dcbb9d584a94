"""Refuse writes that add data while this node's store or disk is nearly full.

A full LMDB map (MDB_MAP_FULL) or a full disk fails the apply of the entry that
hit it, on every replica alike: the nodes stop and restart from their journals
and fail at the same entry again, so the cluster stays down until an operator
makes room, and not even consumers, who would make it, get through. As
RabbitMQ's disk alarm does, the leader refuses publishes and appends before
that point, with a clear error, and keeps serving receives, acks, purges and
deletes, which free pages. The limits leave room for what those still write
(leases rewrite messages, the journal grows until the next snapshot) and for a
snapshot, which copies the whole store.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

logger = logging.getLogger(__name__)

# Commands that make the store grow; the others are served whatever the alarm says.
GROWING_OPS: Final = frozenset({"publish", "publish_exchange", "append_records"})
# The store is full at this fraction of its map (--store-max-bytes), and stays full
# until consumers bring it under the second: no flapping at the edge.
STORE_FULL_RATIO: Final = 0.9
STORE_ROOM_RATIO: Final = 0.85
# Store bytes a proposed byte may cost, for the projection between two looks: a
# 1 KiB message's record, index and dedup keys and page slack take ≈ 1.5 times its
# share of the entry, ≈ 3 times where pages fill only half (keys not appended).
STORE_BYTES_PER_PROPOSED: Final = 3


@dataclass(frozen=True)
class StorageUse:
    """What one look at the store and its disk found; `full` says why writes are refused."""

    live_bytes: int
    capacity_bytes: int
    disk_free_bytes: int
    full: str | None


def assess(
    live_bytes: int,
    capacity_bytes: int,
    disk_free_bytes: int,
    min_free_disk_bytes: int,
    *,
    was_full: bool = False,
    projected: str | None = None,
) -> StorageUse:
    """The alarm rule: the store over STORE_FULL_RATIO of its map, or too little disk.

    "Too little disk" is less than --min-free-disk plus the store's live size:
    the next snapshot writes a copy of the store before the old one is removed.
    A store that was full stays full down to STORE_ROOM_RATIO. With
    ``projected`` (what the figures include besides the last look, e.g. "with
    this write and those accepted since the last look") the sentence says the
    store *would* hold them.
    """
    mib = 1 << 20
    full: str | None = None
    ratio = STORE_ROOM_RATIO if was_full else STORE_FULL_RATIO
    holds = "holds" if projected is None else f"would hold, {projected},"
    if live_bytes > ratio * capacity_bytes:
        full = (
            f"the store {holds} {live_bytes // mib} MiB, over {ratio:.0%} of its "
            f"{capacity_bytes // mib} MiB (--store-max-bytes); consume, purge or delete "
            "messages to make room"
        )
    elif disk_free_bytes < min_free_disk_bytes + live_bytes:
        has = "has" if projected is None else f"would have, {projected},"
        full = (
            f"the data directory's disk {has} {disk_free_bytes // mib} MiB free, less than "
            f"--min-free-disk ({min_free_disk_bytes // mib} MiB) plus room for a snapshot "
            f"of the store ({live_bytes // mib} MiB); free disk space, or consume, purge "
            "or delete messages"
        )
    return StorageUse(live_bytes, capacity_bytes, disk_free_bytes, full)


class StorageGuard:
    """This node's latest StorageUse, refreshed by whoever calls `refresh` (every second).

    `refresh` runs on the event loop: the store's page counts and a statvfs
    take tens of microseconds. Between two looks the proposer asks before each
    growing command (`admit`), and the bytes admitted since that look or still
    not applied at it, that command's included, are projected onto it (`settled`
    says when a command is applied), so neither a burst of
    publishes nor one large request can run past the limits within one period.
    A write too large for the room the last look left is refused alone; one
    that would fit but finds the room used up by those admitted before it
    starts the alarm, which the next look keeps (down to STORE_ROOM_RATIO) or
    ends.
    """

    def __init__(
        self,
        live_bytes: Callable[[], int],
        data_dir: str,
        capacity_bytes: int,
        min_free_disk_bytes: int,
    ) -> None:
        self._live_bytes = live_bytes
        self._data_dir = data_dir
        self._capacity_bytes = capacity_bytes
        self._min_free_disk_bytes = min_free_disk_bytes
        self._admitted_since = 0
        # Admitted and not yet applied here (or failed): the next look cannot see
        # them in the store yet, so they stay projected past it.
        self._in_flight = 0
        # Bytes that may be admitted after the last look before a limit is
        # projected to be crossed: the proposer's check is one comparison.
        self._room = 0.0
        self._room_used_up: str | None = None  # the projection that started the alarm
        self.use = StorageUse(0, capacity_bytes, 0, None)
        self.refresh()

    def admit(self, command_bytes: int) -> str | None:
        """Counts a growing command of this (serialized) size, or says why it is refused."""
        reason = self.full()
        if reason is not None:
            return reason
        total = self._admitted_since + command_bytes
        if total <= self._room or (reason := self._projected(total)) is None:
            self._admitted_since = total
            self._in_flight += command_bytes
            return None
        if command_bytes > self._room:
            return f"a write of {max(1, command_bytes >> 10)} KiB does not fit: {reason}"
        self._room_used_up = reason  # the alarm starts here; the next look keeps or ends it
        logger.warning("storage alarm: publishes and appends refused: %s", reason)
        return reason

    def settled(self, command_bytes: int) -> None:
        """An admitted command was applied on this node, or failed (event loop)."""
        self._in_flight = max(0, self._in_flight - command_bytes)

    def full(self) -> str | None:
        """Why growing commands are refused now, or None (event loop)."""
        return self.use.full or self._room_used_up

    def _projected(self, admitted: int) -> str | None:
        # Each admitted byte lands in the journal once and in the store about
        # STORE_BYTES_PER_PROPOSED times (records, index keys, page slack).
        use = self.use
        grown = admitted * STORE_BYTES_PER_PROPOSED
        return assess(
            use.live_bytes + grown,
            use.capacity_bytes,
            use.disk_free_bytes - grown - admitted,
            self._min_free_disk_bytes,
            projected="with the writes accepted since the last look and this one",
        ).full

    def refresh(self) -> StorageUse:
        was_full = self.full() is not None
        # What is applied shows in this look; what is still in flight does not.
        self._admitted_since = self._in_flight
        self._room_used_up = None
        use = assess(
            self._live_bytes(),
            self._capacity_bytes,
            shutil.disk_usage(self._data_dir).free,
            self._min_free_disk_bytes,
            was_full=was_full,
        )
        if use.full is not None and not was_full:
            logger.warning("storage alarm: publishes and appends refused: %s", use.full)
        elif use.full is None and was_full:
            logger.warning("storage alarm cleared: publishes and appends accepted again")
        self.use = use
        # assess() of the projection in admit(), solved for the bytes admitted.
        k = STORE_BYTES_PER_PROPOSED
        self._room = min(
            (STORE_FULL_RATIO * use.capacity_bytes - use.live_bytes) / k,
            (use.disk_free_bytes - self._min_free_disk_bytes - use.live_bytes) / (2 * k + 1),
        )
        return use
