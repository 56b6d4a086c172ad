r"""Label alignment: the one place that permutes mixture components.

Each draw's components are matched to a reference by minimising the total
Kullback-Leibler divergence :math:`\sum_k KL(N_{ref,k} \,\|\, N_{\pi(k)})` with
:func:`scipy.optimize.linear_sum_assignment`. The permutation per draw is returned so a
result can show which draws were relabelled: reference label ``k`` takes the draw's
component ``perm[..., k]``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..spec import Draws, Params
from .densities import chol_logdet

__all__ = ["kl_cost", "align_draws", "permute", "align_to", "align", "count_relabelled"]


def kl_cost(means: np.ndarray, covs: np.ndarray, ref: Params) -> np.ndarray:
    """KL(reference component k || draw component j) for every draw, shape (S, K, K) [s, k, j]."""
    d = means.shape[-1]
    chol, logdet = chol_logdet(covs)  # (S, J, D, D), (S, J)
    ref_chol, ref_logdet = chol_logdet(ref.covariances)
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


def permute(params: Params, perm: np.ndarray) -> Params:
    """Relabel parameter arrays with a component axis first after any batch axes.

    ``params`` holds arrays of shapes (*B, K), (*B, K, D), (*B, K, D, D) and ``perm`` has
    shape (*B, K); the result's component ``k`` is the input's ``perm[..., k]``.
    """
    w, mu, cov = (np.asarray(a) for a in params)
    batch = perm.shape[:-1]
    flat = perm.reshape(-1, perm.shape[-1])
    idx = np.arange(len(flat))[:, None]

    def take(a: np.ndarray) -> np.ndarray:
        a = a.reshape(len(flat), *a.shape[len(batch):])
        return a[idx, flat].reshape(*batch, *a.shape[1:])

    return Params(take(w), take(mu), take(cov))


def align_to(params: Params, ref: Params) -> tuple[Params, np.ndarray]:
    """Relabel one parameter set to match ``ref``; returns it and the permutation (K,)."""
    perm = align_draws(np.asarray(params.means)[None], np.asarray(params.covariances)[None],
                       ref)[0]
    return permute(params, perm), perm


def align(draws: Draws, ref: Params) -> tuple[Draws, np.ndarray]:
    """Relabel every draw to ``ref``; returns the aligned draws and the permutation (C, S, K)."""
    c, s = draws.shape
    flat = draws.flat()
    perm = align_draws(flat.means, flat.covariances, ref).reshape(c, s, -1)
    return Draws(*permute(Params(*draws), perm)), perm


def count_relabelled(perm: np.ndarray) -> int:
    """Number of draws whose permutation (last axis) is not the identity."""
    return int((perm != np.arange(perm.shape[-1])).any(-1).sum())
