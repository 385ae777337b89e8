"""Argument checks shared by the library, with messages that name the argument and its range."""

from __future__ import annotations

import math
import numbers
from typing import Any


def describe_range(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """``" in [0, 1)"``, ``" >= 1"``, ``" > 0"``, ``" <= 16"`` or ``""`` for no bound."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def check_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
    error: type[Exception] = ValueError,
    suffix: str = "",
) -> Any:
    """``value`` unchanged if it is a number (an integer with ``integer``; never a bool or NaN)
    within the bounds, else ``error`` saying ``key=value: must be an integer >= 1`` or the like;
    ``suffix`` ends that message: the other values the caller accepts (``" or None"``) or what
    the number means (``" (optimizer steps)"``)."""
    kind = (numbers.Integral,) if integer else (numbers.Real,)
    ok = not isinstance(value, bool) and isinstance(value, kind)
    if ok and not integer:
        ok = not math.isnan(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        what = "an integer" if integer else "a number"
        raise error(f"{key}={value!r}: must be {what}{describe_range(low, high, low_open, high_open)}{suffix}")
    return value
