"""A bound on what an unauthenticated Raft connection can make this node buffer.

pysyncobj's TcpConnection reads everything a socket offers into one buffer and
only then looks for a complete message, whose 4-byte length prefix it trusts:
anyone who can reach the Raft port could make the node hold gigabytes. The
first message of every accepted connection is small (with a cluster secret, the
random key exchange; without one, the sender's address), so until one message has
been parsed and accepted, such a connection may announce no message larger than
`UNTRUSTED_BUFFER_BYTES` (else it is closed), and nothing after that first
message is read before the message has been checked. After the first message
(which, with a cluster secret, proves the peer holds the secret) pysyncobj's
own behaviour applies, as it does from the start on connections this node dialed
(to a member's address; their first message may be a large append-entries).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from pysyncobj.tcp_connection import TcpConnection

from cluster.wire_buffers import install_linear_buffers

__all__ = ["UNTRUSTED_BUFFER_BYTES", "install_wire_guard"]

logger = logging.getLogger(__name__)

UNTRUSTED_BUFFER_BYTES = 64 * 1024
_LENGTH = struct.Struct("i")
# pysyncobj 0.3.17's name-mangled private methods and buffer (pinned in pyproject.toml).
_READ = "_TcpConnection__processRead"
_PARSE = "_TcpConnection__processParseMessage"
_BUFFER = "_TcpConnection__readBuffer"
_TRUSTED = "_raftmq_trusted"


def _first_message_state(connection: Any) -> str:
    """For a connection with no accepted message yet: "too_large", "complete" or "partial"."""
    buffer: bytes | bytearray = getattr(connection, _BUFFER)
    if len(buffer) < _LENGTH.size:
        return "partial"
    (announced,) = _LENGTH.unpack_from(buffer)
    if announced < 0 or announced > UNTRUSTED_BUFFER_BYTES:
        return "too_large"
    return "complete" if len(buffer) >= _LENGTH.size + announced else "partial"


def _cut_off(connection: Any) -> None:
    logger.warning(
        "closing a Raft connection that sent more than %d bytes before its first "
        "valid message (not a peer with this cluster's secret?)",
        UNTRUSTED_BUFFER_BYTES,
    )
    connection.disconnect()


def install_wire_guard() -> None:
    """Wrap TcpConnection's read and parse steps once per process (idempotent).

    The steps wrapped are cluster.wire_buffers' (installed first), so that
    installing those later cannot remove the guard.
    """
    if getattr(TcpConnection, "_raftmq_guarded", False):
        return
    install_linear_buffers()
    read: Callable[[Any], bool] = getattr(TcpConnection, _READ)
    parse: Callable[[Any], Any] = getattr(TcpConnection, _PARSE)
    close: Callable[[Any], None] = TcpConnection.disconnect
    dial: Callable[[Any, str, int], bool] = TcpConnection.connect

    def guarded_read(connection: Any) -> bool:
        more = read(connection)
        if not more or getattr(connection, _TRUSTED, False):
            return more
        state = _first_message_state(connection)
        if state == "too_large":
            _cut_off(connection)
            return False
        # Stop reading once the first message is complete, so that it is checked
        # before anything after it is buffered.
        return state == "partial"

    def guarded_parse(connection: Any) -> Any:
        trusted = getattr(connection, _TRUSTED, False)
        if not trusted and _first_message_state(connection) == "too_large":
            _cut_off(connection)
            return None
        message = parse(connection)
        if message is not None:
            setattr(connection, _TRUSTED, True)
        return message

    def disconnect(connection: Any) -> None:
        setattr(connection, _TRUSTED, False)
        close(connection)

    def connect(connection: Any, host: str, port: int) -> bool:
        # A connection this node dialed goes to a member's configured address, and
        # its first message is whatever that member sends first: after a restart,
        # the leader's catch-up append-entries, far over the limit. Only accepted
        # connections (a stranger may be behind them) are bounded.
        connected = dial(connection, host, port)
        setattr(connection, _TRUSTED, True)
        return connected

    setattr(TcpConnection, _READ, guarded_read)
    setattr(TcpConnection, _PARSE, guarded_parse)
    TcpConnection.disconnect = disconnect
    TcpConnection.connect = connect
    TcpConnection._raftmq_guarded = True
