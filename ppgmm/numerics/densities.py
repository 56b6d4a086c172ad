r"""Log densities, all through Cholesky factors (no explicit inverse).

The prior's log density (:func:`log_prior`) is written here once in NumPy; the PyMC graph of
:mod:`ppgmm.backends.pymc_model` writes the same density in PyTensor, and a test checks both
against ``scipy.stats``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, multigammaln

from ..spec import Params, ResolvedPrior

__all__ = ["chol_logdet", "log_mvn", "log_invwishart", "log_invgamma", "log_prior",
           "gaussian_overlaps"]

LOG_2PI = float(np.log(2 * np.pi))


def chol_logdet(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Cholesky factor :math:`L` (:math:`LL^T = A`) and :math:`\log|A| = 2\sum_i \log L_{ii}`.

    Batched over leading axes; raises ``numpy.linalg.LinAlgError`` when ``a`` is not
    positive definite.
    """
    chol = np.linalg.cholesky(a)
    return chol, 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)


def log_mvn(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Log density of :math:`N(\\mathrm{mean}, \\mathrm{cov})` at ``x``, batched."""
    chol, logdet = chol_logdet(cov)
    z = np.linalg.solve(chol, (x - mean)[..., None])[..., 0]
    d = x.shape[-1]
    return -0.5 * (d * LOG_2PI + logdet + (z**2).sum(-1))


def log_invwishart(sigma: np.ndarray, dof: float, scale: np.ndarray) -> np.ndarray:
    r"""Log density of :math:`IW(\nu, \Lambda)` at ``sigma`` (batched over leading axes)."""
    d = scale.shape[-1]
    chol, logdet = chol_logdet(sigma)
    cs, logdet_scale = chol_logdet(scale)
    # tr(Lambda Sigma^-1) = ||L^-1 C||_F^2 with C C^T = Lambda
    m = np.linalg.solve(chol, np.broadcast_to(cs, sigma.shape))
    tr = (m**2).sum((-2, -1))
    return (
        0.5 * dof * logdet_scale
        - 0.5 * dof * d * np.log(2.0)
        - multigammaln(0.5 * dof, d)
        - 0.5 * (dof + d + 1) * logdet
        - 0.5 * tr
    )


def log_invgamma(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Log density of the inverse-gamma with shape ``a`` and scale ``b`` at ``x``."""
    return a * np.log(b) - gammaln(a) - (a + 1) * np.log(x) - b / x


def log_prior(params: Params, prior: ResolvedPrior) -> float:
    """Log prior density of ``params`` (weights on the simplex, covariances as matrices).

    Densities are with respect to Lebesgue measure on (w_1..w_{K-1}), the means and the
    free covariance entries (the lower triangle, the diagonal, or one variance), so the
    value equals the sum of the matching ``scipy.stats`` log densities.
    """
    w, mu, cov = params
    k = len(w)
    out = float(gammaln(k))  # Dirichlet(1, ..., 1)
    kappa = prior.kappa
    if prior.covariance == "full":
        out += float(log_mvn(mu, prior.mean, cov / kappa).sum())
        out += float(log_invwishart(cov, prior.dof, prior.scale).sum())
    elif prior.covariance == "tied":
        out += float(log_mvn(mu, prior.mean, cov / kappa).sum())
        out += float(log_invwishart(cov[0], prior.dof, prior.scale))
    else:
        var = np.diagonal(cov, axis1=1, axis2=2)  # (K, D)
        out += float(
            (-0.5 * (np.log(2 * np.pi * var / kappa) + kappa * (mu - prior.mean) ** 2 / var)).sum()
        )
        s = var if prior.covariance == "diag" else var[:, 0]
        # diag may carry one scale per column (the standardised scale's prior)
        out += float(log_invgamma(s, prior.dof / 2, np.asarray(prior.scale, float) / 2).sum())
    return out


def gaussian_overlaps(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray,
                      s2: np.ndarray) -> np.ndarray:
    r""":math:`\int N(x \mid m_{1i}, S_{1i}) N(x \mid m_{2j}, S_{2j}) dx
    = N(m_{1i} \mid m_{2j}, S_{1i} + S_{2j})`, shape (K1, K2)."""
    return np.exp(log_mvn(m1[:, None], m2[None, :], s1[:, None] + s2[None, :]))
