"""Progress while a benchmark runs: a live status line on a terminal, plain lines otherwise.

Workloads bump :attr:`Progress.count` (an int, so counting costs nothing measurable);
a ticker task redraws a status line a few times a second. Nothing here uses the
``rich`` package: it is not a dependency of raftmq.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TextIO

__all__ = ["Progress"]

REDRAW_S = 0.25
PLAIN_EVERY_S = 5.0


def _fmt_count(n: float) -> str:
    return f"{n:,.0f}"


class Progress:
    """One workload at a time: ``start`` it, bump ``count``, ``finish`` it."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self.count = 0
        self.total: int | None = None
        self.label = ""
        self.prefix = ""
        self.note = ""
        self._started = time.monotonic()
        self._last_plain = 0.0
        self._width = 0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- workloads

    def start(self, label: str, total: int | None = None) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self.note = ""
        self._started = self._last_plain = time.monotonic()
        if self.enabled and not self.live:
            self._line(f"{self.prefix}{label} ...")

    def finish(self, summary: str) -> None:
        """Ends the current workload with a one-line summary."""
        self._clear()
        self._line(f"{self.prefix}{self.label}: {summary}")
        self.label = ""

    def message(self, text: str) -> None:
        """A line of its own (a skipped workload, a warning)."""
        self._clear()
        self._line(text)

    # ---------------------------------------------------------------- ticker

    def attach(self) -> None:
        """Starts redrawing on the running loop (no-op when disabled)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tick())

    async def detach(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._clear()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(REDRAW_S)
            if not self.label:
                continue
            now = time.monotonic()
            if self.live:
                self._draw(self.status(now))
            elif now - self._last_plain >= PLAIN_EVERY_S:
                self._last_plain = now
                self._line(f"{self.prefix}{self.label}: {self.status(now)}")

    def status(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self._started
        parts = []
        if self.total:
            share = min(1.0, self.count / self.total)
            bar = "#" * int(share * 20)
            parts.append(f"[{bar:<20}] {_fmt_count(self.count)}/{_fmt_count(self.total)}")
        else:
            parts.append(_fmt_count(self.count))
        if elapsed > 0 and self.count:
            parts.append(f"{self.count / elapsed:,.0f}/s")
        parts.append(f"{elapsed:5.1f}s")
        if self.note:
            parts.append(self.note)
        return "  ".join(parts)

    # ---------------------------------------------------------------- output

    def _draw(self, status: str) -> None:
        text = f"{self.prefix}{self.label} {status}"
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def _clear(self) -> None:
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _line(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(time.strftime("%H:%M:%S ") + text + "\n")
        self.stream.flush()
