"""The replicated commands: checking their shape and applying each to a `Mutation`.

Every handler returns a result dict for every ordinary outcome. A command with
a wrong shape raises `InvalidCommand`; `Store.apply` turns that (and any other
exception) into an "invalid" result after rolling the command back.
"""

from collections.abc import Callable
from typing import Any, Final

from storage import exchanges, keys, streams, users
from storage.config import (
    config_problem,
    normalize_queue_config,
)
from storage.errors import InvalidCommand
from storage.fields import ENCODING_BASE64, payload
from storage.fields import integer as _int
from storage.fields import string as _str
from storage.mutation import Mutation, QueueState, lease_holds

# Most timers one receive turns into ready messages, and most ready records it
# looks at beyond the ones it delivers: bounds the work of one Raft entry.
PROMOTE_LIMIT: Final = 10000
SCAN_BUDGET: Final = 10000
# A receive stops leasing once the bodies it leased reach this (always at least one
# message): it bounds an answer's size, and the pages one lease rewrites, whatever
# `max` times the message size would be (1,000 messages of 1 MiB).
RECEIVE_MAX_BYTES: Final = 4 << 20
MAX_ADDRESS_BYTES: Final = 255

Command = dict[str, Any]
Result = dict[str, Any]

_NOT_FOUND: Final[Result] = {"status": "not_found"}


def _queue_name(cmd: Command) -> str:
    name = cmd.get("queue")
    if not keys.is_queue_name(name):
        raise InvalidCommand("queue must be a name matching [A-Za-z0-9._-]{1,200}")
    return name


def _list(cmd: Command, key: str) -> list[Any]:
    value = cmd.get(key)
    if not isinstance(value, list):
        raise InvalidCommand(f"{key} must be a list")
    return value


def command_now(cmd: object) -> int:
    """The leader's wall-clock stamp of a command; InvalidCommand when absent or wrong."""
    if not isinstance(cmd, dict):
        raise InvalidCommand("a command must be an object")
    return _int(cmd, "now_ms")


def declare_queue(m: Mutation, cmd: Command) -> Result:
    name = _queue_name(cmd)
    partial = cmd.get("config")
    if partial is None:
        partial = {}
    if not isinstance(partial, dict):
        raise InvalidCommand("config must be an object")
    config = normalize_queue_config(partial)
    problem = config_problem(config)
    if problem is not None:
        raise InvalidCommand(problem)
    existing = m.queue(name)
    if existing is None:
        m.create_queue(name, config)
        return {"status": "created", "config": config}
    status = "exists" if existing.config == config else "conflict"
    return {"status": status, "config": existing.config}


def delete_queue(m: Mutation, cmd: Command) -> Result:
    q = m.queue(_queue_name(cmd))
    if q is None:
        return dict(_NOT_FOUND)
    exchanges.unbind_queue(m, q.name)
    m.delete_queue(q)
    return {"status": "deleted"}


def purge_queue(m: Mutation, cmd: Command) -> Result:
    q = m.queue(_queue_name(cmd))
    if q is None:
        return dict(_NOT_FOUND)
    return {"status": "purged", "purged": m.purge(q)}


def reap(m: Mutation, cmd: Command) -> Result:
    """Remove up to max_keys keys that deleted or purged queues or deleted streams left."""
    limit = _int(cmd, "max_keys")
    if limit < 1:
        raise InvalidCommand("max_keys must be at least 1")
    removed, more = m.reap(limit)
    return {"status": "ok", "removed": removed, "more": more}


def publish(m: Mutation, cmd: Command) -> Result:
    """Enqueue the messages whose id was not published within the dedup window.

    With reject_publish a batch that would overflow max_length is refused whole
    before anything is written; with drop_head the oldest messages make room.
    """
    q = m.queue(_queue_name(cmd))
    window = _int(cmd, "dedup_window_ms", default=0)
    outgoing = [payload(raw, id_required=True) for raw in _list(cmd, "messages")]
    if q is None:
        return dict(_NOT_FOUND)
    fresh = m.fresh(q, outgoing, window)
    refusal = q.refuses(len(fresh))
    if refusal is not None:
        return {"status": "queue_full", "message": refusal}
    m.publish(q, fresh, window)
    return {"status": "ok", "ids": [message.id for message in outgoing]}


def _delivery(seq: int, message: dict[str, Any], token: str) -> dict[str, Any]:
    delivery = {
        "id": message["id"],
        "body": message["body"],
        "headers": message["headers"],
        "receipt": keys.receipt(seq, token),
        "deliveries": message["deliveries"],
        "published_at": message["published_at"],
    }
    if message.get("encoding") == ENCODING_BASE64:
        delivery["encoding"] = ENCODING_BASE64
    return delivery


def receive(m: Mutation, cmd: Command) -> Result:
    """Lease up to `max` messages in FIFO order, dead-lettering expired or exhausted ones met."""
    q = m.queue(_queue_name(cmd))
    wanted = _int(cmd, "max")
    token = _str(cmd, "lease_token")
    if q is None:
        return dict(_NOT_FOUND)
    lease_ms = _int(cmd, "lease_ms", default=q.config["visibility_timeout_ms"])
    m.promote_due(q, PROMOTE_LIMIT)
    deliveries: list[dict[str, Any]] = []
    body_bytes = 0
    for seq, message, reason in m.scan_ready(q, wanted, wanted + SCAN_BUDGET):
        if reason is not None:
            m.dead_letter(q, seq, message, reason)
            continue
        m.lease(q, seq, message, token, lease_ms)
        deliveries.append(_delivery(seq, message, token))
        body_bytes += len(message["body"])
        if body_bytes >= RECEIVE_MAX_BYTES:
            break
    return {"status": "ok", "messages": deliveries}


def _settle(
    m: Mutation, cmd: Command, settle: Callable[[QueueState, int, dict[str, Any]], None]
) -> tuple[int, list[Any]] | None:
    """Run `settle` on each message whose receipt still holds its lease; (count, stale)."""
    q = m.queue(_queue_name(cmd))
    receipts = _list(cmd, "receipts")
    if q is None:
        return None
    settled = 0
    stale: list[Any] = []
    # Every node runs the loop once per receipt: local names.
    parse, message_of, now = keys.parse_receipt, m.message, m.now
    for text in receipts:
        parsed = parse(text)
        if parsed is not None:
            seq, token = parsed
            message = message_of(q, seq)
            if message is not None and lease_holds(message, token, now):
                settle(q, seq, message)
                settled += 1
                continue
        stale.append(text)
    return settled, stale


def ack(m: Mutation, cmd: Command) -> Result:
    def settle(q: QueueState, seq: int, message: dict[str, Any]) -> None:
        m.remove(q, seq, message)
        q.counters["acked_total"] += 1  # remove marked q dirty

    outcome = _settle(m, cmd, settle)
    if outcome is None:
        return dict(_NOT_FOUND)
    return {"status": "ok", "acked": outcome[0], "stale": outcome[1]}


def nack(m: Mutation, cmd: Command) -> Result:
    delay_ms = _int(cmd, "delay_ms", default=0)

    def settle(q: QueueState, seq: int, message: dict[str, Any]) -> None:
        if delay_ms > 0:
            m.make_delayed(q, seq, message, delay_ms)
        else:
            m.make_ready(q, seq, message)

    outcome = _settle(m, cmd, settle)
    if outcome is None:
        return dict(_NOT_FOUND)
    return {"status": "ok", "requeued": outcome[0], "stale": outcome[1]}


def _address(cmd: Command) -> bytes:
    address = _str(cmd, "raft").encode()
    if not 0 < len(address) <= MAX_ADDRESS_BYTES:
        raise InvalidCommand(f"raft must be 1 to {MAX_ADDRESS_BYTES} bytes")
    return address


def register_node(m: Mutation, cmd: Command) -> Result:
    address = _address(cmd)
    node = {
        "id": _str(cmd, "id"),
        "http": _str(cmd, "http"),
        "raft": address.decode(),
        "registered_at": m.now,
    }
    m.txn.put(address, keys.encode(node), db=m.dbs.nodes)
    return {"status": "ok"}


def unregister_node(m: Mutation, cmd: Command) -> Result:
    found = m.txn.delete(_address(cmd), db=m.dbs.nodes)
    return {"status": "ok"} if found else dict(_NOT_FOUND)


HANDLERS: Final[dict[str, Callable[[Mutation, Command], Result]]] = {
    "declare_queue": declare_queue,
    "delete_queue": delete_queue,
    "purge_queue": purge_queue,
    "reap": reap,
    "publish": publish,
    "receive": receive,
    "ack": ack,
    "nack": nack,
    "register_node": register_node,
    "unregister_node": unregister_node,
    **exchanges.HANDLERS,
    **streams.HANDLERS,
    **users.HANDLERS,
}


def execute(m: Mutation, cmd: Command) -> Result:
    """Apply one command; raises InvalidCommand (or anything else) only for a bad shape."""
    op = cmd.get("op")
    handler = HANDLERS.get(op) if isinstance(op, str) else None
    if handler is None:
        raise InvalidCommand(f"unknown op {op!r}")
    result = handler(m, cmd)
    m.flush()
    return result
