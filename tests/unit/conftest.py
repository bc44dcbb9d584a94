"""Fixtures shared by the handler tests."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.test_node_app import FakeRaft


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeRaft]:
    """A one-node fake Raft port over a real Store in the test's directory."""
    raft = FakeRaft(tmp_path / "store")
    yield raft
    raft.store.close()
