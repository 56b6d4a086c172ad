"""The result schema (Fit) of the EM backend: groups, round trips, imputation, prediction."""

from __future__ import annotations

import importlib.metadata
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import mcar, mixture, scipy_row_loglik, to_full
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture

import ppgmm


@pytest.fixture(scope="module")
def data():
    x, z, truth = mixture(seed=11, n=150, d=3, k=2)
    xm = mcar(x, 0.25, seed=12)
    df = pd.DataFrame(xm, columns=["a", "b", "c"], index=[f"r{i}" for i in range(len(xm))])
    return x, xm, df


@pytest.fixture(scope="module")
def fit(data):
    return ppgmm.fit(ppgmm.GMM(2), data[2], seed=0, imputation_draws=7)


def _ref_conditional(xm, w, mu, cov):
    """Responsibilities and E[x_mis | x_obs] row by row with scipy (no ppgmm numerics)."""
    n, d = xm.shape
    k = len(w)
    resp = np.empty((n, k))
    out = xm.copy()
    for i, row in enumerate(xm):
        o = ~np.isnan(row)
        m = ~o
        if not o.any():
            resp[i] = w
            out[i] = w @ mu
            continue
        lp = np.array([np.log(w[j]) + stats.multivariate_normal(
            mu[j][o], cov[j][np.ix_(o, o)]).logpdf(row[o]) for j in range(k)])
        resp[i] = np.exp(lp - logsumexp(lp))
        if m.any():
            cm = [mu[j][m] + cov[j][np.ix_(m, o)] @ np.linalg.solve(
                cov[j][np.ix_(o, o)], row[o] - mu[j][o]) for j in range(k)]
            out[i, m] = resp[i] @ np.array(cm)
    return resp, out


# --------------------------------------------------------------------------- schema


def test_groups_variables_and_dims(fit, data):
    _, xm, _ = data
    idata = fit.idata
    n_miss = int(np.isnan(xm).sum())
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data",
                  "sample_stats", "estimate"):
        assert group in idata.groups()
    post = idata.posterior
    assert post["weights"].dims == ("chain", "draw", "component")
    assert post["means"].dims == ("chain", "draw", "component", "feature")
    assert post["covariances"].dims == ("chain", "draw", "component", "feature", "feature_")
    assert post["imputed_mean"].dims == ("chain", "draw", "missing")
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 1
    assert post.sizes["missing"] == n_miss
    pp = idata.posterior_predictive["x_missing"]
    assert pp.dims == ("chain", "draw", "missing") and pp.sizes["draw"] == 7
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    assert idata.observed_data["x"].dims == ("obs", "feature")
    assert idata.sample_stats["objective"].dims == ("iteration",)
    assert list(post["feature"].values) == ["a", "b", "c"]
    # the missing dim names each missing entry
    rows, cols = np.nonzero(np.isnan(xm))
    assert_array_equal(post["missing_obs"].values, [f"r{i}" for i in rows])
    assert_array_equal(post["missing_feature"].values, np.array(["a", "b", "c"])[cols])
    assert_array_equal(idata.observed_data["x"].values, xm)
    attrs = fit.attrs
    for key in ("backend", "spec", "seed", "wall_time", "versions", "converged", "n_iter",
                "objective"):
        assert key in attrs
    assert attrs["backend"] == "em" and attrs["seed"] == 0
    assert ppgmm.GMM.from_json(attrs["spec"]) == ppgmm.GMM(2)
    versions = json.loads(attrs["versions"])  # the samplers' too: NUTS's digits move with them
    for name in ("numpy", "pymc", "nutpie", "jax"):
        assert versions[name] == importlib.metadata.version(name)
    assert attrs["objective"] == "log-posterior"


def test_point_is_the_estimate_stored_twice(fit):
    p = fit.point()
    assert set(p.data_vars) == {"weights", "means", "covariances"}
    assert p["covariances"].dims == ("component", "feature", "feature_")
    for name in ("weights", "means", "covariances"):
        assert_allclose(fit.idata.posterior[name].values[0, 0], p[name].values, rtol=0)


def test_full_covariances_stored_for_every_type(data):
    for cov in ("diag", "spherical", "tied"):
        f = ppgmm.fit(ppgmm.GMM(2, cov), data[1], seed=0, imputation_draws=1)
        c = f.params.covariances
        assert c.shape == (2, 3, 3)
        if cov == "tied":
            assert_allclose(c[0], c[1])
        else:
            assert_allclose(c, np.diagonal(c, axis1=1, axis2=2)[:, :, None] * np.eye(3))
        if cov == "spherical":
            assert_allclose(np.diagonal(c, axis1=1, axis2=2), c[:, :1, 0] * np.ones(3))


# --------------------------------------------------------------------------- round trips


def test_integer_columns_come_back_as_integers(tmp_path):
    """pd.DataFrame(x) labels its columns 0..D-1: imputations keep them, saved or not, and
    new data come back in the fitted order with their own labels."""
    x = mcar(mixture(seed=3, n=60, d=3, k=2)[0], 0.2)
    df = pd.DataFrame(x)
    f = ppgmm.fit(ppgmm.GMM(2), df, seed=0)
    f.to_netcdf(tmp_path / "f.nc")
    for imp in (f.impute(), ppgmm.load(tmp_path / "f.nc").impute(), f.impute(df[[2, 0, 1]])):
        assert list(imp.columns) == [0, 1, 2]
        assert_array_equal(imp[0].notna(), True)
        assert_array_equal(imp.values[~np.isnan(x)], x[~np.isnan(x)])


@pytest.mark.parametrize("index", [
    pd.MultiIndex.from_product([range(6), range(10)], names=["a", "b"]),
    pd.date_range("2020-01-01", periods=60, tz="UTC"),
    pd.Index([1, "a"] * 30, dtype=object),
])
def test_fits_of_frames_with_any_row_index_save_and_load(index, tmp_path):
    """Row labels netCDF cannot hold (tuples, times with a zone, mixed objects) are kept as
    their text, so such a fit saves; numbers, naive times and text are kept as they are."""
    x = mcar(mixture(seed=3, n=60, d=2, k=2)[0], 0.2)
    f = ppgmm.fit(ppgmm.GMM(2), pd.DataFrame(x, index=index, columns=["u", "v"]), seed=0)
    f.to_netcdf(tmp_path / "f.nc")
    back = ppgmm.load(tmp_path / "f.nc").impute()
    assert list(back.index) == [str(i) for i in index]
    pd.testing.assert_frame_equal(back, f.impute())


def test_netcdf_round_trip_is_exact(fit, data, tmp_path):
    path = tmp_path / "fit.nc"
    fit.to_netcdf(path)
    back = ppgmm.load(path)
    for group in fit.idata.groups():
        a, b = fit.idata[group], back.idata[group]
        assert a.identical(b), group
        assert a.attrs == b.attrs
    assert back.loglik == fit.loglik
    assert back.spec == fit.spec
    for name in ("weights", "means", "covariances"):
        assert_array_equal(back.point()[name].values, fit.point()[name].values)
    ia, ib = fit.impute(), back.impute()
    assert isinstance(ib, pd.DataFrame)
    pd.testing.assert_frame_equal(ia, ib)
    new = mcar(mixture(seed=3, n=20, d=3, k=2)[0], 0.4)
    assert_array_equal(back.predict_proba(new), fit.predict_proba(new))
    assert_array_equal(back.predict_proba(), fit.predict_proba())
    assert [x.equals(y) for x, y in zip(back.impute(draws=3), fit.impute(draws=3),
                                        strict=True)] == [True] * 3


def test_to_datatree_has_the_groups(fit):
    tree = fit.to_datatree()
    assert isinstance(tree, xr.DataTree)
    for group in fit.idata.groups():
        assert group in tree.children
        assert tree[group].to_dataset().identical(fit.idata[group])


# --------------------------------------------------------------------------- imputation


def test_impute_equals_scipy_conditional_means(fit, data):
    _, xm, df = data
    w, mu, cov = fit.params
    _, ref = _ref_conditional(xm, w, mu, cov)
    out = fit.impute()
    assert isinstance(out, pd.DataFrame)
    assert list(out.index) == list(df.index) and list(out.columns) == list(df.columns)
    assert_allclose(out.to_numpy(), ref, rtol=1e-10, atol=1e-12)
    obs = ~np.isnan(xm)
    assert_array_equal(out.to_numpy()[obs], xm[obs])  # observed entries untouched
    # the stored imputed_mean is the same thing
    rows, cols = np.nonzero(~obs)
    assert_allclose(fit.idata.posterior["imputed_mean"].values[0, 0], ref[rows, cols],
                    rtol=1e-10)


def test_impute_returns_the_input_type(data):
    _, xm, df = data
    f_np = ppgmm.fit(ppgmm.GMM(2), xm, seed=0, imputation_draws=2)
    out = f_np.impute()
    assert isinstance(out, np.ndarray) and out.shape == xm.shape
    da = xr.DataArray(xm, dims=("obs", "feature"),
                      coords={"obs": np.arange(100, 100 + len(xm)), "feature": ["a", "b", "c"]})
    f_da = ppgmm.fit(ppgmm.GMM(2), da, seed=0, imputation_draws=2)
    out = f_da.impute()
    assert isinstance(out, xr.DataArray)
    assert_array_equal(out["obs"].values, da["obs"].values)
    assert_allclose(out.values, f_np.impute(), rtol=1e-12)
    assert not np.isnan(out.values).any()


def test_impute_keeps_the_dataframe_labels(data, tmp_path):
    _, xm, _ = data
    df = pd.DataFrame(xm, columns=["a", "b", "c"],
                      index=pd.date_range("2020-01-01", periods=len(xm), name="day"))
    fit = ppgmm.fit(ppgmm.GMM(2), df, seed=0, imputation_draws=2)
    path = tmp_path / "f.nc"
    fit.to_netcdf(path)
    for f in (fit, ppgmm.load(path)):
        out = f.impute()
        assert out.index.name == "day" and out.index.equals(df.index)
        assert list(out.columns) == ["a", "b", "c"]
        assert_array_equal(out.values[~np.isnan(xm)], xm[~np.isnan(xm)])
    new = df.iloc[:5].rename_axis("date")
    assert fit.impute(new).index.name == "date"


def test_multiple_imputation(fit, data):
    _, xm, df = data
    sets = fit.impute(draws=5)
    assert len(sets) == 5
    obs = ~np.isnan(xm)
    for s in sets:
        assert isinstance(s, pd.DataFrame)
        assert_array_equal(s.to_numpy()[obs], xm[obs])
        assert not s.isna().any().any()
    assert not np.allclose(sets[0].to_numpy(), sets[1].to_numpy())
    # more than the 7 stored: all 8 drawn at the estimate, as for new data with that seed
    more = fit.impute(draws=8, seed=1)
    for a, b in zip(more, fit.impute(df, draws=8, seed=1), strict=True):
        assert_array_equal(a.to_numpy(), b.to_numpy())
    assert not np.allclose(more[0].to_numpy(), sets[0].to_numpy())


def test_predictive_draws_have_the_conditional_moments():
    """Draws of x_missing scatter around E[x_mis | x_obs] with the mixture's conditional
    variance: checked as z-scores on many draws for one row."""
    x, _, _ = mixture(seed=2, n=200, d=2, k=2)
    f = ppgmm.fit(ppgmm.GMM(2, prior=None), x, seed=0, imputation_draws=1)
    w, mu, cov = f.params
    row = np.array([[x[0, 0], np.nan]])
    draws = np.array([d[0, 1] for d in f.impute(row, draws=4000, seed=1)])
    resp, ref = _ref_conditional(row, w, mu, cov)
    cm = [mu[j][1] + cov[j][1, 0] / cov[j][0, 0] * (row[0, 0] - mu[j][0]) for j in range(2)]
    cv = [cov[j][1, 1] - cov[j][1, 0] ** 2 / cov[j][0, 0] for j in range(2)]
    mean = resp[0] @ cm
    var = resp[0] @ (np.array(cv) + np.array(cm) ** 2) - mean**2
    assert mean == pytest.approx(ref[0, 1], rel=1e-12)
    se = np.sqrt(var / len(draws))
    assert abs(draws.mean() - mean) < 4 * se
    assert draws.var() == pytest.approx(var, rel=4 * np.sqrt(2 / len(draws)) * 2)


# --------------------------------------------------------------------------- prediction


def test_predict_proba_with_nan_in_new_data(fit):
    new = mcar(mixture(seed=5, n=30, d=3, k=2)[0], 0.4, seed=6)
    new[3] = np.nan  # nothing observed: gets the weights
    w, mu, cov = fit.params
    ref, _ = _ref_conditional(new, w, mu, cov)
    p = fit.predict_proba(new)
    assert_allclose(p, ref, rtol=1e-10, atol=1e-14)
    assert_allclose(p[3], w, rtol=1e-12)
    assert_array_equal(fit.predict(new), ref.argmax(1))
    # a DataFrame with reordered columns is matched by name
    df = pd.DataFrame(new, columns=["a", "b", "c"])[["c", "a", "b"]]
    assert_allclose(fit.predict_proba(df), p, rtol=1e-12)
    # columns the model was not fitted on are not read, whatever their type
    wide = df.assign(id=[f"s{i}" for i in range(len(df))], extra=np.nan, flag=True)
    assert_allclose(fit.predict_proba(wide), p, rtol=1e-12)
    assert_allclose(fit.impute(wide)[["a", "b", "c"]].to_numpy(),
                    fit.impute(df)[["a", "b", "c"]].to_numpy(), rtol=1e-12)


def test_score_samples_new_data(fit):
    new = mcar(mixture(seed=5, n=30, d=3, k=2)[0], 0.4, seed=6)
    assert_allclose(fit.score_samples(new), scipy_row_loglik(new, *fit.params), rtol=1e-10)


def test_bic_aic_match_sklearn_on_complete_data():
    x, _, _ = mixture(seed=7, n=300, d=3, k=3)
    for cov in ("full", "diag", "spherical", "tied"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = GaussianMixture(3, covariance_type=cov, tol=1e-10, max_iter=2000,
                                 random_state=0).fit(x)
        init = {"weights": gm.weights_, "means": gm.means_,
                "covariances": np.array(to_full(gm.covariances_, cov, 3, 3))}
        with pytest.warns(ppgmm.ConvergenceWarning, match="max_iter=0"):
            f = ppgmm.fit(ppgmm.GMM(3, cov, prior=None), x, init=init, max_iter=0,
                          imputation_draws=1)
        assert f.bic() == pytest.approx(gm.bic(x), rel=1e-10)
        assert f.aic() == pytest.approx(gm.aic(x), rel=1e-10)
        p = ppgmm.GMM(3, cov).n_parameters(3)
        assert f.bic() == pytest.approx(-2 * f.loglik + p * np.log(300), rel=1e-12)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_draws_are_aligned_and_match_asymptotic_se():
    """B bootstrap refits, aligned to the main fit; the spread of the component means is
    the asymptotic standard error sigma / sqrt(n_k) (complete data, well separated)."""
    rng = np.random.default_rng(0)
    n = 600
    z = rng.random(n) < 0.4
    x = np.where(z[:, None], rng.normal([0, 0], [1.0, 2.0], (n, 2)),
                 rng.normal([8, 8], [0.5, 1.0], (n, 2)))
    b = 150
    f = ppgmm.fit(ppgmm.GMM(2, "diag", prior=None), x, seed=1, uncertainty="bootstrap",
                  n_bootstrap=b)
    post = f.idata.posterior
    assert post.sizes["draw"] == b and post.sizes["chain"] == 1
    assert f.attrs["n_bootstrap"] == b and f.attrs["uncertainty"] == "bootstrap"
    assert f.idata.posterior_predictive.sizes["draw"] == b
    means = post["means"].values[0]  # (B, K, D)
    w, mu, cov = f.params
    # aligned: every draw's component k is near the estimate's component k
    assert np.abs(means - mu[None]).max() < 1.0
    # point() is the fit itself, not the bootstrap mean
    assert_allclose(f.point()["means"].values, mu)
    sd = means.std(0, ddof=1)
    se = np.sqrt(np.diagonal(cov, axis1=1, axis2=2) / (n * w[:, None]))
    # sd of a sd estimate from B draws: relative error about 1/sqrt(2(B-1)) = 6%; allow 4x
    tol = 4 / np.sqrt(2 * (b - 1))
    assert np.all(np.abs(sd / se - 1) < tol), sd / se
    # bootstrap spread of the weight: sqrt(w(1-w)/n)
    sd_w = post["weights"].values[0, :, 0].std(ddof=1)
    assert sd_w / np.sqrt(w[0] * w[1] / n) == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("kind", ["ndarray", "DataFrame"])
def test_rows_dropped_at_fit_time_come_back_in_place(kind, tmp_path):
    """Rows with nothing observed are left out of the fit but not out of its outputs: the
    fitted data's imputations, probabilities and log-likelihoods line up with the input.
    A row with nothing observed has conditional mean sum_k w_k mu_k (closed form),
    membership probabilities w and log-likelihood log 1 = 0; the other rows are those of the
    data passed as new data."""
    x, _, _ = mixture(seed=5, n=60, d=3, k=2)
    x = mcar(x, 0.2, seed=6)
    x[[0, 17, 59]] = np.nan
    data = (x if kind == "ndarray" else
            pd.DataFrame(x, columns=list("abc"), index=[f"r{i}" for i in range(60)]))
    with pytest.warns(UserWarning, match="dropped 3 of 60 rows"):
        fit = ppgmm.fit(ppgmm.GMM(2), data, seed=0)
    w, mu, _ = fit.params
    for f in (fit, ppgmm.load(fit.to_netcdf(str(tmp_path / "f.nc")))):
        completed = np.asarray(f.impute())
        assert completed.shape == (60, 3)
        assert_allclose(completed[[0, 17, 59]], np.tile(w @ mu, (3, 1)), rtol=1e-12)
        assert_allclose(completed, np.asarray(f.impute(data)), rtol=1e-12, atol=1e-12)
        assert_allclose(f.predict_proba()[[0, 17, 59]], np.tile(w, (3, 1)), rtol=1e-12)
        assert_allclose(f.predict_proba(), f.predict_proba(data), rtol=1e-12, atol=1e-14)
        assert_array_equal(f.score_samples()[[0, 17, 59]], 0.0)
        assert f.loglik == pytest.approx(f.score_samples(data).sum(), rel=1e-12)
        sets = f.impute(draws=25, seed=3)  # more than stored: drawn at the estimate
        assert all(np.asarray(s).shape == (60, 3) and not np.isnan(np.asarray(s)).any()
                   for s in sets)
        # without a seed the stored draws and the dropped rows' draws repeat
        for a, b in zip(f.impute(draws=4), f.impute(draws=4), strict=True):
            assert_array_equal(np.asarray(a), np.asarray(b))
        if kind == "DataFrame":
            assert f.impute().index.equals(data.index)
    # a dropped row's draws come from the mixture: mean sum_k w_k mu_k, covariance
    # sum_k w_k (Sigma_k + mu_k mu_k') - mean mean' (closed form), checked by z-scores
    rows = np.array([np.asarray(s)[17] for s in fit.impute(draws=2000, seed=1)])
    mean = w @ mu
    cov = np.einsum("k,kij->ij", w, fit.params.covariances + np.einsum("ki,kj->kij", mu, mu))
    cov -= np.outer(mean, mean)
    z = (rows.mean(0) - mean) / np.sqrt(np.diag(cov) / len(rows))
    assert np.abs(z).max() < 4
