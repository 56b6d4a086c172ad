"""The NUTS run-time estimate: timed gradients, a warning above the threshold, an off switch."""

import importlib.util

import numpy as np
import pytest

import ppgmm

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("nutpie") is None,
                       reason="nutpie is not installed"),
    # pyproject ignores this warning elsewhere (it depends on the machine's load); here it is
    # what the tests are about, so an unexpected one fails them
    pytest.mark.filterwarnings("error:NUTS is expected to take"),
]


def test_estimate_is_gradient_time_times_steps_iterations_and_chains():
    from ppgmm.backends import nuts

    s = nuts.STEPS_PER_DRAW
    assert nuts.estimate_runtime(1e-3, draws=1000, tune=500, chains=4, parallel=1) == \
        pytest.approx(1e-3 * s * 1500 * 4)
    # chains run at once on as many cores (never more than the chains)
    assert nuts.estimate_runtime(1e-3, draws=1000, tune=500, chains=4, parallel=2) == \
        pytest.approx(1e-3 * s * 1500 * 2)
    assert nuts.estimate_runtime(1e-3, draws=1000, tune=500, chains=2, parallel=16) == \
        pytest.approx(1e-3 * s * 1500)


def test_warning_above_the_threshold_only():
    from ppgmm.backends import nuts

    calls = []

    def gradient():
        calls.append(1)

    with pytest.warns(UserWarning, match=r"NUTS is expected to take about .* backend='advi'"):
        nuts._warn_if_slow(gradient, draws=1000, tune=1000, chains=2, parallel=1, limit=0.0)
    assert len(calls) == 6  # one warm-up (compiles), five timed
    nuts._warn_if_slow(gradient, draws=1000, tune=1000, chains=2, parallel=1, limit=1e9)
    calls.clear()
    nuts._warn_if_slow(gradient, draws=1000, tune=1000, chains=2, parallel=1, limit=None)
    assert not calls  # None skips the estimate: nothing is timed


class _Stop(Exception):
    pass


@pytest.fixture()
def no_sampling(monkeypatch):
    """nutpie compiles the model as usual, then stops instead of sampling."""
    import nutpie

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(nutpie, "sample", stop)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (60, 2)), rng.normal(2, 1, (60, 2))])
    x[rng.random(x.shape) < 0.1] = np.nan
    x[np.isnan(x).all(1), 0] = 0.0
    return x


def test_fit_warns_before_sampling_when_the_threshold_is_low(data, no_sampling):
    with pytest.warns(UserWarning, match="NUTS is expected to take about"), \
            pytest.raises(_Stop):
        ppgmm.fit(ppgmm.GMM(2), data, backend="nuts", seed=0, time_warning=1e-9,
                  progressbar=False)


def test_fit_is_silent_under_the_threshold_or_when_switched_off(data, no_sampling):
    # filterwarnings=error: any warning would fail these
    for limit in (1e9, None):
        with pytest.raises(_Stop):
            ppgmm.fit(ppgmm.GMM(2), data, backend="nuts", seed=0, time_warning=limit,
                      progressbar=False)
    with pytest.raises(ppgmm.SpecError, match="time_warning should be"):
        ppgmm.fit(ppgmm.GMM(2), data, backend="nuts", seed=0, time_warning="soon")
