"""The Raft node as node/ sees it: propose, read, status, wake-ups."""

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from cluster.errors import NoLeader, NotLeader
from cluster.proposer import Proposer
from cluster.settings import RaftSettings
from cluster.state_machine import ReplicatedBroker
from cluster.store_holder import StoreHolder
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
        self.leader_changes = 0
        self._broker = ReplicatedBroker(settings, self.holder, self._applied)
        self._proposer: Proposer | None = None

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the proposer to the event loop that will await proposals."""
        self._proposer = Proposer(
            lambda payload, callback: self._broker.apply_batch(payload, callback=callback),
            loop,
            timeout_s=self.settings.proposal_timeout_s,
            max_per_entry=self.settings.max_commands_per_entry,
            max_pending=self.settings.max_pending_commands,
        )

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
        if self.is_leader():
            return
        leader = self.leader_raft()
        if leader is None:
            raise NoLeader("no leader is known; an election may be in progress")
        raise NotLeader(leader)

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

    def force_snapshot(self) -> None:
        self._broker.forceLogCompaction()

    def close(self) -> None:
        """Stop the tick thread, close the journal and the store."""
        self._broker.destroy_synchronous()
        self.holder.close()
