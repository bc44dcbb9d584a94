"""The first-message bound of cluster.wire_guard: accepted connections only.

A node restarted behind the leader dials it when its own address sorts higher
(pysyncobj: the larger address connects), and the first message it reads there
is the leader's catch-up append-entries, far over the bound. Were dialed
connections bounded too, that node would be cut off before every catch-up and
never rejoin (a rolling restart failed this way).
"""

import socket
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj.pickle import dumps
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from cluster.wire_guard import UNTRUSTED_BUFFER_BYTES, install_wire_guard

# Never what a test asserts: only how long to wait before failing.
GUARD_S = 10.0
LARGE = {"type": "append_entries", "entries": "x" * (4 * UNTRUSTED_BUFFER_BYTES)}


def _frame(message: Any) -> bytes:
    data = zlib.compress(dumps(message), 0)
    return struct.pack("i", len(data)) + data


@pytest.fixture
def server() -> Iterator[socket.socket]:
    install_wire_guard()
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


def _poll_until(poller: Any, done: Any) -> None:
    deadline = time.monotonic() + GUARD_S
    while not done() and time.monotonic() < deadline:
        poller.poll(0.01)


def test_a_dialed_connection_reads_a_large_first_message(server: socket.socket) -> None:
    poller = createPoller("auto")
    received: list[Any] = []
    connection = TcpConnection(
        poller, onMessageReceived=received.append, timeout=GUARD_S, recvBufferSize=1 << 17
    )
    assert connection.connect("127.0.0.1", server.getsockname()[1])
    peer, _ = server.accept()
    with peer:
        peer.sendall(_frame(LARGE))
        _poll_until(poller, lambda: received or connection.state == CONNECTION_STATE.DISCONNECTED)
    assert received == [LARGE]
    connection.disconnect()


def test_an_accepted_connection_is_cut_off_by_a_large_first_message(
    server: socket.socket,
) -> None:
    poller = createPoller("auto")
    received: list[Any] = []
    stranger = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    accepted.setblocking(False)
    connection = TcpConnection(
        poller,
        onMessageReceived=received.append,
        socket=accepted,
        timeout=GUARD_S,
        recvBufferSize=1 << 17,
    )
    with stranger:
        stranger.sendall(_frame(LARGE))
        _poll_until(poller, lambda: connection.state == CONNECTION_STATE.DISCONNECTED)
    assert connection.state == CONNECTION_STATE.DISCONNECTED
    assert received == []
