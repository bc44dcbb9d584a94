"""What an ack or a nack answers, shared by the client, the channel and the batching layer."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AckResult", "NackResult"]


@dataclass(frozen=True)
class AckResult:
    """``stale`` lists receipts that no longer matched (redelivered, acked, or expired)."""

    acked: int
    stale: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NackResult:
    """``stale`` lists receipts that no longer matched (redelivered, acked, or expired)."""

    requeued: int
    stale: list[str] = field(default_factory=list)
