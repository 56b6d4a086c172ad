r"""k-means on incomplete rows (k-POD) with greedy k-means++ seeding: starting labels for EM.

k-POD (Chi, Chi & Baraniuk 2016) runs Lloyd's algorithm on the rows completed by their
cluster's centre: each iteration fills every missing entry with the corresponding
coordinate of the row's current centre, assigns rows to the nearest centre and recomputes
the centres. On complete data it is Lloyd's algorithm. The rows are standardised by the
observed columns' means and standard deviations first, so no feature dominates by its units.
Seeding is scikit-learn's greedy k-means++ (Arthur & Vassilvitskii 2007): each new centre is
the best of :math:`2 + \lfloor \ln K \rfloor` candidates drawn with probability proportional
to the squared distance to the nearest chosen centre.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kpod_labels", "kmeans_labels"]


def _sq_dist(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, k), computed in row blocks of bounded size."""
    out = np.empty((len(z), len(centres)))
    cn = (centres**2).sum(1)
    step = max(1024, 2**22 // max(1, len(centres)))
    for a in range(0, len(z), step):
        b = z[a:a + step]
        out[a:a + step] = np.maximum((b**2).sum(1)[:, None] - 2.0 * b @ centres.T + cn, 0.0)
    return out


def _seed(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ centres (k, d) of the rows ``z``."""
    n = len(z)
    trials = 2 + int(np.log(k))
    centres = [z[rng.integers(n)]]
    closest = _sq_dist(z, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            cand = rng.integers(n, size=trials)
        else:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            cand = np.minimum(cand, n - 1)
        dist = np.minimum(closest[:, None], _sq_dist(z, z[cand]))  # (n, trials)
        best = int(np.argmin(dist.sum(0)))
        centres.append(z[cand[best]])
        closest = dist[:, best]
    return np.array(centres)


def kpod_labels(values: np.ndarray, observed: np.ndarray, k: int, rng: np.random.Generator,
                max_iter: int = 100, tol: float = 1e-4) -> tuple[np.ndarray, float] | None:
    """k-POD cluster labels of incomplete rows, and the final within-cluster sum of squares.

    Parameters
    ----------
    values : ndarray of shape (n, d)
        The rows; entries where ``observed`` is False are ignored.
    observed : ndarray of bool, shape (n, d)
    k : int
    rng : numpy.random.Generator
    max_iter : int, default 100
    tol : float, default 1e-4
        Stop when the centres move by less than ``tol`` times the mean variance (squared).

    Returns
    -------
    (labels, inertia), or None when fewer than ``k`` distinct rows could be found.
    """
    mean = np.nanmean(np.where(observed, values, np.nan), axis=0)
    sd = np.nanstd(np.where(observed, values, np.nan), axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z = np.where(observed, (values - mean) / sd, 0.0)  # mean-imputed, standardised
    missing = ~observed
    any_missing = bool(missing.any())
    centres = _seed(z, k, rng)
    labels = np.zeros(len(z), dtype=int)
    for _ in range(max_iter):
        if any_missing:
            z[missing] = centres[labels][missing]
        dist = _sq_dist(z, centres)
        labels = dist.argmin(1)
        counts = np.bincount(labels, minlength=k)
        new = np.zeros_like(centres)
        for j in range(z.shape[1]):
            new[:, j] = np.bincount(labels, weights=z[:, j], minlength=k)
        empty = counts == 0
        if empty.any():  # re-seed an empty cluster at the rows farthest from their centre
            far = np.argsort(dist[np.arange(len(z)), labels])[::-1][:int(empty.sum())]
            new[empty] = z[far]
            counts[empty] = 1
            labels[far] = np.flatnonzero(empty)
        new /= counts[:, None]
        shift = ((new - centres) ** 2).sum()
        centres = new
        if shift <= tol * z.shape[1]:
            break
    labels = _sq_dist(z, centres).argmin(1)
    if len(np.unique(labels)) < k:
        return None
    inertia = float(_sq_dist(z, centres)[np.arange(len(z)), labels].sum())
    return labels, inertia


def kmeans_labels(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray | None:
    """k-means labels of the complete rows ``x`` (standardised): Lloyd's algorithm from
    greedy k-means++ seeds, i.e. :func:`kpod_labels` with nothing missing; None when fewer
    than ``k`` clusters could be formed.

    Greedy seeding matters: scipy's ``kmeans2(minit="++")`` takes one candidate per centre,
    and one run of it puts two centres in one of three well-separated clusters often enough
    to trap EM in a poor optimum (scikit-learn's KMeans seeds greedily, as here).
    """
    found = kpod_labels(x, np.ones(x.shape, dtype=bool), k, rng)
    return None if found is None else found[0]
