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
  (``pymc.sampling.jax.get_jaxified_logp``); the optimisation loop is a compiled
  ``lax.scan`` of a pure step ``step(key, state) -> (state, info)`` (the shape of BlackJAX's
  VI kernels) with optax's Adam. pip installs of PyTensor find no BLAS, so ``pm.fit``'s step
  function is slow in PyTensor's C mode, takes over a minute to compile in NUMBA mode, and does not
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

import functools
import sys
import time
from typing import Any, NamedTuple

import numpy as np

from ..checks import check_bool, check_int, check_number
from ..data import MissingData
from ..exceptions import SpecError
from ..fit import Fit
from ..spec import GMM, PARAM_NAMES, Draws
from . import bayes
from .pymc_model import import_pymc

__all__ = ["advi_backend", "METHODS", "ENGINES"]

METHODS = ("advi", "fullrank_advi")


# --------------------------------------------------------------------------- the JAX engine


class ADVIState(NamedTuple):
    """What carries between iterations: the variational parameters and Adam's state."""

    params: tuple  # (m, rho, off): mean, log-scale diagonal, strict lower triangle
    opt_state: Any


class ADVIInfo(NamedTuple):
    """Diagnostics of one iteration."""

    elbo: Any  # the one-sample (or obj_n_mc-sample) ELBO estimate at the iterate


class Gaussian(NamedTuple):
    r"""The Gaussian family on the unconstrained space: :math:`\theta = m + L\epsilon`."""

    dim: int
    full: bool

    def scale(self, rho: Any, off: Any) -> Any:
        """:math:`L`: ``diag(exp(rho))``, with ``off`` below the diagonal when full-rank."""
        import jax.numpy as jnp

        lmat = jnp.diag(jnp.exp(rho))
        return lmat.at[np.tril_indices(self.dim, -1)].set(off) if self.full else lmat

    def entropy(self, rho: Any) -> Any:
        r""":math:`H[q] = \sum \rho + \tfrac{d}{2}(1 + \log 2\pi)`."""
        return rho.sum() + 0.5 * self.dim * (1.0 + np.log(2 * np.pi))

    def init(self, m0: np.ndarray) -> tuple:
        """Start at ``m0`` with standard deviations 0.1 and no correlation."""
        import jax.numpy as jnp

        n_off = self.dim * (self.dim - 1) // 2 if self.full else 0
        return (jnp.asarray(m0), jnp.full(self.dim, np.log(0.1)), jnp.zeros(n_off))


def advi_kernel(logp: Any, family: Gaussian, optimizer: Any, n_mc: int):
    """``step(key, state) -> (state, info)``: one reparameterised-gradient ascent step."""
    import jax
    import optax

    def negative_elbo(params, key):
        m, rho, off = params
        eps = jax.random.normal(key, (n_mc, family.dim))
        theta = m + eps @ family.scale(rho, off).T
        return -(jax.numpy.mean(jax.vmap(logp)(theta)) + family.entropy(rho))

    grad_fn = jax.value_and_grad(negative_elbo)

    def step(key, state: ADVIState) -> tuple[ADVIState, ADVIInfo]:
        value, grads = grad_fn(state.params, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return ADVIState(optax.apply_updates(state.params, updates), opt_state), ADVIInfo(-value)

    return step


def _flat_logp(model: Any, start: dict[str, np.ndarray]):
    """PyMC's log density as a function of one flat unconstrained vector, and its unravel."""
    from pymc.sampling.jax import get_jaxified_logp

    values = model.value_vars
    shapes = [tuple(np.shape(start[v.name])) for v in values]
    cuts = np.cumsum([0, *[int(np.prod(sh)) for sh in shapes]])
    m0 = np.concatenate([np.ravel(start[v.name]) for v in values]).astype(float)
    logp_list = get_jaxified_logp(model)  # the log density (PyMC negates it for numpyro)

    def unravel(theta):
        return [theta[a:b].reshape(sh) for a, b, sh in zip(cuts[:-1], cuts[1:], shapes,
                                                            strict=True)]

    return (lambda theta: logp_list(unravel(theta))), unravel, m0


def _windows(run_window: Any, state: ADVIState, key: Any, *, n_windows: int, tol: float,
             progressbar: bool) -> tuple[Any, list[np.ndarray], bool, float]:
    """Run windows until two successive window-mean ELBOs agree (see the module docstring).

    Returns the last window's averaged parameters, the ELBO trace per window, whether it
    converged, and the seconds the first window took (it compiles the loop).
    """
    import jax

    trace, avg, converged, first = [], None, False, 0.0
    for w in range(n_windows):
        key, sub = jax.random.split(key)
        t0 = time.perf_counter()
        state, vals, avg = run_window(state, sub)
        trace.append(np.asarray(vals))
        if w == 0:
            first = time.perf_counter() - t0
            continue
        a, b = trace[-2], trace[-1]
        diff = abs(b.mean() - a.mean())
        se = np.sqrt(a.var() / len(a) + b.var() / len(b))
        if progressbar:
            print(f"\rADVI {(w + 1) * len(b)}/{n_windows * len(b)} ELBO {b.mean():.4g}",
                  end="", file=sys.stderr)
        if w >= 2 and diff < max(tol * abs(b.mean()), 2.0 * se):
            converged = True
            break
    if progressbar:
        print(file=sys.stderr)
    return avg, trace, converged, first


def _jax_advi(model: Any, start: dict[str, np.ndarray], *, method: str, n_iter: int,
              tol: float, window: int, learning_rate: float, n_mc: int, draws: int,
              seed: int, progressbar: bool) -> bayes.EngineResult:
    """Run ADVI with a compiled JAX loop."""
    import jax
    import jax.numpy as jnp
    import optax
    from pymc.sampling.jax import get_jaxified_graph

    t0 = time.perf_counter()
    logp, unravel, m0 = _flat_logp(model, start)
    family = Gaussian(len(m0), method == "fullrank_advi")
    optimizer = optax.adam(learning_rate)
    step = advi_kernel(logp, family, optimizer, n_mc)

    def body(state, key):
        state, info = step(key, state)
        return state, (info.elbo, state.params)

    @jax.jit
    def run_window(state, key):
        state, (elbo, params) = jax.lax.scan(body, state, jax.random.split(key, window))
        # Polyak-Ruppert averaging of the variational parameters over the window
        return state, elbo, jax.tree.map(lambda a: a.mean(axis=0), params)

    params = family.init(m0)
    avg, trace, converged, t_compile = _windows(
        run_window, ADVIState(params, optimizer.init(params)), jax.random.PRNGKey(seed),
        n_windows=max(1, n_iter // window), tol=tol, progressbar=progressbar)
    t_fit = time.perf_counter() - t0 - t_compile

    m, rho, off = (np.asarray(a) for a in avg)
    lmat = np.asarray(family.scale(jnp.asarray(rho), jnp.asarray(off)))
    theta = m + np.random.default_rng(seed).standard_normal((draws, family.dim)) @ lmat.T
    # ELBO of the returned (averaged) approximation; the trace is taken at the optimiser's
    # iterates, which jitter around it and score lower
    lp_draws = np.asarray(jax.jit(jax.vmap(logp))(jnp.asarray(theta)))
    outs = model.replace_rvs_by_values([model[n] for n in PARAM_NAMES])
    graph = get_jaxified_graph(inputs=model.value_vars, outputs=outs)
    drawn = jax.jit(jax.vmap(lambda th: graph(*unravel(th))))(jnp.asarray(theta))
    return _result(np.concatenate(trace), Draws(*(np.asarray(a, float)[None] for a in drawn)),
                   converged, float(lp_draws.mean() + family.entropy(rho)),
                   compile_time=t_compile, fit_time=t_fit)


# --------------------------------------------------------------------------- PyMC's own


def _pymc_advi(model: Any, start: dict[str, np.ndarray] | None, *, method: str, n_iter: int,
               tol: float, learning_rate: float, n_mc: int, draws: int, seed: int,
               progressbar: bool, compile_mode: str, window: int) -> bayes.EngineResult:
    """``pm.fit`` with a parameter-change convergence check (``window`` is not used)."""
    pm = import_pymc()
    from pymc.variational.callbacks import CheckParametersConvergence

    t0 = time.perf_counter()
    check = CheckParametersConvergence(every=100, tolerance=tol, diff="absolute")
    with model:
        approx = pm.fit(
            n=n_iter, method=method, start=start, random_seed=seed, progressbar=progressbar,
            callbacks=[check], obj_optimizer=pm.adam(learning_rate=learning_rate),
            obj_n_mc=n_mc, fn_kwargs={"mode": compile_mode},
        )
    t_fit = time.perf_counter() - t0
    elbo = -np.asarray(approx.hist, dtype=float)
    drawn = Draws.from_dataset(approx.sample(draws, random_seed=seed).posterior)
    return _result(elbo, drawn, len(elbo) < n_iter, float(elbo[-100:].mean()),
                   compile_time=float("nan"), fit_time=t_fit)


def _result(elbo: np.ndarray, drawn: Draws, converged: bool, elbo_final: float, *,
            compile_time: float, fit_time: float) -> bayes.EngineResult:
    """The one result type, with the ELBO trace as a statistic over ``iteration``."""
    import xarray as xr

    stats = xr.Dataset({"elbo": ("iteration", elbo)},
                       coords={"iteration": np.arange(len(elbo)), "chain": [0],
                               "draw": np.arange(drawn.shape[1])})
    return bayes.EngineResult(drawn, stats, None, converged, {
        "n_iter": int(len(elbo)), "elbo_final": float(elbo_final),
        "compile_time": float(compile_time), "fit_time": float(fit_time)})


#: engine name -> function ``engine(model, start, **options) -> EngineResult``
ENGINES = {"jax": _jax_advi, "pymc": _pymc_advi}


def _engine(engine: str, options: dict[str, Any], model: Any, values: list | None,
            seed: int) -> bayes.EngineResult:
    """Run one engine from the single start (the mean of the approximation)."""
    start = values[0] if values else None
    options = dict(options)
    if engine == "jax":
        from pymc.initial_point import make_initial_point_fn

        start = make_initial_point_fn(model=model, overrides=start, jitter_rvs=set(),
                                      return_transformed=True)(seed)
        del options["compile_mode"]
    return ENGINES[engine](model, start, seed=seed, **options)


def _check(max_iter: int, raw: Draws, aligned: Draws, result: bayes.EngineResult
           ) -> tuple[dict, bayes.Messages, bool]:
    msgs = bayes.Messages()
    if not result.converged:
        msgs.warn(f"ADVI did not converge in n_iter={max_iter} iterations (the windowed ELBO "
                  "still changed more than tol); raise n_iter, or lower learning_rate.",
                  stacklevel=6)
    return {}, msgs, result.converged


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
    standardise: bool = True,
) -> Fit:
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

    standardise : bool, default True
        Sample on the standardised scale (each column centred and scaled by its observed
        mean and standard deviation, the prior transformed with it) and map the draws back
        exactly: the results do not depend on the units of the data, and the sampler sees
        a posterior of unit scale whatever they are. False runs on the data as given.

    Returns
    -------
    ppgmm.Fit
    """
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
    options = {
        "method": method, "n_iter": n_iter, "tol": tol, "window": window,
        "learning_rate": learning_rate, "n_mc": obj_n_mc, "draws": draws,
        "progressbar": sys.stderr.isatty() if progressbar is None else bool(progressbar),
        "compile_mode": str(compile_mode),
    }
    attrs = {"method": method, "engine": engine,
             "compile_mode": "JAX" if engine == "jax" else str(compile_mode),
             "max_iter": int(n_iter), "tol": float(tol),
             "learning_rate": float(learning_rate), "draws": int(draws)}
    return bayes.run(
        spec, md, backend="advi", seed=seed, init=init, reference=reference,
        engine=functools.partial(_engine, engine, options),
        check=functools.partial(_check, n_iter), attrs=attrs,
        standardise=check_bool("standardise", standardise),
    )
