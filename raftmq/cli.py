"""The ``raftmq`` command: run a node, run a local cluster, or poke at one.

* ``raftmq node ...``        one server process (delegates to ``node.__main__``);
* ``raftmq cluster up ...``  N local nodes in the foreground (what ``make run`` does);
* ``raftmq ctl ...``         client commands, aligned tables or ``--json``;
* ``raftmq chaos run ...``   a bounded fault-injection run (delegates to ``chaos.run``);
* ``raftmq bench ...``       the peers' benchmark workloads (delegates to ``raftmq.bench``).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import logging
import os
import signal
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

import orjson

from raftmq import cli_pubsub, cli_users
from raftmq.client import Client, ReceivedMessage
from raftmq.errors import ConnectionFailed, RaftMQError
from raftmq.supervisor import LocalCluster, NodeExited, PortInUse, StartupCancelled, StopFlag

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:7200"
START_HINT = 'is the cluster running? start one with "make run"'


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _json_out(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; numbers are right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    numeric = [
        bool(rows)
        and all(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in rows)
        for i in range(len(headers))
    ]

    def fmt(row: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([fmt(list(headers)), *(fmt(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ------------------------------------------------------------------- parser


def _urls(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def _header(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _ctl_common(*, suppress: bool) -> argparse.ArgumentParser:
    """Options valid both before and after the ctl subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "--url",
        action="append",
        type=_urls,
        default=default,
        metavar="URL",
        help=f"node URL; repeat or comma-separate for failover (default {DEFAULT_URL})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print JSON instead of tables",
    )
    p.add_argument(
        "--token",
        default=default,
        help="bearer token of a user (default: $RAFTMQ_TOKEN); never needed before users exist",
    )
    p.add_argument("--ca", default=default, metavar="FILE", help="CA bundle to verify https nodes")
    return p


_CTL = "raftmq ctl --url http://127.0.0.1:7200"
# The `example:` line of each command's --help, by command path.
_EXAMPLES: dict[str, str] = {
    "node": (
        "raftmq node --id n1 --data-dir data/n1 --raft 127.0.0.1:7100 --http 127.0.0.1:7200 "
        "--peers 127.0.0.1:7101,127.0.0.1:7102"
    ),
    "chaos": "raftmq chaos run --duration 30 --seed 1",
    "bench": "raftmq bench --workloads W1,W2 --scale 0.01 --out /tmp/smoke.json",
    "cluster": "raftmq cluster up --nodes 3",
    "cluster up": "raftmq cluster up --nodes 3 --data-dir .raftmq-data --base-port 7100",
    "ctl": f"{_CTL} status",
    **{
        f"ctl {op}": f"{_CTL} {example}"
        for op, example in {
            "status": "status --json",
            "queues": "queues",
            "declare": "declare orders --visibility-timeout 30 --dead-letter-queue orders.dlq",
            "publish": "publish orders 'order 1' --header prio=high",
            "receive": "receive orders --max 10 --wait 5",
            "ack": "ack orders RECEIPT",
            "nack": "nack orders RECEIPT --delay 10",
            "purge": "purge orders",
            "delete": "delete orders",
            "exchanges": "exchanges",
            "exchange": "exchange events",
            "declare-exchange": "declare-exchange events --type topic",
            "delete-exchange": "delete-exchange events",
            "bind": "bind events orders --routing-key 'order.*'",
            "unbind": "unbind events orders --routing-key 'order.*'",
            "publish-exchange": "publish-exchange events 'hello' --routing-key order.created",
            "streams": "streams",
            "stream": "stream audit",
            "declare-stream": "declare-stream audit --max-age 86400",
            "delete-stream": "delete-stream audit",
            "append": "append audit 'user 7 logged in'",
            "read": "read audit --group reporter --max 10 --wait 5",
            "commit": "commit audit reporter 42",
            "group-offset": "group-offset audit reporter",
            "delete-group": "delete-group audit reporter",
        }.items()
    },
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="raftmq",
        description="A clustered message broker replicated through Raft.",
        epilog="example: raftmq cluster up --nodes 3",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = sub.add_parser(
        "node", help="run one server node (see `raftmq node --help`)", add_help=False
    )
    node.add_argument("node_args", nargs=argparse.REMAINDER)

    chaos = sub.add_parser(
        "chaos",
        help="fault-injection runs (see `raftmq chaos run --help`)",
        add_help=False,
    )
    chaos.add_argument("chaos_args", nargs=argparse.REMAINDER)

    bench = sub.add_parser(
        "bench", help="benchmark workloads W1..W4 (see `raftmq bench --help`)", add_help=False
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)

    cluster = sub.add_parser("cluster", help="run a local cluster")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = csub.add_parser("up", help="start N local nodes in the foreground (Ctrl-C stops them)")
    up.add_argument("--nodes", type=_positive_int, default=3)
    up.add_argument("--data-dir", default=".raftmq-data")
    up.add_argument("--base-port", type=int, default=7100, help="raft ports; HTTP is +100")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--fsync", choices=["always", "never"], default=None)
    up.add_argument("--ready-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    up.add_argument("--node-module", default="node", help=argparse.SUPPRESS)

    common = _ctl_common(suppress=True)
    ctl = sub.add_parser(
        "ctl", help="talk to a running cluster", parents=[_ctl_common(suppress=False)]
    )
    ctl.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP attempt")
    ctl.add_argument(
        "--retry-deadline",
        type=float,
        default=5.0,
        help="seconds to keep failing over before giving up (default 5)",
    )
    ops = ctl.add_subparsers(dest="op", required=True, metavar="OP")

    ops.add_parser("status", parents=[common], help="raft role, leader, members")
    ops.add_parser("queues", parents=[common], help="list queues with counters")

    p = ops.add_parser("declare", parents=[common], help="create a queue (idempotent)")
    p.add_argument("queue")
    p.add_argument("--visibility-timeout", type=float, metavar="S")
    p.add_argument("--max-deliveries", type=int, metavar="N")
    p.add_argument("--dead-letter-queue", metavar="Q")
    p.add_argument("--message-ttl", type=float, metavar="S")
    p.add_argument("--max-length", type=int, metavar="N")
    p.add_argument("--overflow", choices=["reject_publish", "drop_head"])
    p.add_argument("--delivery-delay", type=float, metavar="S")

    p = ops.add_parser("publish", parents=[common], help="publish one message")
    p.add_argument("queue")
    p.add_argument("body", help='message body ("-" reads stdin)')
    p.add_argument("--id", help="dedup id (default: random)")
    p.add_argument(
        "--header", action="append", type=_header, default=[], metavar="K=V", help="repeatable"
    )
    p.add_argument("--delay", type=float, metavar="S")

    p = ops.add_parser("receive", parents=[common], help="lease messages")
    p.add_argument("queue")
    p.add_argument("--max", type=_positive_int, default=1, metavar="N")
    p.add_argument("--wait", type=float, default=0.0, metavar="S", help="long poll seconds")
    p.add_argument("--visibility-timeout", type=float, metavar="S")

    p = ops.add_parser("ack", parents=[common], help="acknowledge receipts")
    p.add_argument("queue")
    p.add_argument("receipts", nargs="+", metavar="RECEIPT")

    p = ops.add_parser("nack", parents=[common], help="return receipts to the queue")
    p.add_argument("queue")
    p.add_argument("receipts", nargs="+", metavar="RECEIPT")
    p.add_argument("--delay", type=float, metavar="S")

    p = ops.add_parser(
        "members",
        parents=[common],
        help="cluster members with their state",
        epilog="example: raftmq ctl --url http://127.0.0.1:7200 members",
    )
    p = ops.add_parser(
        "leader",
        parents=[common],
        help="the current leader",
        epilog="example: raftmq ctl --url http://127.0.0.1:7200 leader --json",
    )
    p = ops.add_parser(
        "add-node",
        parents=[common],
        help="add a member (then start it with --join, or with the member list)",
        epilog=(
            "example: raftmq ctl --url http://127.0.0.1:7200 add-node n4 "
            "127.0.0.1:7103 http://127.0.0.1:7203"
        ),
    )
    p.add_argument("id")
    p.add_argument("raft", metavar="RAFT_HOST:PORT")
    p.add_argument("http", metavar="HTTP_URL")
    p = ops.add_parser(
        "remove-node",
        parents=[common],
        help="remove a member by id or raft address (it stops itself)",
        epilog="example: raftmq ctl --url http://127.0.0.1:7200 remove-node n3",
    )
    p.add_argument("member", metavar="ID")
    p = ops.add_parser(
        "backup",
        parents=[common],
        help="save a consistent copy of one node's state (LMDB + applied index)",
        epilog="example: raftmq ctl --url http://127.0.0.1:7200 backup --out raftmq.backup",
    )
    p.add_argument("--out", required=True, metavar="FILE")

    p = ops.add_parser("purge", parents=[common], help="drop every message in a queue")
    p.add_argument("queue")
    p = ops.add_parser("delete", parents=[common], help="delete a queue")
    p.add_argument("queue")
    cli_pubsub.add_parsers(ops, common)
    cli_users.add_parsers(ops, common)
    _add_examples(parser)
    return parser


def _add_examples(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Gives every subcommand without an epilog its `example:` line from `_EXAMPLES`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = f"{path} {name}".strip()
                if not sub.epilog and key in _EXAMPLES:
                    sub.epilog = f"example: {_EXAMPLES[key]}"
                _add_examples(sub, key)


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "node":
        return run_node(args_list[1:])
    if args_list and args_list[0] == "chaos":
        return run_chaos(args_list[1:])
    if args_list and args_list[0] == "bench":
        return run_bench(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:  # --help or a usage error; report it as a return code
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "node":
        return run_node(list(args.node_args))
    if args.command == "chaos":
        return run_chaos(list(args.chaos_args))
    if args.command == "bench":
        return run_bench(list(args.bench_args))
    if args.command == "cluster":
        return cluster_up(args)
    return ctl(args)


def run_node(argv: list[str]) -> int:
    """Hands the rest of the command line to the server's own entry point."""
    module = importlib.import_module("node.__main__")
    node_main: Callable[[list[str] | None], int | None] = module.main
    return int(node_main(argv) or 0)


def run_chaos(argv: list[str]) -> int:
    """Hands the rest of the command line to ``chaos.run`` (imported only when used)."""
    module = importlib.import_module("chaos.run")
    chaos_main: Callable[[list[str] | None], int] = module.main
    return int(chaos_main(argv))


def run_bench(argv: list[str]) -> int:
    """Hands the rest of the command line to ``raftmq.bench`` (imported only when used)."""
    module = importlib.import_module("raftmq.bench")
    bench_main: Callable[[list[str] | None], int] = module.main
    return int(bench_main(argv))


# --------------------------------------------------------------- cluster up


def cluster_up(args: argparse.Namespace) -> int:
    """Runs the cluster until SIGINT/SIGTERM; exit 1 if it could not start."""
    cluster = LocalCluster(
        args.nodes,
        data_dir=args.data_dir,
        base_port=args.base_port,
        host=args.host,
        fsync=args.fsync,
        node_module=args.node_module,
    )
    stop = StopFlag()  # not a threading.Event: see StopFlag

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cluster.start()
            _out(f"starting {args.nodes} node(s); logs in {args.data_dir}/<id>/node.log")
            leader = cluster.wait_ready(args.ready_timeout, cancel=stop)
        except PortInUse as e:
            _err(f"error: {e}")
            return 1
        except NodeExited as e:
            _err(f"error: node {e.spec.id} exited with code {e.returncode} during startup")
            _err(f"--- last lines of {e.spec.log_path}:")
            _err(e.log_tail or "(empty)")
            return 1
        except TimeoutError as e:
            _err(f"error: {e}; see {args.data_dir}/<id>/node.log")
            return 1
        except StartupCancelled:
            return 0
        _print_cluster(cluster, leader)
        while not stop.wait(0.5):
            for spec, rc in cluster.newly_exited():
                _err(f"warning: node {spec.id} exited with code {rc}; last lines of its log:")
                _err(cluster.log_tail(spec.id, 10) or "(empty)")
        return 0
    finally:
        if cluster.process(cluster.specs[0].id) is not None:
            _out("stopping nodes...")
        codes = cluster.stop(10.0)
        if codes:
            _out("stopped: " + ", ".join(f"{k} ({v})" for k, v in codes.items()))
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_cluster(cluster: LocalCluster, leader: str) -> None:
    statuses = cluster.statuses()
    rows = []
    for spec in cluster.specs:
        status = statuses.get(spec.id) or {}
        rows.append([spec.id, spec.http_url, spec.raft, status.get("role", "?")])
    _out(table(["ID", "HTTP", "RAFT", "ROLE"], rows))
    url = cluster.spec(leader).http_url
    _out()
    _out(f"API:        {url}/v1   (any node works; followers redirect to the leader)")
    _out(f"dashboard:  {url}/")
    _out(f"try:        raftmq ctl --url {','.join(cluster.urls)} status")
    _out("Ctrl-C stops the cluster.")


# ---------------------------------------------------------------------- ctl


def ctl(args: argparse.Namespace) -> int:
    """Runs one client command; errors become one stderr line and exit code 1."""
    groups: list[list[str]] = getattr(args, "url", None) or [[DEFAULT_URL]]
    urls = [u for group in groups for u in group]
    as_json = bool(getattr(args, "json", False))
    try:
        with Client(
            urls,
            timeout=args.timeout,
            retry_deadline=args.retry_deadline,
            token=getattr(args, "token", None) or os.environ.get("RAFTMQ_TOKEN") or None,
            ca=getattr(args, "ca", None),
        ) as client:
            (_OPS.get(args.op) or cli_pubsub.OPS.get(args.op) or cli_users.OPS[args.op])(
                client, args, as_json
            )
    except ConnectionFailed as e:
        _err(f"error: {e.message}: {START_HINT}")
        return 1
    except RaftMQError as e:
        _err(f"error: {e.code}: {e.message}")
        return 1
    except (ValueError, OSError) as e:
        _err(f"error: {e}")
        return 1
    return 0


def _status(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    info = client.cluster()
    if as_json:
        _json_out(info)
        return
    leader = info.get("leader") or {}
    leader_id = leader.get("id")
    pairs = [
        ("node", f"{info.get('node_id')} ({info.get('role')})"),
        ("leader", f"{leader_id} {leader.get('http', '')}".strip() if leader_id else "none"),
        ("term", info.get("term")),
        ("commit index", info.get("commit_index")),
        ("applied index", info.get("applied_index")),
        ("log length", info.get("log_length")),
    ]
    if info.get("digest") is not None:
        pairs.append(("digest", info["digest"]))
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        _out(f"{key.ljust(width)}  {_cell(value)}")
    members = info.get("members") or []
    if members:
        _out()
        rows = [
            [
                m.get("id"),
                m.get("http"),
                m.get("raft"),
                m.get("state"),
                "leader" if leader_id is not None and m.get("id") == leader_id else "",
            ]
            for m in members
        ]
        _out(table(["ID", "HTTP", "RAFT", "STATE", "ROLE"], rows))


def _queues(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    queues = client.queues()
    if as_json:
        _json_out(queues)
        return
    if not queues:
        _out("no queues")
        return
    cols = [
        ("NAME", "name"),
        ("READY", "ready"),
        ("IN_FLIGHT", "in_flight"),
        ("DELAYED", "delayed"),
        ("TOTAL", "total"),
        ("PUBLISHED", "published_total"),
        ("DELIVERED", "delivered_total"),
        ("ACKED", "acked_total"),
        ("DEAD", "dead_lettered_total"),
    ]
    rows = [[q.get(key) for _, key in cols] for q in sorted(queues, key=lambda q: q["name"])]
    _out(table([h for h, _ in cols], rows))


_DECLARE_OPTIONS = (
    "visibility_timeout",
    "max_deliveries",
    "dead_letter_queue",
    "message_ttl",
    "max_length",
    "overflow",
    "delivery_delay",
)


def _declare(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    config = {k: getattr(args, k) for k in _DECLARE_OPTIONS if getattr(args, k) is not None}
    result = client.declare_queue(args.queue, **config)
    if as_json:
        _json_out(result)
        return
    _out(f"queue '{result.get('queue', args.queue)}' is declared")
    for key, value in sorted((result.get("config") or {}).items()):
        _out(f"  {key} = {_cell(value)}")


def _publish(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    body: str | bytes = args.body
    if body == "-":
        raw = sys.stdin.buffer.read()
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            body = raw
    headers = dict(args.header) or None
    msg_id = client.publish(args.queue, body, headers=headers, id=args.id, delay=args.delay)
    if as_json:
        _json_out({"id": msg_id})
    else:
        _out(msg_id)


def _message_json(m: ReceivedMessage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": m.id,
        "body": m.body,
        "headers": m.headers,
        "receipt": m.receipt,
        "deliveries": m.deliveries,
        "published_at": m.published_at,
    }
    if isinstance(m.body, bytes):
        out["body"] = base64.b64encode(m.body).decode("ascii")
        out["encoding"] = "base64"
    return out


def _body_text(body: str | bytes, limit: int = 80) -> str:
    text = body if isinstance(body, str) else repr(body)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _receive(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    messages = client.receive(
        args.queue, max=args.max, wait=args.wait, visibility_timeout=args.visibility_timeout
    )
    if as_json:
        _json_out([_message_json(m) for m in messages])
        return
    if not messages:
        _out("no messages")
        return
    rows = [
        [
            m.id,
            m.deliveries,
            m.receipt,
            ",".join(f"{k}={v}" for k, v in sorted(m.headers.items())),
            _body_text(m.body),
        ]
        for m in messages
    ]
    _out(table(["ID", "DELIVERIES", "RECEIPT", "HEADERS", "BODY"], rows))


def _ack(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    result = client.ack(args.queue, args.receipts)
    if as_json:
        _json_out({"acked": result.acked, "stale": result.stale})
        return
    _out(f"acked {result.acked}")
    if result.stale:
        _out("stale (already acked, redelivered or expired): " + " ".join(result.stale))


def _nack(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    result = client.nack(args.queue, args.receipts, delay=args.delay)
    if as_json:
        _json_out({"requeued": result.requeued, "stale": result.stale})
        return
    _out(f"requeued {result.requeued}")
    if result.stale:
        _out("stale (already acked, redelivered or expired): " + " ".join(result.stale))


def _purge(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    n = client.purge(args.queue)
    if as_json:
        _json_out({"purged": n})
    else:
        _out(f"purged {n} message(s) from '{args.queue}'")


def _delete(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    client.delete_queue(args.queue)
    if as_json:
        _json_out({"deleted": args.queue})
    else:
        _out(f"deleted queue '{args.queue}'")


def _members_table(members: Sequence[Mapping[str, Any]], leader_raft: str | None) -> str:
    rows = [
        [
            m.get("id"),
            m.get("raft"),
            m.get("http"),
            "leader" if m.get("raft") == leader_raft else "",
        ]
        for m in members
    ]
    return table(["ID", "RAFT", "HTTP", "ROLE"], rows)


def _leader_raft(client: Client) -> str | None:
    """The leader's raft address as the cluster reports it now (None if there is none)."""
    leader = client.cluster().get("leader") or {}
    return leader.get("raft")


def _members(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    info = client.cluster()
    members = info.get("members") or []
    if as_json:
        _json_out(members)
        return
    _out(_members_table(members, (info.get("leader") or {}).get("raft")))


def _leader(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    leader = client.cluster().get("leader")
    if as_json:
        _json_out(leader)
        return
    if not leader:
        _out("none")
        return
    _out(f"{leader.get('id')} {leader.get('http')} ({leader.get('raft')})")


def _add_node(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    members = client.add_member(args.id, args.raft, args.http)
    if as_json:
        _json_out(members)
        return
    _out(f"added {args.id}; start it with: raftmq node --id {args.id} --raft {args.raft} ...")
    _out(_members_table(members, _leader_raft(client)))


def _remove_node(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    members = client.remove_member(args.member)
    if as_json:
        _json_out(members)
        return
    _out(f"removed {args.member}")
    _out(_members_table(members, _leader_raft(client)))


def _open_backup(client: Client, args: argparse.Namespace) -> Any:
    """The backup stream of the first node (in --url order) that answers; any node has one."""
    token = getattr(args, "token", None) or os.environ.get("RAFTMQ_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = ssl.create_default_context(cafile=getattr(args, "ca", None))
    failures: list[str] = []
    for base in client.urls:
        url = base.rstrip("/") + "/v1/backup"
        request = urllib.request.Request(url, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=args.timeout, context=context)
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise  # the request itself (its token) is refused: every node would say so
            failures.append(f"{url}: HTTP {exc.code}")
        except OSError as exc:  # refused, unreachable, timed out
            failures.append(f"{url}: {exc}")
    raise ConnectionFailed("no node could send a backup (" + "; ".join(failures) + ")")


def _backup(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    size = 0
    partial = args.out + ".part"  # renamed once whole: a failed copy never looks like a backup
    with _open_backup(client, args) as resp, open(partial, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        show_progress = sys.stderr.isatty() and not as_json
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            size += len(chunk)
            if show_progress and total:
                sys.stderr.write(
                    f"\rbackup: {size >> 20} of {total >> 20} MiB ({size * 100 // total}%)"
                )
        if show_progress and total:
            sys.stderr.write("\n")
        applied = resp.headers.get("X-Applied-Index")
    os.replace(partial, args.out)
    if as_json:
        _json_out({"file": args.out, "bytes": size, "applied_index": int(applied or 0)})
        return
    _out(f"wrote {args.out}: {size} bytes, state at applied index {applied}")


_OPS: dict[str, Callable[[Client, argparse.Namespace, bool], None]] = {
    "members": _members,
    "leader": _leader,
    "add-node": _add_node,
    "remove-node": _remove_node,
    "backup": _backup,
    "status": _status,
    "queues": _queues,
    "declare": _declare,
    "publish": _publish,
    "receive": _receive,
    "ack": _ack,
    "nack": _nack,
    "purge": _purge,
    "delete": _delete,
}
