"""Routing-key matchers for the three exchange types; topic patterns match through a word trie.

A routing key and a pattern are words separated by "."; every split part is a
word, empty ones included ("" is one empty word, "a..b" has an empty middle
word). In a pattern the word "*" matches exactly one word and "#" zero or more;
any other word (even "a*") matches only itself.

Matching runs the trie as an NFA over the key's words: the cost depends on the
key's length and the trie nodes it reaches, not on the number of bindings.
Routers are plain in-memory objects; storage/exchanges.py builds them from
LMDB and caches them by the exchange's stored version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

SEPARATOR: Final = "."
STAR: Final = "*"
HASH: Final = "#"


class Router(Protocol):
    def match(self, routing_key: str) -> set[str]:
        """Names of the queues a message published with `routing_key` goes to."""
        ...


class FanoutRouter:
    """Every bound queue gets every message; routing keys are ignored."""

    def __init__(self, bindings: Iterable[tuple[str, str]]) -> None:
        self._queues = frozenset(queue for _, queue in bindings)

    def match(self, routing_key: str) -> set[str]:
        return set(self._queues)


class DirectRouter:
    """A queue gets a message when one of its binding keys equals the routing key."""

    def __init__(self, bindings: Iterable[tuple[str, str]]) -> None:
        self._by_key: dict[str, set[str]] = {}
        for key, queue in bindings:
            self._by_key.setdefault(key, set()).add(queue)

    def match(self, routing_key: str) -> set[str]:
        return set(self._by_key.get(routing_key, ()))


class _Node:
    __slots__ = ("children", "hash", "is_hash", "queues", "star")

    def __init__(self, is_hash: bool = False) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.hash: _Node | None = None
        self.queues: set[str] = set()
        # Reached through a "#" edge: it may consume any number of further words.
        self.is_hash = is_hash


class TopicTrie:
    """Topic patterns in a trie with one child per literal word plus "*" and "#" children."""

    def __init__(self, bindings: Iterable[tuple[str, str]] = ()) -> None:
        self._root = _Node()
        self.size = 0
        for pattern, queue in bindings:
            self.add(pattern, queue)

    def add(self, pattern: str, queue: str) -> None:
        node = self._root
        for word in pattern.split(SEPARATOR):
            if word == STAR:
                if node.star is None:
                    node.star = _Node()
                node = node.star
            elif word == HASH:
                if node.hash is None:
                    node.hash = _Node(is_hash=True)
                node = node.hash
            else:
                child = node.children.get(word)
                if child is None:
                    child = node.children[word] = _Node()
                node = child
        node.queues.add(queue)
        self.size += 1

    def match(self, routing_key: str) -> set[str]:
        active = _closure([self._root])
        for word in routing_key.split(SEPARATOR):
            step: list[_Node] = []
            for node in active:
                child = node.children.get(word)
                if child is not None:
                    step.append(child)
                if node.star is not None:
                    step.append(node.star)
                if node.is_hash:
                    step.append(node)
            active = _closure(step)
            if not active:
                return set()
        matched: set[str] = set()
        for node in active:
            matched |= node.queues
        return matched


def _closure(nodes: list[_Node]) -> list[_Node]:
    """`nodes` plus every node reachable through "#" edges (a "#" may match zero words)."""
    seen: dict[int, _Node] = {}
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if node.hash is not None:
            stack.append(node.hash)
    return list(seen.values())


TYPES: Final = ("direct", "topic", "fanout")


def build_router(exchange_type: str, bindings: Iterable[tuple[str, str]]) -> Router:
    """The matcher of one exchange from its (routing key or pattern, queue) bindings."""
    if exchange_type == "topic":
        return TopicTrie(bindings)
    if exchange_type == "direct":
        return DirectRouter(bindings)
    if exchange_type == "fanout":
        return FanoutRouter(bindings)
    raise ValueError(f"unknown exchange type {exchange_type!r}")
