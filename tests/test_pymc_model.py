"""The shared PyMC model: prior and likelihood against independent references.

- The log prior at random parameters equals ``scipy.stats`` (dirichlet, multivariate_normal,
  invwishart, invgamma) on the constrained scale. For full and tied covariances the model
  samples the Bartlett factors (c, z) under their own densities, so its density of
  :math:`\\Sigma` is the (c, z) density divided by :math:`|\\partial\\,\\mathrm{vech}\\Sigma /
  \\partial(c, z)|`; the Jacobian here comes from automatic differentiation of the model's
  own map, not from the Bartlett formula.
- The marginalised log-likelihood equals the EM backend's ``row_loglik`` with missing values.
"""

import warnings

import numpy as np
import pytest
from scipy import stats

from ppgmm import GMM, Prior
from ppgmm.backends.bayes import resolve_bayes_prior
from ppgmm.backends.pymc_model import build_model, import_pymc, initial_values
from ppgmm.data import prepare
from ppgmm.numerics.densities import log_prior
from ppgmm.numerics.patterns import row_loglik
from ppgmm.spec import Params

COV_TYPES = ["full", "tied", "diag", "spherical"]


def _data(rng, n=120, d=3, missing=0.2):
    x = rng.normal(size=(n, d)) @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 2.0]])[
        :d, :d
    ]
    x[: n // 2] += 3.0
    mask = rng.random(x.shape) < missing
    mask[mask.all(axis=1), 0] = False
    x[mask] = np.nan
    return x


def _random_params(rng, k, d, cov_type):
    w = rng.dirichlet(np.ones(k))
    mu = rng.normal(size=(k, d)) * 2
    if cov_type in ("full", "tied"):
        a = rng.normal(size=(k, d, d))
        cov = a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(d)
        if cov_type == "tied":
            cov[:] = cov[0]
    elif cov_type == "diag":
        cov = rng.uniform(0.3, 3.0, size=(k, d))[:, :, None] * np.eye(d)
    else:
        cov = rng.uniform(0.3, 3.0, size=k)[:, None, None] * np.eye(d)
    return Params(w, mu, cov)


def _scipy_log_prior(p, rp, cov_type):
    w, mu, cov = p
    k, d = mu.shape
    out = stats.dirichlet(np.ones(k)).logpdf(w)
    for j in range(k):
        out += stats.multivariate_normal(rp.mean, cov[j] / rp.kappa).logpdf(mu[j])
    if cov_type == "full":
        out += sum(stats.invwishart(rp.dof, rp.scale).logpdf(cov[j]) for j in range(k))
    elif cov_type == "tied":
        out += stats.invwishart(rp.dof, rp.scale).logpdf(cov[0])
    else:
        var = np.diagonal(cov, axis1=1, axis2=2)
        var = var if cov_type == "diag" else var[:, 0]
        out += stats.invgamma(rp.dof / 2, scale=float(rp.scale) / 2).logpdf(var).sum()
    return float(out)


@pytest.fixture(scope="module")
def models():
    """One compiled model per covariance type (K=3, D=3, 20% missing), shared by the tests."""
    import_pymc()
    import pytensor
    from pytensor.gradient import jacobian

    rng = np.random.default_rng(7)
    md = prepare(_data(rng))
    out = {}
    for cov_type in COV_TYPES:
        spec, rp, _ = resolve_bayes_prior(GMM(3, cov_type), md)
        model = build_model(spec, md, rp)
        free = [model[n] for n in ("weights", "means")] + [
            v for v in model.free_RVs if v.name not in ("weights", "means")
        ]
        prior_terms = model.logp(vars=free, jacobian=False, sum=True)
        outs = [prior_terms, model["loglik"], model["covariances"]]
        if cov_type in ("full", "tied"):
            rows, cols = np.tril_indices(md.d)
            vech = model["covariances"][..., rows, cols]
            outs.append(vech if cov_type == "full" else vech[0])
        outs = model.replace_rvs_by_values(outs)
        if cov_type in ("full", "tied"):
            bartlett = [model.rvs_to_values[model[n]] for n in ("bartlett_c", "bartlett_z")]
            outs = outs[:3] + list(jacobian(outs[3].ravel(), bartlett))
        with warnings.catch_warnings():
            # JAX drops PyMC's parameter checks and random-state inputs; both are moot for
            # densities at valid parameters
            warnings.filterwarnings("ignore", message="Skipping Check", category=UserWarning)
            warnings.filterwarnings("ignore", message="The RandomType SharedVariables",
                                    category=UserWarning)
            fn = pytensor.function(model.value_vars, outs, mode="JAX", on_unused_input="ignore")
        out[cov_type] = (spec, rp, model, fn)
    return md, out


def _evaluate(model, fn, values):
    """Run ``fn`` at constrained ``values`` (mapped to the model's value variables)."""
    from pymc.initial_point import make_initial_point_fn

    point = make_initial_point_fn(model=model, overrides=values, jitter_rvs=set(),
                                  return_transformed=True)(0)
    return fn(*[point[v.name] for v in model.value_vars])


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_log_prior_matches_scipy(models, cov_type, rng):
    md, built = models
    spec, rp, model, fn = built[cov_type]
    for _ in range(3):
        p = _random_params(rng, 3, md.d, cov_type)
        values = initial_values(p, rp, cov_type)
        res = _evaluate(model, fn, values)
        lp, cov = float(res[0]), np.asarray(res[2])
        np.testing.assert_allclose(cov, p.covariances, rtol=1e-10, atol=1e-12)
        if cov_type in ("full", "tied"):
            # d vech(Sigma) / d(log c, z); chain rule to d/dc divides by c
            jac = np.concatenate([np.asarray(j).reshape(len(np.asarray(j)), -1)
                                  for j in res[3:]], axis=1)
            logdet = np.linalg.slogdet(jac)[1] - np.log(values["bartlett_c"]).sum()
            lp -= logdet
        expected = _scipy_log_prior(p, rp, cov_type)
        assert lp == pytest.approx(expected, abs=1e-8)
        assert lp == pytest.approx(log_prior(p, rp), abs=1e-8)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_loglik_matches_em(models, cov_type, rng):
    md, built = models
    assert not md.observed.all() and md.n_patterns > 3
    spec, rp, model, fn = built[cov_type]
    for _ in range(3):
        p = _random_params(rng, 3, md.d, cov_type)
        ll = float(_evaluate(model, fn, initial_values(p, rp, cov_type))[1])
        assert ll == pytest.approx(row_loglik(p, md).sum(), abs=1e-8)


def test_prior_none_uses_default(rng):
    md = prepare(_data(rng))
    spec, rp, note = resolve_bayes_prior(GMM(2, "full", prior=None), md)
    assert spec.prior == Prior()
    assert "default prior" in note
    _, rp_default, note_default = resolve_bayes_prior(GMM(2, "full"), md)
    np.testing.assert_allclose(rp.scale, rp_default.scale)
    assert "default" not in note_default


def test_latent_model_has_missing_entries_as_free_variables(rng):
    md = prepare(_data(rng, n=40))
    spec, rp, _ = resolve_bayes_prior(GMM(2, "diag"), md)
    model = build_model(spec, md, rp, missing="latent")
    n_missing = int((~md.observed).sum())
    assert n_missing > 0
    assert model.rvs_to_values[model["x_missing_latent"]].type.shape == (n_missing,)
    with pytest.raises(ValueError, match="missing should be"):
        build_model(spec, md, rp, missing="drop")


@pytest.mark.parametrize("missing_cols", [[0], [0, 1, 2]], ids=["one-hot", "gather"])
def test_row_loglik_by_pattern_matches_scipy(rng, missing_cols):
    """Each row's marginal log-likelihood equals a scipy mixture over its observed entries,
    whether rows pick their pattern by the one-hot product (at most ONEHOT_PATTERNS
    patterns) or by the gather; a padding row (pattern number P) has log-likelihood 0."""
    import pytensor.tensor as pt

    from ppgmm.backends.pymc_model import (
        ONEHOT_PATTERNS,
        mixture_loglik_rows,
        padding_row,
        row_inputs,
    )

    x = _data(rng, n=60)
    x = np.where(np.isin(np.arange(x.shape[1]), missing_cols), x, np.nan_to_num(x, nan=0.5))
    md = prepare(x)
    assert (md.n_patterns <= ONEHOT_PATTERNS) == (len(missing_cols) == 1)
    p = _random_params(rng, 3, md.d, "full")
    rows = row_inputs(md.zero_filled, md.pattern_index, md.patterns)
    pad = padding_row(md.n_patterns)
    rows = {n: np.concatenate([v, np.full((1, *v.shape[1:]), pad[n])]) for n, v in rows.items()}
    got = mixture_loglik_rows(pt, {n: pt.as_tensor(v) for n, v in rows.items()}, md.patterns,
                              pt.as_tensor(p.weights), pt.as_tensor(p.means),
                              pt.as_tensor(p.covariances)).eval()
    for i, row in enumerate(md.values):
        o = ~np.isnan(row)
        dens = [np.log(p.weights[k]) + stats.multivariate_normal(
            p.means[k, o], p.covariances[k][np.ix_(o, o)]).logpdf(row[o]) for k in range(3)]
        assert got[i] == pytest.approx(np.logaddexp.reduce(dens), abs=1e-10)
    assert got[-1] == pytest.approx(0.0, abs=1e-12)


def test_unrolled_factorisations_match_lapack(rng):
    """The likelihood's column-by-column Cholesky and triangular inverse equal NumPy's
    LAPACK results to 1e-12, and the gradient G of 2 sum log diag L(S) is the closed form
    d log|S| / dS = S^-1 along symmetric directions: (G + G^T) / 2 = S^-1."""
    import pytensor
    import pytensor.tensor as pt

    from ppgmm.backends.pymc_model import _cholesky, _tri_inverse

    d = 6
    a = rng.normal(size=(4, 3, d, d))
    spd = a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(d)
    s = pt.tensor4("s")
    low = _cholesky(pt, s, d)
    logdet = 2.0 * pt.log(pt.diagonal(low, axis1=-2, axis2=-1)).sum()
    f = pytensor.function([s], [low, _tri_inverse(pt, low, d), pt.grad(logdet, s)])
    got_l, got_inv, got_grad = f(spd)
    want_l = np.linalg.cholesky(spd)
    np.testing.assert_allclose(got_l, want_l, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_inv, np.linalg.inv(want_l), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose((got_grad + np.swapaxes(got_grad, -1, -2)) / 2,
                               np.linalg.inv(spd), rtol=1e-9, atol=1e-10)


def test_log_density_makes_no_lapack_call_that_grows_with_the_patterns(rng):
    """The JAX log density of a model with many missingness patterns has no Cholesky or
    triangular solve over a batch larger than K: jaxlib runs large LAPACK batches on its
    thread pool and blocks, which hangs nutpie when its chains fill the pool (a K=5, D=10
    fit with 200 rows and a few hundred patterns never finished on two cores)."""
    import jax
    import jax.extend
    from pymc.sampling.jax import get_jaxified_logp

    k, d = 5, 6
    x = rng.normal(size=(150, d))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[np.isnan(x).all(axis=1), 0] = 0.0
    md = prepare(x)
    assert md.n_patterns > 20
    spec, rp, _ = resolve_bayes_prior(GMM(k), md)
    model = build_model(spec, md, rp)
    logp = get_jaxified_logp(model)
    point = model.initial_point()
    jaxpr = jax.make_jaxpr(logp)([point[v.name] for v in model.value_vars])

    def batches(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name in ("cholesky", "triangular_solve"):
                yield eqn.primitive.name, int(np.prod(eqn.invars[0].aval.shape[:-2]))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from batches(sub)

    found = list(batches(jaxpr.jaxpr))
    assert all(n <= k for _, n in found), found
