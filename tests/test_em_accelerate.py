"""SQUAREM-accelerated EM, init="auto", on-demand imputation draws, pattern grouping."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import mcar, mixture
from numpy.testing import assert_allclose
from scipy import stats

import ppgmm
from ppgmm.data import MissingData
from ppgmm.numerics.accelerate import pack, unpack
from ppgmm.numerics.em import run_em
from ppgmm.numerics.patterns import missing_marginals
from ppgmm.prior import resolve_prior
from ppgmm.spec import Params

COV_TYPES = ["full", "diag", "spherical", "tied"]


@pytest.fixture(scope="module")
def data():
    x, _, _ = mixture(seed=11, n=300, d=3, k=3, sep=2.0)  # overlapping: EM is slow here
    return MissingData.from_arrays(mcar(x, 0.25, seed=2), ["a", "b", "c"], np.arange(len(x)))


def _start(md, k, covariance):
    from ppgmm.backends.em import initial_params

    return initial_params(ppgmm.GMM(k, covariance), md, "kmeans++", np.random.default_rng(0),
                          1e-6)


@pytest.mark.parametrize("covariance", COV_TYPES)
@pytest.mark.parametrize("prior", [None, "default"])
def test_accelerated_and_plain_em_reach_the_same_fixed_point(data, covariance, prior):
    """Same start, tight tol: both end at one fixed point (1e-8); both traces never decrease;
    the accelerated run needs fewer E-steps; its parameters keep the covariance type."""
    spec = ppgmm.GMM(3, covariance, prior=prior)
    res = resolve_prior(spec, data)
    p0 = _start(data, 3, covariance)
    kw = dict(max_iter=50_000, tol=1e-20, reg_covar=0.0)  # to rounding
    plain = run_em(p0, data.layout, covariance, res, **kw)
    fast = run_em(p0, data.layout, covariance, res, accelerate=True, **kw)
    assert plain.converged and fast.converged
    for a, b in zip(plain.params, fast.params, strict=True):
        assert_allclose(b, a, rtol=1e-8, atol=1e-8)
    for run in (plain, fast):
        trace = np.asarray(run.objective)
        assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))
    assert fast.n_accepted > 0 and fast.n_estep < plain.n_estep
    cov = fast.params.covariances
    if covariance != "full":
        off = cov - np.diagonal(cov, axis1=1, axis2=2)[:, :, None] * np.eye(3)
        assert np.abs(off).max() < 1e-12 or covariance == "tied"
    if covariance == "tied":
        assert_allclose(cov, np.broadcast_to(cov[0], cov.shape), rtol=0, atol=1e-12)
    if covariance == "spherical":
        diag = np.diagonal(cov, axis1=1, axis2=2)
        assert_allclose(diag, diag[:, :1] * np.ones(3), rtol=1e-12)


def test_pack_unpack_round_trip_and_validity():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 3))
    p = Params(np.array([0.3, 0.7]), rng.normal(size=(2, 3)),
               a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(3))
    q = unpack(pack(p), 2, 3)
    for x, y in zip(p, q, strict=True):
        assert_allclose(y, x, rtol=1e-12, atol=1e-12)
    r = unpack(pack(p) + 5 * rng.normal(size=pack(p).shape), 2, 3)  # any point is valid
    assert np.isclose(r.weights.sum(), 1) and (r.weights > 0).all()
    assert (np.linalg.eigvalsh(r.covariances) > 0).all()


def test_fit_default_is_accelerated_and_its_trace_is_monotone(data):
    x = data.values
    fit = ppgmm.fit(ppgmm.GMM(3, prior="default"), x, seed=0)
    plain = ppgmm.fit(ppgmm.GMM(3, prior="default"), x, seed=0, accelerate=False)
    trace = fit.idata.sample_stats["objective"].values
    assert len(trace) == fit.attrs["n_iter"] + 1
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))
    assert fit.converged and plain.converged
    assert fit.attrs["n_accelerated"] > 0 and plain.attrs["n_accelerated"] == 0
    # the same optimum; plain EM stops further from it at the default tol (its rate is slow)
    obj = [f.idata.sample_stats["objective"].values[-1] for f in (fit, plain)]
    assert obj[0] >= obj[1] - 1e-9 * abs(obj[1]) and obj[0] == pytest.approx(obj[1], rel=1e-6)
    with pytest.raises(ppgmm.SpecError, match="accelerate should be"):
        ppgmm.fit(ppgmm.GMM(3), x, accelerate="yes")


def test_sklearn_stop_is_never_accelerated(data):
    init = _start(data, 3, "full")
    a = ppgmm.fit(ppgmm.GMM(3, prior=None), data.values, init=init, stop="sklearn", tol=1e-6)
    b = ppgmm.fit(ppgmm.GMM(3, prior=None), data.values, init=init, stop="sklearn", tol=1e-6,
                  accelerate=False)
    assert a.attrs["n_accelerated"] == 0
    assert_allclose(a.params.means, b.params.means, rtol=0, atol=0)


def test_auto_init_finds_separated_clusters_and_is_reproducible():
    """Three well-separated clusters in 50-D (the case where one k-means++ start failed)."""
    rng = np.random.default_rng(0)
    z = rng.integers(3, size=2000)
    x = rng.normal(size=(2000, 50)) + 2.0 * z[:, None]
    for seed in range(3):
        fit = ppgmm.fit(ppgmm.GMM(3), x, seed=seed)
        assert_allclose(np.sort(fit.params.weights), np.sort(np.bincount(z) / 2000), atol=1e-3)
    again = ppgmm.fit(ppgmm.GMM(3), x, seed=2)
    assert_allclose(again.params.means, fit.params.means, rtol=0, atol=0)


def test_on_demand_draws_have_the_exact_conditional_moments(data):
    """Draws beyond those stored come from the conditional mixture at the estimate: their
    means and variances match the closed-form mixture moments (MCSE-scaled z-scores), and a
    KS test per entry does not reject the mixture CDF."""
    fit = ppgmm.fit(ppgmm.GMM(3, prior="default"), data.values, seed=0, imputation_draws=0)
    assert fit.idata.posterior_predictive["x_missing"].sizes["draw"] == 0
    m = 4000
    sims = np.stack(fit.impute(draws=m, seed=1))  # (m, N, D)
    rows, cols = data.missing_index
    x = sims[:, rows, cols]  # (m, M)
    w, mu, var = missing_marginals(fit.params, data)
    mean = (w * mu).sum(1)
    second = (w * (var + mu**2)).sum(1)
    sd = np.sqrt(second - mean**2)
    z_mean = (x.mean(0) - mean) / (sd / np.sqrt(m))
    assert np.abs(z_mean).max() < 4.5
    assert abs(z_mean.mean()) * np.sqrt(len(z_mean)) < 4.0
    for j in range(0, len(rows), max(1, len(rows) // 10)):
        cdf = lambda t, j=j: (w[j] * stats.norm.cdf(  # noqa: E731
            (np.asarray(t)[..., None] - mu[j]) / np.sqrt(var[j]))).sum(-1)
        assert stats.kstest(x[:, j], cdf).pvalue > 1e-4
    observed = sims[:, data.observed]
    assert_allclose(observed, np.broadcast_to(data.values[data.observed], observed.shape))
    again = np.stack(fit.impute(draws=m, seed=1))
    assert_allclose(again, sims, rtol=0, atol=0)


def test_imputation_draws_default_stores_none_above_the_limit(monkeypatch, data):
    from ppgmm.backends import em

    small = ppgmm.fit(ppgmm.GMM(2), data.values, seed=0)
    assert small.idata.posterior_predictive["x_missing"].sizes["draw"] == 20
    monkeypatch.setattr(em, "DRAWS_LIMIT", 10)
    big = ppgmm.fit(ppgmm.GMM(2), data.values, seed=0)
    assert big.idata.posterior_predictive["x_missing"].sizes["draw"] == 0
    assert len(big.impute(draws=3, seed=0)) == 3


@pytest.mark.parametrize("d", [3, 9, 70])
def test_pattern_grouping_equals_grouping_whole_rows(d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(500, d))
    x[rng.random(x.shape) < 0.3] = np.nan
    x = x[~np.isnan(x).all(1)]
    md = MissingData.from_arrays(x, [f"x{j}" for j in range(d)], np.arange(len(x)))
    ref = np.unique(~np.isnan(x), axis=0)
    assert {r.tobytes() for r in ref} == {r.tobytes() for r in md.patterns}
    assert (md.patterns[md.pattern_index] == ~np.isnan(x)).all()
    for p in range(md.n_patterns):
        assert (md.pattern_index[md.order[md.starts[p]:md.starts[p + 1]]] == p).all()
    counts = md.patterns.sum(1)
    assert np.all(np.diff(counts) <= 0)  # most observed first, complete pattern first
