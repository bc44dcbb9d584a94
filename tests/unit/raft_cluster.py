"""Three in-process pysyncobj nodes on free loopback ports, for tests that tick them by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pysyncobj import SyncObjConf, SyncObjException

from tests.unit.test_journal_durability import free_ports

Node = TypeVar("Node")


def bind_three(cls: type[Node], started: list[Any]) -> list[Node]:
    """Three nodes of `cls(self_addr, partners)`, each also added to `started`.

    Retried on other ports when one was taken between the probe and the bind.
    """
    for _ in range(5):
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        nodes: list[Node] = []
        try:
            for addr in addrs:
                nodes.append(cls(addr, [a for a in addrs if a != addr]))  # type: ignore[call-arg]
                started.append(nodes[-1])
        except SyncObjException:
            continue
        return nodes
    raise RuntimeError("could not bind a 3-node cluster")


def destroy(started: list[Any]) -> None:
    """Close nodes ticked by hand (autoTick off): no thread to stop."""
    for node in started:
        node._destroy()
        node._doDestroy()


def three_node_clusters(
    ready: Callable[[list[Any]], None],
) -> Iterator[Callable[[type[Node]], list[Node]]]:
    """For a fixture to `yield from`: a factory of clusters, each made `ready`, all destroyed."""
    started: list[Any] = []

    def start(cls: type[Node]) -> list[Node]:
        nodes = bind_three(cls, started)
        ready(nodes)
        return nodes

    yield start
    destroy(started)


def hand_ticked_conf(self_addr: str, **settings: Any) -> SyncObjConf:
    """A node's configuration as raftmq runs it (unbatched), ticked by the test."""
    return SyncObjConf(
        bindAddress=self_addr,
        maxBindRetries=1,
        autoTick=False,
        appendEntriesUseBatch=False,
        appendEntriesPeriod=0.05,
        **settings,
    )
