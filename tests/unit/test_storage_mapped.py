"""The store can drop the map pages it has read from this process's RSS, and reads still work."""

import sys
from pathlib import Path

import pytest

from storage import Store
from storage.mapped import mapped_file_bytes, mapped_ranges

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise")


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def fill_with_25_mb(store: Store) -> None:
    """20,000 messages of 1,000 bytes in queue "q", in 200 entries."""
    store.apply(1, [{"op": "declare_queue", "queue": "q", "now_ms": 1}])
    for index in range(2, 202):
        batch = [{"id": f"{index}-{j}", "body": "x" * 1000} for j in range(100)]
        store.apply(index, [{"op": "publish", "queue": "q", "now_ms": index, "messages": batch}])


def test_release_drops_read_pages_and_keeps_the_data(tmp_path: Path) -> None:
    with Store(str(tmp_path / "s")) as store:
        fill_with_25_mb(store)
        store.release_mapped_pages()
        before = _rss_file_kib()
        digest = store.digest()  # reads every page, ~25 MB, through the map
        touched = _rss_file_kib()
        assert touched - before > 15_000
        store.release_mapped_pages()
        assert _rss_file_kib() < touched - 15_000
        assert store.digest() == digest
        queue = store.get_queue("q", now_ms=1000)
        assert queue is not None and queue["total"] == 20_000


def test_the_store_releases_its_map_once_over_its_bound(tmp_path: Path) -> None:
    baseline = mapped_file_bytes()
    assert baseline > 0  # shared libraries at least
    with Store(str(tmp_path / "s"), mapped_bound=baseline + (8 << 20)) as store:
        fill_with_25_mb(store)
        store.release_mapped_pages()
        assert not store.bound_mapped_pages()  # nothing read since: under the bound
        digest = store.digest()  # reads ~25 MB through the map
        touched = mapped_file_bytes()
        assert touched > baseline + (15 << 20)
        assert store.bound_mapped_pages()
        assert mapped_file_bytes() < touched - (15 << 20)
        assert store.digest() == digest


def test_releasing_the_map_in_the_middle_of_a_reap_changes_nothing(tmp_path: Path) -> None:
    """A store that lets go of its map at every look (bound 0) inside reaps ends with the
    same bytes as one that never does."""
    digests = []
    for name, bound in (("always", 0), ("never", 1 << 50)):
        with Store(str(tmp_path / name), mapped_bound=bound) as store:
            fill_with_25_mb(store)
            store.apply(300, [{"op": "delete_queue", "queue": "q", "now_ms": 300}])
            index, more = 301, True
            while more:
                results = store.apply(index, [{"op": "reap", "max_keys": 5000, "now_ms": 301}])
                assert results is not None and results[0]["status"] == "ok"
                more, index = results[0]["more"], index + 1
            digests.append(store.digest())
    assert digests[0] == digests[1]


def test_mapped_ranges_reads_the_maps_format(tmp_path: Path) -> None:
    data = tmp_path / "data.mdb"
    data.write_bytes(b"")
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000100000 r--s 00000000 fd:01 42    {data}\n"
        "7f0000200000-7f0000300000 r--p 00000000 fd:01 43    /usr/lib/libc.so.6\n"
        f"7f0000400000-7f0000500000 r--s 00100000 fd:01 42    {data}\n"
        "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0      [stack]\n"
    )
    assert mapped_ranges(str(data), str(maps)) == [
        (0x7F0000000000, 0x7F0000100000),
        (0x7F0000400000, 0x7F0000500000),
    ]


def test_a_raw_copy_of_the_data_file_is_the_same_state(tmp_path: Path) -> None:
    with Store(str(tmp_path / "s")) as store:
        store.apply(1, [{"op": "declare_queue", "queue": "q", "now_ms": 1}])
        batch = [{"id": str(i), "body": "x" * 100} for i in range(1000)]
        store.apply(2, [{"op": "publish", "queue": "q", "now_ms": 2, "messages": batch}])
        before = _rss_file_kib()
        (tmp_path / "copy").mkdir()
        with store.pin() as pinned, open(tmp_path / "copy" / "data.mdb", "wb") as out:
            copied = pinned.copy_to(out.fileno(), 0)
        assert copied == (tmp_path / "s" / "data.mdb").stat().st_size
        assert _rss_file_kib() - before < 1000  # not read through the map
        digest = store.digest()
    with Store(str(tmp_path / "copy")) as copy:
        assert copy.digest() == digest
        assert copy.applied_index() == 2
