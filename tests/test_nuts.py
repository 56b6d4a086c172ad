"""nutpie's compile cache: a second fit of the same shape reuses the compiled model, with its
own data, prior hyperparameters and chain starts.

The reference is nutpie's default compile of the second fit's model (data frozen in as
constants), compiled afresh. Models are tiny (N=40, D=2, K=2) and shared through a
module-scoped fixture.
"""

import importlib.util

import numpy as np
import pytest

import ppgmm
from ppgmm.backends import nuts

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nutpie") is None,
                                reason="nutpie is not installed")


class _Stop(Exception):
    pass


def _data(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(-2, 1, (20, 2)), rng.normal(2, 1, (20, 2))])
    x[rng.random(x.shape) < 0.15] = np.nan
    x[np.isnan(x).all(1), 0] = 0.0
    return x


def _compile_and_stop(x, seed, **options):
    """(model, starts, compiled model handed to nutpie.sample) of a NUTS fit of ``x``,
    stopped before sampling."""
    import nutpie

    got = {}
    compiled_fn, sample = nuts._nutpie_compiled, nutpie.sample

    def record(model, starts):
        got["model"], got["starts"] = model, starts
        return compiled_fn(model, starts)

    def stop(compiled, **kwargs):
        got["compiled"] = compiled
        raise _Stop

    nuts._nutpie_compiled, nutpie.sample = record, stop
    try:
        with pytest.raises(_Stop):
            ppgmm.fit(ppgmm.GMM(2), x, backend="nuts", seed=seed, chains=2,
                      progressbar=False, time_warning=None, **options)
    finally:
        nuts._nutpie_compiled, nutpie.sample = compiled_fn, sample
    return got["model"], got["starts"], got["compiled"]


@pytest.fixture(scope="module")
def second_fit():
    """Two fits of one shape (the same missingness): the first on the standardised scale,
    the second on other data in other units (so the data and every prior hyperparameter
    differ). Returns the second fit's (model, starts, compiled), the number of compiles
    each fit ran and a fresh default compile of the second fit's model."""
    import nutpie

    x = _data(0)
    other = 10.0 * (x + np.random.default_rng(1).normal(0, 0.3, x.shape)) + 50.0
    saved, compile_fn = dict(nuts._NUTPIE_CACHE), nutpie.compile_pymc_model
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("freeze_model"))
        return compile_fn(*args, **kwargs)

    nuts._NUTPIE_CACHE.clear()
    nutpie.compile_pymc_model = counting
    try:
        _compile_and_stop(x, seed=0)
        first = list(calls)
        model, starts, compiled = _compile_and_stop(other, seed=1, standardise=False)
        second = calls[len(first):]
    finally:
        nutpie.compile_pymc_model = compile_fn
        nuts._NUTPIE_CACHE.clear()
        nuts._NUTPIE_CACHE.update(saved)
    fresh = nutpie.compile_pymc_model(model, backend="jax", gradient_backend="jax",
                                      var_names=nuts.NAMES, initial_points=starts[0],
                                      jitter_rvs=set())
    return model, starts, compiled, first, second, fresh


def _layout(compiled):
    """nutpie's slices of its flat vector, per unconstrained variable."""
    return {v.name: slice(v.start_idx, v.end_idx) for v in compiled._variables
            if v.end_idx <= compiled.n_dim}


def test_second_fit_of_the_same_shape_does_not_recompile(second_fit):
    model, _, compiled, first, second, _ = second_fit
    assert first == [False]  # one compile, with the data as inputs
    assert second == []
    # every pm.Data of the model was handed in: the rows and the prior's hyperparameters
    data = {n: v.get_value() for n, v in model.named_vars.items() if hasattr(v, "get_value")}
    assert {"prior_mean", "prior_chol"} <= set(data)
    assert set(compiled._shared_data) == set(data)
    for name, value in data.items():
        np.testing.assert_array_equal(np.asarray(compiled._shared_data[name]), value,
                                      err_msg=name)


def test_cached_log_density_equals_a_fresh_compile_on_new_data(second_fit):
    """log p and its gradient at random points, against nutpie's own compile of the second
    fit's model with its data frozen in: equal to 1e-10 (relative)."""
    _, _, compiled, _, _, fresh = second_fit
    cached_at, fresh_at = _layout(compiled), _layout(fresh)
    assert set(cached_at) == set(fresh_at)

    def to_cached(theta):
        out = np.empty_like(theta)
        for name, sl in fresh_at.items():
            out[cached_at[name]] = theta[sl]
        return out

    logp_c, logp_f = compiled._make_logp_func(), fresh._make_logp_func()
    rng = np.random.default_rng(5)
    start = fresh._make_initial_points(0)
    for scale in (0.1, 0.1, 1.0, 1.0):
        theta = start + scale * rng.standard_normal(start.shape)
        lf, gf = logp_f(theta, **fresh._shared_data)
        lc, gc = logp_c(to_cached(theta), **compiled._shared_data)
        assert lc == pytest.approx(lf, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(gc, to_cached(gf), rtol=1e-10, atol=1e-10)


def test_cached_model_starts_chains_at_this_fits_starts(second_fit):
    """The first chain starts where nutpie's own compile of this fit puts starts[0]; the
    second at starts[1] (not at the first fit's starts, which the cached model was compiled
    with)."""
    _, starts, compiled, _, _, fresh = second_fit
    cached_at, fresh_at = _layout(compiled), _layout(fresh)
    first, second = (np.asarray(compiled._make_initial_points(s)) for s in (0, 1))
    own = np.asarray(fresh._make_initial_points(0))
    for name, sl in fresh_at.items():
        np.testing.assert_allclose(first[cached_at[name]], own[sl], rtol=1e-12, atol=1e-12)
    # starts[1] is another jittered start: the second chain's differs from the first's
    assert not np.allclose(first, second)
    means = np.asarray(starts[1]["means"]).ravel()
    np.testing.assert_allclose(second[cached_at["means"]], means, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::ppgmm.ConvergenceWarning")  # 20 draws: not the point
def test_a_cache_hit_samples_the_draws_of_a_fresh_compile(monkeypatch):
    """The same fit with the cache off (nutpie's default compile, data frozen in) and as a
    cache hit (filled by a fit of other data) gives the same draws, bit for bit: the cached
    compile lays the variables out in the same order. One chain: nutpie's chain threads
    take per-chain starts in the order they ask, which varies from run to run."""
    x = _data(2)
    options = {"backend": "nuts", "draws": 20, "tune": 20, "chains": 1, "progressbar": False,
               "time_warning": None}
    monkeypatch.setattr(nuts, "_NUTPIE_CACHE", {})
    monkeypatch.setattr(nuts, "_NUTPIE_CACHE_SIZE", 0)
    with pytest.warns(ppgmm.ConvergenceWarning) as rec:
        off = ppgmm.fit(ppgmm.GMM(2), x, seed=3, **options)
    assert {w.filename for w in rec} == {__file__}  # the warnings point at the caller's line
    monkeypatch.setattr(nuts, "_NUTPIE_CACHE_SIZE", 2)
    ppgmm.fit(ppgmm.GMM(2), x[::-1].copy(), seed=4, **options)  # fills the cache
    hit = ppgmm.fit(ppgmm.GMM(2), x, seed=3, **options)
    assert len(nuts._NUTPIE_CACHE) == 1
    assert hit.attrs["compile_time"] < off.attrs["compile_time"]
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(hit.idata.posterior[name].values,
                                      off.idata.posterior[name].values)


def test_latent_missing_entries_are_not_cached(monkeypatch):
    """The latent model places its free variables at the data's missing entries (graph
    constants, not pm.Data): it compiles with its data frozen in, every fit."""
    import nutpie

    seen = []

    def stop(model, **kwargs):
        seen.append(kwargs.get("freeze_model"))
        raise _Stop

    monkeypatch.setattr(nuts, "_NUTPIE_CACHE", {})
    monkeypatch.setattr(nutpie, "compile_pymc_model", stop)
    with pytest.raises(_Stop):
        ppgmm.fit(ppgmm.GMM(2), _data(0), backend="nuts", seed=0, missing="latent",
                  progressbar=False, time_warning=None)
    assert seen == [None]  # nutpie's default: frozen
    assert nuts._NUTPIE_CACHE == {}


def test_cached_model_without_starts_jitters_like_a_fresh_compile(monkeypatch):
    """init="prior": each chain starts at PyMC's jittered support point of this fit's model
    (its prior mean is data), drawn as nutpie's own compile of this model draws it."""
    import nutpie

    monkeypatch.setattr(nuts, "_NUTPIE_CACHE", {})
    x = _data(0)
    _compile_and_stop(x, seed=0, init="prior")
    model, starts, compiled = _compile_and_stop(5.0 * x + 20.0, seed=1, init="prior",
                                                standardise=False)
    assert starts is None and len(nuts._NUTPIE_CACHE) == 1
    fresh = nutpie.compile_pymc_model(model, backend="jax", gradient_backend="jax",
                                      var_names=nuts.NAMES)
    cached_at, fresh_at = _layout(compiled), _layout(fresh)
    for seed in (3, 11):
        mine, own = compiled._make_initial_points(seed), fresh._make_initial_points(seed)
        for name, sl in fresh_at.items():
            np.testing.assert_allclose(mine[cached_at[name]], own[sl], rtol=1e-12,
                                       atol=1e-12, err_msg=name)
