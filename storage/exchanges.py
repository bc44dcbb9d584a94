"""Exchanges: named routers that copy a published batch into every matching queue.

One `publish_exchange` command routes the whole batch (one routing key) and
writes every target queue inside the command's transaction, so all matching
queues get the messages or none does. A `reject_publish` queue that cannot take
the batch refuses the whole publish before anything is written.

Routing uses an in-memory router (storage/topic.py) built from the exchange's
bindings and cached in `Mutation.memo` under (name, version). The version is
stored in the exchange record and taken from a store-wide counter on every
change, so a cached router is never stale and every replica routes the same
whether or not its cache is warm.
"""

from __future__ import annotations

from typing import Any, Final

import lmdb

from storage import keys
from storage.errors import InvalidCommand
from storage.fields import (
    Command,
    Result,
    delete_prefix,
    integer,
    keys_with_prefix,
    listing,
    name,
    payload,
    routing_key,
    string,
)
from storage.mutation import Dbs, Fresh, Mutation, QueueState
from storage.topic import TYPES, Router, build_router

# Most cached routers per store; the oldest entry goes first.
ROUTER_CACHE_LIMIT: Final = 1024


def xkey(exchange: str) -> bytes:
    return keys.qkey(exchange)


def _not_found(exchange: str) -> Result:
    return {"status": "exchange_not_found", "message": f"exchange {exchange!r} does not exist"}


def _load(txn: lmdb.Transaction[bytes], dbs: Dbs, exchange: str) -> dict[str, Any] | None:
    raw = txn.get(exchange.encode(), db=dbs.exchanges)
    return None if raw is None else dict(keys.decode(raw))


def _save(m: Mutation, exchange: str, record: dict[str, Any]) -> None:
    """Write the record under a fresh version, so any cached router of it is out of date."""
    raw = m.txn.get(keys.EXCHANGE_VERSION, db=m.dbs.meta)
    version = (0 if raw is None else int(keys.U64.unpack(raw)[0])) + 1
    m.txn.put(keys.EXCHANGE_VERSION, keys.U64.pack(version), db=m.dbs.meta)
    record["version"] = version
    m.txn.put(exchange.encode(), keys.encode(record), db=m.dbs.exchanges)


def _config(record: dict[str, Any]) -> dict[str, Any]:
    return {"type": record["type"], "alternate_queue": record["alternate_queue"]}


def declare_exchange(m: Mutation, cmd: Command) -> Result:
    exchange = name(cmd, "exchange")
    exchange_type = string(cmd, "type")
    if exchange_type not in TYPES:
        raise InvalidCommand(f"type must be one of {', '.join(TYPES)}")
    alternate = None if cmd.get("alternate_queue") is None else name(cmd, "alternate_queue")
    config = {"type": exchange_type, "alternate_queue": alternate}
    existing = _load(m.txn, m.dbs, exchange)
    if existing is None:
        _save(m, exchange, dict(config))
        return {"status": "created", "config": config}
    if _config(existing) == config:
        return {"status": "exists", "config": config}
    return {
        "status": "exchange_conflict",
        "message": f"exchange {exchange!r} exists with a different type or alternate queue",
        "config": _config(existing),
    }


def delete_exchange(m: Mutation, cmd: Command) -> Result:
    exchange = name(cmd, "exchange")
    if _load(m.txn, m.dbs, exchange) is None:
        return _not_found(exchange)
    prefix = xkey(exchange)
    for key, _ in keys_with_prefix(m.txn, m.dbs.bindings, prefix):
        queue = key[len(prefix) :].decode()
        m.txn.delete(keys.qkey(queue) + exchange.encode(), db=m.dbs.queue_bindings)
    delete_prefix(m.txn, m.dbs.bindings, prefix)
    m.txn.delete(exchange.encode(), db=m.dbs.exchanges)
    m.memo.pop(("router", exchange), None)
    return {"status": "deleted"}


def _binding_key(exchange: str, queue: str) -> bytes:
    return xkey(exchange) + queue.encode()


def bind(m: Mutation, cmd: Command) -> Result:
    exchange = name(cmd, "exchange")
    queue = name(cmd, "queue")
    key = routing_key(cmd)
    record = _load(m.txn, m.dbs, exchange)
    if record is None:
        return _not_found(exchange)
    if m.queue(queue) is None:
        return {"status": "not_found"}
    raw = m.txn.get(_binding_key(exchange, queue), db=m.dbs.bindings)
    routing_keys: list[str] = [] if raw is None else list(keys.decode(raw))
    if key in routing_keys:
        return {"status": "exists"}
    routing_keys = sorted([*routing_keys, key])
    m.txn.put(_binding_key(exchange, queue), keys.encode(routing_keys), db=m.dbs.bindings)
    m.txn.put(keys.qkey(queue) + exchange.encode(), b"", db=m.dbs.queue_bindings)
    _save(m, exchange, record)
    return {"status": "created"}


def unbind(m: Mutation, cmd: Command) -> Result:
    exchange = name(cmd, "exchange")
    queue = name(cmd, "queue")
    key = routing_key(cmd)
    record = _load(m.txn, m.dbs, exchange)
    if record is None:
        return _not_found(exchange)
    raw = m.txn.get(_binding_key(exchange, queue), db=m.dbs.bindings)
    routing_keys: list[str] = [] if raw is None else list(keys.decode(raw))
    if key not in routing_keys:
        return {
            "status": "binding_not_found",
            "message": f"queue {queue!r} is not bound to exchange {exchange!r} with key {key!r}",
        }
    routing_keys.remove(key)
    if routing_keys:
        m.txn.put(_binding_key(exchange, queue), keys.encode(routing_keys), db=m.dbs.bindings)
    else:
        m.txn.delete(_binding_key(exchange, queue), db=m.dbs.bindings)
        m.txn.delete(keys.qkey(queue) + exchange.encode(), db=m.dbs.queue_bindings)
    _save(m, exchange, record)
    return {"status": "deleted"}


def unbind_queue(m: Mutation, queue: str) -> None:
    """Remove every binding of `queue` (it is being deleted) from every exchange."""
    prefix = keys.qkey(queue)
    for key, _ in keys_with_prefix(m.txn, m.dbs.queue_bindings, prefix):
        exchange = key[len(prefix) :].decode()
        m.txn.delete(_binding_key(exchange, queue), db=m.dbs.bindings)
        record = _load(m.txn, m.dbs, exchange)
        if record is not None:
            _save(m, exchange, record)
    delete_prefix(m.txn, m.dbs.queue_bindings, prefix)


def _bindings(txn: lmdb.Transaction[bytes], dbs: Dbs, exchange: str) -> list[tuple[str, str]]:
    """(routing key or pattern, queue) of every binding, ordered by queue then key."""
    prefix = xkey(exchange)
    found: list[tuple[str, str]] = []
    for key, value in keys_with_prefix(txn, dbs.bindings, prefix):
        queue = key[len(prefix) :].decode()
        found.extend((routing, queue) for routing in keys.decode(value))
    return found


def router(m: Mutation, exchange: str, record: dict[str, Any]) -> Router:
    """The exchange's router at its stored version, from the cache or built from LMDB."""
    cache_key = ("router", exchange)
    cached = m.memo.get(cache_key)
    if cached is not None and cached[0] == record["version"]:
        built: Router = cached[1]
        return built
    built = build_router(record["type"], _bindings(m.txn, m.dbs, exchange))
    m.memo.pop(cache_key, None)
    while len(m.memo) >= ROUTER_CACHE_LIMIT:
        m.memo.pop(next(iter(m.memo)))
    m.memo[cache_key] = (record["version"], built)
    return built


def publish_exchange(m: Mutation, cmd: Command) -> Result:
    """Route a batch to every matching queue (or the alternate queue) atomically.

    `routed` counts, per target queue, the messages of the batch routed there,
    including ones its dedup window recognised, so a retried publish answers
    as the first did.
    """
    exchange = name(cmd, "exchange")
    key = routing_key(cmd)
    window = integer(cmd, "dedup_window_ms", default=0)
    messages = [payload(raw, id_required=True) for raw in listing(cmd, "messages")]
    record = _load(m.txn, m.dbs, exchange)
    if record is None:
        return _not_found(exchange)
    targets = [m.queue(queue) for queue in sorted(router(m, exchange, record).match(key))]
    queues = [q for q in targets if q is not None]
    unroutable = 0
    if not queues:
        alternate = record["alternate_queue"]
        fallback = None if alternate is None else m.queue(alternate)
        if fallback is None:
            unroutable = len(messages)
        else:
            queues = [fallback]
    plans: list[tuple[QueueState, Fresh]] = []
    for q in queues:
        fresh = m.fresh(q, messages, window)
        refusal = q.refuses(len(fresh))
        if refusal is not None:
            message = f"{refusal}, so the publish was refused for every queue"
            return {"status": "queue_full", "message": message}
        plans.append((q, fresh))
    for q, fresh in plans:
        m.publish(q, fresh, window)
    return {
        "status": "ok",
        "routed": {q.name: len(messages) for q in queues},
        "unroutable": unroutable,
        "ids": [message.id for message in messages],
    }


HANDLERS: Final = {
    "declare_exchange": declare_exchange,
    "delete_exchange": delete_exchange,
    "bind": bind,
    "unbind": unbind,
    "publish_exchange": publish_exchange,
}


# Read side (Store.view)


def _view(
    txn: lmdb.Transaction[bytes], dbs: Dbs, exchange: str, record: dict[str, Any]
) -> dict[str, Any]:
    bindings = [
        {"queue": queue, "routing_key": routing} for routing, queue in _bindings(txn, dbs, exchange)
    ]
    return {"name": exchange, **_config(record), "bindings": bindings}


def bound_queue_count(txn: lmdb.Transaction[bytes], dbs: Dbs, exchange: str) -> int:
    """How many queues a publish to `exchange` may be copied to, at most (0: none known).

    The queues bound to it, or its alternate queue when nothing is bound: the
    leader weighs a publish's bytes by this before it admits it (a fanout to
    80 queues stores 80 copies).
    """
    if not keys.is_queue_name(exchange):
        return 0
    record = _load(txn, dbs, exchange)
    if record is None:
        return 0
    bound = sum(1 for _ in keys_with_prefix(txn, dbs.bindings, xkey(exchange)))
    return bound or (1 if record["alternate_queue"] is not None else 0)


def get_exchange(txn: lmdb.Transaction[bytes], dbs: Dbs, exchange: str) -> dict[str, Any] | None:
    if not keys.is_queue_name(exchange):
        return None
    record = _load(txn, dbs, exchange)
    return None if record is None else _view(txn, dbs, exchange, record)


def list_exchanges(txn: lmdb.Transaction[bytes], dbs: Dbs) -> list[dict[str, Any]]:
    with txn.cursor(db=dbs.exchanges) as cursor:
        records = [(key.decode(), dict(keys.decode(value))) for key, value in cursor]
    return [_view(txn, dbs, exchange, record) for exchange, record in records]
