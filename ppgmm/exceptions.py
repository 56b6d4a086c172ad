"""Exceptions and warnings raised by ppgmm."""

from __future__ import annotations

import os
import sys
import warnings

__all__ = [
    "PpgmmError", "DataError", "DataTypeError", "SpecError", "ConvergenceWarning",
    "ObjectiveDecreaseError", "warn_user",
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


#: the package's folder: frames in files under it are ppgmm's own
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """Issue a warning attributed to the line that called into ppgmm.

    That is the caller of ppgmm's outermost frame on the stack, so frames of other code in
    the middle of ppgmm's own calls (``functools``, ``contextlib``, generated ``__init__``)
    do not stop the walk. The user's own call is then what Python shows (and what a warnings
    filter by line sees), however deep inside ppgmm the warning arises and whichever public
    function (``fit``, ``prepare``, ``compare``, a dask fit) was called, with no stack depths
    to count.
    """
    frame, level, outside = sys._getframe(1), 2, 2  # level: ``frame``'s stacklevel
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PACKAGE):
            outside = level + 1
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=outside)
