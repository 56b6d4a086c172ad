r"""The EM backend: exact marginalisation of missing entries, MLE or MAP.

Notation (see docs/em.md). Row :math:`i` has observed index set :math:`o` (its pattern)
and missing set :math:`m`. For component :math:`k` with mean :math:`\mu_k` and
covariance :math:`\Sigma_k`:

- E-step: :math:`\log p(x_{i,o} \mid k) = \log N(x_{i,o} \mid \mu_{k,o}, \Sigma_{k,oo})`,
  :math:`r_{ik} \propto w_k\,p(x_{i,o} \mid k)`.
- Conditional moments: :math:`\hat x_{ik,m} = \mu_{k,m} + \Sigma_{k,mo}\Sigma_{k,oo}^{-1}
  (x_{i,o} - \mu_{k,o})` and :math:`C_{pk} = \Sigma_{k,mm} - \Sigma_{k,mo}\Sigma_{k,oo}^{-1}
  \Sigma_{k,om}` (zero outside the missing block).
- M-step on expected sufficient statistics: :math:`n_k = \sum_i r_{ik}`,
  :math:`\bar y_k = \sum_i r_{ik}\hat x_{ik}/n_k`,
  :math:`W_k = \sum_i r_{ik}(\hat x_{ik}-\bar y_k)(\hat x_{ik}-\bar y_k)^T
  + \sum_i r_{ik} C_{p(i)k}`,
  then the MLE or the closed-form MAP of the prior (``ppgmm.prior``).

Every (pattern, component) pair gets one Cholesky factor of the "embedded" matrix
:math:`S_{pk}` that equals :math:`\Sigma_{k,oo}` on the observed block and the identity
on the missing block, so all patterns are factorised in one batched call. Rows are
sorted by pattern and each pattern's rows go through a single matrix product that yields,
for all components at once, the whitened residuals (for the density) and the conditional
means (for the M-step).
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..checks import check_int, check_number
from ..data import MissingData
from ..exceptions import ConvergenceWarning, ObjectiveDecreaseError, PpgmmError, SpecError
from ..prior import ResolvedPrior, log_prior, resolve_prior
from ..spec import GMM, Params

__all__ = ["fit_em", "fit_single_gaussian", "e_step", "row_loglik", "EMResult"]

_LOG_2PI = np.log(2 * np.pi)
_EPS = 10 * np.finfo(float).eps

# --------------------------------------------------------------------------- pattern algebra


class PatternFactors(NamedTuple):
    """Per (pattern, component) factors of the observed sub-covariances."""

    logdet: np.ndarray  # (P, K) log|Sigma_k,oo|
    maps: np.ndarray  # (P, D, K * D): Sigma_k,oo^-1 embedded, all components side by side
    offsets: np.ndarray  # (P, K * D): (mu_k on o) @ Sigma_k,oo^-1
    cond_cov: np.ndarray  # (P, K, D, D) C_pk, zero outside the missing block
    n_obs: np.ndarray  # (P,) observed entries per pattern


def pattern_factors(params: Params, patterns: np.ndarray) -> PatternFactors:
    """Factorise every observed sub-covariance, batched over patterns and components."""
    _, mu, sigma = params
    k, d = mu.shape
    o = patterns.astype(float)  # (P, D)
    oo = o[:, None, :, None] * o[:, None, None, :]  # (P, 1, D, D)
    mm = (1.0 - o)[:, None, :, None] * (1.0 - o)[:, None, None, :]
    eye = np.eye(d)
    s = oo * sigma[None] + (1.0 - o)[:, None, :, None] * eye  # S_pk, (P, K, D, D)
    try:
        chol = np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        raise PpgmmError(
            "a component covariance is not positive definite (a component collapsed onto too "
            "few points); increase reg_covar, use fewer components, or rescale the data"
        ) from None
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    # the inverse Cholesky factor is the precision Cholesky (a triangular solve, batched)
    chol_inv = np.linalg.solve(chol, np.broadcast_to(eye, chol.shape))
    prec = np.swapaxes(chol_inv, -1, -2) @ chol_inv * oo  # Sigma_oo^-1 embedded, (P, K, D, D)
    cond = (sigma[None] - sigma[None] @ prec @ sigma[None]) * mm
    cond = 0.5 * (cond + np.swapaxes(cond, -1, -2))
    maps = np.ascontiguousarray(np.moveaxis(prec, 1, 2).reshape(len(o), d, k * d))
    offsets = np.einsum("pkd,pkde->pke", o[:, None, :] * mu[None], prec).reshape(len(o), -1)
    return PatternFactors(logdet, maps, offsets, cond, patterns.sum(axis=1))


def _transform(xs: np.ndarray, starts: np.ndarray, factors: PatternFactors, k: int) -> np.ndarray:
    r"""Precision-weighted residuals :math:`v_{ik} = \Sigma_{k,oo}^{-1}(x_{i,o} - \mu_{k,o})`.

    Rows are pattern-sorted; the result has shape (N, K, D), zero on missing entries.
    """
    n, d = xs.shape
    out = np.empty((n, k * d))
    for p in range(len(starts) - 1):
        a, b = starts[p], starts[p + 1]
        np.matmul(xs[a:b], factors.maps[p], out=out[a:b])
        out[a:b] -= factors.offsets[p]
    return out.reshape(n, k, d)


class EStep(NamedTuple):
    r"""What one E-step returns, rows in pattern-sorted order.

    ``v`` holds :math:`v_{ik} = \Sigma_{k,oo}^{-1} r_{ik}` (embedded, zero on missing
    entries). Then the Mahalanobis term is :math:`r_{ik}^T v_{ik}` and the conditional mean
    is :math:`\hat x_{ik} = \mu_k + \Sigma_k v_{ik}`, exact on the observed entries too.
    """

    row_loglik: np.ndarray  # (N,)
    resp: np.ndarray  # (N, K)
    v: np.ndarray  # (N, K, D)
    factors: PatternFactors

    def deviations(self, params: Params) -> np.ndarray:
        r""":math:`\hat x_{ik} - \mu_k = \Sigma_k v_{ik}`, shape (N, K, D)."""
        return np.einsum("nkd,kde->nke", self.v, params.covariances)


def e_step(params: Params, xs: np.ndarray, pat: np.ndarray, patterns: np.ndarray,
           starts: np.ndarray) -> EStep:
    """Responsibilities and precision-weighted residuals for pattern-sorted zero-filled ``xs``."""
    w, mu, _ = params
    k, d = mu.shape
    f = pattern_factors(params, patterns)
    v = _transform(xs, starts, f, k)
    # r_ik . v_ik with r_ik = x0_i - mu_k on the observed entries (v is zero elsewhere)
    quad = np.einsum("nd,nkd->nk", xs, v) - np.einsum("kd,nkd->nk", mu, v)
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    log_prob = log_w - 0.5 * (f.n_obs[pat, None] * _LOG_2PI + f.logdet[pat] + quad)
    # log-sum-exp by a max shift, reusing the exponentials for the responsibilities
    top = log_prob.max(axis=1, keepdims=True)
    prob = np.exp(log_prob - top)
    total = prob.sum(axis=1, keepdims=True)
    ll = (top + np.log(total))[:, 0]
    resp = prob / total
    return EStep(ll, resp, v, f)


def m_step(
    params: Params,
    e: EStep,
    starts: np.ndarray,
    covariance: str,
    reg_covar: float,
    prior: ResolvedPrior | None,
) -> Params:
    r"""Closed-form MLE or MAP from expected sufficient statistics.

    With :math:`\hat x_{ik} - \mu_k = \Sigma_k v_{ik}`, the scatter is
    :math:`W_k = \Sigma_k \left[\sum_i r_{ik}(v_{ik}-\bar v_k)(v_{ik}-\bar v_k)^T\right]
    \Sigma_k + \sum_p R_{pk} C_{pk}`, one Gram matrix per component.
    """
    mu_old, sigma = params.means, params.covariances
    k, d = mu_old.shape
    resp = e.resp
    nk = resp.sum(axis=0) + _EPS
    vbar = np.einsum("nk,nkd->kd", resp, e.v) / nk[:, None]
    ybar = mu_old + np.einsum("kde,ke->kd", sigma, vbar)
    gram = np.empty((k, d, d))
    for j in range(k):
        dev = e.v[:, j, :] - vbar[j]
        gram[j] = (resp[:, j, None] * dev).T @ dev
    w_k = sigma @ gram @ sigma
    r_pk = np.add.reduceat(resp, starts[:-1], axis=0)  # (P, K)
    w_k += np.einsum("pk,pkde->kde", r_pk, e.factors.cond_cov)
    w_k = 0.5 * (w_k + np.swapaxes(w_k, -1, -2))
    eye = np.eye(d)
    if prior is None:
        means = ybar
        if covariance == "full":
            cov = w_k / nk[:, None, None]
        elif covariance == "tied":
            cov = np.broadcast_to(w_k.sum(0) / nk.sum(), (k, d, d))
        elif covariance == "diag":
            cov = np.diagonal(w_k, axis1=1, axis2=2)[:, :, None] * eye / nk[:, None, None]
        else:
            var = np.trace(w_k, axis1=1, axis2=2) / (nk * d)
            cov = var[:, None, None] * eye
    else:
        kap, mp, nu, sc = prior.kappa, prior.mean, prior.dof, prior.scale
        means = (nk[:, None] * ybar + kap * mp) / (nk + kap)[:, None]
        diff = ybar - mp
        b_k = (kap * nk / (nk + kap))[:, None, None] * diff[:, :, None] * diff[:, None, :]
        if covariance == "full":
            cov = (sc + b_k + w_k) / (nu + nk + d + 2)[:, None, None]
        elif covariance == "tied":
            n = nk.sum()
            cov = np.broadcast_to((sc + b_k.sum(0) + w_k.sum(0)) / (nu + n + d + 1 + k), (k, d, d))
        elif covariance == "diag":
            num = sc + np.diagonal(b_k + w_k, axis1=1, axis2=2)
            cov = (num / (nu + nk + 3)[:, None])[:, :, None] * eye
        else:
            num = sc + np.trace(b_k + w_k, axis1=1, axis2=2)
            cov = (num / (nu + (nk + 1) * d + 2))[:, None, None] * eye
    cov = np.array(cov)
    cov += reg_covar * eye
    return Params(nk / nk.sum(), means, cov)


# --------------------------------------------------------------------------- the driver


@dataclass
class Sorted:
    """Rows of a MissingData in pattern order, the layout the kernels read."""

    xs: np.ndarray
    pat: np.ndarray
    patterns: np.ndarray
    starts: np.ndarray
    order: np.ndarray

    @classmethod
    def of(cls, md: MissingData) -> Sorted:
        """Sort ``md``'s rows by missingness pattern."""
        return cls(
            md.zero_filled[md.order], md.pattern_index[md.order], md.patterns, md.starts, md.order
        )

    def run_e_step(self, params: Params) -> EStep:
        """E-step on these rows."""
        return e_step(params, self.xs, self.pat, self.patterns, self.starts)


@dataclass
class EMRun:
    """One EM run from one start."""

    params: Params
    e: EStep
    objective: list[float] = field(default_factory=list)
    converged: bool = False

    @property
    def n_iter(self) -> int:
        """Number of M-steps taken."""
        return len(self.objective) - 1


def _objective(e: EStep, params: Params, prior: ResolvedPrior | None) -> float:
    ll = float(e.row_loglik.sum())
    return ll if prior is None else ll + log_prior(params, prior)


def run_em(
    params: Params,
    data: Sorted,
    covariance: str,
    prior: ResolvedPrior | None,
    *,
    max_iter: int,
    tol: float,
    reg_covar: float,
    stop: str = "gain",
) -> EMRun:
    """Iterate EM from ``params``; stop when the per-row objective changes by less than ``tol``.

    With ``reg_covar = 0`` each step raises the objective (the log-likelihood or
    log-posterior), and a decrease beyond rounding raises an error. ``reg_covar > 0`` adds
    to the covariances' diagonals after each M-step, which the objective does not include,
    so a step may lower it; the iteration goes on until the change is below ``tol``.

    ``stop="gain"`` stops as soon as the step just taken gained less than ``tol``.
    ``stop="sklearn"`` is scikit-learn's rule: its E-step scores the parameters before the
    M-step, so it learns of a small gain one step late and takes one more M-step, and a run
    whose small gain comes at step ``max_iter`` has not converged.
    """
    # floating-point trouble (a collapsing component overflows) shows up as a non-finite or
    # decreasing objective below, which raises an error that says what to do; numpy's own
    # warnings would only repeat it in less useful words
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _iterate(params, data, covariance, prior, max_iter=max_iter, tol=tol,
                        reg_covar=reg_covar, stop=stop)


def _iterate(params: Params, data: Sorted, covariance: str, prior: ResolvedPrior | None, *,
             max_iter: int, tol: float, reg_covar: float, stop: str) -> EMRun:
    n = data.xs.shape[0]
    e = data.run_e_step(params)
    run = EMRun(params, e, [_objective(e, params, prior)])
    pending = False
    for _ in range(max_iter):
        new = m_step(run.params, run.e, data.starts, covariance, reg_covar, prior)
        e = data.run_e_step(new)
        obj = _objective(e, new, prior)
        prev = run.objective[-1]
        if np.isnan(obj) or obj == np.inf:
            raise PpgmmError(
                f"the EM objective became {obj} at iteration {len(run.objective)} (the data "
                "may contain extreme values or near-duplicate columns); rescale the data, "
                "set reg_covar > 0, or use the default prior"
            )
        # reg_covar on the diagonals is not part of the objective, so a regularised step may
        # lower it (by much when reg_covar is large): iterate on, as scikit-learn does, until
        # the change is below tol. Without it EM never lowers the objective beyond rounding.
        if reg_covar == 0 and obj < prev - 1e-9 * (1.0 + abs(prev)):
            if not np.isfinite(obj) or _collapsed(new.covariances):
                raise PpgmmError(
                    "a component collapsed onto too few rows (its covariance became singular) "
                    f"at iteration {len(run.objective)}; set reg_covar > 0, use a prior "
                    "(prior='default'), or use fewer components"
                )
            raise ObjectiveDecreaseError(
                f"EM objective decreased from {prev!r} to {obj!r} at iteration "
                f"{len(run.objective)}; this is a bug in ppgmm, please report it with the data"
            )
        if obj == -np.inf:
            raise PpgmmError(
                f"the EM objective became -inf at iteration {len(run.objective)}: a component "
                "collapsed onto too few rows; set reg_covar > 0, use a prior "
                "(prior='default'), or use fewer components"
            )
        run.params, run.e = new, e
        run.objective.append(obj)
        # without reg_covar a gain at or below rounding (even slightly negative) is convergence
        small = (abs(obj - prev) if reg_covar > 0 else obj - prev) / n < tol
        if pending or (small and stop == "gain"):
            run.converged = True
            break
        pending = small
    return run


def _collapsed(cov: np.ndarray) -> bool:
    """Whether some component's covariance is singular relative to the others' scale."""
    scale = np.trace(cov, axis1=1, axis2=2).max() / cov.shape[-1]
    return bool(np.linalg.eigvalsh(cov).min() <= 1e-10 * scale)


def fit_single_gaussian(md: MissingData, max_iter: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood mean and covariance (N denominator) of one Gaussian under MAR."""
    x = md.values
    mean = np.nanmean(x, axis=0)
    var = np.nanvar(x, axis=0)
    var = np.where(var > 0, var, 1.0)
    p0 = Params(np.ones(1), mean[None], np.diag(var)[None])
    run = run_em(p0, Sorted.of(md), "full", None, max_iter=max_iter, tol=1e-13, reg_covar=0.0)
    return run.params.means[0], run.params.covariances[0]


# --------------------------------------------------------------------------- initialisation


def _mean_imputed(md: MissingData) -> np.ndarray:
    return np.where(md.observed, md.values, np.nanmean(md.values, axis=0))


def _params_from_resp(x: np.ndarray, resp: np.ndarray, covariance: str, reg: float) -> Params:
    """Complete-data M-step (on mean-imputed rows) for a starting point."""
    n, d = x.shape
    nk = resp.sum(0) + _EPS
    means = resp.T @ x / nk[:, None]
    floor = 1e-6 * np.var(x, axis=0).mean() + reg
    cov = np.empty((len(nk), d, d))
    for j in range(len(nk)):
        dev = x - means[j]
        cov[j] = (resp[:, j, None] * dev).T @ dev / nk[j]
    if covariance == "tied":
        cov[:] = (cov * nk[:, None, None]).sum(0) / nk.sum()
    elif covariance == "diag":
        cov = np.diagonal(cov, axis1=1, axis2=2)[:, :, None] * np.eye(d)
    elif covariance == "spherical":
        cov = np.trace(cov, axis1=1, axis2=2)[:, None, None] / d * np.eye(d)
    cov += floor * np.eye(d)
    return Params(nk / nk.sum(), means, cov)


def _init_kmeans(md: MissingData, k: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.cluster.vq import kmeans2

    x = _mean_imputed(md)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    for _ in range(10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, labels = kmeans2(z, k, minit="++", seed=rng)
        if len(np.unique(labels)) == k:
            return np.eye(k)[labels]
    raise PpgmmError(
        f"k-means++ could not find {k} non-empty clusters; the data may have fewer than "
        f"{k} distinct rows. Use fewer components."
    )


def _coerce_init(init: Any, spec: GMM, d: int) -> Params:
    """Explicit starting parameters from an xarray Dataset, a Params or a mapping."""
    get = (lambda name: init[name].values) if hasattr(init, "data_vars") else (
        lambda name: getattr(init, name) if isinstance(init, Params) else init[name]
    )
    try:
        w, mu, cov = (np.asarray(get(n), dtype=float) for n in ("weights", "means", "covariances"))
    except (KeyError, AttributeError, TypeError):
        raise SpecError(
            "init should be 'kmeans++', 'random', or parameters with weights, means and "
            f"covariances (e.g. fit.point()), but got {type(init).__name__}"
        ) from None
    k = spec.n_components
    if w.shape != (k,) or mu.shape != (k, d) or cov.shape != (k, d, d):
        raise SpecError(
            f"init parameters should have the shapes {(k,)}, {(k, d)}, {(k, d, d)}, but got "
            f"{w.shape}, {mu.shape}, {cov.shape}"
        )
    if not (np.all(np.isfinite(w)) and np.all(w > 0) and abs(w.sum() - 1) < 1e-8):
        raise SpecError("init weights should be positive and sum to 1")
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise SpecError("init covariances should be symmetric positive definite") from None
    return Params(w, mu, cov)


def initial_params(spec: GMM, md: MissingData, init: Any, rng: np.random.Generator,
                   reg: float) -> Params:
    """Starting parameters by k-means++ on observed data, random responsibilities, or given."""
    k = spec.n_components
    if isinstance(init, str):
        if init == "kmeans++":
            resp = _init_kmeans(md, k, rng)
        elif init == "random":
            resp = rng.uniform(size=(md.n, k))
            resp /= resp.sum(1, keepdims=True)
        else:
            raise SpecError(
                f"init should be 'kmeans++', 'random' or explicit parameters, but got {init!r}"
            )
        return _params_from_resp(_mean_imputed(md), resp, spec.covariance, reg)
    return _coerce_init(init, spec, md.d)


# --------------------------------------------------------------------------- results


@dataclass
class EMResult:
    """What the EM backend hands to the Fit builder."""

    params: Params
    run: EMRun
    prior: ResolvedPrior | None
    reg_covar: float
    n_init: int
    draws: list[Params] = field(default_factory=list)  # bootstrap refits, aligned
    messages: list[str] = field(default_factory=list)  # warnings in plain words


def conditional_draws(
    params: Params, e: EStep, sorted_: Sorted, rng: np.random.Generator, n_draws: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""E[x | x_obs] (N, D) and ``n_draws`` predictive draws (S, N, D), in the original row order.

    Each draw picks a component from the row's responsibilities and draws the missing
    entries from their conditional normal :math:`N(\hat x_{ik,m}, C_{pk})`.
    """
    n, k, d = e.v.shape
    cond_mean = params.means[None] + e.deviations(params)  # (N, K, D)
    mean = np.einsum("nk,nkd->nd", e.resp, cond_mean)
    o = sorted_.patterns[sorted_.pat]  # (N, D)
    # Cholesky of C_pk with the identity on the observed block
    c = e.factors.cond_cov + (sorted_.patterns.astype(float)[:, None, :, None] * np.eye(d))
    chol = np.linalg.cholesky(c)  # (P, K, D, D)
    rows = np.flatnonzero(~o.all(axis=1))
    out = np.empty((n_draws, n, d))
    out[:] = sorted_.xs
    cum = np.cumsum(e.resp[rows], axis=1)
    for s in range(n_draws):
        u = rng.random(len(rows))[:, None]
        comp = np.minimum((u > cum).sum(1), k - 1)
        eps = rng.standard_normal((len(rows), d))
        draw = cond_mean[rows, comp] + np.einsum(
            "nde,ne->nd", chol[sorted_.pat[rows], comp], eps
        )
        out[s, rows] = np.where(o[rows], sorted_.xs[rows], draw)
    inv = np.argsort(sorted_.order)
    mean = np.where(o, sorted_.xs, mean)
    return mean[inv], out[:, inv]


def missing_marginals(params: Params, md: MissingData) -> tuple[np.ndarray, ...]:
    r"""The predictive of each missing entry at ``params``: a mixture of normals.

    Returns ``(weights, means, variances)``, each (M, K) for the M missing entries in
    ``md.missing_index`` order: the row's responsibilities :math:`r_{ik}`, and the entry's
    conditional mean :math:`\hat x_{ik,j}` and variance :math:`(C_{pk})_{jj}` given the
    row's observed entries under component k.
    """
    s = Sorted.of(md)
    e = s.run_e_step(params)
    inv = np.argsort(s.order)
    cond_mean = (params.means[None] + e.deviations(params))[inv]  # (N, K, D)
    var = np.diagonal(e.factors.cond_cov, axis1=2, axis2=3)[s.pat][inv]  # (N, K, D)
    rows, cols = md.missing_index
    return e.resp[inv][rows], cond_mean[rows, :, cols], var[rows, :, cols]


def row_loglik(params: Params, md: MissingData) -> np.ndarray:
    """Observed-data log-likelihood of each row of ``md``, in its original order."""
    s = Sorted.of(md)
    ll = s.run_e_step(params).row_loglik
    return ll[np.argsort(s.order)]


def fit_em(
    spec: GMM,
    md: MissingData,
    *,
    seed: int | None = None,
    n_init: int = 1,
    init: Any = "kmeans++",
    max_iter: int = 1000,
    tol: float = 1e-10,
    reg_covar: float | None = None,
    uncertainty: str | None = None,
    n_bootstrap: int = 200,
    imputation_draws: int = 20,
    stop: str = "gain",
    warn: bool = True,
) -> EMResult:
    """Fit by EM. See :func:`ppgmm.fit` for the options."""
    n_init, max_iter = check_int("n_init", n_init, 1), check_int("max_iter", max_iter, 0)
    tol = check_number("tol", tol)
    check_int("imputation_draws", imputation_draws, 0)
    if uncertainty == "bootstrap":
        n_bootstrap = check_int("n_bootstrap", n_bootstrap, 2)
    if stop not in ("gain", "sklearn"):
        raise SpecError(f"stop should be 'gain' or 'sklearn', but got {stop!r}")
    if uncertainty not in (None, "bootstrap"):
        raise SpecError(f"uncertainty should be None or 'bootstrap', but got {uncertainty!r}")
    prior = resolve_prior(spec, md)
    reg = (0.0 if prior is not None else 1e-6) if reg_covar is None else check_number(
        "reg_covar", reg_covar)
    rng = np.random.default_rng(seed)
    data = Sorted.of(md)
    if not isinstance(init, str):
        n_init = 1
    best: EMRun | None = None
    for _ in range(n_init):
        p0 = initial_params(spec, md, init, rng, reg)
        run = run_em(p0, data, spec.covariance, prior, max_iter=max_iter, tol=tol, reg_covar=reg,
                     stop=stop)
        if best is None or run.objective[-1] > best.objective[-1]:
            best = run
    assert best is not None
    result = EMResult(best.params, best, prior, reg, n_init)
    if not best.converged:
        gain = (
            f"last per-row gain {(best.objective[-1] - best.objective[-2]) / md.n:.3g} > "
            f"tol={tol:g}" if best.n_iter else "no iteration was run"
        )
        result.messages.append(
            f"EM did not converge in max_iter={max_iter} iterations ({gain}); increase max_iter "
            "or loosen tol."
        )
        if warn:
            warnings.warn(result.messages[-1], ConvergenceWarning, stacklevel=4)
    if uncertainty == "bootstrap":
        result.draws = _bootstrap(spec, md, result, rng, n_bootstrap, max_iter, tol)
    return result


def _bootstrap(spec: GMM, md: MissingData, main: EMResult, rng: np.random.Generator, b: int,
               max_iter: int, tol: float) -> list[Params]:
    """Refit on ``b`` row-resampled data sets from the main fit, aligned to its labels."""
    from ..align import align_to

    draws = []
    show = sys.stderr.isatty()  # progress on a terminal only
    for i in range(b):
        if show:
            print(f"\rppgmm: bootstrap refit {i + 1}/{b}", end="", file=sys.stderr, flush=True)
        idx = rng.integers(0, md.n, md.n)
        sub = MissingData.from_arrays(md.values[idx], md.feature_names, md.obs_names[idx])
        try:
            run = run_em(main.params, Sorted.of(sub), spec.covariance, main.prior,
                         max_iter=max_iter, tol=tol, reg_covar=main.reg_covar)
        except PpgmmError:
            continue  # a resample on which a component collapsed: skip, counted below
        draws.append(run.params)
    if show:
        print(file=sys.stderr)
    if len(draws) < b:
        warnings.warn(
            f"{b - len(draws)} of {b} bootstrap refits failed (a component collapsed) and were "
            "skipped; consider fewer components or a prior.",
            UserWarning,
            stacklevel=4,
        )
    return [align_to(p, main.params)[0] for p in draws]


def em_backend(spec: GMM, md: MissingData, *, seed: int | None = None, **options: Any):
    """Run :func:`fit_em` and package its result in the Fit schema."""
    import xarray as xr

    from ..fit import Fit, build_idata

    res = fit_em(spec, md, seed=seed, **options)
    n_draws = options.get("imputation_draws", 20)
    rng = np.random.default_rng(np.random.default_rng(seed).integers(2**63))
    sorted_ = Sorted.of(md)
    inv = np.argsort(sorted_.order)
    sets = res.draws or [res.params]
    # with bootstrap, one predictive draw per refit: multiple imputation that carries
    # parameter uncertainty; otherwise draws at the estimate
    per = 1 if res.draws else n_draws
    means, sims, lls = [], [], []
    for p in sets:
        e = sorted_.run_e_step(p)
        m, x = conditional_draws(p, e, sorted_, rng, per)
        means.append(m)
        sims.append(x)
        lls.append(e.row_loglik[inv])
    sims_arr = np.concatenate(sims)[None]
    stack = [np.stack([getattr(p, n) for p in sets])[None] for n in Params._fields]
    run = res.run
    stats = xr.Dataset(
        {"objective": ("iteration", np.asarray(run.objective))},
        coords={"iteration": np.arange(len(run.objective))},
    )
    attrs = {
        "seed": -1 if seed is None else int(seed),
        "converged": int(run.converged),
        "n_iter": int(run.n_iter),
        "n_init": int(res.n_init),
        "objective": "log-posterior" if res.prior is not None else "log-likelihood",
        "reg_covar": float(res.reg_covar),
        "uncertainty": options.get("uncertainty") or "none",
        "n_bootstrap": len(res.draws),
        "warnings": json.dumps(res.messages),
    }
    idata = build_idata(
        md, spec, backend="em",
        weights=stack[0], means=stack[1], covariances=stack[2],
        imputed_mean=np.stack(means)[None], x_missing=sims_arr, loglik=np.stack(lls)[None],
        attrs=attrs, sample_stats=stats, estimate=res.params,
    )
    return Fit(idata)
