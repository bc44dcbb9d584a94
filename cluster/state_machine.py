"""The replicated state machine: one replicated method whose body is one call into storage."""

import logging
import os
from collections.abc import Callable
from typing import Any

import orjson
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.syncobj import _RAFT_STATE

from cluster.journal import install_journal, journal_of
from cluster.raft_fixes import (
    AcknowledgeOncePerTick,
    CommitRidesOnNextMessage,
    KeepPeerLinksAlive,
    LeaderFlushesInParallel,
    LeaderRefusesForwardedCommands,
    PacedCatchUp,
    PipelinedReplication,
    PreVote,
    ReadBeforeElection,
)
from cluster.settings import RaftSettings
from cluster.snapshot import BackgroundSerializer, SnapshotCodec, snapshot_due
from cluster.store_holder import StoreHolder
from cluster.transport import FlushingTransport
from cluster.wire_framing import install_stored_framing
from cluster.wire_guard import install_wire_guard

logger = logging.getLogger(__name__)

# Called on the tick thread after each applied entry with its commands and results.
AppliedListener = Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]

# Exit status of a node that met a storage failure it cannot apply around.
EXIT_STORAGE_FAILURE = 70


def make_conf(settings: RaftSettings, codec: SnapshotCodec, raft_dir: str) -> Any:
    """SyncObjConf from our settings; see RaftSettings for the meaning of each."""
    return SyncObjConf(
        journalFile=os.path.join(raft_dir, "journal.bin"),
        fullDumpFile=os.path.join(raft_dir, "snapshot.bin"),
        serializer=codec.serialize,
        deserializer=codec.deserialize,
        password=settings.cluster_secret,
        autoTick=True,
        autoTickPeriod=settings.tick_period_s,
        # Unbatched mode sends append-entries as soon as a command is queued and
        # wakes the tick's poll through a pipe, so a lone publish is not held
        # for a tick; group commit happens one level up, in the Proposer.
        appendEntriesUseBatch=False,
        appendEntriesPeriod=settings.append_entries_period_s,
        appendEntriesBatchSizeBytes=settings.append_entries_batch_bytes,
        sendBufferSize=settings.socket_send_buffer_bytes,
        recvBufferSize=settings.socket_receive_buffer_bytes,
        raftMinTimeout=settings.election_timeout_min_s,
        raftMaxTimeout=settings.election_timeout_max_s,
        leaderFallbackTimeout=settings.leader_fallback_s,
        connectionTimeout=settings.connection_timeout_s,
        connectionRetryTime=settings.connection_retry_s,
        logCompactionMinEntries=settings.snapshot_entries,
        logCompactionMinTime=settings.snapshot_interval_s,
        logCompactionBatchSize=settings.snapshot_chunk_bytes,
        useFork=False,
        dynamicMembershipChange=True,
        commandsWaitLeader=True,
    )


class ReplicatedBroker(
    AcknowledgeOncePerTick,
    LeaderRefusesForwardedCommands,
    KeepPeerLinksAlive,
    ReadBeforeElection,
    PreVote,
    LeaderFlushesInParallel,
    CommitRidesOnNextMessage,
    PacedCatchUp,
    PipelinedReplication,
    SyncObj,  # type: ignore[misc]
):
    """pysyncobj's SyncObj with the broker as its state."""

    _SyncObj__serializer: Any  # pysyncobj's, replaced by a BackgroundSerializer

    def __init__(
        self,
        settings: RaftSettings,
        holder: StoreHolder,
        on_applied: AppliedListener | None = None,
    ) -> None:
        raft_dir = os.path.join(settings.data_dir, "raft")
        os.makedirs(raft_dir, exist_ok=True)
        self._holder = holder
        self._settings = settings
        self._on_applied = on_applied
        self._snapshot_forced = False
        self._snapshot_put_off = False
        self.leader_changes = 0
        self._leader_logged: tuple[str | None, int] = (None, 0)
        codec = SnapshotCodec(
            holder,
            os.path.join(settings.data_dir, "tmp"),
            sync_bytes=settings.snapshot_sync_bytes,
            bytes_per_s=settings.snapshot_copy_bytes_per_s,
        )
        self.codec = codec
        # Called from the tick thread only, once pysyncobj has created its journal.
        codec.attach_journal(lambda: journal_of(self))
        install_journal(settings.fsync)
        install_wire_guard()
        install_stored_framing()
        super().__init__(
            settings.raft_address,
            [p for p in settings.peers if p != settings.raft_address],
            conf=make_conf(settings, codec, raft_dir),
            transportClass=FlushingTransport,
        )

    def _SyncObj__onLeaderChanged(self) -> None:
        """Count leader changes seen by this node (pysyncobj has no public hook).

        pysyncobj calls it when this node starts an election and when it first
        hears from a new leader (before it records who that is: `_onTick` logs it).
        """
        self.leader_changes += 1
        if self._SyncObj__raftState == _RAFT_STATE.CANDIDATE:
            logger.warning(
                "no leader heard within the election timeout: candidate, term %d",
                self._SyncObj__raftCurrentTerm,
            )
        SyncObj._SyncObj__onLeaderChanged(self)

    def _onTick(self, timeToWait: float = 0.0) -> None:
        if not isinstance(self._SyncObj__serializer, BackgroundSerializer):
            # Swapped on the tick thread before its first log compaction can start.
            conf = self._SyncObj__conf
            self._SyncObj__serializer = BackgroundSerializer(
                self.codec, conf.fullDumpFile, conf.logCompactionBatchSize, self._snapshot_due
            )
        super()._onTick(timeToWait)
        leader = self._SyncObj__raftLeader
        seen = (None if leader is None else leader.id, self._SyncObj__raftCurrentTerm)
        if seen != self._leader_logged and seen[0] is not None:
            self._leader_logged = seen
            logger.info("leader is %s (term %d)", *seen)

    @property
    def snapshot_put_off(self) -> bool:
        """True from when a due snapshot was put off by the log ratio until one is due."""
        return self._snapshot_put_off

    def forceLogCompaction(self) -> None:
        """Snapshot on the next tick whatever the journal's size (pysyncobj's API)."""
        self._snapshot_forced = True
        super().forceLogCompaction()

    def _snapshot_due(self) -> bool:
        """Asked on the tick thread when pysyncobj's entry count or timer calls for a
        snapshot: see RaftSettings.snapshot_log_ratio."""
        journal = journal_of(self)
        if self._snapshot_forced or journal is None:
            self._snapshot_forced = False
            return True
        journal_bytes, store_bytes = journal.size_bytes, self._holder.store.used_bytes()
        due = snapshot_due(
            journal_bytes,
            store_bytes,
            ratio=self._settings.snapshot_log_ratio,
            small_store_bytes=self._settings.snapshot_small_store_bytes,
        )
        if due == self._snapshot_put_off:
            self._snapshot_put_off = not due
            logger.info(
                "snapshot %s: journal %d MiB, store %d MiB, log ratio %.2f",
                "due again" if due else "put off until the journal reaches the log ratio",
                journal_bytes >> 20,
                store_bytes >> 20,
                self._settings.snapshot_log_ratio,
            )
        return due

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, payload: bytes) -> list[dict[str, Any]] | None:
        """Apply one Raft entry: a batch of commands, in one LMDB transaction.

        Never raises: pysyncobj retries a raising apply on every tick forever.
        A storage failure (disk full, corrupt environment) is not an outcome
        the replicas can agree on, so the node stops and restarts from its
        journal instead of skipping the entry and diverging.
        """
        # pysyncobj advances raftLastApplied after this returns.
        index = int(self.raftLastApplied) + 1
        journal = journal_of(self)
        if journal is not None:
            # Single-node clusters commit without sending anything: make the
            # entry durable before its effect can be acknowledged.
            journal.flush()
        try:
            commands: list[dict[str, Any]] = orjson.loads(payload)
            # No lock: applies and the store swap run on this (tick) thread, and a
            # snapshot copy reads a pinned state; the lock keeps HTTP readers off a swap.
            results = self._holder.store.apply(index, commands)
            # RSS must not grow with the database (storage/mapped.py).
            self._holder.store.bound_mapped_pages()
        except Exception:
            logger.critical("cannot apply entry %d; stopping the node", index, exc_info=True)
            logging.shutdown()
            os._exit(EXIT_STORAGE_FAILURE)
        if results is not None and self._on_applied is not None:
            try:
                self._on_applied(commands, results)
            except Exception:
                logger.exception("apply listener failed at entry %d", index)
        return results
