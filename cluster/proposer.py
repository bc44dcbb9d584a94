"""Group commit: concurrent commands from the event loop become one Raft entry.

Commands proposed during one event-loop iteration are coalesced into a single
`apply_batch` call, so one journal fsync and one network round carry all of
them. pysyncobj calls back on its tick thread; results cross to the loop with
`call_soon_threadsafe`, never blocking it.

The node may add companions to an entry as it is proposed (`Proposer.companions`):
commands nobody awaits through `propose`, each with the future its result goes
to. node/ uses this to lease a message to a waiting consumer in the same entry
that publishes it.
"""

import asyncio
import bisect
import logging
from collections.abc import Callable
from typing import Any

import orjson
from pysyncobj import FAIL_REASON

from cluster.errors import NoLeader, Overloaded, StorageFull, UnknownOutcome
from cluster.storage_guard import GROWING_OPS, StorageGuard

logger = logging.getLogger(__name__)

Submit = Callable[[bytes, Callable[[Any, int], None]], None]
Pending = tuple[dict[str, Any], "asyncio.Future[Any]"]
# A proposed command waiting for its entry: with its future and its JSON (made once).
_Queued = tuple[dict[str, Any], "asyncio.Future[Any]", bytes]
# (commands of an entry being proposed, room left in it) -> commands to add to it.
Companions = Callable[[list[dict[str, Any]], int], list[Pending]]

_RETRYABLE_BEFORE_APPEND = {FAIL_REASON.MISSING_LEADER, FAIL_REASON.QUEUE_FULL}

# Upper bounds of the commands-per-entry histogram (the last bucket is +Inf).
ENTRY_SIZE_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Proposer:
    """Coalesces proposals into Raft entries and resolves each caller's future."""

    def __init__(
        self,
        submit: Submit,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout_s: float,
        max_per_entry: int,
        max_pending: int,
        max_entry_bytes: int,
    ) -> None:
        self._submit = submit
        self._loop = loop
        self._timeout_s = timeout_s
        self._max_per_entry = max_per_entry
        self._max_entry_bytes = max_entry_bytes
        self._max_pending = max_pending
        self._pending: list[_Queued] = []
        self._waiting = 0
        self._flush_scheduled = False
        self.companions: Companions | None = None
        # Refuses growing commands while this node's store or disk is nearly full.
        self.storage: StorageGuard | None = None
        # How many queues an exchange publish is copied to (its bytes count that often).
        self.exchange_copies: Callable[[str], int] | None = None
        self.entries_proposed = 0
        self.commands_proposed = 0
        self.companions_proposed = 0
        # Non-cumulative counts per bound of ENTRY_SIZE_BOUNDS, plus one for larger.
        self.entry_size_counts = [0] * (len(ENTRY_SIZE_BOUNDS) + 1)

    @property
    def waiting(self) -> int:
        """Commands proposed and not yet answered."""
        return self._waiting

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commit `command` through Raft and return its result from storage."""
        if self._waiting >= self._max_pending:
            raise Overloaded(f"{self._waiting} commands are waiting for Raft")
        part = orjson.dumps(command)
        admitted = 0
        if self.storage is not None and command.get("op") in GROWING_OPS:
            admitted = self._admit(command, len(part), self.storage)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._pending.append((command, future, part))
        self._waiting += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            raise UnknownOutcome(
                f"no Raft outcome within {self._timeout_s:g} s; retry with the same ids"
            ) from None
        finally:
            self._waiting -= 1
            if admitted and self.storage is not None:
                self.storage.settled(admitted)

    def _admit(self, command: dict[str, Any], size: int, storage: StorageGuard) -> int:
        """The bytes the storage guard admitted for `command` (`size` bytes of JSON);
        StorageFull if it did not."""
        copies = 1
        exchange = command.get("exchange")
        if command["op"] == "publish_exchange" and self.exchange_copies is not None:
            copies = max(1, self.exchange_copies(exchange if isinstance(exchange, str) else ""))
        refused = storage.admit(size * copies)
        if refused is not None:
            if copies > 1:
                refused += f" (the exchange copies this publish to {copies} queues)"
            raise StorageFull(refused)
        return size * copies

    def _flush(self) -> None:
        """Submit what is pending: entries of at most max_per_entry commands and,
        unless one command is larger alone, max_entry_bytes.

        The byte bound keeps one entry's pickling, journal write and sends on the
        tick thread short, whatever many large publishes arrive at once.
        """
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        batch: list[Pending] = []
        parts: list[bytes] = []
        size = 0
        for command, future, part in pending:
            if batch and (
                len(batch) >= self._max_per_entry or size + len(part) > self._max_entry_bytes
            ):
                self._submit_batch(batch, parts)
                batch, parts, size = [], [], 0
            batch.append((command, future))
            parts.append(part)
            size += len(part) + 1
        if batch:
            self._submit_batch(batch, parts)

    def _submit_batch(self, batch: list[Pending], parts: list[bytes]) -> None:
        """Propose `batch` (`parts`: its commands serialized) as one entry.

        Companions (receives of a few dozen bytes each) ride along whatever the
        entry's bytes: they are already promised to their consumers.
        """
        if self.companions is not None:
            room = self._max_per_entry - len(batch)
            extra = self.companions([command for command, _ in batch], room)
            for command, future in extra:
                # Nobody awaits these through propose(): their timeout is set here.
                self._loop.call_later(self._timeout_s, self._expire, future)
                parts.append(orjson.dumps(command))
            self.companions_proposed += len(extra)
            batch = batch + extra
        futures = [future for _, future in batch]
        payload = b"[" + b",".join(parts) + b"]"

        def on_result(result: Any, error: int) -> None:
            self._loop.call_soon_threadsafe(self._resolve, futures, result, error)

        self.entries_proposed += 1
        self.commands_proposed += len(batch)
        self.entry_size_counts[bisect.bisect_left(ENTRY_SIZE_BOUNDS, len(batch))] += 1
        try:
            self._submit(payload, on_result)
        except Exception as exc:
            logger.exception("submitting a Raft entry failed")
            self._resolve(futures, None, -1, exc)

    def _expire(self, future: "asyncio.Future[Any]") -> None:
        if not future.done():
            future.set_exception(UnknownOutcome(f"no Raft outcome within {self._timeout_s:g} s"))

    @staticmethod
    def _resolve(
        futures: list["asyncio.Future[Any]"],
        result: Any,
        error: int,
        exc: BaseException | None = None,
    ) -> None:
        failure: BaseException | None = exc
        if failure is None and error != FAIL_REASON.SUCCESS:
            if error in _RETRYABLE_BEFORE_APPEND:
                failure = NoLeader("no leader accepted the command; it was not applied")
            else:
                failure = UnknownOutcome(f"Raft gave no outcome (reason {error})")
        if failure is None and (not isinstance(result, list) or len(result) != len(futures)):
            failure = UnknownOutcome("the entry was already applied before this answer")
        for i, future in enumerate(futures):
            if future.done():
                continue
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(result[i])
