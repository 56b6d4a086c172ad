r"""Label alignment: the one place that permutes mixture components.

Each draw's components are matched to a reference by minimising the total
Kullback-Leibler divergence :math:`\sum_k KL(N_{ref,k} \,\|\, N_{\pi(k)})` with
:func:`scipy.optimize.linear_sum_assignment`. The permutation per draw is returned so a
result can show which draws were relabelled.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from .spec import Params

__all__ = ["kl_cost", "align_draws", "align_to"]


def kl_cost(means: np.ndarray, covs: np.ndarray, ref: Params) -> np.ndarray:
    """KL(reference component k || draw component j) for every draw, shape (S, K, K) [s, k, j]."""
    d = means.shape[-1]
    chol = np.linalg.cholesky(covs)  # (S, J, D, D)
    logdet = 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)  # (S, J)
    ref_chol = np.linalg.cholesky(ref.covariances)
    ref_logdet = 2 * np.log(np.diagonal(ref_chol, axis1=-2, axis2=-1)).sum(-1)  # (K,)
    # tr(S_j^-1 R_k) = ||L_j^-1 C_k||_F^2 ; quad = ||L_j^-1 (mu_j - m_k)||^2
    a = np.linalg.solve(chol[:, None], ref_chol[None, :, None])  # (S, K, J, D, D)
    tr = (a**2).sum((-2, -1))
    diff = means[:, None, :, :] - ref.means[None, :, None, :]  # (S, K, J, D)
    z = np.linalg.solve(chol[:, None], diff[..., None])[..., 0]
    quad = (z**2).sum(-1)
    return 0.5 * (tr + quad - d + logdet[:, None, :] - ref_logdet[None, :, None])


def align_draws(means: np.ndarray, covs: np.ndarray, ref: Params) -> np.ndarray:
    """Permutation per draw, shape (S, K): reference label k takes draw component perm[s, k]."""
    cost = kl_cost(means, covs, ref)
    perm = np.empty(cost.shape[:2], dtype=int)
    for s in range(cost.shape[0]):
        _, perm[s] = linear_sum_assignment(cost[s])
    return perm


def align_to(params: Params, ref: Params) -> tuple[Params, np.ndarray]:
    """Relabel one parameter set to match ``ref``; returns it and the permutation."""
    w, mu, cov = params
    perm = align_draws(mu[None], cov[None], ref)[0]
    return Params(w[perm], mu[perm], cov[perm]), perm
