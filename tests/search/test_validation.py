"""The shared integer check every constructor uses: the type, the bound and the hint."""

import pytest

from dspy_icl_opt._validation import check_int


def test_an_integer_at_or_above_the_minimum_is_returned():
    assert check_int("rounds", 0, minimum=0) == 0
    assert check_int("rounds", 7, minimum=1) == 7


@pytest.mark.parametrize("value, kind", [(1.0, "float"), ("3", "str"), (True, "bool"), (None, "NoneType")])
def test_a_non_integer_is_a_type_error_that_names_its_type(value, kind):
    with pytest.raises(TypeError, match=rf"`rounds` must be an integer >= 1, but got {kind} "):
        check_int("rounds", value, minimum=1)


def test_below_the_minimum_is_a_value_error_with_the_hint():
    with pytest.raises(ValueError, match=r"^`beam_size` must be an integer >= 1, but got 0\. Keep one\.$"):
        check_int("beam_size", 0, minimum=1, hint="Keep one.")
