"""The node's wall clock: commands carry the leader's time, so every replica applies the same."""

import time


def now_ms() -> int:
    return int(time.time() * 1000)
