"""The numerics floor against direct computations: blocks, combination, embedding, permutation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import mcar, mixture, scipy_row_loglik
from numpy.testing import assert_allclose
from scipy import stats

import ppgmm
from ppgmm.numerics.alignment import permute
from ppgmm.numerics.em import SuffStats, expected_stats
from ppgmm.numerics.patterns import e_step, embedded_covariance


def _params(rng, k, d):
    a = rng.normal(size=(k, d, d))
    return ppgmm.Params(rng.dirichlet(np.ones(k)), rng.normal(size=(k, d)),
                        a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d))


def _direct_stats(x, params):
    """n_k, ybar_k, W_k by a loop over rows with scipy densities and explicit conditionals."""
    w, mu, cov = params
    k, d = mu.shape
    ll = scipy_row_loglik(x, w, mu, cov)
    nk = np.zeros(k)
    s1 = np.zeros((k, d))
    s2 = np.zeros((k, d, d))
    for row in x:
        o = ~np.isnan(row)
        m = ~o
        logp = np.array([np.log(w[j]) + stats.multivariate_normal(mu[j][o], cov[j][np.ix_(o, o)])
                         .logpdf(row[o]) for j in range(k)])
        r = np.exp(logp - logp.max())
        r /= r.sum()
        for j in range(k):
            xh = row.copy()
            c = np.zeros((d, d))
            if m.any():
                soo = cov[j][np.ix_(o, o)]
                smo = cov[j][np.ix_(m, o)]
                xh[m] = mu[j][m] + smo @ np.linalg.solve(soo, row[o] - mu[j][o])
                c[np.ix_(m, m)] = cov[j][np.ix_(m, m)] - smo @ np.linalg.solve(soo, smo.T)
            nk[j] += r[j]
            s1[j] += r[j] * xh
            s2[j] += r[j] * (np.outer(xh, xh) + c)
    ybar = s1 / nk[:, None]
    return nk, ybar, s2 - nk[:, None, None] * ybar[:, :, None] * ybar[:, None, :], ll.sum()


@pytest.mark.parametrize("block_entries", [10**9, 6144, 12_000])
def test_expected_stats_equal_a_direct_loop_in_any_blocks(block_entries, rng):
    """One block, or blocks of 1024 or 2000 rows that split patterns: the same statistics."""
    x, _, _ = mixture(seed=3, n=2500, d=3, k=2)
    xm = mcar(x, 0.3, seed=4)
    md = ppgmm.prepare(xm)
    params = _params(rng, 2, 3)
    got = expected_stats(params, md.layout, block_entries=block_entries)
    nk, ybar, scatter, ll = _direct_stats(xm, params)
    assert_allclose(got.nk, nk, rtol=1e-10)
    assert_allclose(got.mean, ybar, rtol=1e-10, atol=1e-12)
    assert_allclose(got.scatter, scatter, rtol=1e-9, atol=1e-9)
    assert_allclose(got.loglik, ll, rtol=1e-12)


def test_combining_halves_equals_the_whole(rng):
    x, _, _ = mixture(seed=5, n=400, d=3, k=3)
    xm = mcar(x, 0.2, seed=6)
    params = _params(rng, 3, 3)
    whole = ppgmm.prepare(xm)
    halves = [ppgmm.prepare(xm[:150]), ppgmm.prepare(xm[150:])]
    parts = [SuffStats.of(params, e_step(params, h.layout), h.layout.starts) for h in halves]
    one = SuffStats.of(params, e_step(params, whole.layout), whole.layout.starts)
    both = parts[0].combine(parts[1])
    for a, b in zip(both, one, strict=True):
        assert_allclose(a, b, rtol=1e-11, atol=1e-11)


def test_block_layout_holds_the_rows_and_patterns_it_covers():
    x, _, _ = mixture(seed=7, n=300, d=4, k=2)
    layout = ppgmm.prepare(mcar(x, 0.4, seed=8)).layout
    for a, b in [(0, 300), (0, 1), (17, 93), (150, 300), (299, 300)]:
        sub, (p0, p1) = layout.block(a, b)
        assert_allclose(sub.xs, layout.xs[a:b])
        assert np.array_equal(sub.observed, layout.observed[a:b])
        assert sub.starts[0] == 0 and sub.starts[-1] == b - a
        assert (np.diff(sub.starts) > 0).all()  # every pattern of the block has rows
        assert np.array_equal(sub.patterns, layout.patterns[p0:p1])


def test_embedded_covariance_has_the_observed_blocks_log_determinant(rng):
    d = 4
    patterns = np.array([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
    params = _params(rng, 2, d)
    s = embedded_covariance(patterns, params.covariances)
    for p, o in enumerate(patterns):
        for k in range(2):
            sub = params.covariances[k][np.ix_(o, o)]
            assert_allclose(np.linalg.slogdet(s[p, k])[1], np.linalg.slogdet(sub)[1], rtol=1e-12)
            r = rng.normal(size=d) * o
            assert_allclose(r @ np.linalg.solve(s[p, k], r),
                            r[o] @ np.linalg.solve(sub, r[o]), rtol=1e-10)


def test_permute_relabels_batched_draws(rng):
    params = _params(rng, 3, 2)
    perm = np.array([[2, 0, 1], [1, 2, 0]])
    batch = ppgmm.Params(*(np.stack([a, a]) for a in params))
    out = permute(batch, perm)
    for s in range(2):
        assert_allclose(out.weights[s], params.weights[perm[s]])
        assert_allclose(out.means[s], params.means[perm[s]])
        assert_allclose(out.covariances[s], params.covariances[perm[s]])


# --------------------------------------------------------------------------- degenerate layouts


def _degenerate_case(covariance, d, k, scale, seed=0, n=160):
    """Rows of a K-component mixture at ``scale`` with hard missingness: column 0 missing in
    95% of the rows, rows with one observed entry (of column 0 or another), parameters of
    the covariance type."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d))
    cov = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    if covariance == "tied":
        cov[:] = cov[0]
    elif covariance == "diag":
        cov = np.diagonal(cov, axis1=1, axis2=2)[:, :, None] * np.eye(d)
    elif covariance == "spherical":
        cov = np.trace(cov, axis1=1, axis2=2)[:, None, None] / d * np.eye(d)
    params = ppgmm.Params(rng.dirichlet(np.ones(k)), scale * rng.normal(0, 2, (k, d)),
                          scale**2 * cov)
    x = params.means[rng.integers(0, k, n)] + scale * rng.normal(size=(n, d))
    if d > 1:
        x[rng.random(n) < 0.95, 0] = np.nan
        x[:15, 1:] = np.nan  # column 0 alone
        x[:15, 0] = scale * rng.normal(size=15)
        x[15:30] = np.where(np.arange(d) == d - 1, x[15:30], np.nan)  # last column alone
    return x, params


def _map_step_by_formula(nk, ybar, w, covariance, prior):
    """The MAP M-step of design.md ("The prior"), written out per covariance type."""
    kap, mp, nu, sc = prior.kappa, prior.mean, prior.dof, prior.scale
    k, d = ybar.shape
    means = (nk[:, None] * ybar + kap * mp) / (nk + kap)[:, None]
    b = np.array([kap * nk[j] / (nk[j] + kap) * np.outer(ybar[j] - mp, ybar[j] - mp)
                  for j in range(k)])
    if covariance == "full":
        cov = np.array([(sc + b[j] + w[j]) / (nu + nk[j] + d + 2) for j in range(k)])
    elif covariance == "tied":
        cov = np.array([(sc + b.sum(0) + w.sum(0)) / (nu + nk.sum() + d + 1 + k)] * k)
    elif covariance == "diag":
        cov = np.array([np.diag((sc + np.diag(b[j] + w[j])) / (nu + nk[j] + 3))
                        for j in range(k)])
    else:
        cov = np.array([(sc + np.trace(b[j] + w[j])) / (nu + (nk[j] + 1) * d + 2) * np.eye(d)
                        for j in range(k)])
    return nk / nk.sum(), means, cov


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical", "tied"])
@pytest.mark.parametrize(("d", "k", "scale"), [(1, 1, 1.0), (1, 3, 1e6), (3, 1, 1e-6),
                                               (4, 3, 1.0), (3, 2, 1e6), (3, 2, 1e-6)])
def test_expected_stats_and_m_step_in_degenerate_layouts(covariance, d, k, scale):
    """The E-step without C_pk (sum_p R_pk C_pk = n_k Sigma_k - Sigma_k (sum_p R_pk P_pk)
    Sigma_k) against the row loop with scipy densities and explicit conditional covariances,
    on a column missing in 95% of the rows, one-entry rows and patterns, D=1, K=1 and
    scales 1e6 and 1e-6: statistics to 1e-10 of their scale, and the MLE and MAP M-steps
    against the closed forms of design.md."""
    from ppgmm.numerics.em import m_step
    from ppgmm.prior import resolve_prior

    x, params = _degenerate_case(covariance, d, k, scale)
    md = ppgmm.prepare(x)
    nk, ybar, w, ll = _direct_stats(x, params)
    sd = np.sqrt(np.diagonal(w, axis1=1, axis2=2))
    got = expected_stats(params, md.layout)
    assert_allclose(got.nk, nk, rtol=1e-12)
    assert np.abs(got.mean - ybar).max() <= 1e-10 * scale
    assert np.abs((got.scatter - w) / (sd[:, :, None] * sd[:, None, :])).max() <= 1e-10
    assert_allclose(got.loglik, ll, rtol=1e-12)
    mle = m_step(got, covariance, 0.0, None)
    assert_allclose(mle.weights, nk / nk.sum(), rtol=1e-12)
    assert np.abs(mle.means - ybar).max() <= 1e-10 * scale
    typed = {"full": w / nk[:, None, None], "diag": w / nk[:, None, None] * np.eye(d),
             "spherical": np.trace(w, axis1=1, axis2=2)[:, None, None] / (d * nk[:, None, None])
             * np.eye(d), "tied": np.broadcast_to(w.sum(0) / nk.sum(), (k, d, d))}[covariance]
    assert_allclose(mle.covariances, typed, rtol=1e-9, atol=1e-10 * scale**2)
    prior = resolve_prior(ppgmm.GMM(k, covariance), md)
    for a, b in zip(m_step(got, covariance, 0.0, prior),
                    _map_step_by_formula(nk, ybar, w, covariance, prior), strict=True):
        assert_allclose(a, b, rtol=1e-9, atol=1e-10 * scale**2)


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical", "tied"])
@pytest.mark.parametrize("prior", [None, "default"])
@pytest.mark.parametrize("scale", [1e6, 1e-6])
def test_em_objective_never_decreases_in_degenerate_layouts(covariance, prior, scale):
    """Pure EM (reg_covar=0), plain and SQUAREM, on the layouts above: every recorded
    objective at least the one before (a decrease beyond rounding would raise)."""
    x, _ = _degenerate_case(covariance, 3, 2, scale, seed=1)
    for accelerate in (False, True):
        with warnings.catch_warnings():  # 40 iterations need not reach convergence
            warnings.simplefilter("ignore", ppgmm.ConvergenceWarning)
            fit = ppgmm.fit(ppgmm.GMM(2, covariance, prior=prior), x, seed=0, reg_covar=0.0,
                            max_iter=40, accelerate=accelerate, imputation_draws=1)
        trace = fit.idata.sample_stats["objective"].values
        assert len(trace) > 3 and np.isfinite(trace).all()
        assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))


@pytest.mark.parametrize("offset", [1e3, 1e5])
def test_expected_stats_at_parameters_far_from_the_rows(offset):
    """Means ``offset`` standard deviations away from the rows (a poor start, an
    extrapolated point): the scatter is still the rows' own, centred (scipy row loop;
    NumPy's centred covariance for K=1), to 1e-10. Forming it as U^T U - n vbar vbar^T
    lost it to cancellation (1e-5 at 1e5 standard deviations)."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(300, 3))
    one = ppgmm.Params(np.ones(1), np.full((1, 3), offset), np.eye(3)[None])
    got = expected_stats(one, ppgmm.prepare(x).layout)
    assert_allclose(got.scatter[0], 300 * np.cov(x.T, bias=True), rtol=1e-10, atol=1e-10)
    # as far from every row, so each takes the rows on its side
    two = ppgmm.Params(np.array([0.3, 0.7]), np.array([[offset, 0, 0], [0, offset, 0]]),
                       np.stack([np.eye(3), np.eye(3)]))
    got = expected_stats(two, ppgmm.prepare(x).layout)
    nk, ybar, w, _ = _direct_stats(x, two)
    sd = np.sqrt(np.diagonal(w, axis1=1, axis2=2))
    assert np.abs((got.scatter - w) / (sd[:, :, None] * sd[:, None, :])).max() <= 1e-10


def test_row_loglik_is_exact_for_data_far_from_zero():
    """Data 2**20 + N(0, Sigma) with a correlation of 0.9995 (condition number about 4e3),
    20% missing: each row's log-likelihood equals scipy's on the same rows shifted by the
    (exactly representable) 2**20, to 1e-9. Multiplying the uncentred rows by the precision
    lost the last seven digits (errors near 1e-7)."""
    rng = np.random.default_rng(4)
    cov = np.array([[1.0, 0.9995, 0.3], [0.9995, 1.0, 0.3], [0.3, 0.3, 2.0]])
    z = mcar(rng.multivariate_normal(np.zeros(3), cov, size=500), 0.2, seed=5)
    w, mu = np.array([0.4, 0.6]), np.array([[0.1, 0.2, -0.3], [-0.2, 0.0, 0.5]])
    covs = np.stack([cov, 1.3 * cov])
    shift = 2.0**20
    params = ppgmm.Params(w, mu + shift, covs)
    x = z + shift  # rounded to multiples of 2**-32; x - shift is exact, as is mu + shift - shift
    got = ppgmm.prepare(x)
    ll = got.layout.unsort(e_step(params, got.layout).row_loglik)
    want = scipy_row_loglik(x - shift, w, params.means - shift, covs)
    assert_allclose(ll, want, rtol=0, atol=1e-9)
