"""``raftmq ctl`` exchange and stream subcommands against the real app on a fake Raft port."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from raftmq.cli import main
from tests.unit.test_client_pubsub import Server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    try:
        yield running
    finally:
        running.stop()


class Ctl:
    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys

    def text(self, *args: str, code: int = 0) -> str:
        self.capsys.readouterr()
        assert main(["ctl", "--url", self.url, "--retry-deadline", "1", *args]) == code
        captured = self.capsys.readouterr()
        return captured.out if code == 0 else captured.err

    def json(self, *args: str) -> Any:
        return orjson.loads(self.text(*args, "--json"))


@pytest.fixture
def ctl(server: Server, capsys: pytest.CaptureFixture[str]) -> Ctl:
    return Ctl(server.url, capsys)


def test_exchange_commands(ctl: Ctl) -> None:
    assert "is declared" in ctl.text("declare-exchange", "x", "--type", "topic")
    ctl.text("declare", "q")
    assert ctl.json("bind", "x", "q", "--routing-key", "a.#")["routing_key"] == "a.#"
    routed = ctl.json("publish-exchange", "x", "hello", "--routing-key", "a.b", "--id", "m1")
    assert routed == {"routed": {"q": 1}, "unroutable": 0, "ids": ["m1"]}
    assert "no queue" in ctl.text("publish-exchange", "x", "lost", "--routing-key", "b")
    assert [x["name"] for x in ctl.json("exchanges")] == ["x"]
    table = ctl.text("exchanges")
    assert "NAME" in table and "topic" in table
    assert "'a.#'" in ctl.text("exchange", "x")
    assert ctl.json("unbind", "x", "q", "--routing-key", "a.#")["unbound"]["queue"] == "q"
    assert "binding_not_found" in ctl.text("unbind", "x", "q", "--routing-key", "a.#", code=1)
    assert ctl.json("delete-exchange", "x") == {"deleted": "x"}
    assert "exchange_not_found" in ctl.text("exchange", "x", code=1)
    assert ctl.text("exchanges").strip() == "no exchanges"


def test_stream_commands(ctl: Ctl) -> None:
    declared = ctl.json("declare-stream", "s", "--max-records", "10", "--max-age", "60")
    assert declared["config"] == {"max_age": 60.0, "max_bytes": None, "max_records": 10}
    assert ctl.text("append", "s", "first", "--id", "r1").strip() == "0"
    assert ctl.json("append", "s", "second", "--header", "k=v") == {"offset": 1}
    assert ctl.json("append", "s", "first", "--id", "r1") == {"offset": 0}
    read = ctl.json("read", "s", "--offset", "1")
    assert [(r["offset"], r["body"], r["headers"]) for r in read["records"]] == [
        (1, "second", {"k": "v"})
    ]
    assert read["next_offset"] == 2
    table = ctl.text("read", "s")
    assert "OFFSET" in table and "next offset 2" in table
    assert ctl.json("commit", "s", "g", "1")["offset"] == 1
    assert ctl.text("group-offset", "s", "g").strip() == "1"
    assert [r["offset"] for r in ctl.json("read", "s", "--group", "g")["records"]] == [1]
    assert ctl.json("stream", "s")["groups"] == {"g": 1}
    assert "deleted" in ctl.text("delete-group", "s", "g")
    assert ctl.json("stream", "s")["groups"] == {}
    assert ctl.json("commit", "s", "g", "1")["offset"] == 1
    assert "GROUP" in ctl.text("stream", "s")
    assert "RECORDS" in ctl.text("streams")
    assert ctl.json("delete-stream", "s") == {"deleted": "s"}
    assert "stream_not_found" in ctl.text("read", "s", code=1)
    assert ctl.text("streams").strip() == "no streams"
