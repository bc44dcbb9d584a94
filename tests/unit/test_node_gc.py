"""The node process collects reference cycles rarely (node.__main__.relax_garbage_collection)."""

import gc
from collections.abc import Iterator

import pytest

from node.__main__ import GC_YOUNG_THRESHOLD, relax_garbage_collection


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_young_threshold_raised_and_older_ones_kept() -> None:
    gc.set_threshold(700, 10, 10)
    relax_garbage_collection()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_gc")
def test_cycles_are_still_collected() -> None:
    relax_garbage_collection()
    collected: list[bool] = []

    class Cycle:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            collected.append(True)

    for _ in range(3):
        Cycle()
    junk: list[list[int]] = [[] for _ in range(3 * GC_YOUNG_THRESHOLD)]
    del junk
    assert collected
