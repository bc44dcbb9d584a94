"""Entry point of one node: builds storage and Raft, then the HTTP app, and serves.

`python -m node --id n1 ...` or `raftmq node --id n1 ...`.
"""

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import ssl
import sys

import uvloop
from aiohttp import web

from cluster.errors import ClusterError
from cluster.raft_node import RaftNode
from cluster.snapshot import restore_backup
from node import logs
from node.app import STOP, make_app
from node.config import NodeConfig, parse_config
from node.membership import join_cluster, load_peers, save_peers, secret_proof, was_removed
from node.tls import TlsConfigError, peer_context, server_context

logger = logging.getLogger("raftmq.node")

# Time in-flight requests get to finish after SIGTERM.
SHUTDOWN_GRACE_S = 5.0
# A stopping leader waits this long at most for a follower to take over.
HANDOVER_WAIT_S = 2.0
# After refusing a body (413, 408), the rest of it is read and dropped for this
# long before the connection is closed, so the client sees the answer, not a reset.
LINGER_S = 2.0
# Allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


async def _initial_peers(config: NodeConfig, peer_ssl: ssl.SSLContext | None) -> NodeConfig:
    """Members to start with: remembered ones on restart, the cluster's on a first join."""
    first_start = not os.path.exists(os.path.join(config.raft.data_dir, "raft", "journal.bin"))
    if config.join and first_start:
        member = {
            "id": config.node_id,
            "raft": config.raft.raft_address,
            "http": config.advertise_http,
        }
        if config.raft.cluster_secret is not None:
            member["secret_proof"] = secret_proof(config.raft.cluster_secret, member)
        logger.info("joining the cluster at %s", config.join)
        members = await join_cluster(config.join, member, ssl_context=peer_ssl)
    else:
        members = load_peers(config.raft.data_dir) or list(config.raft.peers)
    peers = tuple(m for m in members if m != config.raft.raft_address)
    os.makedirs(config.raft.data_dir, exist_ok=True)
    save_peers(config.raft.data_dir, [config.raft.raft_address, *peers])
    return dataclasses.replace(config, raft=dataclasses.replace(config.raft, peers=peers))


async def serve(
    config: NodeConfig,
    server_ssl: ssl.SSLContext | None = None,
    peer_ssl: ssl.SSLContext | None = None,
) -> None:
    config = await _initial_peers(config, peer_ssl)
    raft = RaftNode(config.raft)
    logs.TERM.set(lambda: int(raft.status()["term"]))
    app = make_app(raft, config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=config.limits.idle_timeout_s,
        lingering_time=LINGER_S,
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        config.http_host,
        config.http_port,
        shutdown_timeout=SHUTDOWN_GRACE_S,
        ssl_context=server_ssl,
        reuse_address=True,
    )
    await site.start()
    logger.info(
        "node %s serving %s %s (advertised %s), raft %s, peers %s",
        config.node_id,
        "https" if server_ssl is not None else "http",
        f"{config.http_host}:{config.http_port}",
        config.advertise_http,
        config.raft.raft_address,
        ",".join(config.raft.peers) or "-",
    )
    stop = app[STOP]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        await _hand_over_leadership(raft)
        logger.info("stopping: finishing in-flight requests")
    finally:
        await runner.cleanup()
        logs.TERM.set(None)
        raft.close()
        logger.info("node %s stopped", config.node_id)


async def _hand_over_leadership(raft: RaftNode) -> None:
    """A leader that is stopping hands the leadership over first.

    Otherwise it stays the leader while it finishes its in-flight requests (up
    to SHUTDOWN_GRACE_S) and takes no new ones: writes would stop for those
    seconds, until it exits and the others' election timeout passes.
    """
    if not raft.is_leader() or len(raft.members()) < 2:
        return
    try:
        await raft.transfer_leadership(wait_s=HANDOVER_WAIT_S)
    except (ClusterError, TimeoutError) as exc:
        logger.warning("stopping without handing the leadership over: %s", exc)


def relax_garbage_collection() -> None:
    """Collect reference cycles in fewer, larger rounds; never walk the imported modules.

    A node makes several short-lived containers per message (the command, its
    result, the frames), nearly all freed by reference counting. CPython's
    default thresholds set off a collection every 700 such allocations and
    every tenth of those also walks the older generation: about 4 % of a
    node's CPU during a publish benchmark. Freezing takes what exists before
    serving (the modules, the configuration) out of every later collection.
    Cyclic garbage, such as an exception's traceback, is still collected.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logs.setup_logging(config.log_format, config.log_level, config.node_id)
    try:
        server_ssl = server_context(config)
        peer_ssl = peer_context(config) if config.join or config.tls_ca else None
    except TlsConfigError as exc:
        logger.error("%s", exc)
        return 2
    if was_removed(config.raft.data_dir):
        logger.error(
            "%s was removed from its cluster; to add this machine again, start it with an "
            "empty data dir and --join URL",
            config.raft.data_dir,
        )
        return 2
    state_dir = os.path.join(config.raft.data_dir, "state")
    if config.restore and os.path.exists(os.path.join(state_dir, "data.mdb")):
        logger.warning("%s already holds state: --restore ignored", config.raft.data_dir)
    elif config.restore:
        try:
            applied = restore_backup(config.restore, state_dir, map_size=config.raft.lmdb_map_size)
        except (OSError, ValueError) as exc:
            logger.error("cannot restore %s: %s", config.restore, exc)
            return 2
        logger.info("restored %s (state at applied index %d)", config.restore, applied)
    relax_garbage_collection()
    uvloop.run(serve(config, server_ssl, peer_ssl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
