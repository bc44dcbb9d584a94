"""StopFlag: what `raftmq cluster up`'s signal handler sets, and why not a threading.Event."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from raftmq.supervisor import StopFlag

# A handler that sets the stop request while the main thread holds the lock that
# Event.wait holds for a moment at every wake-up (entered here on purpose).
_HANDLER_INSIDE_THE_LOCK = textwrap.dedent(
    """
    import signal, threading, time
    from raftmq.supervisor import StopFlag
    event = threading.Event()
    stop = {kind}
    signal.signal(signal.SIGALRM, lambda signum, frame: stop.set())
    with event._cond:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        time.sleep(0.5)
    print("stopped" if stop.is_set() else "not stopped")
    """
)


@pytest.fixture
def alarm() -> Iterator[StopFlag]:
    flag = StopFlag()
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: flag.set())
    yield flag
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_a_wait_ends_when_a_signal_handler_sets_the_flag(alarm: StopFlag) -> None:
    assert not alarm.is_set()
    assert alarm.wait(0.01) is False
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    assert alarm.wait(30.0) is True
    assert alarm.is_set()


def _run(kind: str) -> subprocess.CompletedProcess[str]:
    code = _HANDLER_INSIDE_THE_LOCK.format(kind=kind)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=False
    )


def test_setting_the_flag_inside_the_event_lock_returns() -> None:
    assert _run("StopFlag()").stdout.strip() == "stopped"


def test_an_event_set_by_a_handler_inside_its_lock_never_returns() -> None:
    """The negative control: the handler waits for a lock its own thread holds."""
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-c", _HANDLER_INSIDE_THE_LOCK.format(kind="event")],
            capture_output=True,
            timeout=3,
            check=False,
        )
