"""Users, their token hashes and permissions: replicated like every other state.

The node generates a user's token and sends only its sha256 here, so neither
the Raft log nor LMDB ever holds a usable secret. A fast hash is right: tokens
are 256-bit random strings, not passwords, so there is nothing to brute-force.

Permissions follow RabbitMQ's configure / write / read: each is a regular
expression that must match a whole resource name (queue, exchange or stream).
"" matches nothing, ".*" everything. Patterns are checked here as well as on the
node, so a command carrying a pattern that does not compile is refused the same
way on every replica.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Callable
from typing import Any, Final

import lmdb

from storage import keys
from storage.errors import InvalidCommand
from storage.fields import Command, Result, name, string
from storage.mutation import Dbs, Mutation

# The regex parser's tree (private to re; stable within the pinned Python versions).
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")

KINDS: Final = ("configure", "write", "read")
MAX_PATTERN_CHARS: Final = 1000
TOKEN_HASH_HEX: Final = re.compile(r"[0-9a-f]{64}")
NO_PERMISSIONS: Final = {"configure": "", "write": "", "read": ""}


def _not_found(user: str) -> Result:
    return {"status": "user_not_found", "message": f"user {user!r} does not exist"}


def check_pattern(pattern: object) -> str:
    """The pattern when it is a string that compiles, else InvalidCommand."""
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidCommand(f"a permission must be a string of at most {MAX_PATTERN_CHARS} chars")
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise InvalidCommand(f"permission {pattern[:60]!r} is not a valid regex: {exc}") from None
    return pattern


# Names a permission is matched against are at most this long (node.validation).
MAX_RESOURCE_CHARS: Final = 200
# The most match steps a permission check may take in the worst case, by the
# estimate of `matching_cost` (measured: ≈ 20 ns a step, so ≈ 60 ms).
MAX_MATCHING_COST: Final = 3_000_000
_UNSUPPORTED: Final = {
    _constants.GROUPREF,
    _constants.GROUPREF_EXISTS,
    _constants.ASSERT,
    _constants.ASSERT_NOT,
}


def check_new_pattern(pattern: object) -> str:
    """check_pattern, and a worst-case matching time bounded by MAX_MATCHING_COST.

    Python's regexes backtrack: `(a*)*b` against a name of 30 a's takes seconds,
    on the event loop, with the GIL held, so one request could stall the node's
    Raft thread too. New grants must keep a permission check short. Only the
    node applies this, to what it is about to propose: grants already in the
    log replay as before.
    """
    checked = check_pattern(pattern)
    cost = matching_cost(checked)
    if cost > MAX_MATCHING_COST:
        raise InvalidCommand(
            f"permission {checked[:60]!r} could take too long to match: nested or "
            "alternated repeats like (a*)* or (a|ab)*, or more than three repeats in a row"
        )
    return checked


def matching_cost(pattern: str) -> float:
    """An upper estimate of the backtracking steps of a fullmatch on a name; inf if unbounded.

    A repeat of variable length counts as one choice among MAX_RESOURCE_CHARS
    split points and alternatives multiply; k repeats in a row can only split a
    name in increasing order (n^k / k!). A repeat of something that itself
    varies (a repeat, an alternation) and back references or lookarounds are
    unbounded (exponential in the name's length).
    """
    try:
        tree: list[Any] = list(_parser.parse(pattern))
    except (re.error, RecursionError, OverflowError):
        return math.inf
    terms = _path_terms(tree)
    if terms is None:
        return math.inf
    n = MAX_RESOURCE_CHARS + 1
    return float(sum(count * n**k / math.factorial(k) for k, count in terms.items()))


_Terms = dict[int, int]  # repeats along a path -> how many paths have that many


def _path_terms(items: list[Any]) -> _Terms | None:
    """The paths through a sequence of parsed items, by repeats met; None if unbounded."""
    terms: _Terms = {0: 1}
    for op, arg in items:
        if op in _UNSUPPORTED:
            return None
        if op is _constants.BRANCH:
            item: _Terms = {}
            for alternative in arg[1]:
                sub = _path_terms(list(alternative))
                if sub is None:
                    return None
                for k, count in sub.items():
                    item[k] = item.get(k, 0) + count
        elif op is _constants.SUBPATTERN:
            sub = _path_terms(list(arg[3]))
            if sub is None:
                return None
            item = sub
        elif op in (_constants.MAX_REPEAT, _constants.MIN_REPEAT, _constants.POSSESSIVE_REPEAT):
            low, high, body = arg
            sub = _path_terms(list(body))
            if sub is None:
                return None
            if low == high:  # a fixed count of the same paths
                item = {0: 1}
                for _ in range(min(low, 64)):
                    item = _product(item, sub)
                if low > 64 and sub != {0: 1}:
                    return None
            elif sub != {0: 1}:
                return None  # a repeat of something that varies itself
            else:
                item = {1: 1}
        elif op is _constants.ATOMIC_GROUP:
            sub = _path_terms(list(arg))
            if sub is None:
                return None
            item = sub
        else:  # one character or position: LITERAL, ANY, IN, AT, CATEGORY...
            continue
        terms = _product(terms, item)
        if max(terms) > 6 or sum(terms.values()) > MAX_MATCHING_COST:
            return None
    return terms


def _product(a: _Terms, b: _Terms) -> _Terms:
    out: _Terms = {}
    for ka, ca in a.items():
        for kb, cb in b.items():
            out[ka + kb] = out.get(ka + kb, 0) + ca * cb
    return out


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def allows(permissions: dict[str, str], kind: str, resource: str) -> bool:
    """Whether the user's `kind` pattern matches the whole resource name."""
    pattern = permissions.get(kind, "")
    return pattern != "" and _compiled(pattern).fullmatch(resource) is not None


def _token_hash(cmd: Command) -> bytes:
    value = string(cmd, "token_sha256")
    if TOKEN_HASH_HEX.fullmatch(value) is None:
        raise InvalidCommand("token_sha256 must be 64 lower-case hex digits")
    return bytes.fromhex(value)


def _load(txn: lmdb.Transaction[bytes], dbs: Dbs, user: str) -> dict[str, Any] | None:
    raw = txn.get(user.encode(), db=dbs.users)
    return None if raw is None else dict(keys.decode(raw))


def user_add(m: Mutation, cmd: Command) -> Result:
    """Create a user; with `bootstrap` only while no user exists (the first admin)."""
    user = name(cmd, "user")
    token = _token_hash(cmd)
    admin = cmd.get("admin", False)
    bootstrap = cmd.get("bootstrap", False)
    if not isinstance(admin, bool) or not isinstance(bootstrap, bool):
        raise InvalidCommand("admin and bootstrap must be booleans")
    if bootstrap and m.txn.stat(m.dbs.users)["entries"] > 0:
        return {"status": "auth_enabled", "message": "users exist: authenticate as an admin"}
    if _load(m.txn, m.dbs, user) is not None:
        return {"status": "user_exists", "message": f"user {user!r} already exists"}
    if m.txn.get(token, db=m.dbs.user_tokens) is not None:
        raise InvalidCommand("token hash already in use")
    record = {
        "admin": admin,
        "token_sha256": token.hex(),
        "permissions": dict(NO_PERMISSIONS),
        "created_at": m.now,
    }
    m.txn.put(user.encode(), keys.encode(record), db=m.dbs.users)
    m.txn.put(token, user.encode(), db=m.dbs.user_tokens)
    return {"status": "created"}


def _admins(txn: lmdb.Transaction[bytes], dbs: Dbs) -> int:
    with txn.cursor(db=dbs.users) as cursor:
        return sum(1 for _, raw in cursor if keys.decode(raw)["admin"])


def user_delete(m: Mutation, cmd: Command) -> Result:
    """Delete a user, but never the last admin: no users would turn authentication off."""
    user = name(cmd, "user")
    record = _load(m.txn, m.dbs, user)
    if record is None:
        return _not_found(user)
    if record["admin"] and _admins(m.txn, m.dbs) == 1:
        return {"status": "last_admin", "message": f"user {user!r} is the last admin"}
    m.txn.delete(user.encode(), db=m.dbs.users)
    m.txn.delete(bytes.fromhex(record["token_sha256"]), db=m.dbs.user_tokens)
    return {"status": "deleted"}


def _set_permissions(m: Mutation, user: str, permissions: dict[str, str]) -> Result:
    record = _load(m.txn, m.dbs, user)
    if record is None:
        return _not_found(user)
    record["permissions"] = permissions
    m.txn.put(user.encode(), keys.encode(record), db=m.dbs.users)
    return {"status": "ok", "permissions": permissions}


def user_grant(m: Mutation, cmd: Command) -> Result:
    """Set all three patterns at once, as rabbitmqctl set_permissions does."""
    user = name(cmd, "user")
    permissions = {kind: check_pattern(cmd.get(kind)) for kind in KINDS}
    return _set_permissions(m, user, permissions)


def user_revoke(m: Mutation, cmd: Command) -> Result:
    return _set_permissions(m, name(cmd, "user"), dict(NO_PERMISSIONS))


HANDLERS: Final = {
    "user_add": user_add,
    "user_delete": user_delete,
    "user_grant": user_grant,
    "user_revoke": user_revoke,
}


# Read side: functions of (txn, dbs) run by Store.view.


def any_user(txn: lmdb.Transaction[bytes], dbs: Dbs) -> bool:
    """Authentication is on once this is true."""
    return int(txn.stat(dbs.users)["entries"]) > 0


UserRecord = tuple[str, dict[str, Any]]


def by_token_hash(
    digest: bytes,
) -> Callable[[lmdb.Transaction[bytes], Dbs], UserRecord | None]:
    """Reader: (name, record) of the user holding the token with this sha256, or None."""

    def read(txn: lmdb.Transaction[bytes], dbs: Dbs) -> UserRecord | None:
        user = txn.get(digest, db=dbs.user_tokens)
        if user is None:
            return None
        record = _load(txn, dbs, user.decode())
        return None if record is None else (user.decode(), record)

    return read


def list_users(txn: lmdb.Transaction[bytes], dbs: Dbs) -> list[dict[str, Any]]:
    """Every user without its token hash, by name."""
    with txn.cursor(db=dbs.users) as cursor:
        return [
            {
                "name": key.decode(),
                "admin": record["admin"],
                "permissions": record["permissions"],
            }
            for key, record in ((k, keys.decode(v)) for k, v in cursor)
        ]
