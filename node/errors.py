"""HTTP errors, and the one table that maps every layer's errors to a status and code."""

from typing import Any

from cluster.errors import (
    ClusterError,
    MembershipRefused,
    NoLeader,
    Overloaded,
    StorageFull,
    UnknownOutcome,
)


class ApiError(Exception):
    """An answer other than success: status, snake_case code, one sentence."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


# Errors from cluster/ (NotLeader is turned into a redirect before this table).
_CLUSTER_ERRORS: dict[type[ClusterError], tuple[int, str, str]] = {
    # An election or a leadership hand-over takes a fraction of a second and
    # Retry-After has whole seconds only: "0" lets the client poll (it waits
    # 50-100 ms between tries on no_leader, see raftmq.client).
    NoLeader: (503, "no_leader", "0"),
    UnknownOutcome: (503, "unknown_outcome", "1"),
    Overloaded: (503, "overloaded", "1"),
    # Lasts until consumers or the operator make room: the client does not retry it.
    StorageFull: (507, "storage_full", "5"),
}

# Results of storage commands that are not a success.
_RESULT_ERRORS: dict[str, tuple[int, str]] = {
    "not_found": (404, "queue_not_found"),
    "queue_full": (409, "queue_full"),
    "conflict": (409, "queue_exists_different"),
    "invalid": (400, "invalid_request"),
    # Exchanges and streams: their storage results carry the message.
    "exchange_not_found": (404, "exchange_not_found"),
    "binding_not_found": (404, "binding_not_found"),
    "stream_not_found": (404, "stream_not_found"),
    "exchange_conflict": (409, "exchange_exists_different"),
    "stream_conflict": (409, "stream_exists_different"),
    "out_of_range": (400, "invalid_request"),
    # Users (storage/users.py).
    "user_not_found": (404, "user_not_found"),
    "user_exists": (409, "user_exists"),
    "last_admin": (409, "last_admin"),
    "auth_enabled": (401, "unauthorized"),
}


def from_cluster_error(exc: ClusterError) -> ApiError:
    if isinstance(exc, MembershipRefused):
        return ApiError(409, exc.code, str(exc))
    status, code, retry_after = _CLUSTER_ERRORS.get(type(exc), (503, "unavailable", "1"))
    return ApiError(status, code, str(exc), {"Retry-After": retry_after})


def from_result(result: dict[str, Any], queue: str) -> ApiError:
    status, code = _RESULT_ERRORS.get(str(result.get("status")), (500, "internal"))
    if code == "queue_not_found":
        message = f"queue {queue!r} does not exist"
    elif code == "queue_exists_different":
        message = f"queue {queue!r} exists with a different configuration"
    else:
        message = str(result.get("message") or f"request on queue {queue!r} failed")
    return ApiError(status, code, message)


def ok_or_raise(result: dict[str, Any], queue: str, ok: str = "ok") -> dict[str, Any]:
    """The storage result when its status is `ok`, else the matching ApiError."""
    if result.get("status") != ok:
        raise from_result(result, queue)
    return result
