"""``raftmq bench``: the peers' benchmark workloads run against raftmq.

See :mod:`raftmq.bench.cli` for the command line and BENCHMARKS.md for results.
"""

from raftmq.bench.cli import main

__all__ = ["main"]
