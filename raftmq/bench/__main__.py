"""``python -m raftmq.bench`` (also how W3 starts its consumer process)."""

import sys

from raftmq.bench.cli import main

sys.exit(main())
