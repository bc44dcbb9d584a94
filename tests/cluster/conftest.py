"""Fixtures that start real clusters and always kill them."""

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import LocalTestCluster
from tests.conftest import FAILED

ClusterFactory = Callable[..., LocalTestCluster]


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClusterFactory]:
    """`make_cluster(size=3, extra_args=[...], **options)`: a cluster (not started) killed at
    teardown; `options` (scheme, context) go to LocalTestCluster."""
    started: list[LocalTestCluster] = []

    def factory(
        size: int = 3, extra_args: list[str] | None = None, **options: Any
    ) -> LocalTestCluster:
        cluster = LocalTestCluster(tmp_path / f"c{len(started)}", size, extra_args, **options)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        cluster.stop()
        if request.node.stash.get(FAILED, False):
            sys.stderr.write(cluster.dump_logs())


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> LocalTestCluster:
    return make_cluster().start()
