"""Raft connection buffers whose cost grows with what passes through them, not its square.

pysyncobj 0.3.17's TcpConnection keeps its read and write buffers as ``bytes``:
each ``recv`` appends by concatenation, and each partial ``send`` or parsed
message slices the rest off into a new object, so a buffer that holds n bytes
costs O(n^2) bytes of copying to fill and empty. While buffers stay small that
is invisible. A follower that catches up (after a restart, or a new member
receiving the snapshot) is sent 1 MiB messages as fast as the leader can read
them; the buffers then reach tens of MiB, and both tick threads spent all
their time in those copies. On a 1 GiB store the snapshot never reached the
restarted follower, and the leader, whose tick thread also runs every commit,
answered lone publishes in 100-300 ms instead of 2 ms (cluster/DESIGN.md).

Here both buffers are ``bytearray``: appending is amortized linear, and CPython
drops a consumed prefix by moving the array's start (it copies the rest only
once that is under half the allocation, which keeps the total linear). The
framing, encryption and handshake are pysyncobj's, step for step; only the
buffer operations differ, and a send that leaves bytes queued asks the poll to
report the socket writable (pysyncobj's did not, so they waited for the next
send). ``cluster.raft_fixes.PacedCatchUp`` bounds how much the leader queues
for one follower.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Final

import pysyncobj.tcp_connection
from pysyncobj import pickle as raft_pickle
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

__all__ = ["install_linear_buffers", "pending_send_bytes"]

_LENGTH: Final = struct.Struct("i")
# pysyncobj 0.3.17's name-mangled attributes and methods (pinned in pyproject.toml).
_WRITE_BUFFER: Final = "_TcpConnection__writeBuffer"
_READ_BUFFER: Final = "_TcpConnection__readBuffer"
_SOCKET: Final = "_TcpConnection__socket"
_RECV_SIZE: Final = "_TcpConnection__recvBufferSize"
_TRY_SEND: Final = "_TcpConnection__trySendBuffer"
_POLLER: Final = "_TcpConnection__poller"
_PROCESS_CONNECTION: Final = "_TcpConnection__processConnection"
_PROCESS_SEND: Final = "_TcpConnection__processSend"
_PROCESS_READ: Final = "_TcpConnection__processRead"
_PARSE: Final = "_TcpConnection__processParseMessage"
_WOULD_BLOCK: Final = (errno.EAGAIN, errno.EWOULDBLOCK)


def _buffer(connection: Any, name: str) -> bytearray:
    """The connection's buffer `name` as a bytearray (pysyncobj resets it to bytes)."""
    buffer = getattr(connection, name)
    if type(buffer) is not bytearray:
        buffer = bytearray(buffer)
        setattr(connection, name, buffer)
    return buffer


def pending_send_bytes(connection: Any) -> int:
    """Bytes queued on `connection` that the kernel has not taken yet."""
    return len(getattr(connection, _WRITE_BUFFER))


def _send(connection: Any, message: Any) -> None:
    if connection.sendRandKey:
        message = (connection.sendRandKey, message)
    # The module's zlib, as pysyncobj's own send uses: cluster.wire_framing replaces it.
    data = pysyncobj.tcp_connection.zlib.compress(raft_pickle.dumps(message), 3)
    if connection.encryptor:
        data = connection.encryptor.encrypt_at_time(data, int(monotonic_time()))
    buffer = _buffer(connection, _WRITE_BUFFER)
    buffer += _LENGTH.pack(len(data))
    buffer += data
    getattr(connection, _TRY_SEND)()
    if buffer and connection.state == CONNECTION_STATE.CONNECTED:
        # pysyncobj asks the poll for writability only from its own write handler,
        # and stops once a write empties the queue: what a later send leaves
        # waiting went out only with the send after it.
        getattr(connection, _POLLER).subscribe(
            connection.fileno(),
            getattr(connection, _PROCESS_CONNECTION),
            POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR,
        )


def _process_send(connection: Any) -> bool:
    buffer = _buffer(connection, _WRITE_BUFFER)
    if not buffer:
        return False
    try:
        sent = getattr(connection, _SOCKET).send(buffer)
    except OSError as exc:
        if exc.errno not in _WOULD_BLOCK:
            connection.disconnect()
        return False
    if sent < 0:
        connection.disconnect()
        return False
    if sent == 0:
        return False
    del buffer[:sent]
    return True


def _process_read(connection: Any) -> bool:
    sock = getattr(connection, _SOCKET)
    try:
        incoming = sock.recv(getattr(connection, _RECV_SIZE))
    except OSError as exc:
        if exc.errno not in _WOULD_BLOCK:
            connection.disconnect()
        return False
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        connection.disconnect()
        return False
    if not incoming:
        connection.disconnect()
        return False
    _buffer(connection, _READ_BUFFER).extend(incoming)
    return True


def _process_parse_message(connection: Any) -> Any:
    buffer = _buffer(connection, _READ_BUFFER)
    if len(buffer) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buffer)
    end = _LENGTH.size + length
    if len(buffer) < end:
        return None
    with memoryview(buffer) as view:
        data = view[_LENGTH.size : end].tobytes()
    try:
        if connection.encryptor:
            timestamp = connection.encryptor.extract_timestamp(data)
            assert timestamp >= connection.recvLastTimestamp
            connection.recvLastTimestamp = timestamp
            data = connection.encryptor.decrypt(data)
        message = raft_pickle.loads(pysyncobj.tcp_connection.zlib.decompress(data))
        if connection.recvRandKey:
            rand_key, message = message
            assert rand_key == connection.recvRandKey
    except Exception:
        # As pysyncobj: a message that does not decode or authenticate ends the link.
        connection.disconnect()
        return None
    del buffer[:end]
    return message


def install_linear_buffers() -> None:
    """Replace TcpConnection's buffer handling once per process (idempotent).

    Must run before cluster.wire_guard wraps the read and parse steps.
    """
    if getattr(TcpConnection, "_raftmq_linear_buffers", False):
        return
    TcpConnection.send = _send
    setattr(TcpConnection, _PROCESS_SEND, _process_send)
    setattr(TcpConnection, _PROCESS_READ, _process_read)
    setattr(TcpConnection, _PARSE, _process_parse_message)
    TcpConnection._raftmq_linear_buffers = True
