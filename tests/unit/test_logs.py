"""Structured logs: the JSON and text formatters, request ids in answers and in log lines."""

import io
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node import logs
from node.app import make_app
from node.config import parse_config
from tests.unit.test_node_app import FakeRaft, node_config


def _record(message: str, *args: Any, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("raftmq.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_json_line_has_every_field() -> None:
    term = logs.TermSource()
    term.set(lambda: 7)
    formatter = logs.JsonFormatter("n2", term)
    token = logs.REQUEST_ID.set("req-1")
    try:
        line = formatter.format(_record("hello %s", "world", exc=True))
    finally:
        logs.REQUEST_ID.reset(token)
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["level"] == "WARNING"
    assert data["logger"] == "raftmq.test"
    assert data["message"] == "hello world"
    assert data["node_id"] == "n2"
    assert data["term"] == 7
    assert data["request_id"] == "req-1"
    assert data["ts"].endswith("+00:00")
    assert "ValueError: boom" in data["exc"]


def test_json_line_outside_a_request_and_before_raft() -> None:
    data = orjson.loads(logs.JsonFormatter("n1", logs.TermSource()).format(_record("x")))
    assert data["term"] is None
    assert "request_id" not in data
    assert "exc" not in data


def test_a_failing_term_read_does_not_fail_the_line() -> None:
    term = logs.TermSource()

    def broken() -> int:
        raise RuntimeError("raft is closing")

    term.set(broken)
    assert orjson.loads(logs.JsonFormatter("n1", term).format(_record("x")))["term"] is None


def test_text_line_is_readable_and_names_the_request() -> None:
    formatter = logs.TextFormatter("n3")
    plain = formatter.format(_record("started"))
    assert plain.endswith("WARNING [n3] raftmq.test: started")
    token = logs.REQUEST_ID.set("abc")
    try:
        assert formatter.format(_record("in request")).endswith("in request (request abc)")
    finally:
        logs.REQUEST_ID.reset(token)


def test_setup_logging_json_to_a_stream() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    try:
        logs.setup_logging("json", "INFO", "n9", out)
        logging.getLogger("raftmq.x").info("one %d", 1)
        logging.getLogger("raftmq.x").debug("not shown")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    [line] = out.getvalue().splitlines()
    assert orjson.loads(line)["message"] == "one 1"
    with pytest.raises(ValueError, match="log format"):
        logs.setup_logging("xml", "INFO", "n9", out)


def test_log_format_flag() -> None:
    base = ["--id", "n1", "--data-dir", "d", "--raft", "127.0.0.1:1", "--http", "127.0.0.1:2"]
    assert parse_config(base).log_format == "text"
    assert parse_config([*base, "--log-format", "json"]).log_format == "json"


# -- request ids over HTTP ----------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.setFormatter(logs.JsonFormatter("n1", logs.TermSource()))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def capture() -> Iterator[_Capture]:
    handler = _Capture()
    logger = logging.getLogger("node")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _boom(request: web.Request) -> web.Response:
    logging.getLogger("node.test").warning("about to fail")
    raise RuntimeError("handler bug")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    raft = FakeRaft(tmp_path / "store")
    config = node_config(raft, tmp_path)
    app = make_app(raft, config)
    app.router.add_get("/test/boom", _boom)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    raft.store.close()


async def test_every_answer_has_a_request_id(client: TestClient[Any, Any]) -> None:
    ids = set()
    for path in ("/healthz", "/v1/queues/nope", "/v1/no-such-route", "/v1/backup"):
        resp = await client.get(path)
        await resp.read()
        request_id = resp.headers[logs.REQUEST_ID_HEADER]
        assert request_id, path
        ids.add(request_id)
    assert len(ids) == 4


async def test_a_sane_client_id_is_kept_and_a_bad_one_replaced(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": "trace-42"})
    assert resp.headers["X-Request-Id"] == "trace-42"
    resp = await client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert resp.headers["X-Request-Id"] not in ("", "bad id\twith spaces")


async def test_log_lines_and_500_answer_name_the_request(
    client: TestClient[Any, Any], capture: _Capture
) -> None:
    resp = await client.get("/test/boom")
    assert resp.status == 500
    request_id = resp.headers["X-Request-Id"]
    body = await resp.json()
    assert body["error"]["code"] == "internal"
    assert request_id in body["error"]["message"]
    warning, failure = capture.lines
    assert warning["message"] == "about to fail"
    assert warning["request_id"] == request_id
    assert failure["request_id"] == request_id
    assert "RuntimeError: handler bug" in failure["exc"]
    # Outside a request, no id.
    logging.getLogger("node.test").warning("after")
    assert "request_id" not in capture.lines[-1]
