"""Raft settings with documented defaults; every timeout and size is named here."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RaftSettings:
    """How this node runs Raft. Times in seconds, sizes in bytes."""

    raft_address: str
    peers: tuple[str, ...]
    data_dir: str
    fsync: bool = True
    cluster_secret: str | None = None
    # Elections: a follower waits a random time in [min, max] without heartbeats.
    # 4-8 heartbeat periods: a dead leader is replaced in ~0.2-0.4 s. A follower
    # whose tick thread was starved reads pending heartbeats before it calls an
    # election (cluster.raft_fixes.ReadBeforeElection).
    election_timeout_min_s: float = 0.2
    election_timeout_max_s: float = 0.4
    # Heartbeat / append-entries period of the leader.
    append_entries_period_s: float = 0.05
    # Timer resolution of the tick thread (network events wake it sooner).
    tick_period_s: float = 0.02
    # An isolated leader steps down after this long without a majority answering.
    leader_fallback_s: float = 1.5
    connection_timeout_s: float = 2.0
    connection_retry_s: float = 0.5
    # Compact the Raft log into a snapshot after this many entries or this long...
    snapshot_entries: int = 20000
    snapshot_interval_s: float = 600.0
    # ...but, once the store is larger than snapshot_small_store_bytes, only when
    # the journal holds at least snapshot_log_ratio times the store's size. A
    # snapshot copies the whole store: taken every N entries its cost would grow
    # with the backlog (quadratic write volume as a queue fills); taken when the
    # log has grown by a fixed fraction of the store, it stays a bounded multiple
    # of what was written (the Raft dissertation's rule, section 5.1.3). Disk use
    # stays below store + snapshot + ratio x store. 0 turns the rule off.
    snapshot_log_ratio: float = 1.0
    snapshot_small_store_bytes: int = 64 << 20
    # Size of one snapshot chunk sent to a follower that fell behind.
    snapshot_chunk_bytes: int = 1 << 20
    append_entries_batch_bytes: int = 1 << 20
    # Socket buffers of the Raft connections. pysyncobj's 64 KiB send buffer (which
    # the kernel doubles, and which turns its autotuning off) splits an
    # append-entries of a few hundred KiB into sends that each wait for the poll
    # to report the socket writable again. The receive size is also the size of
    # one read, and Python allocates that much per read: above 128 KiB each read
    # costs an mmap (14 us instead of 1.5 us for a small message).
    socket_send_buffer_bytes: int = 2 << 20
    socket_receive_buffer_bytes: int = 128 << 10
    # A proposal not answered by then is reported as unknown_outcome.
    proposal_timeout_s: float = 5.0
    # At most this many commands per Raft entry (group commit), and this many waiting.
    max_commands_per_entry: int = 2000
    # ...and this many bytes of commands, unless a single command is larger: one
    # entry is pickled, journaled and sent by the tick thread in one go.
    max_entry_bytes: int = 8 << 20
    max_pending_commands: int = 50000
    # The store's capacity (LMDB map size), and the free disk kept besides room
    # for a snapshot; near either, publishes are refused (cluster.storage_guard).
    lmdb_map_size: int = 16 << 30
    min_free_disk_bytes: int = 512 << 20
    storage_check_period_s: float = 1.0
    # The store's write-back is started this often (cluster.store_holder.StoreFlusher).
    store_flush_period_s: float = 0.2
    # A snapshot copy is synced to disk every this many bytes, and paced to at most
    # this many bytes per second, so the Raft journal's fdatasyncs never queue
    # behind gigabytes of snapshot data (cluster.snapshot.SnapshotJob).
    snapshot_sync_bytes: int = 32 << 20
    snapshot_copy_bytes_per_s: int = 200 << 20
