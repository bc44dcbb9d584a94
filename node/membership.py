"""Cluster membership over HTTP: add and remove members, join at start-up, remembered peers."""

import asyncio
import hashlib
import hmac
import logging
import os
import re
import ssl
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson

from cluster.errors import NotLeader
from node.clock import now_ms
from node.errors import ApiError, bad_request
from node.ports import RaftPort
from node.validation import NAME_RE, expect_object, reject_unknown

logger = logging.getLogger(__name__)

PEERS_FILE = "peers.json"
# Written by a node that applied its own removal: its data dir must not rejoin as is.
REMOVED_FILE = "REMOVED"


class JoinRefused(Exception):
    """The cluster answered the join with a definite refusal (bad id, address, ...)."""


# How long a removal waits for the member to apply its unregistration and stop.
REPLICATION_WAIT_S = 5.0


# HOST:PORT as pysyncobj connects to it: an ASCII host name or address, a port of ASCII
# digits (str.isdigit() would take "²", which int() then refuses).
_RAFT_ADDRESS_RE: Final = re.compile(r"[A-Za-z0-9._\-\[\]:]{1,250}:([0-9]{1,5})")
# Printable ASCII without spaces: the URL goes into the Location header of redirects.
_HTTP_URL_RE: Final = re.compile(r"https?://[!-~]{1,1000}")


def _address(value: Any, field: str) -> str:
    match = _RAFT_ADDRESS_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None or not 0 < int(match.group(1)) < 65536:
        raise bad_request(f"{field} must be HOST:PORT (an ASCII host and a port of 1-65535)")
    return match.group(0)


def _http_url(value: Any) -> str:
    refused = bad_request(
        "http must be the node's advertised http(s) URL: printable ASCII, a host, "
        "a port of 1-65535, no user, query or fragment"
    )
    if not isinstance(value, str) or not _HTTP_URL_RE.fullmatch(value):
        raise refused
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        raise refused from None
    if not url.hostname or port == 0 or url.username is not None or url.query or url.fragment:
        raise refused
    if "?" in value or "#" in value:  # an empty query or fragment is still one
        raise refused
    return value.rstrip("/")


def secret_proof(secret: str, member: dict[str, str]) -> str:
    """HMAC of the joining member under the cluster secret.

    A node started with another --cluster-secret cannot speak Raft with the
    cluster; adding it would only make an unreachable member that weakens the
    quorum. The join carries this proof so the leader refuses such a node
    before changing the membership.
    """
    text = "\n".join(("raftmq-join", member["id"], member["raft"], member["http"]))
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def check_secret_proof(secret: str | None, body: Any, member: dict[str, str]) -> None:
    """403 `cluster_secret_mismatch` unless the join proves the cluster's secret (if it has one)."""
    if secret is None:
        return
    proof = body.get("secret_proof") if isinstance(body, dict) else None
    if not isinstance(proof, str) or not hmac.compare_digest(proof, secret_proof(secret, member)):
        raise ApiError(
            403,
            "cluster_secret_mismatch",
            "the joining node does not have this cluster's --cluster-secret",
        )


def parse_member(body: Any) -> dict[str, str]:
    body = expect_object(body)
    reject_unknown(body, {"id", "raft", "http", "secret_proof"})
    node_id = body.get("id")
    if not isinstance(node_id, str) or not NAME_RE.fullmatch(node_id):
        raise bad_request("id must be a node id of 1-200 of A-Z a-z 0-9 . _ -")
    http = _http_url(body.get("http"))
    return {"id": node_id, "raft": _address(body.get("raft"), "raft"), "http": http}


def member_list(raft: RaftPort) -> list[dict[str, Any]]:
    registry = raft.read(lambda store: store.nodes())
    return [
        {"raft": m, "id": registry.get(m, {}).get("id"), "http": registry.get(m, {}).get("http")}
        for m in raft.members()
    ]


def find_member(raft: RaftPort, key: str) -> str | None:
    """The raft address of the member named by node id or raft address."""
    members = raft.members()
    if key in members:
        return key
    registry = raft.read(lambda store: store.nodes())
    for address, info in registry.items():
        if info.get("id") == key and address in members:
            return address
    return None


async def add_member(
    raft: RaftPort, lock: asyncio.Lock, body: Any, secret: str | None = None
) -> tuple[int, dict[str, Any]]:
    member = parse_member(body)
    check_secret_proof(secret, body, member)
    raft.require_leader()
    if lock.locked():
        raise ApiError(409, "membership_change_in_progress", "another membership change is running")
    async with lock:
        existed = member["raft"] in raft.members()
        # Registered first, so that every node can redirect to it once it leads.
        await raft.propose_as_leader({"op": "register_node", "now_ms": now_ms(), **member})
        await raft.add_member(member["raft"])
    logger.info(
        "member %s (%s) %s", member["id"], member["raft"], "present" if existed else "added"
    )
    return (200 if existed else 201), {"members": member_list(raft)}


async def remove_member(
    raft: RaftPort, lock: asyncio.Lock, key: str, self_raft: str
) -> dict[str, Any]:
    raft.require_leader()
    address = find_member(raft, key)
    if address is None:
        raise ApiError(404, "member_not_found", f"no member {key!r} in this cluster")
    if address == self_raft:
        await _hand_over(raft)
    if lock.locked():
        raise ApiError(409, "membership_change_in_progress", "another membership change is running")
    async with lock:
        raft.check_removal(address)
        # Unregister while the node is still a member: it applies this entry and
        # stops itself. After the removal commits it would receive nothing more.
        await raft.propose_as_leader({"op": "unregister_node", "raft": address, "now_ms": now_ms()})
        await _until_stopped(raft, address)
        await raft.remove_member(address)
    logger.info("member %s removed", address)
    return {"removed": address, "members": member_list(raft)}


async def _until_stopped(raft: RaftPort, address: str) -> None:
    """Wait (bounded) until the member, having applied its unregistration, disconnects.

    Removing it from Raft first would stop replication to it before it learns
    that its unregistration committed, and it would run on as a stray node.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPLICATION_WAIT_S
    while loop.time() < deadline and address in raft.live_members():
        await asyncio.sleep(0.01)


async def _hand_over(raft: RaftPort) -> None:
    """The leader cannot remove itself: make another node lead, then send the client there."""
    logger.info("removing the leader itself: handing leadership over first")
    raise NotLeader(await raft.transfer_leadership())


def load_peers(data_dir: str) -> list[str] | None:
    """The members this node last saw, or None when it never saved any."""
    path = os.path.join(data_dir, PEERS_FILE)
    try:
        with open(path, "rb") as f:
            peers = orjson.loads(f.read())
    except FileNotFoundError:
        return None
    return [str(p) for p in peers]


def save_peers(data_dir: str, members: list[str]) -> None:
    path = os.path.join(data_dir, PEERS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(sorted(members)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def join_cluster(
    join_url: str,
    member: dict[str, str],
    deadline_s: float = 120.0,
    ssl_context: ssl.SSLContext | None = None,
) -> list[str]:
    """Ask the cluster at `join_url` to add this node; return the members' raft addresses.

    Redirects lead to the leader; 503 and connection errors are retried until
    the deadline, so a join during an election still succeeds. `ssl_context`
    verifies https nodes (default: the system store).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    url = join_url.rstrip("/") + "/v1/cluster/members"
    last_error = "no answer"
    # Once users exist, joining needs an admin's token (RAFTMQ_TOKEN in the node's environment).
    token = os.environ.get("RAFTMQ_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), headers=headers
    ) as session:
        while loop.time() < deadline:
            try:
                async with session.post(
                    url, data=orjson.dumps(member), ssl=ssl_context or True
                ) as resp:
                    payload = await resp.read()
                    if resp.status in (200, 201):
                        members = orjson.loads(payload)["members"]
                        return [str(m["raft"]) for m in members]
                    if resp.status < 500 and resp.status != 409:
                        raise JoinRefused(
                            f"join refused ({resp.status}): {payload.decode(errors='replace')}"
                        )
                    last_error = f"{resp.status} {payload[:200].decode(errors='replace')}"
            except aiohttp.ClientError as exc:
                last_error = str(exc)
            logger.info("join not done yet (%s); retrying", last_error)
            await asyncio.sleep(0.5)
    raise TimeoutError(f"could not join the cluster at {join_url}: {last_error}")


class RemovalWatch:
    """Decides when an applied `unregister_node` of this node means it was removed.

    A node that replays the log from its start (re-added under its old raft
    address with an empty data dir, by `--join` or by `add-node` and
    `--peers`) meets the unregistration of its previous incarnation before the
    registration that added it again. Acting on it there would stop the
    re-added member for good while it stays in the Raft configuration. So an
    unregistration of this node counts only once the node has caught up with
    the leader (Raft's readiness) and no later registration of itself has been
    applied. Applies run on the Raft tick thread, checks on the event loop: the
    state is two flags.
    """

    def __init__(self, self_raft: str) -> None:
        self.self_raft = self_raft
        self.unregistered = False  # the last (un)registration of this node applied
        self.caught_up = False

    def applied(self, commands: list[dict[str, Any]]) -> None:
        for command in commands:
            if command.get("raft") != self.self_raft:
                continue
            if command.get("op") == "unregister_node":
                self.unregistered = True
            elif command.get("op") == "register_node":
                self.unregistered = False

    def removed(self, ready: bool) -> bool:
        """Whether this node was removed; `ready`: it has applied what the leader committed."""
        if ready:
            self.caught_up = True
        return self.unregistered and self.caught_up


def mark_removed(data_dir: str) -> None:
    with open(os.path.join(data_dir, REMOVED_FILE), "w") as f:
        f.write("this node was removed from its cluster\n")
        f.flush()
        os.fsync(f.fileno())


def was_removed(data_dir: str) -> bool:
    return os.path.exists(os.path.join(data_dir, REMOVED_FILE))
