"""Minibatch ADVI against full-batch ADVI and MAP-EM on one data set, side by side.

Data: N rows x D columns from a K-component mixture, 20% of entries missing completely at
random (``--missing mcar``: about 2^D patterns at large N, up to 1,023 for D=10) or by
blocks of columns as in surveys whose modules a respondent skips (``--missing blocks``: half
the rows complete, the other half missing one of four blocks of D // 2.5 columns: 20% of
entries, five patterns).

Fits, all under the default prior and from the same EM start:

- MAP-EM (``backend="em"``);
- minibatch ADVI (``batch_size=B``: B rows per gradient, scaled to N);
- full-batch ADVI (every row in every gradient), fitted to convergence, or with
  ``--full-iters I`` only timed over I iterations (its cost per iteration is O(N), so at
  a million rows a fit is out of reach here; its time is then estimated as that cost
  times the minibatch fit's iterations, a lower bound).

Printed: wall time of each fit, its iterations, peak resident memory of the process after
each, and the distance of each fit's mean from the reference fit's posterior mean, in the
reference's posterior standard deviations, over every weight, mean and covariance entry
(median and largest). The reference is full-batch ADVI when it was fitted, else minibatch
ADVI. Mean-field ADVI underestimates posterior standard deviations, so these distances
are, if anything, inflated.

    nice -n 10 python studies/bench_minibatch.py --n 5000 --batch 500
    nice -n 10 python studies/bench_minibatch.py --n 1000000 --batch 1000 --full-iters 20 --draws 20
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def make_data(n: int, d: int, k: int, seed: int, missing: str = "blocks") -> np.ndarray:
    """A K-component mixture, 20% of entries missing by ``missing``: "blocks" (five
    patterns) or "mcar" (completely at random; rows left empty get one entry back)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, (k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    z = rng.integers(0, k, n)
    x = means[z] + np.einsum("nij,nj->ni", np.linalg.cholesky(covs)[z],
                             rng.standard_normal((n, d)))
    if missing == "mcar":
        mask = rng.random((n, d)) < 0.2
        mask[mask.all(axis=1), 0] = False
        x[mask] = np.nan
        return x
    width = max(1, round(0.4 * d))
    block = rng.integers(0, 8, n)  # 0-3: one of four blocks missing; 4-7: complete
    for b in range(4):
        cols = (np.arange(width) + b * (d - width) // 3) % d
        x[np.ix_(block == b, cols)] = np.nan
    return x


def _flat(fit) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of every weight, mean and covariance entry."""
    post = fit.idata.posterior
    parts = [post[v].stack(s=("chain", "draw")).values for v in
             ("weights", "means", "covariances")]
    flat = np.concatenate([p.reshape(-1, p.shape[-1]) for p in parts])
    return flat.mean(axis=1), flat.std(axis=1)


def _peak_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _timed(label: str, call) -> tuple:
    t = time.perf_counter()
    fit = call()
    wall = time.perf_counter() - t
    print(f"  {label}: {wall:.1f} s, peak memory so far {_peak_gb():.2f} GB", flush=True)
    return fit, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1_000)
    ap.add_argument("--missing", default="mcar", choices=["mcar", "blocks"])
    ap.add_argument("--method", default="advi", choices=["advi", "fullrank_advi"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full-iters", type=int, default=None,
                    help="only time full-batch ADVI over this many iterations (large N)")
    ap.add_argument("--full-rows", type=int, default=100_000,
                    help="with --full-iters, rows to time on when all N do not fit in memory")
    ap.add_argument("--draws", type=int, default=1000,
                    help="draws kept per ADVI fit (each holds draws x missing entries)")
    args = ap.parse_args()

    import ppgmm

    warnings.simplefilter("ignore")
    x = make_data(args.n, args.d, args.k, args.seed, args.missing)
    spec = ppgmm.GMM(args.k, covariance="full", prior="default")
    md = ppgmm.prepare(x)
    print(f"N={args.n:,} x D={args.d}, K={args.k} full, {np.isnan(x).mean():.0%} missing "
          f"({args.missing}, {md.n_patterns} patterns), {args.method}, batch {args.batch:,}, "
          f"{args.draws} draws; load average {os.getloadavg()[0]:.1f}", flush=True)
    em, t_em = _timed("MAP-EM", lambda: ppgmm.fit(spec, x, backend="em", seed=args.seed))
    fits = {"MAP-EM": (em, t_em)}
    # init="em" (the default) starts ADVI from this same EM fit (same seed and prior)
    opts = {"backend": "advi", "seed": args.seed, "method": args.method, "reference": em,
            "draws": args.draws, "progressbar": True}
    label = f"ADVI, batch {args.batch:,}"
    fits[label] = _timed("ADVI, minibatch",
                         lambda: ppgmm.fit(spec, x, batch_size=args.batch, **opts))
    mb = fits[label][0]
    st = mb.idata.sample_stats
    print("  minibatch checks per window: ELBO "
          + " ".join(f"{v:.6g}" for v in st["check_elbo"].values)
          + "\n    mean moved (sd) " + " ".join(f"{v:.2g}" for v in st["check_mean_shift"].values)
          + "\n    step " + " ".join(f"{v:.2g}" for v in st["check_learning_rate"].values),
          flush=True)
    if args.full_iters is None:
        fits["ADVI, full batch"] = _timed("ADVI, full batch",
                                          lambda: ppgmm.fit(spec, x, **opts))
    else:
        # three windows of a third each: the least ADVI runs; fit_time leaves out compiling.
        # At a million rows one full-data gradient needs more memory than this machine
        # has: then time it on the first --full-rows rows and scale by N / rows (the
        # gradient is O(N))
        w = max(2, args.full_iters // 3)
        for rows in (args.n, args.full_rows):
            try:
                short = ppgmm.fit(spec, x[:rows], **{**opts, "draws": 1, "reference": None},
                                  n_iter=3 * w, window=w)
                break
            except Exception as exc:  # noqa: BLE001  (JAX's out-of-memory error)
                print(f"  ADVI, full batch on {rows:,} rows: {str(exc).splitlines()[0][:120]}",
                      flush=True)
        per_iter = short.attrs["fit_time"] / short.attrs["n_iter"] * args.n / rows
        mb_per_iter = mb.attrs["fit_time"] / mb.attrs["n_iter"]
        print(f"  ADVI, full batch: {per_iter:.3f} s per iteration over {3 * w} iterations "
              f"(on {rows:,} rows, scaled to {args.n:,}) "
              f"(minibatch {mb_per_iter:.4f} s, checks included: ratio "
              f"{per_iter / mb_per_iter:.0f}); at the minibatch fit's "
              f"{mb.attrs['n_iter']:,} iterations about {per_iter * mb.attrs['n_iter'] / 3600:.1f}"
              f" h; peak memory so far {_peak_gb():.2f} GB", flush=True)
    _report(fits, args)


def _report(fits: dict, args) -> None:
    ref_label = "ADVI, full batch" if "ADVI, full batch" in fits else f"ADVI, batch {args.batch:,}"
    ref_mean, ref_sd = _flat(fits[ref_label][0])
    print(f"\ndistance from the {ref_label} mean, in its posterior sd (every weight, mean and "
          "covariance entry)")
    print(f"{'':24s}{'wall s':>9s}{'iterations':>12s}{'converged':>11s}{'median':>9s}"
          f"{'max':>8s}")
    for label, (fit, wall) in fits.items():
        mean, _ = _flat(fit)
        z = np.abs(mean - ref_mean) / ref_sd
        iters = fit.attrs.get("n_iter", 0)
        print(f"{label:24s}{wall:9.1f}{iters:12,d}{str(bool(fit.attrs.get('converged'))):>11s}"
              f"{np.median(z):9.2f}{z.max():8.2f}")


if __name__ == "__main__":
    main()
