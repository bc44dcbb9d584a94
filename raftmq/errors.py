"""Exceptions raised by the raftmq client.

Every server error body is ``{"error": {"code", "message"}}``; the client maps the
status onto a small hierarchy so callers can catch what they can act on
(a missing queue, a conflicting declaration, a cluster that never answered)
without parsing strings.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "ExchangeNotFound",
    "Forbidden",
    "NotFound",
    "QueueNotFound",
    "RaftMQError",
    "StorageFull",
    "StreamNotFound",
    "Unauthorized",
    "Unavailable",
]


class RaftMQError(Exception):
    """Base class: ``status`` is the HTTP status (None when no response arrived)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class NotFound(RaftMQError):
    """404: the queue, exchange, stream or binding does not exist (or was deleted)."""


class QueueNotFound(NotFound):
    """404: the queue does not exist (or was deleted)."""


class ExchangeNotFound(NotFound):
    """404: the exchange does not exist (or was deleted)."""


class StreamNotFound(NotFound):
    """404: the stream does not exist (or was deleted)."""


class Conflict(RaftMQError):
    """409: e.g. the queue exists with another config, or it is full."""


class BadRequest(RaftMQError):
    """400/413/other 4xx: the request itself is wrong; retrying cannot help."""


class Unauthorized(RaftMQError):
    """401: no token, or one the cluster does not know (users exist)."""


class Forbidden(RaftMQError):
    """403: the token's user lacks the permission for this call."""


class StorageFull(RaftMQError):
    """507: the leader's store or disk is nearly full; publishes and appends are refused.

    Not retried by the client: it lasts until consumers, purges or deletes (which
    are still served) or the operator make room. ``raftmq_storage_full`` says when.
    """


class Unavailable(RaftMQError):
    """The retry deadline passed without a usable answer; ``last_error`` says why."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "unavailable",
        last_error: BaseException | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.last_error = last_error


class ConnectionFailed(Unavailable):
    """No node answered at all (every attempt failed to connect or timed out).

    A subclass of :class:`Unavailable` so ``except Unavailable`` covers both; kept
    apart because "nothing is listening" usually means the cluster is not running.
    """

    def __init__(
        self,
        message: str,
        *,
        urls: list[str] | None = None,
        last_error: BaseException | None = None,
    ) -> None:
        super().__init__(message, code="connection_failed", last_error=last_error)
        self.urls = list(urls or [])
