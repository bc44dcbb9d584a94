"""Raft messages leave as stored zlib streams, both framings are still read, and the
Raft sockets hold such a message whole."""

from __future__ import annotations

import os
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysyncobj.pickle as raft_pickle
import pytest
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import TcpConnection

from cluster.settings import RaftSettings
from cluster.snapshot import SnapshotCodec
from cluster.state_machine import make_conf
from cluster.store_holder import StoreHolder
from cluster.wire_framing import install_stored_framing

MESSAGE = {"type": "append_entries", "entries": [(os.urandom(20000), 7, 3)], "term": 3}


@pytest.fixture
def pair() -> Iterator[tuple[TcpConnection, socket.socket, list[object], Any]]:
    """A pysyncobj connection on one end of a socket pair, the raw peer on the other."""
    install_stored_framing()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    received: list[object] = []
    poller = createPoller("poll")
    connection = TcpConnection(poller, onMessageReceived=received.append, socket=ours)
    yield connection, theirs, received, poller
    connection.disconnect()
    theirs.close()


def _read_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("i", sock.recv(4, socket.MSG_WAITALL))
    return sock.recv(length, socket.MSG_WAITALL)


def test_a_message_is_sent_as_a_stored_zlib_stream(
    pair: tuple[TcpConnection, socket.socket, list[object], Any],
) -> None:
    connection, peer, _, _ = pair
    connection.send(MESSAGE)
    frame = _read_frame(peer)
    # Level 0 of incompressible data costs no deflate work and a few bytes of framing;
    # level 3 (pysyncobj's own) spends it and ends up about as long.
    raw = raft_pickle.dumps(MESSAGE)
    assert frame == zlib.compress(raw, 0)
    assert frame != zlib.compress(raw, 3)
    assert raft_pickle.loads(zlib.decompress(frame)) == MESSAGE


@pytest.mark.parametrize("level", [0, 3, 9])
def test_frames_of_any_level_are_read(
    pair: tuple[TcpConnection, socket.socket, list[object], Any], level: int
) -> None:
    """A node that still compresses (before a rolling upgrade) is understood."""
    _, peer, received, poller = pair
    data = zlib.compress(raft_pickle.dumps(MESSAGE), level)
    peer.sendall(struct.pack("i", len(data)) + data)
    for _ in range(100):
        poller.poll(0.05)
        if received:
            break
    assert received == [MESSAGE]


def test_install_is_idempotent() -> None:
    import pysyncobj.tcp_connection as module

    install_stored_framing()
    shim = module.zlib
    install_stored_framing()
    assert module.zlib is shim
    assert shim.compress(b"a" * 1000, 3) == zlib.compress(b"a" * 1000, 0)


def test_raft_connections_get_buffers_that_hold_an_uncompressed_append_entries(
    tmp_path: Path,
) -> None:
    """Uncompressed frames of a few hundred KiB must not wait for the poll between
    partial sends (pysyncobj's 64 KiB send buffer); reads stay at most 128 KiB,
    where CPython's per-read allocation is still cheap."""
    settings = RaftSettings(raft_address="127.0.0.1:1", peers=(), data_dir=str(tmp_path))
    holder = StoreHolder(str(tmp_path / "state"), map_size=64 << 20, sync=False)
    try:
        conf = make_conf(settings, SnapshotCodec(holder, str(tmp_path / "tmp")), str(tmp_path))
    finally:
        holder.close()
    assert conf.sendBufferSize >= settings.append_entries_batch_bytes
    assert conf.recvBufferSize <= 128 << 10
