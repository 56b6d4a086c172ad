"""The Fraley & Raftery (2007) prior: hyperparameters from their definition, density vs scipy."""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest
from helpers import mcar, mixture, scipy_log_prior, single_gaussian_mle, typed_cov
from numpy.testing import assert_allclose
from scipy import stats

import ppgmm
from ppgmm.numerics.densities import log_prior
from ppgmm.numerics.em import single_gaussian_em
from ppgmm.prior import data_moments, resolve_prior
from ppgmm.spec import ResolvedPrior

COV_TYPES = ["full", "diag", "spherical", "tied"]


def _random_params(rng, k, d, covariance_type):
    w = rng.dirichlet(np.ones(k))
    mu = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    covs = typed_cov(a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(d), covariance_type)
    return ppgmm.Params(w, mu, covs)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("k", [1, 3])
def test_log_prior_equals_scipy_stats(covariance_type, k, rng):
    d = 3
    for _ in range(5):
        params = _random_params(rng, k, d, covariance_type)
        kappa = rng.uniform(0.01, 2.0)
        mean = rng.normal(size=d)
        dof = d + rng.uniform(0.5, 5.0)
        if covariance_type in ("full", "tied"):
            b = rng.normal(size=(d, d))
            scale = b @ b.T + np.eye(d)
        else:
            scale = np.asarray(rng.uniform(0.2, 3.0))
        rp = ResolvedPrior(kappa, mean, dof, scale, covariance_type)
        ref = scipy_log_prior(*params, covariance_type, kappa, mean, dof, scale)
        assert log_prior(params, rp) == pytest.approx(ref, rel=1e-10)


def test_dirichlet_term_is_scipy_flat_dirichlet(rng):
    """The weights term alone: log Dirichlet(1,...,1) density = log Gamma(K)."""
    for k in (2, 3, 5):
        w = rng.dirichlet(np.ones(k))
        assert stats.dirichlet(np.ones(k)).logpdf(w) == pytest.approx(np.log(np.prod(
            np.arange(1, k))), rel=1e-12)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_default_hyperparameters_on_complete_data(covariance_type, k):
    """mu_P = column means, nu = D + 2, kappa = 0.01, Lambda = K^(-2/D) cov(ddof=1),
    s2 = K^(-2/D) trace(cov) / D, as mclust's defaultPrior."""
    x, _, _ = mixture(seed=0, n=100, d=3, k=2)
    d = 3
    rp = resolve_prior(ppgmm.GMM(k, covariance_type), ppgmm.prepare(x))
    v = np.cov(x, rowvar=False, ddof=1)
    f = k ** (-2.0 / d)
    assert rp.kappa == 0.01
    assert rp.dof == d + 2
    assert_allclose(rp.mean, x.mean(0), rtol=1e-12)
    if covariance_type in ("full", "tied"):
        assert_allclose(rp.scale, f * v, rtol=1e-12)
    else:
        assert float(rp.scale) == pytest.approx(f * np.trace(v) / d, rel=1e-12)


def test_default_hyperparameters_with_missing_data_use_single_gaussian_mle():
    """With NaN, mu_P and V come from the one-Gaussian MAR MLE (V rescaled by N/(N-1)),
    found here by BFGS on the observed-data likelihood, not by EM."""
    x, _, _ = mixture(seed=1, n=80, d=3, k=2)
    xm = mcar(x, 0.25, seed=3)
    n, d, k = 80, 3, 2
    mu, cov, _ = single_gaussian_mle(xm)
    f = k ** (-2.0 / d)
    rp = resolve_prior(ppgmm.GMM(k, "full"), ppgmm.prepare(xm))
    assert_allclose(rp.mean, mu, atol=1e-5)
    assert_allclose(rp.scale, f * cov * n / (n - 1), atol=1e-5)
    rp = resolve_prior(ppgmm.GMM(k, "spherical"), ppgmm.prepare(xm))
    assert float(rp.scale) == pytest.approx(f * np.trace(cov) * n / (n - 1) / d, abs=1e-5)
    # it is not the naive estimate
    assert np.abs(rp.mean - np.nanmean(xm, 0)).max() > 1e-3


def test_explicit_prior_fields_override_defaults():
    x, _, _ = mixture(seed=0, n=50, d=2, k=2)
    prior = ppgmm.Prior(shrinkage=0.5, mean=[1.0, 2.0], dof=7.0, scale=[[2.0, 0.1], [0.1, 1.0]])
    rp = resolve_prior(ppgmm.GMM(2, "full", prior=prior), ppgmm.prepare(x))
    assert rp.kappa == 0.5 and rp.dof == 7.0
    assert_allclose(rp.mean, [1.0, 2.0])
    assert_allclose(rp.scale, [[2.0, 0.1], [0.1, 1.0]])
    rp = resolve_prior(ppgmm.GMM(2, "diag", prior=ppgmm.Prior(scale=0.7)), ppgmm.prepare(x))
    assert float(rp.scale) == 0.7
    assert_allclose(rp.mean, x.mean(0))


def test_prior_none_resolves_to_none():
    x, _, _ = mixture(seed=0, n=50, d=2, k=2)
    assert resolve_prior(ppgmm.GMM(2, prior=None), ppgmm.prepare(x)) is None


def test_prior_shape_errors():
    x, _, _ = mixture(seed=0, n=50, d=2, k=2)
    md = ppgmm.prepare(x)
    with pytest.raises(ValueError, match="scale should have the shape"):
        resolve_prior(ppgmm.GMM(2, "full", prior=ppgmm.Prior(scale=1.0)), md)
    with pytest.raises(ValueError, match="scale should have the shape"):
        resolve_prior(ppgmm.GMM(2, "diag", prior=ppgmm.Prior(scale=np.eye(2))), md)
    with pytest.raises(ValueError, match="mean should have the shape"):
        resolve_prior(ppgmm.GMM(2, "full", prior=ppgmm.Prior(mean=[0.0, 0.0, 0.0])), md)


@pytest.mark.parametrize("kw", [{"shrinkage": 0.0}, {"shrinkage": -1.0}, {"dof": 0.0},
                                {"shrinkage": np.nan}, {"dof": np.inf}])
def test_prior_validation(kw):
    with pytest.raises(ppgmm.SpecError):
        ppgmm.Prior(**kw)
    assert issubclass(ppgmm.SpecError, ValueError)


def _unpack(theta, covariance_type, k, d):
    """Weights (softmax), means and covariances of the type from unconstrained numbers."""
    logits = np.concatenate([[0.0], theta[: k - 1]])
    w = np.exp(logits - logits.max())
    w /= w.sum()
    pos = k - 1
    mu = theta[pos: pos + k * d].reshape(k, d)
    pos += k * d
    if covariance_type in ("full", "tied"):
        n_l = d * (d + 1) // 2
        m = 1 if covariance_type == "tied" else k
        rows, cols = np.tril_indices(d)
        covs = []
        for j in range(m):
            lmat = np.zeros((d, d))
            lmat[rows, cols] = theta[pos + j * n_l: pos + (j + 1) * n_l]
            lmat[np.diag_indices(d)] = np.exp(np.diag(lmat))
            covs.append(lmat @ lmat.T)
        cov = np.stack(covs * (k if covariance_type == "tied" else 1))
    elif covariance_type == "diag":
        cov = np.stack([np.diag(np.exp(v)) for v in theta[pos: pos + k * d].reshape(k, d)])
    else:
        cov = np.exp(theta[pos: pos + k])[:, None, None] * np.eye(d)
    return w, mu, cov


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_map_update_maximises_the_expected_log_posterior(covariance_type):
    """One MAP M-step from a given start on complete data is the maximiser of the expected
    complete-data log posterior, sum_ik r_ik log(w_k N(x_i | mu_k, Sigma_k)) + log prior,
    found here by BFGS on scipy.stats densities (r from the start, by scipy too)."""
    from scipy.optimize import minimize

    x, _, _ = mixture(seed=2, n=60, d=2, k=2)
    n, d = x.shape
    k = 2
    w0 = np.array([0.4, 0.6])
    mu0 = x[[0, 30]]
    cov0 = typed_cov(np.stack([np.eye(d), 2 * np.eye(d)]), covariance_type)
    dens = np.stack([w0[j] * stats.multivariate_normal(mu0[j], cov0[j]).pdf(x)
                     for j in range(k)], 1)
    r = dens / dens.sum(1, keepdims=True)
    v = np.cov(x, rowvar=False)
    f = k ** (-2 / d)
    scale = f * v if covariance_type in ("full", "tied") else f * np.trace(v) / d

    def negative(theta):
        w, mu, cov = _unpack(theta, covariance_type, k, d)
        q = sum((r[:, j] * (np.log(w[j]) + stats.multivariate_normal(mu[j], cov[j])
                            .logpdf(x))).sum() for j in range(k))
        return -(q + scipy_log_prior(w, mu, cov, covariance_type, 0.01, x.mean(0), d + 2,
                                     scale))

    n_cov = {"full": k * 3, "tied": 3, "diag": k * d, "spherical": k}[covariance_type]
    theta0 = np.concatenate([[0.0], mu0.ravel(), np.zeros(n_cov)])
    opt = minimize(negative, theta0, method="BFGS", options={"gtol": 1e-9, "maxiter": 5000})
    w_opt, mu_opt, cov_opt = _unpack(opt.x, covariance_type, k, d)
    with pytest.warns(ppgmm.ConvergenceWarning, match="max_iter=1"):
        fit = ppgmm.fit(ppgmm.GMM(k, covariance_type), x, max_iter=1, tol=0.0,
                        imputation_draws=1,
                        init={"weights": w0, "means": mu0, "covariances": cov0})
    # BFGS stops at gradient 1e-9: parameters agree to ~1e-7; a wrong denominator (nu + n_k
    # + d + 1 for + 2) moves the covariances by ~2%
    assert_allclose(fit.params.weights, w_opt, rtol=1e-6)
    assert_allclose(fit.params.means, mu_opt, rtol=1e-6, atol=1e-6)
    assert_allclose(fit.params.covariances, cov_opt, rtol=1e-6, atol=1e-6)


def test_degenerate_single_gaussian_fit_is_a_data_error():
    """A column seen in 2 of 30 rows: the one-Gaussian MAR likelihood behind the default
    prior is unbounded. The user gets a DataError naming the column, not a 'bug' error."""
    x = np.random.default_rng(0).normal(size=(30, 3))
    x[2:, 1] = np.nan
    with pytest.warns(UserWarning, match=r"very few of the 30 rows \('x1' in 2\)"), \
            pytest.raises(ppgmm.DataError, match=r"'x1' \(2 rows\) are observed in too few rows"):
        ppgmm.fit(ppgmm.GMM(2), x, seed=0)
    # the suggested fixes work; the column seen twice leaves a flat direction, along which EM
    # creeps (about 1,300 E-steps to its stopping rule)
    with pytest.warns(UserWarning, match="very few"):
        fit = ppgmm.fit(ppgmm.GMM(2, prior=ppgmm.Prior(mean=[0.0] * 3, scale=np.eye(3))), x,
                        seed=0, max_iter=5000)
    assert np.isfinite(fit.loglik) and fit.converged


def test_single_gaussian_fit_without_a_maximum_is_not_returned():
    """A column seen in 3 of 120 rows beside two others: regressed on them through 3 points,
    its conditional variance goes to 0 and the one-Gaussian MAR likelihood has no maximum.
    EM creeps towards it without raising; where it stopped (at max_iter) used to become the
    default prior's scale, silently. Now full covariances get the DataError naming the
    column, and diagonal ones the column-wise moments (numpy's), with a warning."""
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal([0, 0, 0], [[1, .5, .2], [.5, 1, .3], [.2, .3, 1]], size=120)
    x[3:, 2] = np.nan
    md = ppgmm.prepare(x)
    with pytest.raises(ppgmm.DataError, match=r"'x2' \(3 rows\) are observed in too few rows"):
        data_moments(md, "full")
    with pytest.warns(UserWarning, match="come from each column's observed mean and variance"):
        mean, scale = data_moments(md, "diag")
    assert_allclose(mean, np.nanmean(x, axis=0), rtol=1e-15)
    assert_allclose(scale, np.diag(np.nanvar(x, axis=0, ddof=1)), rtol=1e-15)
    # the failure is remembered per data object without keeping the data alive
    ref = weakref.ref(md)
    del md
    gc.collect()
    assert ref() is None


def _monotone_mle(x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The one-Gaussian MLE in closed form when x0, x1 are complete and x2 is seen in the
    first ``m`` rows (a monotone pattern): the moments of (x0, x1) over all rows, and the
    least-squares regression of x2 on them over the ``m`` rows (residual variance RSS / m)."""
    z = x[:, :2]
    mu, s = z.mean(axis=0), np.cov(z, rowvar=False, ddof=0)
    a = np.c_[np.ones(m), z[:m]]
    b = np.linalg.lstsq(a, x[:m, 2], rcond=None)[0]
    s2 = np.sum((x[:m, 2] - a @ b) ** 2) / m
    mean = np.r_[mu, b[0] + b[1:] @ mu]
    cov = np.zeros((3, 3))
    cov[:2, :2] = s
    cov[2, :2] = cov[:2, 2] = b[1:] @ s
    cov[2, 2] = s2 + b[1:] @ s @ b[1:]
    return mean, cov


@pytest.mark.parametrize("seed", [3, 1])
def test_slow_single_gaussian_fit_with_a_maximum_is_returned(seed):
    """x2 seen in 4 of 200 rows beside two complete columns: the MLE exists (a regression
    through 4 points with 3 coefficients) and has a closed form, but plain EM is still far
    from it after its 10,000 steps. Seed 3: the accelerated continuation converges to it.
    Seed 1: it does not converge but nears it, and the iterate, far from singular, is
    returned (no 'no maximum' error, which an iteration count alone gave)."""
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal([0, 0, 0], [[1, .5, .2], [.5, 1, .3], [.2, .3, 1]], size=200)
    x[4:, 2] = np.nan
    md = ppgmm.prepare(x)
    mean, cov = single_gaussian_em(np.nanmean(x, axis=0), md.var, md.layout)
    want_mean, want_cov = _monotone_mle(x, 4)
    tol = 1e-6 if seed == 3 else 0.03  # converged: to its stopping rule; else nearing it
    assert_allclose(mean, want_mean, rtol=tol, atol=tol)
    assert_allclose(cov, want_cov, rtol=tol, atol=tol)


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_constant_column_is_a_data_error_naming_it(covariance_type, missing):
    """The default prior's scale is the data's covariance: singular with a constant column.
    A DataError names the column (before, full gave a LinAlgError and diag a NaN fit)."""
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[:, 2] = 7.0
    if missing:
        x = mcar(x, 0.2)
    with pytest.raises(ppgmm.DataError, match=r"\['x2'\] take one value"):
        ppgmm.fit(ppgmm.GMM(2, covariance_type), x, seed=0)
    # the MLE still runs, held up by reg_covar along the constant column, and says so; a
    # spherical covariance shares one variance over the columns, so it stays proper
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fit = ppgmm.fit(ppgmm.GMM(2, covariance_type, prior=None), x, seed=0)
    said = [str(w.message) for w in rec if "collapsed" in str(w.message)]
    assert len(said) == (covariance_type != "spherical")
    assert all("along 'x2'" in m for m in said)
    assert np.isfinite(fit.loglik)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_linearly_dependent_columns_are_a_data_error(covariance_type):
    x = np.random.default_rng(0).normal(size=(40, 2))
    x = np.c_[x, x[:, 0] - 2.0 * x[:, 1]]
    with pytest.raises(ppgmm.DataError, match=r"singular \(rank 2 of 3\)"):
        ppgmm.fit(ppgmm.GMM(2, covariance_type), x, seed=0)
    # a diagonal prior needs only the trace
    assert np.isfinite(ppgmm.fit(ppgmm.GMM(2, "diag"), x, seed=0).loglik)


def test_one_row_is_too_few_for_the_default_prior():
    with pytest.raises(ppgmm.DataError, match="at least 2 rows, but got 1"):
        ppgmm.fit(ppgmm.GMM(1, "diag"), np.array([[1.0, 2.0]]), seed=0)


def test_columns_in_very_different_units_are_not_singular():
    """The singularity check is on correlations, so units of 1e6 and 1e-6 pass."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * np.array([1e6, 1e-6, 1.0])
    hyper = resolve_prior(ppgmm.GMM(2), ppgmm.prepare(x))
    assert_allclose(hyper.scale, 0.5 ** (2 / 3) * np.cov(x, rowvar=False), rtol=1e-12)


def test_improper_explicit_prior_is_a_spec_error():
    x, _, _ = mixture(seed=0, n=50, d=3, k=2)
    md = ppgmm.prepare(x)
    with pytest.raises(ppgmm.SpecError, match="positive definite"):
        resolve_prior(ppgmm.GMM(2, prior=ppgmm.Prior(scale=np.diag([1.0, 0.0, 1.0]))), md)
    with pytest.raises(ppgmm.SpecError, match="symmetric"):
        resolve_prior(ppgmm.GMM(2, prior=ppgmm.Prior(scale=[[1, 0.5, 0], [0, 1, 0],
                                                             [0, 0, 1]])), md)
    with pytest.raises(ppgmm.SpecError, match="dof should exceed d - 1 = 2"):
        resolve_prior(ppgmm.GMM(2, prior=ppgmm.Prior(dof=1.5)), md)


def test_default_diag_prior_swamping_a_small_column_is_named():
    """Column sds 100 and 1: s2 = f tr(V) / D (f = 1/2 at K = 2, D = 2) is about 2,500
    while 100 rows per component carry a scatter of about 100 in the small column, so the
    prior makes up s2 / (s2 + n_k v) of its variance estimates (computed here from np.var),
    and it shows: the fitted sds of that column are inflated against the fit of the
    standardised data mapped back."""
    rng = np.random.default_rng(4)
    x = np.vstack([rng.normal(0.0, 1.0, (100, 2)), rng.normal(4.0, 1.0, (100, 2))])
    x *= np.array([100.0, 1.0])
    s2 = 0.5 * np.trace(np.cov(x, rowvar=False)) / 2
    share = s2 / (s2 + 100 * np.var(x[:, 1]))
    with pytest.warns(UserWarning, match=rf"column 'x1' has variance .* about {share:.0%} of"):
        raw = ppgmm.fit(ppgmm.GMM(2, "diag"), x, seed=0)
    sd = x.std(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none on similar scales, nor for full covariances
        std = ppgmm.fit(ppgmm.GMM(2, "diag"), x / sd, seed=0)
        ppgmm.fit(ppgmm.GMM(2), x, seed=0)
        ppgmm.fit(ppgmm.GMM(2, "diag", prior=ppgmm.Prior(scale=1.0)), x, seed=0)
    small = np.sort(raw.params.covariances[:, 1, 1])
    assert np.all(small > 1.5 * np.sort(std.params.covariances[:, 1, 1] * sd[1] ** 2))


def test_default_diag_prior_weight_from_few_rows_alone_is_not_named():
    """Standardised columns, 3 rows per component: the prior carries about 1/4 of every
    column's variance estimates alike (its intended weight at small N), nothing to rescale;
    one column 85% missing in other units is named, by its observed count."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 10))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ppgmm.fit(ppgmm.GMM(4, "diag"), (z - z.mean(0)) / z.std(0), seed=0)
    assert not any("prior for covariance='diag'" in str(w.message) for w in rec)
    x = np.column_stack([rng.normal(0, 10, 400), rng.normal(0, 1, 400)])
    x[rng.random(400) < 0.85, 1] = np.nan
    with pytest.warns(UserWarning, match=r"'x1' .* about (\d+) observed values per component"):
        ppgmm.fit(ppgmm.GMM(2, "diag"), x, seed=0)
