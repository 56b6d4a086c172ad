r"""Simulate mixture data with entries missing completely at random, at random, or not at random.

Mechanisms, for a target fraction :math:`\rho` of missing entries:

- ``"MCAR"``: each entry is missing with probability :math:`\rho`, independently of the data.
- ``"MAR"``: the first feature is always observed; entry :math:`x_{ij}`, :math:`j > 0`, is
  missing with probability :math:`\mathrm{logit}^{-1}(a + b z_{i0})`, :math:`z_{i0}` the
  standardised first feature, so missingness depends on an observed value only.
- ``"MNAR"``: entry :math:`x_{ij}` is missing with probability
  :math:`\mathrm{logit}^{-1}(a_j + b z_{ij})`, depending on the value itself.

``strength`` is the slope :math:`b`. Under MCAR and MNAR a row that lost every entry gets
one entry back (chosen at random), so every row carries information; the per-entry
probabilities are calibrated for that, so that the expected fraction of missing entries
after it is :math:`\rho` (for MAR, where the first feature is always observed, the
intercept is solved for :math:`\rho` directly). At most :math:`(D - 1)/D` of the entries
can be missing with no row left empty.

That repair is part of the mechanism. Under MCAR it keeps missingness independent of the
data. Under MNAR an entry is in fact missing with probability
:math:`p_{ij} - \tfrac1D \prod_k p_{ik}`, :math:`p_{ij} = \mathrm{logit}^{-1}(a_j + b
z_{ij})`: it also depends, weakly and negatively, on the row's other values (with
:math:`D = 2` at 40% missing about a third of the rows are repaired, and a logistic
regression of one column's mask gives slopes near +1.5 on its own value and -0.5 on the
other's, not +2 and 0). It stays not at random, which is what the mechanism is for.

A spec with ``transform=`` (:mod:`ppgmm.transforms`) draws the mixture on the transformed
scale, as a fit of that spec models it, and returns the data (and ``Truth.values``) mapped
back, :math:`x = f^{-1}(y)` column by column, so that they lie inside each column's support;
``Truth.params`` stay on the transformed scale, like a fit's parameters. Which entries are
missing is decided on the transformed scale, so a spec with and without the transform gives
the same mask for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit

from .checks import check_number, check_seed
from .exceptions import SpecError
from .numerics.em import constrain_covariance
from .spec import GMM, Params, as_params
from .transforms import ColumnTransforms

__all__ = ["simulate", "Truth", "random_params"]

MECHANISMS = ("MCAR", "MAR", "MNAR")


@dataclass(frozen=True)
class Truth:
    """What generated a simulated data set.

    Attributes
    ----------
    params : Params
        The true weights, means and covariances.
    values : ndarray of shape (n, d)
        The complete data, before masking.
    mask : ndarray of bool, shape (n, d)
        True where an entry was made missing.
    labels : ndarray of int, shape (n,)
        The component each row was drawn from.
    mechanism : str
    transform : dict of str to str
        {feature ("x0", ...): transform name} of the columns whose ``params`` are on a
        transformed scale ({} when none): ``compare`` shows the true parameters only beside
        a reference fit on the same scale.
    repaired : ndarray of bool, shape (n,), optional
        True for the rows the mechanism left with no observed entry, which got one entry
        back (see the module docstring); None when the Truth was not made by
        :func:`simulate`.
    """

    params: Params
    values: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    mechanism: str
    transform: dict[str, str] = field(default_factory=dict)
    repaired: np.ndarray | None = None

    def point(self) -> Any:
        """The true parameters as an xarray Dataset, like :meth:`ppgmm.Fit.point`."""
        from .fit import params_dataset

        return params_dataset(self.params, [f"x{j}" for j in range(self.values.shape[1])])


def random_params(spec: GMM, n_features: int, rng: np.random.Generator,
                  separation: float = 3.0) -> Params:
    """Random parameters of the spec's covariance type, usually well separated.

    Weights ~ Dirichlet(5, ..., 5); means ~ N(0, separation^2 I); covariances have
    eigenvalues in [0.5, 1.5] and random orientation (full), are shared (tied), or are
    reduced to their diagonal (diag) or mean variance (spherical). ``separation`` is the
    spread of the means in units of the components' typical sd (about 1); nothing rejects
    close draws, so with K = 2, D = 2 about one draw in eight has components that overlap
    enough to misclassify more than 10% of rows.
    """
    k, d = spec.n_components, n_features
    w = rng.dirichlet(np.full(k, 5.0))
    mu = rng.normal(0.0, separation, (k, d))
    q, _ = np.linalg.qr(rng.normal(size=(k, d, d)))
    lam = rng.uniform(0.5, 1.5, (k, d))
    cov = q @ (lam[:, :, None] * np.swapaxes(q, 1, 2))
    if spec.covariance == "tied":
        cov[:] = cov[0]
    else:
        cov = constrain_covariance(cov, spec.covariance)
    return Params(w, mu, 0.5 * (cov + np.swapaxes(cov, 1, 2)))


def _rate_intercept(z: np.ndarray, slope: float, rate: float) -> float:
    """The intercept a with mean(expit(a + slope z)) = rate (0 < rate < 1)."""
    # expit(+-50 - |slope| max|z|) is 0 or 1 to double precision for every z: a bracket
    reach = 50.0 + abs(slope) * float(np.max(np.abs(z), initial=0.0))
    return brentq(lambda a: expit(a + slope * z).mean() - rate, -reach, reach)


def _calibrated_rate(probs: Any, missing: float, d: int) -> float:
    """Per-entry rate r whose expected fraction missing, after each empty row gets one entry
    back, is ``missing``: mean(p) - mean(prod_j p_ij) / d = missing."""
    def achieved(r: float) -> float:
        p = probs(r)
        return float(p.mean() - np.prod(p, axis=1).mean() / d)

    hi = 1.0 - 1e-12
    if achieved(hi) <= missing:
        return hi
    if achieved(missing) >= missing:  # rows left empty are below rounding (many features)
        return missing
    return brentq(lambda r: achieved(r) - missing, missing, hi, xtol=1e-12)


def simulate(
    spec_or_params: Any,
    n: int = 500,
    *,
    n_features: int = 2,
    missing: float = 0.2,
    mechanism: str = "MCAR",
    strength: float = 2.0,
    separation: float = 3.0,
    seed: int | None = 0,
) -> tuple[np.ndarray, Truth]:
    """Draw ``n`` rows from a Gaussian mixture and mask entries.

    Parameters
    ----------
    spec_or_params : GMM, Fit, Params, xarray.Dataset or mapping
        A spec (parameters drawn by :func:`random_params`; a ``transform`` maps the data
        back, see above), a fit (its point estimate; the transforms it was fitted under map
        the data back to the data's scale), or explicit parameters with weights (K,), means
        (K, D) and covariances (K, D, D), such as ``fit.point()`` (on the scale the mixture
        was fitted on).
    n : int, default 500
    n_features : int, default 2
        Dimension D when a spec is given.
    missing : float, default 0.2
        Expected fraction of missing entries, in [0, 1).
    mechanism : {"MCAR", "MAR", "MNAR"}, default "MCAR"
    strength : float, default 2.0
        Slope of the logistic missingness model for MAR and MNAR.
    separation : float, default 3.0
        With a spec: the sd of the drawn means, in units of the components' typical sd
        (:func:`random_params`); larger gives better separated components.
    seed : int, optional

    Returns
    -------
    data : ndarray of shape (n, d)
        The data with NaN where missing.
    truth : Truth
    """
    if mechanism not in MECHANISMS:
        raise SpecError(f"mechanism should be one of {MECHANISMS}, but got {mechanism!r}")
    if not 0 <= missing < 1:
        raise SpecError(f"missing should be a fraction in [0, 1), but got {missing!r}")
    if not isinstance(n, int | np.integer) or n < 1:
        raise SpecError(f"n should be a positive integer, but got {n!r}")
    rng = np.random.default_rng(check_seed(seed))
    if isinstance(spec_or_params, GMM):
        params = random_params(spec_or_params, n_features, rng,
                               check_number("separation", separation))
    else:
        params = as_params(spec_or_params)
    w, mu, cov = params
    k, d = mu.shape
    labels = rng.choice(k, size=n, p=w / w.sum())
    chol = np.linalg.cholesky(cov)
    x = mu[labels] + np.einsum("nde,ne->nd", chol[labels], rng.standard_normal((n, d)))
    if mechanism != "MCAR" and missing > 0:
        sd = x.std(0)
        z = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    if missing == 0:
        mask = np.zeros((n, d), dtype=bool)
    elif mechanism == "MAR":
        if d < 2:
            raise SpecError("MAR needs at least 2 features: one always observed to depend on")
        rate = missing * d / (d - 1)
        if rate >= 1:
            raise SpecError(f"missing={missing} is too high for MAR with {d} features")
        a = _rate_intercept(z[:, 0], strength, rate)
        p = expit(a + strength * z[:, 0])
        mask = rng.random((n, d)) < p[:, None]
        mask[:, 0] = False
    else:
        if missing > (d - 1) / d:
            raise SpecError(
                f"missing={missing} is too high for {d} feature(s): with no row left empty at "
                f"most {(d - 1) / d:.3g} of the entries can be missing"
            )
        if mechanism == "MCAR":
            def probs(r: float) -> np.ndarray:
                return np.full((n, d), r)
        else:
            def probs(r: float) -> np.ndarray:
                return np.column_stack([
                    expit(_rate_intercept(z[:, j], strength, r) + strength * z[:, j])
                    for j in range(d)])
        p = probs(_calibrated_rate(probs, missing, d))
        mask = rng.random((n, d)) < p
    repaired = mask.all(axis=1)
    mask[repaired, rng.integers(0, d, int(repaired.sum()))] = False
    ct = _transforms_of(spec_or_params, d)
    x = x if ct is None else ct.inverse(x)
    data = np.where(mask, np.nan, x)
    scale = {} if ct is None else {f"x{j}": t.name for j, t in enumerate(ct.by_column)
                                   if t is not None}
    return data, Truth(params, x, mask, labels, mechanism, scale, repaired)


def _transforms_of(source: Any, d: int) -> ColumnTransforms | None:
    """The transforms that map a draw on the mixture's scale back to the data's: a spec's
    ``transform``, or those a fit was fitted under (by position)."""
    from .fit import Fit

    if isinstance(source, Fit):
        return source.transform
    if isinstance(source, GMM) and source.transform:
        return ColumnTransforms.resolve(source.transform, [f"x{j}" for j in range(d)])
    return None
