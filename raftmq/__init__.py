"""raftmq: a clustered message broker replicated through Raft (client side).

``Client``/``AsyncClient`` talk to any node and fail over on their own; see
:mod:`raftmq.client` for the retry rules.
"""

from raftmq.client import AckResult, AsyncClient, Client, Message, NackResult, ReceivedMessage
from raftmq.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    ExchangeNotFound,
    Forbidden,
    NotFound,
    QueueNotFound,
    RaftMQError,
    StorageFull,
    StreamNotFound,
    Unauthorized,
    Unavailable,
)
from raftmq.pubsub import AsyncSubscription, Routed, StreamBatch, StreamRecord, Subscription

__all__ = [
    "AckResult",
    "AsyncClient",
    "AsyncSubscription",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "ExchangeNotFound",
    "Forbidden",
    "Message",
    "NackResult",
    "NotFound",
    "QueueNotFound",
    "RaftMQError",
    "ReceivedMessage",
    "Routed",
    "StorageFull",
    "StreamBatch",
    "StreamNotFound",
    "StreamRecord",
    "Subscription",
    "Unauthorized",
    "Unavailable",
]

__version__ = "0.1.0"
