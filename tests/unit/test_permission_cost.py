"""Which permission patterns a new grant may use: those whose check stays short."""

import pytest

from storage import users
from storage.errors import InvalidCommand

ACCEPTED = [
    "",
    ".*",
    "orders.*",
    "^(orders|billing)\\..*$",
    "^amq\\.gen.*|^user-.*$",
    "^[a-z]+-[0-9]+\\..*$",  # three repeats in a row: n^3/6 splits at most
    "(?:ab){2,5}",
    "(a|ab){10}",  # 1,024 paths, no repeat
    "x{1000}",
    "(?i)Orders\\..*",
]
REFUSED = [
    "(a*)*b",  # a repeat of a repeat: exponential
    "(a+)+",
    "(a|ab)*c",  # a repeat of an alternation
    "(orders|billing)+",
    "[a-z]*[a-z]*[a-z]*[a-z]*x",  # four repeats in a row: n^4/24
    "(a)\\1",  # back reference
    "(?=a).*",  # lookaround
    "((",  # does not compile
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_a_pattern_with_a_bounded_check_is_accepted(pattern: str) -> None:
    assert users.check_new_pattern(pattern) == pattern
    assert users.matching_cost(pattern) <= users.MAX_MATCHING_COST


@pytest.mark.parametrize("pattern", REFUSED)
def test_a_pattern_whose_check_could_run_away_is_refused(pattern: str) -> None:
    with pytest.raises(InvalidCommand):
        users.check_new_pattern(pattern)


def test_grants_already_made_still_apply() -> None:
    """The replicated command keeps accepting what compiles, so old log entries replay."""
    assert users.check_pattern("(a*)*b") == "(a*)*b"


def test_the_estimate_grows_with_repeats_in_a_row_and_alternatives() -> None:
    one, two, three = (users.matching_cost("a*" * k) for k in (1, 2, 3))
    assert one < two < three
    assert users.matching_cost("(a|b)(c|d)") < users.matching_cost("(a|bc)(c|de)(e|fg)")
