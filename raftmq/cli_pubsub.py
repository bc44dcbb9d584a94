"""``raftmq ctl`` subcommands for exchanges and streams (tables, or ``--json``).

Kept apart from cli.py, which adds these parsers and dispatches to `OPS`;
this module uses cli.py's output helpers only at call time, so either module
may be imported first.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Callable
from typing import Any

from raftmq import cli as base
from raftmq.client import Client, Message
from raftmq.pubsub import StreamRecord

__all__ = ["OPS", "add_parsers"]

Op = Callable[[Client, argparse.Namespace, bool], None]


def add_parsers(ops: Any, common: argparse.ArgumentParser) -> None:
    """Adds the exchange and stream subcommands to ctl's subparsers `ops`."""
    ops.add_parser("exchanges", parents=[common], help="list exchanges")
    p = ops.add_parser("exchange", parents=[common], help="one exchange and its bindings")
    p.add_argument("exchange")

    p = ops.add_parser("declare-exchange", parents=[common], help="create an exchange")
    p.add_argument("exchange")
    p.add_argument("--type", choices=["direct", "topic", "fanout"], default="direct")
    p.add_argument("--alternate-queue", metavar="Q", help="gets messages no binding matches")
    p = ops.add_parser("delete-exchange", parents=[common], help="delete an exchange")
    p.add_argument("exchange")

    for name, text in (("bind", "route matching messages to a queue"), ("unbind", "undo a bind")):
        p = ops.add_parser(name, parents=[common], help=text)
        p.add_argument("exchange")
        p.add_argument("queue")
        p.add_argument(
            "--routing-key", default="", metavar="K", help="key, or topic pattern (* and #)"
        )

    p = ops.add_parser("publish-exchange", parents=[common], help="publish through an exchange")
    p.add_argument("exchange")
    p.add_argument("body", help='message body ("-" reads stdin)')
    p.add_argument("--routing-key", default="", metavar="K")
    p.add_argument("--id", help="dedup id (default: random)")
    p.add_argument(
        "--header", action="append", type=base._header, default=[], metavar="K=V", help="repeatable"
    )

    ops.add_parser("streams", parents=[common], help="list streams")
    p = ops.add_parser("stream", parents=[common], help="one stream and its consumer groups")
    p.add_argument("stream")
    p = ops.add_parser("declare-stream", parents=[common], help="create a stream")
    p.add_argument("stream")
    p.add_argument("--max-age", type=float, metavar="S")
    p.add_argument("--max-bytes", type=int, metavar="N")
    p.add_argument("--max-records", type=int, metavar="N")
    p = ops.add_parser("delete-stream", parents=[common], help="delete a stream")
    p.add_argument("stream")

    p = ops.add_parser("append", parents=[common], help="append one record to a stream")
    p.add_argument("stream")
    p.add_argument("body", help='record body ("-" reads stdin)')
    p.add_argument("--id", help="dedup id (default: random)")
    p.add_argument(
        "--header", action="append", type=base._header, default=[], metavar="K=V", help="repeatable"
    )

    p = ops.add_parser("read", parents=[common], help="read records from a stream")
    p.add_argument("stream")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--offset", type=int, metavar="N", help="first offset (default 0)")
    start.add_argument("--group", metavar="G", help="start at this group's committed offset")
    p.add_argument("--max", type=base._positive_int, default=100, metavar="N")
    p.add_argument("--wait", type=float, default=0.0, metavar="S", help="long poll seconds")

    p = ops.add_parser("commit", parents=[common], help="commit a consumer group's offset")
    p.add_argument("stream")
    p.add_argument("group")
    p.add_argument("offset", type=int)
    p = ops.add_parser("group-offset", parents=[common], help="a consumer group's offset")
    p.add_argument("stream")
    p.add_argument("group")
    p = ops.add_parser("delete-group", parents=[common], help="forget a consumer group")
    p.add_argument("stream")
    p.add_argument("group")


def _body(text: str) -> str | bytes:
    if text != "-":
        return text
    raw = sys.stdin.buffer.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _exchanges(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    exchanges = client.exchanges()
    if as_json:
        base._json_out(exchanges)
        return
    if not exchanges:
        base._out("no exchanges")
        return
    rows = [
        [x["name"], x["type"], x.get("alternate_queue"), len(x.get("bindings") or [])]
        for x in sorted(exchanges, key=lambda x: str(x["name"]))
    ]
    base._out(base.table(["NAME", "TYPE", "ALTERNATE", "BINDINGS"], rows))


def _exchange(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    info = client.exchange(args.exchange)
    if as_json:
        base._json_out(info)
        return
    base._out(f"exchange '{info['name']}' ({info['type']})")
    base._out(f"  alternate_queue = {base._cell(info.get('alternate_queue'))}")
    bindings = info.get("bindings") or []
    if bindings:
        base._out()
        rows = [[b["queue"], repr(b["routing_key"])] for b in bindings]
        base._out(base.table(["QUEUE", "ROUTING_KEY"], rows))


def _declare_exchange(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    result = client.declare_exchange(args.exchange, args.type, alternate_queue=args.alternate_queue)
    if as_json:
        base._json_out(result)
    else:
        base._out(f"exchange '{args.exchange}' ({result['type']}) is declared")


def _delete_exchange(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    client.delete_exchange(args.exchange)
    if as_json:
        base._json_out({"deleted": args.exchange})
    else:
        base._out(f"deleted exchange '{args.exchange}'")


def _bind(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    result = client.bind(args.exchange, args.queue, args.routing_key)
    if as_json:
        base._json_out(result)
    else:
        base._out(f"bound '{args.queue}' to '{args.exchange}' with {args.routing_key!r}")


def _unbind(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    client.unbind(args.exchange, args.queue, args.routing_key)
    binding = {"exchange": args.exchange, "queue": args.queue, "routing_key": args.routing_key}
    if as_json:
        base._json_out({"unbound": binding})
    else:
        base._out(f"unbound '{args.queue}' from '{args.exchange}' ({args.routing_key!r})")


def _publish_exchange(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    message = Message(_body(args.body), dict(args.header) or None, args.id)
    result = client.publish_to_exchange(args.exchange, args.routing_key, message)
    if as_json:
        base._json_out(
            {"routed": result.routed, "unroutable": result.unroutable, "ids": result.ids}
        )
        return
    targets = ", ".join(f"{q} ({n})" for q, n in sorted(result.routed.items())) or "no queue"
    base._out(f"{result.ids[0]} routed to {targets}; unroutable {result.unroutable}")


def _retention(config: dict[str, Any]) -> list[Any]:
    return [config.get("max_age"), config.get("max_bytes"), config.get("max_records")]


def _streams(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    streams = client.streams()
    if as_json:
        base._json_out(streams)
        return
    if not streams:
        base._out("no streams")
        return
    rows = [
        [
            s["name"],
            s["first_offset"],
            s["next_offset"],
            s["records"],
            s["bytes"],
            *_retention(s.get("config") or {}),
        ]
        for s in sorted(streams, key=lambda s: str(s["name"]))
    ]
    headers = ["NAME", "FIRST", "NEXT", "RECORDS", "BYTES", "MAX_AGE", "MAX_BYTES", "MAX_RECORDS"]
    base._out(base.table(headers, rows))


def _stream(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    info = client.stream(args.stream)
    if as_json:
        base._json_out(info)
        return
    for key in ("name", "first_offset", "last_offset", "next_offset", "records", "bytes"):
        base._out(f"{key.ljust(12)}  {base._cell(info.get(key))}")
    for key, value in sorted((info.get("config") or {}).items()):
        base._out(f"{key.ljust(12)}  {base._cell(value)}")
    groups = info.get("groups") or {}
    if groups:
        base._out()
        base._out(base.table(["GROUP", "OFFSET"], sorted(groups.items())))


def _declare_stream(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    result = client.declare_stream(
        args.stream, max_age=args.max_age, max_bytes=args.max_bytes, max_records=args.max_records
    )
    if as_json:
        base._json_out(result)
        return
    base._out(f"stream '{args.stream}' is declared")
    for key, value in sorted((result.get("config") or {}).items()):
        base._out(f"  {key} = {base._cell(value)}")


def _delete_stream(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    client.delete_stream(args.stream)
    if as_json:
        base._json_out({"deleted": args.stream})
    else:
        base._out(f"deleted stream '{args.stream}'")


def _append(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    message = Message(_body(args.body), dict(args.header) or None, args.id)
    [offset] = client.append(args.stream, message)
    if as_json:
        base._json_out({"offset": offset})
    else:
        base._out(str(offset))


def _record_json(record: StreamRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "offset": record.offset,
        "id": record.id,
        "body": record.body,
        "headers": record.headers,
        "timestamp": record.timestamp,
    }
    if isinstance(record.body, bytes):
        out["body"] = base64.b64encode(record.body).decode("ascii")
        out["encoding"] = "base64"
    return out


def _read(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    batch = client.read(
        args.stream, offset=args.offset, group=args.group, max=args.max, wait=args.wait
    )
    if as_json:
        base._json_out(
            {
                "records": [_record_json(r) for r in batch.records],
                "next_offset": batch.next_offset,
                "first_offset": batch.first_offset,
            }
        )
        return
    if batch.records:
        rows = [
            [
                r.offset,
                r.id,
                ",".join(f"{k}={v}" for k, v in sorted(r.headers.items())),
                base._body_text(r.body),
            ]
            for r in batch.records
        ]
        base._out(base.table(["OFFSET", "ID", "HEADERS", "BODY"], rows))
    else:
        base._out("no records")
    base._out(f"next offset {batch.next_offset}")


def _commit(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    offset = client.commit_offset(args.stream, args.group, args.offset)
    if as_json:
        base._json_out({"stream": args.stream, "group": args.group, "offset": offset})
    else:
        base._out(f"group '{args.group}' of '{args.stream}' is at offset {offset}")


def _group_offset(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    offset = client.group_offset(args.stream, args.group)
    if as_json:
        base._json_out({"stream": args.stream, "group": args.group, "offset": offset})
    else:
        base._out(str(offset))


def _delete_group(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    client.delete_group(args.stream, args.group)
    if as_json:
        base._json_out({"stream": args.stream, "group": args.group, "deleted": True})
    else:
        base._out(f"group '{args.group}' of '{args.stream}' deleted")


OPS: dict[str, Op] = {
    "exchanges": _exchanges,
    "exchange": _exchange,
    "declare-exchange": _declare_exchange,
    "delete-exchange": _delete_exchange,
    "bind": _bind,
    "unbind": _unbind,
    "publish-exchange": _publish_exchange,
    "streams": _streams,
    "stream": _stream,
    "declare-stream": _declare_stream,
    "delete-stream": _delete_stream,
    "append": _append,
    "read": _read,
    "commit": _commit,
    "group-offset": _group_offset,
    "delete-group": _delete_group,
}
