"""OpenAPI paths and schemas of the user API, and the security added to every operation.

Kept apart from node/openapi.py, which merges them into the document it builds.
"""

from typing import Any

from node.openapi import (
    Schema,
    _error_ref,
    _json_body,
    _json_response,
    _no_content,
    _object,
    _operation,
    _path_param,
    _ref,
)
from node.validation import NAME_RE

_PERMISSION = {"type": "string", "maxLength": 1000, "description": "regex over whole names"}


def schemas() -> dict[str, Schema]:
    permissions = _object(
        {"configure": _PERMISSION, "write": _PERMISSION, "read": _PERMISSION},
        ("configure", "write", "read"),
    )
    name = {"type": "string", "pattern": NAME_RE.pattern}
    return {
        "UserIn": _object({"name": name, "admin": {"type": "boolean"}}, ("name",)),
        "UserCreated": _object(
            {"name": name, "admin": {"type": "boolean"}, "token": {"type": "string"}},
            ("name", "admin", "token"),
        ),
        "Permissions": permissions,
        "PermissionsIn": _object(
            {"configure": _PERMISSION, "write": _PERMISSION, "read": _PERMISSION}
        ),
        "Users": _object(
            {
                "users": {
                    "type": "array",
                    "items": _object(
                        {"name": name, "admin": {"type": "boolean"}, "permissions": permissions},
                        ("name", "admin", "permissions"),
                    ),
                }
            },
            ("users",),
        ),
    }


def paths() -> dict[str, Schema]:
    user = [_path_param("user", "user name")]
    not_found = {"400": _error_ref("BadRequest"), "404": _error_ref("NotFound")}
    return {
        "/v1/users": {
            "get": _operation(
                "listUsers",
                "users",
                "Every user and its permissions.",
                {"200": _json_response("The users.", _ref("Users"))},
            ),
            "post": _operation(
                "addUser",
                "users",
                "Create a user; the answer holds its token, shown only this once. Open "
                "while no user exists (the first user must be an admin).",
                {
                    "201": _json_response("Created.", _ref("UserCreated")),
                    "409": _error_ref("Conflict"),
                },
                leader=True,
                body=_json_body(_ref("UserIn")),
            ),
        },
        "/v1/users/{user}": {
            "delete": _operation(
                "deleteUser",
                "users",
                "Delete a user (never the last admin).",
                {"204": _no_content("Deleted."), "409": _error_ref("Conflict"), **not_found},
                leader=True,
                parameters=user,
            )
        },
        "/v1/users/{user}/permissions": {
            "put": _operation(
                "grantPermissions",
                "users",
                'Set the user\'s configure, write and read regexes (absent = "" = nothing).',
                {
                    "200": _json_response(
                        "Set.",
                        _object(
                            {"name": {"type": "string"}, "permissions": _ref("Permissions")},
                            ("name", "permissions"),
                        ),
                    ),
                    **not_found,
                },
                leader=True,
                parameters=user,
                body=_json_body(_ref("PermissionsIn")),
            ),
            "delete": _operation(
                "revokePermissions",
                "users",
                "Clear all three permissions of the user.",
                {"204": _no_content("Revoked."), **not_found},
                leader=True,
                parameters=user,
            ),
        },
    }


def secure(document: dict[str, Any]) -> None:
    """Add the bearer scheme, and 401/403 to every operation that is not open."""
    from node.auth import OPEN, rules

    table = rules(metrics_auth=False)
    document["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A user's token; needed once any user exists.",
        }
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            rule = table.get((method.upper(), path))
            if rule is not None and rule.level == OPEN:
                operation["security"] = []
                continue
            # Optional: the API is open until the first user is created.
            operation["security"] = [{"bearer": []}, {}]
            responses = operation["responses"]
            responses["401"] = _error_ref("Unauthorized")
            responses["403"] = _error_ref("Forbidden")
            operation["responses"] = dict(sorted(responses.items()))
