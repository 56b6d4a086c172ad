"""A scikit-learn estimator over the EM backend that accepts NaN.

This module imports scikit-learn (its base classes make the estimator work in pipelines,
grid searches and ``check_estimator``); ``ppgmm.GaussianMixture`` imports it on first use,
so ``import ppgmm`` does not need scikit-learn.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import NotFittedError

from .checks import SEED_LIMIT, check_seed
from .data import prepare
from .exceptions import DataError, SpecError
from .spec import GMM, Params

__all__ = ["GaussianMixture"]

#: scikit-learn's init_params spellings -> ppgmm's EM start
_INIT = {"kmeans": "kmeans++", "k-means++": "kmeans++", "kmeans++": "kmeans++",
         "random": "random"}


def _to_type(cov: np.ndarray, covariance: str) -> np.ndarray:
    """Full (K, D, D) covariances in scikit-learn's per-type shape."""
    if covariance == "tied":
        return cov[0].copy()
    if covariance == "diag":
        return np.diagonal(cov, axis1=1, axis2=2).copy()
    if covariance == "spherical":
        return cov[:, 0, 0].copy()
    return cov.copy()


def _from_type(a: np.ndarray, covariance: str, k: int, d: int) -> np.ndarray:
    """scikit-learn's per-type shape to full (K, D, D)."""
    a = np.asarray(a, dtype=float)
    if covariance == "tied":
        return np.broadcast_to(a, (k, d, d)).copy()
    if covariance == "diag":
        return a[:, :, None] * np.eye(d)
    if covariance == "spherical":
        return a[:, None, None] * np.eye(d)
    return a


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM with missing entries (NaN) marginalised exactly.

    Mirrors :class:`sklearn.mixture.GaussianMixture`: same parameters, attributes and
    convergence rule (its E-step scores the parameters before each M-step, so it stops one
    M-step after the mean per-row objective first gains less than ``tol``; ``lower_bound_``
    is the score before that last step), so from the same start on complete data both
    return the same fit to rounding. It adds ``prior`` for MAP estimation. Fitted state
    lives in trailing-underscore attributes; ``fit_`` holds the full :class:`ppgmm.Fit`.
    It is a scikit-learn estimator (tagged ``allow_nan``): it works in pipelines,
    ``GridSearchCV`` and ``cross_val_score`` (scored by the mean log-likelihood per row),
    and passes ``sklearn.utils.estimator_checks.check_estimator``.

    Parameters
    ----------
    n_components : int, default 1
    covariance_type : {"full", "tied", "diag", "spherical"}, default "full"
    tol : float, default 1e-3
    reg_covar : float, default 1e-6
    max_iter : int, default 100
    n_init : int, default 1
    init_params : {"kmeans", "k-means++", "kmeans++", "random"}, default "kmeans"
        "random" starts from random responsibilities. The three k-means spellings all
        start from k-means (Lloyd's iterations seeded by k-means++) on the mean-imputed
        data with each column standardised, so no feature dominates by its units.
        scikit-learn's default "kmeans" clusters the raw columns, and its "k-means++"
        takes the seeds alone.
    weights_init, means_init, precisions_init : array-like, optional
        Starting values in scikit-learn's shapes; missing ones come from ``init_params``.
    prior : None, "default" or ppgmm.Prior, default None
        None gives the MLE; "default" the MAP under Fraley & Raftery's prior.
    random_state : int, numpy Generator or RandomState, optional
        An int in [0, 2**63) seeds every fit identically; a Generator or RandomState gives
        each fit a seed drawn from it (so refits differ), as in scikit-learn.
    warm_start : bool, default False
        When True, a refit of the same model starts from the last fit's solution, with one
        initialisation (``n_init`` is then ignored), as in scikit-learn.
    verbose : int, default 0
        1 prints whether the fit converged, 2 also the objective per row every
        ``verbose_interval`` iterations (printed when the fit ends, from its stored trace).
    verbose_interval : int, default 10

    Attributes
    ----------
    weights_, means_, covariances_, precisions_ : ndarray
        In scikit-learn's per-type shapes.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame whose column names are all strings.
    fit_ : ppgmm.Fit
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        prior: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.prior = prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    # ------------------------------------------------------------------ sklearn protocol
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"allow_nan": True}

    def set_params(self, **params: Any) -> GaussianMixture:
        """Set constructor parameters (scikit-learn protocol; nested keys pass through)."""
        valid = self.get_params(deep=False)
        unknown = [k for k in params if k.partition("__")[0] not in valid]
        if unknown:
            raise SpecError(f"unknown parameter {unknown[0]!r}; valid parameters are "
                            f"{sorted(valid)}")
        return super().set_params(**params)

    # ------------------------------------------------------------------ fitting
    def _seed(self) -> int | None:
        """An int seed for this fit: the int given, or one drawn from a Generator/RandomState."""
        rs = check_seed(self.random_state, "random_state", generators=True)
        if isinstance(rs, np.random.Generator):
            return int(rs.integers(SEED_LIMIT))
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(np.iinfo(np.int32).max))
        return rs

    def _init(self, spec: GMM, x: Any, seed: int | None) -> Any:
        init = _INIT.get(self.init_params) if isinstance(self.init_params, str) else None
        if init is None:
            raise SpecError(f"init_params should be one of {sorted(_INIT)}, but got "
                            f"{self.init_params!r}")
        given = (self.weights_init, self.means_init, self.precisions_init)
        if all(g is None for g in given):
            return init
        from .backends.em import initial_params

        with warnings.catch_warnings():  # fit() validates the data again, with its warnings
            warnings.simplefilter("ignore")
            md = prepare(x, n_components=spec.n_components)
        rng = np.random.default_rng(seed)
        base = initial_params(spec, md, init, rng, self.reg_covar)
        w = base.weights if self.weights_init is None else np.asarray(self.weights_init, float)
        mu = base.means if self.means_init is None else np.asarray(self.means_init, float)
        if self.precisions_init is None:
            cov = base.covariances
        else:
            cov = self._covariances_from_precisions_init(spec, md.d)
        return Params(w, mu, cov)

    def _covariances_from_precisions_init(self, spec: GMM, d: int) -> np.ndarray:
        """Full covariances from ``precisions_init``, checked like scikit-learn checks it."""
        want = _to_type(np.zeros((spec.n_components, d, d)), spec.covariance).shape
        a = np.asarray(self.precisions_init, dtype=float)
        if a.shape != want:
            raise SpecError(f"precisions_init for covariance_type={spec.covariance!r} should "
                            f"have shape {want}, but has shape {a.shape}")
        prec = _from_type(a, spec.covariance, spec.n_components, d)
        if not (np.isfinite(prec).all() and np.allclose(prec, np.swapaxes(prec, 1, 2))
                and (np.linalg.eigvalsh(prec).min(axis=1) > 0).all()):
            raise SpecError("precisions_init should be symmetric and positive definite "
                            "(for 'diag' and 'spherical': positive)")
        return np.linalg.inv(prec)

    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        """Fit by EM; NaN entries are marginalised."""
        from .api import fit

        spec = GMM(self.n_components, self.covariance_type, self.prior)
        seed = self._seed()
        last = getattr(self, "fit_", None)
        warm = (bool(self.warm_start) and last is not None and last.spec == spec
                and len(last.feature_names) == np.shape(X)[1])
        result = fit(
            spec, X, backend="em", seed=seed, n_init=1 if warm else self.n_init,
            init=last.params if warm else self._init(spec, X, seed), max_iter=self.max_iter,
            tol=self.tol, reg_covar=self.reg_covar, imputation_draws=0, stop="sklearn",
        )
        result._fitted_by = type(self).__name__
        self.fit_ = result
        w, mu, cov = result.params
        self.weights_ = w
        self.means_ = mu
        self.covariances_ = _to_type(cov, self.covariance_type)
        prec = np.linalg.inv(cov)
        self.precisions_ = _to_type(prec, self.covariance_type)
        self.converged_ = result.converged
        self.n_iter_ = int(result.attrs["n_iter"])
        # as scikit-learn: the objective per row before each M-step, the last one kept
        trace = np.asarray(result.idata.sample_stats["objective"].values) / result.data.n
        self.lower_bounds_ = list(trace[:-1]) if len(trace) > 1 else list(trace)
        self.lower_bound_ = float(self.lower_bounds_[-1])
        self.n_features_in_ = result.data.d
        columns = getattr(X, "columns", None)
        if columns is not None and all(isinstance(c, str) for c in columns):
            self.feature_names_in_ = np.asarray(list(columns), dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        if self.verbose:
            self._print_trace()
        return self

    def _print_trace(self) -> None:
        """What ``verbose`` asks for, from the finished fit's trace."""
        if self.verbose >= 2:
            every = max(1, int(self.verbose_interval))
            for i in range(every - 1, len(self.lower_bounds_), every):
                print(f"  Iteration {i + 1}\t objective per row {self.lower_bounds_[i]:.8g}")
        print(f"Initialization {'converged' if self.converged_ else 'did not converge'} "
              f"after {self.n_iter_} iterations (objective per row {self.lower_bound_:.8g}).")

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then return the most probable component of each row."""
        return self.fit(X).predict(X)

    def _fitted(self):
        if not hasattr(self, "fit_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )
        return self.fit_

    def predict_proba(self, X: Any) -> np.ndarray:
        """Membership probabilities given each row's observed entries."""
        return self._fitted().predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component of each row."""
        return self._fitted().predict(X)

    def score_samples(self, X: Any) -> np.ndarray:
        """Observed-data log-likelihood of each row."""
        return self._fitted().score_samples(X)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean observed-data log-likelihood per row."""
        return float(self.score_samples(X).mean())

    def _n_parameters(self) -> int:
        return self._fitted().spec.n_parameters(self.n_features_in_)

    def bic(self, X: Any) -> float:
        """-2 loglik(X) + p log n, with mclust's (and scikit-learn's) parameter count p.

        n counts the rows of ``X`` with an observed entry: a row with none carries no
        information (its log-likelihood is 0, and the fit drops such rows).
        """
        fit = self._fitted()
        md = fit._data_or(X)  # prepared once: rows with an observed entry, and their scores
        n = int(md.observed.any(axis=1).sum())
        if n == 0:
            raise DataError("X has no row with an observed entry: its BIC is undefined")
        return -2 * float(fit._row_loglik(md).sum()) + self._n_parameters() * np.log(n)

    def aic(self, X: Any) -> float:
        """-2 loglik(X) + 2 p."""
        return -2 * float(self.score_samples(X).sum()) + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw complete rows and their components (seeded by ``random_state``)."""
        if n_samples < 1:
            raise SpecError(f"n_samples should be at least 1, but got {n_samples}")
        from .simulate import simulate

        data, truth = simulate(self._fitted().params, n_samples, missing=0.0,
                               seed=self._seed())
        return data, truth.labels
