"""Every `raftmq` command's --help shows an example; every ctl command speaks --json."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import orjson
import pytest

from chaos.run import build_parser as chaos_parser
from node.config import build_parser as node_parser
from raftmq.bench.cli import build_parser as bench_parser
from raftmq.cli import build_parser, main
from tests.unit.test_client import FakeCluster


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*path, name))


def _ctl_ops() -> dict[str, argparse.ArgumentParser]:
    return {
        path[1]: sub
        for path, sub in _subcommands(build_parser())
        if len(path) == 2 and path[0] == "ctl"
    }


def test_every_command_help_has_an_example() -> None:
    commands = list(_subcommands(build_parser()))
    assert len(commands) > 20
    missing = [
        " ".join(path) or "raftmq" for path, sub in commands if "example:" not in sub.format_help()
    ]
    assert missing == []
    # `raftmq node`, `chaos` and `bench` hand their arguments to their own parsers.
    assert "example:" in node_parser().format_help()
    assert "example:" in bench_parser().format_help()
    chaos_commands = list(_subcommands(chaos_parser()))
    assert [p for p, sub in chaos_commands if p and "example:" not in sub.format_help()] == []


def test_every_ctl_command_takes_json() -> None:
    ops = _ctl_ops()
    assert {"status", "queues", "members", "declare", "publish", "backup"} <= set(ops)
    without = [name for name, sub in ops.items() if "--json" not in sub._option_string_actions]
    assert without == []


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize("op", ["status", "queues", "members"])
def test_json_output_parses(fake: FakeCluster, capsys: pytest.CaptureFixture[str], op: str) -> None:
    url = fake.node("leader").url
    # --json is accepted before and after the command.
    for argv in (["ctl", "--url", url, "--json", op], ["ctl", op, "--url", url, "--json"]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert err == ""
        parsed = orjson.loads(out)
        assert isinstance(parsed, dict if op == "status" else list)
