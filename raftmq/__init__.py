"""raftmq: a clustered message broker replicated through Raft (client side).

``Client``/``AsyncClient`` talk to any node and fail over on their own; see
:mod:`raftmq.client` for the retry rules.
"""

from raftmq.client import AckResult, AsyncClient, Client, Message, NackResult, ReceivedMessage
from raftmq.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    QueueNotFound,
    RaftMQError,
    Unavailable,
)

__all__ = [
    "AckResult",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Message",
    "NackResult",
    "QueueNotFound",
    "RaftMQError",
    "ReceivedMessage",
    "Unavailable",
]

__version__ = "0.1.0"
