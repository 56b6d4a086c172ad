"""The numerics floor against direct computations: blocks, combination, embedding, permutation."""

from __future__ import annotations

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
