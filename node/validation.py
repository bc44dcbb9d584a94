"""Turn request JSON into storage commands, or refuse it with a clear 400.

Everything non-deterministic (ids, lease tokens, `now`) is stamped here, on
the leader, so that applying a command is the same on every replica.
"""

import binascii
import math
import re
import secrets
import uuid
from collections.abc import Set
from typing import Any, Final

from node.config import Limits
from node.errors import ApiError, bad_request

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

QUEUE_FIELDS = {
    "visibility_timeout",
    "max_deliveries",
    "dead_letter_queue",
    "message_ttl",
    "max_length",
    "overflow",
    "delivery_delay",
}


def check_name(name: str, kind: str = "queue") -> str:
    if not NAME_RE.fullmatch(name):  # match() would let "name\n" through
        raise bad_request(
            f"{kind} name {name[:60]!r} is invalid: use 1-200 of A-Z a-z 0-9 . _ -",
            "invalid_name",
        )
    return name


def expect_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{key} must be a number")
    # math.isfinite() would raise OverflowError on an int beyond float range.
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"{key} must be a number")
    if not low <= value <= high:
        raise bad_request(f"{key} must be between {low:g} and {high:g}")
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{key} must be an integer")
    if not low <= value <= high:
        raise bad_request(f"{key} must be between {low} and {high}")
    return value


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def reject_unknown(body: dict[str, Any], allowed: Set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unknown field(s): {', '.join(unknown)}")


def queue_config(body: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Partial queue config in storage units (ms); storage fills the defaults."""
    reject_unknown(body, QUEUE_FIELDS)
    config: dict[str, Any] = {}
    visibility = _number(body, "visibility_timeout", 0.001, limits.max_visibility_timeout_s)
    if visibility is not None:
        config["visibility_timeout_ms"] = _ms(visibility)
    if "max_deliveries" in body:
        config["max_deliveries"] = _integer(body, "max_deliveries", 1, 1_000_000)
    if "dead_letter_queue" in body:
        dlq = body["dead_letter_queue"]
        if dlq is not None and not isinstance(dlq, str):
            raise bad_request("dead_letter_queue must be a queue name")
        config["dead_letter_queue"] = None if dlq is None else check_name(dlq)
    if "message_ttl" in body:
        config["message_ttl_ms"] = _ms(_number(body, "message_ttl", 0.001, 365 * 86400))
    if "max_length" in body:
        config["max_length"] = _integer(body, "max_length", 1, 1 << 40)
    if "overflow" in body:
        overflow = body["overflow"]
        if overflow not in ("reject_publish", "drop_head"):
            raise bad_request("overflow must be 'reject_publish' or 'drop_head'")
        config["overflow"] = overflow
    delay = _number(body, "delivery_delay", 0, limits.max_delay_s)
    if delay is not None:
        config["delivery_delay_ms"] = _ms(delay)
    return config


def _headers(value: Any, limits: Limits) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("headers must be an object of strings")
    if len(value) > limits.max_headers:
        raise bad_request(f"at most {limits.max_headers} headers per message")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 256 or len(item) > 4096:
            raise bad_request("header names and values must be strings (256 / 4096 chars max)")
    return value


_MESSAGE_FIELDS: Final = frozenset({"body", "headers", "id", "delay", "encoding"})


def _message(raw: Any, limits: Limits) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise bad_request("each message must be an object with a body")
    if not raw.keys() <= _MESSAGE_FIELDS:
        reject_unknown(raw, _MESSAGE_FIELDS)
    body = raw.get("body")
    if not isinstance(body, str):
        raise bad_request("message body must be a string (use encoding 'base64' for binary)")
    # The limit is in bytes (UTF-8, as stored); isascii() is O(1), so only a body
    # with other characters is encoded to be measured.
    size = len(body) if body.isascii() else len(body.encode("utf-8", "surrogatepass"))
    if size > limits.max_message_bytes:
        raise ApiError(
            413, "message_too_large", f"a message body is over {limits.max_message_bytes} bytes"
        )
    message: dict[str, Any] = {"body": body, "headers": _headers(raw.get("headers"), limits)}
    encoding = raw.get("encoding")
    if encoding is not None:
        if encoding != "base64":
            raise bad_request("encoding must be 'base64' when given")
        try:
            binascii.a2b_base64(body, strict_mode=True)
        except (binascii.Error, ValueError):
            raise bad_request("message body is not valid base64") from None
        message["encoding"] = "base64"
    message_id = raw.get("id")
    if message_id is None:
        message_id = uuid.uuid4().hex
    elif not isinstance(message_id, str) or not 1 <= len(message_id) <= 200:
        raise bad_request("message id must be a string of 1-200 characters")
    message["id"] = message_id
    delay = _number(raw, "delay", 0, limits.max_delay_s)
    if delay is not None:
        message["delay_ms"] = _ms(delay)
    return message


def publish_command(
    queue: str, body: dict[str, Any], limits: Limits, now_ms: int
) -> dict[str, Any]:
    reject_unknown(body, {"messages"})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list")
    if len(messages) > limits.max_batch:
        raise bad_request(f"at most {limits.max_batch} messages per request")
    return {
        "op": "publish",
        "queue": queue,
        "now_ms": now_ms,
        "dedup_window_ms": round(limits.dedup_window_s * 1000),
        "messages": [_message(raw, limits) for raw in messages],
    }


def publish_many_commands(
    body: dict[str, Any], limits: Limits, now_ms: int
) -> list[dict[str, Any]]:
    """One publish command per queue of a multi-queue publish (POST /v1/messages)."""
    reject_unknown(body, {"publishes"})
    groups = body.get("publishes")
    if not isinstance(groups, list) or not groups:
        raise bad_request("publishes must be a non-empty list of {queue, messages}")
    commands: list[dict[str, Any]] = []
    seen: set[str] = set()
    total = 0
    for group in groups:
        if not isinstance(group, dict):
            raise bad_request("each publish must be an object with a queue and its messages")
        reject_unknown(group, {"queue", "messages"})
        queue = group.get("queue")
        if not isinstance(queue, str):
            raise bad_request("each publish needs a queue name")
        check_name(queue)
        if queue in seen:
            raise bad_request(f"queue {queue!r} appears twice: put its messages in one list")
        seen.add(queue)
        command = publish_command(queue, {"messages": group.get("messages")}, limits, now_ms)
        total += len(command["messages"])
        if total > limits.max_batch:
            raise bad_request(f"at most {limits.max_batch} messages per request")
        commands.append(command)
    return commands


def receive_params(body: dict[str, Any], limits: Limits) -> tuple[int, float, int | None]:
    """(max, wait seconds, lease ms or None for the queue's default)."""
    reject_unknown(body, {"max", "wait", "visibility_timeout"})
    count = _integer(body, "max", 1, limits.max_receive) or 1
    wait = _number(body, "wait", 0, limits.max_wait_s) or 0.0
    visibility = _number(body, "visibility_timeout", 0.001, limits.max_visibility_timeout_s)
    return count, wait, _ms(visibility)


def receive_command(queue: str, count: int, lease_ms: int, now_ms: int) -> dict[str, Any]:
    return {
        "op": "receive",
        "queue": queue,
        "now_ms": now_ms,
        "max": count,
        "lease_ms": lease_ms,
        "lease_token": secrets.token_hex(8),
    }


def receipts_command(
    op: str, queue: str, body: dict[str, Any], limits: Limits, now_ms: int
) -> dict[str, Any]:
    allowed = {"receipts", "delay"} if op == "nack" else {"receipts"}
    reject_unknown(body, allowed)
    receipts = body.get("receipts")
    if (
        not isinstance(receipts, list)
        or not receipts
        or len(receipts) > limits.max_batch
        or not all(isinstance(r, str) and 0 < len(r) <= 256 for r in receipts)
    ):
        raise bad_request(f"receipts must be a list of 1-{limits.max_batch} receipt strings")
    command: dict[str, Any] = {"op": op, "queue": queue, "now_ms": now_ms, "receipts": receipts}
    if op == "nack":
        command["delay_ms"] = _ms(_number(body, "delay", 0, limits.max_delay_s)) or 0
    return command
