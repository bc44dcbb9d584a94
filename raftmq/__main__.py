"""``python -m raftmq`` is the ``raftmq`` command (handy where scripts are not on PATH)."""

from raftmq.cli import main

raise SystemExit(main())
