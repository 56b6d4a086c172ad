"""ArviZ on every fit: LOO/WAIC entry points and a posterior predictive check that plots."""

import warnings

import arviz as az
import matplotlib
import numpy as np
import pytest
from test_compare import posterior_like

import ppgmm

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def fits():
    params = ppgmm.Params(
        np.array([0.4, 0.6]), np.array([[-2.0, 0.0], [2.0, 1.0]]),
        np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.8, -0.2], [-0.2, 0.6]]]),
    )
    data, _ = ppgmm.simulate(params, n=200, missing=0.2, seed=4)
    em = ppgmm.fit(ppgmm.GMM(2), data, seed=0)
    boot = ppgmm.fit(ppgmm.GMM(2), data, seed=1, init=em.point(), uncertainty="bootstrap",
                     n_bootstrap=20)
    return em, boot, posterior_like(boot)


def test_loo_and_waic_of_an_em_fit_name_what_to_do(fits):
    em, boot, _ = fits
    for f in (em, boot):
        with pytest.raises(ppgmm.PpgmmError, match=r"needs draws from a posterior.*fit\.bic"):
            f.loo()
        with pytest.raises(ppgmm.PpgmmError, match="WAIC needs draws from a posterior"):
            f.waic()


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # 20 draws
def test_loo_of_a_fit_with_draws_is_arviz_loo(fits):
    post = fits[2]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = post.loo(pointwise=True)
    # ArviZ's own warning is said once, in ppgmm's words, exactly when some Pareto k is
    # above ArviZ's limit for this many draws, min(1 - 1 / log10(S), 0.7)
    said = [str(w.message) for w in rec]
    limit = min(1 - 1 / np.log10(post.idata.posterior.sizes["draw"]
                                 * post.idata.posterior.sizes["chain"]), 0.7)
    high = bool((got["pareto_k"].values > limit).any())
    assert [m for m in said if "PSIS-LOO may be unreliable" in m] == (
        [m for m in said if f"above {limit:.2f}" in m] if high else [])
    assert high and not [m for m in said if "Estimated shape parameter" in m]
    # the stored per-row log-likelihood is what az.loo reads: same elpd, and the pointwise
    # values sum to it
    assert got["elpd_loo"] == pytest.approx(float(az.loo(post.idata)["elpd_loo"]), rel=1e-12)
    assert float(got["loo_i"].sum()) == pytest.approx(got["elpd_loo"], rel=1e-10)
    # LOO never exceeds the in-sample log predictive density
    lppd = np.log(np.exp(post.idata.log_likelihood["x"].values).mean((0, 1))).sum()
    assert got["elpd_loo"] <= lppd + 1e-9


def test_ppc_idata_pairs_observed_entries_with_replicates(fits):
    em = fits[0]
    md = em.data
    pp = em.ppc_idata(draws=200, seed=0)
    p = em.params
    for j, f in enumerate(md.feature_names):
        obs = pp.observed_data[f]
        rep = pp.posterior_predictive[f]
        keep = md.observed[:, j]
        np.testing.assert_array_equal(obs.values, md.values[keep, j])
        assert rep.dims == ("chain", "draw", f"{f}_observed")
        assert rep.shape == (1, 200, int(keep.sum()))
        # replicates at the EM estimate: each entry is a draw from the feature's marginal,
        # a normal mixture with mean sum_k w_k mu_kj and variance sum_k w_k (s_kjj + mu_kj^2)
        # - mean^2; judged by a z-score on the Monte Carlo standard error
        mean = float(p.weights @ p.means[:, j])
        var = float(p.weights @ (p.covariances[:, j, j] + p.means[:, j] ** 2)) - mean ** 2
        z = (float(rep.mean()) - mean) / np.sqrt(var / rep.size)
        assert abs(z) < 4
        assert float(rep.var()) == pytest.approx(var, rel=0.05)


# arviz 0.23 calls a matplotlib API deprecated in 3.11: not ppgmm's to fix
@pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")
def test_az_plot_ppc_runs_on_every_fit(fits):
    import matplotlib.pyplot as plt

    for f in fits:
        pp = f.ppc_idata(draws=20, seed=1)
        axes = az.plot_ppc(pp, num_pp_samples=20, random_seed=0)
        assert np.size(axes) == len(f.feature_names)
        plt.close("all")
    with pytest.raises(ValueError, match="draws should be a positive integer"):
        fits[0].ppc_idata(draws=0)
