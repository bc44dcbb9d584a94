"""Queue configuration: the normalized form stored with each queue.

node/ validates what clients send and converts seconds to milliseconds;
storage/ fills defaults and checks only what it needs so that apply can never
trip over a wrong type later.
"""

from typing import Any, Final

from storage.keys import is_queue_name

OVERFLOW_REJECT: Final = "reject_publish"
OVERFLOW_DROP_HEAD: Final = "drop_head"
OVERFLOWS: Final = (OVERFLOW_REJECT, OVERFLOW_DROP_HEAD)

# Largest millisecond or count value a command may carry: JSON-safe, and far
# below the u64 keys even after adding two of them.
MAX_INT: Final = (1 << 53) - 1

_DEFAULTS: Final[dict[str, Any]] = {
    "visibility_timeout_ms": 30000,
    "max_deliveries": None,
    "dead_letter_queue": None,
    "message_ttl_ms": None,
    "max_length": None,
    "overflow": OVERFLOW_REJECT,
    "delivery_delay_ms": 0,
}
_OPTIONAL_INTS: Final = ("max_deliveries", "message_ttl_ms", "max_length")
_REQUIRED_INTS: Final = ("visibility_timeout_ms", "delivery_delay_ms")


def default_queue_config() -> dict[str, Any]:
    return dict(_DEFAULTS)


def normalize_queue_config(partial: dict[str, Any]) -> dict[str, Any]:
    """Every known key present; a missing key (or None where None means nothing) gets its default.

    Unknown keys are dropped so that two declarations meaning the same thing
    compare equal.
    """
    config = default_queue_config()
    for key, default in _DEFAULTS.items():
        value = partial.get(key)
        if value is not None or default is None:
            config[key] = value
    return config


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def config_problem(config: dict[str, Any]) -> str | None:
    """Why a normalized config cannot be stored, or None when it can."""
    for key in _REQUIRED_INTS:
        if not _is_int(config[key]):
            return f"{key} must be an integer in [0, {MAX_INT}]"
    for key in _OPTIONAL_INTS:
        if config[key] is not None and not _is_int(config[key]):
            return f"{key} must be null or an integer in [0, {MAX_INT}]"
    if config["overflow"] not in OVERFLOWS:
        return f"overflow must be one of {', '.join(OVERFLOWS)}"
    dlq = config["dead_letter_queue"]
    if dlq is not None and not is_queue_name(dlq):
        return "dead_letter_queue must be null or a queue name"
    return None
