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

import numpy as np

from .data import MissingData
from .exceptions import DataError, ObjectiveDecreaseError, PpgmmError, SpecError
from .numerics.em import fit_single_gaussian
from .spec import GMM, ResolvedPrior

__all__ = ["resolve_prior", "data_moments"]


def data_moments(md: MissingData) -> tuple[np.ndarray, np.ndarray]:
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
        mean, cov = md.single_gaussian() if chunked else fit_single_gaussian(md)
    except (ObjectiveDecreaseError, PpgmmError):
        # the MAR likelihood of one Gaussian is unbounded when a column is observed in too
        # few rows to regress it on the others: a data problem, not a bug
        counts = md.col_counts if chunked else md.observed.sum(axis=0)
        j = int(np.argmin(counts))
        raise DataError(
            f"the one-Gaussian fit that sets the default prior's mean and scale is degenerate: "
            f"a column is observed in too few rows (the fewest: {md.feature_names[j]!r}, "
            f"{int(counts[j])} rows) or some columns are linear combinations of others. Drop "
            f"sparse or redundant columns, {remedy}"
        ) from None
    return mean, cov * n / (n - 1)


def resolve_prior(spec: GMM, md: MissingData) -> ResolvedPrior | None:
    """Fill the spec's prior hyperparameters from the data as mclust's ``defaultPrior`` does."""
    prior = spec.prior
    if prior is None:
        return None
    assert not isinstance(prior, str)
    d, k = md.d, spec.n_components
    need_moments = prior.mean is None or prior.scale is None
    mean, cov = data_moments(md) if need_moments else (None, None)
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
        raise ValueError(f"prior scale should have the shape {want}, but got {scale.shape}")
    _check_scale(scale, dof, d, from_data=prior.scale is None, names=md.feature_names)
    if mu_p.shape != (d,):
        raise ValueError(f"prior mean should have the shape {(d,)}, but got {mu_p.shape}")
    return ResolvedPrior(float(prior.shrinkage), mu_p, dof, scale, spec.covariance)


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
        eig = np.linalg.eigvalsh(scale / np.sqrt(np.outer(diag, diag)))
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
