"""Reading request bodies within the node's limits: size, time, and memory in total.

aiohttp enforces the size of one body only after reading it; these checks keep a
flood of large or slow bodies from holding unbounded memory or connections.
"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from node.config import Limits
from node.errors import ApiError


class BodyBudget:
    """Bytes of request bodies being received at once, across all connections.

    A body reserves its declared Content-Length (or the largest allowed body when
    it is chunked) before it is read; when the budget is spent, the request is
    refused with 503 overloaded instead of buffering without bound.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.reserved_bytes = 0

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        if self.reserved_bytes + size > self.limit_bytes:
            raise ApiError(
                503,
                "overloaded",
                "this node is receiving too many request bodies at once; retry shortly",
                {"Retry-After": "1"},
            )
        self.reserved_bytes += size
        try:
            yield
        finally:
            self.reserved_bytes -= size


def body_too_large(limit_bytes: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the request body is over {limit_bytes} bytes",
        {"Connection": "close"},
    )


async def read_body(request: web.Request, limits: Limits, budget: BodyBudget) -> bytes:
    """The whole body, refused early when its declared size is over the limit."""
    declared = request.content_length
    if declared is not None and declared > limits.max_body_bytes:
        raise body_too_large(limits.max_body_bytes)
    if declared == 0 or (declared is None and not request.body_exists):
        return b""
    # aiohttp inflates a compressed body as it reads it: its declared size says
    # nothing of what it holds in memory then (up to the body limit).
    encoded = request.headers.get("Content-Encoding", "identity").strip().lower() != "identity"
    with budget.reserve(
        declared if declared is not None and not encoded else limits.max_body_bytes
    ):
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                return await request.read()
        except web.RequestPayloadError:  # a gzip body that does not inflate, ...
            raise ApiError(
                400,
                "invalid_request",
                "the request body could not be decoded (check its Content-Encoding)",
                {"Connection": "close"},
            ) from None
        except TimeoutError:
            raise ApiError(
                408,
                "request_timeout",
                f"the request body did not arrive within {limits.body_timeout_s:g} s",
                {"Connection": "close"},
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise body_too_large(limits.max_body_bytes) from None
