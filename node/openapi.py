"""The OpenAPI 3.1 description of the whole HTTP API, served at `GET /v1/openapi.json`.

Built as plain data from the node's limits, so every documented bound is the
one the node enforces. `tests/unit/test_openapi.py` checks that it names
exactly the routes the app registers, and `tests/cluster/test_schemathesis.py`
checks live answers against it.
"""

from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from node.config import Limits
from node.validation import NAME_RE
from storage.fields import MAX_ROUTING_KEY_BYTES
from storage.topic import TYPES

OPENAPI_PATH: Final = "/v1/openapi.json"

Schema = dict[str, Any]

_MAX_SAFE_INT: Final = (1 << 53) - 1


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(
    properties: dict[str, Schema], required: tuple[str, ...] = (), *, closed: bool = True
) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _integer(minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def _number(minimum: float, maximum: float) -> Schema:
    return {"type": "number", "minimum": minimum, "maximum": maximum}


_REQUEST_ID_HEADER: Final = {
    "X-Request-Id": {
        "description": "Id of this request in the node log (also sent by the client when valid).",
        "schema": {"type": "string"},
    }
}


def _json_response(description: str, schema: Schema) -> Schema:
    return {
        "description": description,
        "headers": dict(_REQUEST_ID_HEADER),
        "content": {"application/json": {"schema": schema}},
    }


def _no_content(description: str) -> Schema:
    return {"description": description, "headers": dict(_REQUEST_ID_HEADER)}


def _error_ref(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json_body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _ref("Name"),
    }


def _query_param(name: str, description: str, schema: Schema) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


# Error answers every handler may give.
_COMMON_ERRORS: Final = {"500": _error_ref("Internal")}
# A write (or a leader-only read) on a follower, or with no leader.
_LEADER_ERRORS: Final = {"307": _error_ref("Redirect"), "503": _error_ref("Unavailable")}
# Writes that add data: refused while the leader's store or disk is nearly full.
_GROWING_ERRORS: Final = {"507": _error_ref("StorageFull")}


def _operation(
    op_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    leader: bool = False,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
) -> Schema:
    all_responses = dict(responses)
    if leader:
        all_responses.update(_LEADER_ERRORS)
    if body is not None:
        all_responses.setdefault("400", _error_ref("BadRequest"))
        all_responses.setdefault("413", _error_ref("TooLarge"))
        all_responses.setdefault("408", _error_ref("RequestTimeout"))
        all_responses.setdefault("503", _error_ref("Unavailable"))
    all_responses.update(_COMMON_ERRORS)
    operation: Schema = {
        "operationId": op_id,
        "tags": [tag],
        "summary": summary,
        "responses": dict(sorted(all_responses.items())),
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    return operation


def _schemas(limits: Limits) -> dict[str, Schema]:
    from node import routes_pubsub  # imports node.app, which imports this module

    name = {"type": "string", "pattern": NAME_RE.pattern}
    headers = {
        "type": "object",
        "maxProperties": limits.max_headers,
        "propertyNames": {"maxLength": 256},
        "additionalProperties": {"type": "string", "maxLength": 4096},
    }
    message_in = {
        "body": {
            "type": "string",
            "maxLength": limits.max_message_bytes,
            "description": (
                "text, or base64 when encoding is base64; at most "
                f"{limits.max_message_bytes} bytes in UTF-8 (413 message_too_large)"
            ),
        },
        "headers": _nullable(headers),
        "id": _nullable(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "publish id: a repeat within the dedup window is not enqueued again",
            }
        ),
        "encoding": _nullable({"type": "string", "enum": ["base64"]}),
    }
    delivered: dict[str, Schema] = {
        "id": {"type": "string"},
        "body": {"type": "string"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "encoding": {"type": "string", "enum": ["base64"]},
    }
    seconds = {"type": "number", "description": "seconds"}
    queue_config = {
        "visibility_timeout": _nullable(_number(0.001, limits.max_visibility_timeout_s)),
        "max_deliveries": _nullable(_integer(1, 1_000_000)),
        "dead_letter_queue": _nullable(_ref("Name")),
        "message_ttl": _nullable(_number(0.001, 365 * 86400)),
        "max_length": _nullable(_integer(1, 1 << 40)),
        "overflow": {"type": "string", "enum": ["reject_publish", "drop_head"]},
        "delivery_delay": _nullable(_number(0, limits.max_delay_s)),
    }
    retention = {
        "max_age": _nullable(_number(0.001, routes_pubsub.MAX_RETENTION_AGE_S)),
        "max_bytes": _nullable(_integer(1, routes_pubsub.MAX_RETENTION_COUNT)),
        "max_records": _nullable(_integer(1, routes_pubsub.MAX_RETENTION_COUNT)),
    }
    counter = {"type": "integer", "minimum": 0}
    routing_key = {
        "type": "string",
        "maxLength": MAX_ROUTING_KEY_BYTES,
        "description": f"at most {MAX_ROUTING_KEY_BYTES} bytes of UTF-8; topic patterns: * and #",
    }
    node_ref = _object(
        {
            "id": _nullable({"type": "string"}),
            "raft": {"type": "string"},
            "http": _nullable({"type": "string"}),
        },
        ("id", "raft", "http"),
    )
    stream_info = {
        "name": name,
        "config": _ref("StreamConfig"),
        "first_offset": counter,
        "last_offset": _nullable(counter),
        "next_offset": counter,
        "records": counter,
        "bytes": counter,
    }
    error = _object(
        {
            "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
            "message": {"type": "string", "minLength": 1},
        },
        ("code", "message"),
    )
    return {
        "Name": name,
        "Error": _object({"error": error}, ("error",)),
        "QueueConfigIn": _object(queue_config),
        "QueueConfig": _object(
            {
                "visibility_timeout": seconds,
                "max_deliveries": _nullable({"type": "integer"}),
                "dead_letter_queue": _nullable(name),
                "message_ttl": _nullable(seconds),
                "max_length": _nullable({"type": "integer"}),
                "overflow": queue_config["overflow"],
                "delivery_delay": seconds,
            },
            tuple(queue_config),
        ),
        "QueueDeclared": _object(
            {"queue": name, "config": _ref("QueueConfig")}, ("queue", "config")
        ),
        "Queue": _object(
            {
                "name": name,
                "config": _ref("QueueConfig"),
                "ready": counter,
                "in_flight": counter,
                "delayed": counter,
                "total": counter,
                "published_total": counter,
                "delivered_total": counter,
                "acked_total": counter,
                "dead_lettered_total": counter,
            },
            (
                "name",
                "config",
                "ready",
                "in_flight",
                "delayed",
                "total",
                "published_total",
                "delivered_total",
                "acked_total",
                "dead_lettered_total",
            ),
        ),
        "MessageIn": _object(
            {**message_in, "delay": _nullable(_number(0, limits.max_delay_s))}, ("body",)
        ),
        "PublishIn": _object(
            {
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits.max_batch,
                    "items": _ref("MessageIn"),
                }
            },
            ("messages",),
        ),
        "PublishManyIn": _object(
            {
                "publishes": {
                    "type": "array",
                    "minItems": 1,
                    "items": _object(
                        {
                            "queue": _ref("Name"),
                            "messages": {
                                "type": "array",
                                "minItems": 1,
                                "items": _ref("MessageIn"),
                            },
                        },
                        ("queue", "messages"),
                    ),
                    "description": f"each queue at most once; at most {limits.max_batch} "
                    "messages in all",
                }
            },
            ("publishes",),
        ),
        "PublishResult": _object(
            {
                "queue": _ref("Name"),
                "ids": {"type": "array", "items": {"type": "string"}},
                "status": {
                    "type": "integer",
                    "description": "the HTTP status this queue's publish alone would have had",
                },
                "error": error,
            },
            ("queue",),
        ),
        "ReceiveIn": _object(
            {
                "max": _nullable(_integer(1, limits.max_receive)),
                "wait": _nullable(_number(0, limits.max_wait_s)),
                "visibility_timeout": _nullable(_number(0.001, limits.max_visibility_timeout_s)),
            }
        ),
        "Delivery": _object(
            {
                **delivered,
                "receipt": {"type": "string"},
                "deliveries": {"type": "integer", "minimum": 1},
                "published_at": {"type": "integer", "description": "Unix time in ms"},
            },
            ("id", "body", "headers", "receipt", "deliveries", "published_at"),
        ),
        "Receipts": {
            "type": "array",
            "minItems": 1,
            "maxItems": limits.max_batch,
            "items": {"type": "string", "minLength": 1, "maxLength": 256},
        },
        "Member": node_ref,
        "MemberIn": _object(
            {
                "id": name,
                "raft": {"type": "string", "pattern": "^.+:[0-9]+$"},
                "http": {"type": "string", "pattern": "^https?://"},
            },
            ("id", "raft", "http"),
        ),
        "Members": _object({"members": {"type": "array", "items": _ref("Member")}}, ("members",)),
        "ClusterStatus": _object(
            {
                "node_id": {"type": "string"},
                "raft_address": {"type": "string"},
                "http_url": {"type": "string"},
                "role": {"type": "string", "enum": ["follower", "candidate", "leader", "unknown"]},
                "leader": _nullable(node_ref),
                "term": counter,
                "commit_index": counter,
                "last_applied": counter,
                "applied_index": counter,
                "log_length": counter,
                "has_quorum": {"type": "boolean"},
                "members": {
                    "type": "array",
                    "items": _object(
                        {
                            **node_ref["properties"],
                            "state": {
                                "type": "string",
                                "enum": ["self", "leader", "connected", "unreachable"],
                            },
                        },
                        ("id", "raft", "http", "state"),
                    ),
                },
                "storage": _object(
                    {
                        "live_bytes": counter,
                        "capacity_bytes": counter,
                        "disk_free_bytes": counter,
                        "full": _nullable(
                            {
                                "type": "string",
                                "description": "why this node refuses publishes and appends "
                                "(507 storage_full), or null",
                            }
                        ),
                    },
                    ("live_bytes", "capacity_bytes", "disk_free_bytes", "full"),
                ),
                "digest": {"type": "string", "description": "only with ?digest=1"},
            },
            (
                "node_id",
                "raft_address",
                "http_url",
                "role",
                "leader",
                "term",
                "commit_index",
                "last_applied",
                "applied_index",
                "log_length",
                "has_quorum",
                "members",
                "storage",
            ),
        ),
        "ExchangeIn": _object(
            {
                "type": {"type": "string", "enum": list(TYPES)},
                "alternate_queue": _nullable(_ref("Name")),
            },
            ("type",),
        ),
        "ExchangeDeclared": _object(
            {
                "exchange": name,
                "type": {"type": "string", "enum": list(TYPES)},
                "alternate_queue": _nullable(name),
            },
            ("exchange", "type", "alternate_queue"),
        ),
        "Exchange": _object(
            {
                "name": name,
                "type": {"type": "string", "enum": list(TYPES)},
                "alternate_queue": _nullable(name),
                "bindings": {
                    "type": "array",
                    "items": _object(
                        {"queue": name, "routing_key": {"type": "string"}},
                        ("queue", "routing_key"),
                    ),
                },
            },
            ("name", "type", "alternate_queue", "bindings"),
        ),
        "RoutingKeyIn": _object({"routing_key": _nullable(routing_key)}),
        "Binding": _object(
            {"exchange": name, "queue": name, "routing_key": {"type": "string"}},
            ("exchange", "queue", "routing_key"),
        ),
        "ExchangePublishIn": _object(
            {
                "routing_key": _nullable(routing_key),
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits.max_batch,
                    "items": _ref("MessageIn"),
                },
            },
            ("messages",),
        ),
        "ExchangePublished": _object(
            {
                "routed": {
                    "type": "object",
                    "description": "messages enqueued per queue",
                    "additionalProperties": counter,
                },
                "unroutable": counter,
                "ids": {"type": "array", "items": {"type": "string"}},
            },
            ("routed", "unroutable", "ids"),
        ),
        "StreamConfigIn": _object(retention),
        "StreamConfig": _object(
            {
                "max_age": _nullable(seconds),
                "max_bytes": _nullable({"type": "integer"}),
                "max_records": _nullable({"type": "integer"}),
            },
            ("max_age", "max_bytes", "max_records"),
        ),
        "StreamDeclared": _object(
            {"stream": name, "config": _ref("StreamConfig")}, ("stream", "config")
        ),
        "Stream": _object(stream_info, tuple(stream_info)),
        "StreamDetail": _object(
            {
                **stream_info,
                "groups": {
                    "type": "object",
                    "description": "committed offset per consumer group",
                    "additionalProperties": counter,
                },
            },
            (*stream_info, "groups"),
        ),
        "RecordIn": _object(message_in, ("body",)),
        "AppendIn": _object(
            {
                "records": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits.max_batch,
                    "items": _ref("RecordIn"),
                }
            },
            ("records",),
        ),
        "Record": _object(
            {**delivered, "offset": counter, "timestamp": {"type": "integer"}},
            ("offset", "id", "body", "headers", "timestamp"),
        ),
        "Records": _object(
            {
                "records": {"type": "array", "items": _ref("Record")},
                "next_offset": counter,
                "first_offset": counter,
            },
            ("records", "next_offset", "first_offset"),
        ),
        "GroupOffset": _object(
            {"stream": name, "group": name, "offset": counter}, ("stream", "group", "offset")
        ),
        "OffsetIn": _object({"offset": _integer(0, _MAX_SAFE_INT)}, ("offset",)),
    }


def _error_responses() -> dict[str, Schema]:
    error = {"application/json": {"schema": _ref("Error")}}
    retry_after = {
        "Retry-After": {
            "description": "seconds to wait before retrying",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    }

    def response(description: str, extra: dict[str, Schema] | None = None) -> Schema:
        return {
            "description": description,
            "headers": {**_REQUEST_ID_HEADER, **(extra or {})},
            "content": error,
        }

    return {
        "BadRequest": response("Bad input: `invalid_request`, `invalid_json` or `invalid_name`."),
        "NotFound": response(
            "`queue_not_found`, `exchange_not_found`, `binding_not_found`, "
            "`stream_not_found`, `member_not_found` or `not_found`."
        ),
        "Conflict": response(
            "`queue_exists_different`, `queue_full`, `exchange_exists_different`, "
            "`stream_exists_different`, `membership_change_in_progress`, `would_lose_quorum`."
        ),
        "TooLarge": response("`body_too_large` or `message_too_large`."),
        "RequestTimeout": response(
            "`request_timeout`: the request body did not arrive within the node's "
            "`--body-timeout`; the connection is closed."
        ),
        "Redirect": response(
            "This node is a follower: repeat the request (same method and body) at Location, "
            "the leader (`not_leader`).",
            {
                "Location": {
                    "description": "the same path on the leader",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        ),
        "Unavailable": response(
            "`no_leader`, `unknown_outcome` (the write may or may not have happened), "
            "`overloaded` (too many writes waiting for Raft, or request bodies being "
            "received), `too_many_waiters` or `not_ready`.",
            retry_after,
        ),
        "StorageFull": response(
            "`storage_full`: the leader's store is over 90% of `--store-max-bytes`, or its "
            "disk has less free than `--min-free-disk-bytes` plus the store's live size, "
            "or this write would take it there (a write that does not fit is refused "
            "alone). Receives, acks, purges and deletes are still served and make room.",
            retry_after,
        ),
        "Internal": response("`internal`: the message names a request id found in the node log."),
        "Unauthorized": response(
            "`unauthorized`: no or an unknown bearer token (users exist).",
            {
                "WWW-Authenticate": {
                    "description": "the bearer scheme",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        ),
        "Forbidden": response(
            "`forbidden`: the user lacks the permission (or is not an admin); "
            "`cluster_secret_mismatch`: a join without this cluster's secret."
        ),
    }


def _queue_paths(limits: Limits) -> dict[str, Schema]:
    queue = [_path_param("queue", "queue name")]
    not_found = {"400": _error_ref("BadRequest"), "404": _error_ref("NotFound")}
    return {
        "/v1/queues": {
            "get": _operation(
                "listQueues",
                "queues",
                "Every queue with its configuration and counters.",
                {
                    "200": _json_response(
                        "The queues.",
                        _object({"queues": {"type": "array", "items": _ref("Queue")}}, ("queues",)),
                    )
                },
            )
        },
        "/v1/queues/{queue}": {
            "put": _operation(
                "declareQueue",
                "queues",
                "Create a queue; idempotent for the same configuration.",
                {
                    "200": _json_response(
                        "It exists with this configuration.", _ref("QueueDeclared")
                    ),
                    "201": _json_response("Created.", _ref("QueueDeclared")),
                    "409": _error_ref("Conflict"),
                },
                leader=True,
                parameters=queue,
                body=_json_body(_ref("QueueConfigIn"), required=False),
            ),
            "get": _operation(
                "getQueue",
                "queues",
                "One queue's configuration and counters (read on this node).",
                {"200": _json_response("The queue.", _ref("Queue")), **not_found},
                parameters=queue,
            ),
            "delete": _operation(
                "deleteQueue",
                "queues",
                "Delete a queue and its messages.",
                {"204": _no_content("Deleted."), **not_found},
                leader=True,
                parameters=queue,
            ),
        },
        "/v1/queues/{queue}/purge": {
            "post": _operation(
                "purgeQueue",
                "queues",
                "Drop every message of a queue.",
                {
                    "200": _json_response(
                        "Purged.",
                        _object({"purged": {"type": "integer", "minimum": 0}}, ("purged",)),
                    ),
                    **not_found,
                },
                leader=True,
                parameters=queue,
            )
        },
        "/v1/queues/{queue}/messages": {
            "post": _operation(
                "publish",
                "queues",
                "Publish a batch of messages (all or nothing).",
                {
                    "200": _json_response(
                        "Enqueued (or recognised as duplicates).",
                        _object({"ids": {"type": "array", "items": {"type": "string"}}}, ("ids",)),
                    ),
                    **not_found,
                    "409": _error_ref("Conflict"),
                    **_GROWING_ERRORS,
                },
                leader=True,
                parameters=queue,
                body=_json_body(_ref("PublishIn")),
            )
        },
        "/v1/messages": {
            "post": _operation(
                "publishMany",
                "queues",
                "Publish to several queues in one request: each queue's messages all or "
                "nothing, each queue's outcome on its own (write permission on every queue).",
                {
                    "200": _json_response(
                        "One result per queue, in request order: its ids, or its error and "
                        "the status a single-queue publish would have had.",
                        _object(
                            {"results": {"type": "array", "items": _ref("PublishResult")}},
                            ("results",),
                        ),
                    ),
                    "403": _error_ref("Forbidden"),
                    **_GROWING_ERRORS,
                },
                leader=True,
                body=_json_body(_ref("PublishManyIn")),
            )
        },
        "/v1/queues/{queue}/receive": {
            "post": _operation(
                "receive",
                "queues",
                "Lease up to `max` messages, long-polling up to `wait` seconds; the answer "
                "stops once its bodies reach 4 MiB (always at least one message).",
                {
                    "200": _json_response(
                        "The leased messages (possibly none).",
                        _object(
                            {"messages": {"type": "array", "items": _ref("Delivery")}},
                            ("messages",),
                        ),
                    ),
                    **not_found,
                },
                leader=True,
                parameters=queue,
                body=_json_body(_ref("ReceiveIn"), required=False),
            )
        },
        "/v1/queues/{queue}/ack": {
            "post": _operation(
                "ack",
                "queues",
                "Acknowledge (delete) leased messages.",
                {
                    "200": _json_response(
                        "Acked; `stale` lists receipts no longer valid.",
                        _object(
                            {
                                "acked": {"type": "integer", "minimum": 0},
                                "stale": {"type": "array", "items": {"type": "string"}},
                            },
                            ("acked", "stale"),
                        ),
                    ),
                    **not_found,
                },
                leader=True,
                parameters=queue,
                body=_json_body(_object({"receipts": _ref("Receipts")}, ("receipts",))),
            )
        },
        "/v1/queues/{queue}/nack": {
            "post": _operation(
                "nack",
                "queues",
                "Make leased messages visible again, optionally after a delay.",
                {
                    "200": _json_response(
                        "Requeued; `stale` lists receipts no longer valid.",
                        _object(
                            {
                                "requeued": {"type": "integer", "minimum": 0},
                                "stale": {"type": "array", "items": {"type": "string"}},
                            },
                            ("requeued", "stale"),
                        ),
                    ),
                    **not_found,
                },
                leader=True,
                parameters=queue,
                body=_json_body(
                    _object(
                        {
                            "receipts": _ref("Receipts"),
                            "delay": _nullable(_number(0, limits.max_delay_s)),
                        },
                        ("receipts",),
                    )
                ),
            )
        },
    }


def _cluster_paths() -> dict[str, Schema]:
    return {
        "/v1/cluster": {
            "get": _operation(
                "clusterStatus",
                "cluster",
                "This node's view of the cluster: role, leader, term, indexes, members.",
                {"200": _json_response("The status.", _ref("ClusterStatus"))},
                parameters=[
                    _query_param(
                        "digest",
                        "1, true or yes adds the digest of the applied state",
                        {"type": "string"},
                    )
                ],
            )
        },
        "/v1/cluster/members": {
            "post": _operation(
                "addMember",
                "cluster",
                "Add a member (one membership change at a time).",
                {
                    "200": _json_response("Already a member.", _ref("Members")),
                    "201": _json_response("Added.", _ref("Members")),
                    "409": _error_ref("Conflict"),
                },
                leader=True,
                body=_json_body(_ref("MemberIn")),
            )
        },
        "/v1/cluster/members/{member}": {
            "delete": _operation(
                "removeMember",
                "cluster",
                "Remove a member by node id or Raft address; the leader hands over first.",
                {
                    "200": _json_response(
                        "Removed.",
                        _object(
                            {
                                "removed": {"type": "string"},
                                "members": {"type": "array", "items": _ref("Member")},
                            },
                            ("removed", "members"),
                        ),
                    ),
                    "404": _error_ref("NotFound"),
                    "409": _error_ref("Conflict"),
                },
                leader=True,
                parameters=[
                    {
                        "name": "member",
                        "in": "path",
                        "required": True,
                        "description": "node id or Raft HOST:PORT",
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
            )
        },
        "/v1/backup": {
            "get": _operation(
                "backup",
                "operations",
                "A consistent copy of this node's state (for `raftmq node --restore`).",
                {
                    "200": {
                        "description": "The backup file.",
                        "headers": {
                            **_REQUEST_ID_HEADER,
                            "X-Applied-Index": {
                                "description": "the applied Raft index the copy holds",
                                "required": True,
                                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                            },
                        },
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    }
                },
            )
        },
        "/healthz": {
            "get": _operation(
                "healthz",
                "operations",
                "Liveness: the process serves HTTP.",
                {
                    "200": _json_response(
                        "Alive.",
                        _object({"status": {"type": "string", "enum": ["ok"]}}, ("status",)),
                    )
                },
            )
        },
        "/readyz": {
            "get": _operation(
                "readyz",
                "operations",
                "Readiness: a leader is known and this node has caught up.",
                {
                    "200": _json_response(
                        "Ready.",
                        _object(
                            {
                                "status": {"type": "string", "enum": ["ready"]},
                                "leader": {"type": "string"},
                            },
                            ("status", "leader"),
                        ),
                    ),
                    "503": _error_ref("Unavailable"),
                },
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "operations",
                "Prometheus metrics of this node.",
                {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "headers": dict(_REQUEST_ID_HEADER),
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/": {
            "get": _operation(
                "dashboard",
                "operations",
                "The dashboard page: members, leader, queues, exchanges and streams.",
                {
                    "200": {
                        "description": "HTML page.",
                        "headers": dict(_REQUEST_ID_HEADER),
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        OPENAPI_PATH: {
            "get": _operation(
                "openapi",
                "operations",
                "This document.",
                {
                    "200": _json_response(
                        "The OpenAPI document.", {"type": "object", "required": ["openapi"]}
                    )
                },
            )
        },
    }


def _exchange_paths() -> dict[str, Schema]:
    exchange = [_path_param("exchange", "exchange name")]
    binding = [*exchange, _path_param("queue", "queue name")]
    not_found = {"400": _error_ref("BadRequest"), "404": _error_ref("NotFound")}
    return {
        "/v1/exchanges": {
            "get": _operation(
                "listExchanges",
                "exchanges",
                "Every exchange with its bindings.",
                {
                    "200": _json_response(
                        "The exchanges.",
                        _object(
                            {"exchanges": {"type": "array", "items": _ref("Exchange")}},
                            ("exchanges",),
                        ),
                    )
                },
            )
        },
        "/v1/exchanges/{exchange}": {
            "put": _operation(
                "declareExchange",
                "exchanges",
                "Create an exchange (direct, topic or fanout); idempotent for the same config.",
                {
                    "200": _json_response("It exists as declared.", _ref("ExchangeDeclared")),
                    "201": _json_response("Created.", _ref("ExchangeDeclared")),
                    "409": _error_ref("Conflict"),
                },
                leader=True,
                parameters=exchange,
                body=_json_body(_ref("ExchangeIn")),
            ),
            "get": _operation(
                "getExchange",
                "exchanges",
                "One exchange with its bindings.",
                {"200": _json_response("The exchange.", _ref("Exchange")), **not_found},
                parameters=exchange,
            ),
            "delete": _operation(
                "deleteExchange",
                "exchanges",
                "Delete an exchange and its bindings.",
                {"204": _no_content("Deleted."), **not_found},
                leader=True,
                parameters=exchange,
            ),
        },
        "/v1/exchanges/{exchange}/bindings/{queue}": {
            "put": _operation(
                "bind",
                "exchanges",
                "Route messages whose routing key matches to the queue.",
                {
                    "200": _json_response("The binding exists.", _ref("Binding")),
                    "201": _json_response("Created.", _ref("Binding")),
                    **not_found,
                },
                leader=True,
                parameters=binding,
                body=_json_body(_ref("RoutingKeyIn"), required=False),
            ),
            "delete": _operation(
                "unbind",
                "exchanges",
                "Remove a binding; the routing key comes in the query or the body.",
                {"204": _no_content("Removed."), **not_found},
                leader=True,
                parameters=[
                    *binding,
                    _query_param(
                        "routing_key",
                        "the binding's routing key (default empty)",
                        {"type": "string", "maxLength": MAX_ROUTING_KEY_BYTES},
                    ),
                ],
                body=_json_body(_ref("RoutingKeyIn"), required=False),
            ),
        },
        "/v1/exchanges/{exchange}/publish": {
            "post": _operation(
                "publishToExchange",
                "exchanges",
                "Publish messages routed by the exchange to its matching bound queues.",
                {
                    "200": _json_response("Routed.", _ref("ExchangePublished")),
                    **not_found,
                    "409": _error_ref("Conflict"),
                    **_GROWING_ERRORS,
                },
                leader=True,
                parameters=exchange,
                body=_json_body(_ref("ExchangePublishIn")),
            )
        },
    }


def _stream_paths(limits: Limits) -> dict[str, Schema]:
    stream = [_path_param("stream", "stream name")]
    group = [*stream, _path_param("group", "consumer group name")]
    not_found = {"400": _error_ref("BadRequest"), "404": _error_ref("NotFound")}
    return {
        "/v1/streams": {
            "get": _operation(
                "listStreams",
                "streams",
                "Every stream with its offsets, size and retention.",
                {
                    "200": _json_response(
                        "The streams.",
                        _object(
                            {"streams": {"type": "array", "items": _ref("Stream")}},
                            ("streams",),
                        ),
                    )
                },
            )
        },
        "/v1/streams/{stream}": {
            "put": _operation(
                "declareStream",
                "streams",
                "Create a stream with its retention; idempotent for the same retention.",
                {
                    "200": _json_response("It exists as declared.", _ref("StreamDeclared")),
                    "201": _json_response("Created.", _ref("StreamDeclared")),
                    "409": _error_ref("Conflict"),
                },
                leader=True,
                parameters=stream,
                body=_json_body(_ref("StreamConfigIn"), required=False),
            ),
            "get": _operation(
                "getStream",
                "streams",
                "One stream with its consumer groups' offsets.",
                {"200": _json_response("The stream.", _ref("StreamDetail")), **not_found},
                parameters=stream,
            ),
            "delete": _operation(
                "deleteStream",
                "streams",
                "Delete a stream, its records and groups.",
                {"204": _no_content("Deleted."), **not_found},
                leader=True,
                parameters=stream,
            ),
        },
        "/v1/streams/{stream}/records": {
            "post": _operation(
                "append",
                "streams",
                "Append records (all or nothing).",
                {
                    "200": _json_response(
                        "Appended; the offset of each record.",
                        _object(
                            {"offsets": {"type": "array", "items": {"type": "integer"}}},
                            ("offsets",),
                        ),
                    ),
                    **not_found,
                    **_GROWING_ERRORS,
                },
                leader=True,
                parameters=stream,
                body=_json_body(_ref("AppendIn")),
            ),
            "get": _operation(
                "readRecords",
                "streams",
                "Read records from an offset or a group's committed offset (on the leader).",
                {"200": _json_response("The records.", _ref("Records")), **not_found},
                leader=True,
                parameters=[
                    *stream,
                    _query_param("offset", "first offset (default 0)", _integer(0, _MAX_SAFE_INT)),
                    _query_param("group", "start at this group's committed offset", _ref("Name")),
                    _query_param(
                        "max",
                        "at most this many records (default 100)",
                        _integer(1, limits.max_receive),
                    ),
                    _query_param(
                        "wait",
                        "long-poll seconds when there is nothing",
                        _number(0, limits.max_wait_s),
                    ),
                ],
            ),
        },
        "/v1/streams/{stream}/groups/{group}": {
            "get": _operation(
                "getGroupOffset",
                "streams",
                "A consumer group's committed offset (0 if it never committed).",
                {"200": _json_response("The offset.", _ref("GroupOffset")), **not_found},
                leader=True,
                parameters=group,
            ),
            "put": _operation(
                "commitOffset",
                "streams",
                "Commit a consumer group's offset.",
                {"200": _json_response("Committed.", _ref("GroupOffset")), **not_found},
                leader=True,
                parameters=group,
                body=_json_body(_ref("OffsetIn")),
            ),
            "delete": _operation(
                "deleteGroup",
                "streams",
                "Forget a consumer group's committed offset (it reads from 0 again).",
                {"204": _no_content("Deleted, or there was none."), **not_found},
                leader=True,
                parameters=group,
            ),
        },
    }


def _channel_paths(limits: Limits) -> dict[str, Schema]:
    protocol = (
        "Upgrades to a WebSocket (any authenticated user; a follower answers 307 to the "
        "leader before upgrading). Frames are JSON text objects, at most "
        f"{limits.max_body_bytes} bytes. Client to server: "
        '`{"op": "publish", "seq", "queue", "messages": [as a queue publish]}` answers '
        '`{"op": "confirm", "seq", "ids"}`; '
        '`{"op": "subscribe", "sub", "queue", "prefetch": 1-'
        f"{limits.max_receive}"
        ', "visibility_timeout"?}` answers `{"op": "subscribed", "sub"}`, then the node '
        'pushes `{"op": "deliver", "sub", "messages": [as a receive]}` while the '
        "subscription has credit (prefetch minus deliveries not yet acked, nacked or "
        'expired); `{"op": "ack", "seq", "queue", "receipts"}` answers '
        '`{"op": "acked", "seq", "acked", "stale"}`; `{"op": "nack", "seq", "queue", '
        '"receipts", "delay"?}` answers `{"op": "nacked", "seq", "requeued", "stale"}`; '
        '`{"op": "cancel", "sub"}` answers `{"op": "cancelled", "sub"}`. A frame that '
        'fails answers `{"op": "error", "seq" or "sub", "status", "error": {"code", '
        '"message"}}` with the HTTP API\'s status and code, and the channel stays open. '
        "Each frame needs the permission of its HTTP twin (write to publish, read to "
        "subscribe, ack, nack). When the node stops leading, or stops, it closes the "
        "channel with reason `not_leader` (code 4001, or 1001 when stopping): reconnect."
    )
    return {
        "/v1/channel": {
            "get": _operation(
                "channel",
                "channel",
                "A persistent WebSocket channel: publish with confirms, push consume with acks.",
                {
                    "101": {"description": "Switching Protocols: the channel is open."},
                    "400": _error_ref("BadRequest"),
                },
                leader=True,
            )
            | {"description": protocol}
        }
    }


def build_openapi(limits: Limits) -> dict[str, Any]:
    """The whole document; bounds come from `limits`."""
    from node import openapi_users  # it imports this module's helpers

    paths = {
        **_queue_paths(limits),
        **_exchange_paths(),
        **_stream_paths(limits),
        **_cluster_paths(),
        **_channel_paths(limits),
        **openapi_users.paths(),
    }
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "raftmq",
            "version": "1",
            "description": (
                "A clustered message broker replicated through Raft. Any node answers; "
                "a follower answers a write with 307 to the leader (method and body kept). "
                'Every error is {"error": {"code", "message"}}; every 503 has Retry-After.'
            ),
        },
        "tags": [
            {"name": "queues"},
            {"name": "exchanges"},
            {"name": "streams"},
            {"name": "cluster"},
            {"name": "channel"},
            {"name": "operations"},
            {"name": "users"},
        ],
        "paths": paths,
        "components": {
            "schemas": {**_schemas(limits), **openapi_users.schemas()},
            "responses": _error_responses(),
        },
    }
    openapi_users.secure(document)
    return document


def handler(limits: Limits) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The `GET /v1/openapi.json` handler; the document is built once."""
    body = orjson.dumps(build_openapi(limits))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi_json
