"""`raftmq ctl user ...`: create users (token printed once), grant, revoke, delete, list."""

from __future__ import annotations

import argparse
from typing import Any

from raftmq import cli as base
from raftmq.client import Client

KINDS = ("configure", "write", "read")
_CTL = "raftmq ctl --url http://127.0.0.1:7200"
_EXAMPLES = {
    "add": "user add admin --admin   (no token needed while no user exists)",
    "delete": "--token $RAFTMQ_TOKEN user delete alice",
    "grant": "user grant alice --configure '' --write 'orders.*' --read 'orders.*'",
    "revoke": "user revoke alice",
    "list": "user list",
}


def add_parsers(ops: Any, common: argparse.ArgumentParser) -> None:
    """Adds `user` and its subcommands to ctl's subparsers `ops`."""
    user = ops.add_parser(
        "user",
        parents=[common],
        help="manage users and permissions (admin)",
        epilog=f"example: {_CTL} user list",
    )
    sub = user.add_subparsers(dest="user_op", required=True, metavar="USER_OP")

    def parser(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], help=text, epilog=f"example: {_CTL} {_EXAMPLES[name]}"
        )
        return p

    p = parser("add", "create a user and print its token (shown once)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="may manage users, members, backups")
    parser("delete", "delete a user (not the last admin)").add_argument("name")
    p = parser("grant", "set a user's permission regexes (all three; '' allows nothing)")
    p.add_argument("name")
    for kind, text in (
        ("configure", "declare/delete/purge/bind"),
        ("write", "publish/append"),
        ("read", "receive/ack/nack/read"),
    ):
        p.add_argument(f"--{kind}", default="", metavar="RE", help=f"names you may {text}")
    parser("revoke", "clear a user's permissions").add_argument("name")
    parser("list", "list users and permissions")


def _user(client: Client, args: argparse.Namespace, as_json: bool) -> None:
    op = args.user_op
    if op == "add":
        created = client.add_user(args.name, admin=args.admin)
        if as_json:
            base._json_out(created)
        else:
            base._out(f"created user {created['name']}{' (admin)' if created['admin'] else ''}")
            base._out(f"token (shown only now): {created['token']}")
    elif op in ("delete", "revoke"):
        (client.delete_user if op == "delete" else client.revoke)(args.name)
        done = "deleted" if op == "delete" else "revoked"
        if as_json:
            base._json_out({done: args.name})
        else:
            base._out(f"{done} user {args.name}")
    elif op == "grant":
        granted = client.grant(
            args.name, configure=args.configure, write=args.write, read=args.read
        )
        if as_json:
            base._json_out(granted)
        else:
            base._out(f"set permissions of {args.name}")
    else:
        found = client.users()
        if as_json:
            base._json_out(found)
            return
        rows = [
            [u["name"], "yes" if u["admin"] else "", *(u["permissions"][k] for k in KINDS)]
            for u in found
        ]
        base._out(base.table(["USER", "ADMIN", "CONFIGURE", "WRITE", "READ"], rows))


OPS = {"user": _user}
