"""Every route refuses anonymous callers (401) and callers without the permission (403).

Table-driven over the app's own router, against a FakeRaft-backed app: a route
added later without a rule in node/auth.py fails here.
"""

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node import auth
from node.app import make_app
from storage import users
from tests.unit.test_node_app import FakeRaft, node_config

Client = TestClient[Any, Any]
ALLOWED_KINDS = ("configure", "write", "read")
# A concrete value for every path parameter.
PARAMS = {
    "queue": "q1",
    "exchange": "x1",
    "stream": "s1",
    "group": "g1",
    "member": "n9",
    "user": "u9",
}


def _routes(app: web.Application) -> list[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        found.add((route.method, route.resource.canonical))
    return sorted(found)


def _path(canonical: str) -> str:
    path = canonical
    for name, value in PARAMS.items():
        path = path.replace("{" + name + "}", value)
    return path


@pytest.fixture
async def app(fake: FakeRaft, tmp_path: Path) -> web.Application:
    config = node_config(fake, tmp_path)
    return make_app(fake, config)


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[Client]:
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def _add(client: Client, name: str, token: str | None, admin: bool = False) -> str:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    resp = await client.post("/v1/users", json={"name": name, "admin": admin}, headers=headers)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["name"] == name and body["admin"] is admin
    # Never "-..." (an option to `raftmq ctl --token`), whatever the random part.
    assert body["token"].startswith("rmq_")
    return str(body["token"])


async def _grant(client: Client, admin: str, name: str, **permissions: str) -> None:
    resp = await client.put(
        f"/v1/users/{name}/permissions",
        json=permissions,
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def tokens(client: Client) -> dict[str, str]:
    """admin, one user per single permission (".*"), one with all three on other names, none."""
    admin = await _add(client, "admin", None, admin=True)
    made = {"admin": admin, "nobody": await _add(client, "nobody", admin)}
    for kind in ALLOWED_KINDS:
        made[kind] = await _add(client, kind, admin)
        await _grant(client, admin, kind, **{kind: ".*"})
    made["elsewhere"] = await _add(client, "elsewhere", admin)
    await _grant(client, admin, "elsewhere", configure="other.*", write="other.*", read="other.*")
    return made


async def _call(client: Client, method: str, canonical: str, token: str | None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    data = b"{}" if method in ("POST", "PUT") else None
    resp = await client.request(
        method, _path(canonical), data=data, headers=headers, allow_redirects=False
    )
    if resp.status in (401, 403):
        body = await resp.json()
        assert body["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[resp.status]
    return resp.status


def test_every_route_has_a_rule(app: web.Application) -> None:
    table = auth.rules(metrics_auth=False)
    missing = [route for route in _routes(app) if route not in table]
    assert missing == []
    assert set(table) == set(_routes(app)), "rules for routes the app does not serve"


async def test_every_route_checks_authentication_and_permission(
    app: web.Application, client: Client, tokens: dict[str, str]
) -> None:
    table = auth.rules(metrics_auth=False)
    for method, canonical in _routes(app):
        rule = table[(method, canonical)]
        where = f"{method} {canonical}"
        anonymous = await _call(client, method, canonical, None)
        bogus = await _call(client, method, canonical, "not-a-token")
        if rule.level == auth.OPEN:
            assert anonymous not in (401, 403), where
            continue
        assert anonymous == 401, where
        assert bogus == 401, where
        assert await _call(client, method, canonical, tokens["admin"]) not in (401, 403), where
        nobody = await _call(client, method, canonical, tokens["nobody"])
        if rule.level == auth.AUTHENTICATED:
            assert nobody not in (401, 403), where
            continue
        assert nobody == 403, where
        assert await _call(client, method, canonical, tokens["elsewhere"]) == 403, where
        kinds_needed = {kind for kind, _ in rule.needs}
        for kind in ALLOWED_KINDS:
            status = await _call(client, method, canonical, tokens[kind])
            if rule.level == auth.ADMIN or kinds_needed != {kind}:
                assert status == 403, (where, kind)
            else:
                assert status not in (401, 403), (where, kind)


async def test_open_until_the_first_admin_then_bootstrap_is_closed(client: Client) -> None:
    assert (await client.put("/v1/queues/q1", json={})).status == 201
    refused = await client.post("/v1/users", json={"name": "alice"})
    assert refused.status == 400  # the first user must be an admin
    admin = await _add(client, "admin", None, admin=True)
    again = await client.post("/v1/users", json={"name": "eve", "admin": True})
    assert again.status == 401
    assert again.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/v1/queues")).status == 401
    ok = await client.get("/v1/queues", headers={"Authorization": f"Bearer {admin}"})
    assert ok.status == 200
    assert (await client.get("/healthz")).status == 200


async def test_permission_regexes_match_whole_names(client: Client, tokens: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {tokens['elsewhere']}"}
    assert (await client.put("/v1/queues/other1", json={}, headers=headers)).status == 201
    assert (await client.put("/v1/queues/xother1", json={}, headers=headers)).status == 403
    publish = {"messages": [{"body": "a"}]}
    resp = await client.post("/v1/queues/other1/messages", json=publish, headers=headers)
    assert resp.status == 200


async def test_last_admin_cannot_be_deleted_and_revoke_takes_effect(
    client: Client, tokens: dict[str, str]
) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    resp = await client.delete("/v1/users/admin", headers=admin)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "last_admin"
    write = {"Authorization": f"Bearer {tokens['write']}"}
    await client.put("/v1/queues/q1", json={}, headers=admin)
    body = {"messages": [{"body": "a"}]}
    assert (await client.post("/v1/queues/q1/messages", json=body, headers=write)).status == 200
    assert (await client.delete("/v1/users/write/permissions", headers=admin)).status == 204
    assert (await client.post("/v1/queues/q1/messages", json=body, headers=write)).status == 403
    assert (await client.delete("/v1/users/write", headers=admin)).status == 204
    assert (await client.post("/v1/queues/q1/messages", json=body, headers=write)).status == 401
    listed = await (await client.get("/v1/users", headers=admin)).json()
    assert "write" not in {u["name"] for u in listed["users"]}
    assert all("token" not in str(u) for u in listed["users"])


async def test_tokens_are_stored_hashed_and_never_logged(
    client: Client, fake: FakeRaft, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await _add(client, "admin", None, admin=True)
    resp = await client.get("/v1/cluster", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    digest = hashlib.sha256(token.encode()).digest()
    assert fake.store.view(users.by_token_hash(digest)) is not None
    raw = b"".join((Path(fake.store.path) / "data.mdb").read_bytes().split(b"\x00"))
    assert token.encode() not in raw
    assert token not in caplog.text


async def test_bad_permission_regex_is_a_400(client: Client, tokens: dict[str, str]) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    resp = await client.put("/v1/users/nobody/permissions", json={"read": "(("}, headers=admin)
    assert resp.status == 400


async def test_a_permission_that_could_take_too_long_to_match_is_a_400(
    client: Client, tokens: dict[str, str]
) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    await _grant(client, tokens["admin"], "write", write="orders.*")
    for pattern in ("(a*)*b", "(a|ab)*c", "(a)\\1", "[a-z]*[a-z]*[a-z]*[a-z]*x"):
        resp = await client.put(
            "/v1/users/write/permissions", json={"write": pattern}, headers=admin
        )
        assert resp.status == 400, pattern
        assert (await resp.json())["error"]["code"] == "invalid_request"
    listed = await client.get("/v1/users", headers=admin)
    write = next(u for u in (await listed.json())["users"] if u["name"] == "write")
    assert write["permissions"]["write"] == "orders.*"  # unchanged


async def test_a_follower_leaves_leader_bound_requests_to_the_leader(
    client: Client, fake: FakeRaft, tokens: dict[str, str]
) -> None:
    # Its users table may lag the leader's (a grant just made): the leader judges.
    fake.leader = "127.0.0.1:2"
    write = await client.post("/v1/queues/q/messages", json={}, allow_redirects=False)
    assert write.status == 503  # redirected if the leader's URL were known; never 401 here
    assert (await write.json())["error"]["code"] == "no_leader"
    local_read = await client.get("/v1/queues")
    assert local_read.status == 401  # served from this node's store: checked here


async def test_a_multi_queue_publish_needs_write_on_every_queue_it_names(
    client: Client, tokens: dict[str, str]
) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    for queue in ("other1", "mine"):
        assert (await client.put(f"/v1/queues/{queue}", json={}, headers=admin)).status == 201
    elsewhere = {"Authorization": f"Bearer {tokens['elsewhere']}"}
    both = {
        "publishes": [
            {"queue": "other1", "messages": [{"body": "a"}]},
            {"queue": "mine", "messages": [{"body": "b"}]},
        ]
    }
    refused = await client.post("/v1/messages", json=both, headers=elsewhere)
    assert refused.status == 403
    assert "mine" in (await refused.json())["error"]["message"]
    # Refused before anything was proposed: not even the permitted queue got its message.
    other1 = await (await client.get("/v1/queues/other1", headers=admin)).json()
    assert other1["total"] == 0
    allowed = {"publishes": both["publishes"][:1]}
    assert (await client.post("/v1/messages", json=allowed, headers=elsewhere)).status == 200
