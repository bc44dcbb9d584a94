"""The OpenAPI document names exactly the routes the app serves, and is well formed."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.app import make_app
from node.config import Limits
from node.errors import ApiError
from node.openapi import OPENAPI_PATH, build_openapi
from node.validation import check_name
from tests.unit.test_node_app import FakeRaft, node_config

_METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[web.Application]:
    raft = FakeRaft(tmp_path / "store")
    config = node_config(raft, tmp_path)
    yield make_app(raft, config)
    raft.store.close()


def _registered(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        routes.add((route.method, route.resource.canonical))
    return routes


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in _METHODS
    }


def test_every_route_is_documented_and_nothing_else(app: web.Application) -> None:
    registered = _registered(app)
    documented = _documented(build_openapi(Limits()))
    assert registered - documented == set(), "routes missing from node/openapi.py"
    assert documented - registered == set(), "documented operations the app does not serve"


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_document_is_well_formed() -> None:
    document = build_openapi(Limits())
    assert document["openapi"].startswith("3.")
    for ref in set(_refs(document)):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref
    operation_ids = []
    for path, item in document["paths"].items():
        names = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{method.upper()} {path}: path parameters"
            responses = operation["responses"]
            # A success, or the WebSocket upgrade of GET /v1/channel.
            assert any(code.startswith("2") or code == "101" for code in responses), path
            assert "500" in responses
            if "503" in responses:
                unavailable = document["components"]["responses"]["Unavailable"]
                assert unavailable["headers"]["Retry-After"]["required"] is True
    assert len(operation_ids) == len(set(operation_ids))
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]


def test_bounds_follow_the_limits() -> None:
    document = build_openapi(Limits(max_batch=7, max_wait_s=3.0))
    schemas = document["components"]["schemas"]
    assert schemas["PublishIn"]["properties"]["messages"]["maxItems"] == 7
    [wait, _null] = schemas["ReceiveIn"]["properties"]["wait"]["anyOf"]
    assert wait["maximum"] == 3.0


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_served_document_is_the_built_one(client: TestClient[Any, Any]) -> None:
    resp = await client.get(OPENAPI_PATH)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == build_openapi(Limits())


@pytest.mark.parametrize("name", ["q", "a.b-c_D9", "x" * 200])
def test_documented_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 201, "a b", "a/b", "abc\n", "\nabc", "é"])
def test_names_outside_the_documented_pattern_are_refused(name: str) -> None:
    # JSON Schema's `$` is the end of the string: the node must not accept "abc\n" either.
    with pytest.raises(ApiError) as refused:
        check_name(name)
    assert (refused.value.status, refused.value.code) == (400, "invalid_name")
