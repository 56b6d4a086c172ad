r"""SQUAREM acceleration of a fixed-point map (Varadhan & Roland 2008), on valid parameters.

EM converges linearly, at a rate that missing information slows further. SQUAREM takes two
EM steps :math:`\theta_1 = F(\theta_0)`, :math:`\theta_2 = F(\theta_1)`, forms
:math:`r = \theta_1 - \theta_0` and :math:`v = \theta_2 - 2\theta_1 + \theta_0` and jumps to

.. math:: \theta' = \theta_0 + 2 s\, r + s^2 v, \qquad s = \|r\| / \|v\| \ (\text{SqS3}),

clipped to :math:`1 \le s \le s_{max}`; :math:`s = 1` gives :math:`\theta_2` exactly. The
extrapolation is done on an unconstrained parameterisation (:func:`pack`) in which every
point is a valid mixture: log weights (a softmax maps back to the simplex) and, per
component, the lower Cholesky factor of the covariance with its diagonal on the log scale
(so the covariance stays positive definite). The covariance types are linear subspaces of
these coordinates: a diagonal factor stays diagonal, equal factors (``tied``) stay equal,
equal log diagonals (``spherical``) stay equal, so an extrapolated point keeps the type.
A fixed point of EM is a fixed point of the accelerated scheme, so both reach the same one.

The coordinates are taken in each column's units (:func:`column_units`: the starting
mixture's marginal centre and sd per column; one common sd for spherical covariances), so
the step length, and with it the whole path, does not depend on the units of the data:
measured in raw units, a column in the millions dominated :math:`\|r\|` and :math:`\|v\|`,
and the extrapolation then served that column alone.
"""

from __future__ import annotations

import numpy as np

from ..spec import Params

__all__ = ["pack", "unpack", "squarem_point", "column_units", "Units"]


#: per-column centre and scale of :func:`pack`'s coordinates (None: the data's own units)
Units = tuple[np.ndarray, np.ndarray] | None


def column_units(params: Params, covariance: str) -> tuple[np.ndarray, np.ndarray]:
    r"""Centre :math:`m = \sum_k w_k \mu_k` and scale per column: the mixture's marginal sd,
    :math:`s_j^2 = \sum_k w_k (\Sigma_{k,jj} + (\mu_{kj} - m_j)^2)`, or for spherical
    covariances (which a per-column scale would not keep spherical) their root mean."""
    w, mu, cov = params
    centre = w @ mu
    var = w @ (np.diagonal(cov, axis1=1, axis2=2) + (mu - centre) ** 2)
    if covariance == "spherical":
        var = np.full_like(var, var.mean())
    return centre, np.sqrt(np.where(var > 0, var, 1.0))


def pack(params: Params, units: Units = None) -> np.ndarray:
    """Unconstrained coordinates: log weights, means, Cholesky factors with log diagonals;
    with ``units`` (centre, scale), means and factors in those units."""
    w, mu, cov = params
    chol = np.linalg.cholesky(cov)
    k, d = mu.shape
    if units is not None:
        centre, scale = units
        mu = (mu - centre) / scale
        chol = chol / scale[:, None]  # the factor of S^-1 cov S^-1 is S^-1 L
    diag = np.arange(d)
    chol[:, diag, diag] = np.log(chol[:, diag, diag])
    low = np.tril_indices(d)
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    return np.concatenate([logw, mu.ravel(), chol[:, low[0], low[1]].ravel()])


def unpack(theta: np.ndarray, k: int, d: int, units: Units = None) -> Params:
    """The mixture of :func:`pack`'s coordinates ``theta`` (in ``units``, if given)."""
    logw, rest = theta[:k], theta[k:]
    mu = rest[:k * d].reshape(k, d)
    low = np.tril_indices(d)
    chol = np.zeros((k, d, d))
    chol[:, low[0], low[1]] = rest[k * d:].reshape(k, -1)
    diag = np.arange(d)
    chol[:, diag, diag] = np.exp(chol[:, diag, diag])
    if units is not None:
        centre, scale = units
        mu = centre + mu * scale
        chol = chol * scale[:, None]
    w = np.exp(logw - logw.max())
    cov = chol @ np.swapaxes(chol, -1, -2)
    return Params(w / w.sum(), mu, 0.5 * (cov + np.swapaxes(cov, -1, -2)))


def squarem_point(p0: Params, p1: Params, p2: Params, step_max: float,
                  units: Units = None) -> tuple[Params | None, float]:
    """The SqS3 extrapolation from three successive EM iterates, and its step length, in
    ``units`` (:func:`column_units`).

    Returns ``(None, s)`` when the step length ``s`` is 1 (the point would be ``p2``), and
    ``(None, 1.0)`` when the coordinates are not finite (a weight at zero).
    """
    t0, t1, t2 = pack(p0, units), pack(p1, units), pack(p2, units)
    if not (np.isfinite(t0).all() and np.isfinite(t1).all() and np.isfinite(t2).all()):
        return None, 1.0
    r = t1 - t0
    v = t2 - 2.0 * t1 + t0
    nv = np.linalg.norm(v)
    if nv == 0.0:
        return None, 1.0
    s = min(max(np.linalg.norm(r) / nv, 1.0), step_max)
    if s == 1.0:
        return None, s
    k, d = p0.means.shape
    return unpack(t0 + 2.0 * s * r + s * s * v, k, d, units), s
