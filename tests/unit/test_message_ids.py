"""Client-made publish ids: unique, and ordered by creation time (cheap to index)."""

import time

from raftmq.client import new_message_id


def test_ids_are_unique_and_sort_by_creation_time() -> None:
    first = [new_message_id() for _ in range(10_000)]
    ms = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == ms:
        pass  # the next millisecond
    later = new_message_id()
    assert len(set(first)) == len(first)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)
    assert all(later > i for i in first)
    assert [i[:12] for i in first] == sorted(i[:12] for i in first)


def test_one_process_ids_sort_in_the_order_they_were_made() -> None:
    made = [new_message_id() for _ in range(10_000)]  # most share a millisecond
    assert made == sorted(made)
