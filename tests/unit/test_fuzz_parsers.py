"""Fuzzing the request parsers: any JSON-like input is accepted or refused with a 4xx ApiError."""

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.config import Limits
from node.errors import ApiError
from node.membership import parse_member
from node.routes_pubsub import _query_int, _query_seconds, _retention, _routing_key
from node.validation import (
    check_name,
    expect_object,
    publish_command,
    queue_config,
    receipts_command,
    receive_params,
)

LIMITS = Limits()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Unicode text, NUL included; surrogates left out (they cannot come out of a JSON decoder).
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.0, -0.0, 1e-9, 2**63, 2**64, -(2**63) - 1, 1e308]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(TEXT, inner, max_size=5)),
    max_leaves=25,
)


def _near(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with (some of) the expected fields holding anything, sometimes one extra."""
    return st.one_of(
        st.fixed_dictionaries({}, optional=dict.fromkeys(fields, JSON)),
        st.dictionaries(st.sampled_from([*fields, "unexpected"]), JSON, max_size=len(fields) + 1),
    )


def _messages() -> st.SearchStrategy[Any]:
    message = st.one_of(
        _near(["body", "headers", "id", "delay", "encoding"]),
        st.fixed_dictionaries(
            {"body": TEXT},
            optional={
                "encoding": st.sampled_from(["base64", "utf-8", None]),
                "headers": st.dictionaries(TEXT, st.one_of(TEXT, JSON), max_size=3),
                "id": st.one_of(TEXT, JSON),
                "delay": st.one_of(NUMBERS, JSON),
            },
        ),
        JSON,
    )
    return st.one_of(st.fixed_dictionaries({"messages": st.lists(message, max_size=4)}), JSON)


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_huge_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_huge_int(v) for v in value)
    return isinstance(value, int) and abs(value) > 2**1000


def _answers_or_4xx(call: Callable[[], object]) -> None:
    try:
        call()
    except ApiError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.code, exc.message)


def _object_then(parse: Callable[[dict[str, Any]], object], value: Any) -> None:
    """As the routes do: the body must be an object before the parser sees it."""
    _answers_or_4xx(lambda: parse(expect_object(value)))


@FUZZ
@given(
    st.one_of(
        JSON,
        _near(
            sorted(
                [
                    "visibility_timeout",
                    "max_deliveries",
                    "dead_letter_queue",
                    "message_ttl",
                    "max_length",
                    "overflow",
                    "delivery_delay",
                ]
            )
        ),
    )
)
def test_queue_config(value: Any) -> None:
    _object_then(lambda body: queue_config(body, LIMITS), value)


@FUZZ
@given(_messages())
def test_publish_command(value: Any) -> None:
    _object_then(lambda body: publish_command("q", body, LIMITS, 1), value)


@FUZZ
@given(st.one_of(JSON, _near(["max", "wait", "visibility_timeout"])))
def test_receive_params(value: Any) -> None:
    _object_then(lambda body: receive_params(body, LIMITS), value)


@FUZZ
@given(
    st.sampled_from(["ack", "nack"]),
    st.one_of(
        JSON,
        _near(["receipts", "delay"]),
        st.fixed_dictionaries(
            {"receipts": st.lists(st.one_of(TEXT, JSON), max_size=4)},
            optional={"delay": st.one_of(NUMBERS, JSON)},
        ),
    ),
)
def test_receipts_command(op: str, value: Any) -> None:
    _object_then(lambda body: receipts_command(op, "q", body, LIMITS, 1), value)


@FUZZ
@given(TEXT)
def test_check_name(name: str) -> None:
    _answers_or_4xx(lambda: check_name(name))


@FUZZ
@given(st.one_of(JSON, _near(["id", "raft", "http", "secret_proof"])))
def test_parse_member(value: Any) -> None:
    _answers_or_4xx(lambda: parse_member(value))


@FUZZ
@given(JSON)
def test_routing_key(value: Any) -> None:
    _answers_or_4xx(lambda: _routing_key(value))


@FUZZ
@given(st.one_of(JSON, _near(["max_age", "max_bytes", "max_records"])))
def test_retention(value: Any) -> None:
    _object_then(_retention, value)


@FUZZ
@given(st.dictionaries(st.sampled_from(["n", "s", "other"]), TEXT, max_size=3))
def test_query_parameters(query: dict[str, str]) -> None:
    _answers_or_4xx(lambda: _query_int(query, "n", 0, 1000))
    _answers_or_4xx(lambda: _query_seconds(query, "s", 20.0))


@pytest.mark.parametrize("value", [10**400, -(10**400), float("nan"), float("inf")])
def test_numbers_json_cannot_hold_are_refused(value: float) -> None:
    for parse in (
        lambda: queue_config({"visibility_timeout": value}, LIMITS),
        lambda: queue_config({"message_ttl": value}, LIMITS),
        lambda: receive_params({"wait": value}, LIMITS),
        lambda: publish_command("q", {"messages": [{"body": "", "delay": value}]}, LIMITS, 1),
        lambda: receipts_command("nack", "q", {"receipts": ["r"], "delay": value}, LIMITS, 1),
    ):
        with pytest.raises(ApiError) as refused:
            parse()
        assert refused.value.status == 400


def test_retention_refuses_an_int_beyond_float_range() -> None:
    with pytest.raises(ApiError):
        _retention({"max_age": 10**400})
