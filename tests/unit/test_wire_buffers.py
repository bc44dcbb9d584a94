"""cluster.wire_buffers: pysyncobj's framing over buffers that are consumed in place."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from cluster.wire_buffers import install_linear_buffers, pending_send_bytes
from cluster.wire_guard import install_wire_guard

# Never what a test asserts: only how long to wait before failing.
GUARD_S = 20.0


@pytest.fixture
def link() -> Iterator[tuple[TcpConnection, TcpConnection, list[Any], Any]]:
    """Two pysyncobj connections over a socket pair with small kernel buffers."""
    install_wire_guard()
    left, right = socket.socketpair()
    for sock in (left, right):
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 14)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
    poller = createPoller("poll")
    received: list[Any] = []
    sender = TcpConnection(poller, socket=left, timeout=GUARD_S, recvBufferSize=1 << 14)
    receiver = TcpConnection(
        poller, onMessageReceived=received.append, socket=right, timeout=GUARD_S
    )
    yield sender, receiver, received, poller
    sender.disconnect()
    receiver.disconnect()


def _poll_until(poller: Any, done: Any) -> None:
    deadline = time.monotonic() + GUARD_S
    while not done() and time.monotonic() < deadline:
        poller.poll(0.01)


def test_install_is_idempotent_and_comes_with_the_guard() -> None:
    install_wire_guard()
    send = TcpConnection.send
    install_linear_buffers()
    assert TcpConnection.send is send
    assert getattr(TcpConnection, "_raftmq_linear_buffers", False)


def test_large_and_small_messages_arrive_whole_and_in_order(
    link: tuple[TcpConnection, TcpConnection, list[Any], Any],
) -> None:
    sender, _, received, poller = link
    messages: list[Any] = [{"type": "append_entries", "n": i} for i in range(200)]
    messages.insert(50, {"type": "append_entries", "entries": [(os.urandom(3 << 20), 7, 1)]})
    messages.insert(120, {"type": "append_entries", "entries": [(os.urandom(1 << 20), 8, 1)]})
    for message in messages:
        sender.send(message)
    # The kernel took a few KiB; the rest waits in the connection.
    assert pending_send_bytes(sender) > 3 << 20
    _poll_until(poller, lambda: len(received) == len(messages))
    assert received == messages
    assert pending_send_bytes(sender) == 0


def test_a_partial_send_consumes_the_queue_in_place(
    link: tuple[TcpConnection, TcpConnection, list[Any], Any],
) -> None:
    """pysyncobj replaced its bytes buffer by a copy of the rest after every send."""
    sender, _, received, poller = link
    sender.send({"type": "keepalive"})  # an accepted link takes large messages after one
    _poll_until(poller, lambda: len(received) == 1)
    sender.send({"type": "append_entries", "entries": [(os.urandom(2 << 20), 9, 1)]})
    queue = sender._TcpConnection__writeBuffer
    before = len(queue)
    _poll_until(poller, lambda: len(queue) < before)
    assert sender._TcpConnection__writeBuffer is queue
    assert 0 < len(queue) < before
    _poll_until(poller, lambda: len(received) == 2)
    assert received[1]["entries"][0][1] == 9


def test_a_message_that_does_not_decode_ends_the_link(
    link: tuple[TcpConnection, TcpConnection, list[Any], Any],
) -> None:
    sender, receiver, received, poller = link
    raw = sender._TcpConnection__socket
    raw.send(b"\x05\x00\x00\x00garbage")
    _poll_until(poller, lambda: receiver.state == CONNECTION_STATE.DISCONNECTED)
    assert receiver.state == CONNECTION_STATE.DISCONNECTED
    assert received == []
