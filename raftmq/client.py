"""Sync and async clients for the raftmq HTTP API (v1).

Both clients share one retry policy, because a Raft cluster is only ever briefly
unusable (an election, a restarting node) and callers should not each re-invent
failover:

* a 307 from a follower is followed by hand (same method and body, at most
  ``MAX_REDIRECTS`` hops) and the leader it names is tried first next time;
* a 502/503/504, a refused connection or a timeout moves on to the next node URL
  with exponential backoff and jitter (a 503's ``Retry-After`` is honoured, capped)
  until ``retry_deadline`` seconds have passed, then :class:`Unavailable` is raised;
* a ``503 no_leader`` (an election or a leadership hand-over: a fraction of a second)
  is polled every 20-40 ms for its first ``ELECTION_POLL_FOR`` seconds instead, so
  the first try after the new leader is elected is at most ~0.04 s late; an explicit,
  longer ``Retry-After`` still wins, and a cluster that stays leaderless longer
  (no quorum) gets the exponential backoff;
* every published message carries an id (generated client-side when the caller gives
  none) and a retry re-sends the same ids, so the server's dedup window turns a
  retried publish whose first attempt did commit into a no-op rather than a duplicate;
* any other 4xx is raised at once: retrying a bad request cannot make it good.

Neither client is thread-safe; use one per thread (or per event loop).
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import http.client
import logging
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar
from urllib.parse import quote, urlencode, urljoin, urlsplit

import aiohttp
import orjson

from raftmq.batching import DEFAULT_LINGER_MS, Batcher
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
from raftmq.pubsub import (
    AsyncSubscription,
    Routed,
    StreamBatch,
    StreamRecord,
    Subscription,
    decode_batch,
    decode_body,
)
from raftmq.results import AckResult, NackResult

if TYPE_CHECKING:
    from raftmq.channel import Channel

__all__ = [
    "AckResult",
    "AsyncClient",
    "AsyncSubscription",
    "Client",
    "Message",
    "NackResult",
    "ReceivedMessage",
    "Routed",
    "StreamBatch",
    "StreamRecord",
    "Subscription",
]

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
RETRY_AFTER_CAP = 2.0
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 1.0
# Polling a node that answered no_leader: a pause in [min, max], for this long.
ELECTION_POLL_MIN = 0.02
ELECTION_POLL_MAX = 0.04
ELECTION_POLL_FOR = 2.0
# The shortest attempt the end of the retry budget cuts a request's timeout to.
MIN_ATTEMPT_TIMEOUT = 0.1
USER_AGENT = "raftmq-python/0.1"

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({502, 503, 504})
_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": USER_AGENT,
}

T = TypeVar("T")
JSONDict = dict[str, Any]
_BYTES_LIKE = (bytes, bytearray, memoryview)


# --------------------------------------------------------------------------- data


@dataclass
class Message:
    """A message to publish; ``bytes`` bodies travel base64-encoded."""

    body: str | bytes
    headers: dict[str, str] | None = None
    id: str | None = None
    delay: float | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    """A delivered message; ``receipt`` is what ack/nack need, not ``id``.

    ``published_at`` is passed through as the server reports it (epoch milliseconds
    from the current node implementation).
    """

    id: str
    body: str | bytes
    headers: dict[str, str]
    receipt: str
    deliveries: int
    published_at: float


# --------------------------------------------------------------- request building


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One logical API request: what to send and how to read a 2xx answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: bytes | None = None
    extra_timeout: float = 0.0
    # A retried DELETE whose earlier attempt may have committed will see a 404;
    # that is success, not an error.
    absent_after_ambiguity: Callable[[], T] | None = None


def _queue_path(name: str, suffix: str = "") -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise BadRequest(
            f"invalid queue name {name!r}: use 1-200 characters from A-Z a-z 0-9 . _ -",
            code="invalid_name",
        )
    return f"/v1/queues/{quote(name, safe='')}{suffix}"


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _encode_message(msg: Message | Mapping[str, Any]) -> JSONDict:
    """Turns a Message/dict into wire form, fixing its id now so retries reuse it."""
    if isinstance(msg, Message):
        return _wire_message(msg.body, msg.headers, msg.id, msg.delay)
    if not isinstance(msg, Mapping):
        raise TypeError(f"expected Message or dict, got {type(msg).__name__}")
    out: JSONDict = {k: v for k, v in msg.items() if v is not None}
    out.update(_wire_body(out.get("body")))
    if not out.get("id"):
        out["id"] = new_message_id()
    return out


def _wire_body(body: object) -> JSONDict:
    """``{"body": ...}`` as sent: text as it is, bytes base64-encoded and marked so."""
    if isinstance(body, str):
        return {"body": body}
    if isinstance(body, _BYTES_LIKE):
        # As base64.b64encode, without its wrapper (this runs once per message).
        body64 = binascii.b2a_base64(body, newline=False).decode("ascii")
        return {"body": body64, "encoding": "base64"}
    raise TypeError(f"message body must be str or bytes, got {type(body).__name__}")


def _wire_message(
    body: str | bytes,
    headers: Mapping[str, str] | None = None,
    msg_id: str | None = None,
    delay: float | None = None,
) -> JSONDict:
    """One message in wire form, its id fixed now (the publish fast path: no copies)."""
    out = _wire_body(body)
    if headers is not None:
        out["headers"] = dict(headers)
    out["id"] = msg_id or new_message_id()
    if delay is not None:
        out["delay"] = delay
    return out


def new_message_id() -> str:
    """A unique id that sorts by creation time: 48-bit ms clock, a 16-bit counter, 64 random bits.

    As UUIDv7 with a counter (RFC 9562, 6.2 method 1): one process's ids sort in
    the order they were made, not only by millisecond. Each node indexes publish
    ids for deduplication; ids that arrive in order are appended at the end of
    that B-tree (filling its pages, see storage.mutation) instead of dirtying a
    random page each, which makes every node's apply of a publish cheaper.
    """
    return _ID_CLOCK.next_id()


class _IdClock:
    """The (millisecond, counter) of the last id made: the next is larger.

    Uniqueness rests on the 64 random bits alone (random's generator, seeded
    from os.urandom and reseeded in a forked child); the clock and counter only
    give the order, so threads racing here without a lock may at worst make two
    ids of one millisecond out of order, which costs a dedup record its append.
    """

    __slots__ = ("_counter", "_ms")

    def __init__(self) -> None:
        self._ms = 0
        self._counter = 0

    def next_id(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > self._ms:
            self._ms, self._counter = now_ms, 0
        elif self._counter < 0xFFFF:
            self._counter += 1  # the same millisecond, or the clock stepped back
        else:
            self._ms, self._counter = self._ms + 1, 0  # borrow the next millisecond
        # 48 + 16 + 64 bits as one 128-bit number: 32 hex digits formatted at once.
        return f"{self._ms << 80 | self._counter << 64 | random.getrandbits(64):032x}"


_ID_CLOCK = _IdClock()


def _as_float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value  # as the server reports it (an int stays an int)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise TypeError(f"not a timestamp: {value!r}")


def _received_fields(
    m: Mapping[str, Any],
) -> tuple[str, str | bytes, dict[str, str], str, int, float]:
    """(id, body, headers, receipt, deliveries, published_at) of a delivered message."""
    return (
        str(m["id"]),
        decode_body(m),
        dict(m.get("headers") or {}),
        str(m["receipt"]),
        int(m.get("deliveries", 0)),
        _as_float(m.get("published_at", 0.0)),
    )


def _decode_received(m: Mapping[str, Any]) -> ReceivedMessage:
    return ReceivedMessage(*_received_fields(m))


def _op_declare(name: str, config: Mapping[str, Any]) -> _Call[JSONDict]:
    body = {k: v for k, v in config.items() if v is not None}
    return _Call("PUT", _queue_path(name), _dict, _dumps(body))


def _op_delete(name: str) -> _Call[None]:
    return _Call("DELETE", _queue_path(name), _none, absent_after_ambiguity=lambda: None)


def _op_purge(name: str) -> _Call[int]:
    return _Call("POST", _queue_path(name, "/purge"), lambda d: int(d["purged"]), b"{}")


def _op_queue(name: str) -> _Call[JSONDict]:
    return _Call("GET", _queue_path(name), _dict)


def _op_queues() -> _Call[list[JSONDict]]:
    return _Call("GET", "/v1/queues", lambda d: [dict(q) for q in d["queues"]])


def _op_publish(queue: str, messages: Sequence[Message | Mapping[str, Any]]) -> _Call[list[str]]:
    return _op_publish_wire(queue, [_encode_message(m) for m in messages])


def _op_publish_wire(queue: str, wire: list[JSONDict]) -> _Call[list[str]]:
    """Messages already in wire form (ids fixed, as the coalescing hands them over)."""
    return _Call(
        "POST",
        _queue_path(queue, "/messages"),
        lambda d: [str(i) for i in d["ids"]],
        _dumps({"messages": wire}),
    )


PublishOutcome = list[str] | RaftMQError


def _op_publish_many(groups: list[tuple[str, list[JSONDict]]]) -> _Call[list[PublishOutcome]]:
    """Messages already in wire form (ids fixed), per queue, in one request."""
    body = _dumps({"publishes": [{"queue": q, "messages": wire} for q, wire in groups]})
    return _Call("POST", "/v1/messages", _publish_outcomes, body)


def _publish_outcomes(data: Any) -> list[PublishOutcome]:
    outcomes: list[PublishOutcome] = []
    for result in data["results"]:
        if "ids" in result:
            outcomes.append([str(i) for i in result["ids"]])
        else:
            body = orjson.dumps({"error": result["error"]})
            outcomes.append(_error_from(_Response(int(result["status"]), {}, body)))
    return outcomes


def _op_receive(
    queue: str, limit: int, wait: float, visibility_timeout: float | None
) -> _Call[list[ReceivedMessage]]:
    req: JSONDict = {"max": limit, "wait": wait}
    if visibility_timeout is not None:
        req["visibility_timeout"] = visibility_timeout
    return _Call(
        "POST",
        _queue_path(queue, "/receive"),
        lambda d: [_decode_received(m) for m in d["messages"]],
        _dumps(req),
        extra_timeout=max(wait, 0.0),  # a long poll legitimately holds the request open
    )


def _op_ack(queue: str, receipts: Iterable[str]) -> _Call[AckResult]:
    return _Call(
        "POST",
        _queue_path(queue, "/ack"),
        lambda d: AckResult(int(d["acked"]), [str(s) for s in d.get("stale") or []]),
        _dumps({"receipts": list(receipts)}),
    )


def _op_nack(queue: str, receipts: Iterable[str], delay: float | None) -> _Call[NackResult]:
    req: JSONDict = {"receipts": list(receipts)}
    if delay is not None:
        req["delay"] = delay
    return _Call(
        "POST",
        _queue_path(queue, "/nack"),
        lambda d: NackResult(int(d["requeued"]), [str(s) for s in d.get("stale") or []]),
        _dumps(req),
    )


def _op_cluster() -> _Call[JSONDict]:
    return _Call("GET", "/v1/cluster", _dict)


def _op_add_member(node_id: str, raft: str, http: str) -> _Call[list[JSONDict]]:
    body = _dumps({"id": node_id, "raft": raft, "http": http})
    return _Call("POST", "/v1/cluster/members", lambda d: [dict(m) for m in d["members"]], body)


def _op_remove_member(member: str) -> _Call[list[JSONDict]]:
    path = f"/v1/cluster/members/{quote(member, safe='')}"
    return _Call("DELETE", path, lambda d: [dict(m) for m in d["members"]])


def _op_health() -> _Call[JSONDict]:
    return _Call("GET", "/healthz", _dict)


# ------------------------------------------------------- exchanges and streams


def _named_path(kind: str, name: str, suffix: str = "") -> str:
    """``/v1/{kind}s/{name}{suffix}`` after the same name check as queues."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise BadRequest(
            f"invalid {kind} name {name!r}: use 1-200 characters from A-Z a-z 0-9 . _ -",
            code="invalid_name",
        )
    return f"/v1/{kind}s/{quote(name, safe='')}{suffix}"


def _binding_path(exchange: str, queue: str) -> str:
    return _named_path("exchange", exchange, "/bindings") + _queue_path(queue)[len("/v1/queues") :]


Payload = str | bytes | Message | Mapping[str, Any]


def _payloads(items: Payload | Sequence[Payload]) -> list[Message | Mapping[str, Any]]:
    """One body, message or mapping, or a list of them, as messages (a bare str is one body)."""
    many = (
        list(items)
        if isinstance(items, Sequence) and not isinstance(items, str | bytes | bytearray)
        else [items]
    )
    return [Message(m) if isinstance(m, str | bytes | bytearray) else m for m in many]


def _op_declare_exchange(
    name: str, exchange_type: str, alternate_queue: str | None
) -> _Call[JSONDict]:
    body: JSONDict = {"type": exchange_type}
    if alternate_queue is not None:
        body["alternate_queue"] = alternate_queue
    return _Call("PUT", _named_path("exchange", name), _dict, _dumps(body))


def _op_delete_exchange(name: str) -> _Call[None]:
    return _Call(
        "DELETE", _named_path("exchange", name), _none, absent_after_ambiguity=lambda: None
    )


def _op_exchange(name: str) -> _Call[JSONDict]:
    return _Call("GET", _named_path("exchange", name), _dict)


def _op_exchanges() -> _Call[list[JSONDict]]:
    return _Call("GET", "/v1/exchanges", lambda d: [dict(x) for x in d["exchanges"]])


def _op_bind(exchange: str, queue: str, routing_key: str) -> _Call[JSONDict]:
    body = _dumps({"routing_key": routing_key})
    return _Call("PUT", _binding_path(exchange, queue), _dict, body)


def _op_unbind(exchange: str, queue: str, routing_key: str) -> _Call[None]:
    body = _dumps({"routing_key": routing_key})
    return _Call(
        "DELETE", _binding_path(exchange, queue), _none, body, absent_after_ambiguity=lambda: None
    )


def _op_publish_exchange(
    exchange: str, routing_key: str, messages: Payload | Sequence[Payload]
) -> _Call[Routed]:
    wire = [_encode_message(m) for m in _payloads(messages)]
    return _Call(
        "POST",
        _named_path("exchange", exchange, "/publish"),
        lambda d: Routed(
            {str(k): int(v) for k, v in d["routed"].items()},
            int(d["unroutable"]),
            [str(i) for i in d["ids"]],
        ),
        _dumps({"routing_key": routing_key, "messages": wire}),
    )


def _op_declare_stream(name: str, retention: Mapping[str, Any]) -> _Call[JSONDict]:
    body = {k: v for k, v in retention.items() if v is not None}
    return _Call("PUT", _named_path("stream", name), _dict, _dumps(body))


def _op_delete_stream(name: str) -> _Call[None]:
    return _Call("DELETE", _named_path("stream", name), _none, absent_after_ambiguity=lambda: None)


def _op_stream(name: str) -> _Call[JSONDict]:
    return _Call("GET", _named_path("stream", name), _dict)


def _op_streams() -> _Call[list[JSONDict]]:
    return _Call("GET", "/v1/streams", lambda d: [dict(x) for x in d["streams"]])


def _op_append(stream: str, records: Payload | Sequence[Payload]) -> _Call[list[int]]:
    wire = []
    for record in _payloads(records):
        encoded = _encode_message(record)
        if "delay" in encoded:
            raise BadRequest("stream records take no delay", code="invalid_request")
        wire.append(encoded)
    return _Call(
        "POST",
        _named_path("stream", stream, "/records"),
        lambda d: [int(o) for o in d["offsets"]],
        _dumps({"records": wire}),
    )


def _op_read(
    stream: str, offset: int | None, group: str | None, limit: int, wait: float
) -> _Call[StreamBatch]:
    params: dict[str, Any] = {"max": limit, "wait": wait}
    if offset is not None:
        params["offset"] = offset
    if group is not None:
        params["group"] = group
    query = "?" + urlencode(params)
    return _Call(
        "GET",
        _named_path("stream", stream, "/records") + query,
        decode_batch,
        extra_timeout=max(wait, 0.0),
    )


def _group_path(stream: str, group: str) -> str:
    return (
        _named_path("stream", stream, "/groups") + _named_path("group", group)[len("/v1/groups") :]
    )


def _op_commit_offset(stream: str, group: str, offset: int) -> _Call[int]:
    return _Call(
        "PUT",
        _group_path(stream, group),
        lambda d: int(d["offset"]),
        _dumps({"offset": offset}),
    )


def _op_group_offset(stream: str, group: str) -> _Call[int]:
    return _Call("GET", _group_path(stream, group), lambda d: int(d["offset"]))


def _op_delete_group(stream: str, group: str) -> _Call[None]:
    return _Call("DELETE", _group_path(stream, group), _none)


def _dict(d: Any) -> JSONDict:
    if not isinstance(d, dict):
        raise TypeError("expected a JSON object")
    return d


def _none(_: Any) -> None:
    return None


# ------------------------------------------------------------ response handling


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes


@dataclass(frozen=True)
class _Redirect:
    location: str


class _Retry(Exception):
    """Internal: this attempt failed in a way another node (or a later try) may fix."""

    def __init__(
        self,
        error: RaftMQError,
        *,
        answered: bool,
        ambiguous: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.answered = answered  # an HTTP response came back
        self.ambiguous = ambiguous  # the request may have taken effect
        self.retry_after = retry_after


def _transport_retry(url: str, exc: BaseException, *, sent: bool) -> _Retry:
    detail = str(exc) or type(exc).__name__
    err = RaftMQError(f"{url}: {detail}", code="connection_error")
    err.__cause__ = exc
    return _Retry(err, answered=False, ambiguous=sent)


def _certificate_error(url: str, exc: BaseException) -> ConnectionFailed:
    """A node whose certificate does not verify: a configuration error, not retried."""
    return ConnectionFailed(
        f"{url}: the TLS certificate does not verify ({exc}); "
        "pass ca= (or --ca) with the CA that signed the nodes' certificates",
        urls=[url],
        last_error=exc,
    )


def _error_from(resp: _Response) -> RaftMQError:
    code = ""
    message = ""
    try:
        payload = orjson.loads(resp.body) if resp.body else None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            code = str(payload["error"].get("code") or "")
            message = str(payload["error"].get("message") or "")
    except orjson.JSONDecodeError:
        pass
    if not message:
        text = resp.body.decode("utf-8", "replace").strip()
        message = text[:200] or f"HTTP {resp.status}"
    status = resp.status
    if status == 404:
        not_found: type[NotFound] = {
            "queue_not_found": QueueNotFound,
            "": QueueNotFound,
            "exchange_not_found": ExchangeNotFound,
            "stream_not_found": StreamNotFound,
        }.get(code, NotFound)
        return not_found(message, status=status, code=code or "queue_not_found")
    if status == 409:
        return Conflict(message, status=status, code=code or "conflict")
    if status == 401:
        return Unauthorized(message, status=status, code=code or "unauthorized")
    if status == 403:
        return Forbidden(message, status=status, code=code or "forbidden")
    if 400 <= status < 500:
        return BadRequest(message, status=status, code=code or "bad_request")
    if status == 507:
        return StorageFull(message, status=status, code=code or "storage_full")
    return RaftMQError(message, status=status, code=code or f"http_{status}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP-date; backoff covers it
    return max(0.0, min(seconds, RETRY_AFTER_CAP))


def _interpret(resp: _Response, call: _Call[T], url: str) -> T | _Redirect:
    """Maps one HTTP response onto a value, a redirect, a retry or an error."""
    if 200 <= resp.status < 300:
        try:
            data = orjson.loads(resp.body) if resp.body else None
            return call.parse(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as e:
            raise RaftMQError(
                f"unexpected response from {url}: {e}", status=resp.status, code="invalid_response"
            ) from e
    if resp.status in _REDIRECT_STATUSES:
        location = resp.headers.get("location")
        if not location:
            raise RaftMQError(
                f"{url} redirected without a Location", status=resp.status, code="bad_redirect"
            )
        return _Redirect(urljoin(url, location))
    err = _error_from(resp)
    if resp.status in _RETRY_STATUSES:
        raise _Retry(
            err,
            answered=True,
            ambiguous=err.code != "no_leader",
            retry_after=_retry_after(resp.headers.get("retry-after")),
        )
    raise err


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _normalize_urls(urls: Sequence[str] | str) -> list[str]:
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for raw in str(item).split(","):
            url = raw.strip().rstrip("/")
            if not url:
                continue
            if "://" not in url:
                url = "http://" + url
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"not an http(s) URL: {raw.strip()!r}")
            if url not in out:
                out.append(url)
    if not out:
        raise ValueError("at least one node URL is required")
    return out


class _Attempts:
    """Walks the node list for one logical request: which URL next, how long to
    wait, and when to give up."""

    def __init__(self, urls: list[str], preferred: str | None, budget: float) -> None:
        order = list(urls)
        if preferred is not None:
            if preferred in order:
                i = order.index(preferred)
                order = order[i:] + order[:i]
            else:
                order.insert(0, preferred)
        self.order = order
        self.urls = urls
        self.index = 0
        self.failures = 0
        self.started = time.monotonic()
        self.budget = budget
        self.deadline = self.started + budget
        self.answered = False
        self.ambiguous = False
        self.last: _Retry | None = None
        self.leaderless_since: float | None = None  # first no_leader answer

    @property
    def url(self) -> str:
        return self.order[self.index % len(self.order)]

    @property
    def following(self) -> str:
        """The node after the current one."""
        return self.order[(self.index + 1) % len(self.order)]

    def timeout(self, timeout: float, extra: float = 0.0) -> float:
        """One attempt's timeout: ``timeout`` cut to what is left of the retry budget
        (so a silent node cannot hold a call past its ``retry_deadline``), plus
        ``extra`` (a long poll's ``wait``). A call without a budget (one node, asked
        once) gets the whole ``timeout``.
        """
        if self.budget > 0:
            left = self.deadline - time.monotonic()
            timeout = min(timeout, max(left, MIN_ATTEMPT_TIMEOUT))
        return timeout + extra

    def failed(self, r: _Retry) -> float:
        """Records a failure; returns the pause before the next try or raises when out of time."""
        self.last = r
        self.failures += 1
        self.answered |= r.answered
        self.ambiguous |= r.ambiguous
        self.index += 1
        now = time.monotonic()
        remaining = self.deadline - now
        if remaining <= 0:
            raise self.exhausted()
        if r.answered and r.error.code == "no_leader":
            if self.leaderless_since is None:
                self.leaderless_since = now
            if now - self.leaderless_since < ELECTION_POLL_FOR:
                pause = random.uniform(ELECTION_POLL_MIN, ELECTION_POLL_MAX)
            else:
                pause = self._backoff()
            delay = max(r.retry_after or 0.0, pause)
        elif r.retry_after is not None:
            delay = max(r.retry_after, self._backoff())
        elif not r.answered and self.index % len(self.order) != 0:
            delay = 0.0  # a node we have not tried this round may be fine: go now
        else:
            delay = self._backoff()
        log.debug(
            "raftmq: attempt %d failed (%s); next %s in %.3fs",
            self.failures,
            r.error,
            self.url,
            delay,
        )
        return min(delay, remaining)

    def _backoff(self) -> float:
        rounds = min((self.failures - 1) // len(self.order), 30)
        ceiling = min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0**rounds)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def exhausted(self) -> Unavailable:
        assert self.last is not None
        last = self.last.error
        elapsed = time.monotonic() - self.started
        if not self.answered:
            return ConnectionFailed(
                f"no node answered at {', '.join(self.urls)}",
                urls=self.urls,
                last_error=last,
            )
        return Unavailable(
            f"gave up after {self.failures} attempt(s) in {elapsed:.1f}s: {last.message}",
            status=last.status,
            code=last.code,
            last_error=last,
        )


def _too_many_redirects(url: str) -> _Retry:
    err = RaftMQError(
        f"more than {MAX_REDIRECTS} redirects starting at {url}",
        status=307,
        code="too_many_redirects",
    )
    return _Retry(err, answered=True, ambiguous=False)


def _ssl_context(ca: str | None, verify: bool, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Verifies the server (against ``ca`` or the system store) unless ``verify`` is False."""
    context = ssl.create_default_context(cafile=ca)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _auth_headers(token: str | None) -> dict[str, str]:
    """Request headers; the token goes to every node, redirects included (never logged)."""
    if token is None:
        return dict(_HEADERS)
    return {**_HEADERS, "Authorization": f"Bearer {token}"}


class _Base:
    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        timeout: float = 10.0,
        retry_deadline: float = 30.0,
        token: str | None = None,
        ca: str | None = None,
        verify: bool = True,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        self._headers = _auth_headers(token)
        # Built on first use: loading the CA store costs milliseconds plain HTTP never needs.
        self._ssl = functools.cache(functools.partial(_ssl_context, ca, verify, cert, key))
        self._urls = _normalize_urls(urls)
        self._timeout = timeout
        self._retry_deadline = retry_deadline
        self._preferred: str | None = None

    @property
    def urls(self) -> list[str]:
        """The node URLs this client was configured with."""
        return list(self._urls)

    def _plan(self, url: str | None) -> tuple[list[str], float, bool]:
        """Node list, retry budget and whether to remember the leader, for one call."""
        if url is None:
            return self._urls, self._retry_deadline, True
        return _normalize_urls(url), 0.0, False


# ------------------------------------------------------------------ sync client


class _SyncTransport:
    """One keep-alive ``http.client`` connection per node origin."""

    def __init__(
        self,
        headers: dict[str, str] | None = None,
        context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._headers = dict(_HEADERS) if headers is None else headers
        self._context = context or ssl.create_default_context

    def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()

    def _connection(self, url: str, timeout: float) -> http.client.HTTPConnection:
        origin = _origin(url)
        conn = self._conns.get(origin)
        if conn is None:
            parts = urlsplit(url)
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    parts.netloc, timeout=timeout, context=self._context()
                )
            else:
                conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
            self._conns[origin] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def request(self, method: str, url: str, body: bytes | None, timeout: float) -> _Response:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for try_ in range(2):
            conn = self._connection(url, timeout)
            reused = conn.sock is not None
            if not reused:
                try:
                    conn.connect()
                except ssl.SSLCertVerificationError as e:
                    conn.close()
                    raise _certificate_error(url, e) from e
                except OSError as e:
                    conn.close()
                    # On the redial the request already went out once (it may have
                    # been applied before the node went away): that stays ambiguous.
                    raise _transport_retry(url, e, sent=try_ > 0) from e
            try:
                conn.request(method, target, body=body, headers=self._headers)
                resp = conn.getresponse()
                data = resp.read()
                headers = {k.lower(): v for k, v in resp.getheaders()}
                return _Response(resp.status, headers, data)
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as e:
                conn.close()
                if reused and try_ == 0:
                    continue  # the server closed an idle keep-alive connection: redial once
                raise _transport_retry(url, e, sent=True) from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise _transport_retry(url, e, sent=True) from e
        raise AssertionError("unreachable")


class Client(_Base):
    """Blocking client. ``urls`` may list any or all nodes (a str may be comma separated).

    ``timeout`` bounds one HTTP attempt (a long-poll receive adds its ``wait``);
    ``retry_deadline`` bounds the whole call including failover.
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        timeout: float = 10.0,
        retry_deadline: float = 30.0,
        token: str | None = None,
        ca: str | None = None,
        verify: bool = True,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(
            urls,
            timeout=timeout,
            retry_deadline=retry_deadline,
            token=token,
            ca=ca,
            verify=verify,
            cert=cert,
            key=key,
        )
        self._transport = _SyncTransport(self._headers, self._ssl)

    def close(self) -> None:
        """Closes the keep-alive connections."""
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: _Call[T], url: str | None = None) -> T:
        urls, budget, sticky = self._plan(url)
        attempts = _Attempts(urls, self._preferred if sticky else None, budget)
        while True:
            try:
                return self._attempt(attempts, call, sticky)
            except _Retry as r:
                if sticky:
                    # A node that just failed (a paused or cut-off leader) is not the
                    # first stop of the next call, even when this one runs out of time.
                    self._preferred = attempts.following
                delay = attempts.failed(r)
                if delay > 0:
                    time.sleep(delay)
            except NotFound:
                if attempts.ambiguous and call.absent_after_ambiguity is not None:
                    return call.absent_after_ambiguity()
                raise

    def _attempt(self, attempts: _Attempts, call: _Call[T], sticky: bool) -> T:
        base = attempts.url
        target = base + call.path
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._transport.request(
                call.method, target, call.body, attempts.timeout(self._timeout, call.extra_timeout)
            )
            out = _interpret(resp, call, target)
            if isinstance(out, _Redirect):
                log.debug("raftmq: %s redirected to %s", target, out.location)
                target = out.location
                continue
            if sticky:
                self._preferred = _origin(target)
            return out
        raise _too_many_redirects(base + call.path)

    def declare_queue(self, name: str, **config: Any) -> JSONDict:
        """Creates ``name`` (or confirms an identical one exists); returns ``{queue, config}``."""
        return self._run(_op_declare(name, config))

    def delete_queue(self, name: str) -> None:
        """Deletes ``name`` and its messages."""
        self._run(_op_delete(name))

    def purge(self, name: str) -> int:
        """Drops every message in ``name``; returns how many went."""
        return self._run(_op_purge(name))

    def queue(self, name: str) -> JSONDict:
        """Config and counters of one queue."""
        return self._run(_op_queue(name))

    def queues(self) -> list[JSONDict]:
        """Config and counters of every queue."""
        return self._run(_op_queues())

    def publish(
        self,
        queue: str,
        body: str | bytes,
        *,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        delay: float | None = None,
    ) -> str:
        """Publishes one message; returns its id."""
        msg = Message(body, dict(headers) if headers is not None else None, id, delay)
        return self._run(_op_publish(queue, [msg]))[0]

    def publish_batch(
        self, queue: str, messages: Sequence[Message | Mapping[str, Any]]
    ) -> list[str]:
        """Publishes several messages in one replicated write; returns their ids in order."""
        if not messages:
            return []
        return self._run(_op_publish(queue, messages))

    def receive(
        self,
        queue: str,
        *,
        max: int = 1,
        wait: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]:
        """Leases up to ``max`` messages, long-polling up to ``wait`` seconds for the first."""
        return self._run(_op_receive(queue, max, wait, visibility_timeout))

    def ack(self, queue: str, receipts: Iterable[str] | str) -> AckResult:
        """Marks deliveries done so they are never redelivered."""
        return self._run(_op_ack(queue, _receipts(receipts)))

    def nack(
        self, queue: str, receipts: Iterable[str] | str, delay: float | None = None
    ) -> NackResult:
        """Returns deliveries to the queue now (or after ``delay`` seconds)."""
        return self._run(_op_nack(queue, _receipts(receipts), delay))

    def cluster(self) -> JSONDict:
        """Raft status as seen by whichever node answers."""
        return self._run(_op_cluster())

    def health(self, url: str | None = None) -> JSONDict:
        """Liveness of one node (default: the first URL), asked once without failover."""
        return self._run(_op_health(), url or self._urls[0])

    # -- exchanges (publish/subscribe) and streams

    def declare_exchange(
        self, name: str, type: str = "direct", *, alternate_queue: str | None = None
    ) -> JSONDict:
        """Creates a ``direct``, ``topic`` or ``fanout`` exchange, or confirms an identical one."""
        return self._run(_op_declare_exchange(name, type, alternate_queue))

    def delete_exchange(self, name: str) -> None:
        """Deletes the exchange and its bindings (not the queues)."""
        self._run(_op_delete_exchange(name))

    def exchange(self, name: str) -> JSONDict:
        """Type, alternate queue and bindings of one exchange."""
        return self._run(_op_exchange(name))

    def exchanges(self) -> list[JSONDict]:
        """Every exchange with its bindings."""
        return self._run(_op_exchanges())

    def bind(self, exchange: str, queue: str, routing_key: str = "") -> JSONDict:
        """Routes messages matching ``routing_key`` (a pattern for topic exchanges) to ``queue``."""
        return self._run(_op_bind(exchange, queue, routing_key))

    def unbind(self, exchange: str, queue: str, routing_key: str = "") -> None:
        """Removes one binding."""
        self._run(_op_unbind(exchange, queue, routing_key))

    def publish_to_exchange(
        self, exchange: str, routing_key: str, messages: Payload | Sequence[Payload]
    ) -> Routed:
        """Routes one message (a body, Message or dict) or a list of them in one replicated write.

        Every matching queue gets every message or none does; ids are fixed
        before the first attempt, so a retry is deduplicated in each queue.
        """
        return self._run(_op_publish_exchange(exchange, routing_key, messages))

    def subscribe(
        self,
        exchange: str,
        pattern: str,
        *,
        queue: str | None = None,
        max: int = 100,
        wait: float = 5,
    ) -> Subscription:
        """Messages of ``exchange`` matching ``pattern`` through a queue of this subscriber's own.

        See :class:`raftmq.pubsub.Subscription` for when each message is acked.
        """
        return Subscription(self, exchange, pattern, queue=queue, max=max, wait=wait)

    def declare_stream(
        self,
        name: str,
        *,
        max_age: float | None = None,
        max_bytes: int | None = None,
        max_records: int | None = None,
    ) -> JSONDict:
        """Creates a stream with this retention (or confirms an identical one)."""
        retention = {"max_age": max_age, "max_bytes": max_bytes, "max_records": max_records}
        return self._run(_op_declare_stream(name, retention))

    def delete_stream(self, name: str) -> None:
        """Deletes the stream, its records and its consumer groups."""
        self._run(_op_delete_stream(name))

    def stream(self, name: str) -> JSONDict:
        """Retention, offsets, size and consumer groups of one stream."""
        return self._run(_op_stream(name))

    def streams(self) -> list[JSONDict]:
        """Every stream with its retention, offsets and size."""
        return self._run(_op_streams())

    def append(self, stream: str, records: Payload | Sequence[Payload]) -> list[int]:
        """Appends one record or a list; returns their offsets (a retried id keeps its offset)."""
        return self._run(_op_append(stream, records))

    def read(
        self,
        stream: str,
        *,
        offset: int | None = None,
        group: str | None = None,
        max: int = 100,
        wait: float = 0.0,
    ) -> StreamBatch:
        """Up to ``max`` records from ``offset`` (or ``group``'s committed offset, else 0).

        Long-polls up to ``wait`` seconds when nothing is there yet.
        """
        return self._run(_op_read(stream, offset, group, max, wait))

    def commit_offset(self, stream: str, group: str, offset: int) -> int:
        """Records ``offset`` as the next one ``group`` reads."""
        return self._run(_op_commit_offset(stream, group, offset))

    def group_offset(self, stream: str, group: str) -> int:
        """The group's committed offset (0 when it never committed)."""
        return self._run(_op_group_offset(stream, group))

    def delete_group(self, stream: str, group: str) -> None:
        """Forgets the group's committed offset (it reads from 0 again)."""
        self._run(_op_delete_group(stream, group))

    def add_member(self, node_id: str, raft: str, http: str) -> list[JSONDict]:
        """Adds a voting member (start it afterwards with the member list); returns members."""
        return self._run(_op_add_member(node_id, raft, http))

    def remove_member(self, member: str) -> list[JSONDict]:
        """Removes a member by node id or raft address (the leader hands over first)."""
        return self._run(_op_remove_member(member))

    # Users (admin; creating the first admin needs no token).

    def add_user(self, name: str, *, admin: bool = False) -> JSONDict:
        """Creates a user; the answer's ``token`` is shown only this once."""
        body = _dumps({"name": name, "admin": admin})
        return self._run(_Call("POST", "/v1/users", _dict, body))

    def delete_user(self, name: str) -> None:
        self._run(
            _Call("DELETE", _named_path("user", name), _none, absent_after_ambiguity=lambda: None)
        )

    def grant(self, name: str, *, configure: str = "", write: str = "", read: str = "") -> JSONDict:
        """Sets the user's three permission regexes ("" allows nothing, ".*" everything)."""
        body = _dumps({"configure": configure, "write": write, "read": read})
        return self._run(_Call("PUT", _named_path("user", name, "/permissions"), _dict, body))

    def revoke(self, name: str) -> None:
        self._run(_Call("DELETE", _named_path("user", name, "/permissions"), _none))

    def users(self) -> list[JSONDict]:
        return self._run(_Call("GET", "/v1/users", lambda d: [dict(u) for u in d["users"]]))


# ----------------------------------------------------------------- async client


@dataclass
class _Sent:
    """Whether a try of one request was written to a node (it may have been applied)."""

    sent: bool = False


async def _mark_sent(
    _session: aiohttp.ClientSession,
    context: Any,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    if isinstance(context.trace_request_ctx, _Sent):
        context.trace_request_ctx.sent = True


class _AsyncTransport:
    """A lazily created ``aiohttp.ClientSession`` (created inside the running loop)."""

    def __init__(
        self,
        headers: dict[str, str] | None = None,
        context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._headers = dict(_HEADERS) if headers is None else headers
        self._context = context or ssl.create_default_context

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_mark_sent)
            self._session = aiohttp.ClientSession(headers=self._headers, trace_configs=[trace])
        return self._session

    async def request(self, method: str, url: str, body: bytes | None, timeout: float) -> _Response:
        session = self._get()
        # aiohttp itself re-sends an idempotent request (PUT, DELETE) once on a new
        # connection when a kept-alive one drops, as this loop does for the others:
        # a failure to connect then follows a request that did go out.
        sent = _Sent()
        for try_ in range(2):
            try:
                async with session.request(
                    method,
                    url,
                    data=body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    ssl=self._context() if url.startswith("https:") else True,
                    trace_request_ctx=sent,
                ) as resp:
                    data = await resp.read()
                    headers = {k.lower(): v for k, v in resp.headers.items()}
                    return _Response(resp.status, headers, data)
            except aiohttp.ServerDisconnectedError as e:
                if try_ == 0:
                    continue  # likely a stale keep-alive connection: redial once
                raise _transport_retry(url, e, sent=True) from e
            except aiohttp.ClientConnectorCertificateError as e:
                raise _certificate_error(url, e) from e
            except aiohttp.ClientConnectorError as e:
                raise _transport_retry(url, e, sent=sent.sent) from e
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                raise _transport_retry(url, e, sent=True) from e
        raise AssertionError("unreachable")


class AsyncClient(_Base):
    """asyncio twin of :class:`Client`; use ``async with`` or ``await close()``.

    Concurrent ``publish``/``ack`` calls for one queue are coalesced into one request
    (see :mod:`raftmq.batching`); ``linger_ms`` bounds how long a call may wait for
    companions while a request for its queue is in flight, 0 sends every call alone.
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        timeout: float = 10.0,
        retry_deadline: float = 30.0,
        linger_ms: float = DEFAULT_LINGER_MS,
        token: str | None = None,
        ca: str | None = None,
        verify: bool = True,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(
            urls,
            timeout=timeout,
            retry_deadline=retry_deadline,
            token=token,
            ca=ca,
            verify=verify,
            cert=cert,
            key=key,
        )
        self._transport = _AsyncTransport(self._headers, self._ssl)
        self._batcher: Batcher | None = None
        if linger_ms > 0:
            self._batcher = Batcher(
                lambda q, wire: self._run(_op_publish_wire(q, wire)),
                lambda q, receipts: self._run(_op_ack(q, receipts)),
                publish_many=self._publish_many,
                linger_ms=linger_ms,
            )

    async def _publish_many(
        self, groups: list[tuple[str, list[JSONDict]]]
    ) -> list[list[str] | BaseException]:
        """Coalesced publishes to several queues, in one request where the node can.

        A node without ``POST /v1/messages`` (an older version, mid-upgrade) answers
        404 ``not_found``; a user allowed only some of the queues gets 403 for the
        whole request. Either way each queue is then published on its own, so each
        caller gets its own queue's answer.
        """
        try:
            together: list[PublishOutcome] = await self._run(_op_publish_many(groups))
            return list(together)
        except (NotFound, Forbidden) as exc:
            if isinstance(exc, NotFound) and exc.code != "not_found":
                raise
        outcomes: list[list[str] | BaseException] = []
        for queue, wire in groups:
            try:
                ids: list[str] = await self._run(_op_publish_wire(queue, wire))
                outcomes.append(ids)
            except RaftMQError as exc:
                outcomes.append(exc)
        return outcomes

    async def close(self) -> None:
        """Sends any coalesced calls still waiting, then closes the HTTP session."""
        if self._batcher is not None:
            await self._batcher.drain()
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, call: _Call[T], url: str | None = None) -> T:
        urls, budget, sticky = self._plan(url)
        attempts = _Attempts(urls, self._preferred if sticky else None, budget)
        while True:
            try:
                return await self._attempt(attempts, call, sticky)
            except _Retry as r:
                if sticky:
                    # A node that just failed (a paused or cut-off leader) is not the
                    # first stop of the next call, even when this one runs out of time.
                    self._preferred = attempts.following
                delay = attempts.failed(r)
                if delay > 0:
                    await asyncio.sleep(delay)
            except NotFound:
                if attempts.ambiguous and call.absent_after_ambiguity is not None:
                    return call.absent_after_ambiguity()
                raise

    async def _attempt(self, attempts: _Attempts, call: _Call[T], sticky: bool) -> T:
        base = attempts.url
        target = base + call.path
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self._transport.request(
                call.method, target, call.body, attempts.timeout(self._timeout, call.extra_timeout)
            )
            out = _interpret(resp, call, target)
            if isinstance(out, _Redirect):
                log.debug("raftmq: %s redirected to %s", target, out.location)
                target = out.location
                continue
            if sticky:
                self._preferred = _origin(target)
            return out
        raise _too_many_redirects(base + call.path)

    async def declare_queue(self, name: str, **config: Any) -> JSONDict:
        """Creates ``name`` (or confirms an identical one exists); returns ``{queue, config}``."""
        return await self._run(_op_declare(name, config))

    async def delete_queue(self, name: str) -> None:
        """Deletes ``name`` and its messages."""
        await self._run(_op_delete(name))

    async def purge(self, name: str) -> int:
        """Drops every message in ``name``; returns how many went."""
        return await self._run(_op_purge(name))

    async def queue(self, name: str) -> JSONDict:
        """Config and counters of one queue."""
        return await self._run(_op_queue(name))

    async def queues(self) -> list[JSONDict]:
        """Config and counters of every queue."""
        return await self._run(_op_queues())

    async def publish(
        self,
        queue: str,
        body: str | bytes,
        *,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        delay: float | None = None,
    ) -> str:
        """Publishes one message; returns its id."""
        wire = _wire_message(body, headers, id, delay)
        if self._batcher is not None:
            return await self._batcher.publish(queue, wire)
        return (await self._run(_op_publish_wire(queue, [wire])))[0]

    async def publish_batch(
        self, queue: str, messages: Sequence[Message | Mapping[str, Any]]
    ) -> list[str]:
        """Publishes several messages in one replicated write; returns their ids in order."""
        if not messages:
            return []
        return await self._run(_op_publish(queue, messages))

    async def receive(
        self,
        queue: str,
        *,
        max: int = 1,
        wait: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[ReceivedMessage]:
        """Leases up to ``max`` messages, long-polling up to ``wait`` seconds for the first."""
        return await self._run(_op_receive(queue, max, wait, visibility_timeout))

    async def ack(self, queue: str, receipts: Iterable[str] | str) -> AckResult:
        """Marks deliveries done so they are never redelivered."""
        if self._batcher is not None:
            return await self._batcher.ack(queue, _receipts(receipts))
        return await self._run(_op_ack(queue, _receipts(receipts)))

    def ack_soon(self, queue: str, receipts: Iterable[str] | str) -> asyncio.Future[AckResult]:
        """Acks without waiting for the answer (as AMQP's basic.ack): the ack is sent,
        coalesced with others, whether or not the returned future is awaited.

        Await the future (or add a done callback) to learn of a failure; a failed
        ack means the message may be delivered again.
        """
        wanted = _receipts(receipts)
        if self._batcher is not None and wanted:
            return self._batcher.ack_soon(queue, wanted)
        return asyncio.ensure_future(self.ack(queue, wanted))

    async def nack(
        self, queue: str, receipts: Iterable[str] | str, delay: float | None = None
    ) -> NackResult:
        """Returns deliveries to the queue now (or after ``delay`` seconds)."""
        return await self._run(_op_nack(queue, _receipts(receipts), delay))

    async def cluster(self) -> JSONDict:
        """Raft status as seen by whichever node answers."""
        return await self._run(_op_cluster())

    async def health(self, url: str | None = None) -> JSONDict:
        """Liveness of one node (default: the first URL), asked once without failover."""
        return await self._run(_op_health(), url or self._urls[0])

    def channel(self, *, linger_ms: float = DEFAULT_LINGER_MS, max_in_flight: int = 16) -> Channel:
        """A persistent WebSocket channel to the leader (``async with client.channel() as ch``).

        Confirmed publishes and push consumers with a credit window; see :mod:`raftmq.channel`.
        """
        from raftmq.channel import Channel

        return Channel(self, linger_ms=linger_ms, max_in_flight=max_in_flight)

    # -- exchanges (publish/subscribe) and streams

    async def declare_exchange(
        self, name: str, type: str = "direct", *, alternate_queue: str | None = None
    ) -> JSONDict:
        """Creates a ``direct``, ``topic`` or ``fanout`` exchange, or confirms an identical one."""
        return await self._run(_op_declare_exchange(name, type, alternate_queue))

    async def delete_exchange(self, name: str) -> None:
        """Deletes the exchange and its bindings (not the queues)."""
        await self._run(_op_delete_exchange(name))

    async def exchange(self, name: str) -> JSONDict:
        """Type, alternate queue and bindings of one exchange."""
        return await self._run(_op_exchange(name))

    async def exchanges(self) -> list[JSONDict]:
        """Every exchange with its bindings."""
        return await self._run(_op_exchanges())

    async def bind(self, exchange: str, queue: str, routing_key: str = "") -> JSONDict:
        """Routes messages matching ``routing_key`` (a pattern for topic exchanges) to ``queue``."""
        return await self._run(_op_bind(exchange, queue, routing_key))

    async def unbind(self, exchange: str, queue: str, routing_key: str = "") -> None:
        """Removes one binding."""
        await self._run(_op_unbind(exchange, queue, routing_key))

    async def publish_to_exchange(
        self, exchange: str, routing_key: str, messages: Payload | Sequence[Payload]
    ) -> Routed:
        """Routes one message (a body, Message or dict) or a list of them in one replicated write.

        Every matching queue gets every message or none does; ids are fixed
        before the first attempt, so a retry is deduplicated in each queue.
        """
        return await self._run(_op_publish_exchange(exchange, routing_key, messages))

    def subscribe(
        self,
        exchange: str,
        pattern: str,
        *,
        queue: str | None = None,
        max: int = 100,
        wait: float = 5,
    ) -> AsyncSubscription:
        """Messages of ``exchange`` matching ``pattern`` through a queue of this subscriber's own.

        See :class:`raftmq.pubsub.AsyncSubscription` for when each message is acked.
        """
        return AsyncSubscription(self, exchange, pattern, queue=queue, max=max, wait=wait)

    async def declare_stream(
        self,
        name: str,
        *,
        max_age: float | None = None,
        max_bytes: int | None = None,
        max_records: int | None = None,
    ) -> JSONDict:
        """Creates a stream with this retention (or confirms an identical one)."""
        retention = {"max_age": max_age, "max_bytes": max_bytes, "max_records": max_records}
        return await self._run(_op_declare_stream(name, retention))

    async def delete_stream(self, name: str) -> None:
        """Deletes the stream, its records and its consumer groups."""
        await self._run(_op_delete_stream(name))

    async def stream(self, name: str) -> JSONDict:
        """Retention, offsets, size and consumer groups of one stream."""
        return await self._run(_op_stream(name))

    async def streams(self) -> list[JSONDict]:
        """Every stream with its retention, offsets and size."""
        return await self._run(_op_streams())

    async def append(self, stream: str, records: Payload | Sequence[Payload]) -> list[int]:
        """Appends one record or a list; returns their offsets (a retried id keeps its offset)."""
        return await self._run(_op_append(stream, records))

    async def read(
        self,
        stream: str,
        *,
        offset: int | None = None,
        group: str | None = None,
        max: int = 100,
        wait: float = 0.0,
    ) -> StreamBatch:
        """Up to ``max`` records from ``offset`` (or ``group``'s committed offset, else 0).

        Long-polls up to ``wait`` seconds when nothing is there yet.
        """
        return await self._run(_op_read(stream, offset, group, max, wait))

    async def commit_offset(self, stream: str, group: str, offset: int) -> int:
        """Records ``offset`` as the next one ``group`` reads."""
        return await self._run(_op_commit_offset(stream, group, offset))

    async def group_offset(self, stream: str, group: str) -> int:
        """The group's committed offset (0 when it never committed)."""
        return await self._run(_op_group_offset(stream, group))

    async def delete_group(self, stream: str, group: str) -> None:
        """Forgets the group's committed offset (it reads from 0 again)."""
        await self._run(_op_delete_group(stream, group))

    async def add_member(self, node_id: str, raft: str, http: str) -> list[JSONDict]:
        """Adds a voting member (start it afterwards with the member list); returns members."""
        return await self._run(_op_add_member(node_id, raft, http))

    async def remove_member(self, member: str) -> list[JSONDict]:
        """Removes a member by node id or raft address (the leader hands over first)."""
        return await self._run(_op_remove_member(member))


def _receipts(receipts: Iterable[str] | str) -> list[str]:
    """A lone receipt string is a common slip; treat it as a list of one."""
    return [receipts] if isinstance(receipts, str) else list(receipts)
