"""Bearer-token authentication and RabbitMQ-style permissions for every route.

Authentication is off while no user exists (the first start: `raftmq ctl user
add admin --admin` creates the first admin unauthenticated) and on as soon as
one does. Every route has exactly one rule in `rules()`; a route without a rule
is admin-only, so a route added later is never open by accident.

Permissions (regexes over whole names, see storage/users.py):
  configure  declare, delete, purge a queue; declare, delete an exchange or a
             stream; bind and unbind (configure on both exchange and queue)
  write      publish to a queue or an exchange, append to a stream
  read       receive, ack, nack, get a queue; get an exchange; read a stream,
             get and commit a consumer-group offset
  any user   list queues, exchanges and streams (names and counters), cluster status,
             open the WebSocket channel (each of its frames is then checked as the
             HTTP route it stands for, see `authorize`)
  admin      membership, backup, users; admins pass every check
  open       /healthz, /readyz, the OpenAPI document, the dashboard page (its
             API calls carry a token), /metrics unless --metrics-auth
"""

import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from node.errors import ApiError
from node.openapi import OPENAPI_PATH
from node.ports import RaftPort
from storage import users

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The route whose rule a publish sent some other way (a channel frame, one queue of a
# multi-queue publish) is checked against.
PUBLISH_ROUTE: Final = ("POST", "/v1/queues/{queue}/messages")

OPEN: Final = "open"
AUTHENTICATED: Final = "authenticated"
ADMIN: Final = "admin"


@dataclass(frozen=True)
class Rule:
    """Who may call a route: OPEN, AUTHENTICATED, ADMIN, or `needs` permissions."""

    level: str
    # (permission kind, path parameter naming the resource) pairs, all required.
    needs: tuple[tuple[str, str], ...] = ()


def _perm(*needs: tuple[str, str]) -> Rule:
    return Rule("permission", needs)


def rules(metrics_auth: bool) -> dict[tuple[str, str], Rule]:
    """The rule of every (method, route) the app serves."""
    q, x, s = "queue", "exchange", "stream"
    return {
        ("GET", "/"): Rule(OPEN),
        ("GET", "/healthz"): Rule(OPEN),
        ("GET", "/readyz"): Rule(OPEN),
        ("GET", OPENAPI_PATH): Rule(OPEN),
        ("GET", "/metrics"): Rule(AUTHENTICATED if metrics_auth else OPEN),
        ("GET", "/v1/cluster"): Rule(AUTHENTICATED),
        ("GET", "/v1/channel"): Rule(AUTHENTICATED),
        ("POST", "/v1/cluster/members"): Rule(ADMIN),
        ("DELETE", "/v1/cluster/members/{member}"): Rule(ADMIN),
        ("GET", "/v1/backup"): Rule(ADMIN),
        ("GET", "/v1/users"): Rule(ADMIN),
        ("POST", "/v1/users"): Rule(ADMIN),
        ("DELETE", "/v1/users/{user}"): Rule(ADMIN),
        ("PUT", "/v1/users/{user}/permissions"): Rule(ADMIN),
        ("DELETE", "/v1/users/{user}/permissions"): Rule(ADMIN),
        ("GET", "/v1/queues"): Rule(AUTHENTICATED),
        ("PUT", "/v1/queues/{queue}"): _perm(("configure", q)),
        ("GET", "/v1/queues/{queue}"): _perm(("read", q)),
        ("DELETE", "/v1/queues/{queue}"): _perm(("configure", q)),
        ("POST", "/v1/queues/{queue}/purge"): _perm(("configure", q)),
        ("POST", "/v1/queues/{queue}/messages"): _perm(("write", q)),
        # write on each queue named in the body, checked by the handler (node.app)
        ("POST", "/v1/messages"): Rule(AUTHENTICATED),
        ("POST", "/v1/queues/{queue}/receive"): _perm(("read", q)),
        ("POST", "/v1/queues/{queue}/ack"): _perm(("read", q)),
        ("POST", "/v1/queues/{queue}/nack"): _perm(("read", q)),
        ("GET", "/v1/exchanges"): Rule(AUTHENTICATED),
        ("PUT", "/v1/exchanges/{exchange}"): _perm(("configure", x)),
        ("GET", "/v1/exchanges/{exchange}"): _perm(("read", x)),
        ("DELETE", "/v1/exchanges/{exchange}"): _perm(("configure", x)),
        ("PUT", "/v1/exchanges/{exchange}/bindings/{queue}"): _perm(
            ("configure", x), ("configure", q)
        ),
        ("DELETE", "/v1/exchanges/{exchange}/bindings/{queue}"): _perm(
            ("configure", x), ("configure", q)
        ),
        ("POST", "/v1/exchanges/{exchange}/publish"): _perm(("write", x)),
        ("GET", "/v1/streams"): Rule(AUTHENTICATED),
        ("PUT", "/v1/streams/{stream}"): _perm(("configure", s)),
        ("GET", "/v1/streams/{stream}"): _perm(("read", s)),
        ("DELETE", "/v1/streams/{stream}"): _perm(("configure", s)),
        ("POST", "/v1/streams/{stream}/records"): _perm(("write", s)),
        ("GET", "/v1/streams/{stream}/records"): _perm(("read", s)),
        ("GET", "/v1/streams/{stream}/groups/{group}"): _perm(("read", s)),
        ("PUT", "/v1/streams/{stream}/groups/{group}"): _perm(("read", s)),
        ("DELETE", "/v1/streams/{stream}/groups/{group}"): _perm(("read", s)),
    }


_ADMIN_ONLY: Final = Rule(ADMIN)
# The authenticated user's name; absent while authentication is off.
USER: Final = web.RequestKey("user", str)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="raftmq"'})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("send Authorization: Bearer <token>")
    # Tokens are ASCII; a header's bytes that are not UTF-8 arrive as lone surrogates,
    # which cannot be hashed (encoded) and could match no token anyway.
    if not token.isascii():
        raise unauthorized("the token is not valid")
    return token.strip()


def check(rule: Rule, record: dict[str, Any], match_info: dict[str, str], user: str) -> None:
    """Raise 403 unless the user's record satisfies the rule."""
    if rule.level == AUTHENTICATED or record.get("admin") is True:
        return
    if rule.level == ADMIN:
        raise forbidden(f"user {user!r} is not an admin")
    permissions = record.get("permissions") or {}
    for kind, part in rule.needs:
        resource = match_info.get(part, "")
        if not users.allows(permissions, kind, resource):
            raise forbidden(f"user {user!r} has no {kind} permission on {part} {resource[:60]!r}")


AuthLookup = Callable[[Callable[[Any, Any], Any]], Any]


def store_lookup(raft: RaftPort) -> AuthLookup:
    """Reads users and permissions from this node's store, one read transaction each."""
    return lambda fn: raft.read(lambda store: store.view(fn))


# GET routes that only the leader serves (the others read this node's store).
_LEADER_READS: Final = {
    "/v1/channel",
    "/v1/streams/{stream}/records",
    "/v1/streams/{stream}/groups/{group}",
}


def middleware(read_store: AuthLookup, metrics_auth: bool, is_leader: Callable[[], bool]) -> Any:
    """The aiohttp middleware; `read_store(fn)` runs `fn(txn, dbs)` on this node's store.

    A follower does not judge a request that only the leader serves: its copy
    of users and permissions may lag the leader's by a few entries (a grant
    just made would be refused here). The handler redirects it, and the
    leader decides with the authoritative state. Every state change is a
    proposal only the leader makes, so nothing is done here unchecked.
    """
    table = rules(metrics_auth)

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None:  # 404 / 405: nothing to protect
            return await handler(request)
        method = "GET" if request.method == "HEAD" else request.method
        rule = table.get((method, resource.canonical), _ADMIN_ONLY)
        leader_bound = method != "GET" or resource.canonical in _LEADER_READS
        if rule.level == OPEN or (leader_bound and not is_leader()):
            return await handler(request)
        found = _caller(request, read_store)
        if found is None:
            return await handler(request)
        user, record = found
        request[USER] = user
        check(rule, record, dict(request.match_info), user)
        return await handler(request)

    return auth_middleware


def _caller(request: web.Request, read_store: AuthLookup) -> tuple[str, dict[str, Any]] | None:
    """The user the request's bearer token names; None while authentication is off."""
    if not read_store(users.any_user):
        return None
    digest = bytes.fromhex(token_sha256(_bearer(request)))
    found = read_store(users.by_token_hash(digest))
    # The index lookup is by hash; compare again in constant time for good measure.
    if found is None or not hmac.compare_digest(found[1]["token_sha256"], digest.hex()):
        raise unauthorized("the token is not valid")
    user, record = found
    return str(user), dict(record)


@functools.cache
def _route_rules() -> dict[tuple[str, str], Rule]:
    return rules(metrics_auth=False)


def authorize(
    request: web.Request, read_store: AuthLookup, route: tuple[str, str], match_info: dict[str, str]
) -> None:
    """Check one action of a long-lived connection as the HTTP `route` would be checked.

    Used for every frame of the WebSocket channel: the user and permissions are
    read afresh from the (upgrade) request's token each time, so a revoke or a
    deleted user takes effect on open channels. Raises 401/403 `ApiError`s.
    """
    found = _caller(request, read_store)
    if found is not None:
        check(_route_rules().get(route, _ADMIN_ONLY), found[1], match_info, found[0])
