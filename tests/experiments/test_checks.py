"""experiments.checks: the config checks refuse a bad value with a ConfigError naming the key."""

import pytest

from experiments.checks import ConfigError, check_number, check_ratio


def test_experiments_check_number_raises_config_error():
    assert check_number("strategy.rounds", 3, 1, integer=True) == 3
    with pytest.raises(ConfigError, match=r"^strategy.rounds=0: must be an integer >= 1$"):
        check_number("strategy.rounds", 0, 1, integer=True)
    with pytest.raises(ConfigError, match=r"^strategy.regrow=True: must be a number in \[0, 1\] \(0: off\)$"):
        check_number("strategy.regrow", True, 0, 1, suffix=" (0: off)")
    with pytest.raises(ConfigError, match=r"^ratio=1: must be a number in \(0, 1\)$"):
        check_number("ratio", 1, 0, 1, low_open=True, high_open=True)


def test_check_ratio_is_a_number_in_0_1():
    assert check_ratio("strategy.ratio", 0) == 0.0 and isinstance(check_ratio("strategy.ratio", 0), float)
    assert check_ratio("strategy.ratio", 0.5) == 0.5
    for bad in (1, 1.0, -0.1, float("nan"), True, "0.5", None):
        with pytest.raises(ConfigError, match=r"^strategy.ratio=.*: must be a number in \[0, 1\)$"):
            check_ratio("strategy.ratio", bad)
