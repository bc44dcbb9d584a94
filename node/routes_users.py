"""HTTP handlers for users: create (token shown once), delete, grant, revoke, list.

Admin-only (node/auth.py) once a user exists. While none does, creating one is
open so the first admin can be made at first start; the command then carries
`bootstrap`, and storage refuses it if another user got there first.
"""

import secrets

from aiohttp import web

from node.app import RAFT, json_response, read_json
from node.auth import USER, token_sha256
from node.clock import now_ms
from node.errors import bad_request, from_result
from node.validation import check_name, reject_unknown
from storage import users
from storage.errors import InvalidCommand

TOKEN_PREFIX = "rmq_"


def _user(request: web.Request) -> str:
    return check_name(request.match_info["user"], "user")


async def _commit(request: web.Request, command: dict[str, object]) -> dict[str, object]:
    command["now_ms"] = now_ms()
    return await request.app[RAFT].propose_as_leader(command)


async def list_users(request: web.Request) -> web.Response:
    found = request.app[RAFT].read(lambda store: store.view(users.list_users))
    return json_response({"users": found})


async def add_user(request: web.Request) -> web.Response:
    body = await read_json(request)
    reject_unknown(body, {"name", "admin"})
    name = body.get("name")
    if not isinstance(name, str):
        raise bad_request("name must be a string")
    check_name(name, "user")
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise bad_request("admin must be a boolean")
    bootstrap = USER not in request
    if bootstrap and not admin:
        raise bad_request("the first user must be an admin (no user exists yet)")
    request.app[RAFT].require_leader()
    # The prefix makes tokens recognisable (secret scanners) and keeps one from
    # starting with "-", which `raftmq ctl --token TOKEN` would parse as an option.
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    result = await _commit(
        request,
        {
            "op": "user_add",
            "user": name,
            "admin": admin,
            "bootstrap": bootstrap,
            "token_sha256": token_sha256(token),
        },
    )
    if result.get("status") != "created":
        raise from_result(result, name)
    return json_response({"name": name, "admin": admin, "token": token}, 201)


async def delete_user(request: web.Request) -> web.Response:
    name = _user(request)
    result = await _commit(request, {"op": "user_delete", "user": name})
    if result.get("status") != "deleted":
        raise from_result(result, name)
    return web.Response(status=204)


async def grant(request: web.Request) -> web.Response:
    name = _user(request)
    body = await read_json(request)
    reject_unknown(body, set(users.KINDS))
    try:
        permissions = {kind: users.check_new_pattern(body.get(kind, "")) for kind in users.KINDS}
    except InvalidCommand as exc:
        raise bad_request(str(exc)) from None
    result = await _commit(request, {"op": "user_grant", "user": name, **permissions})
    if result.get("status") != "ok":
        raise from_result(result, name)
    return json_response({"name": name, "permissions": permissions})


async def revoke(request: web.Request) -> web.Response:
    name = _user(request)
    result = await _commit(request, {"op": "user_revoke", "user": name})
    if result.get("status") != "ok":
        raise from_result(result, name)
    return web.Response(status=204)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/users", list_users),
        web.post("/v1/users", add_user),
        web.delete("/v1/users/{user}", delete_user),
        web.put("/v1/users/{user}/permissions", grant),
        web.delete("/v1/users/{user}/permissions", revoke),
    ]
