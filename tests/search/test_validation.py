"""The shared integer and number checks every constructor uses: the type, the bounds and the hint."""

import pytest

from dspy_icl_opt._validation import check_int, check_number


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


def test_a_number_within_its_bounds_is_returned_as_a_float():
    assert check_number("temperature", 1, minimum=0) == 1.0 and isinstance(check_number("t", 1, minimum=0), float)
    assert check_number("alpha", 0.5, minimum=0, maximum=1) == 0.5
    assert check_number("threshold", -3.5) == -3.5  # no bounds: any real number


@pytest.mark.parametrize("value, kind", [("1.0", "str"), (True, "bool"), (None, "NoneType")])
def test_a_non_number_is_a_type_error_that_names_its_type(value, kind):
    with pytest.raises(TypeError, match=rf"`temperature` must be a number >= 0, but got {kind} "):
        check_number("temperature", value, minimum=0)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_out_of_bounds_or_nan_is_a_value_error_with_the_hint(value):
    with pytest.raises(ValueError, match=r"^`alpha` must be a number in \[0, 1\], but got .*\. Halve it\.$"):
        check_number("alpha", value, minimum=0, maximum=1, hint="Halve it.")


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_an_infinite_number_is_a_value_error_even_without_an_upper_bound(value):
    with pytest.raises(ValueError, match=r"^`w_exp` must be a finite number >= 0, but got -?inf\. Use 2\.5\.$"):
        check_number("w_exp", value, minimum=0, hint="Use 2.5.")
