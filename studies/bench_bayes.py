"""Speed of ppgmm's NUTS and ADVI on the reference problem, against a hand-written numpyro peer.

Reference problem: N=500, D=3, K=3, full covariances, 20% of entries missing completely at
random; NUTS with 2 chains x (1000 tune + 1000 draws).

Printed per sampler: wall time (end to end; compile and sampling separately where the
engine reports them), min bulk ESS over every weight, mean and covariance entry (after
label alignment), ESS per second, max R-hat and divergences. The peer is the model a user
would write directly in numpyro: the same marginalised likelihood (embedded per-pattern
covariances, batched Cholesky, masked residuals), LKJ/half-normal priors, numpyro's NUTS
with its defaults, started from the same EM fit so its chains share one labelling.

Usage::

    python studies/bench_bayes.py                 # ppgmm NUTS (numpyro), peer, ADVI
    python studies/bench_bayes.py --engines numpyro nutpie pymc   # also the other engines
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import ppgmm
from ppgmm.numerics.alignment import align_draws
from ppgmm.numerics.diagnostics import ess_min, rhat_max
from ppgmm.spec import Draws


def reference_data(seed: int = 0, n: int = 500) -> np.ndarray:
    """The reference problem's data (N=500, D=3, K=3, 20% MCAR)."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 4.0]])
    covs = np.array([np.eye(3), [[1, 0.5, 0], [0.5, 1, 0.3], [0, 0.3, 1]], np.diag([2, 1, 0.5])])
    z = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    x = np.array([rng.multivariate_normal(means[k], covs[k]) for k in z])
    mask = rng.random(x.shape) < 0.2
    empty = mask.all(axis=1)
    mask[empty, rng.integers(0, 3, empty.sum())] = False
    x[mask] = np.nan
    return x


def report(name: str, wall: float, ess: float, rhat: float, div: int, compile_s: float = np.nan,
           sample_s: float = np.nan) -> None:
    """One line of results."""
    per_sample = ess / sample_s if np.isfinite(sample_s) else np.nan
    print(f"{name:<22} wall {wall:6.1f} s  compile {compile_s:5.1f} s  sampling {sample_s:5.1f} s"
          f"  min ESS-bulk {ess:6.0f}  ESS/s {ess / wall:6.1f} (end to end)"
          f" {per_sample:6.1f} (sampling)  max R-hat {rhat:.3f}  divergences {div}")


def bench_ppgmm_nuts(x: np.ndarray, engine: str, seed: int) -> ppgmm.Fit:
    """ppgmm's NUTS end to end."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppgmm.ConvergenceWarning)
        fit = ppgmm.fit(ppgmm.GMM(3, "full"), x, backend="nuts", seed=seed, engine=engine,
                        chains=2, tune=1000, draws=1000, progressbar=False)
    wall = time.perf_counter() - t0
    a = fit.attrs
    report(f"ppgmm nuts ({engine})", wall, a["ess_bulk_min"], a["rhat_max"], a["divergences"],
           a["compile_time"], a["sampling_time"])
    if a["warnings"] != "[]":
        print("   warnings:", a["warnings"])
    return fit


def bench_peer(x: np.ndarray, em: ppgmm.spec.Params, seed: int) -> None:
    """A straightforward numpyro model of the same marginalised likelihood."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax.scipy.linalg import solve_triangular
    from jax.scipy.special import logsumexp
    from numpyro.infer import MCMC, NUTS, init_to_value

    jax.config.update("jax_enable_x64", True)
    n, d = x.shape
    k = 3
    obs = ~np.isnan(x)
    patterns, pat = np.unique(obs, axis=0, return_inverse=True)
    pat = pat.ravel()
    o = patterns.astype(float)
    x0 = np.where(obs, x, 0.0)
    n_obs = obs.sum(1)
    center, scale = np.nanmean(x, 0), np.nanstd(x, 0)

    def model():
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(k)))
        mu = numpyro.sample("mu", dist.Normal(center, 10 * scale).expand([k, d]).to_event(2))
        sd = numpyro.sample("sd", dist.HalfNormal(2 * scale).expand([k, d]).to_event(2))
        corr = numpyro.sample("corr", dist.LKJCholesky(d, 2.0).expand([k]).to_event(1))
        chol = sd[..., None] * corr
        sigma = chol @ jnp.swapaxes(chol, -1, -2)
        s = o[:, None, :, None] * o[:, None, None, :] * sigma[None] + (
            (1 - o)[:, None, :, None] * jnp.eye(d))
        lch = jnp.linalg.cholesky(s)  # (P, K, D, D)
        logdet = 2 * jnp.log(jnp.diagonal(lch, axis1=-2, axis2=-1)).sum(-1)
        r = (x0[:, None, :] - mu[None]) * obs[:, None, :]
        z = solve_triangular(lch[pat], r[..., None], lower=True)[..., 0]
        lp = jnp.log(w) - 0.5 * (n_obs[:, None] * np.log(2 * np.pi) + logdet[pat]
                                 + (z**2).sum(-1))
        numpyro.factor("loglik", logsumexp(lp, axis=1).sum())

    sd0 = np.sqrt(np.diagonal(em.covariances, axis1=1, axis2=2))
    corr0 = np.linalg.cholesky(em.covariances / sd0[:, :, None] / sd0[:, None, :])
    init = init_to_value(values={"w": em.weights, "mu": em.means, "sd": sd0, "corr": corr0})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There are not enough devices")
        mcmc = MCMC(NUTS(model, init_strategy=init), num_warmup=1000, num_samples=1000,
                    num_chains=2, progress_bar=False)
        mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",))
    wall = time.perf_counter() - t0
    smp = mcmc.get_samples(group_by_chain=True)
    corr = np.asarray(smp["corr"])
    chol = np.asarray(smp["sd"])[..., None] * corr
    draws = Draws(np.asarray(smp["w"]), np.asarray(smp["mu"]),
                  chol @ np.swapaxes(chol, -1, -2))
    c, s = draws.shape
    w, m, cov = draws.flat()
    perm = align_draws(m, cov, em)
    idx = np.arange(len(perm))[:, None]
    aligned = Draws(w[idx, perm].reshape(c, s, k), m[idx, perm].reshape(c, s, k, d),
                    cov[idx, perm].reshape(c, s, k, d, d))
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    report("numpyro peer", wall, ess_min(aligned), rhat_max(aligned), div,
           sample_s=np.nan)


def bench_advi(x: np.ndarray, method: str, seed: int) -> None:
    """ppgmm's ADVI end to end."""
    t0 = time.perf_counter()
    fit = ppgmm.fit(ppgmm.GMM(3, "full"), x, backend="advi", seed=seed, method=method,
                    progressbar=False)
    wall = time.perf_counter() - t0
    a = fit.attrs
    print(f"{'ppgmm ' + method:<22} wall {wall:6.1f} s  compile {a['compile_time']:5.1f} s  "
          f"optimisation {a['fit_time']:5.2f} s  iterations {a['n_iter']}  converged "
          f"{a['converged']}  ELBO {a['elbo_final']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["numpyro"],
                        choices=["numpyro", "nutpie", "pymc"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    x = reference_data()
    # one-time imports (PyMC, JAX, the engines) are not charged to whichever sampler runs first
    import jax
    import numpyro  # noqa: F401
    import nutpie  # noqa: F401

    from ppgmm.backends.pymc_model import import_pymc

    import_pymc()
    jax.jit(lambda a: a + 1)(1.0).block_until_ready()
    print(f"reference problem: N={x.shape[0]}, D={x.shape[1]}, K=3 full, "
          f"{np.isnan(x).mean():.0%} missing; 2 chains x (1000 tune + 1000 draws)")
    fit = None
    for engine in args.engines:
        fit = bench_ppgmm_nuts(x, engine, args.seed)
    if not args.no_peer:
        em = ppgmm.fit(ppgmm.GMM(3, "full"), x, backend="em", seed=0, n_init=4).params
        bench_peer(x, em, args.seed)
    for method in ("advi", "fullrank_advi"):
        bench_advi(x, method, args.seed)
    if fit is not None:
        print("ppgmm posterior mean weights:", np.round(fit.params.weights, 3))


if __name__ == "__main__":
    main()
