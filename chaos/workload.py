"""Client processes through the Python client, recorded in the history; the final drain.

Each process is a thread with its own :class:`raftmq.Client` (the client is not
thread-safe) and runs one operation at a time, so its records are a sequence
the checker can reason about. The queue workload is here: a producer publishes
ids ``p{k}-{n}`` (sometimes two or three per batch); a consumer receives a few
messages with a long poll and acks them at once. The stream and fan-out
workloads (``chaos.pubsub_workload``) run on the same :class:`Workload`.

Outcome of an operation. The client fails over by itself, so one call may make
several HTTP attempts. A :class:`RecordingTransport` notes each attempt, and a
call that raised is ``fail`` only when *no* attempt could have taken effect
(connection refused, a 4xx, a 307, or a 503 the node answers before proposing
anything: ``no_leader``, ``overloaded``, ``too_many_waiters``, ``not_ready``).
Anything else (a timeout after the request was sent, a dropped connection,
``unknown_outcome``, a 5xx) makes it ``info``: it may or may not have happened.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from chaos.history import HistoryWriter, Outcome
from raftmq.client import Client, Message, ReceivedMessage, _Response, _SyncTransport
from raftmq.errors import RaftMQError

__all__ = [
    "WORKLOADS",
    "Attempt",
    "ProcessFn",
    "RecordingTransport",
    "Workload",
    "WorkloadConfig",
    "body_for",
    "classify",
    "drain",
    "receive_and_ack",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# 503 codes a node sends before it proposes anything: the request did not apply.
NOT_APPLIED_503 = frozenset({"no_leader", "overloaded", "too_many_waiters", "not_ready"})


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt of a client call, as the transport saw it."""

    url: str
    status: int | None
    code: str | None
    maybe_applied: bool


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _error_code(body: bytes) -> str | None:
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("code") or "") or None
    return None


def attempt_maybe_applied(status: int | None, code: str | None, sent: bool) -> bool:
    """Whether one attempt could have changed broker state."""
    if status is None:
        return sent
    if 300 <= status < 500:
        return False
    return not (status == 503 and code in NOT_APPLIED_503)


class RecordingTransport(_SyncTransport):
    """The client's own transport, noting every attempt (URL, status, whether it may apply).

    It subclasses the client's private transport instead of re-implementing
    the retry policy: the workload must exercise the real client, and only it
    knows which attempts it made.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[Attempt] = []

    def request(self, method: str, url: str, body: bytes | None, timeout: float) -> _Response:
        # On a reused keep-alive connection the parent writes the request, and on a
        # reset redials once; if that redial is refused it reports "not sent", yet
        # the first write may have reached a node that applied it and then died.
        conn = self._conns.get(_origin(url))
        reused = conn is not None and conn.sock is not None
        try:
            resp = super().request(method, url, body, timeout)
        except Exception as e:
            sent = reused or bool(getattr(e, "ambiguous", True))
            self.attempts.append(Attempt(_origin(url), None, "connection_error", sent))
            raise
        code = _error_code(resp.body) if resp.status >= 400 else None
        self.attempts.append(
            Attempt(
                _origin(url),
                resp.status,
                code,
                attempt_maybe_applied(resp.status, code, True),
            )
        )
        return resp


def classify(attempts: list[Attempt]) -> Outcome:
    """For a call that raised: ``fail`` when no attempt could have applied, else ``info``.

    No attempt at all means nothing was sent (the client refused the call
    itself), which is a ``fail`` too.
    """
    return "info" if any(a.maybe_applied for a in attempts) else "fail"


class _Process:
    """One sequential client process: runs calls and writes invoke/complete records."""

    def __init__(
        self, name: str, urls: list[str], history: HistoryWriter, timeout: float, deadline: float
    ) -> None:
        self.name = name
        self.history = history
        self.client = Client(urls, timeout=timeout, retry_deadline=deadline)
        self.transport = RecordingTransport()
        self.client._transport = self.transport

    def call(
        self,
        op: str,
        fn: Callable[[], T],
        invoke_fields: dict[str, Any],
        ok_fields: Callable[[T], dict[str, Any]],
    ) -> tuple[Outcome, T | None]:
        self.transport.attempts = []
        op_id = self.history.invoke(self.name, op, **invoke_fields)
        try:
            value = fn()
        except Exception as e:
            attempts = self.transport.attempts
            outcome = classify(attempts)
            if not isinstance(e, RaftMQError):
                log.warning("%s: %s raised %r", self.name, op, e)
            self.history.complete(
                op_id,
                self.name,
                op,
                outcome,
                node=attempts[-1].url if attempts else None,
                error=f"{type(e).__name__}: {e}"[:300],
                attempts=len(attempts),
            )
            return outcome, None
        attempts = self.transport.attempts
        self.history.complete(
            op_id,
            self.name,
            op,
            "ok",
            node=attempts[-1].url if attempts else None,
            attempts=len(attempts),
            **ok_fields(value),
        )
        return "ok", value

    def close(self) -> None:
        self.client.close()


def _returned_ids(sent: list[str], got: list[str]) -> dict[str, Any]:
    """Ids the server answered, recorded only when they differ from the ones sent."""
    return {} if list(got) == sent else {"returned": list(got)}


def body_for(msg_id: str) -> str:
    """The body a message with ``msg_id`` carries (checked on receipt)."""
    return f"chaos message {msg_id}"


def receive_and_ack(
    proc: _Process,
    queue: str,
    max_messages: int,
    wait: float,
    visibility_timeout: float,
    ack: bool = True,
) -> tuple[Outcome, int]:
    """One receive and, if it returned messages (and ``ack``), one ack of all of them."""

    def received_fields(messages: list[ReceivedMessage]) -> dict[str, Any]:
        bad = [m.id for m in messages if m.body != body_for(m.id)]
        fields: dict[str, Any] = {"messages": [[m.id, m.deliveries] for m in messages]}
        if bad:
            fields["bad_bodies"] = bad
        return fields

    receive: Callable[[], list[ReceivedMessage]] = functools.partial(
        proc.client.receive,
        queue,
        max=max_messages,
        wait=wait,
        visibility_timeout=visibility_timeout,
    )
    result = proc.call(
        "receive",
        receive,
        {
            "queue": queue,
            "max": max_messages,
            "wait": wait,
            "visibility_timeout": visibility_timeout,
        },
        received_fields,
    )
    outcome, messages = result
    if outcome != "ok" or not messages:
        return outcome, 0
    if not ack:
        return outcome, len(messages)
    by_receipt = {m.receipt: (m.id, m.deliveries) for m in messages}
    proc.call(
        "ack",
        lambda: proc.client.ack(queue, list(by_receipt)),
        {"queue": queue, "pairs": [list(p) for p in by_receipt.values()]},
        lambda res: {
            "acked": res.acked,
            "stale": [list(by_receipt[r]) for r in res.stale if r in by_receipt],
        },
    )
    return outcome, len(messages)


def _patience(attempt_s: float, most: float, k: int, count: int) -> float:
    """Retry deadline of process ``k``: from ``most / count`` to ``most`` attempt lengths.

    Patient clients ride out most faults through the client's failover; impatient
    ones (a deadline shorter than one attempt) give up mid-fault and leave unknown
    outcomes for the checker to judge. Measured in attempts because a receive's
    attempt lasts its long poll too: in seconds, every consumer would be impatient.
    """
    return attempt_s * most * (k + 1) / max(1, count)


WORKLOADS = ("queue", "stream", "fanout")


@dataclass
class WorkloadConfig:
    """Shape of the load; rates are per whole workload."""

    queue: str = "chaos"
    producers: int = 3
    consumers: int = 3
    publish_rate: float = 60.0  # messages per second, all producers together
    visibility_timeout: float = 10.0
    receive_wait: float = 1.0
    # Short on purpose: a client that waits out every fault never sees an unknown
    # outcome, and unknown outcomes are where brokers lose or invent messages.
    client_timeout: float = 1.0
    # The most patient process retries for this many attempt lengths.
    max_patience: float = 2.0
    # A consumer sometimes "crashes" after a receive and never acks, so leases
    # expire and redelivery is exercised too.
    skip_ack_probability: float = 0.02
    seed: int = 0
    # Which promises are exercised: point-to-point queue, stream, exchange fan-out.
    workloads: tuple[str, ...] = WORKLOADS
    # Streams (chaos.pubsub_workload): appenders, forward readers, consumer groups.
    stream: str = "chaos-stream"
    appenders: int = 2
    readers: int = 2
    groups: int = 2
    append_rate: float = 20.0  # records per second, all appenders together
    read_max: int = 50
    replay_probability: float = 0.1
    # An append (or exchange publish) whose outcome was not ok is sent again with
    # the same ids this many times, as a real producer would: dedup is exercised.
    resend_limit: int = 2
    # Fan-out: publishers to a fanout exchange bound to these queues, a consumer each.
    exchange: str = "chaos-fan"
    fanout_queues: tuple[str, ...] = ("chaos-fan-a", "chaos-fan-b")
    fanout_publishers: int = 2
    fanout_rate: float = 16.0  # messages per second, all fan-out publishers together

    def drain_queues(self) -> list[str]:
        """Every queue the selected workloads fill, so the drain must empty."""
        queues = [self.queue] if "queue" in self.workloads else []
        if "fanout" in self.workloads:
            queues += list(self.fanout_queues)
        return queues


ProcessFn = Callable[["Workload", str, int], None]


@dataclass
class Workload:
    """Client threads; ``stop()`` ends them after their current operation.

    The queue processes are built in; ``extra`` adds others (streams, fan-out:
    ``chaos.pubsub_workload.processes``) as ``(name, function, index)``.
    """

    urls: list[str]
    history: HistoryWriter
    config: WorkloadConfig
    extra: list[tuple[str, ProcessFn, int]] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def stopping(self) -> threading.Event:
        """Set once ``stop()`` was called; process loops end when they see it."""
        return self._stop

    def start(self) -> None:
        if "queue" in self.config.workloads:
            for k in range(self.config.producers):
                self._spawn(f"p{k}", self._produce, k)
            for k in range(self.config.consumers):
                self._spawn(f"c{k}", self._consume, k)
        for name, fn, k in self.extra:
            self._spawn(name, functools.partial(fn, self), k)

    def process(self, name: str, k: int, count: int, attempt_s: float) -> _Process:
        """A client process whose patience is the ``k``-th of ``count`` (see ``_patience``)."""
        cfg = self.config
        deadline = _patience(attempt_s, cfg.max_patience, k, count)
        return _Process(name, self.urls, self.history, cfg.client_timeout, deadline)

    def _spawn(self, name: str, target: Callable[[str, int], None], k: int) -> None:
        thread = threading.Thread(target=target, args=(name, k), name=f"chaos-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Asks every process to stop; True when all ended within ``timeout``."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.error("workload threads still running after %.0f s: %s", timeout, alive)
        return not alive

    def _produce(self, name: str, k: int) -> None:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}-{name}")
        deadline = _patience(cfg.client_timeout, cfg.max_patience, k, cfg.producers)
        proc = _Process(name, self.urls, self.history, cfg.client_timeout, deadline)
        per_producer = cfg.publish_rate / max(1, cfg.producers)
        n = 0
        next_at = self.history.now()
        try:
            while not self._stop.is_set():
                size = 1 if rng.random() < 0.8 else rng.randint(2, 3)
                ids = [f"{name}-{n + i}" for i in range(size)]
                n += size
                batch = [Message(body_for(i), id=i) for i in ids]
                proc.call(
                    "publish",
                    functools.partial(proc.client.publish_batch, cfg.queue, batch),
                    {"queue": cfg.queue, "ids": ids},
                    functools.partial(_returned_ids, ids),
                )
                # Pacing, not synchronisation: exponential gaps average the target rate;
                # a producer that fell behind (a slow call) does not try to catch up.
                next_at = max(next_at + rng.expovariate(per_producer / size), self.history.now())
                self._stop.wait(next_at - self.history.now())
        except Exception:
            log.exception("producer %s crashed", name)
        finally:
            proc.close()

    def _consume(self, name: str, k: int) -> None:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}-{name}")
        attempt = cfg.client_timeout + cfg.receive_wait
        deadline = _patience(attempt, cfg.max_patience, k, cfg.consumers)
        proc = _Process(name, self.urls, self.history, cfg.client_timeout, deadline)
        try:
            while not self._stop.is_set():
                receive_and_ack(
                    proc,
                    cfg.queue,
                    rng.randint(1, 5),
                    cfg.receive_wait,
                    cfg.visibility_timeout,
                    ack=rng.random() >= cfg.skip_ack_probability,
                )
        except Exception:
            log.exception("consumer %s crashed", name)
        finally:
            proc.close()


def drain(
    urls: list[str],
    history: HistoryWriter,
    config: WorkloadConfig,
    totals: Callable[[str], dict[str, int | None]],
    deadline_s: float,
    stop: threading.Event | None = None,
) -> tuple[bool, dict[str, dict[str, int | None]]]:
    """Receives and acks until every node reports every drained queue empty; bounded.

    Messages leased by a receive whose answer was lost come back after their
    visibility timeout, so an empty receive is not the end: only every node
    reporting ``total == 0`` (``totals(queue)``) is. Returns whether all of
    ``config.drain_queues()`` emptied, and the last totals per queue.
    """
    patient = 3 * (config.client_timeout + config.receive_wait)
    proc = _Process("drain", urls, history, config.client_timeout, patient)
    clock = history.now
    end = clock() + deadline_s
    pending = config.drain_queues()
    last: dict[str, dict[str, int | None]] = {}
    try:
        while pending and clock() < end and not (stop is not None and stop.is_set()):
            for queue in list(pending):
                _, got = receive_and_ack(
                    proc, queue, 100, config.receive_wait, config.visibility_timeout
                )
                if got:
                    continue
                last[queue] = totals(queue)
                if last[queue] and all(v == 0 for v in last[queue].values()):
                    pending.remove(queue)
        return not pending, last
    finally:
        proc.close()
