"""HTTP handlers for exchanges (routing a publish to bound queues) and streams (replayable logs).

Writes go through Raft on the leader like the queue API. Stream reads and
consumer-group offsets are served by the leader after a read barrier: the first
such read of a term commits a no-op entry, and applying it means every entry
committed before (by any earlier leader) is applied here too, so a read sees
every acknowledged append. Long polls reuse the queue waiters, keyed
`stream:<name>` (":" never occurs in a name), woken by appends.
"""

import asyncio
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from aiohttp import web

from node.app import CONFIG, RAFT, WAITERS, json_response, read_json
from node.clock import now_ms
from node.errors import ApiError, bad_request, from_result
from node.ports import RaftPort
from node.validation import check_name, publish_command, reject_unknown
from storage import Store, exchanges, streams
from storage.fields import MAX_ROUTING_KEY_BYTES
from storage.mutation import Dbs
from storage.topic import TYPES

# Stop adding records to one read answer once their bodies pass this (at least one is sent).
READ_MAX_BYTES: Final = 4 << 20
DEFAULT_READ_MAX: Final = 100
MAX_RETENTION_AGE_S: Final = 10 * 365 * 86400
MAX_RETENTION_COUNT: Final = 1 << 50

T = TypeVar("T")


def stream_wait_key(stream: str) -> str:
    return f"stream:{stream}"


def wake_keys(commands: list[dict[str, Any]], results: list[dict[str, Any]]) -> set[str]:
    """Waiter keys an applied entry may have made readable: routed queues and appended streams."""
    woken: set[str] = set()
    for command, result in zip(commands, results, strict=False):
        op = command.get("op")
        if op in ("append_records", "delete_stream"):
            woken.add(stream_wait_key(str(command.get("stream"))))
        elif op == "publish_exchange" and result.get("status") == "ok":
            woken.update(str(queue) for queue in result.get("routed", {}))
    return woken


def _name(request: web.Request, part: str) -> str:
    return check_name(request.match_info[part], part)


def _raise(result: dict[str, Any], name: str) -> ApiError:
    return from_result(result, name)


async def _commit(request: web.Request, command: dict[str, Any]) -> dict[str, Any]:
    command["now_ms"] = now_ms()
    return await request.app[RAFT].propose_as_leader(command)


def _read(request: web.Request, fn: Callable[[Any, Dbs], T]) -> T:
    """`fn(txn, dbs)` in one read transaction of this node's store."""
    return request.app[RAFT].read(lambda store: store.view(fn))


async def _read_barrier(raft: RaftPort) -> None:
    """Makes a leader's read linearizable: a no-op through the log after the read arrived.

    Being the leader by its own account is not enough: a leader cut off from
    the others keeps believing it for up to leader_fallback_s while a new one
    commits appends, and a read served from its store then would miss appends
    acknowledged before the read began. Once an entry proposed after the read
    arrived has committed, this node was the leader of the newest term with a
    majority at that point, and has applied everything committed before it
    (Raft's read-index, through the log). The proposer puts the barrier into
    the next entry with whatever else is proposed meanwhile, so under load it
    costs no entry of its own, only the wait for the next one.
    """
    result = await raft.propose_as_leader({"op": "read_barrier", "now_ms": now_ms()})
    if result.get("status") != "ok":
        raise _raise(result, "")


# -- exchanges ------------------------------------------------------------------


def _routing_key(value: Any, where: str = "routing_key") -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value.encode()) > MAX_ROUTING_KEY_BYTES:
        raise bad_request(f"{where} must be a string of at most {MAX_ROUTING_KEY_BYTES} bytes")
    return value


def _exchange_out(exchange: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "exchange": exchange,
        "type": config["type"],
        "alternate_queue": config["alternate_queue"],
    }


async def declare_exchange(request: web.Request) -> web.Response:
    exchange = _name(request, "exchange")
    body = await read_json(request)
    reject_unknown(body, {"type", "alternate_queue"})
    exchange_type = body.get("type")
    if exchange_type not in TYPES:
        raise bad_request(f"type must be one of {', '.join(TYPES)}")
    alternate = body.get("alternate_queue")
    if alternate is not None:
        if not isinstance(alternate, str):
            raise bad_request("alternate_queue must be a queue name")
        check_name(alternate)
    result = await _commit(
        request,
        {
            "op": "declare_exchange",
            "exchange": exchange,
            "type": exchange_type,
            "alternate_queue": alternate,
        },
    )
    status = result.get("status")
    if status not in ("created", "exists"):
        raise _raise(result, exchange)
    return json_response(
        _exchange_out(exchange, result["config"]), 201 if status == "created" else 200
    )


async def delete_exchange(request: web.Request) -> web.Response:
    exchange = _name(request, "exchange")
    result = await _commit(request, {"op": "delete_exchange", "exchange": exchange})
    if result.get("status") != "deleted":
        raise _raise(result, exchange)
    return web.Response(status=204)


async def list_exchanges(request: web.Request) -> web.Response:
    return json_response({"exchanges": _read(request, exchanges.list_exchanges)})


async def get_exchange(request: web.Request) -> web.Response:
    exchange = _name(request, "exchange")
    info = _read(request, functools.partial(exchanges.get_exchange, exchange=exchange))
    if info is None:
        raise _raise({"status": "exchange_not_found", "message": _missing(exchange)}, exchange)
    return json_response(info)


def _missing(exchange: str) -> str:
    return f"exchange {exchange!r} does not exist"


async def bind(request: web.Request) -> web.Response:
    exchange = _name(request, "exchange")
    queue = check_name(request.match_info["queue"])
    body = await read_json(request)
    reject_unknown(body, {"routing_key"})
    key = _routing_key(body.get("routing_key"))
    result = await _commit(
        request, {"op": "bind", "exchange": exchange, "queue": queue, "routing_key": key}
    )
    status = result.get("status")
    if status not in ("created", "exists"):
        raise _raise(result, queue)
    return json_response(
        {"exchange": exchange, "queue": queue, "routing_key": key},
        201 if status == "created" else 200,
    )


async def unbind(request: web.Request) -> web.Response:
    exchange = _name(request, "exchange")
    queue = check_name(request.match_info["queue"])
    body = await read_json(request)
    reject_unknown(body, {"routing_key"})
    in_query = request.query.get("routing_key")
    if in_query is not None and "routing_key" in body and body["routing_key"] != in_query:
        raise bad_request("routing_key differs between the query and the body")
    key = _routing_key(body.get("routing_key", in_query))
    result = await _commit(
        request, {"op": "unbind", "exchange": exchange, "queue": queue, "routing_key": key}
    )
    if result.get("status") != "deleted":
        raise _raise(result, queue)
    return web.Response(status=204)


async def publish_exchange(request: web.Request) -> web.Response:
    exchange = _name(request, "exchange")
    request.app[RAFT].require_leader()
    body = await read_json(request)
    reject_unknown(body, {"routing_key", "messages"})
    key = _routing_key(body.get("routing_key"))
    checked = publish_command(
        exchange, {"messages": body.get("messages")}, request.app[CONFIG].limits, now_ms()
    )
    result = await _commit(
        request,
        {
            "op": "publish_exchange",
            "exchange": exchange,
            "routing_key": key,
            "dedup_window_ms": checked["dedup_window_ms"],
            "messages": checked["messages"],
        },
    )
    if result.get("status") != "ok":
        raise _raise(result, exchange)
    return json_response(
        {"routed": result["routed"], "unroutable": result["unroutable"], "ids": result["ids"]}
    )


# -- streams --------------------------------------------------------------------


def _retention(body: dict[str, Any]) -> dict[str, int | None]:
    reject_unknown(body, {"max_age", "max_bytes", "max_records"})
    age = body.get("max_age")
    if age is not None and (
        isinstance(age, bool)
        or not isinstance(age, int | float)
        or (isinstance(age, float) and not math.isfinite(age))
        or not 0.001 <= age <= MAX_RETENTION_AGE_S
    ):
        raise bad_request(f"max_age must be a number of seconds in [0.001, {MAX_RETENTION_AGE_S}]")
    config: dict[str, int | None] = {"max_age_ms": None if age is None else round(age * 1000)}
    for key in ("max_bytes", "max_records"):
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 1 <= value <= MAX_RETENTION_COUNT
        ):
            raise bad_request(f"{key} must be an integer in [1, {MAX_RETENTION_COUNT}]")
        config[key] = value
    return config


def _retention_out(config: Mapping[str, Any]) -> dict[str, Any]:
    age = config.get("max_age_ms")
    return {
        "max_age": None if age is None else age / 1000,
        "max_bytes": config.get("max_bytes"),
        "max_records": config.get("max_records"),
    }


def _stream_out(info: dict[str, Any]) -> dict[str, Any]:
    out = dict(info)
    out["config"] = _retention_out(info["config"])
    return out


async def declare_stream(request: web.Request) -> web.Response:
    stream = _name(request, "stream")
    config = _retention(await read_json(request))
    result = await _commit(request, {"op": "declare_stream", "stream": stream, "config": config})
    status = result.get("status")
    if status not in ("created", "exists"):
        raise _raise(result, stream)
    return json_response(
        {"stream": stream, "config": _retention_out(result["config"])},
        201 if status == "created" else 200,
    )


async def delete_stream(request: web.Request) -> web.Response:
    stream = _name(request, "stream")
    result = await _commit(request, {"op": "delete_stream", "stream": stream})
    if result.get("status") != "deleted":
        raise _raise(result, stream)
    return web.Response(status=204)


async def list_streams(request: web.Request) -> web.Response:
    return json_response(
        {"streams": [_stream_out(s) for s in _read(request, streams.list_streams)]}
    )


def _stream_with_groups(store: Store, stream: str) -> dict[str, Any] | None:
    def view(txn: Any, dbs: Any) -> dict[str, Any] | None:
        info = streams.get_stream(txn, dbs, stream)
        if info is not None:
            info["groups"] = streams.groups(txn, dbs, stream)
        return info

    return store.view(view)


def _stream_missing(stream: str) -> ApiError:
    return _raise(
        {"status": "stream_not_found", "message": f"stream {stream!r} does not exist"}, stream
    )


async def get_stream(request: web.Request) -> web.Response:
    stream = _name(request, "stream")
    info = request.app[RAFT].read(lambda store: _stream_with_groups(store, stream))
    if info is None:
        raise _stream_missing(stream)
    return json_response(_stream_out(info))


async def append_records(request: web.Request) -> web.Response:
    stream = _name(request, "stream")
    request.app[RAFT].require_leader()
    body = await read_json(request)
    reject_unknown(body, {"records"})
    records = body.get("records")
    limits = request.app[CONFIG].limits
    # Checked here too so that the error names this endpoint's field, not the queue's "messages".
    if not isinstance(records, list) or not records:
        raise bad_request("records must be a non-empty list")
    if len(records) > limits.max_batch:
        raise bad_request(f"at most {limits.max_batch} records per request")
    for record in records:
        if isinstance(record, dict) and "delay" in record:
            raise bad_request("stream records take no delay")
    checked = publish_command(stream, {"messages": records}, limits, now_ms())
    result = await _commit(
        request,
        {
            "op": "append_records",
            "stream": stream,
            "dedup_window_ms": checked["dedup_window_ms"],
            "records": checked["messages"],
        },
    )
    if result.get("status") != "ok":
        raise _raise(result, stream)
    return json_response({"offsets": result["offsets"]})


def _query_int(query: Mapping[str, str], key: str, low: int, high: int) -> int | None:
    text = query.get(key)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{key} must be an integer") from None
    if not low <= value <= high:
        raise bad_request(f"{key} must be between {low} and {high}")
    return value


def _query_seconds(query: Mapping[str, str], key: str, high: float) -> float:
    text = query.get(key)
    if text is None or text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise bad_request(f"{key} must be a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= high:
        raise bad_request(f"{key} must be between 0 and {high:g}")
    return value


async def read_records(request: web.Request) -> web.Response:
    stream = _name(request, "stream")
    raft = request.app[RAFT]
    raft.require_leader()
    limits = request.app[CONFIG].limits
    query = request.query
    reject_unknown(dict(query), {"offset", "group", "max", "wait"})
    offset = _query_int(query, "offset", 0, (1 << 53) - 1)
    group = query.get("group")
    if group is not None:
        check_name(group, "group")
        if offset is not None:
            raise bad_request("give either offset or group, not both")
    limit = _query_int(query, "max", 1, limits.max_receive) or DEFAULT_READ_MAX
    wait_s = _query_seconds(query, "wait", limits.max_wait_s)
    waiters = request.app[WAITERS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    await _read_barrier(raft)
    read = functools.partial(
        streams.read_records,
        stream=stream,
        offset=offset,
        group=group,
        limit=limit,
        max_bytes=READ_MAX_BYTES,
    )
    event: asyncio.Event | None = None
    while True:
        batch = _read(request, read)
        if batch is None:
            raise _stream_missing(stream)
        remaining = deadline - loop.time()
        if batch["records"] or remaining <= 0:
            return json_response(batch)
        if event is None:
            if waiters.full:
                raise ApiError(
                    503,
                    "too_many_waiters",
                    "too many long polls on this node",
                    {"Retry-After": "1"},
                )
            # The event is taken only once a read found nothing to answer: one taken
            # for every read stayed behind until an append to that name, so reads of
            # missing streams piled up one per name. The read after taking it keeps
            # the no-lost-wake-up rule (an append in between shows there or sets it).
            event = waiters.event(stream_wait_key(stream))
            continue
        await waiters.wait(event, min(remaining, 1.0))
        event = None
        raft.require_leader()


async def get_group(request: web.Request) -> web.Response:
    stream = _name(request, "stream")
    group = _name(request, "group")
    raft = request.app[RAFT]
    await _read_barrier(raft)

    def view(txn: Any, dbs: Any) -> int | None:
        if streams.get_stream(txn, dbs, stream) is None:
            return None
        return streams.group_offset(txn, dbs, stream, group)

    offset = _read(request, view)
    if offset is None:
        raise _stream_missing(stream)
    return json_response({"stream": stream, "group": group, "offset": offset})


async def commit_offset(request: web.Request) -> web.Response:
    stream = _name(request, "stream")
    group = _name(request, "group")
    body = await read_json(request)
    reject_unknown(body, {"offset"})
    offset = body.get("offset")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 1 << 53:
        raise bad_request("offset must be a non-negative integer")
    result = await _commit(
        request, {"op": "commit_offset", "stream": stream, "group": group, "offset": offset}
    )
    if result.get("status") != "ok":
        raise _raise(result, stream)
    return json_response({"stream": stream, "group": group, "offset": offset})


async def delete_group(request: web.Request) -> web.Response:
    """Forget a group's committed offset (204 whether or not it had one, as a reset)."""
    stream = _name(request, "stream")
    group = _name(request, "group")
    result = await _commit(request, {"op": "delete_group", "stream": stream, "group": group})
    if result.get("status") != "ok":
        raise _raise(result, stream)
    return web.Response(status=204)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/exchanges", list_exchanges),
        web.put("/v1/exchanges/{exchange}", declare_exchange),
        web.get("/v1/exchanges/{exchange}", get_exchange),
        web.delete("/v1/exchanges/{exchange}", delete_exchange),
        web.put("/v1/exchanges/{exchange}/bindings/{queue}", bind),
        web.delete("/v1/exchanges/{exchange}/bindings/{queue}", unbind),
        web.post("/v1/exchanges/{exchange}/publish", publish_exchange),
        web.get("/v1/streams", list_streams),
        web.put("/v1/streams/{stream}", declare_stream),
        web.get("/v1/streams/{stream}", get_stream),
        web.delete("/v1/streams/{stream}", delete_stream),
        web.post("/v1/streams/{stream}/records", append_records),
        web.get("/v1/streams/{stream}/records", read_records),
        web.get("/v1/streams/{stream}/groups/{group}", get_group),
        web.put("/v1/streams/{stream}/groups/{group}", commit_offset),
        web.delete("/v1/streams/{stream}/groups/{group}", delete_group),
    ]
