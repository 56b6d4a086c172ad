"""Validation of backend options: one place for the wording of option errors."""

from __future__ import annotations

from typing import Any

import numpy as np

from .exceptions import SpecError

__all__ = ["check_int", "check_number", "check_bool", "check_seed", "SEED_LIMIT"]

#: seeds are stored as int64 in saved fits (netCDF has no wider integer)
SEED_LIMIT = 2**63


def check_int(name: str, value: Any, low: int) -> int:
    """``value`` as an int, or a SpecError unless it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise SpecError(f"{name} should be an integer >= {low}, but got {value!r}")
    return int(value)


def check_number(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a float, or a SpecError unless it is a finite number >= 0 (> 0)."""
    ok = (not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
          and np.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        kind = "a positive" if positive else "a non-negative"
        raise SpecError(f"{name} should be {kind} number, but got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool, or a SpecError unless it is True or False."""
    if not isinstance(value, bool | np.bool_):
        raise SpecError(f"{name} should be True or False, but got {value!r}")
    return bool(value)


def check_seed(value: Any, name: str = "seed", *, generators: bool = False) -> Any:
    """A seed as an int (or None), or a SpecError naming what is accepted.

    Seeds are non-negative integers below 2**63 (they are saved with the fit as int64) or
    None for fresh entropy. With ``generators=True`` (scikit-learn's ``random_state``), a
    ``numpy.random.Generator`` or ``RandomState`` is accepted too and returned as is.
    """
    if generators and isinstance(value, np.random.Generator | np.random.RandomState):
        return value
    if value is None:
        return None
    if (not isinstance(value, bool) and isinstance(value, int | np.integer)
            and 0 <= value < SEED_LIMIT):
        return int(value)
    also = ", a numpy Generator or RandomState" if generators else ""
    raise SpecError(
        f"{name} should be None{also} or an integer in [0, 2**63), but got {value!r}"
    )
