"""Fixtures: a real cluster in network namespaces, always torn down (nodes, namespaces, links)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chaos.cluster import ChaosCluster, NetnsTopology, netns_unavailable_reason
from tests.conftest import FAILED

NetnsClusterFactory = Callable[[int], ChaosCluster]


@pytest.fixture
def netns_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NetnsClusterFactory]:
    """``netns_cluster(size)``: nodes started in their own namespaces, with a ready leader."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"real partitions are not possible here: {reason}")
    made: list[ChaosCluster] = []

    def factory(size: int = 3) -> ChaosCluster:
        cluster = ChaosCluster(tmp_path / f"c{len(made)}", size, NetnsTopology())
        made.append(cluster)
        cluster.setup()
        cluster.start()
        cluster.wait_ready(60.0)
        return cluster

    try:
        yield factory
    finally:
        for cluster in made:
            if request.node.stash.get(FAILED, False):
                for node_id in cluster.ids:
                    sys.stderr.write(f"===== {node_id} =====\n{cluster.log_tail(node_id, 80)}\n")
            cluster.teardown()
