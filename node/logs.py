"""Node logging: readable text lines or one JSON object per line, with request ids.

Every HTTP request gets an id (the client's `X-Request-Id` when it is a sane
token, else a new one). It is kept in a context variable while the request is
handled, so every log line emitted meanwhile carries it, and it is returned in
the `X-Request-Id` response header (a 500 answer names it too).

JSON lines hold `ts`, `level`, `logger`, `message`, `node_id`, `term` (the
current Raft term once the Raft node runs), `request_id` (inside a request)
and `exc` (a traceback, when there is one).
"""

import contextvars
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson
from aiohttp import web

LOG_FORMATS: Final = ("text", "json")
REQUEST_ID_HEADER: Final = "X-Request-Id"

# The id of the HTTP request being handled by the current task, if any.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "raftmq_request_id", default=None
)
_REQUEST_KEY: Final = web.RequestKey("request_id", str)
_CLIENT_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# How long a read of the Raft term is reused (reading it builds pysyncobj's status).
_TERM_TTL_S: Final = 0.1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class TermSource:
    """The current Raft term for log lines, read at most every `_TERM_TTL_S` seconds."""

    def __init__(self) -> None:
        self._read: Callable[[], int] | None = None
        self._lock = threading.Lock()
        self._value: int | None = None
        self._read_at = 0.0

    def set(self, read: Callable[[], int] | None) -> None:
        with self._lock:
            self._read = read
            self._value = None
            self._read_at = 0.0

    def get(self) -> int | None:
        with self._lock:
            read = self._read
            if read is None:
                return None
            now = time.monotonic()
            if self._value is not None and now - self._read_at < _TERM_TTL_S:
                return self._value
        try:
            value: int | None = int(read())
        except Exception:  # a term is a nicety: a log line must never fail for it
            value = None
        with self._lock:
            self._value, self._read_at = value, time.monotonic()
        return value


TERM = TermSource()


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, node_id: str, term: TermSource = TERM) -> None:
        super().__init__()
        self.node_id = node_id
        self.term = term

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node_id": self.node_id,
            "term": self.term.get(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL [node] logger: message`, with `(request <id>)` inside a request."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s [{node_id}] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is None:
            return text
        first, sep, rest = text.partition("\n")
        return f"{first} (request {request_id}){sep}{rest}"


def setup_logging(
    log_format: str, level: str, node_id: str, stream: TextIO | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one writing `log_format` lines to stderr."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(node_id) if log_format == "json" else TextFormatter(node_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def request_id_of(request: web.BaseRequest) -> str | None:
    return request.get(_REQUEST_KEY)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id for its log lines; `on_prepare` puts it in the answer."""
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = offered if _CLIENT_ID_RE.match(offered) else new_request_id()
    request[_REQUEST_KEY] = request_id
    token = REQUEST_ID.set(request_id)
    try:
        return await handler(request)
    finally:
        REQUEST_ID.reset(token)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Adds `X-Request-Id` to every answer, streamed ones included, before headers go out."""
    request_id = request_id_of(request)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
