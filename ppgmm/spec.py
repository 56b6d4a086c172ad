"""The model specification shared by every backend."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .exceptions import SpecError
from .transforms import normalise_mapping

__all__ = ["GMM", "Prior", "Params", "ResolvedPrior", "Draws", "as_params", "COVARIANCE_TYPES"]

#: covariance types and their mclust model names
COVARIANCE_TYPES = {"full": "VVV", "diag": "VVI", "spherical": "VII", "tied": "EEE"}


class Params(NamedTuple):
    """Mixture parameters as plain arrays.

    Covariances are always stored as full (K, D, D) matrices whatever the type.
    """

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    covariances: np.ndarray  # (K, D, D)


PARAM_NAMES = Params._fields


def as_params(obj: Any, n_components: int | None = None, n_features: int | None = None, *,
              name: str = "parameters") -> Params:
    """Mixture parameters from anything that holds them: the one coercion ppgmm uses.

    Accepts a :class:`ppgmm.Fit` (its point estimate), a :class:`Params`, an xarray
    Dataset such as ``fit.point()`` or ``truth.point()``, an object with ``params`` (a
    ``ppgmm.Truth``), or a mapping with ``weights``, ``means`` and ``covariances``.
    Checks the shapes against ``n_components`` and ``n_features`` when given, that the
    weights lie on the simplex and that the covariances are positive definite.

    Raises
    ------
    SpecError
        Naming ``name`` (the option the parameters were given as) and what is wrong.
    """
    if hasattr(obj, "params") and isinstance(getattr(obj, "params", None), Params):
        obj = obj.params  # a Fit or a Truth
    if isinstance(obj, Params):
        get = obj._asdict().__getitem__
    elif hasattr(obj, "data_vars"):
        get = lambda key: obj[key].values  # noqa: E731
    elif hasattr(obj, "keys") and hasattr(obj, "__getitem__"):
        get = obj.__getitem__
    else:
        get = None
    try:
        if get is None:
            raise KeyError
        w, mu, cov = (np.asarray(get(n), dtype=float) for n in PARAM_NAMES)
    except (KeyError, AttributeError, TypeError, ValueError):
        raise SpecError(
            f"{name} should be a ppgmm.Fit, fit.point(), ppgmm.Params or a dict with weights, "
            f"means and covariances, but got {type(obj).__name__}"
        ) from None
    k = len(w) if n_components is None else n_components
    d = mu.shape[-1] if n_features is None and mu.ndim == 2 else n_features
    if w.shape != (k,) or mu.shape != (k, d) or cov.shape != (k, d, d):
        raise SpecError(
            f"{name} parameters should have the shapes {(k,)}, {(k, d)}, {(k, d, d)} (weights, "
            f"means, covariances), but got {w.shape}, {mu.shape}, {cov.shape}"
        )
    if not (np.all(np.isfinite(w)) and np.all(w > 0) and abs(w.sum() - 1) < 1e-8):
        raise SpecError(f"{name}: weights should be positive and sum to 1")
    if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
        raise SpecError(f"{name}: means and covariances should be finite")
    gap = np.abs(cov - np.swapaxes(cov, -1, -2))
    if gap.max(initial=0.0) > 1e-8 * np.abs(cov).max(initial=0.0):
        # a Cholesky factorisation reads one triangle only: check the other agrees
        j, a, b = np.unravel_index(int(np.argmax(gap)), gap.shape)
        raise SpecError(
            f"{name}: covariances should be symmetric, but component {j} has "
            f"[{a}, {b}] = {cov[j, a, b]:.6g} and [{b}, {a}] = {cov[j, b, a]:.6g}")
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise SpecError(f"{name}: covariances should be symmetric positive definite") from None
    return Params(w, mu, cov)


@dataclass(frozen=True)
class ResolvedPrior:
    """A prior with every hyperparameter set to a number (see :mod:`ppgmm.prior`).

    ``scale`` is the (d, d) matrix :math:`\\Lambda` for full and tied covariances, and
    the scalar :math:`s^2` for diag and spherical (diag on the standardised scale of the
    Bayesian backends: one :math:`s^2_j` per column, shape (d,)).
    """

    kappa: float
    mean: np.ndarray  # (d,)
    dof: float
    scale: np.ndarray  # (d, d), () or, for diag, (d,)
    covariance: str


@dataclass
class Draws:
    """Parameter draws with (chain, draw) leading axes."""

    weights: np.ndarray  # (C, S, K)
    means: np.ndarray  # (C, S, K, D)
    covariances: np.ndarray  # (C, S, K, D, D)

    @property
    def shape(self) -> tuple[int, int]:
        """(chains, draws)."""
        return self.weights.shape[:2]

    def flat(self) -> Params:
        """The three arrays with (chain, draw) merged into one leading axis."""
        return Params(*(a.reshape(-1, *a.shape[2:]) for a in self))

    def __iter__(self):
        return iter((self.weights, self.means, self.covariances))

    @classmethod
    def from_dataset(cls, ds: Any) -> Draws:
        """Weights, means and covariances of an xarray Dataset with chain and draw dims."""
        return cls(*(np.asarray(ds[n].transpose("chain", "draw", ...).values, dtype=float)
                     for n in PARAM_NAMES))

    @classmethod
    def of(cls, params: Params) -> Draws:
        """One parameter set as one chain of one draw."""
        return cls(*(np.asarray(a, dtype=float)[None, None] for a in params))

    def params(self, c: int, s: int) -> Params:
        """One draw as :class:`Params`."""
        return Params(self.weights[c, s], self.means[c, s], self.covariances[c, s])

    def mean_params(self) -> Params:
        """Posterior mean of each parameter."""
        return Params(*(a.mean(axis=(0, 1)) for a in self))


@dataclass(frozen=True)
class Prior:
    r"""The conjugate prior of Fraley & Raftery (2007), as mclust's ``priorControl()``.

    Fields left as ``None`` take mclust's defaults from the data (see
    :meth:`ppgmm.prior.resolve_prior`):

    - weights: flat Dirichlet(1, ..., 1);
    - means: :math:`\mu_k \mid \Sigma_k \sim N(\mu_P, \Sigma_k/\kappa)`;
    - full: :math:`\Sigma_k \sim IW(\nu, \Lambda)`;
      tied: one shared :math:`\Sigma \sim IW(\nu,\Lambda)`;
    - diag: :math:`\sigma^2_{kj} \sim IG(\nu/2, s^2/2)`;
      spherical: :math:`\sigma^2_k \sim IG(\nu/2, s^2/2)`.

    Parameters
    ----------
    shrinkage : float, default 0.01
        :math:`\kappa`, the number of pseudo-observations behind :math:`\mu_P`.
    mean : array of shape (d,), optional
        :math:`\mu_P`; default the column means (the K=1 MLE when entries are missing).
    dof : float, optional
        :math:`\nu`; default d + 2.
    scale : float or array of shape (d, d), optional
        :math:`\Lambda` (full, tied) or :math:`s^2` (diag, spherical); default
        :math:`f V` or :math:`f\,\mathrm{tr}(V)/d` with :math:`f = K^{-2/d}` and V the
        sample covariance.
    """

    shrinkage: float = 0.01
    mean: tuple[float, ...] | None = None
    dof: float | None = None
    scale: Any = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.shrinkage) and self.shrinkage > 0):
            raise SpecError(f"shrinkage should be a positive number, but got {self.shrinkage}")
        if self.dof is not None and not (np.isfinite(self.dof) and self.dof > 0):
            raise SpecError(f"dof should be a positive number, but got {self.dof}")
        if self.mean is not None:
            object.__setattr__(self, "mean", tuple(float(v) for v in np.ravel(self.mean)))
        if self.scale is not None:
            s = np.asarray(self.scale, dtype=float)
            object.__setattr__(self, "scale", float(s) if s.ndim == 0 else tuple(map(tuple, s)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass(frozen=True)
class GMM:
    r"""A Gaussian mixture model specification, the one input every backend reads.

    Parameters
    ----------
    n_components : int
        Number of mixture components K.
    covariance : {"full", "diag", "spherical", "tied"}, default "full"
        Covariance structure (mclust's VVV, VVI, VII, EEE).
    prior : "default", None or Prior, default "default"
        ``"default"`` is the Fraley & Raftery (2007) conjugate prior with mclust's
        defaults; ``None`` means maximum likelihood for EM (the PyMC backends then use
        the default prior and say so in the result's attrs).
    transform : dict, optional
        Columns on a bounded support and their transform (:mod:`ppgmm.transforms`), e.g.
        ``{"Ozone": "log"}`` (x > 0) or ``{"share": "logit"}`` (0 < x < 1); keys are column
        names, or positions (0, 1, ...) for arrays. The mixture and its prior are fitted to
        :math:`y = f(x)`: parameters are reported on that scale, while imputations and
        predictive draws are mapped back exactly (:math:`x = f^{-1}(y)`, inside the
        support), point imputations are conditional means on the original scale, and
        log-likelihoods (``score_samples``, BIC, LOO) include the Jacobian
        :math:`\sum_{j \in o_i}\log|f_j'(x_{ij})|`, so they compare with untransformed fits
        of the same data. Stored as (column, name) pairs; ``dict(spec.transform)`` gives
        the mapping.

    Examples
    --------
    >>> import ppgmm
    >>> ppgmm.GMM(3, covariance="diag")
    GMM(n_components=3, covariance='diag', prior='default')
    >>> ppgmm.GMM(2, transform={"Ozone": "log"})
    GMM(n_components=2, covariance='full', prior='default', transform={'Ozone': 'log'})
    """

    n_components: int
    covariance: str = "full"
    prior: Prior | str | None = field(default="default")
    transform: Any = ()

    def __post_init__(self) -> None:
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise SpecError(f"n_components should be a positive integer, but got {k!r}")
        object.__setattr__(self, "n_components", int(k))
        if self.covariance not in COVARIANCE_TYPES:
            raise SpecError(
                f"covariance should be one of {sorted(COVARIANCE_TYPES)}, but got "
                f"{self.covariance!r}"
            )
        if isinstance(self.prior, str):
            if self.prior != "default":
                raise SpecError(
                    f"prior should be 'default', None or a ppgmm.Prior, but got {self.prior!r}"
                )
            object.__setattr__(self, "prior", Prior())
        elif self.prior is not None and not isinstance(self.prior, Prior):
            raise SpecError(
                f"prior should be 'default', None or a ppgmm.Prior, but got {type(self.prior)}"
            )
        object.__setattr__(self, "transform", normalise_mapping(self.transform or None))

    def __repr__(self) -> str:
        prior = self.prior
        p = "None" if prior is None else "'default'" if prior == Prior() else repr(prior)
        t = f", transform={dict(self.transform)!r}" if self.transform else ""
        return (
            f"GMM(n_components={self.n_components}, covariance={self.covariance!r}, prior={p}"
            f"{t})"
        )

    def n_parameters(self, d: int) -> int:
        """Free parameters, counted as mclust (and scikit-learn) count them."""
        k = self.n_components
        cov = {
            "full": k * d * (d + 1) // 2,
            "tied": d * (d + 1) // 2,
            "diag": k * d,
            "spherical": k,
        }[self.covariance]
        return (k - 1) + k * d + cov

    def to_json(self) -> str:
        """Serialise (for attrs and files)."""
        prior = None if self.prior is None else self.prior.to_dict()  # type: ignore[union-attr]
        out = {"n_components": self.n_components, "covariance": self.covariance, "prior": prior}
        if self.transform:  # pairs, not a dict: JSON would turn column positions into text
            out["transform"] = [list(p) for p in self.transform]
        return json.dumps(out)

    @classmethod
    def from_json(cls, text: str) -> GMM:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        prior = None if d["prior"] is None else Prior(**d["prior"])
        return cls(d["n_components"], d["covariance"], prior, d.get("transform", ()))
