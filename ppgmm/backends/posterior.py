r"""What the Bayesian backends do with draws: label alignment, derived quantities, diagnostics.

Shared by :mod:`ppgmm.backends.nuts` and :mod:`ppgmm.backends.advi`; packaging goes through
:func:`ppgmm.fit.build_idata`, the one owner of the result schema.

- Alignment: every draw's components are matched to a reference parameter set by
  :func:`ppgmm.align.align_draws` (KL cost, ``linear_sum_assignment``); the permutation is
  kept per draw.
- Derived quantities per draw :math:`\theta^{(s)}`: :math:`E[x_{mis} \mid x_{obs}, \theta^{(s)}]`,
  one predictive draw :math:`x_{mis}^{(s)} \sim p(x_{mis} \mid x_{obs}, \theta^{(s)})` and the
  observed-data log-likelihood of each row, with the EM kernels
  (:func:`ppgmm.backends.em.e_step`, :func:`ppgmm.backends.em.conditional_draws`).
- Diagnostics: rank-normalised split R-hat (before and after alignment), bulk ESS, and a
  check that chains found the same mode (not only the same labels).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..align import align_draws
from ..data import MissingData
from ..exceptions import ConvergenceWarning, SpecError
from ..spec import Params

__all__ = [
    "Draws",
    "align",
    "derived_quantities",
    "rhat_max",
    "ess_bulk_min",
    "modes_differ",
    "reference_params",
    "Messages",
]

PARAMS = ("weights", "means", "covariances")


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

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three arrays with (chain, draw) merged into one axis."""
        return tuple(a.reshape(-1, *a.shape[2:]) for a in (self.weights, self.means,  # type: ignore[return-value]
                                                            self.covariances))

    @classmethod
    def from_dataset(cls, ds: Any) -> Draws:
        """Weights, means and covariances of an xarray Dataset with chain and draw dims."""
        return cls(*(np.asarray(ds[n].transpose("chain", "draw", ...).values, dtype=float)
                     for n in PARAMS))

    def params(self, c: int, s: int) -> Params:
        """One draw as :class:`~ppgmm.spec.Params`."""
        return Params(self.weights[c, s], self.means[c, s], self.covariances[c, s])

    def mean_params(self) -> Params:
        """Posterior mean of each parameter."""
        return Params(*(a.mean(axis=(0, 1)) for a in (self.weights, self.means,
                                                      self.covariances)))

    def dataset(self):
        """The draws as an xarray Dataset (chain, draw, component, feature, feature_)."""
        import xarray as xr

        dims = ("chain", "draw", "component")
        return xr.Dataset({
            "weights": (dims, self.weights),
            "means": ((*dims, "feature"), self.means),
            "covariances": ((*dims, "feature", "feature_"), self.covariances),
        })


@dataclass
class Messages:
    """Warnings in plain words, raised and kept for the result's attrs."""

    items: list[str] = field(default_factory=list)

    def warn(self, text: str, category: type[Warning] = ConvergenceWarning,
             stacklevel: int = 4) -> None:
        """Record ``text`` and raise it as a warning."""
        self.items.append(text)
        warnings.warn(text, category, stacklevel=stacklevel)

    def json(self) -> str:
        """JSON list for ``posterior.attrs["warnings"]``."""
        return json.dumps(self.items)


# --------------------------------------------------------------------------- alignment


def reference_params(reference: Any, k: int, d: int) -> Params | None:
    """Parameters of a ``reference=`` option: a Fit, a Params, or None."""
    if reference is None:
        return None
    if isinstance(reference, Params):
        ref = reference
    elif hasattr(reference, "params") and hasattr(reference, "idata"):
        ref = reference.params
    else:
        raise SpecError(
            f"reference should be a ppgmm.Fit (e.g. an EM fit) or ppgmm.Params, but got "
            f"{type(reference).__name__}"
        )
    if ref.means.shape != (k, d):
        raise SpecError(
            f"reference should have {k} components on {d} features, but got means of shape "
            f"{ref.means.shape}"
        )
    return Params(*(np.asarray(a, dtype=float) for a in ref))


def pivot_params(draws: Draws, lp: np.ndarray | None) -> Params:
    """A pivot draw: the one with the highest log density when known, else the last draw."""
    flat_w, flat_m, flat_c = draws.flat()
    i = int(np.argmax(lp.reshape(-1))) if lp is not None else len(flat_w) - 1
    return Params(flat_w[i], flat_m[i], flat_c[i])


def align(draws: Draws, ref: Params) -> tuple[Draws, np.ndarray]:
    """Relabel every draw to ``ref``; returns the aligned draws and the permutation (C, S, K).

    Reference component ``k`` takes the draw's component ``perm[c, s, k]``.
    """
    c, s = draws.shape
    w, m, cov = draws.flat()
    perm = align_draws(m, cov, ref)  # (C*S, K)
    idx = np.arange(len(perm))[:, None]
    out = Draws(
        w[idx, perm].reshape(draws.weights.shape),
        m[idx, perm].reshape(draws.means.shape),
        cov[idx, perm].reshape(draws.covariances.shape),
    )
    return out, perm.reshape(c, s, -1)


# --------------------------------------------------------------------------- per-draw quantities


def derived_quantities(md: MissingData, draws: Draws, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imputed means, one predictive draw and per-row log-likelihood for every draw.

    Returns arrays of shapes (C, S, N, D), (C, S, N, D) and (C, S, N), rows in the
    original order.
    """
    from .em import Sorted, conditional_draws

    sorted_ = Sorted.of(md)
    inv = np.argsort(sorted_.order)
    c, s = draws.shape
    n, d = md.n, md.d
    imputed = np.empty((c, s, n, d))
    predictive = np.empty((c, s, n, d))
    loglik = np.empty((c, s, n))
    complete = bool(md.observed.all())
    for i in range(c):
        for j in range(s):
            p = draws.params(i, j)
            e = sorted_.run_e_step(p)
            loglik[i, j] = e.row_loglik[inv]
            if complete:
                imputed[i, j] = md.values
                predictive[i, j] = md.values
            else:
                mean, sims = conditional_draws(p, e, sorted_, rng, 1)
                imputed[i, j], predictive[i, j] = mean, sims[0]
    return imputed, predictive, loglik


# --------------------------------------------------------------------------- diagnostics


def _scalar_draws(draws: Draws) -> np.ndarray:
    """Every free scalar (weights, means, lower-triangle covariances), shape (C, S, M)."""
    c, s = draws.shape
    d = draws.means.shape[-1]
    rows, cols = np.tril_indices(d)
    parts = [
        draws.weights.reshape(c, s, -1),
        draws.means.reshape(c, s, -1),
        draws.covariances[..., rows, cols].reshape(c, s, -1),
    ]
    return np.concatenate(parts, axis=-1)


def rhat_max(draws: Draws) -> float:
    """Largest rank-normalised split R-hat over all scalar parameters (NaN for one draw)."""
    import arviz as az

    x = _scalar_draws(draws)
    if x.shape[1] < 4:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = az.rhat(az.convert_to_dataset({"x": x}))["x"].values
    r = r[np.isfinite(r)]
    return float(r.max()) if r.size else float("nan")


def ess_bulk_min(draws: Draws, method: str = "bulk") -> float:
    """Smallest ESS (``method`` "bulk" or "tail") over all scalar parameters."""
    import arviz as az

    x = _scalar_draws(draws)
    if x.shape[1] < 4:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        e = az.ess(az.convert_to_dataset({"x": x}), method=method)["x"].values
    e = e[np.isfinite(e)]
    return float(e.min()) if e.size else float("nan")


def modes_differ(draws: Draws, threshold: float = 3.0) -> list[tuple[int, int]]:
    """Pairs of chains whose aligned draws sit in different modes.

    Chains ``a`` and ``b`` are in different modes when some scalar parameter has chain
    means further apart than ``threshold`` pooled posterior standard deviations,
    :math:`|\\bar\\theta_a - \\bar\\theta_b| > t \\sqrt{(s_a^2 + s_b^2)/2}`. Chains exploring one
    mode differ by about :math:`s/\\sqrt{ESS}`, far below this.
    """
    x = _scalar_draws(draws)
    m, sd = x.mean(axis=1), x.std(axis=1)
    out = []
    for a in range(x.shape[0]):
        for b in range(a + 1, x.shape[0]):
            pooled = np.sqrt(0.5 * (sd[a] ** 2 + sd[b] ** 2)) + 1e-12 * (1 + np.abs(m[a]))
            if np.any(np.abs(m[a] - m[b]) > threshold * pooled):
                out.append((a, b))
    return out


def jitter_params(params: Params, n: int, rng: np.random.Generator, scale: float,
                  covariance: str) -> Params:
    """Perturb a parameter set by about ``scale`` posterior standard deviations.

    With :math:`n_k = w_k n` rows per component: means move by
    :math:`\\mathrm{scale}\\; L_k \\epsilon / \\sqrt{n_k}` (:math:`L_k L_k^T = \\Sigma_k`);
    covariances by the congruence :math:`(I + E)\\Sigma_k(I + E)^T` with
    :math:`E_{ij} \\sim N(0, \\mathrm{scale}^2/(2 n_k))` (diagonal for ``diag``, one scalar
    for ``spherical``, shared for ``tied``); weights by a log-normal factor of sd
    :math:`\\mathrm{scale}/\\sqrt{n_k}`, renormalised.
    """
    w, mu, cov = (np.asarray(a, dtype=float) for a in params)
    k, d = mu.shape
    nk = np.maximum(w * n, 2.0)
    chol = np.linalg.cholesky(cov)
    step = np.einsum("kde,ke->kd", chol, rng.standard_normal((k, d)))
    mu = mu + scale * step / np.sqrt(nk)[:, None]
    e = rng.standard_normal((k, d, d)) * scale / np.sqrt(2 * nk)[:, None, None]
    if covariance == "tied":
        e[:] = e[0] * np.sqrt(2 * nk[0] / (2 * n))
    elif covariance == "diag":
        e = np.diagonal(e, axis1=1, axis2=2)[:, :, None] * np.eye(d)
    elif covariance == "spherical":
        e = e[:, :1, :1] * np.eye(d)
    a = np.eye(d) + e
    cov = a @ cov @ np.swapaxes(a, -1, -2)
    w = w * np.exp(scale * rng.standard_normal(k) / np.sqrt(nk))
    return Params(w / w.sum(), mu, cov)
