"""Raft messages leave uncompressed (zlib level 0), read as before.

pysyncobj compresses every message it sends with zlib level 3. For an
append-entries of 256 messages of 256 bytes that costs the leader's tick thread
about 0.2 ms per follower; when the bodies are already compressed or encrypted it
costs about 2 ms per follower per 100 KB and saves nothing, and each follower
pays a quarter of that again to inflate. The leader's tick thread is the
cluster's busiest, and the link between nodes is a LAN or loopback.

Level 0 still produces a zlib stream (stored blocks: a copy and an adler32), so
a node with this change and one without it read each other's messages: a
rolling upgrade needs no flag day.
"""

from __future__ import annotations

import zlib
from typing import Final

import pysyncobj.tcp_connection

__all__ = ["WIRE_ZLIB_LEVEL", "install_stored_framing"]

WIRE_ZLIB_LEVEL: Final = 0


class _StoredZlib:
    """Stands in for the ``zlib`` module inside pysyncobj.tcp_connection only."""

    @staticmethod
    def compress(data: bytes, level: int = -1) -> bytes:
        return zlib.compress(data, WIRE_ZLIB_LEVEL)

    decompress = staticmethod(zlib.decompress)


def install_stored_framing() -> None:
    """Make pysyncobj's TcpConnection send stored zlib streams (idempotent)."""
    module = pysyncobj.tcp_connection
    if not isinstance(module.zlib, _StoredZlib):
        module.zlib = _StoredZlib()
