"""ADVI: loud failures, convergence on parameters and ELBO, full-rank from mean-field, the
compile cache and minibatches. Small data; each fit is a few seconds once compiled."""

import numpy as np
import pytest

import ppgmm
from ppgmm import GMM, PpgmmError
from ppgmm.backends import advi
from tests.helpers import mcar, mixture


@pytest.fixture(scope="module")
def data():
    x, _, _ = mixture(seed=7, n=240, d=2, k=2, sep=5.0)
    return mcar(x, 0.1, seed=3)


@pytest.fixture(scope="module")
def meanfield(data):
    return ppgmm.fit(GMM(2, "full"), data, backend="advi", seed=1, window=500, n_iter=10_000)


def test_second_fit_of_the_same_shape_reuses_the_compiled_loop(data, meanfield):
    """Other values of the same shape (another seed, shifted data): no new cache entry."""
    size = len(advi._CACHE)
    fit = ppgmm.fit(GMM(2, "full"), data + 3.0, backend="advi", seed=2, window=500,
                    n_iter=10_000)
    assert len(advi._CACHE) == size
    # the same data and seed give the same fit, whether compiled now or reused
    again = ppgmm.fit(GMM(2, "full"), data, backend="advi", seed=1, window=500, n_iter=10_000)
    np.testing.assert_allclose(again.idata.posterior["means"].values,
                               meanfield.idata.posterior["means"].values, rtol=1e-10)
    assert fit.converged


def test_nan_elbo_restarts_then_fails_clearly(data):
    with pytest.raises(PpgmmError, match="became NaN or infinite.*learning_rate down to"):
        ppgmm.fit(GMM(2, "full"), data, backend="advi", seed=1, window=200, n_iter=600,
                  learning_rate=1e9)


def test_fullrank_starts_from_meanfield_and_ends_above_it(data, meanfield):
    """Full-rank's family contains mean-field's, so its ELBO should not be lower (allowing
    each estimate's Monte Carlo error, a few tenths of a nat here)."""
    fr = ppgmm.fit(GMM(2, "full"), data, backend="advi", seed=1, window=500, n_iter=10_000,
                   method="fullrank_advi")
    assert fr.attrs["n_iter_meanfield"] >= 1500
    assert fr.attrs["elbo_final"] > meanfield.attrs["elbo_final"] - 1.0
    assert fr.converged


def test_convergence_needs_settled_parameters(data):
    """With a parameter tolerance no run can meet, the fit does not stop at the first check
    even though the ELBO has settled, and says so."""
    with pytest.warns(ppgmm.ConvergenceWarning, match="did not converge"):
        fit = ppgmm.fit(GMM(2, "full"), data, backend="advi", seed=1, window=500,
                        n_iter=3000, param_tol=1e-9)
    assert fit.attrs["n_iter"] == 3000 and not fit.converged
    # the checks are kept: one per window, none of them meeting the parameter tolerance
    stats = fit.idata.sample_stats
    assert stats.sizes["window"] == 6 and (stats["check_mean_shift"].values[1:] > 1e-9).all()


def test_window_checks_are_kept_and_the_last_one_met_the_rule(meanfield):
    """The stored checks show why the fit stopped: in the last window the mean moved by
    less than param_tol sds, and the ELBO by less than its bound."""
    stats, a = meanfield.idata.sample_stats, meanfield.attrs
    assert stats.sizes["window"] * 500 == a["n_iter"]
    assert stats["check_mean_shift"].values[-1] < a["param_tol"]
    assert stats["check_log_sd_shift"].values[-1] < a["param_tol"]
    e, se = stats["check_elbo"].values[-2:], stats["check_elbo_se"].values[-2:]
    assert abs(e[1] - e[0]) < max(a["tol"] * abs(e[1]), 2 * np.hypot(*se))


def test_minibatch_agrees_with_full_data(data, meanfield):
    """Minibatch gradients (60 of 240 rows) reach the same approximation: means within a
    quarter of a posterior sd. Minibatch gradients are noisier, so the window averages
    settle only to a looser parameter tolerance (param_tol=0.3)."""
    mb = ppgmm.fit(GMM(2, "full"), data, backend="advi", seed=1, window=500, n_iter=20_000,
                   batch_size=60, param_tol=0.3)
    assert mb.attrs["batch_size"] == 60
    a = meanfield.idata.posterior["means"]
    b = mb.idata.posterior["means"]
    sd = a.std(("chain", "draw"))
    z = np.abs(a.mean(("chain", "draw")) - b.mean(("chain", "draw"))) / sd
    assert float(z.max()) < 0.25


@pytest.mark.filterwarnings("ignore::ppgmm.ConvergenceWarning")  # short runs: location only
def test_minibatch_fit_after_one_of_fewer_rows_uses_all_its_rows():
    """A minibatch fit compiled for 30 rows must not be reused for 90 (it drew batches from
    the first 30 only): K=1 on 90 rows whose last 60 sit 6 higher ends at their mean
    (posterior sd of the mean about 0.3), not at the first 30 rows' (3.8 lower)."""
    rng = np.random.default_rng(0)
    small = rng.normal(size=(30, 2))
    large = np.vstack([rng.normal(size=(30, 2)), rng.normal(size=(60, 2)) + 6.0])
    kw = dict(backend="advi", seed=0, n_iter=1500, window=500, draws=200, batch_size=10)
    ppgmm.fit(GMM(1), small, **kw)
    fit = ppgmm.fit(GMM(1), large, **kw)
    mean = fit.idata.posterior["means"].mean(("chain", "draw")).values[0]
    assert np.abs(mean - large.mean(0)).max() < 0.5


def test_minibatch_full_data_elbo_in_row_blocks(data):
    """The convergence check of minibatch ADVI sums the likelihood over row blocks of the
    minibatch size, one draw at a time (bounded memory at any N): it equals the full-batch
    check's ELBO, from the same draws, including a last block padded with empty rows
    (240 rows in blocks of 70)."""
    import jax
    import jax.numpy as jnp
    from pymc.initial_point import make_initial_point_fn

    from ppgmm.backends.bayes import resolve_bayes_prior
    from ppgmm.backends.pymc_model import DATA_NAMES, build_model

    spec = GMM(2, "full")
    md = ppgmm.prepare(data)
    spec, prior, _ = resolve_bayes_prior(spec, md)
    model = build_model(spec, md, prior)
    start = make_initial_point_fn(model=model, jitter_rvs=set(), return_transformed=True)(0)
    values = [model[n].get_value() for n in DATA_NAMES if n in model.named_vars]
    args = tuple(jnp.asarray(v) for v in values)
    out = []
    for batch in (None, 70):
        c = advi._compiled(model, start, method="advi", n_mc=1, window=10, batch=batch,
                           n_rows=md.n)
        m0 = np.concatenate([np.ravel(start[v.name]) for v in model.value_vars])
        params = c.family.init(m0 + 0.1)
        out.append(np.asarray(c.elbo(params, jax.random.PRNGKey(3), args, 32)))
    assert out[0].shape == (32,) and np.isfinite(out[0]).all()
    np.testing.assert_allclose(out[1], out[0], rtol=1e-10)


def test_out_of_memory_says_to_use_minibatches(data, monkeypatch):
    """JAX's out-of-memory error (a full-data gradient at a million rows asked for 29 GB)
    becomes one ppgmm error that names the remedy."""
    import jax

    def oom(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory allocating 28826994752 bytes.")

    monkeypatch.setitem(advi.ENGINES, "jax", oom)
    with pytest.raises(PpgmmError, match=r"out of memory.*240 rows.*batch_size="):
        ppgmm.fit(GMM(2, "full"), data, backend="advi", seed=1)


def test_convergence_check_reads_q_s_marginal_standard_deviations():
    """The parameter check divides by sd_i = sqrt((L L^T)_ii), q's marginal sd: for
    full-rank more than exp(rho_i), the diagonal of L alone."""
    from ppgmm.backends.advi import Gaussian

    rng = np.random.default_rng(3)
    rho, off = rng.normal(size=4), rng.normal(size=6)
    for full in (False, True):
        fam = Gaussian(4, full)
        lmat = np.asarray(fam.scale(rho, off))
        np.testing.assert_allclose(fam.marginal_sd(rho, off), np.sqrt(np.diag(lmat @ lmat.T)),
                                   rtol=1e-12)
    assert (Gaussian(4, True).marginal_sd(rho, off)[1:] > np.exp(rho[1:])).all()
