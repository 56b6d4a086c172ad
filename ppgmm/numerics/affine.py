r"""Per-column affine maps of data, mixture parameters and the prior: the standardised scale.

With centres :math:`m_j` and scales :math:`s_j > 0`, :math:`x = m + S z`
(:math:`S = \mathrm{diag}(s)`). A Gaussian mixture is equivariant under this map:

- data: :math:`z_i = S^{-1}(x_i - m)` (missing entries stay missing);
- parameters: :math:`\mu_k = m + S\mu^z_k`, :math:`\Sigma_k = S\Sigma^z_k S`, weights unchanged;
- log-likelihood: :math:`\log p(x_{i,o}) = \log p(z_{i,o}) - \sum_{j \in o_i} \log s_j`
  (the Jacobian of the observed entries of each row);
- the conjugate prior of Fraley & Raftery (2007): :math:`\mu^z_P = S^{-1}(\mu_P - m)`,
  :math:`\Lambda^z = S^{-1}\Lambda S^{-1}` (full, tied) and, for diag, the inverse-gamma
  scale of column :math:`j` becomes :math:`s^2 / s_j^2` (one scale per column). A spherical
  covariance stays spherical only when every column is scaled alike, so
  :func:`standardising` gives spherical models one common scale; its prior scale becomes
  :math:`s^2 / c^2`.

The prior densities transform with the parameters (:math:`\log p(\theta) =
\log p^z(\theta^z) + \log|\partial\theta^z/\partial\theta|`), so the posterior of the
standardised problem, mapped back, is exactly the posterior of the original one.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from ..data import MissingData
from ..spec import Draws, Params, ResolvedPrior

__all__ = ["Affine", "standardising", "data_to_z", "params_to_z", "params_from_z",
           "draws_from_z", "prior_to_z", "log_jacobian"]


class Affine(NamedTuple):
    r""":math:`x = \mathrm{shift} + \mathrm{scale} \odot z`, per column."""

    shift: np.ndarray  # (D,)
    scale: np.ndarray  # (D,), positive

    @classmethod
    def identity(cls, d: int) -> Affine:
        """The map that changes nothing."""
        return cls(np.zeros(d), np.ones(d))


def standardising(md: MissingData, covariance: str = "full") -> Affine:
    r"""Centres and scales that standardise the observed entries of each column.

    :math:`m_j` is the mean and :math:`s_j` the standard deviation of column :math:`j`'s
    observed entries (1 where it is zero or undefined). For ``covariance="spherical"`` every
    column gets the one scale :math:`c = (\frac{1}{D}\sum_j s_j^2)^{1/2}`, which keeps a
    spherical covariance spherical.
    """
    x = md.values
    obs = md.observed
    count = obs.sum(axis=0)
    m = np.where(obs, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    var = np.where(obs, (x - m) ** 2, 0.0).sum(axis=0) / np.maximum(count - 1, 1)
    s = np.sqrt(var)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    if covariance == "spherical":
        s = np.full_like(s, np.sqrt(np.mean(s**2)))
    return Affine(m, s)


def data_to_z(md: MissingData, a: Affine) -> MissingData:
    """The same data (rows, patterns, labels) with values :math:`(x - m) / s`."""
    return dataclasses.replace(md, values=(md.values - a.shift) / a.scale)


def params_to_z(params: Params, a: Affine) -> Params:
    r""":math:`\mu^z = S^{-1}(\mu - m)`, :math:`\Sigma^z = S^{-1}\Sigma S^{-1}`."""
    w, mu, cov = params
    inv = 1.0 / a.scale
    return Params(np.asarray(w, float), (np.asarray(mu) - a.shift) * inv,
                  np.asarray(cov) * inv[:, None] * inv[None, :])


def params_from_z(params: Params, a: Affine) -> Params:
    r""":math:`\mu = m + S\mu^z`, :math:`\Sigma = S\Sigma^z S` (the inverse of
    :func:`params_to_z`)."""
    w, mu, cov = params
    s = a.scale
    return Params(np.asarray(w, float), a.shift + np.asarray(mu) * s,
                  np.asarray(cov) * s[:, None] * s[None, :])


def draws_from_z(draws: Draws, a: Affine) -> Draws:
    """:func:`params_from_z` applied to every draw."""
    s = a.scale
    return Draws(draws.weights, a.shift + draws.means * s,
                 draws.covariances * s[:, None] * s[None, :])


def prior_to_z(rp: ResolvedPrior, a: Affine) -> ResolvedPrior:
    r"""The resolved prior of the standardised parameters (see the module docstring).

    ``diag`` gets a per-column inverse-gamma scale, shape (D,); ``spherical`` needs one
    common scale (as :func:`standardising` gives it) and keeps a scalar.
    """
    inv = 1.0 / a.scale
    mean = (np.asarray(rp.mean, float) - a.shift) * inv
    scale = np.asarray(rp.scale, float)
    if rp.covariance in ("full", "tied"):
        scale = scale * inv[:, None] * inv[None, :]
    elif rp.covariance == "diag":
        scale = np.broadcast_to(scale, inv.shape) * inv**2
    else:
        if not np.allclose(a.scale, a.scale[0], rtol=1e-12, atol=0):
            raise ValueError("a spherical prior needs one common scale for every column")
        scale = scale * inv[0] ** 2
    return ResolvedPrior(rp.kappa, mean, rp.dof, scale, rp.covariance)


def log_jacobian(observed: np.ndarray, a: Affine) -> np.ndarray:
    r""":math:`\sum_{j \in o_i} \log s_j` per row, shape (N,): subtract it from a row's
    log-likelihood on the standardised scale to get the original scale's."""
    return np.asarray(observed, float) @ np.log(a.scale)
