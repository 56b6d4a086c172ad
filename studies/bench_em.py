"""Time per EM iteration of ppgmm (20% MCAR missing) against scikit-learn (same data complete).

Run: ``python studies/bench_em.py`` (options: ``--n``, ``--d``, ``--k``, ``--missing``,
``--reps``, ``--seed``).

What is timed, and why it is fair
---------------------------------
One EM iteration is one E-step plus one M-step. Both libraries are timed on their own
kernels, called exactly as their EM loops call them, in the same process, on the same
parameters, with the same BLAS threads:

- ppgmm: ``numerics.em.expected_stats`` (pattern factors: one batched Cholesky per pattern and
  component, whitened residuals and conditional means of every row, responsibilities,
  row log-likelihoods) followed by ``m_step`` (expected sufficient statistics including the
  conditional-covariance correction, new parameters), on the data with 20% of entries
  missing completely at random;
- scikit-learn: ``GaussianMixture._e_step`` followed by ``_m_step`` (which includes its
  precision Cholesky), on the same data before masking (it cannot take NaN).

Each kernel pair is run ``--reps`` times from the same fixed parameters, ppgmm and
scikit-learn interleaved so that both see the same machine load; the script prints the
median times and the median of the per-repetition ratios. As a cross-check it also times
whole fits with ``tol=0`` from the same fixed init for two values of ``max_iter`` and
divides the difference by the number of extra iterations, which cancels set-up costs
(validation, pattern grouping, building the result).

Peak memory is measured with ``tracemalloc`` (NumPy reports its allocations to it) over one
iteration of each library, so it is the working memory of an iteration beyond the data.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture

import ppgmm
from ppgmm.numerics.em import expected_stats, m_step
from ppgmm.spec import Params


def make_data(n: int, d: int, k: int, missing: float, seed: int):
    """A K-component mixture in D dims, and the same data with ``missing`` MCAR entries."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, (k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    weights = rng.dirichlet(np.full(k, 5.0))
    z = rng.choice(k, n, p=weights)
    chol = np.linalg.cholesky(covs)
    x = means[z] + np.einsum("nde,ne->nd", chol[z], rng.standard_normal((n, d)))
    mask = rng.random((n, d)) < missing
    empty = mask.all(axis=1)
    mask[empty, rng.integers(0, d, empty.sum())] = False  # keep at least one entry per row
    xm = np.where(mask, np.nan, x)
    return x, xm


def start_params(x: np.ndarray, k: int, seed: int) -> Params:
    """A fixed, reasonable start: k random rows as means, the pooled covariance."""
    rng = np.random.default_rng(seed + 1)
    n, d = x.shape
    means = x[rng.choice(n, k, replace=False)]
    cov = np.cov(x, rowvar=False)
    return Params(np.full(k, 1.0 / k), means, np.broadcast_to(cov, (k, d, d)).copy())


def time_kernels(x, xm, p0: Params, reps: int):
    """Median seconds per iteration (E + M) for ppgmm and scikit-learn kernels."""
    k = len(p0.weights)
    md = ppgmm.prepare(xm, n_components=k)
    layout = md.layout

    def ppgmm_iter():
        return m_step(expected_stats(p0, layout), "full", 1e-6, None)

    sk = GaussianMixture(k, covariance_type="full", reg_covar=1e-6)
    sk.weights_, sk.means_ = p0.weights.copy(), p0.means.copy()
    sk.covariances_ = p0.covariances.copy()
    sk.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(p0.covariances))
    sk.precisions_ = np.linalg.inv(p0.covariances)
    state = sk._get_parameters()

    def sk_iter():
        sk._set_parameters(state)
        _, log_resp = sk._e_step(x)
        sk._m_step(x, log_resp)

    # interleaved, so both see the same load on a shared machine; the ratio is the median of
    # the per-repetition ratios
    ppgmm_iter()
    sk_iter()  # warm up
    ts = {"ppgmm": [], "sklearn": []}
    for _ in range(reps):
        for name, f in (("ppgmm", ppgmm_iter), ("sklearn", sk_iter)):
            t0 = time.perf_counter()
            f()
            ts[name].append(time.perf_counter() - t0)
    peaks = {}
    for name, f in (("ppgmm", ppgmm_iter), ("sklearn", sk_iter)):
        tracemalloc.start()
        f()
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    ratio = float(np.median(np.divide(ts["ppgmm"], ts["sklearn"])))
    return {n: float(np.median(t)) for n, t in ts.items()}, ratio, peaks, md.n_patterns


def time_fits(x, xm, p0: Params, t1: int, t2: int, reps: int):
    """Per-iteration seconds from whole fits: (time(t2) - time(t1)) / (t2 - t1), median."""
    k, d = p0.means.shape
    spec = ppgmm.GMM(k, "full", prior=None)
    init = {"weights": p0.weights, "means": p0.means, "covariances": p0.covariances}
    prec = np.linalg.inv(p0.covariances)

    def ours(t):
        ppgmm.fit(spec, xm, init=init, tol=0.0, max_iter=t, imputation_draws=1)

    def theirs(t):
        GaussianMixture(k, covariance_type="full", weights_init=p0.weights, means_init=p0.means,
                        precisions_init=prec, tol=0.0, max_iter=t).fit(x)

    per = {"ppgmm": [], "sklearn": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppgmm.ConvergenceWarning)
        warnings.simplefilter("ignore", SkConvergenceWarning)
        for _ in range(reps):
            for name, f in (("ppgmm", ours), ("sklearn", theirs)):
                t0 = time.perf_counter()
                f(t1)
                a = time.perf_counter() - t0
                t0 = time.perf_counter()
                f(t2)
                b = time.perf_counter() - t0
                per[name].append((b - a) / (t2 - t1))
    ratio = float(np.median(np.divide(per["ppgmm"], per["sklearn"])))
    return {n: float(np.median(t)) for n, t in per.items()}, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--missing", type=float, default=0.2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fits", action="store_true", help="skip the whole-fit cross-check")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads for both libraries (default: as configured)")
    args = ap.parse_args()
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)

    x, xm = make_data(args.n, args.d, args.k, args.missing, args.seed)
    p0 = start_params(x, args.k, args.seed)
    print(f"N={args.n} D={args.d} K={args.k} full covariance, "
          f"{np.isnan(xm).mean():.1%} of entries MCAR-missing, cpus={os.cpu_count()}, "
          f"BLAS threads={args.threads or 'default'}")

    times, ratio, peaks, n_pat = time_kernels(x, xm, p0, args.reps)
    print(f"missingness patterns: {n_pat}")
    print(f"per-iteration kernels (E-step + M-step), interleaved, median of {args.reps}:")
    print(f"  ppgmm (with NaN)      {1e3 * times['ppgmm']:8.1f} ms   "
          f"peak {peaks['ppgmm'] / 2**20:7.1f} MiB")
    print(f"  sklearn (complete)    {1e3 * times['sklearn']:8.1f} ms   "
          f"peak {peaks['sklearn'] / 2**20:7.1f} MiB")
    print(f"  ratio ppgmm / sklearn {ratio:8.2f}   (median of per-repetition ratios)")
    if not args.no_fits:
        fits, fratio = time_fits(x, xm, p0, 5, 25, max(3, args.reps // 5))
        print("per-iteration from whole fits ((t(25 iters) - t(5 iters)) / 20), median:")
        print(f"  ppgmm {1e3 * fits['ppgmm']:.1f} ms, sklearn {1e3 * fits['sklearn']:.1f} ms, "
              f"ratio {fratio:.2f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {rss:.0f} MiB (data: {x.nbytes / 2**20:.1f} MiB per copy)")


if __name__ == "__main__":
    main()
