"""The Raft node as node/ sees it: propose, read, status, wake-ups."""

import asyncio
import concurrent.futures
import logging
import os
import queue
from collections.abc import Callable
from typing import Any, TypeVar

from pysyncobj import FAIL_REASON

from cluster.errors import MembershipRefused, NoLeader, NotLeader, UnknownOutcome
from cluster.proposer import Companions, Proposer
from cluster.settings import RaftSettings
from cluster.snapshot import SnapshotJob
from cluster.state_machine import ReplicatedBroker
from cluster.storage_guard import StorageGuard
from cluster.store_holder import StoreFlusher, StoreHolder
from storage import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class RaftNode:
    """Owns the store, the replicated broker and the proposer of one node."""

    def __init__(self, settings: RaftSettings) -> None:
        self.settings = settings
        self._listeners: list[Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]] = []
        self.holder = StoreHolder(
            os.path.join(settings.data_dir, "state"),
            map_size=settings.lmdb_map_size,
            sync=False,
        )
        self._tick_calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._broker = ReplicatedBroker(settings, self.holder, self._applied)
        self._broker.addOnTickCallback(self._run_tick_calls)
        self._flusher = StoreFlusher(self.holder, settings.store_flush_period_s)
        self.storage = StorageGuard(
            lambda: self.holder.read(Store.live_bytes),
            settings.data_dir,
            capacity_bytes=settings.lmdb_map_size,
            min_free_disk_bytes=settings.min_free_disk_bytes,
        )
        self._proposer: Proposer | None = None
        self._companions: Companions | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handing_over = False

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the proposer to the event loop that will await proposals."""
        self._loop = loop
        self._proposer = Proposer(
            lambda payload, callback: self._broker.apply_batch(payload, callback=callback),
            loop,
            timeout_s=self.settings.proposal_timeout_s,
            max_per_entry=self.settings.max_commands_per_entry,
            max_pending=self.settings.max_pending_commands,
            max_entry_bytes=self.settings.max_entry_bytes,
        )
        self._proposer.companions = self._companions
        self._proposer.storage = self.storage
        self._proposer.exchange_copies = self._exchange_copies
        loop.call_later(self.settings.storage_check_period_s, self._check_storage)

    def _exchange_copies(self, exchange: str) -> int:
        return self.holder.read(lambda store: store.exchange_copies(exchange))

    def _check_storage(self) -> None:
        """Refresh the storage alarm, then again every storage_check_period_s (event loop)."""
        if self.holder.closed:
            return
        try:
            self.storage.refresh()
        except Exception:
            logger.exception("checking the store's and the disk's free space failed")
        if self._loop is not None:
            self._loop.call_later(self.settings.storage_check_period_s, self._check_storage)

    def set_companions(self, companions: Companions) -> None:
        """Commands to add to each entry as it is proposed (see cluster.proposer)."""
        self._companions = companions
        if self._proposer is not None:
            self._proposer.companions = companions

    def add_apply_listener(
        self, listener: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]
    ) -> None:
        """`listener(commands, results)` runs on the tick thread after each applied entry."""
        self._listeners.append(listener)

    def _applied(self, commands: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        for listener in self._listeners:
            listener(commands, results)

    @property
    def proposer(self) -> Proposer:
        if self._proposer is None:
            raise RuntimeError("attach_loop() was not called")
        return self._proposer

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self.proposer.propose(command)

    async def propose_as_leader(self, command: dict[str, Any]) -> dict[str, Any]:
        """Propose only if this node leads; otherwise raise NotLeader / NoLeader."""
        self.require_leader()
        return await self.proposer.propose(command)

    def require_leader(self) -> None:
        if self._handing_over:
            raise NoLeader("leadership is being handed over; retry shortly")
        if self.is_leader():
            return
        leader = self._broker._getLeader()
        if leader is None:
            raise NoLeader("no leader is known; an election may be in progress")
        if not self._broker.isNodeConnected(leader):
            # The leader this node last heard of is unreachable from here (it
            # died, or we are cut off): redirecting to it would send the client
            # to a dead address until our election timeout; answer like an
            # election in progress instead, which the client retries quickly.
            raise NoLeader("the last known leader is unreachable; an election may be in progress")
        raise NotLeader(str(leader.id))

    def read(self, fn: Callable[[Store], T]) -> T:
        return self.holder.read(fn)

    def is_leader(self) -> bool:
        return bool(self._broker._isLeader())

    def leader_raft(self) -> str | None:
        leader = self._broker._getLeader()
        return None if leader is None else str(leader.id)

    def is_ready(self) -> bool:
        return bool(self._broker.isReady()) and self.leader_raft() is not None

    def status(self) -> dict[str, Any]:
        """Raft facts of this node, read without stopping the tick thread (may lag)."""
        raw = self._broker.getStatus()
        partners = [
            key.removeprefix("partner_node_status_server_")
            for key in raw
            if key.startswith("partner_node_status_server_")
        ]
        members = [{"raft": self.settings.raft_address, "state": "self"}]
        for address in sorted(partners):
            connected = raw[f"partner_node_status_server_{address}"] == 2
            members.append({"raft": address, "state": "connected" if connected else "unreachable"})
        match_index = {
            key.removeprefix("match_idx_server_"): int(value)
            for key, value in raw.items()
            if key.startswith("match_idx_server_")
        }
        return {
            "role": _ROLES.get(int(raw["state"]), "unknown"),
            "leader_raft": None if raw["leader"] is None else str(raw["leader"].id),
            "term": int(raw["raft_term"]),
            "commit_index": int(raw["commit_idx"]),
            "last_applied": int(raw["last_applied"]),
            "log_length": int(raw["log_len"]),
            "has_quorum": bool(raw["has_quorum"]),
            "members": members,
            "match_index": match_index,
        }

    def _run_tick_calls(self) -> None:
        while True:
            try:
                call = self._tick_calls.get_nowait()
            except queue.Empty:
                return
            call()

    def on_tick_thread(self, fn: Callable[[], T]) -> "concurrent.futures.Future[T]":
        """Run `fn` on the Raft tick thread (pysyncobj state is not thread-safe)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._tick_calls.put(run)
        return future

    async def _raft_call(
        self, start: Callable[[Callable[[Any, int], None]], object], what: str
    ) -> None:
        """Start a pysyncobj operation that reports through a callback, and await it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def settle(error: int) -> None:
            if not done.done():
                done.set_result(error)

        def callback(_result: Any, error: int) -> None:
            loop.call_soon_threadsafe(settle, error)

        start(callback)
        try:
            error = await asyncio.wait_for(done, self.settings.proposal_timeout_s)
        except TimeoutError:
            raise UnknownOutcome(f"{what}: no outcome within the proposal deadline") from None
        if error == FAIL_REASON.REQUEST_DENIED:
            raise MembershipRefused(
                "membership_change_in_progress",
                f"{what} refused: another membership change is not committed yet, "
                "or this leader has not committed its first entry",
            )
        if error == FAIL_REASON.MISSING_LEADER:
            raise NoLeader(f"{what}: no leader")
        if error != FAIL_REASON.SUCCESS:
            raise UnknownOutcome(f"{what}: Raft gave no outcome (reason {error})")

    def members(self) -> list[str]:
        """Raft addresses of the voting members as this node knows them, itself included."""
        return sorted(m["raft"] for m in self.status()["members"])

    def live_members(self) -> set[str]:
        """Members this node is connected to, plus itself."""
        return {m["raft"] for m in self.status()["members"] if m["state"] in ("self", "connected")}

    async def add_member(self, raft_address: str) -> None:
        """Add a voting member; committed (on the old and new majority) when this returns."""
        self.require_leader()
        members = self.members()
        if raft_address in members:
            return
        new_size = len(members) + 1
        live = len(self.live_members())
        if live <= new_size // 2:
            raise MembershipRefused(
                "would_lose_quorum",
                f"only {live} of {len(members)} members are reachable; a cluster of {new_size} "
                f"needs {new_size // 2 + 1} to commit, so the change could not complete",
            )
        await self._raft_call(
            lambda cb: self._broker.addNodeToCluster(raft_address, callback=cb),
            f"adding {raft_address}",
        )

    async def remove_member(self, raft_address: str) -> None:
        """Remove a voting member (not this node: the leader hands over leadership first)."""
        self.check_removal(raft_address)
        await self._raft_call(
            lambda cb: self._broker.removeNodeFromCluster(raft_address, callback=cb),
            f"removing {raft_address}",
        )

    def check_removal(self, raft_address: str) -> None:
        """Raise MembershipRefused unless removing `raft_address` is safe now."""
        self.require_leader()
        members = self.members()
        if raft_address not in members:
            raise MembershipRefused("not_a_member", f"{raft_address} is not a member")
        if raft_address == self.settings.raft_address:
            raise MembershipRefused("is_leader", "transfer leadership before removing the leader")
        remaining = [m for m in members if m != raft_address]
        live = len(self.live_members() & set(remaining))
        if live <= len(remaining) // 2:
            raise MembershipRefused(
                "would_lose_quorum",
                f"after removing {raft_address}, only {live} of the {len(remaining)} remaining "
                f"members are reachable; a majority ({len(remaining) // 2 + 1}) must be live",
            )

    async def transfer_leadership(self, wait_s: float = 5.0) -> str:
        """Hand leadership to the most caught-up follower; return the new leader's address.

        As the Raft thesis (3.10) requires and pysyncobj does not do, this leader
        takes no new proposals during the transfer: otherwise under load its log
        is always ahead of the target's, the target's election fails, and the
        old leader is elected again. pysyncobj also refuses TimeoutNow until the
        target holds the leader's last entry, so the request is repeated until
        it has caught up.
        """
        self.require_leader()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        self._handing_over = True
        try:
            sent = False
            while loop.time() < deadline:
                leader = self.leader_raft()
                if leader is not None and leader != self.settings.raft_address:
                    logger.info("leadership handed over to %s", leader)
                    return leader
                if not sent and self.is_leader():
                    try:
                        await self._raft_call(
                            lambda cb: self.on_tick_thread(
                                lambda: self._broker.transferLeadership(None, cb)
                            ),
                            "leadership transfer",
                        )
                        sent = True
                    except MembershipRefused:
                        pass
                await asyncio.sleep(0.01)
        finally:
            self._handing_over = False
        raise NoLeader("leadership transfer did not complete in time; retry")

    def counters(self) -> dict[str, Any]:
        """Counters for metrics: leader changes, proposals, entry sizes; and whether a
        snapshot is being put off (see RaftSettings.snapshot_log_ratio)."""
        proposer = self._proposer
        return {
            "leader_changes": self._broker.leader_changes,
            "entries_proposed": proposer.entries_proposed if proposer else 0,
            "commands_proposed": proposer.commands_proposed if proposer else 0,
            "companions_proposed": proposer.companions_proposed if proposer else 0,
            "entry_size_counts": list(proposer.entry_size_counts) if proposer else [],
            "waiting_proposals": proposer.waiting if proposer else 0,
            "snapshot_put_off": self._broker.snapshot_put_off,
            "store_live_bytes": self.storage.use.live_bytes,
            "store_capacity_bytes": self.storage.use.capacity_bytes,
            "disk_free_bytes": self.storage.use.disk_free_bytes,
            "storage_full": self.storage.full(),
        }

    def write_backup(self, path: str) -> "concurrent.futures.Future[int]":
        """Write a consistent copy of the store (snapshot format) to `path`; its applied index.

        Pinned on the tick thread, like a snapshot, and copied on a thread of
        its own while applies go on.
        """
        done: concurrent.futures.Future[int] = concurrent.futures.Future()

        def started(pinning: "concurrent.futures.Future[SnapshotJob]") -> None:
            if pinning.exception() is not None:
                done.set_exception(pinning.exception())
                return
            pinning.result().future.add_done_callback(lambda job: _copy_outcome(job, done))

        self.on_tick_thread(lambda: self._broker.codec.start(path, None)).add_done_callback(started)
        return done

    def force_snapshot(self) -> None:
        self._broker.forceLogCompaction()

    def close(self) -> None:
        """Stop the tick thread, close the journal and the store."""
        self._broker.destroy_synchronous()
        self._broker.codec.stop_jobs()
        self._flusher.stop()
        self.holder.close()


def _copy_outcome(
    source: "concurrent.futures.Future[T]", target: "concurrent.futures.Future[T]"
) -> None:
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
