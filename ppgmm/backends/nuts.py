r"""The NUTS backend: PyMC's model of :mod:`ppgmm.backends.pymc_model`, sampled by NUTS.

Engines (``engine=``), all driven through PyMC:

- ``"nutpie"`` (default): nutpie's Rust NUTS on the PyMC graph compiled to JAX, with its
  low-rank modified mass matrix; chains run in parallel threads. Fastest reliable engine
  here (``docs/bayesian.md`` has the measurements). The compiled model takes the data as
  inputs and is cached per model structure, so a second fit of the same shape does not
  recompile; it samples the same draws as a fresh compile.
- ``"numpyro"``: the PyMC graph compiled to JAX, numpyro's NUTS with a dense mass matrix
  (what ``pm.sample(nuts_sampler="numpyro")`` runs).
- ``"pymc"``: PyMC's own NUTS on the graph compiled with PyTensor's NUMBA mode (pip
  installs of PyTensor find no BLAS, so its default C mode is slow).
  ``engine_kwargs={"compile_kwargs": {"mode": ...}}`` picks another mode. The test suite
  runs this engine end to end on the smallest model (K=1, D=1) in FAST_COMPILE mode
  (seconds; NUMBA compilation takes minutes), so the PyMC path is exercised in CI.

Each engine is a function with one signature that returns a
:class:`~ppgmm.backends.bayes.EngineResult`, with a table (:data:`STAT_NAMES`) that renames
its sample statistics to ArviZ's names. Everything else is the shared Bayesian run
(:func:`ppgmm.backends.bayes.run`): chains start from the EM fit (MAP under the same prior),
each jittered by about one posterior standard deviation, so they begin in one labelling and
skip the symmetric region; draws are then aligned to a reference (``reference=``, default
that EM fit).
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from typing import Any

import numpy as np

from ..checks import check_bool, check_int, check_number
from ..data import MissingData
from ..exceptions import SpecError, warn_user
from ..fit import Fit
from ..numerics import diagnostics
from ..spec import GMM, Draws
from . import bayes
from .pymc_model import import_pymc

__all__ = ["nuts_backend", "diagnose", "estimate_runtime", "ENGINES", "STAT_NAMES"]

MISSING = ("marginal", "latent")
#: deepest NUTS tree per engine (numpyro and nutpie default 10; PyMC 10)
MAX_TREEDEPTH = 10
NAMES = ["weights", "means", "covariances"]

#: leapfrog steps per iteration assumed by :func:`estimate_runtime`: a tree of depth 4, what
#: these posteriors take on the standardised scale with an adapted mass matrix (the
#: benchmark's 2 x 2000 iterations in 7 s at 216 us per gradient is about 16)
STEPS_PER_DRAW = 15

#: engine -> its sample statistics' names that differ from ArviZ's
STAT_NAMES = {
    "nutpie": {"depth": "tree_depth", "maxdepth_reached": "reached_max_treedepth",
               "logp": "lp", "mean_tree_accept": "acceptance_rate"},
    "numpyro": {},
    "pymc": {},
}


def _nutpie_order(compiled: Any, model: Any, starts: list | None) -> tuple[str, ...] | None:
    """The order of the model's value variables in nutpie's flat vector.

    nutpie documents no per-chain initial points: it asks the compiled model for one start
    per chain (a flat unconstrained vector, through the undocumented ``_make_initial_points``
    field). Its order of the variables is not ``model.value_vars``'; this finds the order
    that reproduces nutpie's own first start (compiled from ``starts[0]``, or its default
    jittered start), or None. A test starts four chains in four labellings and fails if
    nutpie changes this.
    """
    import itertools

    own = getattr(compiled, "_make_initial_points", None)
    if own is None:
        return None
    first = np.asarray(own(0), dtype=float)
    point = _point_fns(model, starts)[0](0)
    for order in itertools.permutations(point):
        flat = np.concatenate([np.ravel(point[n]) for n in order])
        if flat.shape == first.shape and np.allclose(flat, first, rtol=1e-12, atol=1e-12):
            return tuple(order)
    return None


def _point_fns(model: Any, starts: list | None) -> list:
    """``seed -> {value variable: unconstrained value}`` per start, unjittered, or nutpie's
    default when there are no starts: the support point, jittered."""
    from pymc.initial_point import make_initial_point_fn

    if not starts:
        return [make_initial_point_fn(model=model, jitter_rvs=set(model.free_RVs),
                                      default_strategy="support_point",
                                      return_transformed=True)]
    return [make_initial_point_fn(model=model, overrides=start, jitter_rvs=set(),
                                  return_transformed=True) for start in starts]


def _nutpie_per_chain_starts(compiled: Any, model: Any, starts: list | None,
                             order: tuple[str, ...]) -> Any:
    """Give each nutpie chain its start from ``model`` (this fit's, also when ``compiled``
    came from the cache): successive requests get successive entries of ``starts``, laid
    out in nutpie's ``order`` (:func:`_nutpie_order`); without starts, nutpie's default
    jittered start, seeded by the chain's seed."""
    import dataclasses
    import threading

    fns = _point_fns(model, starts)
    lock, count = threading.Lock(), [0]

    def next_start(seed: Any) -> np.ndarray:
        with lock:
            i = count[0]
            count[0] += 1
        point = fns[i % len(fns)](seed)
        return np.concatenate([np.ravel(point[n]) for n in order]).astype(float)

    return dataclasses.replace(compiled, _make_initial_points=next_start)


def _model_data(model: Any) -> dict[str, np.ndarray]:
    """The values of the model's ``pm.Data``, by name."""
    return {n: v.get_value() for n, v in model.named_vars.items() if hasattr(v, "get_value")}


def _nutpie_key(model: Any) -> tuple | None:
    """What nutpie's compiled model depends on besides the values of the model's
    ``pm.Data`` (the model structure, the shapes of the data and of the coordinates), or
    None when the graph holds data as constants: the latent missing entries are free
    variables placed at the data's missing positions."""
    from itertools import chain

    from .pymc_model import FREE_NAMES

    params = {"weights", "means", *chain.from_iterable(FREE_NAMES.values())}
    structure = getattr(model, "ppgmm_structure", None)
    if structure is None or any(v.name not in params for v in model.free_RVs):
        return None
    data = tuple((n, np.shape(v)) for n, v in _model_data(model).items())
    coords = tuple((n, len(v)) for n, v in model.coords.items() if v is not None)
    return structure, data, coords


#: nutpie's compiled model and its variable order per :func:`_nutpie_key`: a second fit of
#: the same shape does not recompile (0 turns the cache off: every fit compiles its model
#: with the data frozen in, as nutpie does by default)
_NUTPIE_CACHE: dict[tuple, tuple[Any, tuple[str, ...]]] = {}
_NUTPIE_CACHE_SIZE = 4


def _nutpie_compiled(model: Any, starts: list | None) -> Any:
    """nutpie's compiled model of ``model``, with this fit's data and chain starts.

    Compiled once per :func:`_nutpie_key` with the data as inputs
    (``freeze_model=False``) and cached; each fit hands its data in through
    ``with_data`` (every ``pm.Data``, the prior's hyperparameters included) and its starts
    through :func:`_nutpie_per_chain_starts`. A model that cannot be cached compiles with
    its data frozen in.
    """
    import dataclasses

    import jax.numpy as jnp
    import nutpie
    import pandas as pd
    from pymc.model.transform.optimization import freeze_dims_and_data

    options = {"backend": "jax", "gradient_backend": "jax", "var_names": NAMES,
               "initial_points": starts[0] if starts else None,
               "jitter_rvs": set() if starts else None}

    def frozen() -> Any:
        compiled = nutpie.compile_pymc_model(model, **options)
        if not starts or len(starts) == 1:
            return compiled
        order = _nutpie_order(compiled, model, starts)
        # without a layout every chain starts at starts[0]
        return compiled if order is None else _nutpie_per_chain_starts(compiled, model,
                                                                        starts, order)

    key = _nutpie_key(model) if _NUTPIE_CACHE_SIZE > 0 else None
    if key is None:
        return frozen()
    # the model rebuilt from its graph, as nutpie's default compile rebuilds it, but with the
    # data left as inputs: the rebuild sets the order of the variables in nutpie's flat
    # vector (and of PyMC's jitter draws), so the cached compile samples the draws of the
    # default one, bit for bit (in the model's own order they differ by rounding, which NUTS
    # amplifies on a raw scale: docs/bayesian.md)
    rebuilt = freeze_dims_and_data(model, dims=[], data=[])
    data = _model_data(rebuilt)
    if key not in _NUTPIE_CACHE:
        if os.environ.get("PPGMM_DEBUG_CACHE"):
            print("nutpie compile cache miss:", key[1:], file=sys.stderr)
        with warnings.catch_warnings():
            # the row count is not static in the graph, so PyTensor checks the rows'
            # broadcasting at run time, which JAX drops with a warning; the key fixes the
            # shapes of every pm.Data handed in later
            warnings.filterwarnings("ignore", message="Skipping Assert", category=UserWarning)
            compiled = nutpie.compile_pymc_model(rebuilt, freeze_model=False, **options)
        order = _nutpie_order(compiled, rebuilt, starts)
        if order is None or set(compiled._shared_data) != set(data):
            # no layout of the starts, or data outside the pm.Data: nothing to cache
            return frozen()
        if len(_NUTPIE_CACHE) >= _NUTPIE_CACHE_SIZE:
            _NUTPIE_CACHE.pop(next(iter(_NUTPIE_CACHE)))
        _NUTPIE_CACHE[key] = (compiled, order)
    compiled, order = _NUTPIE_CACHE[key]
    compiled = compiled.with_data(**{n: jnp.asarray(v) for n, v in data.items()})
    # this model's coordinate values (feature names), of the cached model's lengths
    coords = {n: pd.Index(v) for n, v in model.coords.items() if v is not None}
    compiled = dataclasses.replace(compiled, _coords={**compiled._coords, **coords})
    return _nutpie_per_chain_starts(compiled, rebuilt, starts, order)


# --------------------------------------------------------------------------- engines
# engine(model, starts, seed, *, draws, tune, chains, target_accept, progressbar,
#        dense_mass, engine_kwargs, time_warning)
#        -> (InferenceData, compile seconds, sampling seconds)


def _numpyro(model: Any, starts: list | None, seed: int, *, draws: int, tune: int,
             chains: int, target_accept: float, progressbar: bool, dense_mass: bool,
             engine_kwargs: dict, time_warning: float | None) -> tuple[Any, float, float]:
    import jax
    from pymc.sampling.jax import sample_jax_nuts

    t0 = time.perf_counter()
    if time_warning is not None:
        _warn_if_slow(_jax_gradient(model), draws=draws, tune=tune, chains=chains,
                      parallel=jax.local_device_count(), limit=time_warning)
    if jax.local_device_count() >= chains:
        method: Any = "parallel"
    else:
        # numpyro's own "sequential" drives each chain from Python and ran 2.5x slower
        # here; one compiled loop over the chains (lax.map) runs at pmap speed
        def method(chain_fn):
            return jax.jit(lambda xs: jax.lax.map(chain_fn, xs))

    nuts_kwargs = {"dense_mass": dense_mass, **engine_kwargs.pop("nuts_kwargs", {})}
    kw = {"chain_method": method, "jitter": starts is None, "nuts_kwargs": nuts_kwargs,
          **engine_kwargs}
    with warnings.catch_warnings():
        # PyMC donates the raw draws to its post-processing; XLA may decline, harmlessly
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable",
                                category=UserWarning)
        # what pm.sample(nuts_sampler="numpyro") runs, minus its step-method assignment
        # (a symbolic gradient of the whole graph that numpyro never uses: 6 s here)
        idata = sample_jax_nuts(
            draws, tune=tune, chains=chains, model=model, nuts_sampler="numpyro",
            target_accept=target_accept, random_seed=seed, initvals=starts,
            var_names=NAMES, progressbar=progressbar, compute_convergence_checks=False,
            idata_kwargs={"log_likelihood": False}, **kw,
        )
    sampling = float(idata.posterior.attrs.get("sampling_time", np.nan))
    return idata, time.perf_counter() - t0 - sampling, sampling


def _nutpie(model: Any, starts: list | None, seed: int, *, draws: int, tune: int,
            chains: int, target_accept: float, progressbar: bool, dense_mass: bool,
            engine_kwargs: dict, time_warning: float | None) -> tuple[Any, float, float]:
    import nutpie

    t0 = time.perf_counter()
    compiled = _nutpie_compiled(model, starts)
    if time_warning is not None:
        _warn_if_slow(_nutpie_gradient(compiled), draws=draws, tune=tune, chains=chains,
                      parallel=os.cpu_count() or 1, limit=time_warning)
    t1 = time.perf_counter()
    kw = {"low_rank_modified_mass_matrix": dense_mass, "save_warmup": False, **engine_kwargs}
    idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed,
                          target_accept=target_accept, progress_bar=progressbar, **kw)
    return idata, t1 - t0, time.perf_counter() - t1


def _pymc(model: Any, starts: list | None, seed: int, *, draws: int, tune: int, chains: int,
          target_accept: float, progressbar: bool, dense_mass: bool,
          engine_kwargs: dict, time_warning: float | None) -> tuple[Any, float, float]:
    pm = import_pymc()
    t0 = time.perf_counter()
    if time_warning is not None:  # timed in JAX: a guide to PyTensor's speed, not a measure
        _warn_if_slow(_jax_gradient(model), draws=draws, tune=tune, chains=chains,
                      parallel=os.cpu_count() or 1, limit=time_warning)
    # engine_kwargs={"compile_kwargs": {"mode": ...}} overrides NUMBA (the tests compile
    # the smallest model in FAST_COMPILE mode: seconds, where NUMBA takes minutes)
    compile_kwargs = engine_kwargs.pop("compile_kwargs", {"mode": "NUMBA"})
    with bayes.quiet_pymc_log():
        idata = pm.sample(
            draws, tune=tune, chains=chains, model=model, target_accept=target_accept,
            random_seed=seed, initvals=starts, var_names=NAMES, progressbar=progressbar,
            compute_convergence_checks=False, compile_kwargs=compile_kwargs,
            **({"init": "adapt_diag"} if starts else {}), **engine_kwargs,
        )
    sampling = float(idata.posterior.attrs.get("sampling_time", np.nan))
    return idata, time.perf_counter() - t0 - sampling, sampling


#: engine name -> (what runs it, the function)
ENGINES = {
    "nutpie": ("PyMC graph compiled to JAX, nutpie NUTS", _nutpie),
    "numpyro": ("PyMC graph compiled to JAX, numpyro NUTS", _numpyro),
    "pymc": ("PyMC NUTS, PyTensor NUMBA mode", _pymc),
}


def _stats(idata: Any, engine: str) -> Any:
    """(chain, draw) sample stats under ArviZ's names."""
    import xarray as xr

    ss = idata.sample_stats
    keep = {n: v for n, v in ss.data_vars.items() if set(v.dims) <= {"chain", "draw"}}
    stats = xr.Dataset(keep).reset_coords(drop=True)
    stats = stats.rename({k: v for k, v in STAT_NAMES[engine].items()
                          if k in stats and v not in stats})
    stats = stats.assign_coords(chain=np.arange(stats.sizes["chain"]),
                                draw=np.arange(stats.sizes["draw"]))
    for name in list(stats.data_vars):
        if stats[name].dtype == bool:
            stats[name] = stats[name].astype(np.int8)
    if "reached_max_treedepth" not in stats and "tree_depth" in stats:
        stats["reached_max_treedepth"] = (stats["tree_depth"] >= MAX_TREEDEPTH).astype(np.int8)
    return stats


def _time_gradient(evaluate: Any, n_evals: int = 5) -> float:
    """Seconds per call of ``evaluate`` (a log density and gradient), after one warm-up
    call that compiles it."""
    evaluate()
    t0 = time.perf_counter()
    for _ in range(n_evals):
        evaluate()
    return (time.perf_counter() - t0) / n_evals


def _jax_gradient(model: Any) -> Any:
    """A call of the model's log density and gradient compiled to JAX, at its start."""
    import jax
    from pymc.sampling.jax import get_jaxified_logp

    point = model.initial_point()
    x = [np.asarray(point[v.name]) for v in model.value_vars]
    grad = jax.jit(jax.value_and_grad(get_jaxified_logp(model)))
    return lambda: jax.block_until_ready(grad(x))


def _nutpie_gradient(compiled: Any) -> Any:
    """A call of nutpie's own compiled log density and gradient (the function its sampler
    runs, so timing it compiles nothing extra), or None where nutpie's model does not expose
    it (its ``_make_logp_func`` and ``_shared_data`` fields are undocumented)."""
    make, shared = (getattr(compiled, n, None) for n in ("_make_logp_func", "_shared_data"))
    if make is None or shared is None:
        return None
    logp = make()
    x = np.zeros(int(compiled.n_dim))
    return lambda: logp(x, **shared)


def estimate_runtime(seconds_per_gradient: float, *, draws: int, tune: int, chains: int,
                     parallel: int) -> float:
    r"""Rough sampling time of a NUTS run from the time of one gradient.

    .. math:: T \approx t_{grad} \cdot S \cdot (draws + tune) \cdot chains / P

    with :math:`t_{grad}` the time of one log density and gradient, :math:`S` =
    :data:`STEPS_PER_DRAW` leapfrog steps per iteration and :math:`P` the chains run at once
    (nutpie and PyMC: one per CPU core; numpyro: one per JAX device). A guide to within a
    factor of a few: the tree depth varies with the problem.
    """
    return (seconds_per_gradient * STEPS_PER_DRAW * (draws + tune) * chains
            / max(min(parallel, chains), 1))


def _warn_if_slow(evaluate: Any, *, draws: int, tune: int, chains: int, parallel: int,
                  limit: float | None) -> None:
    """Time ``evaluate`` and warn, with what to do, when the run should exceed ``limit``."""
    if limit is None or evaluate is None:
        return
    per = _time_gradient(evaluate)
    seconds = estimate_runtime(per, draws=draws, tune=tune, chains=chains, parallel=parallel)
    if seconds <= limit:
        return
    warn_user(
        f"NUTS is expected to take about {seconds / 60:.1f} minutes here ({per * 1e3:.2g} ms "
        f"per gradient, about {STEPS_PER_DRAW} per iteration, {draws + tune} iterations x "
        f"{chains} chains). For a faster answer: backend='advi' (seconds to minutes; "
        "batch_size= for many rows), NUTS on a subsample of the rows, fewer draws, or a GPU "
        "(the JAX engines run on one where JAX sees one). time_warning=None skips this "
        "estimate.",
        UserWarning,
    )


def _engine(engine: str, options: dict[str, Any], model: Any, values: list | None,
            seed: int) -> bayes.EngineResult:
    """Run one engine and return its draws and statistics."""
    run = ENGINES[engine][1]
    try:
        idata, t_compile, t_sample = run(model, values, seed, **options)
    except (TypeError, AttributeError) as err:
        if not options["engine_kwargs"]:
            raise
        raise SpecError(
            f"engine_kwargs {sorted(options['engine_kwargs'])} were not accepted by the "
            f"{engine} engine ({err}); see its sampling function's keywords"
        ) from None
    stats = _stats(idata, engine)
    lp = np.asarray(stats["lp"].values, dtype=float) if "lp" in stats else None
    return bayes.EngineResult(
        Draws.from_dataset(idata.posterior), stats, lp,
        attrs={"compile_time": float(t_compile), "sampling_time": float(t_sample)},
    )


def diagnose(raw: Draws, aligned: Draws, *, n_div: int, n_hits: int) -> dict[str, Any]:
    """Convergence diagnostics of NUTS draws, raised as warnings that say what to do.

    Checks divergences, tree-depth saturation, chains in different modes
    (:func:`ppgmm.numerics.diagnostics.modes_differ`), max R-hat > 1.01 after alignment and
    bulk ESS < 100 per chain. Returns the attrs (``divergences``, ``treedepth_hits``,
    ``rhat_max_raw``, ``rhat_max``, ``ess_bulk_min``, ``modes_differ``), the
    :class:`~ppgmm.backends.bayes.Messages` under ``"messages"`` and ``"converged"``.
    """
    chains, draws = raw.shape
    rhat_raw, rhat = diagnostics.rhat_max(raw), diagnostics.rhat_max(aligned)
    ess = diagnostics.ess_min(aligned)
    split = diagnostics.modes_differ(aligned) if chains > 1 else []
    msgs = bayes.Messages()
    total = chains * draws
    if n_div:
        msgs.warn(f"{n_div} of {total} draws diverged after tuning; the posterior may be "
                  "biased there. Raise target_accept (e.g. 0.95) and check the data scale.")
    if n_hits:
        msgs.warn(f"{n_hits} of {total} draws hit the maximum tree depth ({MAX_TREEDEPTH}); "
                  "sampling is inefficient. Rescale the data or use fewer components.")
    if split:
        pairs = ", ".join(f"{a} and {b}" for a, b in split)
        msgs.warn(f"chains {pairs} settled in different modes (not just different labels); "
                  "the posterior is multimodal or some chains are stuck. Compare per-chain "
                  "results; run longer, try another seed, or engine='numpyro' (a dense mass "
                  "matrix: it mixed where nutpie's chains stuck), or use fewer components.")
    bad_rhat = bool(np.isfinite(rhat) and rhat > 1.01)
    if bad_rhat:
        msgs.warn(f"max R-hat is {rhat:.3f} > 1.01 after label alignment (before: "
                  f"{rhat_raw:.3f}); chains have not mixed. Run more tune and draws, try "
                  "another seed or engine='numpyro'.")
    low_ess = bool(np.isfinite(ess) and ess < 100 * chains)
    if low_ess:
        msgs.warn(f"the smallest bulk ESS is {ess:.0f} < {100 * chains} (100 per chain); "
                  "Monte Carlo error is large. Run more draws.")
    return {
        "divergences": int(n_div),
        "treedepth_hits": int(n_hits),
        "rhat_max_raw": float(rhat_raw),
        "rhat_max": float(rhat),
        "ess_bulk_min": float(ess),
        "modes_differ": int(bool(split)),
        "messages": msgs,
        "converged": not (n_div or split or bad_rhat or low_ess),
    }


def _check(raw: Draws, aligned: Draws, result: bayes.EngineResult
           ) -> tuple[dict, bayes.Messages, bool]:
    stats = result.stats
    count = {n: int(np.asarray(stats[n].values).sum()) if n in stats else 0
             for n in ("diverging", "reached_max_treedepth")}
    diag = diagnose(raw, aligned, n_div=count["diverging"],
                    n_hits=count["reached_max_treedepth"])
    msgs, converged = diag.pop("messages"), diag.pop("converged")
    return diag, msgs, converged


def nuts_backend(
    spec: GMM,
    md: MissingData,
    *,
    seed: int | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    target_accept: float = 0.8,
    engine: str = "nutpie",
    dense_mass: bool = True,
    init: Any = "em",
    jitter: float = 1.0,
    reference: Any = None,
    missing: str = "marginal",
    progressbar: bool | None = None,
    engine_kwargs: dict | None = None,
    standardise: bool = True,
    time_warning: float | None = 300.0,
) -> Fit:
    """Sample the posterior by NUTS and package it in the Fit schema.

    Parameters
    ----------
    spec : GMM
        The model; ``prior=None`` uses the default prior (noted in the attrs).
    md : MissingData
    seed : int, optional
        Seeds the EM start, the jitter, the sampler and the predictive draws.
    draws, tune : int, default 1000
        Kept draws and tuning iterations per chain.
    chains : int, default 2
    target_accept : float, default 0.8
        Target acceptance of the step-size adaptation; raise it (0.9, 0.95) when draws
        diverge.
    engine : {"nutpie", "numpyro", "pymc"}, default "nutpie"
        See the module docstring.
    dense_mass : bool, default True
        Adapt more than a diagonal mass matrix: nutpie's low-rank modified mass matrix, or
        numpyro's dense one (PyMC's NUTS adapts a diagonal one). The posterior couples
        means, covariances and weights; on the reference problem this doubled nutpie's
        ESS per second.
    init : "em", "prior", parameters or a list of them, default "em"
        "em" starts every chain near the EM fit; "prior" uses PyMC's default jittered start
        (chains may then settle in different labellings, which alignment undoes); explicit
        parameters (e.g. another fit's ``point()``) start there, jittered; a list gives
        each chain its own start, unjittered (the first one is the default reference;
        with nutpie, whose chains run in threads, the chain numbers may not follow the
        list's order).
    jitter : float, default 1.0
        Spread of the chain starts around ``init``, in posterior standard deviations.
    reference : ppgmm.Fit or Params, optional
        Labelling to align draws to; default the EM start, else the draw of highest
        log density (a pivot). A single start is first relabelled to the reference, so
        ``attrs["relabelled_draws"]`` counts real label switches.
    missing : {"marginal", "latent"}, default "marginal"
        Marginalise missing entries exactly, or sample them as latent variables.
    progressbar : bool, optional
        Default: shown when stderr is a terminal.
    engine_kwargs : dict, optional
        Passed to the engine: ``nutpie.sample``, ``pymc.sampling.jax.sample_jax_nuts``
        (numpyro) or ``pm.sample`` keywords.

    standardise : bool, default True
        Sample on the standardised scale (each column centred and scaled by its observed
        mean and standard deviation, the prior transformed with it) and map the draws back
        exactly: the results do not depend on the units of the data, and the sampler sees
        a posterior of unit scale whatever they are. False runs on the data as given.
    time_warning : float or None, default 300
        Before sampling, estimate the sampling time from a few timed gradient evaluations
        (:func:`estimate_runtime`) and warn, with the estimate and faster alternatives,
        when it exceeds this many seconds. With nutpie this times the sampler's own
        compiled gradient (nothing extra to compile); numpyro and PyMC compile one more
        JAX function for it (seconds). None skips the estimate.

    Returns
    -------
    ppgmm.Fit
    """
    draws = check_int("draws", draws, 4)
    tune = check_int("tune", tune, 1)  # nutpie needs at least one tuning step
    chains = check_int("chains", chains, 1)
    if not (isinstance(target_accept, float | int) and 0 < target_accept < 1):
        raise SpecError(f"target_accept should be a number in (0, 1), but got {target_accept!r}")
    if engine not in ENGINES:
        raise SpecError(f"engine should be one of {sorted(ENGINES)}, but got {engine!r}")
    if missing not in MISSING:
        raise SpecError(f"missing should be one of {list(MISSING)}, but got {missing!r}")
    jitter = check_number("jitter", jitter)
    dense_mass = check_bool("dense_mass", dense_mass)
    if time_warning is not None:
        time_warning = check_number("time_warning", time_warning)
    if missing == "latent" and md.observed.all():
        missing = "marginal"
    options = {
        "draws": draws, "tune": tune, "chains": chains, "target_accept": float(target_accept),
        "progressbar": sys.stderr.isatty() if progressbar is None else bool(progressbar),
        "dense_mass": dense_mass, "engine_kwargs": dict(engine_kwargs or {}),
        "time_warning": time_warning,
    }
    attrs = {"engine": engine, "engine_detail": ENGINES[engine][0], "draws": draws,
             "tune": tune, "chains": chains, "target_accept": float(target_accept)}
    return bayes.run(
        spec, md, backend="nuts", seed=seed, init=init, reference=reference,
        engine=functools.partial(_engine, engine, options), chains=chains, jitter=jitter,
        missing=missing, check=_check, attrs=attrs,
        standardise=check_bool("standardise", standardise),
    )
