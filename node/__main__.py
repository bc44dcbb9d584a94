"""Entry point of one node: builds storage and Raft, then the HTTP app, and serves.

`python -m node --id n1 ...` or `raftmq node --id n1 ...`.
"""

import asyncio
import logging
import signal
import sys

import uvloop
from aiohttp import web

from cluster.raft_node import RaftNode
from node.app import make_app
from node.config import NodeConfig, parse_config

logger = logging.getLogger("raftmq.node")

# Time in-flight requests get to finish after SIGTERM.
SHUTDOWN_GRACE_S = 5.0


async def serve(config: NodeConfig) -> None:
    raft = RaftNode(config.raft)
    app = make_app(raft, config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner,
        config.http_host,
        config.http_port,
        shutdown_timeout=SHUTDOWN_GRACE_S,
        reuse_address=True,
    )
    await site.start()
    logger.info(
        "node %s serving http %s (advertised %s), raft %s, peers %s",
        config.node_id,
        f"{config.http_host}:{config.http_port}",
        config.advertise_http,
        config.raft.raft_address,
        ",".join(config.raft.peers) or "-",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        logger.info("stopping: finishing in-flight requests")
    finally:
        await runner.cleanup()
        raft.close()
        logger.info("node %s stopped", config.node_id)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s [{config.node_id}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
