"""The aiohttp application: routes, error and redirect middleware, handlers."""

import asyncio
import contextlib
import importlib.resources
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from cluster.errors import ClusterError, NotLeader
from node import auth, logs, membership, openapi
from node.body import BodyBudget, read_body
from node.clock import now_ms
from node.config import NodeConfig
from node.delivery import lease_or_wait
from node.errors import ApiError, bad_request, from_cluster_error, from_result, ok_or_raise
from node.metrics import Metrics
from node.ports import RaftPort
from node.reaper import reap_forever
from node.validation import (
    check_name,
    expect_object,
    publish_command,
    publish_many_commands,
    queue_config,
    receipts_command,
    receive_params,
)
from node.waiters import QueueWaiters
from storage import Store

logger = logging.getLogger(__name__)

RAFT = web.AppKey("raft", RaftPort)
CONFIG = web.AppKey("config", NodeConfig)
WAITERS = web.AppKey("waiters", QueueWaiters)
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
# The WebSocket channels open on this node (node/routes_channel.py; --max-channels).
OPEN_CHANNELS: web.AppKey[set[object]] = web.AppKey("open_channels")
MEMBERSHIP_LOCK = web.AppKey("membership_lock", asyncio.Lock)
# Set when this node should stop: SIGTERM, or its removal from the cluster.
STOP = web.AppKey("stop", asyncio.Event)
REMOVAL = web.AppKey("removal", membership.RemovalWatch)

# Commands after whose apply a long-polling receive may find something.
_WAKING_OPS = {"publish", "nack", "delete_queue", "purge_queue", "declare_queue"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(error: ApiError) -> web.Response:
    response = json_response(error.body(), error.status, error.headers)
    if error.headers.get("Connection") == "close":
        response.force_close()
    return response


def _leader_url(raft: RaftPort, leader_raft: str) -> str | None:
    node = raft.read(lambda store: store.nodes()).get(leader_raft)
    return None if node is None else str(node["http"])


def _redirect_or_unavailable(request: web.Request, exc: NotLeader) -> web.Response:
    raft = request.app[RAFT]
    url = None if exc.leader_raft is None else _leader_url(raft, exc.leader_raft)
    if url is None:
        return error_response(
            ApiError(
                503,
                "no_leader",
                "the leader's address is not known yet; retry shortly",
                {"Retry-After": "0"},  # a fraction of a second: clients poll (node/errors.py)
            )
        )
    return web.Response(
        status=307,
        headers={"Location": url + request.path_qs},
        body=orjson.dumps({"error": {"code": "not_leader", "message": f"the leader is at {url}"}}),
        content_type="application/json",
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except NotLeader as exc:
        return _redirect_or_unavailable(request, exc)
    except ClusterError as exc:
        return error_response(from_cluster_error(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return error_response(ApiError(exc.status, code, exc.reason))
    except (asyncio.CancelledError, ConnectionError):
        raise  # aiohttp drops a connection the client closed while sending its body
    except Exception:
        request_id = logs.current_request_id() or logs.new_request_id()
        logger.exception(
            "request %s %s failed (request id %s)", request.method, request.path, request_id
        )
        return error_response(
            ApiError(
                500, "internal", f"internal error; see the node log for request id {request_id}"
            )
        )


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request, request.app[CONFIG].limits, request.app[BODY_BUDGET])
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("the request body is not valid JSON", "invalid_json") from None
    return expect_object(body)


def _queue_name(request: web.Request) -> str:
    return check_name(request.match_info["queue"])


async def _commit(request: web.Request, command: dict[str, Any]) -> dict[str, Any]:
    return await request.app[RAFT].propose_as_leader(command)


# -- queues -------------------------------------------------------------------


async def declare_queue(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    config = queue_config(await read_json(request), request.app[CONFIG].limits)
    result = await _commit(
        request, {"op": "declare_queue", "queue": queue, "config": config, "now_ms": now_ms()}
    )
    status = result.get("status")
    if status not in ("created", "exists"):
        raise from_result(result, queue)
    return json_response(
        {"queue": queue, "config": _config_out(result["config"])},
        201 if status == "created" else 200,
    )


def _config_out(config: dict[str, Any]) -> dict[str, Any]:
    """Storage config (ms) in API units (seconds)."""

    def seconds(value: Any) -> float | None:
        return None if value is None else value / 1000

    return {
        "visibility_timeout": seconds(config.get("visibility_timeout_ms")),
        "max_deliveries": config.get("max_deliveries"),
        "dead_letter_queue": config.get("dead_letter_queue"),
        "message_ttl": seconds(config.get("message_ttl_ms")),
        "max_length": config.get("max_length"),
        "overflow": config.get("overflow"),
        "delivery_delay": seconds(config.get("delivery_delay_ms")),
    }


def _queue_out(info: dict[str, Any]) -> dict[str, Any]:
    out = dict(info)
    out["config"] = _config_out(info["config"])
    return out


async def list_queues(request: web.Request) -> web.Response:
    now = now_ms()
    queues = request.app[RAFT].read(lambda store: store.list_queues(now))
    return json_response({"queues": [_queue_out(q) for q in queues]})


async def get_queue(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    now = now_ms()
    info = request.app[RAFT].read(lambda store: store.get_queue(queue, now))
    if info is None:
        raise from_result({"status": "not_found"}, queue)
    return json_response(_queue_out(info))


async def delete_queue(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    result = await _commit(request, {"op": "delete_queue", "queue": queue, "now_ms": now_ms()})
    ok_or_raise(result, queue, "deleted")
    return web.Response(status=204)


async def purge_queue(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    result = await _commit(request, {"op": "purge_queue", "queue": queue, "now_ms": now_ms()})
    ok_or_raise(result, queue, "purged")
    return json_response({"purged": result["purged"]})


async def publish(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    request.app[RAFT].require_leader()
    command = publish_command(queue, await read_json(request), request.app[CONFIG].limits, now_ms())
    result = ok_or_raise(await _commit(request, command), queue)
    return json_response({"ids": result["ids"]})


async def publish_many(request: web.Request) -> web.Response:
    """Publishes to several queues in one request (one Raft entry when it fits).

    Each queue's messages are all or nothing, as with a single-queue publish;
    queues succeed or fail on their own: every entry of `results` holds the
    queue's ids or its error. The caller needs write permission on every queue
    named, checked before anything is proposed.
    """
    raft = request.app[RAFT]
    raft.require_leader()
    commands = publish_many_commands(await read_json(request), request.app[CONFIG].limits, now_ms())
    read_store = auth.store_lookup(raft)
    for command in commands:
        auth.authorize(request, read_store, auth.PUBLISH_ROUTE, {"queue": command["queue"]})
    outcomes = await asyncio.gather(*(_commit(request, command) for command in commands))
    results: list[dict[str, Any]] = []
    for command, result in zip(commands, outcomes, strict=True):
        if result.get("status") == "ok":
            results.append({"queue": command["queue"], "ids": result["ids"]})
        else:
            error = from_result(result, command["queue"])
            results.append({"queue": command["queue"], "status": error.status, **error.body()})
    return json_response({"results": results})


async def receive(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    raft = request.app[RAFT]
    raft.require_leader()
    count, wait_s, lease_ms = receive_params(await read_json(request), request.app[CONFIG].limits)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        remaining = deadline - loop.time()
        lease = await lease_or_wait(
            raft, request.app[WAITERS], queue, count, lease_ms, min(max(remaining, 0.0), 1.0)
        )
        if lease.messages or remaining <= 0:
            return json_response({"messages": lease.messages})


async def ack(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    request.app[RAFT].require_leader()
    command = receipts_command(
        "ack", queue, await read_json(request), request.app[CONFIG].limits, now_ms()
    )
    result = ok_or_raise(await _commit(request, command), queue)
    return json_response({"acked": result["acked"], "stale": result["stale"]})


async def nack(request: web.Request) -> web.Response:
    queue = _queue_name(request)
    request.app[RAFT].require_leader()
    command = receipts_command(
        "nack", queue, await read_json(request), request.app[CONFIG].limits, now_ms()
    )
    result = ok_or_raise(await _commit(request, command), queue)
    return json_response({"requeued": result["requeued"], "stale": result["stale"]})


# -- cluster and health ---------------------------------------------------------


async def cluster_status(request: web.Request) -> web.Response:
    raft = request.app[RAFT]
    config = request.app[CONFIG]
    want_digest = request.query.get("digest", "").lower() in ("1", "true", "yes")
    status = raft.status()

    def snapshot(store: Store) -> tuple[int, str | None, dict[str, dict[str, Any]]]:
        return store.applied_index(), store.digest() if want_digest else None, store.nodes()

    applied, digest, registry = raft.read(snapshot)
    members = []
    for member in status["members"]:
        known = registry.get(member["raft"], {})
        state = "leader" if member["raft"] == status["leader_raft"] else member["state"]
        members.append(
            {
                "id": known.get("id"),
                "raft": member["raft"],
                "http": known.get("http"),
                "state": state,
            }
        )
    leader = None
    if status["leader_raft"] is not None:
        known = registry.get(status["leader_raft"], {})
        leader = {"id": known.get("id"), "raft": status["leader_raft"], "http": known.get("http")}
    body: dict[str, Any] = {
        "node_id": config.node_id,
        "raft_address": config.raft.raft_address,
        "http_url": config.advertise_http,
        "role": status["role"],
        "leader": leader,
        "term": status["term"],
        "commit_index": status["commit_index"],
        "last_applied": status["last_applied"],
        "applied_index": applied,
        "log_length": status["log_length"],
        "has_quorum": status["has_quorum"],
        "members": members,
        "storage": _storage(raft.counters()),
    }
    if digest is not None:
        body["digest"] = digest
    return json_response(body)


def _storage(counters: dict[str, Any]) -> dict[str, Any]:
    """This node's room: see cluster.storage_guard (`full` says why writes are refused)."""
    return {
        "live_bytes": counters["store_live_bytes"],
        "capacity_bytes": counters["store_capacity_bytes"],
        "disk_free_bytes": counters["disk_free_bytes"],
        "full": counters["storage_full"],
    }


_DASHBOARD = importlib.resources.files("node").joinpath("static/dashboard.html")


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=_DASHBOARD.read_bytes(), content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    raft = request.app[RAFT]
    if not raft.is_ready():
        raise ApiError(
            503,
            "not_ready",
            "this node has no leader or has not caught up yet",
            {"Retry-After": "1"},
        )
    return json_response({"status": "ready", "leader": raft.leader_raft()})


async def backup(request: web.Request) -> web.StreamResponse:
    """A consistent copy of this node's state, streamed (snapshot format)."""
    raft = request.app[RAFT]
    work_dir = os.path.join(request.app[CONFIG].raft.data_dir, "tmp")
    os.makedirs(work_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path = os.path.join(tmp, "backup.bin")
        applied = await asyncio.wrap_future(raft.write_backup(path))
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": 'attachment; filename="raftmq.backup"',
                "X-Applied-Index": str(applied),
            }
        )
        response.content_length = os.path.getsize(path)
        await response.prepare(request)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                await response.write(chunk)
        await response.write_eof()
        return response


async def post_member(request: web.Request) -> web.Response:
    status, body = await membership.add_member(
        request.app[RAFT],
        request.app[MEMBERSHIP_LOCK],
        await read_json(request),
        request.app[CONFIG].raft.cluster_secret,
    )
    return json_response(body, status)


async def delete_member(request: web.Request) -> web.Response:
    body = await membership.remove_member(
        request.app[RAFT],
        request.app[MEMBERSHIP_LOCK],
        request.match_info["member"],
        request.app[CONFIG].raft.raft_address,
    )
    return json_response(body)


def routes() -> list[web.RouteDef]:
    from node import routes_channel, routes_pubsub, routes_users  # they import these helpers

    return [
        web.get("/", dashboard),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/v1/cluster", cluster_status),
        web.post("/v1/cluster/members", post_member),
        web.get("/v1/backup", backup),
        web.delete("/v1/cluster/members/{member}", delete_member),
        web.get("/v1/queues", list_queues),
        web.put("/v1/queues/{queue}", declare_queue),
        web.get("/v1/queues/{queue}", get_queue),
        web.delete("/v1/queues/{queue}", delete_queue),
        web.post("/v1/queues/{queue}/purge", purge_queue),
        web.post("/v1/queues/{queue}/messages", publish),
        web.post("/v1/messages", publish_many),
        web.post("/v1/queues/{queue}/receive", receive),
        web.post("/v1/queues/{queue}/ack", ack),
        web.post("/v1/queues/{queue}/nack", nack),
        *routes_pubsub.routes(),
        *routes_users.routes(),
        *routes_channel.routes(),
    ]


def _wake_listener(
    app: web.Application, loop: asyncio.AbstractEventLoop
) -> Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]:
    waiters = app[WAITERS]
    removal = app[REMOVAL]
    from node.routes_pubsub import wake_keys

    def on_applied(commands: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        queues = {str(c.get("queue")) for c in commands if c.get("op") in _WAKING_OPS}
        queues |= wake_keys(commands, results)
        # Cross threads only when a long poll waits here: most applies (every
        # one on a follower) have nobody to wake, and the wake-up is not free.
        queues = waiters.watched(queues)
        if queues:
            loop.call_soon_threadsafe(waiters.notify, queues)
        removal.applied(commands)
        if removal.unregistered:
            loop.call_soon_threadsafe(_stop_if_removed, app)

    return on_applied


def _stop_if_removed(app: web.Application) -> bool:
    """Mark the data dir removed and stop, once this node's removal is certain."""
    stop = app[STOP]
    if stop.is_set() or not app[REMOVAL].removed(app[RAFT].is_ready()):
        return stop.is_set()
    logger.warning("this node was removed from the cluster; stopping")
    membership.mark_removed(app[CONFIG].raft.data_dir)
    stop.set()
    return True


async def _registration(app: web.Application) -> None:
    """Record this node's HTTP URL in the replicated registry, so any node can redirect here.

    Also remembers the current members in the data dir, so a restart reaches
    members added after this node was first started.
    """
    raft = app[RAFT]
    config = app[CONFIG]
    expected = {"id": config.node_id, "http": config.advertise_http}
    saved_members: list[str] | None = membership.load_peers(config.raft.data_dir)
    while True:
        if _stop_if_removed(app) or app[REMOVAL].unregistered:
            # Removed, or unregistered while catching up: registering again
            # would put a removed node back in the registry.
            await asyncio.sleep(0.2)
            continue
        members = raft.members()
        if members != saved_members and raft.leader_raft() is not None:
            membership.save_peers(config.raft.data_dir, members)
            saved_members = members
        current = raft.read(lambda store: store.nodes()).get(config.raft.raft_address)
        stale = current is None or any(current.get(k) != v for k, v in expected.items())
        if stale and raft.leader_raft() is not None:
            try:
                await raft.propose(
                    {
                        "op": "register_node",
                        "raft": config.raft.raft_address,
                        "now_ms": now_ms(),
                        **expected,
                    }
                )
            except ClusterError as exc:
                logger.debug("node registration not committed yet: %s", exc)
        await asyncio.sleep(0.2 if stale else 2.0)


async def _background(app: web.Application) -> Any:
    loop = asyncio.get_running_loop()
    raft = app[RAFT]
    raft.attach_loop(loop)
    raft.add_apply_listener(_wake_listener(app, loop))
    raft.set_companions(app[WAITERS].companions)
    tasks = [asyncio.create_task(_registration(app)), asyncio.create_task(reap_forever(raft))]
    yield
    for task in tasks:
        task.cancel()
    app[WAITERS].notify_all()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_app(raft: RaftPort, config: NodeConfig) -> web.Application:
    waiters = QueueWaiters(config.limits.max_waiters)
    metrics = Metrics(raft, config, waiters)
    authenticate = auth.middleware(auth.store_lookup(raft), config.metrics_auth, raft.is_leader)
    app = web.Application(
        middlewares=[
            logs.request_id_middleware,
            metrics.middleware,
            error_middleware,
            authenticate,
        ],
        client_max_size=config.limits.max_body_bytes,
    )
    app[RAFT] = raft
    app[CONFIG] = config
    app[WAITERS] = waiters
    app[BODY_BUDGET] = BodyBudget(config.limits.max_body_buffer_bytes)
    app[OPEN_CHANNELS] = set()
    app[MEMBERSHIP_LOCK] = asyncio.Lock()
    app[STOP] = asyncio.Event()
    app[REMOVAL] = membership.RemovalWatch(config.raft.raft_address)
    app.cleanup_ctx.append(_background)
    app.on_response_prepare.append(logs.on_prepare)
    app.add_routes(routes())
    app.router.add_get("/metrics", metrics.handler)
    app.router.add_get(openapi.OPENAPI_PATH, openapi.handler(config.limits))
    return app
