r"""EM steps: the closed-form M-step (MLE or MAP), the EM loop, starting points, one Gaussian.

The M-step works on expected sufficient statistics: :math:`n_k = \sum_i r_{ik}`,
:math:`\bar y_k = \sum_i r_{ik}\hat x_{ik}/n_k`,
:math:`W_k = \sum_i r_{ik}(\hat x_{ik}-\bar y_k)(\hat x_{ik}-\bar y_k)^T
+ \sum_i r_{ik} C_{p(i)k}` (:mod:`ppgmm.numerics.patterns`), then the MLE or the
closed-form MAP of the prior of Fraley & Raftery (2007) (design: "The prior").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..data import MissingData, PatternLayout
from ..exceptions import ObjectiveDecreaseError, PpgmmError
from ..spec import Params, ResolvedPrior
from .accelerate import Units, column_units, pack, squarem_point
from .densities import log_prior
from .patterns import BLOCK_ENTRIES, EStep, e_step, row_blocks

__all__ = ["constrain_covariance", "SuffStats", "expected_stats", "m_step", "EMRun", "run_em",
           "objective", "move_limit", "BLOCK_ENTRIES",
           "fit_single_gaussian", "single_gaussian_start", "single_gaussian_em",
           "mean_imputed", "params_from_resp"]

EPS = 10 * np.finfo(float).eps
#: n_k |vbar_k|^2 over the centred Gram matrix's smallest diagonal entry beyond which
#: SuffStats.of centres before the product (the one-pass form then loses above ~1e-13)
CANCELLATION = 1e3


def constrain_covariance(cov: np.ndarray, covariance: str,
                         weights: np.ndarray | None = None) -> np.ndarray:
    """Project full (K, D, D) matrices onto a covariance type, still stored as (K, D, D).

    ``diag`` keeps the diagonals, ``spherical`` their mean, ``tied`` the average weighted
    by ``weights`` (equal weights when None), ``full`` everything.
    """
    k, d, _ = cov.shape
    eye = np.eye(d)
    if covariance == "diag":
        return np.diagonal(cov, axis1=1, axis2=2)[:, :, None] * eye
    if covariance == "spherical":
        return (np.trace(cov, axis1=1, axis2=2) / d)[:, None, None] * eye
    if covariance == "tied":
        w = np.ones(k) if weights is None else np.asarray(weights, dtype=float)
        return np.broadcast_to((w[:, None, None] * cov).sum(0) / w.sum(), (k, d, d)).copy()
    return np.array(cov)


class SuffStats(NamedTuple):
    r"""Expected sufficient statistics of one E-step, per component.

    ``nk`` :math:`= \sum_i r_{ik}`, ``mean`` :math:`= \bar y_k`, ``scatter`` :math:`= W_k`
    (centred at :math:`\bar y_k`, conditional-covariance correction included) and the
    observed-data log-likelihood ``loglik`` of the rows. Statistics of disjoint row blocks
    combine exactly (:meth:`combine`, Chan et al.'s pairwise update), so an E-step can run
    block by block in bounded memory, or chunk by chunk on a cluster.
    """

    nk: np.ndarray  # (K,)
    mean: np.ndarray  # (K, D)
    scatter: np.ndarray  # (K, D, D)
    loglik: float

    @classmethod
    def of(cls, params: Params, e: EStep, starts: np.ndarray) -> SuffStats:
        r"""The statistics of one E-step's rows.

        With :math:`\hat x_{ik} - \mu_k = \Sigma_k v_{ik}`, the scatter is
        :math:`W_k = \Sigma_k \left[\sum_i r_{ik}(v_{ik}-\bar v_k)(v_{ik}-\bar v_k)^T\right]
        \Sigma_k + \sum_p R_{pk} C_{pk}`, one Gram matrix per component, formed as
        :math:`U_k^T U_k - n_k \bar v_k \bar v_k^T` from :math:`U_k = \sqrt{r_{\cdot k}}
        \odot v_{\cdot k}` (one product per component; :math:`\bar v_k \to 0` as EM
        converges, so the subtraction loses nothing). A component whose :math:`n_k |\bar
        v_k|^2` exceeds :data:`CANCELLATION` times the smallest diagonal entry of its centred
        Gram matrix (parameters far from the component's rows) is formed from
        :math:`\sqrt{r_{\cdot k}} \odot (v_{\cdot k} - \bar v_k)` instead.
        """
        mu_old, sigma = params.means, params.covariances
        k, d = mu_old.shape
        resp = e.resp
        nk = resp.sum(axis=0)
        root = np.sqrt(resp)
        u = e.v * root[:, :, None]
        gram = np.empty((k, d, d))
        vsum = np.empty((k, d))
        for j in range(k):
            gram[j] = u[:, j, :].T @ u[:, j, :]
            vsum[j] = root[:, j] @ u[:, j, :]
        vbar = vsum / (nk + EPS)[:, None]
        gram -= nk[:, None, None] * vbar[:, :, None] * vbar[:, None, :]
        # the subtraction loses about eps * n_k |vbar|^2 / spread of the centred scatter:
        # nothing near convergence, but parameters far from their rows (a poor start, an
        # extrapolated point) would lose the scatter, so such components are centred first
        spread = np.diagonal(gram, axis1=1, axis2=2).min(axis=1)
        for j in np.flatnonzero(nk * (vbar**2).sum(1) > CANCELLATION * np.maximum(spread, 0)):
            c = (e.v[:, j, :] - vbar[j]) * root[:, j, None]
            gram[j] = c.T @ c
        ybar = mu_old + np.einsum("kde,ke->kd", sigma, vbar)
        # sum_p R_pk C_pk = n_k Sigma_k - Sigma_k (sum_p R_pk P_pk) Sigma_k, with P_pk the
        # embedded Sigma_k,oo^-1 (C_pk = Sigma_k - Sigma_k P_pk Sigma_k): no C_pk is formed
        r_pk = np.add.reduceat(resp, starts[:-1], axis=0)  # (P, K)
        gram -= np.einsum("pk,pkde->kde", r_pk, e.factors.precisions())
        w_k = sigma @ gram @ sigma + nk[:, None, None] * sigma
        return cls(nk, ybar, 0.5 * (w_k + np.swapaxes(w_k, -1, -2)), float(e.row_loglik.sum()))

    def combine(self, other: SuffStats) -> SuffStats:
        """The statistics of the union of two disjoint sets of rows."""
        n = self.nk + other.nk
        frac = np.divide(other.nk, n, out=np.zeros_like(n), where=n > 0)
        delta = other.mean - self.mean
        cross = (self.nk * frac)[:, None, None] * delta[:, :, None] * delta[:, None, :]
        return SuffStats(n, self.mean + frac[:, None] * delta,
                         self.scatter + other.scatter + cross, self.loglik + other.loglik)


def expected_stats(params: Params, layout: PatternLayout,
                   block_entries: int = BLOCK_ENTRIES) -> SuffStats:
    """The E-step's sufficient statistics, in row blocks of about ``block_entries / (K D)``.

    The pattern factors are computed once; each block reuses those of its patterns.
    """
    total = None
    for block, factors in row_blocks(params, layout, block_entries):
        stats = SuffStats.of(params, e_step(params, block, factors), block.starts)
        total = stats if total is None else total.combine(stats)
    assert total is not None
    return total


def m_step(stats: SuffStats, covariance: str, reg_covar: float,
           prior: ResolvedPrior | None) -> Params:
    """Closed-form MLE (``prior=None``) or MAP from the expected sufficient statistics."""
    nk = stats.nk + EPS
    ybar, w_k = stats.mean, stats.scatter
    k, d = ybar.shape
    eye = np.eye(d)
    if prior is None:
        means = ybar
        cov = constrain_covariance(w_k / nk[:, None, None], covariance, nk)
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


# --------------------------------------------------------------------------- the loop


@dataclass
class EMRun:
    """One EM run from one start."""

    params: Params
    stats: SuffStats  # of the E-step at ``params``
    objective: list[float] = field(default_factory=list)  # of each accepted iterate
    converged: bool = False
    n_estep: int = 0  # E-steps taken after the first (extrapolations tried included)
    n_accepted: int = 0  # extrapolations accepted
    # the last plain EM step's per-row change of the objective and largest relative move
    # (see :func:`run_em`), what a "did not converge" message reports
    last_gain: float = np.nan
    last_move: float = np.nan

    @property
    def n_iter(self) -> int:
        """Number of accepted iterates (EM steps and accepted extrapolations)."""
        return len(self.objective) - 1


def objective(stats: SuffStats, params: Params, prior: ResolvedPrior | None) -> float:
    """The EM objective: the log-likelihood, plus the log prior under a prior."""
    return stats.loglik if prior is None else stats.loglik + log_prior(params, prior)


EStepFn = Callable[[Params], SuffStats]


def run_em(params: Params, data: PatternLayout | EStepFn, covariance: str,
           prior: ResolvedPrior | None, *, max_iter: int, tol: float, reg_covar: float,
           stop: str = "gain", n: int | None = None, accelerate: bool = False) -> EMRun:
    """Iterate EM from ``params`` until it converges or ``max_iter`` iterations are taken.

    ``data`` is the rows' :class:`~ppgmm.data.PatternLayout`, or any function that returns
    the E-step's :class:`SuffStats` at given parameters (then ``n``, the number of rows, is
    needed): a chunked E-step on a cluster runs the same loop, accelerated or not.

    With ``reg_covar = 0`` each step raises the objective (the log-likelihood or
    log-posterior), and a decrease beyond rounding raises an error. ``reg_covar > 0`` adds
    to the covariances' diagonals after each M-step, which the objective does not include,
    so a step may lower it; the iteration goes on until the change is below ``tol``.

    Stopping. ``stop="gain"`` stops once a plain EM step changes the objective by less than
    ``tol`` per row and moves no coordinate of :func:`~ppgmm.numerics.accelerate.pack` (in
    the columns' units, :func:`~ppgmm.numerics.accelerate.column_units` of the start) by
    more than sqrt(``tol``) / :data:`SLOW_RATE` relative to its size (both scale-free, so
    one ``tol`` means the same at any N and in any units). ``stop="sklearn"`` is
    scikit-learn's rule (never accelerated): its E-step scores the parameters before the
    M-step, so it learns of a small gain one step late and takes one more M-step, and a run
    whose small gain comes at step ``max_iter`` has not converged.

    ``accelerate=True`` runs SQUAREM (:mod:`ppgmm.numerics.accelerate`): each cycle takes two
    EM steps and, when the extrapolated point raises the objective above the second, accepts
    it. Every accepted iterate's objective is recorded, so the trace stays monotone.
    """
    if isinstance(data, PatternLayout):
        layout, n = data, data.n

        def estep(p: Params) -> SuffStats:
            return expected_stats(p, layout)
    else:
        estep = data
        assert n is not None, "n (the number of rows) is needed with an E-step function"
    # floating-point trouble (a collapsing component overflows) shows up as a non-finite or
    # decreasing objective below, which raises an error that says what to do; numpy's own
    # warnings would only repeat it in less useful words
    units = column_units(params, covariance)  # the start's units: the path is unit-free
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        stats = estep(params)
        run = EMRun(params, stats, [objective(stats, params, prior)])
        if accelerate and stop == "gain":
            _squarem(run, estep, covariance, prior, max_iter, tol, reg_covar, n, units)
            return run
        pending = False
        for _ in range(max_iter):
            small = _em_step(run, estep, covariance, prior, reg_covar, tol, n, units,
                             moves=stop == "gain")
            if pending or (small and stop == "gain"):
                run.converged = True
                break
            pending = small
    return run


def _em_step(run: EMRun, estep: EStepFn, covariance: str, prior: ResolvedPrior | None,
             reg_covar: float, tol: float, n: int, units: Units, moves: bool = True) -> bool:
    """One checked EM step from the run's current point; records its per-row gain and largest
    relative move in ``run`` and returns whether they meet the stopping rule (the move only
    when ``moves``)."""
    new = m_step(run.stats, covariance, reg_covar, prior)
    stats = estep(new)
    obj = objective(stats, new, prior)
    prev = run.objective[-1]
    _check_step(obj, prev, new, len(run.objective), reg_covar)
    run.last_gain = (obj - prev) / n
    run.last_move = largest_move(run.params, new, units) if moves else np.nan
    run.params, run.stats = new, stats
    run.objective.append(obj)
    run.n_estep += 1
    # without reg_covar a gain at or below rounding (even slightly negative) is convergence;
    # with it a step may lower the objective, and a large fall is no convergence
    small = (abs(run.last_gain) if reg_covar > 0 else run.last_gain) < tol
    return small and (not moves or run.last_move <= move_limit(tol))


#: EM ends creeping along its slowest direction, so the distance left to the fixed point is
#: the last step over (1 - rate), and rates of 0.99 are usual with missing data: a step must
#: move no coordinate by more than sqrt(tol) / SLOW_RATE (no bound: about 1e-5 sd left at a
#: rate of 0.99). Measured on airquality (K = 2, 3) and five simulated sets (K = 3, D = 4,
#: N = 2000, 30% MCAR), MLE and MAP, against tol = 1e-16 runs: sqrt(tol) alone left means up
#: to 5e-4 sd from the optimum; / 100 left 3e-6, for 47% more E-steps in all (docs/em.md)
SLOW_RATE = 100.0


def move_limit(tol: float) -> float:
    """The largest relative move a converged step may make: sqrt(tol) / :data:`SLOW_RATE`."""
    return float(np.sqrt(tol)) / SLOW_RATE


def largest_move(p0: Params, p1: Params, units: Units) -> float:
    """The largest move of a packed coordinate (in the columns' ``units``) from ``p0`` to
    ``p1``, relative to its size (at least 1)."""
    t0, t1 = pack(p0, units), pack(p1, units)
    ok = np.isfinite(t0) & np.isfinite(t1)
    rel = np.abs(t1[ok] - t0[ok]) / np.maximum(1.0, np.abs(t0[ok]))
    return float(rel.max()) if rel.size else 0.0


def _squarem(run: EMRun, estep: EStepFn, covariance: str, prior: ResolvedPrior | None,
             max_iter: int, tol: float, reg_covar: float, n: int, units: Units) -> None:
    """SQUAREM cycles with the monotone safeguard (see :func:`run_em`)."""
    step_max = 1.0

    def plain_step() -> bool:
        """One EM step; whether it met the stopping rule."""
        run.converged = _em_step(run, estep, covariance, prior, reg_covar, tol, n, units)
        return run.converged

    while run.n_iter < max_iter:
        p0 = run.params
        if plain_step() or run.n_iter >= max_iter:
            return
        p1 = run.params
        if plain_step() or run.n_iter >= max_iter:
            return
        cand, s = squarem_point(p0, p1, run.params, step_max, units)
        grow = s == step_max  # SQUAREM's adaptive bound on the step length
        if cand is None:
            step_max *= 4.0 if grow else 1.0
            continue
        try:
            stats = estep(cand)
        except PpgmmError:  # the jump reached a numerically singular point: not taken
            stats = None
        run.n_estep += 1
        obj = -np.inf if stats is None else objective(stats, cand, prior)
        if np.isfinite(obj) and obj >= run.objective[-1]:
            run.params, run.stats = cand, stats
            run.objective.append(obj)
            run.n_accepted += 1
            step_max *= 4.0 if grow else 1.0
        else:
            step_max = max(1.0, step_max / 4.0)


def _check_step(obj: float, prev: float, new: Params, it: int, reg_covar: float) -> None:
    """Raise the error that says what to do when a step's objective is not usable."""
    collapse = (
        f"a component collapsed onto too few rows (its covariance became singular) at "
        f"iteration {it}; set reg_covar > 0, use a prior (prior='default'), or use fewer "
        "components"
    )
    if np.isnan(obj) or obj == np.inf:
        raise PpgmmError(
            f"the EM objective became {obj} at iteration {it} (the data may contain extreme "
            "values or near-duplicate columns); rescale the data, set reg_covar > 0, or use "
            "the default prior"
        )
    # reg_covar on the diagonals is not part of the objective, so a regularised step may
    # lower it (by much when reg_covar is large): iterate on, as scikit-learn does, until
    # the change is below tol. Without it EM never lowers the objective beyond rounding.
    if reg_covar == 0 and obj < prev - 1e-9 * (1.0 + abs(prev)):
        if not np.isfinite(obj) or _collapsed(new.covariances):
            raise PpgmmError(collapse)
        raise ObjectiveDecreaseError(
            f"EM objective decreased from {prev!r} to {obj!r} at iteration {it}; this is a "
            "bug in ppgmm, please report it with the data"
        )
    if obj == -np.inf:
        raise PpgmmError(f"the EM objective became -inf at iteration {it}: {collapse}")


def _collapsed(cov: np.ndarray) -> bool:
    """Whether some component's covariance is singular relative to the others' scale."""
    scale = np.trace(cov, axis1=1, axis2=2).max() / cov.shape[-1]
    return bool(np.linalg.eigvalsh(cov).min() <= 1e-10 * scale)


def collapsing_components(cov: np.ndarray, var: np.ndarray,
                          rel: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    r"""Components whose covariance is nearly singular on the data's scale.

    With :math:`S = \operatorname{diag}(s_1^2, \dots, s_D^2)` the features' variances,
    component :math:`k` is collapsing when the smallest eigenvalue of
    :math:`S^{-1/2}\Sigma_k S^{-1/2}` (its correlation-scale covariance) is below ``rel``: it
    sits on fewer effective dimensions than the data, where the likelihood grows without
    bound. Returns the indices and those smallest eigenvalues.
    """
    s = np.sqrt(np.where(var > 0, var, 1.0))
    low = np.linalg.eigvalsh(cov / np.outer(s, s)).min(axis=-1)
    idx = np.flatnonzero(low < rel)
    return idx, low[idx]


#: ``tol`` of the one-Gaussian EM behind the default prior: no coordinate moves by more than
#: sqrt(tol) / SLOW_RATE = 1e-10 relative at the end, so the prior does not depend on the
#: rounding of the sums (in-memory and chunk by chunk agree to about 1e-12); a few more
#: cheap K = 1 steps
SINGLE_GAUSSIAN_TOL = 1e-16


def fit_single_gaussian(md: MissingData, max_iter: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood mean and covariance (N denominator) of one Gaussian under MAR."""
    return single_gaussian_em(np.nanmean(md.values, axis=0), md.var, md.layout,
                              max_iter=max_iter)


def single_gaussian_start(mean: np.ndarray, var: np.ndarray) -> Params:
    """The one-Gaussian EM's start: the observed columns' means and variances (1 for a
    column without spread)."""
    var = np.where(var > 0, var, 1.0)
    return Params(np.ones(1), np.asarray(mean, float)[None], np.diag(var)[None])


def single_gaussian_em(mean: np.ndarray, var: np.ndarray, data: PatternLayout | EStepFn,
                       n: int | None = None, max_iter: int = 10_000
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The one-Gaussian MAR MLE by EM from the observed columns' ``mean`` and ``var``
    (``data`` and ``n`` as in :func:`run_em`).

    Plain EM first: its path does not branch on rounding, so in memory and chunk by chunk
    agree to about 1e-12 when it converges. The MLE need not exist: with a column observed
    in about as few rows as it has regressors, its conditional variance can shrink to 0
    while the likelihood grows without bound, and EM creeps that way for ever, often
    without raising. A column seen in a few more rows can make plain EM as slow towards a
    true maximum (more than 10,000 steps), so the number of steps cannot tell the two apart.
    A run not converged in ``max_iter`` steps goes on accelerated (SQUAREM, up to
    ``max_iter // 5`` iterates; its path branches on rounding): that reaches or nears a
    maximum where there is one and runs on towards the boundary where there is none. Still
    not converged, the iterate is judged by :func:`collapsing_components`: nearly singular
    on the correlation scale (below 1e-4; seen on simulated sets, D = 3, a column in 3 to 5
    rows: 1e-5 to 1e-11 where there was no maximum, 0.17 to 0.25 where there was one), it
    raises a :class:`~ppgmm.exceptions.PpgmmError`; otherwise it is returned, unconverged
    (a weak prior's centre and scale: its mean carries the weight of kappa = 0.01 rows).
    """
    p0 = single_gaussian_start(mean, var)
    run = run_em(p0, data, "full", None, max_iter=max_iter, tol=SINGLE_GAUSSIAN_TOL,
                 reg_covar=0.0, n=n)
    if run.converged:
        return run.params.means[0], run.params.covariances[0]
    steps = run.n_estep
    run = run_em(run.params, data, "full", None, max_iter=max(1, max_iter // 5),
                 tol=SINGLE_GAUSSIAN_TOL, reg_covar=0.0, n=n, accelerate=True)
    if not run.converged:
        scale = np.diagonal(p0.covariances[0])  # the columns' variances, floored
        idx, low = collapsing_components(run.params.covariances, scale)
        if len(idx):
            raise PpgmmError(
                f"the one-Gaussian EM appears to have no maximum: after "
                f"{steps + run.n_estep} E-steps its "
                f"covariance is nearly singular (smallest correlation-scale eigenvalue "
                f"{low[0]:.1e}) and the log-likelihood still rising")
    return run.params.means[0], run.params.covariances[0]


# --------------------------------------------------------------------------- starting points


def mean_imputed(md: MissingData) -> np.ndarray:
    """The values with each missing entry replaced by its column's observed mean."""
    return np.where(md.observed, md.values, np.nanmean(md.values, axis=0))


def params_from_resp(x: np.ndarray, resp: np.ndarray, covariance: str, reg: float) -> Params:
    """Complete-data M-step (on mean-imputed rows) for a starting point.

    A floor of 1e-6 of each column's variance (their mean for spherical covariances) plus
    ``reg`` is added to the diagonals, so that a start is never singular; per column, so
    that the start does not depend on the units of the data (one floor for every column,
    sized by a column in the millions, swamped the others)."""
    n, d = x.shape
    nk = resp.sum(0) + EPS
    means = resp.T @ x / nk[:, None]
    var = np.var(x, axis=0)
    floor = 1e-6 * (var.mean() if covariance == "spherical" else var) + reg
    cov = np.empty((len(nk), d, d))
    for j in range(len(nk)):
        dev = x - means[j]
        cov[j] = (resp[:, j, None] * dev).T @ dev / nk[j]
    cov = constrain_covariance(cov, covariance, nk)
    cov += floor * np.eye(d)  # floor: a scalar, or one entry per column
    return Params(nk / nk.sum(), means, cov)
