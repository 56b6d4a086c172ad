"""Independent reference computations shared by the tests (scipy only, no ppgmm numerics)."""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import logsumexp


def mixture(seed: int = 0, n: int = 300, d: int = 3, k: int = 2, sep: float = 4.0):
    """Rows from a well-separated mixture with correlated components, and their labels."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, sep, (k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    w = rng.dirichlet(np.full(k, 10.0))
    z = rng.choice(k, n, p=w)
    x = means[z] + np.einsum("nde,ne->nd", np.linalg.cholesky(covs)[z], rng.standard_normal((n, d)))
    return x, z, (w, means, covs)


def mcar(x: np.ndarray, rate: float, seed: int = 1) -> np.ndarray:
    """Mask entries completely at random, keeping at least one observed entry per row."""
    rng = np.random.default_rng(seed)
    mask = rng.random(x.shape) < rate
    full = mask.all(axis=1)
    mask[full, rng.integers(0, x.shape[1], full.sum())] = False
    return np.where(mask, np.nan, x)


def scipy_row_loglik(x: np.ndarray, w, means, covs) -> np.ndarray:
    """log sum_k w_k N(x_o | mu_k,o, Sigma_k,oo) row by row with scipy.stats."""
    out = np.empty(len(x))
    for i, row in enumerate(x):
        o = ~np.isnan(row)
        if not o.any():
            out[i] = 0.0
            continue
        comp = [
            np.log(w[k]) + stats.multivariate_normal(means[k][o], covs[k][np.ix_(o, o)]).logpdf(
                row[o]
            )
            for k in range(len(w))
        ]
        out[i] = logsumexp(comp)
    return out


def to_full(cov: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
    """scikit-learn's per-type covariance shape as full (K, D, D) matrices."""
    cov = np.asarray(cov)
    if covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if covariance_type == "diag":
        return cov[:, :, None] * np.eye(d)
    if covariance_type == "spherical":
        return cov[:, None, None] * np.eye(d)
    return cov


def precisions_init(cov_full: np.ndarray, covariance_type: str) -> np.ndarray:
    """Full (K, D, D) covariances as scikit-learn's ``precisions_init`` for that type."""
    if covariance_type == "tied":
        return np.linalg.inv(cov_full[0])
    if covariance_type == "diag":
        return 1.0 / np.diagonal(cov_full, axis1=1, axis2=2)
    if covariance_type == "spherical":
        return 1.0 / cov_full[:, 0, 0]
    return np.linalg.inv(cov_full)


def typed_cov(covs: np.ndarray, covariance_type: str) -> np.ndarray:
    """Reduce full covariances to the structure of a type (shared, diagonal, isotropic)."""
    k, d, _ = covs.shape
    if covariance_type == "tied":
        return np.broadcast_to(covs.mean(0), (k, d, d)).copy()
    if covariance_type == "diag":
        return np.diagonal(covs, axis1=1, axis2=2)[:, :, None] * np.eye(d)
    if covariance_type == "spherical":
        return np.trace(covs, axis1=1, axis2=2)[:, None, None] / d * np.eye(d)
    return covs.copy()


def scipy_log_prior(w, means, covs, covariance_type, kappa, mu_p, nu, scale) -> float:
    """The Fraley & Raftery (2007) log prior written with scipy.stats densities."""
    k, d = means.shape
    out = stats.dirichlet(np.ones(k)).logpdf(w) if k > 1 else 0.0
    for j in range(k):
        if covariance_type in ("full", "tied"):
            out += stats.multivariate_normal(mu_p, covs[j] / kappa).logpdf(means[j])
        else:
            var = np.diag(covs[j])
            out += stats.norm(mu_p, np.sqrt(var / kappa)).logpdf(means[j]).sum()
        if covariance_type == "full":
            out += stats.invwishart(df=nu, scale=scale).logpdf(covs[j])
        elif covariance_type == "diag":
            out += stats.invgamma(nu / 2, scale=scale / 2).logpdf(np.diag(covs[j])).sum()
        elif covariance_type == "spherical":
            out += stats.invgamma(nu / 2, scale=scale / 2).logpdf(covs[j][0, 0])
    if covariance_type == "tied":
        out += stats.invwishart(df=nu, scale=scale).logpdf(covs[0])
    return float(out)


def unpack_chol(theta: np.ndarray, d: int):
    """Mean and covariance from (mean, lower Cholesky factor with log diagonal)."""
    mu = theta[:d]
    low = np.zeros((d, d))
    low[np.tril_indices(d)] = theta[d:]
    low[np.diag_indices(d)] = np.exp(np.diag(low))
    return mu, low @ low.T


def pack_chol(mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Inverse of :func:`unpack_chol`."""
    low = np.linalg.cholesky(cov)
    low[np.diag_indices(len(mu))] = np.log(np.diag(low))
    return np.concatenate([mu, low[np.tril_indices(len(mu))]])


def observed_nll(theta: np.ndarray, x: np.ndarray) -> float:
    """Minus the observed-data log-likelihood of one Gaussian, row by row with scipy.stats."""
    mu, cov = unpack_chol(theta, x.shape[1])
    total = 0.0
    for row in x:
        o = ~np.isnan(row)
        total += stats.multivariate_normal(mu[o], cov[np.ix_(o, o)]).logpdf(row[o])
    return -total


def single_gaussian_mle(x: np.ndarray):
    """The one-Gaussian MLE under MAR by BFGS on the observed-data likelihood (no EM)."""
    from scipy import optimize

    start = pack_chol(np.nanmean(x, 0), np.diag(np.nanvar(x, 0)))
    res = optimize.minimize(observed_nll, start, args=(x,), method="BFGS",
                            options={"gtol": 1e-9, "maxiter": 5000})
    mu, cov = unpack_chol(res.x, x.shape[1])
    return mu, cov, -res.fun
