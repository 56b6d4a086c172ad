"""The model specification and the options ``ppgmm.fit`` accepts."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from helpers import mixture
from sklearn.mixture import GaussianMixture

import ppgmm

COV_TYPES = ["full", "diag", "spherical", "tied"]


def test_defaults_and_repr():
    spec = ppgmm.GMM(3)
    assert spec.covariance == "full"
    assert spec.prior == ppgmm.Prior()
    assert repr(spec) == "GMM(n_components=3, covariance='full', prior='default')"
    assert repr(ppgmm.GMM(2, "diag", prior=None)) == (
        "GMM(n_components=2, covariance='diag', prior=None)")
    assert "shrinkage=0.5" in repr(ppgmm.GMM(2, prior=ppgmm.Prior(shrinkage=0.5)))


def test_immutable_and_hashable():
    spec = ppgmm.GMM(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.n_components = 3  # type: ignore[misc]
    assert ppgmm.GMM(2) == ppgmm.GMM(2, "full", "default")
    assert ppgmm.GMM(np.int64(2)).n_components == 2


@pytest.mark.parametrize("k", [0, -1, 2.5, "3", True, None])
def test_bad_n_components(k):
    with pytest.raises(ppgmm.SpecError, match="n_components should be a positive integer"):
        ppgmm.GMM(k)


@pytest.mark.parametrize("cov", ["VVV", "Full", "", None])
def test_bad_covariance_name_lists_the_valid_ones(cov):
    with pytest.raises(ppgmm.SpecError, match=r"covariance should be one of \['diag', 'full'"):
        ppgmm.GMM(2, covariance=cov)


@pytest.mark.parametrize("prior", ["mclust", 1.0, {"shrinkage": 1}])
def test_bad_prior(prior):
    with pytest.raises(ppgmm.SpecError, match="prior should be 'default', None or a ppgmm.Prior"):
        ppgmm.GMM(2, prior=prior)


@pytest.mark.parametrize("prior", [None, "default", ppgmm.Prior(shrinkage=0.1, dof=6.0)])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_json_round_trip(prior, cov):
    spec = ppgmm.GMM(3, cov, prior=prior)
    assert ppgmm.GMM.from_json(spec.to_json()) == spec


def test_json_round_trip_with_array_hyperparameters():
    prior = ppgmm.Prior(mean=np.array([1.0, 2.0]), scale=np.eye(2))
    spec = ppgmm.GMM(2, prior=prior)
    assert ppgmm.GMM.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("k,d", [(1, 1), (3, 2), (4, 5)])
def test_parameter_count_matches_sklearn(cov, k, d):
    """mclust's counts (VVV, VVI, VII, EEE) equal scikit-learn's _n_parameters."""
    x = np.random.default_rng(0).normal(size=(max(20, 3 * k), d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(k, covariance_type=cov, max_iter=1).fit(x)
    assert ppgmm.GMM(k, cov).n_parameters(d) == gm._n_parameters()


def test_parameter_counts_by_hand():
    # mclust, D=3, K=2: VVV 2*6 + 2*3 + 1 = 19; VVI 6+6+1 = 13; VII 2+6+1 = 9; EEE 6+6+1 = 13
    assert [ppgmm.GMM(2, c).n_parameters(3) for c in COV_TYPES] == [19, 13, 9, 13]


# --------------------------------------------------------------------------- fit options


@pytest.fixture
def x():
    return mixture(seed=0, n=60, d=2, k=2)[0]


def test_unknown_option_lists_valid_ones(x):
    with pytest.raises(ppgmm.SpecError, match=r"unknown option\(s\) \['n_iter'\].*max_iter"):
        ppgmm.fit(ppgmm.GMM(2), x, n_iter=5)


def test_unknown_backend(x):
    with pytest.raises(ppgmm.SpecError, match="backend should be one of"):
        ppgmm.fit(ppgmm.GMM(2), x, backend="gibbs")


def test_spec_must_be_gmm(x):
    with pytest.raises(ppgmm.SpecError, match="spec should be a ppgmm.GMM"):
        ppgmm.fit(2, x)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"n_init": 0}, "n_init should be an integer >= 1"),
        ({"max_iter": -1}, "max_iter should be an integer >= 0"),
        ({"tol": -1.0}, "tol should be a non-negative number"),
        ({"reg_covar": -1e-3}, "reg_covar should be a non-negative number"),
        ({"uncertainty": "jackknife"}, "uncertainty should be None or 'bootstrap'"),
        ({"uncertainty": "bootstrap", "n_bootstrap": 1}, "n_bootstrap should be an integer >= 2"),
        # wrong types get the same clear error, not a TypeError from inside numpy
        ({"tol": "abc"}, "tol should be a non-negative number, but got 'abc'"),
        ({"tol": np.nan}, "tol should be a non-negative number"),
        ({"reg_covar": "x"}, "reg_covar should be a non-negative number"),
        ({"imputation_draws": "3"}, "imputation_draws should be an integer >= 0"),
        ({"imputation_draws": -1}, "imputation_draws should be an integer >= 0"),
        ({"n_init": True}, "n_init should be an integer >= 1"),
        ({"max_iter": 1.5}, "max_iter should be an integer >= 0"),
    ],
)
def test_bad_option_values(x, kw, match):
    with pytest.raises(ppgmm.SpecError, match=match):
        ppgmm.fit(ppgmm.GMM(2), x, **kw)


def _good_init():
    return {"weights": np.array([0.5, 0.5]), "means": np.array([[0.0, 0.0], [1.0, 1.0]]),
            "covariances": np.stack([np.eye(2)] * 2)}


@pytest.mark.parametrize(
    "change,match",
    [
        ({"weights": np.array([0.2, 0.2])}, "weights should be positive and sum to 1"),
        ({"weights": np.array([1.2, -0.2])}, "weights should be positive and sum to 1"),
        ({"means": np.zeros((3, 2))}, "init parameters should have the shapes"),
        ({"covariances": np.stack([np.eye(2), -np.eye(2)])}, "symmetric positive definite"),
        # positive definite by its lower triangle, which is all a Cholesky factor reads
        ({"covariances": np.stack([np.eye(2), [[1.0, 0.0], [0.9, 1.0]]])},
         r"component 1 has \[0, 1\] = 0 and \[1, 0\] = 0.9"),
    ],
)
def test_bad_init_parameters(x, change, match):
    init = {**_good_init(), **change}
    with pytest.raises(ppgmm.SpecError, match=match):
        ppgmm.fit(ppgmm.GMM(2), x, init=init)


def test_bad_init_kind(x):
    with pytest.raises(ppgmm.SpecError,
                       match=r"init should be one of \['auto', 'kmeans\+\+', 'kpod', 'random'\]"):
        ppgmm.fit(ppgmm.GMM(2), x, init="kmeans")
    with pytest.raises(ppgmm.SpecError, match="init should be"):
        ppgmm.fit(ppgmm.GMM(2), x, init=42)
    with pytest.raises(ppgmm.SpecError, match="init should be"):
        ppgmm.fit(ppgmm.GMM(2), x, init={"weights": [0.5, 0.5]})


def test_init_from_a_fit_point(x):
    first = ppgmm.fit(ppgmm.GMM(2), x, seed=0)
    again = ppgmm.fit(ppgmm.GMM(2), x, init=first.point())
    np.testing.assert_allclose(again.params.means, first.params.means, atol=1e-4)
    obj = [float(f.idata.sample_stats["objective"][-1]) for f in (first, again)]
    assert obj[1] >= obj[0] - 1e-9
