"""Shape checks and small LMDB helpers shared by every command module.

They live here, not in commands.py, because commands.py imports the exchange,
stream and user modules to dispatch to them, so those cannot import it back.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import lmdb

from storage import keys
from storage.config import MAX_INT
from storage.errors import InvalidCommand

ENCODING_BASE64: Final = "base64"
# Longest routing key or binding pattern, in UTF-8 bytes (AMQP's shortstr).
MAX_ROUTING_KEY_BYTES: Final = 255

Command = dict[str, Any]
Result = dict[str, Any]


def integer(cmd: Command, key: str, default: int | None = None) -> int:
    value = cmd.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise InvalidCommand(f"{key} must be an integer in [0, {MAX_INT}]")
    return value


def string(cmd: Command, key: str) -> str:
    value = cmd.get(key)
    if not isinstance(value, str):
        raise InvalidCommand(f"{key} must be a string")
    return value


def listing(cmd: Command, key: str) -> list[Any]:
    value = cmd.get(key)
    if not isinstance(value, list):
        raise InvalidCommand(f"{key} must be a list")
    return value


def name(cmd: Command, key: str) -> str:
    value = cmd.get(key)
    if not keys.is_queue_name(value):
        raise InvalidCommand(f"{key} must be a name matching [A-Za-z0-9._-]{{1,200}}")
    return value


def routing_key(cmd: Command, key: str = "routing_key") -> str:
    value = string(cmd, key)
    if len(value.encode()) > MAX_ROUTING_KEY_BYTES:
        raise InvalidCommand(f"{key} must be at most {MAX_ROUTING_KEY_BYTES} bytes")
    return value


class Payload(NamedTuple):
    """One message or stream record of a command, checked.

    A named tuple rather than a frozen dataclass: every node builds one per
    message it applies, and a tuple is made in a third of the time.
    """

    id: str | None
    body: str
    headers: dict[str, Any]
    encoding: str | None
    delay_ms: int | None


def payload(raw: object, *, id_required: bool) -> Payload:
    if not isinstance(raw, dict):
        raise InvalidCommand("each message or record must be an object")
    item_id = raw.get("id")
    if item_id is not None or id_required:
        item_id = string(raw, "id")
    body = string(raw, "body")
    headers = raw.get("headers")
    if headers is None:
        headers = {}
    elif not isinstance(headers, dict) or (
        headers and not all(isinstance(k, str) for k in headers)
    ):
        raise InvalidCommand("headers must be an object with string keys")
    encoding = raw.get("encoding")
    if encoding not in (None, ENCODING_BASE64):
        raise InvalidCommand('encoding must be "base64" or absent')
    delay_ms = None if raw.get("delay_ms") is None else integer(raw, "delay_ms")
    return Payload(item_id, body, headers, encoding, delay_ms)


def delete_prefix(txn: lmdb.Transaction[bytes], db: lmdb._Database, prefix: bytes) -> None:
    with txn.cursor(db=db) as cursor:
        if not cursor.set_range(prefix):
            return
        while cursor.key().startswith(prefix):
            if not cursor.delete():
                return


def keys_with_prefix(
    txn: lmdb.Transaction[bytes], db: lmdb._Database, prefix: bytes
) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of `db` whose key starts with `prefix`, in key order."""
    found: list[tuple[bytes, bytes]] = []
    with txn.cursor(db=db) as cursor:
        if cursor.set_range(prefix):
            for key, value in cursor.iternext():
                if not key.startswith(prefix):
                    break
                found.append((key, value))
    return found
