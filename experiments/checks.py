"""Config errors and the value checks every layer of experiments/ uses, so that a bad value
is refused before any training with a message that names the key and the allowed values."""

from __future__ import annotations

from typing import Any, Iterable

import pruning.checks


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the allowed values."""


def check_ratio(key: str, value: Any) -> float:
    return float(check_number(key, value, 0, 1, high_open=True))


def check_nonnegative_int(key: str, value: Any) -> int:
    return check_number(key, value, 0, integer=True)


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: allowed values are {', '.join(map(repr, allowed))}")
    return value


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None, **bounds: Any) -> Any:
    """``value`` if it is a number in range (see :func:`pruning.checks.check_number` for ``integer``,
    ``low_open``, ``high_open``), else a :class:`ConfigError` naming the key and the range."""
    return pruning.checks.check_number(key, value, low, high, error=ConfigError, **bounds)
