"""Concurrent producers and consumers for cluster tests, and the exactly-once check."""

import threading
from collections import Counter
from dataclasses import dataclass, field

from raftmq import Client, RaftMQError


@dataclass
class ProducerLog:
    attempted: set[str] = field(default_factory=set)
    acked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def reached(self, count: int) -> bool:
        return self.acked_count() >= count


def produce(
    urls: list[str], queue: str, name: str, log: ProducerLog, stop: threading.Event, limit: int
) -> None:
    """Publish with explicit ids until told to stop; record every outcome."""
    with Client(urls, retry_deadline=30.0) as client:
        for n in range(limit):
            if stop.is_set():
                return
            message_id = f"{name}-{n}"
            with log.lock:
                log.attempted.add(message_id)
            try:
                client.publish(queue, f"body of {message_id}", id=message_id)
            except RaftMQError:
                with log.lock:
                    log.failed.append(message_id)
                continue
            with log.lock:
                log.acked.append(message_id)


def drain(urls: list[str], queue: str) -> list[str]:
    """Receive and ack until the queue is empty; return every id received, in order."""
    received: list[str] = []
    with Client(urls) as client:
        while True:
            batch = client.receive(queue, max=500, wait=0.5)
            if not batch:
                if client.queue(queue)["total"] == 0:
                    return received
                continue
            received.extend(m.id for m in batch)
            client.ack(queue, [m.receipt for m in batch])


def assert_exactly_once(acked: list[str], attempted: set[str], received: list[str]) -> None:
    duplicates = {i for i, count in Counter(received).items() if count > 1}
    assert not duplicates, f"received twice: {sorted(duplicates)[:20]}"
    lost = set(acked) - set(received)
    assert not lost, f"acknowledged but never received: {sorted(lost)[:20]}"
    unexpected = set(received) - attempted
    assert not unexpected, f"received but never published: {sorted(unexpected)[:20]}"


@dataclass
class ConsumerLog:
    received: list[str] = field(default_factory=list)
    ack_failed: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def consume(urls: list[str], queue: str, log: ConsumerLog, stop: threading.Event) -> None:
    """Receive and ack until told to stop, recording each delivery and each failed ack.

    An ack that fails, or that answers a receipt as stale (its lease ended before
    the ack was applied: a node stopping holds requests for a few seconds), leaves
    the message to be delivered again: both count as redeliverable.
    """
    with Client(urls, retry_deadline=30.0) as client:
        while not stop.is_set():
            try:
                batch = client.receive(queue, max=100, wait=0.2)
            except RaftMQError:
                continue
            with log.lock:
                log.received.extend(m.id for m in batch)
            if not batch:
                continue
            try:
                result = client.ack(queue, [m.receipt for m in batch])
            except RaftMQError:
                with log.lock:
                    log.ack_failed.update(m.id for m in batch)
                continue
            if result.stale:
                stale = set(result.stale)
                with log.lock:
                    log.ack_failed.update(m.id for m in batch if m.receipt in stale)


def assert_none_lost(
    acked: list[str], attempted: set[str], received: list[str], redeliverable: set[str]
) -> None:
    """Every acknowledged publish received, nothing unexpected, duplicates only after a bad ack."""
    lost = set(acked) - set(received)
    assert not lost, f"acknowledged but never received: {sorted(lost)[:20]}"
    unexpected = set(received) - attempted
    assert not unexpected, f"received but never published: {sorted(unexpected)[:20]}"
    duplicates = {i for i, count in Counter(received).items() if count > 1}
    assert duplicates <= redeliverable, f"received twice: {sorted(duplicates - redeliverable)[:20]}"
