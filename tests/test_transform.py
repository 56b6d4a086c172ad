"""Per-column transforms (``GMM(transform=...)``): the maths against scipy, EM on the
transformed scale against EM on transformed data, back-transformed imputations and draws,
the Jacobian in every reported log-likelihood, errors, saving, the report and the CLI."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from scipy.special import expit

import ppgmm
from ppgmm import GMM, DataError, SpecError
from ppgmm.cli import main
from ppgmm.datasets import load_airquality
from ppgmm.transforms import TRANSFORMS, ColumnTransforms, suggest_transform

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def air():
    return load_airquality()


@pytest.fixture(scope="module")
def air_fits(air):
    """EM fits of airquality (K=2) on the raw scale, with Ozone on the log scale, and the
    same EM on a copy whose Ozone column was logged by hand."""
    logged = air.assign(Ozone=np.log(air["Ozone"]))
    raw = ppgmm.fit(GMM(2), air, seed=0)
    log = ppgmm.fit(GMM(2, transform={"Ozone": "log"}), air, seed=0)
    by_hand = ppgmm.fit(GMM(2), logged, seed=0)
    return raw, log, by_hand


@pytest.fixture(scope="module")
def shares():
    """Two correlated columns, the first a proportion in (0, 1) with entries missing."""
    rng = np.random.default_rng(7)
    z = rng.multivariate_normal([0.5, 2.0], [[1.0, 0.6], [0.6, 1.0]], size=150)
    x = np.column_stack([1 / (1 + np.exp(-z[:, 0])), z[:, 1]])
    x[rng.random(150) < 0.25, 0] = np.nan
    return x


# --------------------------------------------------------------------------- the maths


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_forward_inverse_round_trip(name):
    t = TRANSFORMS[name]
    x = np.array([1e-6, 0.01, 0.3, 0.5, 0.77, 0.999]) if name == "logit" else np.logspace(
        -8, 8, 33)
    # a value x = expit(y) near 1 holds 1 - x to about eps / (1 - x) only, so logit's
    # round trip from y is checked where that is below 1e-12 (y <= 4)
    y = np.linspace(-30, 4 if name == "logit" else 30, 69)
    np.testing.assert_allclose(t.inverse(t.forward(x)), x, rtol=1e-12, atol=0)
    np.testing.assert_allclose(t.forward(t.inverse(y)), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_log_jacobian_is_the_derivative(name):
    """log|f'(x)| against the complex-step derivative of f (exact to rounding)."""
    t = TRANSFORMS[name]
    x = np.array([0.02, 0.2, 0.5, 0.9]) if name == "logit" else np.array([0.01, 1.0, 7.5, 300])
    h = 1e-30
    f = np.log if name == "log" else (lambda v: np.log(v / (1 - v)))
    deriv = f(x + 1j * h).imag / h
    np.testing.assert_allclose(t.log_jacobian(x), np.log(np.abs(deriv)), rtol=1e-12)


def test_log_density_is_scipy_lognorm():
    """N(log x; m, s^2) + log|f'(x)| is scipy's log-normal density."""
    x = np.array([0.05, 0.7, 2.0, 40.0])
    m, s = 0.3, 1.7
    ours = stats.norm.logpdf(TRANSFORMS["log"].forward(x), m, s) + TRANSFORMS[
        "log"].log_jacobian(x)
    np.testing.assert_allclose(ours, stats.lognorm.logpdf(x, s=s, scale=np.exp(m)), rtol=1e-12)


def test_inverse_mean_log_is_the_lognormal_mean():
    m, v = np.array([-2.0, 0.0, 1.5, 4.0]), np.array([0.01, 1.0, 2.5, 0.3])
    expect = stats.lognorm.mean(s=np.sqrt(v), scale=np.exp(m))
    np.testing.assert_allclose(TRANSFORMS["log"].inverse_mean(m, v), expect, rtol=1e-12)


@pytest.mark.parametrize(("m", "v"), [(0.0, 0.01), (1.3, 1.0), (-2.0, 4.0), (0.7, 10.0),
                                    (0.3, 50.0), (2.0, 400.0), (-5.0, 2000.0), (12.0, 1.5)])
def test_inverse_mean_logit_by_quadrature(m, v):
    """The logit-normal mean against adaptive quadrature (split at 0, where expit turns),
    for narrow and wide normals: a wide one sees expit as a near step (Gauss-Hermite alone
    was off by 1e-4 at v = 50 and 1e-2 at v = 400)."""

    def integrand(y):
        return stats.norm.pdf(y, m, np.sqrt(v)) * expit(y)

    sd = np.sqrt(v)
    lo, hi = m - 40 * sd, m + 40 * sd
    cuts = [lo, *([0.0] if lo < 0 < hi else []), hi]
    expect = sum(integrate.quad(integrand, a, b, epsabs=1e-14, epsrel=1e-13, limit=500)[0]
                 for a, b in zip(cuts[:-1], cuts[1:], strict=False))
    assert abs(float(TRANSFORMS["logit"].inverse_mean(m, v)) - expect) < 1e-12
    both = TRANSFORMS["logit"].inverse_mean(np.array([m, m]), np.array([v, 0.0]))
    assert both[0] == float(TRANSFORMS["logit"].inverse_mean(m, v))
    assert both[1] == pytest.approx(expit(m), rel=1e-14)


def test_suggestion():
    assert suggest_transform(np.array([1.0, np.nan, 30])) == "log"
    assert suggest_transform(np.array([0.0, 1.0])) is None
    assert suggest_transform(np.array([-1.0, 2.0])) is None


# --------------------------------------------------------------------------- errors


def test_spec_errors():
    with pytest.raises(SpecError, match=r"transform of column 'Ozone' should be one of "
                       r"\['log', 'logit'\], but got 'sqrt'"):
        GMM(2, transform={"Ozone": "sqrt"})
    with pytest.raises(SpecError, match="should be a dict"):
        GMM(2, transform="log")
    with pytest.raises(SpecError, match="non-negative column positions"):
        GMM(2, transform={-1: "log"})


def test_data_errors(air):
    with pytest.raises(SpecError, match=r"column 'ozone', which is not among the data's "
                       r"columns \['Ozone'"):
        ppgmm.fit(GMM(2, transform={"ozone": "log"}), air)
    with pytest.raises(SpecError, match="position 7, but the data have 4 columns"):
        ppgmm.fit(GMM(2, transform={7: "log"}), air)
    bad = air.assign(Wind=air["Wind"] - 5)
    n_bad = int((bad["Wind"] <= 0).sum())
    with pytest.raises(DataError, match=rf"column 'Wind' has {n_bad} observed value\(s\) outside "
                       r"the support of the log transform \(x > 0\).*shift the column"):
        ppgmm.fit(GMM(2, transform={"Wind": "log"}), bad)
    with pytest.raises(DataError, match=r"'Temp' has 153 observed .* logit .*0 < x < 1"):
        ppgmm.fit(GMM(2, transform={"Temp": "logit"}), air)


def test_dask_data_refused(air):
    da = pytest.importorskip("dask.array")
    x = da.from_array(air.to_numpy(), chunks=(50, 4))
    with pytest.raises(SpecError, match="not supported for data in a dask collection"):
        ppgmm.fit(GMM(2, transform={0: "log"}), x)


# --------------------------------------------------------------------------- EM fits


def test_em_on_the_log_scale_is_em_on_logged_data(air, air_fits):
    """Same parameters as EM on np.log(Ozone); log-likelihoods apart by the Jacobian."""
    _, log, by_hand = air_fits
    for a, b in zip(log.params, by_hand.params, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    oz = air["Ozone"].to_numpy()
    jac = -np.log(oz[~np.isnan(oz)]).sum()
    assert log.loglik - by_hand.loglik == pytest.approx(jac, abs=1e-8)
    rows = -np.where(np.isnan(oz), 0.0, np.log(np.where(np.isnan(oz), 1.0, oz)))
    np.testing.assert_allclose(log.score_samples() - by_hand.score_samples(), rows, atol=1e-10)
    np.testing.assert_allclose(log.idata.log_likelihood["x"].values[0, 0],
                               log.score_samples(), atol=1e-10)
    assert log.bic() - by_hand.bic() == pytest.approx(-2 * jac, abs=1e-7)
    # the objective trace is shifted by the same constant
    obj = log.idata.sample_stats["objective"].values - by_hand.idata.sample_stats[
        "objective"].values
    np.testing.assert_allclose(obj, jac, atol=1e-7)
    np.testing.assert_allclose(log.predict_proba(), by_hand.predict_proba(), atol=1e-10)
    assert log.attrs["transform"] == json.dumps({"Ozone": "log"})
    # the observed data are stored as given
    np.testing.assert_array_equal(log.data.values, air.to_numpy())


def test_k1_d1_log_likelihood_is_lognormal():
    rng = np.random.default_rng(1)
    x = np.exp(rng.normal(1.0, 0.8, size=(80, 1)))
    f = ppgmm.fit(GMM(1, prior=None, transform={0: "log"}), x, seed=0)
    m, s = f.params.means[0, 0], np.sqrt(f.params.covariances[0, 0, 0])
    expect = stats.lognorm.logpdf(x[:, 0], s=s, scale=np.exp(m))
    np.testing.assert_allclose(f.score_samples(), expect, rtol=0, atol=1e-10)
    new = np.array([[0.3], [2.0], [np.nan]])
    got = f.score_samples(new)
    np.testing.assert_allclose(got[:2], stats.lognorm.logpdf(new[:2, 0], s=s, scale=np.exp(m)),
                               atol=1e-10)
    assert got[2] == 0.0


def test_d2_missing_entry_log_likelihood_and_mean_by_hand():
    """A K=2 D=2 fit with column 0 logged: row log-likelihoods and the imputed mean of a
    missing column-0 entry against a direct computation from the parameters."""
    rng = np.random.default_rng(2)
    z = np.concatenate([rng.multivariate_normal([0, 0], [[1, .5], [.5, 1]], 60),
                        rng.multivariate_normal([2, 3], [[.5, 0], [0, .5]], 60)])
    x = np.column_stack([np.exp(z[:, 0]), z[:, 1]])
    x[[3, 70], 0] = np.nan
    x[5, 1] = np.nan
    f = ppgmm.fit(GMM(2, transform={0: "log"}), x, seed=0)
    w, mu, cov = f.params

    def loglik(row):
        obs = ~np.isnan(row)
        y = row.copy()
        y[0] = np.log(y[0])
        dens = [w[k] * stats.multivariate_normal.pdf(y[obs], mu[k][obs], cov[k][np.ix_(obs, obs)])
                for k in range(2)]
        return np.log(sum(dens)) - (np.log(row[0]) if obs[0] else 0.0)

    expect = np.array([loglik(r) for r in x])
    np.testing.assert_allclose(f.score_samples(), expect, rtol=0, atol=1e-10)
    # row 3 misses column 0: E[exp(Y0) | y1] = sum_k r_k exp(m_k + v_k / 2)
    y1 = x[3, 1]
    lik = np.array([w[k] * stats.norm.pdf(y1, mu[k, 1], np.sqrt(cov[k, 1, 1])) for k in range(2)])
    r = lik / lik.sum()
    m = mu[:, 0] + cov[:, 0, 1] / cov[:, 1, 1] * (y1 - mu[:, 1])
    v = cov[:, 0, 0] - cov[:, 0, 1] ** 2 / cov[:, 1, 1]
    expect_mean = (r * stats.lognorm.mean(s=np.sqrt(v), scale=np.exp(m))).sum()
    assert f.impute()[3, 0] == pytest.approx(expect_mean, rel=1e-10)
    stored = f.idata.posterior["imputed_mean"].values[0, 0]
    assert stored[0] == pytest.approx(expect_mean, rel=1e-10)  # row 3 column 0 comes first
    # column 1 is untransformed: its imputation is the plain conditional mean
    assert np.isfinite(f.impute()[5, 1])


def test_point_imputation_is_the_monte_carlo_mean(air, air_fits):
    """Closed-form E[Ozone | observed] against the mean of many back-transformed draws,
    judged by z-scores on the Monte Carlo standard error."""
    _, log, _ = air_fits
    n = 4000
    sims = np.stack([d["Ozone"].to_numpy() for d in log.impute(air, draws=n, seed=3)])
    miss = air["Ozone"].isna().to_numpy()
    mc = sims[:, miss]
    z = (mc.mean(0) - log.impute(air)["Ozone"].to_numpy()[miss]) / (mc.std(0) / np.sqrt(n))
    assert np.abs(z).max() < 4.5  # 37 entries: a 4.5-sigma bound fails with p < 3e-4


def test_draws_inside_the_support(air, air_fits):
    raw, log, _ = air_fits
    miss = air["Ozone"].isna().to_numpy()
    stored = log.idata.posterior_predictive["x_missing"]
    oz = stored.where(stored["missing_feature"] == "Ozone", drop=True).values
    assert oz.size and (oz > 0).all()
    assert min(d["Ozone"].to_numpy()[miss].min() for d in log.impute(draws=20)) > 0
    assert min(d["Ozone"].to_numpy()[miss].min() for d in log.impute(air, draws=50, seed=1)) > 0
    # observed entries come back exactly as given
    for d in log.impute(draws=3):
        np.testing.assert_array_equal(d.to_numpy()[~miss, 0], air["Ozone"].to_numpy()[~miss])
    # without the transform, the same model imputes below zero (the issue this fixes)
    assert raw.impute()["Ozone"].to_numpy()[miss].min() < 0


def test_logit_fit_stays_in_the_unit_interval(shares):
    f = ppgmm.fit(GMM(1, transform={0: "logit"}), shares, seed=0)
    miss = np.isnan(shares[:, 0])
    assert ((f.impute()[miss, 0] > 0) & (f.impute()[miss, 0] < 1)).all()
    for d in f.impute(draws=20):
        assert ((d[miss, 0] > 0) & (d[miss, 0] < 1)).all()
    y = shares.copy()
    y[:, 0] = np.log(y[:, 0] / (1 - y[:, 0]))
    by_hand = ppgmm.fit(GMM(1), y, seed=0)
    for a, b in zip(f.params, by_hand.params, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    obs = ~miss
    jac = (-np.log(shares[obs, 0]) - np.log1p(-shares[obs, 0])).sum()
    assert f.loglik - by_hand.loglik == pytest.approx(jac, abs=1e-8)


def test_save_load_round_trip(tmp_path, air, air_fits):
    _, log, _ = air_fits
    path = log.to_netcdf(str(tmp_path / "log.nc"))
    back = ppgmm.load(path)
    assert back.spec == log.spec and dict(back.spec.transform) == {"Ozone": "log"}
    assert back.transform == log.transform
    pd.testing.assert_frame_equal(back.impute(), log.impute())
    np.testing.assert_allclose(back.score_samples(air.iloc[:20]), log.score_samples(air.iloc[:20]),
                               atol=1e-12)
    assert back.loglik == pytest.approx(log.loglik, abs=1e-9)
    # new data are transformed (and checked) again
    with pytest.raises(DataError, match="'Ozone' has 1 observed"):
        back.predict(air.iloc[:5].assign(Ozone=[-1.0, 3, 4, 5, 6]))


def test_ppc_replicates_inside_the_support(air_fits):
    _, log, _ = air_fits
    ppc = log.ppc_idata(draws=10, seed=0)
    assert (ppc.posterior_predictive["Ozone"].values > 0).all()


def test_spec_positions_and_repr():
    spec = GMM(2, transform={0: "log", "b": "logit"})
    assert spec.transform == ((0, "log"), ("b", "logit"))
    assert GMM.from_json(spec.to_json()) == spec
    assert "transform={0: 'log', 'b': 'logit'}" in repr(spec)
    ct = ColumnTransforms.resolve(spec.transform, ["a", "b", "c"])
    assert ct is not None and ct.mapping() == {"a": "log", "b": "logit"}
    assert GMM(2).to_json() == GMM(2, transform={}).to_json()


# --------------------------------------------------------------------------- report and CLI


def test_report_notes_imputations_out_of_range(tmp_path, air_fits):
    raw, log, _ = air_fits
    cmp = ppgmm.compare([raw])
    ozone = [w for w in cmp.warnings if "imputed Ozone values" in w]
    assert len(ozone) == 1
    assert "transform={'Ozone': 'log'}" in ozone[0] and "(from -2.291 to" in ozone[0]
    # the stored draws outside [1, 168], counted here directly
    x = raw.idata.posterior_predictive["x_missing"]
    oz = x.where(x["missing_feature"] == "Ozone", drop=True).values.ravel()
    n_out = int(((oz < 1) | (oz > 168)).sum())
    assert n_out > 0 and f"{n_out} of its {oz.size} predictive draws (from {oz.min():.4g}" in \
        ozone[0]
    row = cmp.out_of_range.set_index("feature").loc["Ozone"]
    assert row["suggest"] == "log" and row["n_draws_outside"] == n_out
    assert not any("outside" in w for w in ppgmm.compare([log]).warnings)
    both = ppgmm.compare([raw, log])
    assert any("different transforms" in w for w in both.warnings)
    assert set(both.fits) == {"em K=2", "em K=2 log(Ozone)"}
    both.report(str(tmp_path / "both.html"))
    html = (tmp_path / "both.html").read_text()
    assert "transform={&#x27;Ozone&#x27;: &#x27;log&#x27;}" in html
    assert "Transforms: em K=2 log(Ozone): Ozone (log)" in html


def test_cli_transform(tmp_path, air, capsys):
    csv = tmp_path / "air.csv"
    air.to_csv(csv, index=False)
    out = tmp_path / "fit.nc"
    assert main(["fit", str(csv), "-k", "2", "--transform", "Ozone=log", "--out", str(out)]) == 0
    assert "transformed columns: Ozone (log)" in capsys.readouterr().out
    assert ppgmm.load(str(out)).transform.mapping() == {"Ozone": "log"}
    assert main(["fit", str(csv), "-k", "2", "--transform", "Ozone=log,Solar.R=log",
                 "--out", str(out)]) == 0
    assert ppgmm.load(str(out)).transform.mapping() == {"Ozone": "log", "Solar.R": "log"}
    capsys.readouterr()
    assert main(["fit", str(csv), "-k", "2", "--transform", "Ozone", "--out", str(out)]) == 2
    assert "should read COLUMN=NAME" in capsys.readouterr().err
    assert main(["fit", str(csv), "-k", "2", "--transform", "Ozone=sqrt", "--out",
                 str(out)]) == 2
    assert "should be one of ['log', 'logit']" in capsys.readouterr().err


# --------------------------------------------------------------------------- Bayesian


def test_per_draw_imputed_means_of_a_log_column_by_the_conditional_formulas():
    """derived_quantities on data with column 0 logged, K=2, D=3, 2 chains x 2 draws and
    more rows than one row block: each draw's imputed mean of a missing column-0 entry is
    E[exp(Y0) | y_o] = sum_k r_k exp(m_k + v_k / 2), with r_k, m_k, v_k from the explicit
    conditional-normal formulas (numpy.linalg.solve on the observed block), and its
    predictive draws are positive."""
    from ppgmm.data import prepare
    from ppgmm.numerics.patterns import derived_quantities
    from ppgmm.spec import Draws

    rng = np.random.default_rng(21)
    n = 40_000  # three row blocks of predictive() (17476 rows each at K=2, D=3)
    z = rng.multivariate_normal([0.5, 0.0, 1.0], [[1, .6, .3], [.6, 1, .4], [.3, .4, 1]], n)
    x = np.column_stack([np.exp(z[:, 0]), z[:, 1:]])
    x[rng.random((n, 3)) < 0.2] = np.nan
    x[np.isnan(x).all(1), 2] = 1.0
    md = prepare(x, transform={0: "log"})
    c, s, k, d = 2, 2, 2, 3
    a = rng.normal(size=(c, s, k, d, d))
    draws = Draws(rng.dirichlet([3.0, 2.0], size=(c, s)), rng.normal(size=(c, s, k, d)),
                  a @ np.swapaxes(a, -1, -2) / d + 0.3 * np.eye(d))
    imputed, sims, _ = derived_quantities(md, draws, np.random.default_rng(0), 2)
    rows, cols = md.missing_index
    assert (sims[..., cols == 0] > 0).all()
    checked = np.flatnonzero(cols == 0)[::50]  # rows spread over the blocks, 1 or 2 missing
    assert len(np.unique(np.isnan(x[rows[checked]]).sum(1))) == 2
    y = x.copy()
    y[:, 0] = np.log(y[:, 0])
    for ci in range(c):
        for si in range(s):
            w, mu, cov = (p[ci, si] for p in draws)
            for e in checked:
                o = ~np.isnan(x[rows[e]])
                lik, m, v = np.empty(k), np.empty(k), np.empty(k)
                for kk in range(k):
                    soo, s0o = cov[kk][np.ix_(o, o)], cov[kk][0, o]
                    lik[kk] = w[kk] * stats.multivariate_normal.pdf(y[rows[e], o], mu[kk][o], soo)
                    m[kk] = mu[kk, 0] + s0o @ np.linalg.solve(soo, y[rows[e], o] - mu[kk][o])
                    v[kk] = cov[kk, 0, 0] - s0o @ np.linalg.solve(soo, s0o)
                expect = (lik / lik.sum() * np.exp(m + v / 2)).sum()
                assert imputed[ci, si, e] == pytest.approx(expect, rel=1e-10)


def test_advi_draws_and_log_likelihood_on_the_original_scale():
    """The shared Bayesian run maps every draw back and adds the Jacobian per draw."""
    rng = np.random.default_rng(4)
    z = rng.multivariate_normal([1.0, 0.0], [[0.5, 0.2], [0.2, 1.0]], size=60)
    x = np.column_stack([np.exp(z[:, 0]), z[:, 1]])
    x[rng.random(60) < 0.3, 0] = np.nan
    f = ppgmm.fit(GMM(1, transform={0: "log"}), x, backend="advi", seed=0, n_iter=2000,
                  window=500, draws=50, progressbar=False)
    assert (f.idata.posterior_predictive["x_missing"].values > 0).all()
    assert (f.idata.posterior["imputed_mean"].values > 0).all()
    post = f.idata.posterior
    miss = np.isnan(x[:, 0])
    for s in (0, 17):
        mu = post["means"].values[0, s, 0]
        cov = post["covariances"].values[0, s, 0]
        y = x.copy()
        y[:, 0] = np.log(y[:, 0])
        ll = np.where(
            miss, stats.norm.logpdf(y[:, 1], mu[1], np.sqrt(cov[1, 1])),
            stats.multivariate_normal.logpdf(np.where(miss[:, None], 0, y), mu, cov)
            - np.log(np.where(miss, 1.0, x[:, 0])))
        np.testing.assert_allclose(f.idata.log_likelihood["x"].values[0, s], ll, atol=1e-9)
        m = mu[0] + cov[0, 1] / cov[1, 1] * (y[miss, 1] - mu[1])
        v = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
        np.testing.assert_allclose(post["imputed_mean"].values[0, s],
                                   np.exp(m + v / 2), rtol=1e-10)
    assert f.attrs["transform"] == json.dumps({"x0": "log"})


def test_compare_interval_of_a_transformed_point_fit():
    """compare's 94% interval of an EM fit on the log scale: the log-normal quantiles of the
    conditional distribution, computed here from the parameters with scipy."""
    rng = np.random.default_rng(5)
    z = rng.multivariate_normal([1.0, 0.0], [[0.5, 0.3], [0.3, 1.0]], size=80)
    x = np.column_stack([np.exp(z[:, 0]), z[:, 1]])
    x[[2, 9], 0] = np.nan
    f = ppgmm.fit(GMM(1, transform={0: "log"}), x, seed=0)
    imp = ppgmm.compare([f]).imputations.sel(backend="em")
    _, mu, cov = f.params
    m = mu[0, 0] + cov[0, 0, 1] / cov[0, 1, 1] * (x[[2, 9], 1] - mu[0, 1])
    sd = np.sqrt(cov[0, 0, 0] - cov[0, 0, 1] ** 2 / cov[0, 1, 1])
    for name, p in (("lower", 0.03), ("upper", 0.97)):
        np.testing.assert_allclose(imp[name].values,
                                   stats.lognorm.ppf(p, s=sd, scale=np.exp(m)), rtol=1e-8)
    np.testing.assert_allclose(imp["mean"].values, np.exp(m + sd**2 / 2), rtol=1e-10)
    # the CRPS of that log-normal predictive (closed form, Baran and Lerch 2015), whether
    # or not the fit stored predictive draws
    y = np.array([2.0, 0.5])
    phi = stats.norm.cdf
    lz = (np.log(y) - m) / sd
    ref = (y * (2 * phi(lz) - 1)
           - 2 * np.exp(m + sd**2 / 2) * (phi(lz - sd) + phi(sd / np.sqrt(2)) - 1))
    truth = x.copy()
    truth[[2, 9], 0] = y
    for draws in (0, 1, 20):
        g = ppgmm.fit(GMM(1, transform={0: "log"}), x, seed=0, imputation_draws=draws)
        got = ppgmm.compare([g], truth=truth).imputations["crps"].sel(backend="em").values
        np.testing.assert_allclose(got, ref, rtol=1e-9)


# --------------------------------------------------------------------------- several columns


@pytest.fixture(scope="module")
def log_logit():
    """Three columns (log, as is, logit), entries missing in each, rows missing both
    transformed entries or all but one, and the EM fit of K=2 with both transforms."""
    rng = np.random.default_rng(11)
    z = np.concatenate([
        rng.multivariate_normal([0, 0, 0], [[1, .6, .3], [.6, 1, .4], [.3, .4, 1]], 100),
        rng.multivariate_normal([1.5, 2, -1], [[.5, .1, 0], [.1, .7, .2], [0, .2, .6]], 100)])
    x = np.column_stack([np.exp(z[:, 0]), z[:, 1], expit(z[:, 2])])
    mask = rng.random(x.shape) < 0.25
    mask[mask.all(1), 1] = False
    x[mask] = np.nan
    x[0] = [np.nan, 0.3, np.nan]
    x[1] = [2.0, np.nan, np.nan]
    x[2] = [np.nan, np.nan, 0.4]
    return x, ppgmm.fit(GMM(2, transform={0: "log", 2: "logit"}), x, seed=0)


_FORWARD = (np.log, lambda v: v, lambda v: np.log(v / (1 - v)))
_LOG_DERIV = (lambda v: -np.log(v), lambda v: 0.0, lambda v: -np.log(v) - np.log(1 - v))


def _original_scale_density(row, params):
    """The mixture density of a row's observed entries on the original scale: the normal
    mixture of f(x_o) (scipy) times |f'(x_j)| of each observed entry, missing ones not."""
    w, mu, cov = params
    o = ~np.isnan(row)
    y = np.array([_FORWARD[j](row[j]) if o[j] else 0.0 for j in range(3)])
    dens = sum(w[k] * stats.multivariate_normal(mu[k][o], cov[k][np.ix_(o, o)]).pdf(y[o])
               for k in range(len(w)))
    return dens * np.exp(sum(_LOG_DERIV[j](row[j]) for j in range(3) if o[j]))


def test_log_likelihood_has_the_jacobian_of_observed_entries_only(log_logit):
    x, f = log_logit
    expect = np.log([_original_scale_density(r, f.params) for r in x])
    np.testing.assert_allclose(f.score_samples(), expect, rtol=0, atol=1e-10)
    np.testing.assert_allclose(f.idata.log_likelihood["x"].values[0, 0], expect, atol=1e-10)
    p = f.spec.n_parameters(3)
    assert f.loglik == pytest.approx(expect.sum(), abs=1e-9)
    assert f.bic() == pytest.approx(-2 * expect.sum() + p * np.log(len(x)), abs=1e-8)
    assert f.aic() == pytest.approx(-2 * expect.sum() + 2 * p, abs=1e-8)


def test_point_imputations_are_conditional_means_by_quadrature(log_logit):
    """E[x_j | x_obs] of rows missing one or two transformed entries: the ratio of
    integrals of x_j p(x_j, x_obs) and p(x_j, x_obs) over the support (scipy.quad), each
    other missing entry marginalised out."""
    x, f = log_logit
    imp = f.impute()
    support = ((0, np.inf), (-np.inf, np.inf), (0, 1))
    for i in (0, 1, 2):
        for j in np.flatnonzero(np.isnan(x[i])):
            def joint(v, i=i, j=j):
                row = x[i].copy()
                row[j] = v
                return _original_scale_density(row, f.params)

            opts = dict(epsabs=0, epsrel=1e-12, limit=500)
            num = integrate.quad(lambda v, joint=joint: v * joint(v), *support[j], **opts)[0]
            den = integrate.quad(joint, *support[j], **opts)[0]
            assert imp[i, j] == pytest.approx(num / den, rel=1e-9)
    rows, cols = np.nonzero(np.isnan(x))
    np.testing.assert_allclose(f.idata.posterior["imputed_mean"].values[0, 0],
                               imp[rows, cols], rtol=1e-12)


def test_transform_on_a_fully_observed_column():
    """No missing value in the transformed column: EM on the hand-logged column, the
    untransformed column's imputations and draws, the column returned as given."""
    rng = np.random.default_rng(3)
    z = rng.multivariate_normal([0, 1], [[1, .5], [.5, 1]], 100)
    x = np.column_stack([np.exp(z[:, 0]), z[:, 1]])
    x[rng.random(100) < .3, 1] = np.nan
    f = ppgmm.fit(GMM(1, transform={0: "log"}), x, seed=0)
    by_hand = ppgmm.fit(GMM(1), np.column_stack([z[:, 0], x[:, 1]]), seed=0)
    np.testing.assert_allclose(f.impute()[:, 1], by_hand.impute()[:, 1], rtol=1e-10)
    np.testing.assert_array_equal(f.impute()[:, 0], x[:, 0])
    for d in f.impute(draws=3):
        np.testing.assert_array_equal(d[:, 0], x[:, 0])
    np.testing.assert_allclose(f.idata.posterior["imputed_mean"].values,
                               by_hand.idata.posterior["imputed_mean"].values, rtol=1e-10)


def test_integer_column_labels_and_positions():
    """An int key is a position; one that is also another column's label is refused."""
    rng = np.random.default_rng(0)
    x = np.exp(rng.normal(size=(30, 3)))
    assert ppgmm.fit(GMM(1, transform={2: "log"}), x).transform.mapping() == {"x2": "log"}
    ranged = pd.DataFrame(x)  # labels 0, 1, 2 at positions 0, 1, 2: no ambiguity
    assert ppgmm.fit(GMM(1, transform={0: "log"}), ranged).transform.mapping() == {"0": "log"}
    shuffled = pd.DataFrame(x, columns=[2, 0, 1])
    with pytest.raises(SpecError, match=r"transform key 0 is ambiguous: it is a column "
                       r"position \(column '2'\), but a column is also labelled 0"):
        ppgmm.fit(GMM(1, transform={0: "log"}), shuffled)
    assert ppgmm.fit(GMM(1, transform={"0": "log"}), shuffled).transform.mapping() == {
        "0": "log"}


def test_simulate_maps_a_transformed_spec_back():
    """simulate() of a spec with transforms: the same draws as without, mapped back
    (np.exp, expit), the same missing entries, and data the spec can fit."""
    spec = GMM(2, transform={0: "log", "x1": "logit"})
    a, truth = ppgmm.simulate(spec, n=200, n_features=3, seed=0, mechanism="MNAR")
    b, plain = ppgmm.simulate(GMM(2), n=200, n_features=3, seed=0, mechanism="MNAR")
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(truth.values, np.column_stack(
        [np.exp(plain.values[:, 0]), expit(plain.values[:, 1]), plain.values[:, 2]]),
        rtol=1e-14)
    np.testing.assert_array_equal(np.where(truth.mask, np.nan, truth.values), a)
    for p, q in zip(truth.params, plain.params, strict=True):
        np.testing.assert_array_equal(p, q)
    assert ppgmm.fit(spec, a, seed=0).transform.mapping() == {"x0": "log", "x1": "logit"}
    assert truth.transform == {"x0": "log", "x1": "logit"} and plain.transform == {}


def test_true_parameters_are_shown_only_beside_a_fit_on_their_scale():
    spec = GMM(2, transform={"x0": "log"})
    data, truth = ppgmm.simulate(spec, n=200, n_features=2, missing=0.2, seed=1)
    same = ppgmm.compare([ppgmm.fit(spec, data, seed=0)], truth=truth)
    assert same.truth_params is not None and not same.warnings
    raw = ppgmm.compare([ppgmm.fit(GMM(2), data, seed=0)], truth=truth)
    assert raw.truth_params is None
    assert any("on the scale of transform {'x0': 'log'}, the reference fit's (em) on none"
               in w for w in raw.warnings)
    assert raw.imputation_scores is not None  # the complete data still score imputations
    # a raw-scale fit is not judged against a log-scale reference by density distance
    boot = ppgmm.fit(GMM(2), data, seed=0, uncertainty="bootstrap", n_bootstrap=5)
    both = ppgmm.compare({"log": ppgmm.fit(spec, data, seed=0), "raw": boot}, reference="log")
    assert both.agreement.set_index("backend").loc["raw", "verdict"] == (
        "not judged: fitted on a different scale (transform)")


def test_simulate_from_a_transformed_fit_is_on_the_data_s_scale():
    """simulate(fit) maps back through the fit's transforms: the same draws as from its
    point estimate (the mixture's scale), with np.exp on the log column."""
    f = ppgmm.fit(GMM(2, transform={0: "log"}), ppgmm.simulate(
        GMM(2, transform={0: "log"}), n=200, n_features=2, seed=0)[0], seed=0)
    a, truth = ppgmm.simulate(f, n=100, missing=0.0, seed=1)
    b, _ = ppgmm.simulate(f.params, n=100, missing=0.0, seed=1)
    np.testing.assert_allclose(a, np.column_stack([np.exp(b[:, 0]), b[:, 1]]), rtol=1e-14)
    np.testing.assert_array_equal(truth.values, a)


def test_nuts_log_likelihood_includes_the_jacobian():
    """NUTS (2 chains of 100 + 100 draws on 30 rows): each stored draw's per-row
    log-likelihood, which LOO reads, is the original scale's (scipy plus the Jacobian of
    the observed entries)."""
    rng = np.random.default_rng(4)
    z = rng.multivariate_normal([1.0, 0.0], [[0.5, 0.2], [0.2, 1.0]], size=30)
    x = np.column_stack([np.exp(z[:, 0]), z[:, 1]])
    x[rng.random(30) < 0.3, 0] = np.nan
    with warnings.catch_warnings():  # so short a run may not pass the R-hat check
        warnings.simplefilter("ignore", ppgmm.ConvergenceWarning)
        f = ppgmm.fit(GMM(1, transform={0: "log"}), x, backend="nuts", seed=0, chains=2,
                      draws=100, tune=100, progressbar=False)
    post = f.idata.posterior
    obs = ~np.isnan(x[:, 0])
    y = np.column_stack([np.log(np.where(obs, x[:, 0], 1.0)), x[:, 1]])
    for c, s in ((0, 0), (1, 99)):
        mu, cov = post["means"].values[c, s, 0], post["covariances"].values[c, s, 0]
        expect = np.where(obs, stats.multivariate_normal.logpdf(y, mu, cov) - y[:, 0],
                          stats.norm.logpdf(y[:, 1], mu[1], np.sqrt(cov[1, 1])))
        np.testing.assert_allclose(f.idata.log_likelihood["x"].values[c, s], expect,
                                   atol=1e-9)
    assert (f.idata.posterior_predictive["x_missing"].values > 0).all()
