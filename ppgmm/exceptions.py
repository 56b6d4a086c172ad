"""Exceptions and warnings raised by ppgmm."""

from __future__ import annotations

__all__ = [
    "PpgmmError", "DataError", "DataTypeError", "SpecError", "ConvergenceWarning",
    "ObjectiveDecreaseError",
]


class PpgmmError(ValueError):
    """Base class of ppgmm's errors about user input (a ValueError)."""


class DataError(PpgmmError):
    """The data cannot be modelled as given (non-numeric, inf, empty column, too few rows)."""


class DataTypeError(DataError, TypeError):
    """Some columns hold values that are not numbers (text, booleans, dates, objects).

    Both a :class:`DataError` and a ``TypeError``, as scikit-learn expects for such input.
    """


class SpecError(PpgmmError):
    """A model specification or an option is invalid."""


class ObjectiveDecreaseError(RuntimeError):
    """The EM objective decreased beyond rounding: a bug, never expected."""


class ConvergenceWarning(UserWarning):
    """An algorithm stopped before meeting its convergence criterion."""
