r"""Convergence diagnostics of parameter draws (chain, draw, ...).

R-hat and ESS are ArviZ's (rank-normalised split R-hat, bulk and tail ESS; Vehtari et al.
2021), taken over every free scalar: the weights, the means and the lower triangle of the
covariances. :func:`modes_differ` checks that chains found the same mode, not only the same
labels.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..spec import Draws

__all__ = ["scalar_draws", "rhat_max", "ess_min", "modes_differ"]


def scalar_draws(draws: Draws) -> np.ndarray:
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


def _arviz(stat: str, draws: Draws, **kwargs) -> np.ndarray:
    import arviz as az

    x = scalar_draws(draws)
    if x.shape[1] < 4 or (stat == "rhat" and x.shape[0] < 2):  # ArviZ's minimum (it logs)
        return np.array([])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # constant draws: NaN, dropped
        out = getattr(az, stat)(az.convert_to_dataset({"x": x}), **kwargs)["x"].values
    return out[np.isfinite(out)]


def rhat_max(draws: Draws) -> float:
    """Largest rank-normalised split R-hat over all scalar parameters (NaN under 4 draws
    or with one chain)."""
    r = _arviz("rhat", draws)
    return float(r.max()) if r.size else float("nan")


def ess_min(draws: Draws, method: str = "bulk") -> float:
    """Smallest ESS (``method`` "bulk" or "tail") over all scalar parameters."""
    e = _arviz("ess", draws, method=method)
    return float(e.min()) if e.size else float("nan")


def modes_differ(draws: Draws, threshold: float = 3.0) -> list[tuple[int, int]]:
    """Pairs of chains whose aligned draws sit in different modes.

    Chains ``a`` and ``b`` are in different modes when some scalar parameter has chain
    means further apart than ``threshold`` pooled posterior standard deviations,
    :math:`|\\bar\\theta_a - \\bar\\theta_b| > t \\sqrt{(s_a^2 + s_b^2)/2}`. Chains exploring one
    mode differ by about :math:`s/\\sqrt{ESS}`, far below this.
    """
    x = scalar_draws(draws)
    m, sd = x.mean(axis=1), x.std(axis=1)
    out = []
    for a in range(x.shape[0]):
        for b in range(a + 1, x.shape[0]):
            pooled = np.sqrt(0.5 * (sd[a] ** 2 + sd[b] ** 2)) + 1e-12 * (1 + np.abs(m[a]))
            if np.any(np.abs(m[a] - m[b]) > threshold * pooled):
                out.append((a, b))
    return out
