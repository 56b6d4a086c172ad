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

Convergence is checked every ``window`` iterations on the approximation averaged over
the window (Polyak-Ruppert averaging of the variational parameters, which removes most of
the optimiser's jitter and is what the fit returns): its full-data ELBO is estimated from
32 draws, and the fit has converged when, between two successive windows, (i) the ELBO
changed by less than :math:`\max(\mathrm{tol}\,|\mathrm{ELBO}|,\ 2\,\mathrm{se})` and (ii)
no coordinate of the mean moved by more than ``param_tol`` of its standard deviation and no
log standard deviation by more than ``param_tol`` (the marginal standard deviations of q, the
norms of the rows of :math:`L` for full-rank). The ELBO alone settles within its noise
long before the variances do (it stopped every fit at the first allowed check). When the
ELBO no longer gains but the parameters still move, the step is lowered (the
optimiser's jitter is then what moves them). With minibatches, the checks read a fixed
random subsample of rows, scaled to N (:func:`_check_rows`).

Failures are loud: when the ELBO or the parameters stop being finite, the fit restarts
from its start with a ten times smaller step (twice), then raises an error saying what to
try. ``fullrank_advi`` starts from the converged mean-field fit (its mean and standard
deviations, no correlation). The compiled loop takes the data as arguments and is cached
per model structure, so a second fit of the same shape does not recompile.

Known bias: mean-field ADVI ignores posterior correlations and, minimising KL(q || p),
underestimates posterior variances; full-rank ADVI captures correlations but still tends
to underestimate tails. Use NUTS for calibrated intervals (``docs/bayesian.md``).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, NamedTuple

import numpy as np

from ..checks import check_bool, check_int, check_number
from ..data import MissingData
from ..exceptions import PpgmmError, SpecError
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

    def marginal_sd(self, rho: np.ndarray, off: np.ndarray) -> np.ndarray:
        r"""Standard deviation of each coordinate under q: the norms of the rows of
        :math:`L` (``exp(rho)`` for mean-field; full-rank adds the row's ``off`` entries)."""
        var = np.exp(2.0 * np.asarray(rho, dtype=float))
        if self.full:
            lower = np.zeros((self.dim, self.dim))
            lower[np.tril_indices(self.dim, -1)] = off
            var = var + (lower**2).sum(axis=1)
        return np.sqrt(var)

    def entropy(self, rho: Any) -> Any:
        r""":math:`H[q] = \sum \rho + \tfrac{d}{2}(1 + \log 2\pi)`."""
        return rho.sum() + 0.5 * self.dim * (1.0 + np.log(2 * np.pi))

    def init(self, m0: np.ndarray) -> tuple:
        """Start at ``m0`` with standard deviations 0.1 and no correlation."""
        import jax.numpy as jnp

        n_off = self.dim * (self.dim - 1) // 2 if self.full else 0
        return (jnp.asarray(m0), jnp.full(self.dim, np.log(0.1)), jnp.zeros(n_off))


def advi_kernel(logp: Any, family: Gaussian, optimizer: Any, n_mc: int):
    """``step(key, state, data) -> (state, info)``: one reparameterised-gradient ascent step.

    ``logp(theta, data, key)`` is the (possibly minibatch-scaled) log density.
    """
    import jax
    import optax

    def negative_elbo(params, key, data):
        m, rho, off = params
        k_eps, k_batch = jax.random.split(key)
        eps = jax.random.normal(k_eps, (n_mc, family.dim))
        theta = m + eps @ family.scale(rho, off).T
        lp = jax.vmap(lambda th: logp(th, data, k_batch))(theta)
        return -(jax.numpy.mean(lp) + family.entropy(rho))

    grad_fn = jax.value_and_grad(negative_elbo)

    def step(key, state: ADVIState, data: Any) -> tuple[ADVIState, ADVIInfo]:
        value, grads = grad_fn(state.params, key, data)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return ADVIState(optax.apply_updates(state.params, updates), opt_state), ADVIInfo(-value)

    return step


class Compiled(NamedTuple):
    """The jitted functions of one model structure (see :func:`_compiled`)."""

    run_window: Any  # (state, key, data) -> (state, elbo per iteration, averaged params)
    # (params, key, data, n_draws) -> ELBO draws of the approximation, the likelihood of
    # data's rows scaled to n_rows (full data: the ELBO itself)
    elbo: Any
    draw: Any  # (theta (S, dim), data) -> weights, means, covariances
    unravel: Any
    family: Gaussian
    rows: list[int]  # positions of the per-row inputs in data


#: a full-batch ELBO estimate vmaps over draws up to this many likelihood work entries
ELBO_BLOCK_ENTRIES = 2**25

#: compiled functions per model structure: a second fit of the same shape does not recompile
_CACHE: dict[tuple, Compiled] = {}
_CACHE_SIZE = 8


def _jaxify(model: Any, n_rows: int | None):
    """The model's log density, likelihood and parameters as JAX functions of the flat
    values and the model's data (:data:`~ppgmm.backends.pymc_model.DATA_NAMES`), which enter
    as arguments instead of constants. ``n_rows`` sets the row dimension of the row inputs
    (a minibatch's size)."""
    import pytensor
    import pytensor.tensor as pt
    from pymc.sampling.jax import get_jaxified_graph

    from .pymc_model import DATA_NAMES, ROW_NAMES

    shared = [model[n] for n in DATA_NAMES if n in model.named_vars]
    inputs = []
    for v in shared:
        shape = v.type.shape
        if n_rows is not None and v.name in ROW_NAMES:
            shape = (n_rows, *shape[1:])
        inputs.append(pt.tensor(dtype="float64", shape=shape, name=v.name))
    loglik = model.replace_rvs_by_values([model["loglik"]])[0]
    params = model.replace_rvs_by_values([model[n] for n in PARAM_NAMES])
    outs = pytensor.clone_replace([model.logp(), loglik, *params], dict(zip(shared, inputs,
                                                                             strict=True)))
    dens = get_jaxified_graph(inputs=model.value_vars + inputs, outputs=outs[:2])
    draw = get_jaxified_graph(inputs=model.value_vars + inputs, outputs=outs[2:])
    return dens, draw, [v.name for v in shared]


def _structure(model: Any, start: dict, method: str, n_mc: int, window: int,
               batch: int | None) -> tuple:
    """What the compiled functions depend on besides the data's values."""
    shapes = tuple((v.name, tuple(np.shape(start[v.name]))) for v in model.value_vars)
    data = tuple((n, tuple(v.type.shape)) for n, v in model.named_vars.items()
                 if hasattr(v, "get_value"))
    return (getattr(model, "ppgmm_structure", id(model)), shapes, data, method, n_mc,
            window, batch)


def _compiled(model: Any, start: dict, *, method: str, n_mc: int, window: int,
              batch: int | None, n_rows: int) -> Compiled:
    """Jitted ADVI loop, full-data ELBO and parameter draws for this model structure."""
    import jax
    import jax.numpy as jnp
    import optax

    from .pymc_model import ROW_NAMES, padding_row

    # a minibatch density draws from and scales to all n_rows rows, so it is compiled per N;
    # the full-data one reads N from its data's shape
    key = (*_structure(model, start, method, n_mc, window, batch),
           *(() if batch is None else (n_rows,)))
    if key in _CACHE:
        return _CACHE[key]
    if os.environ.get("PPGMM_DEBUG_CACHE"):
        print("ADVI compile cache miss:", key[1:], [k[1:] for k in _CACHE], file=sys.stderr)
    values = model.value_vars
    shapes = [tuple(np.shape(start[v.name])) for v in values]
    cuts = np.cumsum([0, *[int(np.prod(sh)) for sh in shapes]])

    def unravel(theta):
        return [theta[a:b].reshape(sh) for a, b, sh in zip(cuts[:-1], cuts[1:], shapes,
                                                            strict=True)]

    dens_full, draw_fn, names = _jaxify(model, None)
    dens_batch = dens_full if batch is None else _jaxify(model, batch)[0]
    rows = [i for i, n in enumerate(names) if n in ROW_NAMES]
    padding = padding_row(len(model.ppgmm_patterns))

    def logp_full(theta, data, _key):
        return dens_full(*unravel(theta), *data)[0]

    def logp_batch(theta, data, key):
        # rows drawn uniformly with replacement, the likelihood scaled to all n_rows rows:
        # an unbiased estimate of the full-data sum (drawing without replacement permutes
        # all n_rows at every step: at a million rows that sort was most of a step's time)
        idx = jax.random.randint(key, (batch,), 0, n_rows)
        sub = [d[idx] if i in rows else d for i, d in enumerate(data)]
        lp, ll = dens_batch(*unravel(theta), *sub)
        return lp + (n_rows / batch - 1.0) * ll

    def logp_blocked(theta, data, _key):
        # the density with the likelihood of data's m rows summed over blocks of `batch`
        # rows by the minibatch density (the memory of one minibatch at any m) and scaled
        # to n_rows. Padding rows observe nothing, so each adds log sum_k w_k = 0
        m = data[rows[0]].shape[0]
        n_blocks = -(-m // batch)
        pad = [(0, n_blocks * batch - m)]
        blocked = [jnp.pad(d, pad + [(0, 0)] * (d.ndim - 1), constant_values=padding[names[i]])
                   .reshape(n_blocks, batch, *d.shape[1:])
                   if i in rows else d for i, d in enumerate(data)]

        def body(total, j):
            lp, ll = dens_batch(*unravel(theta), *[b[j] if i in rows else b
                                                   for i, b in enumerate(blocked)])
            return total + ll, lp - ll

        total, prior = jax.lax.scan(body, 0.0, jnp.arange(n_blocks))
        return prior[0] + (n_rows / m) * total

    family = Gaussian(int(cuts[-1]), method == "fullrank_advi")
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
    step = advi_kernel(logp_full if batch is None else logp_batch, family, optimizer, n_mc)

    @jax.jit
    def run_window(state, key, data):
        def body(st, k):
            st, info = step(k, st, data)
            return st, (info.elbo, st.params)

        state, (elbo, params) = jax.lax.scan(body, state, jax.random.split(key, window))
        # Polyak-Ruppert averaging of the variational parameters over the window
        return state, elbo, jax.tree.map(lambda a: a.mean(axis=0), params)

    @functools.partial(jax.jit, static_argnums=3)
    def elbo(params, key, data, n_draws):
        m, rho, off = params
        theta = m + jax.random.normal(key, (n_draws, family.dim)) @ family.scale(rho, off).T
        if batch is None:
            # vmapped over as many draws as keep the likelihood's (N, K, D, D) work arrays
            # within ELBO_BLOCK_ENTRIES (all 32 at small N, one at a time at a million rows)
            k, d = model.ppgmm_structure[:2]
            n = data[rows[0]].shape[0]
            per = max(1, min(n_draws, ELBO_BLOCK_ENTRIES // (n * k * d * d)))
            return (jax.lax.map(lambda th: logp_full(th, data, key), theta, batch_size=per)
                    + family.entropy(rho))
        # minibatches are for many rows: one draw at a time, rows in blocks
        return jax.lax.map(lambda th: logp_blocked(th, data, key), theta) + family.entropy(rho)

    @jax.jit
    def draw(theta, data):
        return jax.vmap(lambda th: draw_fn(*unravel(th), *data))(jnp.asarray(theta))

    out = Compiled(run_window, elbo, draw, unravel, family, rows)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = out
    return out


class Window(NamedTuple):
    """One convergence check."""

    elbo: float  # full-data ELBO of the window's averaged approximation
    se: float  # its Monte Carlo standard error
    shift: float  # largest change of the mean since the last window, in posterior sds
    log_sd_shift: float  # largest change of a log standard deviation
    learning_rate: float  # the step size of the window


#: the step size is lowered at most down to this fraction of the starting one
MIN_STEP_FRACTION = 2.0**-14


#: the sample statistic of each field of :class:`Window`
CHECK_NAMES = {"elbo": "check_elbo", "se": "check_elbo_se", "shift": "check_mean_shift",
               "log_sd_shift": "check_log_sd_shift", "learning_rate": "check_learning_rate"}


def _elbo_bound(a: Window, b: Window, tol: float) -> float:
    """The change of the ELBO that counts: tol of itself or twice its Monte Carlo error."""
    return max(tol * abs(b.elbo), 2.0 * float(np.hypot(a.se, b.se)))


def _elbo_flat(a: Window, b: Window, tol: float) -> bool:
    """The ELBO changed by less than :func:`_elbo_bound`."""
    return bool(abs(b.elbo - a.elbo) < _elbo_bound(a, b, tol))


def _converged(a: Window, b: Window, tol: float, param_tol: float) -> bool:
    """Both the ELBO and the parameters have settled (see the module docstring)."""
    return _elbo_flat(a, b, tol) and b.shift < param_tol and b.log_sd_shift < param_tol


#: draws of the approximation per ELBO estimate of a convergence check
CHECK_DRAWS = 32
#: with minibatches, checks read this many minibatches' worth of rows, drawn once per fit
CHECK_BATCHES = 16
#: draws of the final full-data ELBO of a minibatch fit (each a pass over every row)
FINAL_DRAWS_MINIBATCH = 8


def _check_rows(data: tuple, rows: list[int], batch: int | None, seed: int) -> tuple:
    """The data a convergence check reads: all of it, or with minibatches a fixed random
    subsample of :data:`CHECK_BATCHES` minibatches' rows (its likelihood scaled to all rows
    by :class:`Compiled`'s ``elbo``). The same rows at every check, so the change of the
    estimate between windows has no row-sampling noise, at a cost that does not grow
    with N."""
    n = data[rows[0]].shape[0]
    if batch is None or CHECK_BATCHES * batch >= n:
        return data
    pick = np.sort(np.random.default_rng(seed).choice(n, CHECK_BATCHES * batch, replace=False))
    return tuple(d[pick] if i in rows else d for i, d in enumerate(data))


def _check_window(c: Compiled, avg: tuple, prev: tuple | None, key: Any, data: tuple,
                  learning_rate: float) -> Window | None:
    """The window's check on ``data`` (:func:`_check_rows`), or None when the approximation
    is no longer finite."""
    m, rho, off = (np.asarray(a) for a in avg)
    if not (np.isfinite(m).all() and np.isfinite(rho).all() and np.isfinite(off).all()):
        return None
    e = np.asarray(c.elbo(avg, key, data, CHECK_DRAWS))
    if not np.isfinite(e).all():
        return None
    shift = log_shift = np.inf
    if prev is not None:
        sd = c.family.marginal_sd(rho, off)
        sd_prev = c.family.marginal_sd(*(np.asarray(a) for a in prev[1:]))
        shift = float(np.max(np.abs(m - np.asarray(prev[0])) / sd))
        log_shift = float(np.max(np.abs(np.log(sd) - np.log(sd_prev))))
    return Window(float(e.mean()), float(e.std() / np.sqrt(len(e))), shift, log_shift,
                  learning_rate)


def _windows(c: Compiled, params: tuple, key: Any, data: tuple, *, learning_rate: float,
             n_windows: int, tol: float, param_tol: float, progressbar: bool,
             check_data: tuple) -> tuple[Any, list[np.ndarray], list[Window], bool,
                                        float] | None:
    """Run windows on ``data`` until the approximation settles (:func:`_converged`, judged
    on ``check_data``).

    When the ELBO no longer gains but the parameters still move by more than twice
    ``param_tol`` (the optimiser's jitter from noisy gradients, which a constant step never
    damps), the step is multiplied by
    ``param_tol / shift`` kept within [1/8, 1/2] (the jitter of Adam's iterates scales
    with the step), down to :data:`MIN_STEP_FRACTION` of ``learning_rate``: the
    Robbins-Monro condition that stochastic optimisation needs, applied when the noise is
    what is left.

    Returns the last window's averaged parameters, the ELBO trace per window, the checks,
    whether it converged and the seconds the first window took (it compiles the loop when
    the cache has none); None when the ELBO or the parameters stopped being finite.
    """
    import jax
    import jax.numpy as jnp
    import optax

    # the step size lives in the optimiser's state (inject_hyperparams): a restart with a
    # smaller one reuses the compiled loop
    opt_state = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate).init(params)
    state = ADVIState(params, opt_state)
    trace, checks, avg, prev, converged, first = [], [], None, None, False, 0.0
    lr = learning_rate
    for w in range(n_windows):
        key, sub, k_eval = jax.random.split(key, 3)
        t0 = time.perf_counter()
        state, vals, avg = c.run_window(state, sub, data)
        vals = np.asarray(vals)
        if w == 0:
            first = time.perf_counter() - t0
        check = _check_window(c, avg, prev, k_eval, check_data, lr)
        if check is None or not np.isfinite(vals).all():
            return None
        trace.append(vals)
        checks.append(check)
        prev = avg
        if progressbar:
            print(f"\rADVI {(w + 1) * len(vals)}/{n_windows * len(vals)} ELBO "
                  f"{check.elbo:.6g} (se {check.se:.2g}), mean moved {check.shift:.2g} sd, "
                  f"step {lr:.2g}", end="", file=sys.stderr)
        if w >= 2 and _converged(checks[-2], check, tol, param_tol):
            converged = True
            break
        # no significant gain (flat, or lower: at large N the jitter of the window means
        # alone moves the ELBO by more than its bound, either way) while the parameters
        # move by more than twice param_tol (near param_tol a smaller step slowed fits on
        # small data that were about to converge)
        moved = max(check.shift, check.log_sd_shift)
        if w >= 1 and check.elbo - checks[-2].elbo < _elbo_bound(checks[-2], check, tol) and (
                moved > 2.0 * param_tol and lr > learning_rate * MIN_STEP_FRACTION):
            factor = min(0.5, max(0.125, param_tol / moved))
            lr = max(lr * factor, learning_rate * MIN_STEP_FRACTION)
            hyper = state.opt_state.hyperparams
            state = state._replace(opt_state=state.opt_state._replace(hyperparams={
                **hyper, "learning_rate": jnp.asarray(lr, hyper["learning_rate"].dtype)}))
    if progressbar:
        print(file=sys.stderr)
    return avg, trace, checks, converged, first


def _fit_family(c: Compiled, params: tuple, key: Any, data: tuple, *, learning_rate: float,
                retries: int = 2, **kw: Any) -> tuple[tuple, list[np.ndarray], list[Window],
                                                       bool, float, float]:
    """:func:`_windows` from ``params``; when it goes NaN, again from ``params`` with a ten
    times smaller step (``retries`` times), then a clear error."""
    lr = learning_rate
    for _ in range(retries + 1):
        out = _windows(c, params, key, data, learning_rate=lr, **kw)
        if out is not None:
            return (*out, lr)
        lr /= 10.0
    raise PpgmmError(
        f"ADVI's ELBO or variational parameters became NaN or infinite, also when restarted "
        f"from the start with learning_rate down to {lr * 10:g}. Try method='advi' "
        "(mean-field) if this was full-rank, fewer components, a different covariance type, "
        "or backend='nuts'."
    )


def _jax_advi(model: Any, start: dict[str, np.ndarray], *, method: str, n_iter: int,
              tol: float, param_tol: float, window: int, learning_rate: float, n_mc: int,
              draws: int, batch_size: int | None, seed: int, progressbar: bool
              ) -> bayes.EngineResult:
    """Run ADVI with a compiled JAX loop (full-rank started from the mean-field fit)."""
    import jax
    import jax.numpy as jnp
    import pymc.sampling.jax  # noqa: F401  (turns on JAX's float64 before any array is made)

    from .pymc_model import DATA_NAMES

    t0 = time.perf_counter()
    n_rows = int(model["x0"].get_value().shape[0])
    batch = None if batch_size is None or batch_size >= n_rows else int(batch_size)
    data = tuple(jnp.asarray(model[n].get_value()) for n in DATA_NAMES
                 if n in model.named_vars)
    m0 = np.concatenate([np.ravel(start[v.name]) for v in model.value_vars]).astype(float)
    opts = {"n_windows": max(1, n_iter // window), "tol": tol, "param_tol": param_tol,
            "progressbar": progressbar}
    key = jax.random.PRNGKey(seed)
    extra: dict[str, Any] = {}
    methods = ["advi", "fullrank_advi"] if method == "fullrank_advi" else ["advi"]
    params: tuple | None = None
    t_compile = 0.0
    for meth in methods:
        t_c = time.perf_counter()
        c = _compiled(model, start, method=meth, n_mc=n_mc, window=window, batch=batch,
                      n_rows=n_rows)
        t_compile += time.perf_counter() - t_c
        init = c.family.init(m0) if params is None else (
            params[0], params[1], jnp.zeros(c.family.dim * (c.family.dim - 1) // 2))
        key, sub = jax.random.split(key)
        # the full-rank stage refines the mean-field fit: a step of learning_rate on each of
        # the D(D-1)/2 noisy off-diagonal gradients drowned the correlations in noise (its
        # ELBO fell below the mean-field start's), a tenth of it does not
        step = learning_rate if meth == "advi" else learning_rate / 10.0
        avg, trace, checks, converged, t_first, lr = _fit_family(
            c, init, sub, data, learning_rate=step,
            check_data=_check_rows(data, c.rows, batch, seed), **opts)
        t_compile += t_first
        params = avg
        if meth != method:
            extra = {"n_iter_meanfield": int(sum(len(t) for t in trace)),
                     "converged_meanfield": int(converged)}
    t_fit = time.perf_counter() - t0 - t_compile
    m, rho, off = (np.asarray(a) for a in params)
    lmat = np.asarray(c.family.scale(jnp.asarray(rho), jnp.asarray(off)))
    theta = m + np.random.default_rng(seed).standard_normal((draws, c.family.dim)) @ lmat.T
    # full-data ELBO of the returned (averaged) approximation; the trace is taken at the
    # optimiser's iterates, which jitter around it and score lower
    e = np.asarray(c.elbo(params, jax.random.PRNGKey(seed + 1), data,
                          CHECK_DRAWS if batch is None else FINAL_DRAWS_MINIBATCH))
    drawn = c.draw(theta, data)
    out = _result(np.concatenate(trace), Draws(*(np.asarray(a, float)[None] for a in drawn)),
                  converged, float(e.mean()), compile_time=t_compile, fit_time=t_fit,
                  checks=checks)
    out.attrs.update({**extra, "learning_rate_used": float(lr),
                      "batch_size": int(batch or n_rows)})
    return out


# --------------------------------------------------------------------------- PyMC's own


def _pymc_advi(model: Any, start: dict[str, np.ndarray] | None, *, method: str, n_iter: int,
               tol: float, learning_rate: float, n_mc: int, draws: int, seed: int,
               progressbar: bool, compile_mode: str, window: int) -> bayes.EngineResult:
    """``pm.fit`` with a parameter-change convergence check (``window`` is not used)."""
    pm = import_pymc()
    from pymc.variational.callbacks import CheckParametersConvergence

    t0 = time.perf_counter()
    check = CheckParametersConvergence(every=100, tolerance=tol, diff="absolute")
    # PyMC renamed fn_kwargs to compile_kwargs (the old name warns since 5.2x)
    import inspect

    from pymc.variational.opvi import ObjectiveFunction

    step = inspect.signature(ObjectiveFunction.step_function).parameters
    mode_kw = "compile_kwargs" if "compile_kwargs" in step else "fn_kwargs"
    with model, bayes.quiet_pymc_log():
        approx = pm.fit(
            n=n_iter, method=method, start=start, random_seed=seed, progressbar=progressbar,
            callbacks=[check], obj_optimizer=pm.adam(learning_rate=learning_rate),
            obj_n_mc=n_mc, **{mode_kw: {"mode": compile_mode}},
        )
    t_fit = time.perf_counter() - t0
    elbo = -np.asarray(approx.hist, dtype=float)
    drawn = Draws.from_dataset(approx.sample(draws, random_seed=seed).posterior)
    return _result(elbo, drawn, len(elbo) < n_iter, float(elbo[-100:].mean()),
                   compile_time=float("nan"), fit_time=t_fit)


def _result(elbo: np.ndarray, drawn: Draws, converged: bool, elbo_final: float, *,
            compile_time: float, fit_time: float, checks: list[Window] = ()
            ) -> bayes.EngineResult:
    """The one result type, with the ELBO trace as a statistic over ``iteration`` and the
    convergence checks of the last stage over ``window`` (:data:`CHECK_NAMES`)."""
    import xarray as xr

    stats = xr.Dataset({"elbo": ("iteration", elbo)},
                       coords={"iteration": np.arange(len(elbo)), "chain": [0],
                               "draw": np.arange(drawn.shape[1])})
    for field in Window._fields if checks else ():
        stats[CHECK_NAMES[field]] = ("window", np.array([getattr(c, field) for c in checks]))
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
    else:
        del options["param_tol"], options["batch_size"]
    import jax

    try:
        return ENGINES[engine](model, start, seed=seed, **options)
    except jax.errors.JaxRuntimeError as exc:
        if engine != "jax" or "RESOURCE_EXHAUSTED" not in str(exc):
            raise
        n_rows = int(model["x0"].get_value().shape[0])
        raise PpgmmError(
            f"ADVI ran out of memory ({str(exc).splitlines()[0][:160]}) on {n_rows:,} rows. "
            + ("Pass batch_size= (e.g. batch_size=1000) for minibatch ADVI, whose memory "
               "does not grow with the number of rows." if options["batch_size"] is None
               else "Pass a smaller batch_size.")
        ) from None


def _check(max_iter: int, raw: Draws, aligned: Draws, result: bayes.EngineResult
           ) -> tuple[dict, bayes.Messages, bool]:
    msgs = bayes.Messages()
    if not result.converged:
        msgs.warn(f"ADVI did not converge in n_iter={max_iter} iterations (the windowed ELBO "
                  "still changed more than tol); raise n_iter, or lower learning_rate.")
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
    param_tol: float = 0.1,
    window: int = 1000,
    learning_rate: float = 0.01,
    obj_n_mc: int = 1,
    draws: int = 1000,
    batch_size: int | None = None,
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
        Relative change of the ELBO between successive windows below which it has settled
        (a change within twice its Monte Carlo standard error also counts). For
        ``engine="pymc"``: the absolute change of the variational parameters per 100
        iterations (PyMC's ``CheckParametersConvergence``).
    param_tol : float, default 0.1
        Largest change, between successive windows, of the approximation's mean (in its own
        standard deviations) and of its log standard deviations, below which the parameters
        have settled. The fit has converged when both the ELBO and the parameters have.
    window : int, default 1000
        Iterations per convergence check (and per averaging window).
    learning_rate : float, default 0.01
        Adam step size.
    obj_n_mc : int, default 1
        Monte Carlo draws per gradient.
    draws : int, default 1000
        Draws from the fitted approximation (stored as one chain).
    batch_size : int, optional
        Minibatch ADVI: each gradient uses ``batch_size`` rows drawn at random, their
        log-likelihood scaled by ``N / batch_size`` (PyMC's ``total_size`` convention; each
        row's likelihood is still its exact marginal over its missing entries); convergence
        is judged on the full-data ELBO at the end of each window. Default: every row.
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
    param_tol = check_number("param_tol", param_tol, positive=True)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 2)
    options = {
        "method": method, "n_iter": n_iter, "tol": tol, "param_tol": param_tol,
        "batch_size": batch_size, "window": window,
        "learning_rate": learning_rate, "n_mc": obj_n_mc, "draws": draws,
        "progressbar": sys.stderr.isatty() if progressbar is None else bool(progressbar),
        "compile_mode": str(compile_mode),
    }
    attrs = {"method": method, "engine": engine,
             "compile_mode": "JAX" if engine == "jax" else str(compile_mode),
             "max_iter": int(n_iter), "tol": float(tol), "param_tol": float(param_tol),
             "learning_rate": float(learning_rate), "draws": int(draws)}
    return bayes.run(
        spec, md, backend="advi", seed=seed, init=init, reference=reference,
        engine=functools.partial(_engine, engine, options),
        check=functools.partial(_check, n_iter), attrs=attrs,
        standardise=check_bool("standardise", standardise),
    )
