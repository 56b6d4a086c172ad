"""The standardised scale: exact maps of data, parameters and prior, and fits that do not depend
on the data's units.

The affine maps are checked against direct computation (scipy densities of the original
data, the change-of-variables rule for the prior); the fits of ``a * X + b`` against the
mapped fits of ``X`` (EM to 1e-8; ADVI and NUTS within Monte Carlo error).
"""

import warnings

import numpy as np
import pytest

import ppgmm
from ppgmm import GMM, Prior
from ppgmm.data import prepare
from ppgmm.numerics import affine
from ppgmm.numerics.densities import log_prior
from ppgmm.prior import resolve_prior
from ppgmm.spec import Params
from tests.helpers import mcar, mixture, scipy_row_loglik

#: columns in very different units
SCALE = np.array([1e-3, 1e4, 2.0])
SHIFT = np.array([5.0, -3e4, 0.1])
#: milder units for scipy's densities, whose eigenvalue cut-off treats a covariance of
#: condition 1e14 as singular
MILD = np.array([0.1, 100.0, 2.0])
COVS = ["full", "tied", "diag", "spherical"]


def random_params(rng, k, d, covariance):
    w = rng.dirichlet(np.ones(k))
    mu = rng.normal(size=(k, d))
    if covariance in ("full", "tied"):
        a = rng.normal(size=(k, d, d))
        cov = a @ np.swapaxes(a, 1, 2) + np.eye(d)
        if covariance == "tied":
            cov[:] = cov[0]
    elif covariance == "diag":
        cov = rng.uniform(0.5, 2.0, (k, d))[:, :, None] * np.eye(d)
    else:
        cov = rng.uniform(0.5, 2.0, (k, 1, 1)) * np.eye(d)
    return Params(w, mu, cov)


def prior_log_jacobian(a, k, d, covariance):
    r""":math:`\log|\partial\theta^z/\partial\theta|` of the free parameters (means and the
    free covariance entries; the weights do not change), written out per type."""
    ls = np.log(a.scale)
    means = -k * ls.sum()
    if covariance == "full":  # entries i <= j of Sigma_z = Sigma_ij / (s_i s_j)
        return means - k * (d + 1) * ls.sum()
    if covariance == "tied":
        return means - (d + 1) * ls.sum()
    if covariance == "diag":
        return means - k * 2 * ls.sum()
    return means - k * 2 * ls[0]


@pytest.fixture(scope="module")
def data():
    x, _, _ = mixture(seed=4, n=200, d=3, k=2, sep=5.0)
    return mcar(x, 0.15, seed=2)


@pytest.mark.parametrize("covariance", COVS)
def test_affine_maps_are_exact(data, covariance, rng):
    """Parameters round-trip; the likelihood and prior transform with their Jacobians."""
    x = SHIFT + MILD * data
    md = prepare(x)
    a = affine.standardising(md, covariance)
    z = affine.data_to_z(md, a)
    np.testing.assert_allclose(np.nanmean(z.values, 0), 0, atol=1e-12)
    if covariance != "spherical":
        np.testing.assert_allclose(np.nanstd(z.values, 0, ddof=1), 1, rtol=1e-12)
    else:
        assert np.allclose(a.scale, a.scale[0])
    pz = random_params(rng, 2, 3, covariance)
    p = affine.params_from_z(pz, a)
    back = affine.params_to_z(p, a)
    for u, v in zip(back, pz, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)
    # the data's log-likelihood in its units, by scipy, from the z-scale one and the Jacobian
    ll_z = scipy_row_loglik(z.values, *pz)
    ll_x = scipy_row_loglik(x, *p)
    np.testing.assert_allclose(ll_z - affine.log_jacobian(md.observed, a), ll_x, rtol=1e-10)
    # the prior: log p(theta) = log p_z(theta_z) + log |d theta_z / d theta|
    rp = resolve_prior(GMM(2, covariance), md)
    rpz = affine.prior_to_z(rp, a)
    lhs = log_prior(p, rp)
    rhs = log_prior(pz, rpz) + prior_log_jacobian(a, 2, 3, covariance)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


def test_spherical_prior_needs_a_common_scale(data):
    md = prepare(data)
    rp = resolve_prior(GMM(2, "spherical"), md)
    with pytest.raises(ValueError, match="one common scale"):
        affine.prior_to_z(rp, affine.standardising(md, "full"))


@pytest.mark.parametrize("with_prior", [True, False])
def test_em_is_equivariant(data, with_prior):
    """EM of a * X + b equals the mapped EM of X iterate by iterate: from mapped starts, 12
    iterations each (no reg_covar; both stop at rounding-level gains, at different
    iterations, beyond about 15), to 1e-8 in the units of each column.

    With a prior, the default prior's hyperparameters of X are given explicitly, mapped for
    a * X + b (on incomplete data they come from an iterative one-component fit, equivariant
    only to that fit's tolerance)."""
    from ppgmm.backends.em import fit_em

    a = affine.Affine(SHIFT, SCALE)
    spec_x = spec_y = GMM(2, "full", None)
    if with_prior:
        rp = resolve_prior(GMM(2, "full"), prepare(data))
        spec_x = GMM(2, "full", Prior(mean=rp.mean, scale=rp.scale))
        mapped = affine.params_from_z(Params(np.ones(1), rp.mean[None], rp.scale[None]), a)
        spec_y = GMM(2, "full", Prior(mean=mapped.means[0], scale=mapped.covariances[0]))
    p0 = fit_em(spec_x, prepare(data), seed=0, max_iter=3, warn=False).params
    opts = {"reg_covar": 0.0, "tol": 0.0, "max_iter": 12, "warn": False}
    fx = fit_em(spec_x, prepare(data), init=p0, **opts)
    fy = fit_em(spec_y, prepare(SHIFT + SCALE * data), init=affine.params_from_z(p0, a),
                **opts)
    assert fx.run.n_iter == fy.run.n_iter == 12
    for u, v in zip(affine.params_to_z(fy.params, a), fx.params, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-8, atol=1e-8)


@pytest.fixture(scope="module")
def advi_pair(data):
    # full: mclust's default prior for diag (one s2 = f tr(V) / D for every column) is itself
    # not equivariant under per-column scaling, so diag fits of X and a * X + b differ
    spec = GMM(2, "full")
    fits = []
    for x in (data, SHIFT + SCALE * data):
        fits.append(ppgmm.fit(spec, x, backend="advi", seed=5, n_iter=20_000, window=500,
                              draws=400))
    return fits


def test_advi_is_equivariant(advi_pair):
    """ADVI of a * X + b is the mapped ADVI of X: the posterior means agree within the
    optimisation's Monte Carlo noise (a quarter of a posterior sd), and the ELBO differs by
    the Jacobian."""
    from ppgmm.numerics.alignment import align

    fx, fy = advi_pair
    a = affine.Affine(SHIFT, SCALE)
    px = affine.draws_from_z(_draws(fx), a)
    # the two fits' labels are each EM start's, which need not agree: align before comparing
    py, _ = align(_draws(fy), px.mean_params())
    for name in ("weights", "means", "covariances"):
        u = getattr(px, name)
        v = getattr(py, name)
        sd = v.std(axis=(0, 1)) + 1e-300
        err = np.abs(u.mean(axis=(0, 1)) - v.mean(axis=(0, 1))) / sd
        # two ADVI runs whose EM starts differ (here in labelling) differ by their Monte
        # Carlo optimisation noise, up to 0.15 posterior sd here; a wrong map back (a missed
        # scale or shift) moves means by many sd
        assert err[np.isfinite(err) & (sd > 1e-200)].max() < 0.25, name
    n_obs = fx.data.observed.sum(0)
    shift = (n_obs * np.log(SCALE)).sum()
    assert fy.attrs["elbo_final"] == pytest.approx(fx.attrs["elbo_final"] - shift, abs=0.5)


def _draws(fit):
    from ppgmm.spec import Draws

    return Draws.from_dataset(fit.idata.posterior)


def test_nuts_on_raw_units_mixes_and_agrees(data):
    """NUTS on columns in units 1e-3 and 1e4 mixes as on the original and its posterior means,
    mapped back, agree with those on the original data by MCSE-scaled z-scores."""
    import arviz as az

    spec = GMM(2, "full")
    fits = []
    for x in (data, SHIFT + SCALE * data):
        with warnings.catch_warnings(record=True):  # judged below, not by the warnings
            warnings.simplefilter("always")
            fits.append(ppgmm.fit(spec, x, backend="nuts", seed=2, draws=500, tune=500))
    fx, fy = fits
    # the max over ~20 entries of a 2 x 500 run, on each scale: the two runs start from
    # standardised data equal only to rounding, which NUTS amplifies, so their R-hats are two
    # draws of the same statistic (1.007 and 1.018 in one fresh-clone run), each held to
    # the bound rather than to the other
    for f in (fx, fy):
        assert f.attrs["rhat_max"] <= 1.02 and f.attrs["treedepth_hits"] == 0
    a = affine.Affine(SHIFT, SCALE)
    mx = affine.draws_from_z(_draws(fx), a)
    for name in ("means", "covariances"):
        u = getattr(mx, name)
        v = fy.idata.posterior[name].transpose("chain", "draw", ...).values
        scale = (SCALE[:, None] * SCALE[None, :]) if name == "covariances" else SCALE
        mcse_x = az.mcse(fx.idata.posterior[[name]], method="mean")[name].values * np.abs(scale)
        mcse_y = az.mcse(fy.idata.posterior[[name]], method="mean")[name].values
        z = (u.mean(axis=(0, 1)) - v.mean(axis=(0, 1))) / np.sqrt(mcse_x**2 + mcse_y**2)
        # two independent chains of the same posterior: |z| < 4.5 over a few dozen entries
        assert np.abs(z).max() < 4.5, (name, z)
