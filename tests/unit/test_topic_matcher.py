"""The exchange matchers against a reference table and, for topics, a slow regex reference."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.topic import DirectRouter, FanoutRouter, TopicTrie, build_router


def reference_match(pattern: str, key: str) -> bool:
    """Slow and obviously right: each word of the key becomes "." + word, then one regex.

    A literal word is "\\." + itself, "*" is one word "\\.[^.]*", "#" any number of them.
    """
    parts = []
    for word in pattern.split("."):
        if word == "*":
            parts.append(r"\.[^.]*")
        elif word == "#":
            parts.append(r"(?:\.[^.]*)*")
        else:
            parts.append(r"\." + re.escape(word))
    return re.fullmatch("".join(parts), "." + key, re.DOTALL) is not None


# (pattern, routing key, matches)
TOPIC_TABLE: list[tuple[str, str, bool]] = [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b", "a.b.c", False),
    ("a.b.c", "a.b.d", False),
    ("*", "a", True),
    ("*", "", True),
    ("*", "a.b", False),
    ("*", ".", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("*.*", ".", True),
    ("*.*", "a.", True),
    ("*.*", ".b", True),
    ("*.*", "a.b.c", False),
    ("*.*", "", False),
    # "#" at the start
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", "..", True),
    ("#.a", "a", True),
    ("#.a", "x.a", True),
    ("#.a", "x.y.a", True),
    ("#.a", ".a", True),
    ("#.a", "a.x", False),
    ("#.a", "xa", False),
    # "#" at the end
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("a.#", "a.", True),
    ("a.#", "b.a", False),
    ("a.#", "ab", False),
    ("a.#", "", False),
    # "#" in the middle
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a..b", True),
    ("a.#.b", "a.b.b", True),
    ("a.#.b", "a.b.c", False),
    ("a.#.b", "b", False),
    ("a.#.b", "a", False),
    ("#.b.#", "b", True),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "a.c", False),
    ("#.#", "", True),
    ("#.#", "a.b", True),
    ("#.*", "", True),
    ("#.*", "a.b", True),
    ("*.#", "", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c", True),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
    ("*.#.*", "a.b.c.d", True),
    ("#.a.#.a.#", "a.a", True),
    ("#.a.#.a.#", "a.b.a", True),
    ("#.a.#.a.#", "b.a.b", False),
    # empty words are words
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a.*.b", "a..b", True),
    ("a.*.b", "a.b", False),
    ("", "", True),
    ("", "a", False),
    ("", ".", False),
    (".", ".", True),
    (".", "", False),
    (".*", ".x", True),
    ("*.", "x.", True),
    # wildcards only as whole words; keys are literal
    ("a*", "a*", True),
    ("a*", "ab", False),
    ("a#", "a#", True),
    ("a#", "a.b", False),
    ("*", "*", True),
    ("a.*", "a.#", True),
    ("#", "#", True),
    # the RabbitMQ tutorial
    ("*.orange.*", "quick.orange.rabbit", True),
    ("*.orange.*", "quick.orange.male.rabbit", False),
    ("*.*.rabbit", "quick.orange.rabbit", True),
    ("*.*.rabbit", "lazy.orange.elephant", False),
    ("lazy.#", "lazy.orange.male.rabbit", True),
    ("lazy.#", "lazy", True),
    ("stock.*.nyse", "stock.ibm.nyse", True),
    ("stock.*.nyse", "stock.nyse", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), TOPIC_TABLE)
def test_topic_table(pattern: str, key: str, expected: bool) -> None:
    assert reference_match(pattern, key) is expected
    assert (TopicTrie([(pattern, "q")]).match(key) == {"q"}) is expected


def test_one_trie_with_every_pattern_routes_each_key_to_exactly_its_queues() -> None:
    patterns = sorted({pattern for pattern, _, _ in TOPIC_TABLE})
    trie = TopicTrie((pattern, f"q{i}") for i, pattern in enumerate(patterns))
    assert trie.size == len(patterns)
    for key in {key for _, key, _ in TOPIC_TABLE}:
        expected = {f"q{i}" for i, pattern in enumerate(patterns) if reference_match(pattern, key)}
        assert trie.match(key) == expected, key


def test_queue_bound_twice_is_routed_once_and_shared_patterns_reach_every_queue() -> None:
    trie = TopicTrie([("a.*", "q1"), ("#", "q1"), ("a.*", "q2")])
    assert trie.match("a.b") == {"q1", "q2"}
    assert trie.match("b") == {"q1"}


def test_direct_is_exact_and_fanout_ignores_the_key() -> None:
    direct = DirectRouter([("k", "q1"), ("k", "q2"), ("a.*", "q3"), ("", "q4")])
    assert direct.match("k") == {"q1", "q2"}
    assert direct.match("a.b") == set()
    assert direct.match("a.*") == {"q3"}
    assert direct.match("") == {"q4"}
    fanout = FanoutRouter([("x", "q1"), ("", "q2")])
    assert fanout.match("anything") == {"q1", "q2"}
    assert fanout.match("") == {"q1", "q2"}
    assert build_router("fanout", []).match("k") == set()
    with pytest.raises(ValueError):
        build_router("headers", [])


WORDS = st.sampled_from(["a", "b", "", "ab"])
PATTERN_WORDS = st.one_of(WORDS, st.sampled_from(["*", "#"]))


def _join(words: list[str]) -> str:
    return ".".join(words)


@settings(max_examples=400, deadline=None)
@given(
    patterns=st.lists(st.lists(PATTERN_WORDS, min_size=1, max_size=6).map(_join), max_size=12),
    keys=st.lists(st.lists(st.one_of(WORDS, st.just("*")), min_size=1, max_size=7).map(_join)),
)
def test_trie_agrees_with_the_regex_reference(patterns: list[str], keys: list[str]) -> None:
    trie = TopicTrie((pattern, f"q{i}") for i, pattern in enumerate(patterns))
    for key in keys:
        expected = {f"q{i}" for i, pattern in enumerate(patterns) if reference_match(pattern, key)}
        assert trie.match(key) == expected
