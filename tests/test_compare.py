"""ppgmm.compare: numbers checked against direct NumPy / SciPy / ArviZ computations."""

import importlib.util
import re
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import integrate

import ppgmm
from ppgmm.compare import convergence_row
from ppgmm.numerics.scores import (
    crps_ensemble,
    crps_mapped_normal_mixture,
    crps_normal,
    crps_normal_mixture,
    l2_distance,
    normal_mixture_quantile,
)
from ppgmm.spec import Params

HAS = {b: importlib.util.find_spec(f"ppgmm.backends.{b}") is not None for b in ("advi", "nuts")}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sim():
    spec = ppgmm.GMM(2)
    params = Params(
        np.array([0.4, 0.6]),
        np.array([[-2.0, 0.0], [2.0, 1.0]]),
        np.array([[[1.0, 0.6], [0.6, 1.0]], [[1.0, -0.4], [-0.4, 0.8]]]),
    )
    data, truth = ppgmm.simulate(params, n=150, missing=0.2, seed=3)
    return spec, data, truth


@pytest.fixture(scope="module")
def em_fit(sim):
    spec, data, _ = sim
    return ppgmm.fit(spec, data, seed=0)


@pytest.fixture(scope="module")
def boot_fit(sim, em_fit):
    spec, data, _ = sim
    # started at the EM estimate, so it keeps the EM fit's labels
    return ppgmm.fit(spec, data, seed=1, init=em_fit.point(), uncertainty="bootstrap",
                     n_bootstrap=40)


def posterior_like(fit, *, backend="nuts", chains=2, reverse=False):
    """A posterior-shaped fit from bootstrap draws: no estimate group, (chains, B/chains) draws.

    ``reverse`` swaps the component labels of every draw, as a sampler's labelling may.
    """
    groups = {}
    for g in fit.idata.groups():
        if g == "estimate":
            continue
        ds = fit.idata[g].copy()
        if "draw" in ds.dims and ds.sizes["chain"] == 1:
            n = ds.sizes["draw"] // chains * chains
            ds = xr.Dataset(
                {v: _split_chains(ds[v], n, chains) for v in ds.data_vars}, attrs=ds.attrs
            )
        if reverse and "component" in ds.dims:
            k = ds.sizes["component"]
            ds = ds.isel(component=np.arange(k)[::-1]).assign_coords(component=np.arange(k))
        groups[g] = ds
    groups["posterior"].attrs = {**fit.idata.posterior.attrs, "backend": backend}
    return ppgmm.Fit(az.InferenceData(**groups))


def unconverged(fit):
    """The same fit marked as not converged, as a backend marks a failed run."""
    groups = {g: fit.idata[g].copy() for g in fit.idata.groups()}
    groups["posterior"].attrs = {**fit.idata.posterior.attrs, "converged": 0}
    return ppgmm.Fit(az.InferenceData(**groups))


def _split_chains(da, n, chains):
    da = da.transpose("chain", "draw", ...)
    values = da.values[0, :n].reshape(chains, n // chains, *da.shape[2:])
    coords = {c: da[c] for c in da.coords if not {"chain", "draw"} & set(da[c].dims)}
    return xr.DataArray(values, dims=da.dims, coords=coords)


@pytest.fixture(scope="module")
def pseudo_nuts(boot_fit):
    return posterior_like(boot_fit, reverse=True)


@pytest.fixture(scope="module")
def cmp(sim, em_fit, boot_fit, pseudo_nuts):
    return ppgmm.compare([em_fit, pseudo_nuts], truth=sim[2])


# --------------------------------------------------------------------------- kernels


def _mixture_pdf_1d(p, x):
    w, m, s = p.weights, p.means[:, 0], p.covariances[:, 0, 0]
    return float(np.sum(w * np.exp(-0.5 * (x - m) ** 2 / s) / np.sqrt(2 * np.pi * s)))


def _mixture_pdf_2d(p, x, y):
    out = 0.0
    for w, m, c in zip(*p, strict=True):
        det = c[0, 0] * c[1, 1] - c[0, 1] ** 2
        dx, dy = x - m[0], y - m[1]
        q = (c[1, 1] * dx * dx - 2 * c[0, 1] * dx * dy + c[0, 0] * dy * dy) / det
        out += w * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(det))
    return out


def test_l2_distance_1d_matches_numerical_integral():
    p = Params(np.array([0.3, 0.7]), np.array([[0.0], [3.0]]), np.array([[[1.0]], [[0.5]]]))
    q = Params(np.array([1.0]), np.array([[1.5]]), np.array([[[2.0]]]))
    val, _ = integrate.quad(lambda x: (_mixture_pdf_1d(p, x) - _mixture_pdf_1d(q, x)) ** 2,
                            -20, 20, epsabs=1e-12, limit=200)
    assert l2_distance(p, q) == pytest.approx(np.sqrt(val), rel=1e-7)
    assert l2_distance(p, p) == pytest.approx(0.0, abs=1e-12)


def test_l2_distance_2d_matches_numerical_integral():
    p = Params(np.array([0.3, 0.7]), np.array([[0.0, 0.0], [1.0, 2.0]]),
               np.array([[[1.0, 0.3], [0.3, 1.0]], [[2.0, 0.0], [0.0, 0.5]]]))
    q = Params(np.array([1.0]), np.array([[0.5, 1.0]]), np.array([[[1.5, 0.2], [0.2, 1.0]]]))
    val, _ = integrate.dblquad(
        lambda y, x: (_mixture_pdf_2d(p, x, y) - _mixture_pdf_2d(q, x, y)) ** 2,
        -12, 12, -12, 12, epsabs=1e-11,
    )
    assert l2_distance(p, q) == pytest.approx(np.sqrt(val), rel=1e-5)
    assert l2_distance(p, q) == pytest.approx(l2_distance(q, p))


def test_crps_ensemble_matches_pairwise_definition(rng):
    draws = rng.normal(size=(5, 13))
    y = rng.normal(size=5)
    m = draws.shape[1]
    pair = np.abs(draws[:, :, None] - draws[:, None, :]).sum((1, 2)) / (m * (m - 1))
    expected = np.abs(draws - y[:, None]).mean(1) - 0.5 * pair
    np.testing.assert_allclose(crps_ensemble(draws, y), expected, rtol=1e-12)


def test_crps_normal_matches_integral_definition():
    from scipy.stats import norm

    mu, sigma, y = 0.3, 1.7, 1.1
    below, _ = integrate.quad(lambda x: norm.cdf(x, mu, sigma) ** 2, -40, y)
    above, _ = integrate.quad(lambda x: (1 - norm.cdf(x, mu, sigma)) ** 2, y, 40)
    assert crps_normal(mu, sigma, y) == pytest.approx(below + above, rel=1e-8)


def test_normal_mixture_crps_and_quantiles_match_scipy(rng):
    from scipy.optimize import brentq
    from scipy.stats import norm

    w = rng.dirichlet(np.ones(3), size=4)
    mu, var = rng.normal(0, 3, (4, 3)), rng.uniform(0.1, 2.0, (4, 3))
    y = rng.normal(0, 3, 4)
    got = crps_normal_mixture(w, mu, var, y)
    for m in range(4):
        def cdf(t, m=m):
            return float((w[m] * norm.cdf(t, mu[m], np.sqrt(var[m]))).sum())

        below, _ = integrate.quad(lambda t: cdf(t) ** 2, -60, y[m], limit=200)
        above, _ = integrate.quad(lambda t: (1 - cdf(t)) ** 2, y[m], 60, limit=200)
        assert got[m] == pytest.approx(below + above, rel=1e-8)
        for q in (0.03, 0.5, 0.97):
            root = brentq(lambda t, q=q: cdf(t) - q, -60, 60, xtol=1e-14)
            assert normal_mixture_quantile(w[m:m + 1], mu[m:m + 1], var[m:m + 1], q)[0] == (
                pytest.approx(root, abs=1e-10))
    # one component: the normal closed form
    np.testing.assert_allclose(crps_normal_mixture(np.ones((4, 1)), mu[:, :1], var[:, :1], y),
                               crps_normal(mu[:, 0], np.sqrt(var[:, 0]), y), rtol=1e-12)


@pytest.mark.parametrize("name", ["log", "logit"])
def test_crps_of_a_mapped_normal_mixture_matches_adaptive_quadrature(rng, name):
    """CRPS of X = h(Y), Y a normal mixture, against quad of (F(x) - 1{x >= y})^2 on the
    original scale with F from scipy; truths inside and beyond h's range."""
    from scipy.stats import norm

    from ppgmm.transforms import TRANSFORMS

    t = TRANSFORMS[name]
    w = rng.dirichlet(np.ones(3), size=6)
    mu, var = rng.normal(0, 1.5, (6, 3)), rng.uniform(0.02, 2.0, (6, 3))
    y = t.inverse(rng.normal(0, 2, 6))
    y[0], y[1] = -0.7, (2.5 if name == "logit" else y[1])  # below / above the range
    s = np.full(6, np.nan)
    s[t.contains(y)] = t.forward(y[t.contains(y)])
    s[y <= t.lower], s[y >= t.upper] = -np.inf, np.inf
    got = crps_mapped_normal_mixture(w, mu, var, y, s, t.inverse, t.inverse_derivative)
    for m in range(6):
        def cdf(x, m=m):
            if x <= t.lower:
                return 0.0
            if x >= t.upper:
                return 1.0
            return float((w[m] * norm.cdf(t.forward(x), mu[m], np.sqrt(var[m]))).sum())

        top = t.upper if np.isfinite(t.upper) else np.inf
        cuts = sorted({t.lower, min(max(y[m], t.lower), top), top})
        pieces = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
        ref = abs(y[m] - min(max(y[m], t.lower), top))  # the stretch beyond the range
        for a, b in pieces:
            ref += integrate.quad(lambda x, m=m: (cdf(x) - (x >= y[m])) ** 2, a, b, limit=500,
                                  epsabs=1e-14, epsrel=1e-12)[0]
        assert got[m] == pytest.approx(ref, rel=1e-9)
    # the identity map gives the closed form
    ident = crps_mapped_normal_mixture(w, mu, var, mu[:, 0], mu[:, 0], lambda v: v,
                                       np.ones_like)
    np.testing.assert_allclose(ident, crps_normal_mixture(w, mu, var, mu[:, 0]), rtol=1e-10)


def test_crps_ensemble_of_many_normal_draws_approaches_closed_form(rng):
    draws = rng.normal(0.3, 1.7, size=20000)
    assert crps_ensemble(draws, 1.1) == pytest.approx(crps_normal(0.3, 1.7, 1.1), rel=0.02)


# --------------------------------------------------------------------------- imputations


def _plug_in_predictive(params, data, rows, cols, y):
    """94% interval and CRPS of each missing entry's predictive at ``params``, by scipy:
    responsibilities from the observed sub-vector, conditional normals per component, the
    mixture CDF inverted by brentq and the CRPS integrated numerically."""
    from scipy.optimize import brentq
    from scipy.stats import multivariate_normal, norm

    w, mu, cov = params
    lo, hi, crps = [], [], []
    for i, j, yi in zip(rows, cols, y, strict=True):
        o = ~np.isnan(data[i])
        dens = np.array([w[k] * multivariate_normal(mu[k][o], cov[k][np.ix_(o, o)]).pdf(
            data[i][o]) for k in range(len(w))])
        r = dens / dens.sum()
        cm = np.array([mu[k][j] + cov[k][j, o] @ np.linalg.solve(cov[k][np.ix_(o, o)],
                                                                 data[i][o] - mu[k][o])
                       for k in range(len(w))])
        cs = np.sqrt([cov[k][j, j] - cov[k][j, o] @ np.linalg.solve(cov[k][np.ix_(o, o)],
                                                                    cov[k][o, j])
                      for k in range(len(w))])

        def cdf(t, r=r, cm=cm, cs=cs):
            return float((r * norm.cdf(t, cm, cs)).sum())

        lo.append(brentq(lambda t: cdf(t) - 0.03, -100, 100, xtol=1e-13))
        hi.append(brentq(lambda t: cdf(t) - 0.97, -100, 100, xtol=1e-13))
        below, _ = integrate.quad(lambda t: cdf(t) ** 2, -60, yi, limit=200)
        above, _ = integrate.quad(lambda t: (1 - cdf(t)) ** 2, yi, 60, limit=200)
        crps.append(below + above)
    return np.array(lo), np.array(hi), np.array(crps)


def test_imputation_scores_equal_direct_numpy(sim, em_fit, pseudo_nuts, cmp):
    _, data, truth = sim
    rows, cols = np.nonzero(np.isnan(data))
    np.testing.assert_array_equal(np.isnan(data), truth.mask)
    y = truth.values[rows, cols]
    scores = cmp.imputation_scores.set_index(["backend", "feature"])
    for label, fit in (("em", em_fit), ("nuts", pseudo_nuts)):
        mean = np.asarray(fit.impute())[rows, cols]
        if label == "em":
            # a point estimate: its exact plug-in predictive, a normal mixture per entry
            lo, hi, crps = _plug_in_predictive(fit.params, data, rows, cols, y)
        else:
            x = fit.idata.posterior_predictive["x_missing"].values.reshape(-1, len(rows))
            lo, hi = np.quantile(x, [0.03, 0.97], axis=0)
            m = x.shape[0]
            pair = np.abs(x[:, None, :] - x[None, :, :]).sum((0, 1)) / (m * (m - 1))
            crps = np.abs(x - y).mean(0) - 0.5 * pair
        np.testing.assert_allclose(cmp.imputations["lower"].sel(backend=label), lo, rtol=1e-9)
        np.testing.assert_allclose(cmp.imputations["upper"].sel(backend=label), hi, rtol=1e-9)
        got = scores.loc[(label, "all")]
        assert got["rmse"] == pytest.approx(np.sqrt(np.mean((mean - y) ** 2)), rel=1e-12)
        assert got["coverage"] == pytest.approx(np.mean((lo <= y) & (y <= hi)), rel=1e-12)
        assert got["crps"] == pytest.approx(crps.mean(), rel=1e-7)
        assert got["n_missing"] == len(rows)
        for j in range(data.shape[1]):
            sel = cols == j
            assert scores.loc[(label, f"x{j}"), "rmse"] == pytest.approx(
                np.sqrt(np.mean((mean[sel] - y[sel]) ** 2)), rel=1e-12)
        np.testing.assert_allclose(cmp.imputations["mean"].sel(backend=label), mean)
    # baseline: observed column means, normal interval with the observed sd
    col_mean, col_sd = np.nanmean(data, 0), np.nanstd(data, 0, ddof=1)
    base = scores.loc[("column mean", "all")]
    assert base["rmse"] == pytest.approx(np.sqrt(np.mean((col_mean[cols] - y) ** 2)))
    lo, hi = col_mean[cols] - 1.880794 * col_sd[cols], col_mean[cols] + 1.880794 * col_sd[cols]
    assert base["coverage"] == pytest.approx(np.mean((lo <= y) & (y <= hi)))
    assert base["crps"] == pytest.approx(crps_normal(col_mean[cols], col_sd[cols], y).mean())
    # the mixture beats the column mean on data with well separated components
    assert scores.loc[("em", "all"), "rmse"] < base["rmse"]


def test_truth_as_array_or_dataframe_gives_the_same_scores(sim, em_fit, cmp):
    _, _, truth = sim
    a = ppgmm.compare([em_fit], truth=truth.values).imputation_scores
    b = ppgmm.compare([em_fit], truth=pd.DataFrame(truth.values, columns=["x0", "x1"]))
    expected = cmp.imputation_scores.query("backend != 'nuts'").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, expected)
    pd.testing.assert_frame_equal(b.imputation_scores, expected)


def test_fits_of_an_xarray_dataset_compare_like_fits_of_the_array(sim):
    # impute() returns a Dataset for Dataset input; compare reads the arrays beneath it
    spec, data, truth = sim
    ds = xr.Dataset({f"x{j}": ("obs", data[:, j]) for j in range(data.shape[1])})
    got = [ppgmm.fit(spec, x, seed=0, uncertainty="bootstrap", n_bootstrap=5)
           for x in (ds, data)]
    a, b = (ppgmm.compare([f], truth=truth.values) for f in got)
    pd.testing.assert_frame_equal(a.imputation_scores, b.imputation_scores, rtol=1e-12)
    rows, cols = np.nonzero(np.isnan(data))
    np.testing.assert_allclose(a.imputations["mean"].sel(backend="em"),
                               np.asarray(got[1].impute())[rows, cols], rtol=1e-12)


def test_truth_rows_line_up_when_empty_rows_were_dropped(sim, tmp_path):
    """Row labels 1..n are not positions: the truth (positional, as simulate returns it)
    must still be matched to the rows kept after dropping a row with nothing observed."""
    spec, data, truth = sim
    data = data.copy()
    data[0] = np.nan  # dropped at fit time, with a warning
    df = pd.DataFrame(data, columns=["x0", "x1"], index=np.arange(1, len(data) + 1))
    with pytest.warns(UserWarning, match="dropped 1 of 150 rows"):
        fit = ppgmm.fit(spec, df, seed=0)
    keep = slice(1, None)
    m = np.isnan(data[keep])
    direct = np.sqrt(((fit.impute().to_numpy()[keep][m] - truth.values[keep][m]) ** 2).mean())
    fit.to_netcdf(tmp_path / "f.nc")
    loaded = ppgmm.load(tmp_path / "f.nc")  # keeps which rows were dropped
    for f, t in ((fit, truth), (fit, truth.values), (loaded, truth),
                 (fit, pd.DataFrame(truth.values, index=df.index, columns=df.columns))):
        scores = ppgmm.compare([f], truth=t).imputation_scores
        rmse = scores.set_index(["backend", "feature"]).loc[("em", "all"), "rmse"]
        assert rmse == pytest.approx(direct, rel=1e-12)
    with pytest.raises(ppgmm.DataError, match="or 150 with the rows dropped"):
        ppgmm.compare([fit], truth=truth.values[:120])
    c = ppgmm.compare([loaded])
    assert c.dropped_rows == [0]
    assert any(w.startswith("data: 1 row(s) with no observed entry were dropped") and "[0]" in w
               for w in c.warnings)


def test_truth_of_the_wrong_shape_is_refused(sim, em_fit):
    with pytest.raises(ppgmm.DataError, match="shape of the data"):
        ppgmm.compare([em_fit], truth=np.zeros((3, 5)))


def test_imputation_intervals_come_from_the_predictive_draws(sim, pseudo_nuts, cmp):
    x = pseudo_nuts.idata.posterior_predictive["x_missing"]
    q = x.quantile([0.03, 0.97], dim=("chain", "draw")).values
    np.testing.assert_allclose(cmp.imputations["lower"].sel(backend="nuts"), q[0])
    np.testing.assert_allclose(cmp.imputations["upper"].sel(backend="nuts"), q[1])
    assert list(cmp.imputations["missing_feature"].values) == list(
        x["missing_feature"].values)


# --------------------------------------------------------------------------- parameters


def test_relabelled_fit_is_put_on_the_reference_labels(em_fit, boot_fit, cmp):
    # pseudo_nuts had its components reversed; compare() undoes it
    post = boot_fit.idata.posterior
    n = cmp.posteriors["nuts"].sizes["chain"] * cmp.posteriors["nuts"].sizes["draw"]
    np.testing.assert_allclose(
        cmp.posteriors["nuts"]["means"].values.reshape(n, 2, 2),
        post["means"].values[0, :n],
    )
    row = cmp.convergence.set_index("label").loc["nuts"]
    assert row["relabelled_to_reference"] == "0<-1, 1<-0"
    assert cmp.convergence.set_index("label").loc["em", "relabelled_to_reference"] == "none"


def test_hdi_and_containment_flags_agree_with_arviz(em_fit, boot_fit, cmp):
    post = boot_fit.idata.posterior[["weights", "means", "covariances"]]
    n = cmp.posteriors["nuts"].sizes["chain"] * cmp.posteriors["nuts"].sizes["draw"]
    post = post.isel(draw=slice(0, n))
    hdi = az.hdi(post, hdi_prob=0.94)
    est = em_fit.point()
    for name in ("weights", "means", "covariances"):
        lo = hdi[name].sel(hdi="lower")
        hi = hdi[name].sel(hdi="higher")
        got = cmp.parameters[name].sel(backend="nuts")
        np.testing.assert_allclose(got.sel(stat="hdi_lower"), lo)
        np.testing.assert_allclose(got.sel(stat="hdi_upper"), hi)
        np.testing.assert_allclose(got.sel(stat="sd"), post[name].std(("chain", "draw"), ddof=1))
        flags = (lo <= est[name]) & (est[name] <= hi)
        np.testing.assert_array_equal(cmp.em_in_hdi[name].sel(backend="nuts"), flags)
    # the EM estimate is a point: no spread, no HDI, no flag
    assert np.isnan(cmp.parameters["weights"].sel(backend="em", stat="sd")).all()
    assert list(cmp.em_in_hdi["backend"].values) == ["nuts"]


def test_hdi_flags_use_the_reference_em_estimate(sim, em_fit, pseudo_nuts):
    spec, data, _ = sim
    other = ppgmm.fit(ppgmm.GMM(2, prior=None), data, seed=0, init=em_fit.point())
    c = ppgmm.compare({"mle": other, "map": em_fit, "nuts": pseudo_nuts}, reference="map")
    assert c.em_in_hdi.attrs["em"] == "map"
    lo = c.parameters["means"].sel(backend="nuts", stat="hdi_lower")
    hi = c.parameters["means"].sel(backend="nuts", stat="hdi_upper")
    est = em_fit.point()["means"]
    np.testing.assert_array_equal(c.em_in_hdi["means"].sel(backend="nuts"),
                                  (lo <= est) & (est <= hi))


def test_a_parameter_outside_the_hdi_is_flagged(em_fit, boot_fit):
    shifted = posterior_like(boot_fit)
    shifted.idata.posterior["means"] = shifted.idata.posterior["means"] + 100.0
    c = ppgmm.compare({"em": em_fit, "far": shifted})
    assert not c.em_in_hdi["means"].any()
    assert c.em_in_hdi["weights"].all()
    s = c.summary()
    assert not s.query("parameter == 'means' and backend == 'far'")["em_in_hdi"].any()


def test_summary_is_tidy(cmp, em_fit):
    s = cmp.summary()
    k, d = 2, 2
    per_backend = k + k * d + k * d * (d + 1) // 2  # covariances: upper triangle
    assert len(s) == 2 * per_backend
    assert list(s.columns[:9]) == ["parameter", "component", "feature", "feature_", "backend",
                                   "point", "sd", "hdi_lower", "hdi_upper"]
    em = s.query("backend == 'em' and parameter == 'means'")
    np.testing.assert_allclose(em["point"].values, em_fit.point()["means"].values.ravel())
    assert s.query("backend == 'em'")["em_in_hdi"].isna().all()
    assert "truth" in s and s["truth"].notna().all()


def test_truth_params_are_put_on_the_reference_labels(sim, cmp):
    truth = sim[2]
    order = np.argsort(cmp.truth_params["means"].values[:, 0])
    np.testing.assert_allclose(cmp.truth_params["means"].values[order],
                               truth.params.means[np.argsort(truth.params.means[:, 0])])
    em = cmp.parameters["means"].sel(backend="em", stat="point").values
    np.testing.assert_allclose(em, cmp.truth_params["means"].values, atol=0.6)


def test_distance_matrix(em_fit, boot_fit, cmp):
    dist = cmp.distance
    assert dist.dims == ("backend", "backend_")
    np.testing.assert_allclose(np.diag(dist.values), 0.0)
    np.testing.assert_allclose(dist.values, dist.values.T)
    expected = l2_distance(em_fit.params, cmp.fits["nuts"].params)
    assert float(dist.sel(backend="em", backend_="nuts")) == pytest.approx(expected)


# --------------------------------------------------------------------------- convergence, K


def test_convergence_table(em_fit, pseudo_nuts, cmp):
    conv = cmp.convergence.set_index("label")
    obj = em_fit.idata.sample_stats["objective"].values
    assert conv.loc["em", "objective_monotone"]
    assert conv.loc["em", "objective_final"] == pytest.approx(obj[-1])
    assert conv.loc["em", "n_iter"] == em_fit.attrs["n_iter"]
    assert conv.loc["em", "wall_time_s"] == pytest.approx(em_fit.attrs["wall_time"])
    post = cmp.posteriors["nuts"]
    # every free scalar: weights, means and the covariances' lower triangles (off-diagonal
    # entries included: they can be the worst mixing, as the backends' own checks know)
    rows, cols = np.tril_indices(2)
    every = xr.Dataset({"weights": post["weights"], "means": post["means"],
                        "cov": xr.DataArray(post["covariances"].values[..., rows, cols],
                                            dims=("chain", "draw", "component", "entry"))})
    rhat, ess = az.rhat(every), az.ess(every, method="tail")
    bulk = az.ess(every, method="bulk")
    assert conv.loc["nuts", "rhat_max"] == pytest.approx(
        max(float(rhat[v].max()) for v in rhat.data_vars), rel=1e-12)
    assert conv.loc["nuts", "ess_tail_min"] == pytest.approx(
        min(float(ess[v].min()) for v in ess.data_vars), rel=1e-12)
    assert conv.loc["nuts", "ess_bulk_min"] == pytest.approx(
        min(float(bulk[v].min()) for v in bulk.data_vars), rel=1e-12)
    assert np.isnan(conv.loc["em", "rhat_max"])
    # one fit's row, without a comparison: the same figures, only those the backend has
    one = convergence_row(pseudo_nuts)
    assert "rhat_max" not in convergence_row(em_fit)
    assert one["rhat_max"] == conv.loc["nuts", "rhat_max"]
    assert one["ess_bulk_min"] == conv.loc["nuts", "ess_bulk_min"]


def test_labels_say_how_fits_differ_and_never_drop_one(sim, em_fit):
    spec, data, _ = sim
    diag = ppgmm.fit(ppgmm.GMM(2, "diag"), data, seed=0)
    assert ppgmm.compare([em_fit, em_fit]).labels == ["em K=2", "em K=2 #2"]
    assert ppgmm.compare([em_fit, diag]).labels == ["em K=2", "em K=2 (diag)"]
    with pytest.raises(ppgmm.PpgmmError, match=r"label\(s\) \['1'\] more than once"):
        ppgmm.compare({1: em_fit, "1": diag})


def test_model_comparison_by_bic(sim, em_fit):
    spec, data, _ = sim
    fits = [ppgmm.fit(ppgmm.GMM(k), data, seed=0) for k in (1, 3)] + [em_fit]
    c = ppgmm.compare(fits)
    assert c.labels == ["em K=1", "em K=3", "em K=2"]
    assert c.reference == "em K=1"
    mc = c.model_comparison
    assert list(mc["criterion"].unique()) == ["BIC"]
    assert mc["value"].is_monotonic_increasing
    np.testing.assert_allclose(mc.set_index("label").loc["em K=2", "value"], em_fit.bic())
    assert mc.iloc[0]["label"] == "em K=2"  # two well separated clusters
    # parameters are compared only across fits with the reference's K
    assert c.compared == ["em K=1"]


def test_reference_by_label_and_bad_input(em_fit, pseudo_nuts):
    c = ppgmm.compare({"a": em_fit, "b": pseudo_nuts}, reference="b")
    assert c.reference == "b"
    with pytest.raises(ppgmm.PpgmmError, match="reference should be one of"):
        ppgmm.compare([em_fit], reference="nope")
    with pytest.raises(ppgmm.PpgmmError, match="fits should be a non-empty list"):
        ppgmm.compare([])
    with pytest.raises(ppgmm.PpgmmError, match="fits should be"):
        ppgmm.compare([em_fit, "not a fit"])
    with pytest.raises(ppgmm.PpgmmError, match="hdi_prob should be"):
        ppgmm.compare([em_fit], hdi_prob=1.5)
    with pytest.raises(ppgmm.PpgmmError, match="names the imputation baseline"):
        ppgmm.compare({"em": em_fit, "column mean": pseudo_nuts})


def test_fits_of_different_data_are_refused(sim, em_fit):
    spec, data, _ = sim
    fewer = ppgmm.fit(spec, data[:100], seed=0)
    with pytest.raises(ppgmm.DataError, match=r"different data \(100 rows vs 150\)"):
        ppgmm.compare([em_fit, fewer])
    other = data.copy()
    i, j = np.argwhere(~np.isnan(data))[0]
    other[i, j] += 1.0
    with pytest.raises(ppgmm.DataError, match="different values or row labels"):
        ppgmm.compare([em_fit, ppgmm.fit(spec, other, seed=0)])
    renamed = pd.DataFrame(data, columns=["a", "b"])
    with pytest.raises(ppgmm.DataError, match="features"):
        ppgmm.compare([em_fit, ppgmm.fit(spec, renamed, seed=0)])


def test_plain_words_warnings_are_collected(sim):
    spec, data, _ = sim
    with pytest.warns(ppgmm.ConvergenceWarning):
        f = ppgmm.fit(spec, data, seed=0, max_iter=2)
    c = ppgmm.compare([f])
    assert any("did not converge" in w and w.startswith("em:") for w in c.warnings)


# --------------------------------------------------------------------------- honest comparison


def test_unconverged_fit_is_marked_and_left_out_of_agreement(em_fit, pseudo_nuts):
    bad = unconverged(pseudo_nuts)
    assert pseudo_nuts.converged and not bad.converged
    c = ppgmm.compare({"em": em_fit, "nuts": bad})
    # marked in every table
    assert list(c.parameters["backend"].values) == ["em", "nuts"]
    s = c.summary()
    assert not s.query("backend == 'nuts'")["converged"].any()
    assert s.query("backend == 'em'")["converged"].all()
    assert not c.convergence.set_index("label").loc["nuts", "converged"]
    assert c.agreement.set_index("backend").loc["nuts", "verdict"].startswith("not judged")
    # left out of "EM inside HDI" (its HDIs could span everything) unless asked
    assert not c.em_in_hdi.data_vars
    assert s["em_in_hdi"].isna().all()
    assert c.warnings[0].startswith("nuts:")
    assert any("left out of the agreement checks" in w for w in c.warnings)
    kept = ppgmm.compare({"em": em_fit, "nuts": bad}, include_unconverged=True)
    good = ppgmm.compare({"em": em_fit, "nuts": pseudo_nuts})
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(kept.em_in_hdi[name], good.em_in_hdi[name])


def test_agreement_threshold_is_the_spread_of_em_bootstrap_refits(em_fit, boot_fit,
                                                                   pseudo_nuts):
    c = ppgmm.compare({"em": boot_fit, "nuts": pseudo_nuts, "far": _far(boot_fit)})
    post = boot_fit.idata.posterior
    b = post.sizes["draw"]
    dist = [l2_distance(boot_fit.params, Params(post["weights"].values[0, i],
                                                post["means"].values[0, i],
                                                post["covariances"].values[0, i]),
                        relative=True) for i in range(b)]
    assert c.agreement_threshold == pytest.approx(np.quantile(dist, 0.95), rel=1e-12)
    assert 0 < c.agreement_threshold < 1
    ag = c.agreement.set_index("backend")
    assert ag.loc["far", "verdict"] == "differs"
    assert ag.loc["far", "relative_l2"] == pytest.approx(
        l2_distance(boot_fit.params, c.fits["far"].params, relative=True))
    # pseudo_nuts is made of the bootstrap refits themselves: its mean lies within their spread
    assert ag.loc["nuts", "verdict"] == "agrees"
    # without a bootstrap fit there is no threshold, and the table says so
    plain = ppgmm.compare({"em": em_fit, "nuts": pseudo_nuts})
    assert plain.agreement_threshold is None
    assert plain.agreement["verdict"].str.contains("no EM bootstrap fit").all()


def _far(fit):
    far = posterior_like(fit)
    far.idata.posterior["means"] = far.idata.posterior["means"] + 5.0
    return far


def test_unconverged_fits_rank_after_converged_ones(sim, em_fit):
    spec, data, _ = sim
    fits = {f"K={k}": ppgmm.fit(ppgmm.GMM(k), data, seed=0) for k in (1, 3)}
    fits["K=2"] = unconverged(em_fit)  # the best BIC, but not converged
    c = ppgmm.compare(fits)
    mc = c.model_comparison.set_index("label")
    assert min(mc.loc["K=2", "value"], *mc["value"]) == mc.loc["K=2", "value"]
    assert mc.loc["K=2", "rank"] == 2 and not mc.loc["K=2", "converged"]
    assert mc.loc["K=2", "note"].startswith("did not converge")
    assert list(mc.sort_values("rank").index[:2]) == sorted(
        ["K=1", "K=3"], key=lambda b: mc.loc[b, "value"])
    assert mc["converged"].drop("K=2").all()
    assert any(w.startswith("K=2: did not converge, so it is ranked after") for w in c.warnings)


def test_imputations_outside_the_observed_range_are_reported(rng):
    # x1 = x0 + small noise, x1 missing where x0 is largest: E[x1 | x0] lies above every
    # observed x1, which a bounded variable (a count, a concentration) could not do
    x0 = rng.normal(size=200)
    x = np.column_stack([x0, x0 + 0.05 * rng.normal(size=200)])
    top = np.argsort(x0)[-10:]
    x[top, 1] = np.nan
    f = ppgmm.fit(ppgmm.GMM(1), x, seed=0)
    c = ppgmm.compare([f])
    imputed = np.asarray(f.impute(), dtype=float)[top, 1]
    n_out = int((imputed > np.nanmax(x[:, 1])).sum())
    assert n_out >= 1
    row = c.out_of_range.set_index(["backend", "feature"]).loc[("em", "x1")]
    assert row["n_outside"] == n_out and row["observed_max"] == np.nanmax(x[:, 1])
    assert any("outside its observed range" in w for w in c.warnings)


# --------------------------------------------------------------------------- PyMC backends


@pytest.fixture(scope="module")
def bayes_fits(sim, em_fit):
    """Tiny ADVI and NUTS fits (whichever backends are installed), shared by the tests."""
    spec, data, _ = sim
    fits = {"em": em_fit}
    with warnings.catch_warnings():  # too short to meet the backends' convergence checks
        warnings.simplefilter("ignore", ppgmm.ConvergenceWarning)
        if HAS["advi"]:
            fits["advi"] = ppgmm.fit(spec, data, backend="advi", seed=0, n_iter=3000)
        if HAS["nuts"]:
            fits["nuts"] = ppgmm.fit(spec, data, backend="nuts", seed=0, draws=60, tune=60,
                                     chains=2, progressbar=False)
    return fits


@pytest.mark.skipif(not any(HAS.values()), reason="ADVI/NUTS backends not available")
def test_compare_with_the_bayesian_backends(bayes_fits, sim, tmp_path):
    c = ppgmm.compare(list(bayes_fits.values()), truth=sim[2], include_unconverged=True)
    bayes = [b for b in bayes_fits if b != "em"]
    assert c.compared == list(bayes_fits)
    assert list(c.em_in_hdi["backend"].values) == bayes
    # by default the real short runs that missed their convergence checks are marked and
    # left out of the agreement checks
    default = ppgmm.compare(list(bayes_fits.values()), truth=sim[2])
    ok = [b for b in bayes if bayes_fits[b].converged]
    assert list(default.em_in_hdi.get("backend", xr.DataArray([])).values) == ok
    s = default.summary()
    for b in bayes:
        assert (s.query("backend == @b")["converged"] == bayes_fits[b].converged).all()
        if not bayes_fits[b].converged:
            verdict = default.agreement.set_index("backend").loc[b, "verdict"]
            assert verdict == "not judged: did not converge"
    conv = c.convergence.set_index("label")
    if "advi" in bayes:
        assert np.isfinite(conv.loc["advi", "elbo_final"])
    if "nuts" in bayes:
        nuts = bayes_fits["nuts"]
        assert np.isfinite(conv.loc["nuts", "rhat_max"])
        assert conv.loc["nuts", "divergences"] == int(nuts.idata.sample_stats["diverging"].sum())
        assert conv.loc["nuts", "permutations"].endswith(": 120") or ";" in conv.loc[
            "nuts", "permutations"]
    assert set(c.imputation_scores["backend"]) == {*bayes_fits, "column mean"}
    # the Bayesian imputations agree with EM's on well separated clusters
    em_rmse = c.imputation_scores.set_index(["backend", "feature"]).loc[("em", "all"), "rmse"]
    for b in bayes:
        rmse = c.imputation_scores.set_index(["backend", "feature"]).loc[(b, "all"), "rmse"]
        assert rmse == pytest.approx(em_rmse, rel=0.2)
    assert isinstance(c.parameters, xr.Dataset)
    text = Path(c.report(str(tmp_path / "r.html"))).read_text(encoding="utf-8")
    assert "could not be drawn" not in text
    if "nuts" in bayes:
        assert "nuts rank plots" in text
    # the report's reproduction code runs and gives back every fit
    import html

    section = text[text.index('<section id="reproduce">'):]
    snippets = [html.unescape(m) for m in re.findall(r"<pre>(.*?)</pre>", section, flags=re.S)]
    assert len(snippets) == len(bayes_fits)
    ns = {"data": sim[1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppgmm.ConvergenceWarning)
        for code in snippets:
            exec(code, ns)  # noqa: S102 - the report's own text
    for label, f in bayes_fits.items():
        again = ns[f"fit_{label}"]
        assert again.attrs["options"] == f.attrs["options"] and again.spec == f.spec
        if label != "nuts":  # NUTS chains amplify rounding differences between runs
            for a, b in zip(again.params, f.params, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_relative_l2_distance_is_scale_free():
    p = Params(np.array([0.3, 0.7]), np.array([[0.0, 0.0], [1.0, 2.0]]),
               np.array([[[1.0, 0.3], [0.3, 1.0]], [[2.0, 0.0], [0.0, 0.5]]]))
    q = Params(np.array([1.0]), np.array([[0.5, 1.0]]), np.array([[[1.5, 0.2], [0.2, 1.0]]]))
    a = np.array([[3.0, 1.0], [0.0, 0.2]])  # x -> a x + b
    b = np.array([5.0, -1.0])

    def move(r):
        return Params(r.weights, r.means @ a.T + b, a @ r.covariances @ a.T)

    rel = l2_distance(p, q, relative=True)
    assert 0 < rel < 1
    assert l2_distance(move(p), move(q), relative=True) == pytest.approx(rel, rel=1e-10)
    assert l2_distance(move(p), move(q)) != pytest.approx(l2_distance(p, q))
    far = Params(q.weights, q.means + 1e3, q.covariances)
    assert l2_distance(p, far, relative=True) == pytest.approx(1.0)
