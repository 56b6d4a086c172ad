"""The NUTS and ADVI backends against exact posteriors, the EM estimate and each other.

Monte Carlo checks are z-scores against the Monte Carlo standard error (MCSE) reported by
ArviZ, with the extra allowance each comparison needs stated where it is made. Fits are
shared through module-scoped fixtures and kept small.
"""

import json
import logging
import warnings

import arviz as az
import numpy as np
import pytest

import ppgmm
from ppgmm import GMM, ConvergenceWarning, Prior, SpecError
from ppgmm.backends.em import fit_em
from ppgmm.backends.nuts import diagnose
from ppgmm.data import prepare
from ppgmm.numerics.diagnostics import modes_differ
from ppgmm.spec import Draws, Params

PARAMS = ["weights", "means", "covariances"]


def simulate(rng, n, weights, means, covs, missing=0.2):
    """Mixture rows with entries missing completely at random (every row keeps one)."""
    z = rng.choice(len(weights), size=n, p=weights)
    chol = np.linalg.cholesky(covs)
    x = means[z] + np.einsum("nde,ne->nd", chol[z], rng.standard_normal((n, means.shape[1])))
    mask = rng.random(x.shape) < missing
    keep = rng.integers(0, x.shape[1], size=n)
    mask[np.arange(n), keep] &= ~mask.all(axis=1)
    x[mask] = np.nan
    return x


def summary(fit):
    """Posterior mean, sd and MCSE of the mean of every parameter, as flat arrays."""
    post = fit.idata.posterior[PARAMS]
    mean = np.concatenate([post[v].mean(("chain", "draw")).values.ravel() for v in PARAMS])
    sd = np.concatenate([post[v].std(("chain", "draw")).values.ravel() for v in PARAMS])
    if post.sizes["chain"] * post.sizes["draw"] > 1:
        mc = az.mcse(post, method="mean")
        mcse = np.concatenate([mc[v].values.ravel() for v in PARAMS])
    else:
        mcse = np.zeros_like(mean)
    return mean, sd, mcse


def flat(params):
    return np.concatenate([np.ravel(a) for a in params])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def three_clusters():
    rng = np.random.default_rng(3)
    means = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    covs = np.array([np.eye(2), [[1.0, 0.4], [0.4, 1.0]], np.diag([1.5, 0.5])])
    return simulate(rng, 300, np.array([0.4, 0.35, 0.25]), means, covs)


@pytest.fixture(scope="module")
def switched(three_clusters):
    """Four chains started in four different labellings of the EM fit."""
    spec = GMM(3, "full")
    em = fit_em(spec, prepare(three_clusters), seed=0, n_init=3).params
    perms = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (1, 0, 2)]
    starts = [Params(em.weights[list(p)], em.means[list(p)], em.covariances[list(p)])
              for p in perms]
    fit = ppgmm.fit(spec, three_clusters, backend="nuts", seed=1, chains=4, draws=500,
                    tune=500, init=starts)
    return fit, em


@pytest.fixture(scope="module")
def large_n():
    """N=5000, D=2, K=2, 20% MCAR: NUTS, full-rank ADVI and the MAP-EM estimate."""
    rng = np.random.default_rng(11)
    means = np.array([[0.0, 0.0], [3.0, 2.0]])
    covs = np.array([[[1.0, 0.5], [0.5, 1.5]], [[0.7, -0.2], [-0.2, 0.6]]])
    x = simulate(rng, 5000, np.array([0.6, 0.4]), means, covs)
    spec = GMM(2, "full")
    em = ppgmm.fit(spec, x, backend="em", seed=0, n_init=3)
    # time_warning=None: on a loaded machine the run-time estimate can pass the threshold,
    # and the warning is not what this fixture is about (tests/test_nuts_runtime.py is)
    nuts = ppgmm.fit(spec, x, backend="nuts", seed=2, draws=1000, tune=500, reference=em,
                     time_warning=None)
    advi = ppgmm.fit(spec, x, backend="advi", seed=3, method="fullrank_advi", reference=em)
    return em, nuts, advi


# --------------------------------------------------------------------------- NUTS


def test_nuts_agrees_with_map_em_at_large_n(large_n):
    """Posterior means sit within 4 MCSE + 0.25 posterior sd of the MAP.

    At this N the posterior is close to normal, so its mean and its mode (the MAP that EM
    finds) differ only by the skewness of the marginals: for a variance with n_k rows the
    inverse-Wishart mean and mode differ by a factor (2D + 2)/n_k, 0.1 posterior sd here, and
    the means and weights are more symmetric still. 0.25 sd bounds that gap with room; the
    4 MCSE covers the Monte Carlo error of the posterior mean.
    """
    em, nuts, _ = large_n
    assert nuts.attrs["converged"] == 1
    assert nuts.attrs["divergences"] == 0
    mean, sd, mcse = summary(nuts)
    target = flat(em.params)
    band = 4 * mcse + 0.25 * sd
    assert np.all(np.abs(mean - target) <= band), np.abs(mean - target) / band


def test_fullrank_advi_close_to_nuts(large_n):
    """Full-rank ADVI means within 0.5 NUTS sd (+ 4 MCSE) and sds within 30%.

    A Gaussian on the unconstrained scale is nearly exact for this near-normal posterior;
    0.5 sd allows for the transform's skew (log-variances, simplex) that ADVI cannot bend.
    """
    _, nuts, advi = large_n
    assert advi.attrs["converged"] == 1
    mean, sd, mcse = summary(nuts)
    a_mean, a_sd, _ = summary(advi)
    free = sd > 0  # the two off-diagonal copies of each covariance are the same scalar
    assert np.all(np.abs(a_mean - mean)[free] <= 0.5 * sd[free] + 4 * mcse[free])
    ratio = a_sd[free] / sd[free]
    assert np.all((ratio > 0.7) & (ratio < 1.3)), ratio


def test_chains_in_different_labellings_are_aligned(switched):
    fit, em = switched
    a = fit.attrs
    assert a["rhat_max_raw"] > 1.5  # four labellings: the raw draws do not mix
    assert a["rhat_max"] < 1.01
    assert a["modes_differ"] == 0
    perm = fit.idata.sample_stats["permutation"]
    assert perm.dims == ("chain", "draw", "component")
    # three chains started relabelled; alignment undid exactly their start permutations
    # (nutpie's threads take the starts in the order they ask, so which chain got which
    # start may vary; the set of permutations may not)
    assert a["relabelled_draws"] >= 3 * 500
    first = {tuple(p) for p in perm.isel(draw=0).values.tolist()}
    assert first == {(0, 1, 2), (2, 0, 1), (1, 2, 0), (1, 0, 2)}
    # aligned posterior mean is near the EM fit the first chain started from
    np.testing.assert_allclose(fit.params.means, em.means, atol=0.3)


def test_nuts_result_schema_and_round_trip(switched, tmp_path):
    fit = switched[0]
    assert fit.attrs["engine"] == "nutpie"
    idata = fit.idata
    post = idata.posterior
    assert post["weights"].dims == ("chain", "draw", "component")
    assert post["covariances"].dims[-2:] == ("feature", "feature_")
    assert post["imputed_mean"].dims == ("chain", "draw", "missing")
    assert idata.posterior_predictive["x_missing"].dims == ("chain", "draw", "missing")
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    for name in ("diverging", "tree_depth", "permutation"):
        assert set(idata.sample_stats[name].dims) >= {"chain", "draw"}
    assert "estimate" not in idata.groups()
    for key in ("engine", "draws", "tune", "chains", "target_accept", "divergences",
                "treedepth_hits", "rhat_max_raw", "rhat_max", "ess_bulk_min",
                "relabelled_draws", "modes_differ", "seed", "converged"):
        assert isinstance(post.attrs[key], str | int | float), key
    assert json.loads(post.attrs["warnings"]) == []
    # point() is the aligned posterior mean
    np.testing.assert_allclose(fit.point()["means"].values, post["means"].mean(("chain", "draw")))
    # observed entries of a predictive draw are the data; LOO runs on the row log-likelihood
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    path = tmp_path / "nuts.nc"
    fit.to_netcdf(path)
    back = ppgmm.load(path)
    assert back.attrs == fit.attrs
    for group in idata.groups():
        assert back.idata[group].equals(idata[group]), group


def test_conjugate_single_gaussian_posterior_is_exact():
    """K=1, complete data: the normal-inverse-Wishart posterior is known in closed form.

    With kappa_n = kappa + n, mu_n = (kappa mu_P + n xbar)/kappa_n, nu_n = nu + n and
    Psi_n = Lambda + S + kappa n / kappa_n (xbar - mu_P)(xbar - mu_P)^T:
    E[Sigma] = Psi_n / (nu_n - D - 1), E[mu] = mu_n, Cov[mu] = Psi_n / (kappa_n (nu_n - D - 1)).
    """
    rng = np.random.default_rng(5)
    x = rng.multivariate_normal([1.0, -2.0], [[2.0, 0.6], [0.6, 1.0]], size=40)
    prior = Prior(shrinkage=5.0, mean=(0.0, 0.0), dof=6.0, scale=[[2.0, 0.3], [0.3, 1.0]])
    fit = ppgmm.fit(GMM(1, "full", prior=prior), x, backend="nuts", seed=4, draws=1000,
                    tune=500)
    n, d = x.shape
    xbar = x.mean(0)
    s = (x - xbar).T @ (x - xbar)
    kn, nun = 5.0 + n, 6.0 + n
    mun = n * xbar / kn  # (kappa mu_P + n xbar) / kappa_n with mu_P = 0
    psin = np.array(prior.scale) + s + 5.0 * n / kn * np.outer(xbar, xbar)
    e_sigma = psin / (nun - d - 1)
    sd_mu = np.sqrt(np.diag(psin) / (kn * (nun - d - 1)))
    post = fit.idata.posterior
    mc = az.mcse(post[["means", "covariances"]], method="mean")
    z_mu = (post["means"].mean(("chain", "draw")).values[0] - mun) / mc["means"].values[0]
    z_sig = (post["covariances"].mean(("chain", "draw")).values[0] - e_sigma) / mc[
        "covariances"].values[0]
    assert np.all(np.abs(z_mu) < 4), z_mu
    assert np.all(np.abs(z_sig) < 4), z_sig
    ratio = post["means"].std(("chain", "draw")).values[0] / sd_mu
    assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio
    np.testing.assert_allclose(post["weights"].values, 1.0)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_conjugate_single_gaussian_posterior_is_exact_for_variances(covariance_type):
    """K=1, complete data, normal-inverse-gamma: exact posterior moments.

    Integrating the mean out, sigma2 | x ~ IG(a_n, b_n) with a_n = nu/2 + n m / 2 and
    b_n = s2/2 + (S + kappa n / kappa_n (xbar - mu_P)^2) / 2, where m = 1 and S, the
    squared deviations, per feature (diag), or m = D and S, (xbar - mu_P)^2 summed over
    features (spherical); E[sigma2] = b_n / (a_n - 1), E[mu] = mu_n and
    sd[mu] = sqrt(b_n / ((a_n - 1) kappa_n)).
    """
    rng = np.random.default_rng(6)
    x = rng.normal([1.0, -2.0], [1.5, 0.7], size=(40, 2))
    kappa, nu, s2 = 5.0, 6.0, 1.5
    prior = Prior(shrinkage=kappa, mean=(0.0, 0.0), dof=nu, scale=s2)
    fit = ppgmm.fit(GMM(1, covariance_type, prior=prior), x, backend="nuts", seed=4,
                    draws=1000, tune=500)
    n, d = x.shape
    xbar = x.mean(0)
    kn = kappa + n
    sq = ((x - xbar) ** 2).sum(0) + kappa * n / kn * xbar**2
    m = 1 if covariance_type == "diag" else d
    a_n = nu / 2 + n * m / 2
    b_n = s2 / 2 + (sq if covariance_type == "diag" else np.full(d, sq.sum())) / 2
    e_var, sd_mu = b_n / (a_n - 1), np.sqrt(b_n / ((a_n - 1) * kn))
    post = fit.idata.posterior
    var = np.diagonal(post["covariances"].values[:, :, 0], axis1=-2, axis2=-1)  # (c, s, d)
    mc = az.mcse(post[["means"]], method="mean")["means"].values[0]
    mc_var = az.mcse(az.convert_to_dataset(var), method="mean")["x"].values
    z_mu = (post["means"].mean(("chain", "draw")).values[0] - n * xbar / kn) / mc
    z_var = (var.mean((0, 1)) - e_var) / mc_var
    assert np.all(np.abs(z_mu) < 4), z_mu
    assert np.all(np.abs(z_var) < 4), z_var
    ratio = post["means"].std(("chain", "draw")).values[0] / sd_mu
    assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio


def test_latent_missing_entries_agree_with_marginalised():
    """Sampling the missing entries and marginalising them give one posterior.

    Each scalar's posterior means differ by less than 4.5 combined MCSE (10 scalars; a false
    alarm has probability below 1e-4).
    """
    rng = np.random.default_rng(8)
    x = simulate(rng, 80, np.array([0.5, 0.5]), np.array([[0.0, 0.0], [4.0, 3.0]]),
                 np.array([np.diag([1.0, 0.5]), np.diag([0.6, 1.2])]), missing=0.25)
    spec = GMM(2, "diag", prior=None)
    common = dict(backend="nuts", draws=2000, tune=1000, engine="numpyro")
    marg = ppgmm.fit(spec, x, seed=6, **common)
    lat = ppgmm.fit(spec, x, seed=7, missing="latent", reference=marg, **common)
    assert lat.attrs["missing"] == "latent" and lat.attrs["engine"] == "numpyro"
    for name in ("diverging", "tree_depth", "permutation"):
        assert set(lat.idata.sample_stats[name].dims) >= {"chain", "draw"}
    assert "default prior" in marg.attrs["prior_note"]
    m1, s1, e1 = summary(marg)
    m2, s2, e2 = summary(lat)
    free = s1 > 0
    z = (m1 - m2)[free] / np.sqrt(e1[free] ** 2 + e2[free] ** 2)
    assert np.all(np.abs(z) < 4.5), z


def _iid_draws(rng, chains, draws, shift=0.0):
    """Independent normal draws around fixed parameters: an ideal sampler's output."""
    k, d = 2, 2
    means = np.array([[0.0, 0.0], [5.0, 5.0]]) + 0.1 * rng.standard_normal((chains, draws, k, d))
    means[-1] += shift
    covs = np.broadcast_to(np.eye(d), (chains, draws, k, d, d)).copy()
    w = np.full((chains, draws, k), 0.5) + 0.01 * rng.standard_normal((chains, draws, 1)) * [1, -1]
    return Draws(w, means, covs)


def test_diagnose_quiet_on_ideal_draws(rng):
    draws = _iid_draws(rng, 2, 500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diag = diagnose(draws, draws, n_div=0, n_hits=0)
    assert diag["converged"] and diag["messages"].items == []
    assert diag["rhat_max"] < 1.01 and diag["ess_bulk_min"] > 500


@pytest.mark.parametrize(
    ("chains", "draws", "shift", "n_div", "n_hits", "match", "converged"),
    [
        (2, 500, 0.0, 3, 0, "3 of 1000 draws diverged", False),
        # saturated trees cost time but do not bias the draws
        (2, 500, 0.0, 0, 7, "hit the maximum tree depth", True),
        (2, 500, 0.5, 0, 0, "different modes", False),
        (2, 500, 0.5, 0, 0, "R-hat", False),
        (2, 20, 0.0, 0, 0, "bulk ESS is", False),
    ],
)
def test_diagnose_warns_with_advice(rng, chains, draws, shift, n_div, n_hits, match,
                                    converged):
    d = _iid_draws(rng, chains, draws, shift)
    with pytest.warns(ConvergenceWarning) as record:
        diag = diagnose(d, d, n_div=n_div, n_hits=n_hits)
    texts = [str(r.message) for r in record]
    assert any(match in t for t in texts), texts
    assert diag["messages"].items == texts  # the attrs keep exactly what was raised
    assert diag["converged"] is converged


# --------------------------------------------------------------------------- ADVI


def test_advi_from_em_schema_and_elbo_trace(three_clusters, tmp_path):
    fit = ppgmm.fit(GMM(3, "full"), three_clusters, backend="advi", seed=0, draws=200)
    a = fit.attrs
    assert a["backend"] == "advi" and a["method"] == "advi" and a["converged"] == 1
    assert a["compile_mode"] == "JAX"
    elbo = fit.idata.sample_stats["elbo"]
    assert elbo.dims == ("iteration",) and elbo.size == a["n_iter"]
    assert fit.idata.sample_stats["permutation"].dims == ("chain", "draw", "component")
    # started at the EM fit, the three components stay apart (no collapse onto one point)
    means = fit.params.means
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(3, 1)]
    assert gaps.min() > 3.0
    # the fitted approximation scores at least the ELBO trace's end (Polyak averaging)
    assert a["elbo_final"] >= float(elbo[-a["n_iter"] // 4:].mean()) - 5.0
    path = tmp_path / "advi.nc"
    fit.to_netcdf(path)
    assert ppgmm.load(path).idata.sample_stats.equals(fit.idata.sample_stats)


def test_start_follows_the_reference_labelling(three_clusters):
    """Given a reference in another labelling, ADVI starts from EM relabelled to it: no draw
    needs relabelling, and component k lands on the reference's component k."""
    spec = GMM(3, "full")
    em = fit_em(spec, prepare(three_clusters), seed=0, n_init=3).params
    order = [1, 2, 0]
    ref = Params(em.weights[order], em.means[order], em.covariances[order])
    fit = ppgmm.fit(spec, three_clusters, backend="advi", seed=0, draws=100, reference=ref)
    assert fit.attrs["relabelled_draws"] == 0
    np.testing.assert_allclose(fit.params.means, ref.means, atol=0.5)


def test_advi_not_converged_warns(three_clusters):
    with pytest.warns(ConvergenceWarning, match="ADVI did not converge") as rec:
        fit = ppgmm.fit(GMM(3, "diag"), three_clusters, backend="advi", seed=0, init="prior",
                        n_iter=30, window=10, draws=20)
    assert {w.filename for w in rec} == {__file__}  # the warning points at the caller's line
    assert fit.attrs["converged"] == 0
    assert "did not converge" in json.loads(fit.attrs["warnings"])[0]


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("backend", "options", "match"),
    [
        ("nuts", {"engine": "stan"}, "engine should be one of"),
        ("nuts", {"draws": 0}, "draws should be an integer"),
        ("nuts", {"chains": 1.5}, "chains should be an integer"),
        ("nuts", {"target_accept": 1.0}, "target_accept should be"),
        ("nuts", {"missing": "drop"}, "missing should be one of"),
        ("nuts", {"init": "kmeans"}, "init should be 'em', 'prior'"),
        ("nuts", {"n_samples": 10}, "unknown option"),
        ("nuts", {"reference": "em"}, "reference should be a ppgmm.Fit"),
        ("advi", {"method": "svgd"}, "method should be one of"),
        ("advi", {"n_iter": 100, "window": 50}, "n_iter should be at least 3 windows"),
        ("advi", {"learning_rate": -1.0}, "learning_rate should be"),
        ("advi", {"engine": "stan"}, "engine should be one of"),
        ("advi", {"tol": "x"}, "tol should be a non-negative number"),
        ("nuts", {"jitter": np.inf}, "jitter should be a non-negative number"),
        ("nuts", {"dense_mass": "yes"}, "dense_mass should be True or False"),
    ],
)
def test_bad_options_raise_spec_error(three_clusters, backend, options, match):
    with pytest.raises(SpecError, match=match):
        ppgmm.fit(GMM(3, "full"), three_clusters, backend=backend, **options)


def test_init_list_needs_one_start_per_chain(three_clusters, switched):
    _, em = switched
    with pytest.raises(SpecError, match="one parameter set per chain"):
        ppgmm.fit(GMM(3, "full"), three_clusters, backend="nuts", chains=2, init=[em])


def test_modes_differ_flags_separated_chains(rng):
    """Two chains in one mode are not flagged; a chain shifted by 5 sd is."""
    k, d = 2, 2
    base = rng.normal(size=(2, 400, k, d)) * 0.1
    covs = np.broadcast_to(np.eye(d), (2, 400, k, d, d)).copy()
    w = np.full((2, 400, k), 0.5)
    assert modes_differ(Draws(w, base, covs)) == []
    shifted = base.copy()
    shifted[1, :, 0, 0] += 0.5
    assert modes_differ(Draws(w, shifted, covs)) == [(0, 1)]


def test_pymc_engines_run_on_the_smallest_model(caplog):
    """engine="pymc" (PyMC's own NUTS and pm.fit ADVI) end to end on K=1, D=1, compiled in
    PyTensor's FAST_COMPILE mode: seconds, where the default NUMBA mode takes minutes to
    compile. The estimate must agree with the EM MAP under the same prior (the posterior of
    one Gaussian's mean is centred within a fraction of its sd of the MAP at N=40). PyMC's
    set-up log lines are not shown."""
    caplog.set_level(logging.INFO, logger="pymc")  # what a user's logging would show
    x = np.random.default_rng(3).normal(2.0, 1.0, size=(40, 1))
    em = ppgmm.fit(GMM(1), x, seed=0)
    sd = float(np.sqrt(em.params.covariances[0, 0, 0] / 40))
    nuts = ppgmm.fit(GMM(1), x, backend="nuts", engine="pymc", draws=300, tune=200, chains=2,
                     seed=0, progressbar=False,
                     engine_kwargs={"compile_kwargs": {"mode": "FAST_COMPILE"}})
    advi = ppgmm.fit(GMM(1), x, backend="advi", engine="pymc", compile_mode="FAST_COMPILE",
                     n_iter=3000, tol=0.05, draws=200, seed=0, progressbar=False)
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("pymc")
                and r.levelno < logging.WARNING]
    for f, engine in ((nuts, "pymc"), (advi, "pymc")):
        assert f.attrs["engine"] == engine
        assert abs(float(f.params.means[0, 0]) - float(em.params.means[0, 0])) < sd
        assert 0.5 < f.params.covariances[0, 0, 0] / em.params.covariances[0, 0, 0] < 2


def test_rhat_of_one_chain_is_nan_and_logs_nothing(capfd):
    """ArviZ needs two chains for R-hat; one chain gives NaN without ArviZ's log line,
    while the ESS of the chain is still ArviZ's."""
    from ppgmm.numerics.diagnostics import ess_min, rhat_max

    rng = np.random.default_rng(0)
    d = Draws(rng.dirichlet([5, 5], size=(1, 100)), rng.normal(size=(1, 100, 2, 2)),
              np.broadcast_to(np.eye(2), (1, 100, 2, 2, 2)) * rng.uniform(1, 2, (1, 100, 2, 1, 1)))
    assert np.isnan(rhat_max(d))
    assert ess_min(d) > 10
    assert "validation failed" not in "".join(capfd.readouterr())
