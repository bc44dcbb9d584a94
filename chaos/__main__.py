"""``python -m chaos run ...`` is ``raftmq chaos run ...``."""

import sys

from chaos.run import main

if __name__ == "__main__":
    sys.exit(main())
