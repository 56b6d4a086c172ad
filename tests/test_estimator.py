"""ppgmm.GaussianMixture against sklearn.mixture.GaussianMixture, and with NaN."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import mcar, mixture, precisions_init, scipy_row_loglik, to_full, typed_cov
from numpy.testing import assert_allclose
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGM

import ppgmm

COV_TYPES = ["full", "diag", "spherical", "tied"]


def _start(x, k, cov, seed=0):
    rng = np.random.default_rng(seed)
    n, d = x.shape
    means = x[rng.choice(n, k, replace=False)]
    covs = typed_cov(np.stack([np.cov(x, rowvar=False)] * k) * rng.uniform(0.5, 1.5, (k, 1, 1)),
                     cov)
    return np.full(k, 1.0 / k), means, covs


@pytest.mark.parametrize("cov", COV_TYPES)
def test_matches_sklearn_with_the_same_init(cov):
    x, _, _ = mixture(seed=1, n=300, d=3, k=3)
    k, d = 3, 3
    w0, mu0, c0 = _start(x, k, cov)
    kw = dict(covariance_type=cov, weights_init=w0, means_init=mu0,
              precisions_init=precisions_init(c0, cov), max_iter=2000)
    for tol in (1e-3, 1e-8):  # scikit-learn's default, and a tight one
        ours = ppgmm.GaussianMixture(k, tol=tol, **kw).fit(x)
        theirs = SkGM(k, tol=tol, **kw).fit(x)
        # the same stopping rule: same iteration count, same parameters to rounding
        assert ours.converged_ and theirs.converged_
        assert ours.n_iter_ == theirs.n_iter_
        assert_allclose(ours.weights_, theirs.weights_, rtol=1e-8)
        assert_allclose(ours.means_, theirs.means_, rtol=1e-8, atol=1e-10)
        assert ours.covariances_.shape == theirs.covariances_.shape
        assert ours.precisions_.shape == theirs.precisions_.shape
        assert_allclose(ours.covariances_, theirs.covariances_, rtol=1e-8, atol=1e-10)
        assert_allclose(ours.precisions_, theirs.precisions_, rtol=1e-8, atol=1e-10)
        assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=1e-10)
        assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=1e-10)
    # same parameters in, same scores out (to rounding)
    theirs_at_ours = SkGM(k, covariance_type=cov)
    theirs_at_ours.weights_, theirs_at_ours.means_ = ours.weights_, ours.means_
    theirs_at_ours.covariances_ = ours.covariances_
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    theirs_at_ours.precisions_cholesky_ = _compute_precision_cholesky(ours.covariances_, cov)
    assert_allclose(ours.score_samples(x), theirs_at_ours.score_samples(x), rtol=1e-10)
    assert_allclose(ours.predict_proba(x), theirs_at_ours.predict_proba(x), atol=1e-10)
    assert ours.score(x) == pytest.approx(theirs_at_ours.score(x), rel=1e-10)
    assert ours.bic(x) == pytest.approx(theirs_at_ours.bic(x), rel=1e-10)
    assert ours.aic(x) == pytest.approx(theirs_at_ours.aic(x), rel=1e-10)
    assert_allclose(ours.precisions_,
                    precisions_init(np.array(to_full(ours.covariances_, cov, k, d)), cov),
                    rtol=1e-8)
    assert ours.n_features_in_ == d


@pytest.mark.parametrize("cov", COV_TYPES)
def test_trajectory_equals_sklearn_iteration_by_iteration(cov):
    x, _, _ = mixture(seed=2, n=200, d=2, k=2)
    w0, mu0, c0 = _start(x, 2, cov, seed=4)
    kw = dict(covariance_type=cov, weights_init=w0, means_init=mu0,
              precisions_init=precisions_init(c0, cov), tol=0.0)
    for t in (1, 3, 8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkConvergenceWarning)
            warnings.simplefilter("ignore", ppgmm.ConvergenceWarning)
            ours = ppgmm.GaussianMixture(2, max_iter=t, **kw).fit(x)
            theirs = SkGM(2, max_iter=t, **kw).fit(x)
        # ours stops early only at an exact fixed point (gain <= 0 = tol)
        assert theirs.n_iter_ == t and (ours.n_iter_ == t or ours.converged_)
        assert_allclose(ours.means_, theirs.means_, rtol=1e-6, atol=1e-9)
        assert_allclose(ours.covariances_, theirs.covariances_, rtol=1e-6, atol=1e-9)
        assert_allclose(ours.weights_, theirs.weights_, rtol=1e-6)


def test_accepts_nan_and_scores_observed_subvectors():
    x, _, _ = mixture(seed=3, n=200, d=3, k=2)
    xm = mcar(x, 0.3)
    gm = ppgmm.GaussianMixture(2, random_state=0, tol=1e-8, max_iter=500).fit(xm)
    assert gm.converged_ and gm.n_iter_ >= 1
    ref = scipy_row_loglik(xm, gm.weights_, gm.means_, gm.covariances_)
    assert_allclose(gm.score_samples(xm), ref, rtol=1e-10)
    assert gm.score(xm) == pytest.approx(ref.mean(), rel=1e-10)
    p = gm.predict_proba(xm)
    assert p.shape == (200, 2) and np.all(np.isfinite(p))
    assert_allclose(p.sum(1), 1.0)
    assert np.array_equal(gm.predict(xm), p.argmax(1))
    assert np.array_equal(gm.fit_predict(xm), gm.predict(xm))
    # lower_bound_ is the mean per-row objective at the end (log-likelihood for prior=None)
    assert gm.lower_bound_ == pytest.approx(ref.mean(), rel=1e-8)
    assert isinstance(gm.fit_, ppgmm.Fit)
    # bic uses the parameter count of mclust / scikit-learn
    p_count = ppgmm.GMM(2).n_parameters(3)
    assert gm.bic(xm) == pytest.approx(-2 * ref.sum() + p_count * np.log(200), rel=1e-10)
    # a row with no observed entry carries no information: n stays the 200 informative rows
    empty = np.vstack([xm, np.full((1, 3), np.nan)])
    assert gm.bic(empty) == pytest.approx(-2 * ref.sum() + p_count * np.log(200), rel=1e-10)
    assert gm.aic(empty) == pytest.approx(-2 * ref.sum() + 2 * p_count, rel=1e-10)


def test_prior_gives_the_map():
    x, _, _ = mixture(seed=3, n=100, d=2, k=2)
    mle = ppgmm.GaussianMixture(2, random_state=0, max_iter=500, tol=1e-10).fit(x)
    mapgm = ppgmm.GaussianMixture(2, prior="default", random_state=0, max_iter=500,
                                  tol=1e-10, reg_covar=0.0).fit(x)
    ref = ppgmm.fit(ppgmm.GMM(2), x, seed=0, init=mle.fit_.point(), tol=1e-10)
    assert_allclose(np.sort(mapgm.means_, 0), np.sort(ref.params.means, 0), atol=1e-5)
    assert not np.allclose(mapgm.covariances_, mle.covariances_)


def test_sample():
    x, _, _ = mixture(seed=3, n=300, d=2, k=2)
    gm = ppgmm.GaussianMixture(2, random_state=0).fit(x)
    xs, labels = gm.sample(5000)
    assert xs.shape == (5000, 2) and labels.shape == (5000,)
    assert not np.isnan(xs).any()
    for j in range(2):
        rows = xs[labels == j]
        se = np.sqrt(np.diag(gm.covariances_[j]) / len(rows))
        assert np.all(np.abs(rows.mean(0) - gm.means_[j]) < 4.5 * se)
    with pytest.raises(ppgmm.SpecError):
        gm.sample(0)


def test_sklearn_protocol():
    gm = ppgmm.GaussianMixture(3, covariance_type="diag", random_state=1)
    params = gm.get_params()
    assert params["n_components"] == 3 and params["covariance_type"] == "diag"
    c = clone(gm)
    assert c.get_params() == params and c is not gm
    assert gm.set_params(n_components=2) is gm and gm.n_components == 2
    with pytest.raises(ppgmm.SpecError, match="unknown parameter 'n_comp'"):
        gm.set_params(n_comp=2)
    assert "covariance_type='diag'" in repr(gm)
    with pytest.raises(AttributeError, match="not fitted"):  # NotFittedError is one
        gm.predict(np.zeros((2, 2)))
    assert repr(ppgmm.GaussianMixture()) == "GaussianMixture()"


def test_bad_input_reaches_the_user_as_ppgmm_errors():
    with pytest.raises(ppgmm.SpecError, match="covariance should be one of"):
        ppgmm.GaussianMixture(2, covariance_type="VVV").fit(np.zeros((5, 2)))
    with pytest.raises(ppgmm.DataError, match="infinite"):
        ppgmm.GaussianMixture(2).fit(np.array([[1.0, np.inf], [0.0, 1.0], [2.0, 2.0]]))
    x = np.random.default_rng(0).normal(size=(20, 2))
    x[:4] = np.nan
    with pytest.warns(UserWarning, match="dropped 4 of 20 rows"):
        ppgmm.GaussianMixture(2, random_state=0).fit(x)


def test_convergence_warning_and_n_iter():
    x, _, _ = mixture(seed=3, n=200, d=2, k=3, sep=1.0)
    with pytest.warns(ppgmm.ConvergenceWarning, match="max_iter=2"):
        gm = ppgmm.GaussianMixture(3, max_iter=2, tol=0.0, random_state=0).fit(x)
    assert not gm.converged_ and gm.n_iter_ == 2


# --------------------------------------------------------------------------- scikit-learn protocol


def test_check_estimator_passes_every_check():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        # the array-API check is skipped unless SCIPY_ARRAY_API is set; nothing else
        warnings.simplefilter("ignore", category=pytest.PytestWarning)
        from sklearn.exceptions import SkipTestWarning

        warnings.simplefilter("ignore", category=SkipTestWarning)
        results = check_estimator(ppgmm.GaussianMixture(), on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    assert failed == []
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}
    assert len(results) - len(skipped) >= 35


def _separated(seed=1, n=600):
    params = ppgmm.Params(np.array([0.3, 0.3, 0.4]),
                          np.array([[0.0, 0.0], [7.0, 0.0], [0.0, 7.0]]),
                          np.stack([np.eye(2)] * 3))
    x, truth = ppgmm.simulate(params, n, missing=0.15, seed=seed)
    return x * [10.0, 0.1] + [100.0, -3.0], truth  # columns in different units


def test_grid_search_in_a_pipeline_on_data_with_nan_picks_the_true_k():
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, _ = _separated()
    assert np.isnan(x).any()
    pipe = Pipeline([("sc", StandardScaler()), ("gm", ppgmm.GaussianMixture(random_state=0))])
    gs = GridSearchCV(pipe, {"gm__n_components": [1, 2, 3, 4]}, cv=3).fit(x)
    scores = gs.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert gs.best_params_ == {"gm__n_components": 3}
    # the score is the held-out mean log-likelihood per row
    cv = cross_val_score(pipe.set_params(gm__n_components=3), x, cv=3)
    assert_allclose(cv.mean(), scores[2], rtol=1e-12)
    # direct grid search (no pipeline) works too
    gs = GridSearchCV(ppgmm.GaussianMixture(random_state=0), {"n_components": [1, 3]}, cv=3)
    assert gs.fit(x).best_params_ == {"n_components": 3}


def test_pipeline_predict_score_and_html_repr():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, truth = _separated()
    pipe = make_pipeline(StandardScaler(), ppgmm.GaussianMixture(3, random_state=0)).fit(x)
    gm = pipe[-1]
    z = pipe[0].transform(x)
    assert np.array_equal(pipe.predict(x), gm.predict(z))
    assert pipe.score(x) == pytest.approx(gm.score(z))
    assert "GaussianMixture" in pipe._repr_html_()
    from sklearn.metrics import adjusted_rand_score

    complete = ~np.isnan(x).any(axis=1)  # a row with one of two entries can be ambiguous
    assert adjusted_rand_score(truth.labels[complete], pipe.predict(x)[complete]) > 0.95



def test_default_kmeans_start_finds_three_separated_clusters():
    """Three well-separated clusters: the default start (k-means, greedy k-means++ seeds)
    reaches scikit-learn's best-of-10 optimum from every one of 30 seeds. One plain
    k-means++ run (scipy's kmeans2) put two centres in one cluster for seeds 0 and 22, and
    EM stayed there."""
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, (150, 2)), rng.normal(6, 1, (150, 2)),
              rng.normal([0, 8], 1, (150, 2))]
    best = SkGM(3, n_init=10, random_state=0).fit(x).score(x)
    scores = [ppgmm.GaussianMixture(3, random_state=s).fit(x).score(x) for s in range(30)]
    assert min(scores) > best - 1e-4

@pytest.mark.parametrize("init", ["kmeans", "k-means++", "kmeans++"])
def test_init_params_spellings_of_scikit_learn(init):
    x, _, _ = mixture(seed=3, n=200, d=2, k=2)
    ref = ppgmm.GaussianMixture(2, init_params="kmeans++", random_state=0).fit(x)
    gm = ppgmm.GaussianMixture(2, init_params=init, random_state=0).fit(x)
    assert_allclose(gm.means_, ref.means_)
    with pytest.raises(ppgmm.SpecError, match="init_params should be one of"):
        ppgmm.GaussianMixture(2, init_params="random_from_data").fit(x)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::ppgmm.ConvergenceWarning")
def test_warm_start_continues_as_scikit_learn_does(capsys):
    """Three fits of 3 iterations each, every one from the last one's solution: the same
    parameters and objective as scikit-learn's warm_start after each call."""
    x, _, _ = mixture(seed=1, n=300, d=3, k=3)
    w0, mu0, c0 = _start(x, 3, "full")
    kw = dict(weights_init=w0, means_init=mu0, precisions_init=precisions_init(c0, "full"),
              max_iter=3, tol=0.0, warm_start=True)
    ours, theirs = ppgmm.GaussianMixture(3, verbose=1, **kw), SkGM(3, **kw)
    for _ in range(3):
        ours.fit(x)
        theirs.fit(x)
        assert ours.n_iter_ == theirs.n_iter_ == 3
        assert_allclose(ours.means_, theirs.means_, rtol=1e-10, atol=1e-12)
        assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=1e-12)
    assert capsys.readouterr().out.count("did not converge after 3 iterations") == 3
    cold = ppgmm.GaussianMixture(3, **{**kw, "warm_start": False}).fit(x).fit(x)
    assert not np.allclose(cold.means_, ours.means_)  # without it, each fit starts afresh


@pytest.mark.parametrize("cov, bad, match", [
    ("diag", np.ones(2), r"shape \(2, 2\), but has shape \(2,\)"),
    ("full", np.ones((2, 2)), r"shape \(2, 2, 2\)"),
    ("tied", np.ones((2, 2, 2)), r"shape \(2, 2\), but has shape \(2, 2, 2\)"),
    ("spherical", np.zeros(2), "positive"),
    ("full", np.ones((2, 2, 2)), "positive definite"),
])
def test_precisions_init_of_the_wrong_shape_or_not_positive_is_refused(cov, bad, match):
    x, _, _ = mixture(seed=3, n=100, d=2, k=2)
    with pytest.raises(ppgmm.SpecError, match=match):
        ppgmm.GaussianMixture(2, covariance_type=cov, precisions_init=bad).fit(x)


def test_random_state_generators_and_feature_names():
    import pandas as pd

    x, _, _ = mixture(seed=3, n=200, d=2, k=2)
    df = pd.DataFrame(x, columns=["a", "b"])
    for rs in (np.random.RandomState(0), np.random.default_rng(0)):
        gm = ppgmm.GaussianMixture(2, random_state=rs).fit(df)
        assert gm.converged_
        assert list(gm.feature_names_in_) == ["a", "b"]
    # a RandomState seeds like scikit-learn: the same state, the same fit
    a = ppgmm.GaussianMixture(2, random_state=np.random.RandomState(5)).fit(x)
    b = ppgmm.GaussianMixture(2, random_state=np.random.RandomState(5)).fit(x)
    assert_allclose(a.means_, b.means_)
    assert not hasattr(ppgmm.GaussianMixture(2, random_state=0).fit(x), "feature_names_in_")


def test_unfitted_and_wrong_width_errors_follow_scikit_learn():
    from sklearn.exceptions import NotFittedError

    gm = ppgmm.GaussianMixture(2, random_state=0)
    for method in ("predict", "predict_proba", "score_samples", "score"):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            getattr(gm, method)(np.zeros((2, 2)))
    x, _, _ = mixture(seed=3, n=100, d=3, k=2)
    gm.fit(x)
    with pytest.raises(ppgmm.DataError,
                       match="X has 1 features, but GaussianMixture is expecting 3 features"):
        gm.predict(x[:, :1])
    with pytest.raises(ppgmm.DataError, match="Reshape your data"):
        gm.predict(x[0])
