"""Run the peers' bench.py with its process's garbage collector relaxed.

The same setting as ``raftmq bench --client-gc relaxed``: what exists at start
is frozen and the young generation's threshold is 50,000 allocations instead
of CPython's 700, so that the tasks W1 keeps until its final gather are not
walked again and again. Run it from the peers' harness directory, with the
arguments bench.py takes, while that peer's cluster runs::

    nats/cluster.sh start
    .venv/bin/python bench_gc.py --peer nats all --reps 3 --skip-failover --out nats-gc.json
    nats/cluster.sh stop

W3's consumer process is started by bench.py itself and keeps CPython's defaults.
"""

import gc
import runpy
import sys

RELAXED_GC_YOUNG_THRESHOLD = 50_000

if __name__ == "__main__":
    gc.freeze()
    gc.set_threshold(RELAXED_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    sys.argv = ["bench.py", *sys.argv[1:]]
    runpy.run_path("bench.py", run_name="__main__")
