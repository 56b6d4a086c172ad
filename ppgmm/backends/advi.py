r"""The ADVI backend: a Gaussian approximation to the posterior of the shared PyMC model.

ADVI (Kucukelbir et al. 2017) fits :math:`q(\theta)` on the unconstrained space of the
model of :mod:`ppgmm.backends.pymc_model` by maximising

.. math:: \mathrm{ELBO}(q) = E_q[\log p(x, \theta)] + H[q],

where :math:`\log p` includes the log-Jacobians of the transforms to the unconstrained space,
with reparameterised Monte Carlo gradients (:math:`\theta = m + L\epsilon`,
:math:`\epsilon \sim N(0, I)`):

- ``method="advi"`` (mean-field): :math:`L = \mathrm{diag}(e^{\rho})`, :math:`H = \sum\rho + c`;
- ``method="fullrank_advi"``: :math:`L` lower triangular with diagonal :math:`e^{\rho}`,
  :math:`H = \sum \rho + c`.

Engines:

- ``"jax"`` (default): PyMC's log density of the model compiled to JAX
  (``pymc.sampling.jax.get_jaxified_logp``); the optimisation loop (Adam) is a compiled
  ``lax.scan``. pip installs of PyTensor find no BLAS, so ``pm.fit``'s step function is
  slow in PyTensor's C mode, takes over a minute to compile in NUMBA mode, and does not
  compile in JAX mode (its random state); see ``docs/bayesian.md``.
- ``"pymc"``: ``pm.fit(method=...)`` itself, compiled in ``compile_mode`` ("NUMBA" or
  "FAST_RUN"), for comparison.

Convergence: the ELBO is averaged over windows of ``window`` iterations; the fit has
converged when two successive window means differ by less than
:math:`\max(\mathrm{tol}\,|\overline{\mathrm{ELBO}}|,\ 2\,\mathrm{se})`, se the standard error of
the difference (the change is then below the Monte Carlo noise of the estimate). The
returned approximation averages the variational parameters over the last window
(Polyak-Ruppert averaging), which removes most of the optimiser's jitter.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from ..align import align_to
from ..checks import check_int, check_number
from ..data import MissingData
from ..exceptions import SpecError
from ..spec import GMM
from . import posterior as post
from .nuts import em_start
from .pymc_model import build_model, import_pymc, initial_values, resolve_bayes_prior

__all__ = ["advi_backend", "METHODS", "ENGINES"]

METHODS = ("advi", "fullrank_advi")
ENGINES = ("jax", "pymc")


# --------------------------------------------------------------------------- the JAX engine


def _unconstrained_start(model: Any, start: dict[str, np.ndarray] | None, seed: int
                         ) -> dict[str, np.ndarray]:
    from pymc.initial_point import make_initial_point_fn

    fn = make_initial_point_fn(model=model, overrides=start, jitter_rvs=set(),
                               return_transformed=True)
    return fn(seed)


def _jax_advi(model: Any, start: dict[str, np.ndarray], *, method: str, n_iter: int,
              tol: float, window: int, learning_rate: float, n_mc: int, draws: int,
              seed: int, progressbar: bool) -> dict[str, Any]:
    """Run ADVI with a compiled JAX loop; returns ELBO trace, draws and timings."""
    import jax
    import jax.numpy as jnp
    from pymc.sampling.jax import get_jaxified_graph, get_jaxified_logp

    t0 = time.perf_counter()
    values = model.value_vars
    shapes = [tuple(np.shape(start[v.name])) for v in values]
    sizes = [int(np.prod(s)) for s in shapes]
    cuts = np.cumsum([0, *sizes])
    m0 = np.concatenate([np.ravel(start[v.name]) for v in values]).astype(float)
    dim = len(m0)
    logp_list = get_jaxified_logp(model)  # the log density (PyMC negates it for numpyro)

    def unravel(theta):
        return [theta[a:b].reshape(s) for a, b, s in zip(cuts[:-1], cuts[1:], shapes,
                                                          strict=True)]

    def logp(theta):
        return logp_list(unravel(theta))

    full = method == "fullrank_advi"
    entropy_const = 0.5 * dim * (1.0 + np.log(2 * np.pi))
    tril = np.tril_indices(dim, -1)

    def scale_matrix(rho, off):
        lmat = jnp.diag(jnp.exp(rho))
        return lmat.at[tril].set(off) if full else lmat

    def elbo(params, key):
        m, rho, off = params
        eps = jax.random.normal(key, (n_mc, dim))
        theta = m + eps @ scale_matrix(rho, off).T
        return jnp.mean(jax.vmap(logp)(theta)) + jnp.sum(rho) + entropy_const

    b1, b2, adam_eps = 0.9, 0.999, 1e-8
    grad_fn = jax.value_and_grad(elbo)

    def step(carry, key):
        params, mom, vel, t = carry
        val, g = grad_fn(params, key)
        t = t + 1
        mom = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, mom, g)
        vel = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, vel, g)
        upd = jax.tree.map(
            lambda a, b: learning_rate * (a / (1 - b1**t)) / (jnp.sqrt(b / (1 - b2**t)) + adam_eps),
            mom, vel)
        params = jax.tree.map(lambda p, u: p + u, params, upd)  # ascent
        return (params, mom, vel, t), (val, params)

    @jax.jit
    def run_window(carry, key):
        keys = jax.random.split(key, window)
        carry, (vals, trace) = jax.lax.scan(step, carry, keys)
        avg = jax.tree.map(lambda a: a.mean(axis=0), trace)
        return carry, vals, avg

    n_off = len(tril[0]) if full else 0
    params = (jnp.asarray(m0), jnp.full(dim, np.log(0.1)), jnp.zeros(n_off))
    zeros = jax.tree.map(jnp.zeros_like, params)
    carry = (params, zeros, zeros, jnp.asarray(0.0))
    key = jax.random.PRNGKey(seed)
    key, sub = jax.random.split(key)
    carry, vals, avg = run_window(carry, sub)  # compiles
    jax.block_until_ready(vals)
    t_compile = time.perf_counter() - t0
    trace = [np.asarray(vals)]
    converged = False
    windows = max(1, n_iter // window)
    for w in range(1, windows):
        key, sub = jax.random.split(key)
        carry, vals, avg = run_window(carry, sub)
        trace.append(np.asarray(vals))
        a, b = trace[-2], trace[-1]
        diff = abs(b.mean() - a.mean())
        se = np.sqrt(a.var() / len(a) + b.var() / len(b))
        if progressbar:
            print(f"\rADVI {(w + 1) * window}/{windows * window} ELBO {b.mean():.4g}",
                  end="", file=sys.stderr)
        if w >= 2 and diff < max(tol * abs(b.mean()), 2.0 * se):
            converged = True
            break
    if progressbar:
        print(file=sys.stderr)
    t_fit = time.perf_counter() - t0 - t_compile

    m, rho, off = (np.asarray(a) for a in avg)
    lmat = np.diag(np.exp(rho))
    if full:
        lmat[tril] = off
    rng = np.random.default_rng(seed)
    theta = m + rng.standard_normal((draws, dim)) @ lmat.T
    # ELBO of the returned (averaged) approximation; the trace is taken at the optimiser's
    # iterates, which jitter around it and score lower
    lp_draws = np.asarray(jax.jit(jax.vmap(logp))(jnp.asarray(theta)))
    elbo_final = float(lp_draws.mean() + rho.sum() + entropy_const)
    names = list(post.PARAMS)
    outs = model.replace_rvs_by_values([model[n] for n in names])
    fn = jax.jit(jax.vmap(lambda th: get_jaxified_graph(inputs=values, outputs=outs)(
        *unravel(th))))
    drawn = [np.asarray(a, dtype=float)[None] for a in fn(jnp.asarray(theta))]
    return {
        "elbo": np.concatenate(trace), "draws": post.Draws(*drawn), "converged": converged,
        "compile_time": t_compile, "fit_time": t_fit, "elbo_final": elbo_final,
    }


# --------------------------------------------------------------------------- PyMC's own


def _pymc_advi(model: Any, start: dict[str, np.ndarray] | None, *, method: str, n_iter: int,
               tol: float, learning_rate: float, n_mc: int, draws: int, seed: int,
               progressbar: bool, compile_mode: str) -> dict[str, Any]:
    """``pm.fit`` with a parameter-change convergence check."""
    pm = import_pymc()
    from pymc.variational.callbacks import CheckParametersConvergence

    t0 = time.perf_counter()
    check = CheckParametersConvergence(every=100, tolerance=tol, diff="absolute")
    # PyMC renamed fn_kwargs to compile_kwargs (the old name warns since 5.2x)
    import inspect

    from pymc.variational.opvi import ObjectiveFunction

    step = inspect.signature(ObjectiveFunction.step_function).parameters
    mode_kw = "compile_kwargs" if "compile_kwargs" in step else "fn_kwargs"
    with model:
        approx = pm.fit(
            n=n_iter, method=method, start=start, random_seed=seed, progressbar=progressbar,
            callbacks=[check], obj_optimizer=pm.adam(learning_rate=learning_rate),
            obj_n_mc=n_mc, **{mode_kw: {"mode": compile_mode}},
        )
    t_fit = time.perf_counter() - t0
    elbo = -np.asarray(approx.hist, dtype=float)
    idata = approx.sample(draws, random_seed=seed)
    drawn = post.Draws.from_dataset(idata.posterior)
    return {"elbo": elbo, "draws": drawn, "converged": len(elbo) < n_iter,
            "compile_time": float("nan"), "fit_time": t_fit,
            "elbo_final": float(elbo[-100:].mean())}


# --------------------------------------------------------------------------- the backend


def advi_backend(
    spec: GMM,
    md: MissingData,
    *,
    seed: int | None = None,
    method: str = "advi",
    n_iter: int = 20_000,
    tol: float = 1e-5,
    window: int = 1000,
    learning_rate: float = 0.01,
    obj_n_mc: int = 1,
    draws: int = 1000,
    init: Any = "em",
    reference: Any = None,
    engine: str = "jax",
    compile_mode: str = "NUMBA",
    progressbar: bool | None = None,
):
    """Fit the posterior by ADVI and package draws from the approximation in the Fit schema.

    Parameters
    ----------
    spec : GMM
        The model; ``prior=None`` uses the default prior (noted in the attrs).
    md : MissingData
    seed : int, optional
    method : {"advi", "fullrank_advi"}, default "advi"
        Mean-field or full-rank Gaussian approximation on the unconstrained space.
    n_iter : int, default 20000
        Most optimisation iterations.
    tol : float, default 1e-5
        Relative change of the windowed mean ELBO below which the fit has converged (a
        change within twice its Monte Carlo standard error also counts). For
        ``engine="pymc"``: the absolute change of the variational parameters per 100
        iterations (PyMC's ``CheckParametersConvergence``).
    window : int, default 1000
        Iterations per convergence check (and per averaging window).
    learning_rate : float, default 0.01
        Adam step size.
    obj_n_mc : int, default 1
        Monte Carlo draws per gradient.
    draws : int, default 1000
        Draws from the fitted approximation (stored as one chain).
    init : "em", "prior" or parameters, default "em"
        Start of the approximation's mean. "em" is the EM fit under the same prior: from
        PyMC's symmetric default start, mean-field ADVI on the reference problem collapsed
        every component mean onto one point.
    reference : ppgmm.Fit or Params, optional
        Labelling to align draws to; default the EM start, else the mean of the
        approximation. The start is first relabelled to the reference.
    engine : {"jax", "pymc"}, default "jax"
        See the module docstring.
    compile_mode : str, default "NUMBA"
        PyTensor mode of ``engine="pymc"``.
    progressbar : bool, optional
        Default: shown when stderr is a terminal.

    Returns
    -------
    ppgmm.Fit
    """
    import xarray as xr

    from ..fit import Fit, build_idata

    if method not in METHODS:
        raise SpecError(f"method should be one of {list(METHODS)}, but got {method!r}")
    if engine not in ENGINES:
        raise SpecError(f"engine should be one of {list(ENGINES)}, but got {engine!r}")
    n_iter, window = check_int("n_iter", n_iter, 1), check_int("window", window, 2)
    obj_n_mc, draws = check_int("obj_n_mc", obj_n_mc, 1), check_int("draws", draws, 1)
    tol = check_number("tol", tol)
    learning_rate = check_number("learning_rate", learning_rate, positive=True)
    if n_iter < 3 * window and engine == "jax":
        raise SpecError(
            f"n_iter should be at least 3 windows ({3 * window}) to judge convergence, but got "
            f"{n_iter}; raise n_iter or lower window"
        )
    progressbar = sys.stderr.isatty() if progressbar is None else bool(progressbar)

    spec_fit, rp, prior_note = resolve_bayes_prior(spec, md)
    ref = post.reference_params(reference, spec.n_components, md.d)
    rng = np.random.default_rng(seed)
    start_params, _ = em_start(spec_fit, md, init,
                               None if seed is None else int(rng.integers(2**31)))
    if ref is not None and start_params is not None:
        start_params = align_to(start_params, ref)[0]  # start in the reference's labelling
    model = build_model(spec_fit, md, rp)
    start = (initial_values(start_params, rp, spec_fit.covariance)
             if start_params is not None else None)
    fit_seed = int(rng.integers(2**31))
    if engine == "jax":
        out = _jax_advi(model, _unconstrained_start(model, start, fit_seed), method=method,
                        n_iter=int(n_iter), tol=float(tol), window=int(window),
                        learning_rate=float(learning_rate), n_mc=int(obj_n_mc),
                        draws=int(draws), seed=fit_seed, progressbar=progressbar)
    else:
        out = _pymc_advi(model, start, method=method, n_iter=int(n_iter), tol=float(tol),
                         learning_rate=float(learning_rate), n_mc=int(obj_n_mc),
                         draws=int(draws), seed=fit_seed, progressbar=progressbar,
                         compile_mode=compile_mode)
    raw: post.Draws = out["draws"]
    ref_kind = "given" if ref is not None else "pivot" if start_params is None else (
        "em" if init == "em" else "start")
    if ref is None:
        ref = start_params if start_params is not None else raw.mean_params()
    aligned, perm = post.align(raw, ref)

    msgs = post.Messages()
    if not out["converged"]:
        msgs.warn(f"ADVI did not converge in n_iter={n_iter} iterations (the windowed ELBO "
                  "still changed more than tol); raise n_iter, or lower learning_rate.")
    imputed, predictive, loglik = post.derived_quantities(md, aligned, rng)
    elbo = np.asarray(out["elbo"], dtype=float)
    stats = xr.Dataset(
        {
            "elbo": ("iteration", elbo),
            "permutation": (("chain", "draw", "component"), perm.astype(np.int64)),
        },
        coords={"iteration": np.arange(len(elbo)), "chain": [0], "draw": np.arange(draws)},
    )
    attrs = {
        "seed": -1 if seed is None else int(seed),
        "converged": int(out["converged"]),
        "warnings": msgs.json(),
        "prior_note": prior_note,
        "method": method,
        "engine": engine,
        "compile_mode": "JAX" if engine == "jax" else str(compile_mode),
        "n_iter": int(len(elbo)),
        "max_iter": int(n_iter),
        "tol": float(tol),
        "learning_rate": float(learning_rate),
        "draws": int(draws),
        "init": init if isinstance(init, str) else "parameters",
        "reference": ref_kind,
        "elbo_final": float(out["elbo_final"]),
        "relabelled_draws": int((perm != np.arange(spec.n_components)).any(-1).sum()),
        "compile_time": float(out["compile_time"]),
        "fit_time": float(out["fit_time"]),
    }
    built = build_idata(
        md, spec_fit, backend="advi",
        weights=aligned.weights, means=aligned.means, covariances=aligned.covariances,
        imputed_mean=imputed, x_missing=predictive, loglik=loglik,
        attrs=attrs, sample_stats=stats,
    )
    return Fit(built)
