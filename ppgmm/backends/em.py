r"""The EM backend: exact marginalisation of missing entries, MLE or MAP.

The numerics (E-step on observed sub-vectors per pattern, closed-form M-step, the EM loop)
live in :mod:`ppgmm.numerics`; this module reads the user's options, runs the starts,
optionally bootstraps, and packages the result in the Fit schema. See docs/em.md for the
derivation.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checks import check_int, check_number
from ..data import MissingData
from ..exceptions import ConvergenceWarning, PpgmmError, SpecError, warn_user
from ..fit import Fit, build_idata
from ..numerics.alignment import align_to
from ..numerics.em import (
    SLOW_RATE,
    EMRun,
    collapsing_components,
    mean_imputed,
    move_limit,
    params_from_resp,
    run_em,
)
from ..numerics.init import kmeans_labels, kpod_labels
from ..numerics.patterns import derived_quantities
from ..prior import resolve_prior, warn_if_prior_dominates
from ..spec import GMM, Draws, Params, ResolvedPrior, as_params

__all__ = ["fit_em", "initial_params", "em_backend", "EMResult", "warn_if_reg_covar_dominates"]

INITS = ("auto", "kmeans++", "kpod", "random")

#: rows of the subsample on which init="auto" compares its candidate starts
AUTO_ROWS = 3_000
#: candidate starts of init="auto", and the EM iterations each gets on the subsample
AUTO_CANDIDATES, AUTO_ITER = 3, 6
#: above this many stored numbers (draws x missing entries), imputation_draws=None stores none
DRAWS_LIMIT = 1_000_000


def initial_params(spec: GMM, md: MissingData, init: Any, rng: np.random.Generator,
                   reg: float, prior: ResolvedPrior | None = None) -> Params:
    """Starting parameters: emEM on k-POD starts ("auto"), k-means, random, or given.

    ``"auto"`` draws up to :data:`AUTO_ROWS` rows, clusters them :data:`AUTO_CANDIDATES`
    times by k-POD (:func:`~ppgmm.numerics.init.kpod_labels`, greedy k-means++ seeds), runs
    :data:`AUTO_ITER` accelerated EM iterations on the subsample from each clustering, and
    returns the parameters of the one with the highest objective (Biernacki, Celeux &
    Govaert 2003's "emEM", on a subsample so that its cost does not grow with N).
    ``"kpod"`` is one k-POD clustering of all rows; ``"kmeans++"`` one k-means clustering
    (greedy k-means++ seeds) of the mean-imputed rows; ``"random"`` random responsibilities.
    """
    k = spec.n_components
    if not isinstance(init, str):
        return as_params(init, k, md.d, name="init")
    if init == "auto":
        return _auto_start(spec, md, rng, reg, prior)
    if init == "kmeans++":
        labels = kmeans_labels(mean_imputed(md), k, rng)
    elif init == "kpod":
        found = kpod_labels(md.values, md.observed, k, rng)
        labels = None if found is None else found[0]
    elif init == "random":
        resp = rng.uniform(size=(md.n, k))
        resp /= resp.sum(1, keepdims=True)
        return params_from_resp(mean_imputed(md), resp, spec.covariance, reg)
    else:
        raise SpecError(
            f"init should be one of {list(INITS)} or explicit parameters, but got {init!r}"
        )
    if labels is None:
        raise PpgmmError(
            f"k-means could not find {k} non-empty clusters; the data may have fewer "
            f"than {k} distinct rows. Use fewer components."
        )
    return params_from_resp(mean_imputed(md), np.eye(k)[labels], spec.covariance, reg)


def _auto_start(spec: GMM, md: MissingData, rng: np.random.Generator, reg: float,
                prior: ResolvedPrior | None) -> Params:
    """The emEM start of :func:`initial_params` (``init="auto"``)."""
    k = spec.n_components
    sub = md
    if md.n > AUTO_ROWS:
        idx = np.sort(rng.choice(md.n, AUTO_ROWS, replace=False))
        sub = MissingData.from_arrays(md.values[idx], md.feature_names, md.obs_names[idx])
    x0, layout = mean_imputed(sub), sub.layout
    best: EMRun | None = None
    for _ in range(AUTO_CANDIDATES):
        found = kpod_labels(sub.values, sub.observed, k, rng)
        if found is None:
            continue
        p0 = params_from_resp(x0, np.eye(k)[found[0]], spec.covariance, reg)
        try:
            run = run_em(p0, layout, spec.covariance, prior, max_iter=AUTO_ITER, tol=1e-8,
                         reg_covar=reg, accelerate=True)
        except PpgmmError:  # a candidate whose component collapsed on the subsample
            continue
        if best is None or run.objective[-1] > best.objective[-1]:
            best = run
    if best is None:
        return initial_params(spec, md, "kmeans++", rng, reg)
    return best.params


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


def fit_em(
    spec: GMM,
    md: MissingData,
    *,
    seed: int | None = None,
    n_init: int = 1,
    init: Any = "auto",
    max_iter: int = 1000,
    tol: float = 1e-10,
    reg_covar: float | None = None,
    uncertainty: str | None = None,
    n_bootstrap: int | None = None,
    imputation_draws: int | None = None,
    stop: str = "gain",
    accelerate: bool = True,
    warn: bool = True,
) -> EMResult:
    """Fit by EM. See :func:`ppgmm.fit` for the options.

    ``accelerate`` (SQUAREM, :mod:`ppgmm.numerics.accelerate`) applies with ``stop="gain"``
    only: ``stop="sklearn"`` follows scikit-learn's plain EM trajectory exactly.
    """
    n_init, max_iter = check_int("n_init", n_init, 1), check_int("max_iter", max_iter, 0)
    tol = check_number("tol", tol)
    if imputation_draws is not None:
        check_int("imputation_draws", imputation_draws, 0)
    if not isinstance(accelerate, bool | np.bool_):
        raise SpecError(f"accelerate should be True or False, but got {accelerate!r}")
    if uncertainty == "bootstrap":
        n_bootstrap = 200 if n_bootstrap is None else check_int("n_bootstrap", n_bootstrap, 2)
    elif n_bootstrap is not None:
        raise SpecError(f"n_bootstrap={n_bootstrap!r} is used only with "
                        "uncertainty='bootstrap'; add that option, or drop n_bootstrap")
    if stop not in ("gain", "sklearn"):
        raise SpecError(f"stop should be 'gain' or 'sklearn', but got {stop!r}")
    if uncertainty not in (None, "bootstrap"):
        raise SpecError(f"uncertainty should be None or 'bootstrap', but got {uncertainty!r}")
    prior = resolve_prior(spec, md)
    reg = (0.0 if prior is not None else 1e-6) if reg_covar is None else check_number(
        "reg_covar", reg_covar)
    if warn:
        warn_if_reg_covar_dominates(reg, md)
        warn_if_prior_dominates(spec, md, prior)
    rng = np.random.default_rng(seed)
    layout = md.layout
    if not isinstance(init, str):
        n_init = 1
    best: EMRun | None = None
    for _ in range(n_init):
        p0 = initial_params(spec, md, init, rng, reg, prior)
        run = run_em(p0, layout, spec.covariance, prior, max_iter=max_iter, tol=tol,
                     reg_covar=reg, stop=stop, accelerate=bool(accelerate), n=md.n)
        if best is None or run.objective[-1] > best.objective[-1]:
            best = run
    assert best is not None
    result = EMResult(best.params, best, prior, reg, n_init)
    idx, low = (collapsing_components(best.params.covariances, md.var)
                if prior is None else ((), ()))
    # converged: collapsed only where reg_covar holds the covariance up (a component merely
    # small or thin next to the whole data set is a proper maximum)
    held = [k for k in idx if np.linalg.eigvalsh(best.params.covariances[k]).min() <= 10 * reg]
    if best.converged and held:
        idx, low = np.asarray(held), low[np.isin(idx, held)]
        result.messages.append(_degenerate_message(best.params, md, idx, low, reg))
        if warn:
            warn_user(result.messages[-1], UserWarning)
    if not best.converged:
        gain = _unconverged_step(best, tol, stop)
        if len(idx):  # an unbounded likelihood: more iterations only shrink the component
            why = (
                f"component(s) {', '.join(map(str, idx))} are collapsing (smallest covariance "
                f"eigenvalue {min(low):.2g} of the features' variances), so the likelihood "
                "grows without bound and the MLE does not exist here; use the prior "
                "(prior='default'), fewer components, or a larger reg_covar."
            )
        else:
            why = ("increase max_iter, loosen tol, or check the estimate: slow convergence often "
                   "means components that overlap or more components than the data support "
                   "(try fewer, or prior='default').")
        result.messages.append(
            f"EM did not converge in max_iter={max_iter} iterations ({gain}); {why}"
        )
        if warn:
            warn_user(result.messages[-1], ConvergenceWarning)
    if uncertainty == "bootstrap":
        result.draws = _bootstrap(spec, md, result, rng, n_bootstrap, max_iter, tol,
                                  bool(accelerate) and stop == "gain")
    return result


def _unconverged_step(run: EMRun, tol: float, stop: str) -> str:
    """What the last plain EM step of an unconverged run showed against the stopping rule."""
    if not run.n_estep:
        return "no iteration was run"
    gain, move, limit = run.last_gain, run.last_move, move_limit(tol)
    # a fall beyond rounding happens only with reg_covar > 0, where its size is what counts
    below = abs(gain) < tol
    said = f"last EM step: per-row gain {gain:.3g}, {'below' if below else 'not below'} " \
        f"tol={tol:g}"
    if stop != "gain":  # scikit-learn's rule has no move test, and stops one step later
        return said + (" (scikit-learn's rule stops one M-step after such a step)"
                       if below else "")
    return said + (f"; largest relative parameter move {move:.2g}, "
                   f"{'within' if move <= limit else 'above'} sqrt(tol)/{SLOW_RATE:g} = "
                   f"{limit:.2g}")


def _degenerate_message(params: Params, md: MissingData, idx: np.ndarray, low: np.ndarray,
                        reg: float) -> str:
    """Why a converged MLE with a collapsing component is not a proper maximum."""
    s = np.sqrt(np.where(md.var > 0, md.var, 1.0))
    where = []
    for k in idx:  # the feature that dominates the component's thinnest direction
        _, vec = np.linalg.eigh(params.covariances[k] / np.outer(s, s))
        where.append(f"{k} (along {md.feature_names[int(np.abs(vec[:, 0]).argmax())]!r})")
    return (
        f"EM converged, but component(s) {', '.join(where)} collapsed: the smallest "
        f"covariance eigenvalue is {min(low):.2g} of the features' variances, held up only by "
        f"reg_covar={reg:g}. The likelihood is unbounded there, so this is a degenerate "
        "maximum (often rows sharing one value of a discrete column) and its log-likelihood "
        "and BIC reflect reg_covar. Use the prior (prior='default'), "
        + ("fewer components, " if len(params.weights) > 1 else "")
        + "or leave out such columns."
    )


def _bootstrap(spec: GMM, md: MissingData, main: EMResult, rng: np.random.Generator, b: int,
               max_iter: int, tol: float, accelerate: bool) -> list[Params]:
    """Refit on ``b`` row-resampled data sets from the main fit, aligned to its labels."""
    draws = []
    show = sys.stderr.isatty()  # progress on a terminal only
    for i in range(b):
        if show:
            print(f"\rppgmm: bootstrap refit {i + 1}/{b}", end="", file=sys.stderr, flush=True)
        idx = rng.integers(0, md.n, md.n)
        sub = MissingData.from_arrays(md.values[idx], md.feature_names, md.obs_names[idx])
        try:
            run = run_em(main.params, sub.layout, spec.covariance, main.prior,
                         max_iter=max_iter, tol=tol, reg_covar=main.reg_covar,
                         accelerate=accelerate)
        except PpgmmError:
            continue  # a resample on which a component collapsed: skip, counted below
        draws.append(run.params)
    if show:
        print(file=sys.stderr)
    if len(draws) < b:
        warn_user(
            f"{b - len(draws)} of {b} bootstrap refits failed (a component collapsed) and were "
            "skipped; consider fewer components or a prior.",
            UserWarning,
        )
    return [align_to(p, main.params)[0] for p in draws]


def _draws_to_store(md: MissingData, requested: int | None) -> int:
    """Predictive draws stored with the fit: 20 unless that would exceed DRAWS_LIMIT numbers."""
    if requested is not None:
        return int(requested)
    n_missing = int(md.n * md.d - md.observed.sum())
    return 20 if 20 * n_missing <= DRAWS_LIMIT else 0


#: reg_covar above this fraction of a column's variance is warned about
REG_COVAR_SHARE = 1e-2


def warn_if_reg_covar_dominates(reg: float, md: MissingData) -> None:
    """Warn when ``reg_covar``, added to every covariance diagonal, is not small next to
    the data's own variances (data in tiny units: it then merges clusters silently)."""
    var = np.asarray(md.var, dtype=float)
    small = var[var > 0]
    if reg <= 0 or not small.size or reg <= REG_COVAR_SHARE * small.min():
        return
    j = int(np.flatnonzero(var == small.min())[0])
    share = reg / small.min()
    size = f"{share:.2g} times" if share >= 1 else f"{share:.1%} of"
    warn_user(
        f"reg_covar={reg:g} is added to every covariance diagonal, but column "
        f"{md.feature_names[j]!r} has variance {small.min():.3g} (reg_covar is {size} it), "
        "so it inflates the covariances and can merge clusters. Rescale the data (e.g. "
        "standardise the columns) or set a smaller reg_covar",
        UserWarning,
    )


def em_backend(spec: GMM, md: MissingData, *, seed: int | None = None, **options: Any) -> Fit:
    """Run :func:`fit_em` and package its result in the Fit schema."""
    import xarray as xr

    res = fit_em(spec, md, seed=seed, **options)
    rng = np.random.default_rng(np.random.default_rng(seed).integers(2**63))
    # with bootstrap, one predictive draw per refit: multiple imputation that carries
    # parameter uncertainty; otherwise draws at the estimate
    sets = res.draws or [res.params]
    draws = Draws(*(np.stack([getattr(p, n) for p in sets])[None] for n in Params._fields))
    per = 1 if res.draws else _draws_to_store(md, options.get("imputation_draws"))
    imputed, predictive, loglik = derived_quantities(md, draws, rng, per)
    run = res.run
    stats = xr.Dataset(
        {"objective": ("iteration", np.asarray(run.objective))},
        coords={"iteration": np.arange(len(run.objective))},
    )
    attrs = {
        "seed": -1 if seed is None else int(seed),
        "converged": int(run.converged),
        "n_iter": int(run.n_iter),
        "n_estep": int(run.n_estep),
        "n_accelerated": int(run.n_accepted),
        "n_init": int(res.n_init),
        "objective": "log-posterior" if res.prior is not None else "log-likelihood",
        "reg_covar": float(res.reg_covar),
        "uncertainty": options.get("uncertainty") or "none",
        "n_bootstrap": len(res.draws),
        "warnings": json.dumps(res.messages),
    }
    idata = build_idata(
        md, spec, backend="em", draws=draws, imputed_mean=imputed, x_missing=predictive,
        loglik=loglik, attrs=attrs, sample_stats=stats, estimate=res.params,
    )
    return Fit(idata)
