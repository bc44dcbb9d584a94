"""Child process for the SIGKILL tests: writes to a journal, says "ready", waits to be killed.

Usage: python journal_child.py MODE PATH
  meta     setCurrentTerm(7, "127.0.0.1:9")
  entries  add and flush 1000 entries, then add 50 more without flushing
  stream   add + flush batches forever (killed at an arbitrary point)
"""

from __future__ import annotations

import sys
import time

from cluster.journal import DurableJournal

FLUSHED_ENTRIES = 1000


def say_ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def main(mode: str, path: str) -> None:
    j = DurableJournal(path, fsync=True)
    if mode == "meta":
        j.setCurrentTerm(7, "127.0.0.1:9")
        say_ready()
    elif mode == "entries":
        for i in range(1, FLUSHED_ENTRIES + 1):
            j.add(f"entry-{i}".encode(), i, 1 + i // 100)
        j.flush()
        say_ready()
        for i in range(FLUSHED_ENTRIES + 1, FLUSHED_ENTRIES + 51):
            j.add(f"entry-{i}".encode(), i, 11)
    elif mode == "stream":
        i = 0
        while True:
            for _ in range(100):
                i += 1
                j.add(f"entry-{i}".encode() * 20, i, 1 + i // 1000)
            j.flush()
            if i == 100:
                say_ready()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
