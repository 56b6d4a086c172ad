"""Shared fixtures."""

import os
import warnings

import numpy as np
import pytest
from hypothesis import settings

# Hypothesis imports this module to report a failing example; under the suite's
# warnings-as-errors a deprecation inside its imports would then hide the failure behind an
# INTERNALERROR. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # pragma: no cover - a Hypothesis without it reports plainly
        pass


# The suite gates every landing, so its property tests draw the same examples each run;
# PPGMM_HYPOTHESIS=explore draws new ones (and more) when hunting for counterexamples.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile(os.environ.get("PPGMM_HYPOTHESIS", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(42)
