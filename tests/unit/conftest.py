"""Fixtures shared by the storage and the handler tests."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage import Store
from tests.unit.test_node_app import FakeRaft
from tests.unit.test_storage import MAP_SIZE, Broker


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An empty store in the test's directory."""
    with Store(str(tmp_path / "store"), map_size=MAP_SIZE) as opened:
        yield opened


@pytest.fixture
def broker(store: Store) -> Broker:
    """Feeds commands to `store` one Raft entry at a time (tests.unit.test_storage)."""
    return Broker(store)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeRaft]:
    """A one-node fake Raft port over a real Store in the test's directory."""
    raft = FakeRaft(tmp_path / "store")
    yield raft
    raft.store.close()
