"""check_number: the one range check the library and the experiments share."""

from fractions import Fraction

import numpy as np
import pytest

from pruning.checks import check_number, describe_range


@pytest.mark.parametrize("value", [0, 0.5, 1, 0.999, np.float32(0.25), np.int64(1), Fraction(1, 3)])
def test_numbers_in_range_come_back_unchanged(value):
    assert check_number("x", value, 0, 1) is value


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_bools_are_not_numbers(value):
    with pytest.raises(ValueError, match=r"x=.*: must be a number in \[0, 1\]"):
        check_number("x", value, 0, 1)
    with pytest.raises(ValueError, match="must be an integer"):
        check_number("x", value, integer=True)


@pytest.mark.parametrize("value", [float("nan"), np.float64("nan")])
def test_nan_is_refused_even_without_bounds(value):
    with pytest.raises(ValueError, match=r"x=.*nan.*: must be a number$"):
        check_number("x", value)


@pytest.mark.parametrize("value", ["0.5", None, [1], 1j, object()])
def test_non_numbers_are_refused(value):
    with pytest.raises(ValueError, match=r"^x=.*: must be a number >= 0$"):
        check_number("x", value, 0)


def test_unbounded_accepts_any_real_number():
    assert check_number("x", -1e300) == -1e300
    assert check_number("x", float("inf")) == float("inf")


@pytest.mark.parametrize("value", [1, 16, np.int64(8), np.uint8(3)])
def test_integer_accepts_python_and_numpy_integers(value):
    assert check_number("bits", value, 1, 16, integer=True) is value


@pytest.mark.parametrize("value", [2.0, 2.5, np.float64(2.0), "2"])
def test_integer_refuses_floats_even_whole_ones(value):
    with pytest.raises(ValueError, match=r"must be an integer in \[1, 16\]"):
        check_number("bits", value, 1, 16, integer=True)


@pytest.mark.parametrize(
    "bounds, inside, outside",
    [
        (dict(low=0, high=1), (0, 1), (-0.001, 1.001)),
        (dict(low=0, high=1, high_open=True), (0, 0.999), (-0.001, 1)),
        (dict(low=0, high=1, low_open=True), (0.001, 1), (0, 1.001)),
        (dict(low=0, high=1, low_open=True, high_open=True), (0.001, 0.999), (0, 1)),
        (dict(low=1), (1, 1e9), (0.999, -1)),
        (dict(low=0, low_open=True), (1e-9,), (0, -1)),
        (dict(high=16), (16, -5), (16.5,)),
        (dict(high=16, high_open=True), (15.99,), (16,)),
    ],
)
def test_bounds_are_closed_unless_said_open(bounds, inside, outside):
    for value in inside:
        assert check_number("x", value, **bounds) == value
    for value in outside:
        with pytest.raises(ValueError):
            check_number("x", value, **bounds)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(value=0, low=1, integer=True), "n=0: must be an integer >= 1"),
        (dict(value=1, low=0, high=1, high_open=True), "n=1: must be a number in [0, 1)"),
        (dict(value=0, low=0, high=1, low_open=True), "n=0: must be a number in (0, 1]"),
        (dict(value=0.0, low=0, low_open=True), "n=0.0: must be a number > 0"),
        (dict(value=17, high=16, integer=True), "n=17: must be an integer <= 16"),
        (dict(value=16, high=16, high_open=True), "n=16: must be a number < 16"),
        (dict(value="8"), "n='8': must be a number"),
        (dict(value=0, low=1, integer=True, suffix=" or None"), "n=0: must be an integer >= 1 or None"),
        (dict(value=-1, low=0, suffix=" (optimizer steps)"), "n=-1: must be a number >= 0 (optimizer steps)"),
    ],
)
def test_message_names_the_key_the_value_and_the_allowed_range(kwargs, message):
    with pytest.raises(ValueError) as err:
        check_number("n", **kwargs)
    assert str(err.value) == message


def test_error_picks_the_exception_type():
    with pytest.raises(TypeError, match="n=2.5: must be an integer >= 1"):
        check_number("n", 2.5, 1, integer=True, error=TypeError)
    with pytest.raises(ValueError) as err:
        check_number("n", 0, 1)
    assert type(err.value) is ValueError


def test_describe_range_without_bounds_is_empty():
    assert describe_range(None, None) == ""
    assert describe_range(0.5, 2) == " in [0.5, 2]"
