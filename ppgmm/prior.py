r"""The conjugate prior of Fraley & Raftery (2007): its hyperparameters resolved against data.

This module owns the prior's defaults; its log density is
:func:`ppgmm.numerics.densities.log_prior` (the PyMC graph writes the same density in
PyTensor, and a test checks both against ``scipy.stats``).

With :math:`\mu_P` the column means, :math:`V` the sample covariance (N - 1 denominator)
and :math:`f = K^{-2/D}`, mclust's ``defaultPrior`` sets :math:`\kappa = 0.01`,
:math:`\nu = D + 2`, :math:`\Lambda = f V` (full, tied) and :math:`s^2 = f\,\mathrm{tr}(V)/D`
(diag, spherical). When entries are missing, :math:`\mu_P` and :math:`V` come from the
one-component maximum-likelihood fit under MAR (EM with K = 1, V rescaled by N/(N-1)).
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import numpy as np

from .data import MissingData
from .exceptions import DataError, ObjectiveDecreaseError, PpgmmError, SpecError, warn_user
from .numerics.em import fit_single_gaussian
from .spec import GMM, ResolvedPrior

__all__ = ["resolve_prior", "data_moments", "warn_if_prior_dominates"]

#: the one-Gaussian MAR fit behind the default prior, per data object: a Bayesian fit resolves
#: the prior and then runs EM, which resolves it again, and a dask fit does so once per start
_SINGLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Failed(NamedTuple):
    """A cached failure of that fit: the type and message only (the exception's traceback
    would hold the data object alive)."""

    cls: type
    args: tuple


def _single_gaussian(md: Any, chunked: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N denominator) of :func:`fit_single_gaussian`, computed once per
    data object (chunked data compute it chunk by chunk), and so is its failure (a fit
    without a maximum takes all of its max_iter steps to find out)."""
    if md not in _SINGLE:
        try:
            _SINGLE[md] = md.single_gaussian() if chunked else fit_single_gaussian(md)
        except (ObjectiveDecreaseError, PpgmmError) as err:
            _SINGLE[md] = _Failed(type(err), err.args)
    if isinstance(_SINGLE[md], _Failed):
        raise _SINGLE[md].cls(*_SINGLE[md].args)
    mean, cov = _SINGLE[md]
    return mean.copy(), cov.copy()


def data_moments(md: MissingData, covariance: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Column means and sample covariance (N - 1), by the K=1 MAR MLE when entries are missing.

    ``md`` may also be chunked data (:class:`ppgmm.chunked.ChunkedData`), which gives its
    column ranges, counts and the K=1 fit computed chunk by chunk.
    """
    n = md.n
    chunked = not isinstance(md, MissingData)
    remedy = ("give the prior's mean and scale (ppgmm.Prior(mean=..., scale=...)), or use "
              "prior=None")
    if n < 2:
        raise DataError(
            f"the default prior's scale is the data's sample covariance, which needs at least 2 "
            f"rows, but got {n}; {remedy}"
        )
    if chunked:
        spread = md.spread
    else:
        with np.errstate(invalid="ignore"):
            spread = np.nanmax(md.values, axis=0) - np.nanmin(md.values, axis=0)
    constant = [md.feature_names[j] for j in np.flatnonzero(spread == 0)]
    if constant:
        raise DataError(
            f"column(s) {constant} take one value in every observed row, so the default prior's "
            f"scale (the data's covariance) is singular; drop them, {remedy}"
        )
    if not chunked and md.observed.all():
        x = md.values
        return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False, ddof=1))
    try:
        mean, cov = _single_gaussian(md, chunked)
    except (ObjectiveDecreaseError, PpgmmError):
        # the MAR likelihood of one Gaussian is unbounded when a column is observed in too
        # few rows to regress it on the others, or when columns are linearly dependent
        return _moments_of_degenerate(md, covariance, remedy, chunked)
    return mean, cov * n / (n - 1)


def _moments_of_degenerate(md: Any, covariance: str | None, remedy: str,
                           chunked: bool) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise moments for diagonal covariances, else the error naming the cause (for
    chunked data, which keep no rows to look at, the likely causes)."""
    counts = md.col_counts if chunked else md.observed.sum(axis=0)
    if chunked:
        j = int(np.argmin(counts))
        cause = (f"a column is observed in too few rows (the fewest: {md.feature_names[j]!r}, "
                 f"{int(counts[j])} rows) or some columns are linear combinations of others")
    else:
        cause = _degenerate_cause(md)
    if covariance in ("diag", "spherical") and (counts >= 2).all():
        # diagonal covariances never need the columns' joint covariance: the prior's
        # mean and scale come from each column's observed rows instead
        warn_user(
            f"the one-Gaussian fit under MAR that sets the default prior's mean and scale "
            f"is degenerate ({cause}); for covariance={covariance!r} they come from each "
            "column's observed mean and variance instead",
            UserWarning,
        )
        if chunked:
            return md.mean.copy(), np.diag(md.var * counts / (counts - 1))
        return np.nanmean(md.values, axis=0), np.diag(np.nanvar(md.values, axis=0, ddof=1))
    raise DataError(
        f"the one-Gaussian fit that sets the default prior's mean and scale is degenerate: "
        f"{cause}. Drop sparse or redundant columns, use covariance='diag', {remedy}"
    ) from None


def _degenerate_cause(md: MissingData) -> str:
    """Why the one-Gaussian MAR fit is degenerate, naming the columns responsible."""
    import pandas as pd

    names, d = md.feature_names, md.d
    counts = md.observed.sum(axis=0)
    # pairwise-complete correlations: exact duplicates and linear combinations show here
    with np.errstate(all="ignore"):
        r = pd.DataFrame(md.values).corr(min_periods=3).to_numpy()
    pairs = [(names[i], names[j]) for i in range(d) for j in range(i + 1, d)
             if np.isfinite(r[i, j]) and abs(r[i, j]) > 1 - 1e-9]
    if pairs:
        listed = ", ".join(f"{a!r} and {b!r}" for a, b in pairs)
        return (f"columns {listed} are exact linear functions of each other (correlation 1 in "
                "the rows where both are observed)")
    complete = md.values[md.observed.all(axis=1)]
    if len(complete) > d:
        # the complete rows: a null direction of the standardised data names the columns
        z = complete - complete.mean(axis=0)
        z = z / np.where(z.std(axis=0) > 0, z.std(axis=0), 1.0)
        _, sv, vt = np.linalg.svd(z, full_matrices=False)
        if sv[-1] < 1e-7 * sv[0]:
            v = np.abs(vt[-1])
            dep = [names[j] for j in np.flatnonzero(v > 1e-3 * v.max())]
            return (f"columns {dep} are linear combinations of one another (exactly so in the "
                    f"{len(complete)} complete rows)")
    sparse = [f"{names[j]!r} ({int(counts[j])} rows)" for j in np.flatnonzero(counts < d + 1)]
    if sparse:
        return (f"column(s) {', '.join(sparse)} are observed in too few rows to relate them to "
                f"the other {d - 1} columns")
    j = int(np.argmin(counts))
    return (f"a column is observed in too few rows (the fewest: {names[j]!r}, {int(counts[j])} "
            "rows) or some columns are linear combinations of others")


def resolve_prior(spec: GMM, md: MissingData) -> ResolvedPrior | None:
    """Fill the spec's prior hyperparameters from the data as mclust's ``defaultPrior`` does."""
    prior = spec.prior
    if prior is None:
        return None
    assert not isinstance(prior, str)
    d, k = md.d, spec.n_components
    need_moments = prior.mean is None or prior.scale is None
    mean, cov = data_moments(md, spec.covariance) if need_moments else (None, None)
    mu_p = np.asarray(prior.mean if prior.mean is not None else mean, dtype=float)
    dof = float(prior.dof) if prior.dof is not None else d + 2.0
    if prior.scale is not None:
        scale = np.asarray(prior.scale, dtype=float)
    else:
        f = (1.0 / k) ** (2.0 / d)
        assert cov is not None
        scale = f * cov if spec.covariance in ("full", "tied") else np.asarray(
            f * np.trace(cov) / d
        )
    want = (d, d) if spec.covariance in ("full", "tied") else ()
    if scale.shape != want:
        from .exceptions import SpecError

        kind = ("a positive definite matrix, the inverse-Wishart scale" if want
                else "a positive number, the inverse-gamma scale")
        sign = (" (a scalar scale is for covariance 'diag' or 'spherical'; for "
                f"{spec.covariance!r} give e.g. scale * np.eye({d}) with scale > 0)"
                if want and scale.ndim == 0 else "")
        raise SpecError(
            f"prior scale should have the shape {want} for covariance={spec.covariance!r} "
            f"({kind}), but got {_describe(scale)}{sign}"
        )
    _check_scale(scale, dof, d, from_data=prior.scale is None, names=md.feature_names)
    if mu_p.shape != (d,):
        from .exceptions import SpecError

        raise SpecError(f"prior mean should have the shape {(d,)}, but got {mu_p.shape}")
    return ResolvedPrior(float(prior.shrinkage), mu_p, dof, scale, spec.covariance)


def _describe(a: np.ndarray) -> str:
    return f"the number {float(a)}" if a.ndim == 0 else f"an array of shape {a.shape}"


def _check_scale(scale: np.ndarray, dof: float, d: int, *, from_data: bool,
                 names: list[str]) -> None:
    """A proper prior: positive definite Lambda and nu > d - 1, or s2 > 0."""
    if scale.ndim == 0:
        if not (np.isfinite(scale) and scale > 0):
            raise SpecError(f"prior scale should be a positive number, but got {float(scale)}")
        return
    if not np.allclose(scale, scale.T, rtol=1e-12, atol=0):
        raise SpecError("prior scale should be a symmetric matrix")
    diag = np.diagonal(scale)
    if np.isfinite(scale).all() and (diag > 0).all():
        # eigenvalues of the correlation matrix: singularity, whatever the columns' units
        sd = np.sqrt(diag)  # outer(sd, sd), not sqrt(outer(diag, diag)): no overflow
        eig = np.linalg.eigvalsh(scale / sd[:, None] / sd[None, :])
    else:
        eig = np.array([np.nan])
    if not eig.min() > 1e-10:
        if from_data:
            rank = int((eig > 1e-10).sum())
            raise DataError(
                f"the data's covariance is singular (rank {rank} of {d}): some of the columns "
                f"{names} are linear combinations of others (or there are fewer distinct rows "
                "than columns), so the default prior's inverse-Wishart scale is singular. Drop "
                "redundant columns, give the prior's scale (ppgmm.Prior(scale=...)), use "
                "covariance='diag', or use prior=None"
            )
        raise SpecError("prior scale should be a positive definite matrix")
    if not dof > d - 1:
        raise SpecError(
            f"prior dof should exceed d - 1 = {d - 1} for a proper inverse-Wishart, but got {dof}"
        )


#: share of a column's variance estimates above which the one diag prior scale is named,
#: for a column whose variance is below the mean column variance by this ratio
PRIOR_SHARE, UNITS_RATIO = 0.2, 10.0


def warn_if_prior_dominates(spec: GMM, md: Any, rp: ResolvedPrior | None,
                            mle: bool = True) -> None:
    r"""Warn when the default diag prior's one scale swamps a column of small variance.

    With ``covariance="diag"`` the default prior gives every column the inverse-gamma scale
    :math:`s^2 = f\,\mathrm{tr}(V)/D` (mclust's), in the data's units. A component's
    variance of column :math:`j` is :math:`(s^2 + \text{scatter}) / (\nu + n_{kj} + 3)`; with
    about :math:`n_{kj} = c_j / K` observed values per component (:math:`c_j` the column's
    observed count) and the column's variance :math:`v_j`, the prior makes up about
    :math:`a_j = s^2 / (s^2 + n_{kj} v_j)` of it (more when the component is tighter than
    the column). The warning names the column with the largest :math:`a_j` above
    :data:`PRIOR_SHARE` among those whose variance is below the mean column variance by
    :data:`UNITS_RATIO`: the prior's weight from few rows alone is the same for every column
    and intended; only what a column's units add to it is named. ``mle``: whether
    ``prior=None`` (maximum likelihood) is a remedy (not for the Bayesian backends).
    """
    if (rp is None or spec.covariance != "diag" or spec.prior is None
            or spec.prior.scale is not None or np.ndim(rp.scale) != 0):
        return
    var = np.asarray(md.var, dtype=float)
    n_k = np.asarray(md.col_counts, dtype=float) / spec.n_components
    s2 = float(rp.scale)
    share = s2 / (s2 + n_k * var)
    named = (share > PRIOR_SHARE) & (var < var.mean() / UNITS_RATIO)
    if not named.any():
        return
    j = int(np.argmax(np.where(named, share, 0.0)))
    warn_user(
        f"the default prior for covariance='diag' gives every column one scale, s2 = "
        f"{s2:.3g} (from the mean column variance, as mclust's); column "
        f"{md.feature_names[j]!r} has variance {var[j]:.3g}, so with about {n_k[j]:.0f} "
        f"observed values per component the prior makes up about {share[j]:.0%} of its "
        "variance estimates and pulls them up. Put the columns on similar scales first "
        "(e.g. divide each by its standard deviation), or use covariance='full'"
        + (" or prior=None" if mle else ""),
        UserWarning,
    )
