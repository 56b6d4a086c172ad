"""ppgmm.simulate, and recovery of the truth from large simulated data sets."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import ppgmm
from ppgmm.numerics.alignment import align_to

COV_TYPES = ["full", "diag", "spherical", "tied"]


def _params():
    w = np.array([0.35, 0.65])
    mu = np.array([[0.0, 0.0, 0.0], [4.0, 3.0, -3.0]])
    c1 = np.array([[1.0, 0.6, 0.3], [0.6, 1.5, -0.4], [0.3, -0.4, 0.8]])
    c2 = np.array([[0.7, -0.2, 0.0], [-0.2, 0.5, 0.2], [0.0, 0.2, 1.2]])
    return ppgmm.Params(w, mu, np.stack([c1, c2]))


# --------------------------------------------------------------------------- the simulator


def test_truth_and_data_agree():
    data, truth = ppgmm.simulate(_params(), 500, missing=0.3, seed=1)
    assert data.shape == truth.values.shape == truth.mask.shape == (500, 3)
    assert_array_equal(np.isnan(data), truth.mask)
    assert_array_equal(data[~truth.mask], truth.values[~truth.mask])
    assert not np.isnan(truth.values).any()
    assert truth.mask.any(1).any() and not truth.mask.all(1).any()  # no empty rows
    assert set(np.unique(truth.labels)) == {0, 1}
    assert truth.mechanism == "MCAR"
    assert_allclose(truth.point()["means"].values, _params().means)


def test_seed_reproducible():
    a, _ = ppgmm.simulate(_params(), 50, seed=3)
    b, _ = ppgmm.simulate(_params(), 50, seed=3)
    c, _ = ppgmm.simulate(_params(), 50, seed=4)
    assert_array_equal(a, b)
    assert not np.array_equal(np.nan_to_num(a), np.nan_to_num(c))


def test_accepts_a_fit_point_as_parameters():
    x, _ = ppgmm.simulate(_params(), 300, missing=0.0, seed=0)
    fit = ppgmm.fit(ppgmm.GMM(2), x, seed=0, imputation_draws=1)
    data, truth = ppgmm.simulate(fit.point(), 20, seed=0)
    assert_allclose(truth.params.means, fit.params.means)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_random_params_have_the_type_structure(cov):
    _, truth = ppgmm.simulate(ppgmm.GMM(3, cov), 50, n_features=4, seed=2)
    w, mu, c = truth.params
    assert w.shape == (3,) and mu.shape == (3, 4) and c.shape == (3, 4, 4)
    assert w.sum() == pytest.approx(1.0)
    assert np.all(np.linalg.eigvalsh(c) > 0)
    assert_allclose(c, np.swapaxes(c, 1, 2))
    if cov == "tied":
        assert_allclose(c, np.broadcast_to(c[0], c.shape))
    if cov in ("diag", "spherical"):
        assert_allclose(c, np.diagonal(c, axis1=1, axis2=2)[:, :, None] * np.eye(4))
    if cov == "spherical":
        assert_allclose(np.diagonal(c, axis1=1, axis2=2), c[:, :1, 0] * np.ones(4))


def test_mcar_rate_and_independence():
    n, rho = 20_000, 0.2
    data, truth = ppgmm.simulate(_params(), n, missing=rho, seed=5)
    m = truth.mask
    se = np.sqrt(rho * (1 - rho) / m.size)
    assert abs(m.mean() - rho) < 4 * se
    # independent of the values: correlation of mask and value near 0 (se 1/sqrt(n))
    for j in range(3):
        r = np.corrcoef(m[:, j], truth.values[:, j])[0, 1]
        assert abs(r) < 4 / np.sqrt(n)


def test_mar_depends_on_the_observed_first_feature():
    n, rho = 20_000, 0.2
    data, truth = ppgmm.simulate(_params(), n, missing=rho, mechanism="MAR", seed=6)
    m = truth.mask
    assert not m[:, 0].any()  # the feature missingness depends on is always observed
    assert m.mean() == pytest.approx(rho, abs=0.01)
    x0 = truth.values[:, 0]
    for j in (1, 2):
        assert np.corrcoef(m[:, j], x0)[0, 1] > 0.2  # strength > 0: high x0 -> missing
    # given x0, missingness does not depend on the value itself: compare within a thin slice
    mid = np.abs(x0 - np.median(x0)) < 0.05
    r = np.corrcoef(m[mid, 1], truth.values[mid, 1])[0, 1]
    assert abs(r) < 4 / np.sqrt(mid.sum())


def test_mnar_depends_on_the_value_itself():
    n, rho = 20_000, 0.25
    data, truth = ppgmm.simulate(_params(), n, missing=rho, mechanism="MNAR", seed=7)
    m = truth.mask
    assert m.mean() == pytest.approx(rho, abs=0.01)
    for j in range(3):
        assert np.corrcoef(m[:, j], truth.values[:, j])[0, 1] > 0.2


@pytest.mark.parametrize("mechanism", ["MCAR", "MNAR"])
@pytest.mark.parametrize("rho", [0.3, 0.45])
def test_rate_is_met_although_empty_rows_get_an_entry_back(mechanism, rho):
    """With D=2 many rows would lose both entries (rho^2); giving one back must not lower
    the rate (uncalibrated, MCAR at 0.45 gave 0.35)."""
    p = ppgmm.Params(np.array([1.0]), np.zeros((1, 2)), np.eye(2)[None])
    data, truth = ppgmm.simulate(p, 20_000, missing=rho, mechanism=mechanism, seed=3)
    assert not truth.mask.all(axis=1).any()
    se = np.sqrt(rho * (1 - rho) / truth.mask.size)
    assert abs(truth.mask.mean() - rho) < 4 * se


def test_repaired_rows_are_the_closed_form_fraction_and_keep_one_entry():
    """MCAR, D=2, target 0.4: each entry is first masked with rate r, r - r^2/2 = 0.4, so
    r = 1 - sqrt(0.2) and a fraction r^2 of the rows lose both entries and get one back."""
    p = ppgmm.Params(np.array([1.0]), np.zeros((1, 2)), np.eye(2)[None])
    n = 50_000
    _, truth = ppgmm.simulate(p, n, missing=0.4, seed=5)
    expected = (1 - np.sqrt(0.2)) ** 2
    assert truth.repaired.shape == (n,) and truth.repaired.dtype == bool
    assert abs(truth.repaired.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    assert_array_equal(truth.mask[truth.repaired].sum(axis=1), 1)
    _, mar = ppgmm.simulate(p, 1000, missing=0.3, mechanism="MAR", seed=5)
    assert not mar.repaired.any()  # the first feature is always observed


@pytest.mark.parametrize("seed", [1, 130, 154])
def test_low_mnar_rate_with_many_features_is_met(seed):
    """With D=10 at 10% no row is left empty to rounding, so the calibration's bracket had
    the same sign at both ends and scipy's brentq raised (these seeds did, before the fix).
    The rate is still met, within 4 binomial se of the 2000 entries."""
    data, truth = ppgmm.simulate(ppgmm.GMM(5), 200, n_features=10, missing=0.1,
                                 mechanism="MNAR", seed=seed)
    assert np.isfinite(data[~truth.mask]).all()
    assert abs(truth.mask.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / truth.mask.size)


@pytest.mark.parametrize(("mechanism", "strength"), [("MNAR", 15.0), ("MNAR", 100.0),
                                                     ("MAR", 100.0)])
def test_steep_slopes_meet_the_rate(mechanism, strength):
    """A steep slope needs an intercept beyond +-50 (scipy's brentq raised there): the
    rate is met within 4 binomial se, and the mask still follows the values."""
    data, truth = ppgmm.simulate(ppgmm.GMM(2), 2000, n_features=3, missing=0.2,
                                 mechanism=mechanism, strength=strength, seed=0)
    assert abs(truth.mask.mean() - 0.2) < 4 * np.sqrt(0.2 * 0.8 / truth.mask.size)
    driver = truth.values[:, 1] if mechanism == "MNAR" else truth.values[:, 0]
    assert np.corrcoef(truth.mask[:, 1], driver)[0, 1] > 0.3


def test_rate_above_what_nonempty_rows_allow_is_refused():
    p = ppgmm.Params(np.array([1.0]), np.zeros((1, 2)), np.eye(2)[None])
    with pytest.raises(ppgmm.SpecError, match="at most 0.5 of the entries"):
        ppgmm.simulate(p, 10, missing=0.6)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"mechanism": "MAR!"}, "mechanism should be one of"),
        ({"missing": 1.0}, r"missing should be a fraction in \[0, 1\)"),
        ({"missing": -0.1}, "missing should be a fraction"),
        ({"n": 0}, "n should be a positive integer"),
    ],
)
def test_bad_arguments(kw, match):
    args = {"n": 10, **kw}
    n = args.pop("n")
    with pytest.raises(ppgmm.SpecError, match=match):
        ppgmm.simulate(_params(), n, **args)


def test_mar_needs_two_features():
    p = ppgmm.Params(np.array([1.0]), np.zeros((1, 1)), np.ones((1, 1, 1)))
    with pytest.raises(ppgmm.SpecError, match="MAR needs at least 2 features"):
        ppgmm.simulate(p, 10, mechanism="MAR")


# --------------------------------------------------------------------------- recovery


def test_mcar_large_n_recovers_truth_and_imputes_better_than_column_means():
    """N = 20000, 20% MCAR: every estimate within 4.5 standard errors of the truth.

    Standard errors are the complete-data asymptotic ones inflated for the entries lost:
    mean_kj: sqrt(S_jj / (n w_k 0.8)); cov_kjl: sqrt((S_jj S_ll + S_jl^2) / (n w_k 0.8^2))
    (an entry pair is seen together in 64% of rows); weight: sqrt(w (1 - w) / n). These
    bound the true SEs from above, so 4.5 of them is a tolerance, not a lucky seed.
    """
    n = 20_000
    truth_params = _params()
    data, truth = ppgmm.simulate(truth_params, n, missing=0.2, seed=11)
    fit = ppgmm.fit(ppgmm.GMM(2, prior=None), data, seed=0, imputation_draws=1)
    est, _ = align_to(fit.params, truth_params)
    w, mu, cov = truth_params
    se_w = np.sqrt(w * (1 - w) / n)
    assert np.all(np.abs(est.weights - w) < 4.5 * se_w)
    var = np.diagonal(cov, axis1=1, axis2=2)
    nk = n * w
    se_mu = np.sqrt(var / (nk[:, None] * 0.8))
    assert np.all(np.abs(est.means - mu) < 4.5 * se_mu)
    se_cov = np.sqrt((var[:, :, None] * var[:, None, :] + cov**2) / (nk[:, None, None] * 0.64))
    assert np.all(np.abs(est.covariances - cov) < 4.5 * se_cov)

    # imputation: conditional means beat column means, and are as good as the truth's own
    m = truth.mask
    rmse = np.sqrt(np.mean((fit.impute()[m] - truth.values[m]) ** 2))
    colmean = np.where(m, np.nanmean(data, axis=0), data)
    rmse_mean = np.sqrt(np.mean((colmean[m] - truth.values[m]) ** 2))
    with pytest.warns(ppgmm.ConvergenceWarning):
        oracle = ppgmm.fit(ppgmm.GMM(2, prior=None), data, max_iter=0, imputation_draws=1,
                           init={"weights": w, "means": mu, "covariances": cov})
    rmse_oracle = np.sqrt(np.mean((oracle.impute()[m] - truth.values[m]) ** 2))
    assert rmse < 0.6 * rmse_mean
    assert rmse < 1.01 * rmse_oracle


def test_mar_single_gaussian_is_consistent_where_complete_cases_are_biased():
    """Under MAR the EM (which ignores the mechanism) recovers the mean; the mean of the
    observed values does not."""
    p = ppgmm.Params(np.array([1.0]), np.array([[0.0, 1.0]]),
                     np.array([[[1.0, 0.8], [0.8, 1.0]]]))
    n = 20_000
    data, truth = ppgmm.simulate(p, n, missing=0.3, mechanism="MAR", strength=2.0, seed=2)
    fit = ppgmm.fit(ppgmm.GMM(1, prior=None), data, imputation_draws=1)
    se = np.sqrt(1.0 / n) * 2  # at most twice the complete-data SE with 60% of x1 missing
    assert abs(fit.params.means[0, 1] - 1.0) < 4 * se
    assert abs(np.nanmean(data[:, 1]) - 1.0) > 20 * se


def test_separation_scales_the_drawn_means():
    """means ~ N(0, separation^2 I): the same seed at twice the separation gives twice the
    means and the same weights and covariances."""
    _, a = ppgmm.simulate(ppgmm.GMM(3), 50, n_features=2, seed=4)
    _, b = ppgmm.simulate(ppgmm.GMM(3), 50, n_features=2, seed=4, separation=6.0)
    np.testing.assert_allclose(b.params.means, 2 * a.params.means, rtol=1e-14)
    np.testing.assert_array_equal(b.params.weights, a.params.weights)
    np.testing.assert_array_equal(b.params.covariances, a.params.covariances)
    with pytest.raises(ppgmm.SpecError, match="separation should be a non-negative number"):
        ppgmm.simulate(ppgmm.GMM(3), 50, separation=-1.0)
