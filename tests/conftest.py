"""Shared fixtures."""

import warnings

import numpy as np
import pytest

# Hypothesis imports this module to report a failing example; under the suite's
# warnings-as-errors a deprecation inside its imports would then hide the failure behind an
# INTERNALERROR. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # pragma: no cover - a Hypothesis without it reports plainly
        pass


@pytest.fixture
def rng():
    return np.random.default_rng(42)
