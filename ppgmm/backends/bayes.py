r"""The shared Bayesian run: what ADVI and NUTS do before and after their engine.

Every Bayesian backend is one call of :func:`run`: it resolves the prior (``prior=None``
becomes the default, noted in the attrs), starts from the EM fit (MAP under the same prior)
or given parameters, relabelled to the reference, builds the one PyMC model of
:mod:`ppgmm.backends.pymc_model`, hands it to the backend's engine, aligns every draw to the
reference (:func:`ppgmm.numerics.alignment.align`), computes the per-draw imputations,
predictive draws and log-likelihoods, and packages a :class:`ppgmm.Fit`.

An engine is a function ``engine(model, starts, seed) -> EngineResult`` (its own options
bound beforehand); :class:`EngineResult` is the one type every engine returns, with sample
statistics already renamed to ArviZ's names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import MissingData
from ..exceptions import ConvergenceWarning, SpecError, warn_user
from ..fit import LOG_DENSITY_STATS, Fit, build_idata
from ..numerics import affine
from ..numerics.alignment import align, align_to, count_relabelled
from ..numerics.patterns import derived_quantities
from ..prior import resolve_prior, warn_if_prior_dominates
from ..spec import GMM, Draws, Params, Prior, ResolvedPrior, as_params
from .em import fit_em
from .pymc_model import build_model, initial_values

__all__ = ["EngineResult", "Messages", "quiet_pymc_log", "resolve_bayes_prior", "em_start",
           "jitter_params", "run"]


@contextlib.contextmanager
def quiet_pymc_log() -> Iterator[None]:
    """Hold back PyMC's INFO log lines ("Initializing NUTS ...", "Finished [100%] ...")
    while it runs: ppgmm shows its own progress and messages; PyMC's warnings still show."""
    logger = logging.getLogger("pymc")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class Messages:
    """Warnings in plain words, raised and kept for the result's attrs."""

    items: list[str] = field(default_factory=list)

    def warn(self, text: str, category: type[Warning] = ConvergenceWarning) -> None:
        """Record ``text`` and raise it as a warning."""
        self.items.append(text)
        warn_user(text, category)

    def json(self) -> str:
        """JSON list for ``posterior.attrs["warnings"]``."""
        return json.dumps(self.items)


@dataclass
class EngineResult:
    """What every engine returns.

    Attributes
    ----------
    draws : Draws
        Parameter draws (chain, draw, ...) in the engine's own labelling.
    stats : xarray.Dataset
        Sample statistics with ArviZ's names (``diverging``, ``tree_depth``, ``lp``, ...)
        over (chain, draw), and traces over ``iteration`` (``elbo``).
    log_density : ndarray of shape (chain, draw), optional
        Unnormalised log posterior per draw, used to pick a pivot draw.
    converged : bool
        The engine's own convergence criterion.
    attrs : dict
        Engine facts for the result's attrs (times, iterations, ...).
    """

    draws: Draws
    stats: Any
    log_density: np.ndarray | None = None
    converged: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)


def resolve_bayes_prior(spec: GMM, md: MissingData) -> tuple[GMM, ResolvedPrior, str]:
    """The spec's prior resolved against the data; ``prior=None`` becomes the default.

    Returns the spec actually fitted, the resolved prior and a note for the result's attrs.
    """
    note = "the spec's prior"
    if spec.prior is None:
        spec = dataclasses.replace(spec, prior=Prior())
        note = (
            "the spec had prior=None (maximum likelihood); the Bayesian backends need a proper "
            "prior and used the default prior (ppgmm.Prior())"
        )
    rp = resolve_prior(spec, md)
    assert rp is not None
    warn_if_prior_dominates(spec, md, rp, mle=False)
    return spec, rp, note


def em_start(spec: GMM, md: MissingData, init: Any, seed: int | None) -> Params | None:
    """Starting parameters: the EM fit (MAP under ``spec``'s prior), given ones, or None."""
    if isinstance(init, str):
        if init == "em":
            return fit_em(spec, md, seed=seed, warn=False).params
        if init == "prior":
            return None
        raise SpecError(
            f"init should be 'em', 'prior' or parameters (a Fit's point()), but got {init!r}"
        )
    return as_params(init, spec.n_components, md.d, name="init")


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


@dataclass
class Start:
    """Where the chains (or the approximation) start, and the reference for alignment."""

    params: Params | list[Params] | None  # one set, one per chain, or None (PyMC's start)
    reference: Params | None  # given by the user
    kind: str  # how the reference of the draws will be chosen

    @property
    def first(self) -> Params | None:
        """The single start, or the first chain's."""
        return self.params[0] if isinstance(self.params, list) else self.params


def _start(spec: GMM, md: MissingData, init: Any, reference: Any, chains: int,
           em_seed: int | None) -> Start:
    k, d = spec.n_components, md.d
    ref = None if reference is None else as_params(reference, k, d, name="reference")
    if isinstance(init, list | tuple):
        if len(init) != chains:
            raise SpecError(f"init should give one parameter set per chain ({chains}), but got "
                            f"{len(init)}")
        params: Any = [em_start(spec, md, p, em_seed) for p in init]
    else:
        params = em_start(spec, md, init, em_seed)
        if ref is not None and params is not None:
            # start in the reference's labelling, so a relabelled draw is a real label switch
            # (per-chain starts stay as given: they may be in different labellings on purpose)
            params = align_to(params, ref)[0]
    kind = "given" if ref is not None else "pivot" if params is None else (
        "em" if isinstance(init, str) else "start")
    return Start(params, ref, kind)


def _start_to_z(start: Start, a: affine.Affine) -> Start:
    """The start on the standardised scale (the reference stays in the data's units)."""
    p = start.params
    if p is None:
        return start
    z = [affine.params_to_z(q, a) for q in p] if isinstance(p, list) else affine.params_to_z(
        p, a)
    return Start(z, start.reference, start.kind)


def _from_z(result: EngineResult, a: affine.Affine, md: MissingData) -> EngineResult:
    """The engine's result in the data's units: draws mapped back exactly, the ELBO (a log
    density of the data) shifted by the Jacobian :math:`-\\sum_i\\sum_{j\\in o_i}\\log s_j`."""
    shift = -float(affine.log_jacobian(md.observed, a).sum())
    stats = result.stats
    attrs = dict(result.attrs)
    for name in LOG_DENSITY_STATS:
        if name in stats:
            stats[name] = stats[name] + shift
    if "elbo_final" in attrs:
        attrs["elbo_final"] = float(attrs["elbo_final"]) + shift
    return dataclasses.replace(result, draws=affine.draws_from_z(result.draws, a), stats=stats,
                               attrs=attrs)


def _chain_values(start: Start, rp: ResolvedPrior, spec: GMM, md: MissingData, chains: int,
                  rng: np.random.Generator, jitter: float, latent: bool
                  ) -> list[dict[str, np.ndarray]] | None:
    """Initial values (constrained scale) per chain, jittered around the start.

    A list of starts gives one parameter set per chain, used as given.
    """
    if start.params is None:
        return None
    given = md if latent else None
    if isinstance(start.params, list):
        return [initial_values(p, rp, spec.covariance, given) for p in start.params]
    out = []
    for _ in range(chains):
        p = start.params if jitter == 0 else jitter_params(start.params, md.n, rng, jitter,
                                                           spec.covariance)
        out.append(initial_values(p, rp, spec.covariance, given))
    return out


def run(spec: GMM, md: MissingData, *, backend: str, seed: int | None, init: Any,
        reference: Any, engine: Callable[..., EngineResult], chains: int = 1,
        jitter: float = 0.0, missing: str = "marginal", standardise: bool = True,
        check: Callable[[Draws, Draws, EngineResult], tuple[dict, Messages, bool]] | None = None,
        attrs: dict[str, Any] | None = None) -> Fit:
    """One Bayesian fit: prior, start, model, ``engine``, alignment, derived quantities, Fit.

    Parameters
    ----------
    engine : callable
        ``engine(model, values, seed)`` with ``values`` the per-chain initial values
        (constrained scale, or None for PyMC's own start); returns an :class:`EngineResult`.
    check : callable, optional
        ``check(raw, aligned, result)`` returns (attrs, Messages, converged) from the draws
        before and after alignment (NUTS's diagnostics); default: the engine's converged
        flag, no extra attrs.
    standardise : bool, default True
        Run the engine on the standardised scale (:func:`ppgmm.numerics.affine.standardising`:
        each column centred and scaled by its observed mean and standard deviation, the prior
        transformed with it) and map the draws back exactly, so that results do not depend
        on the units of the data. False runs on the data as given.
    attrs : dict, optional
        The backend's own settings for the result's attrs.
    """
    spec_fit, rp, prior_note = resolve_bayes_prior(spec, md)
    rng = np.random.default_rng(seed)
    em_seed = None if seed is None else int(rng.integers(2**31))
    start = _start(spec_fit, md, init, reference, chains, em_seed)
    a = (affine.standardising(md, spec_fit.covariance) if standardise
         else affine.Affine.identity(md.d))
    md_z, rp_z, start_z = affine.data_to_z(md, a), affine.prior_to_z(rp, a), _start_to_z(start, a)
    model = build_model(spec_fit, md_z, rp_z, missing=missing)
    values = _chain_values(start_z, rp_z, spec_fit, md_z, chains, rng, jitter,
                           missing == "latent")
    result = _from_z(engine(model, values, int(rng.integers(2**31))), a, md)
    t0 = time.perf_counter()
    ref = start.reference if start.reference is not None else start.first
    if ref is None:
        ref = _pivot(result)
    aligned, perm = align(result.draws, ref)
    stats = result.stats
    stats["permutation"] = (("chain", "draw", "component"), perm.astype(np.int64))
    if check is None:
        extra, msgs, converged = {}, Messages(), result.converged
    else:
        extra, msgs, converged = check(result.draws, aligned, result)
    imputed, predictive, loglik = derived_quantities(md, aligned, rng)
    out_attrs = {
        "seed": -1 if seed is None else int(seed),
        "converged": int(converged),
        "warnings": msgs.json(),
        "prior_note": prior_note,
        **(attrs or {}),
        "init": init if isinstance(init, str) else "per-chain" if isinstance(
            init, list | tuple) else "parameters",
        "missing": missing,
        "standardised": int(bool(standardise)),
        **extra,
        **result.attrs,
        "relabelled_draws": count_relabelled(perm),
        "reference": start.kind,
        "postprocess_time": float(time.perf_counter() - t0),
    }
    built = build_idata(
        md, spec_fit, backend=backend, draws=aligned, imputed_mean=imputed,
        x_missing=predictive, loglik=loglik, attrs=out_attrs, sample_stats=stats,
    )
    return Fit(built)


def _pivot(result: EngineResult) -> Params:
    """A pivot draw: the one of highest log density when known, else the mean (one chain,
    as ADVI's draws) or the last draw."""
    flat = result.draws.flat()
    if result.log_density is not None:
        i = int(np.argmax(result.log_density.reshape(-1)))
    elif result.draws.shape[0] == 1:
        return result.draws.mean_params()
    else:
        i = len(flat.weights) - 1
    return Params(flat.weights[i], flat.means[i], flat.covariances[i])
