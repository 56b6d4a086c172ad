"""Minibatch ADVI against full-batch ADVI and MAP-EM on one data set, side by side.

Data: N rows x D columns from a K-component mixture; entries missing by blocks of
columns, as in surveys whose modules a respondent skips (half the rows complete, the
other half missing one of four blocks of D // 2.5 columns: 20% of entries missing, five
missingness patterns). The PyMC likelihood is O(N K D^2) per evaluation in memory as
well as time, so full-batch ADVI is limited to moderate N on one machine.

Fits, all under the default prior and from the same EM start:

- MAP-EM (``backend="em"``);
- full-batch ADVI (every row in every gradient);
- minibatch ADVI (``batch_size=B``: B rows per gradient, scaled to N).

Printed: wall time of each fit, its iterations, and the distance of each approximation's
mean (and the EM's MAP) from the full-batch ADVI's mean, in the full-batch ADVI's
posterior standard deviations, over every weight, mean and covariance entry (median and
largest). Mean-field ADVI underestimates posterior standard deviations, so these
distances are, if anything, inflated.

    nice -n 10 python studies/bench_minibatch.py --n 5000 --batch 500
    nice -n 10 python studies/bench_minibatch.py --n 100000 --batch 1000 --skip-full --draws 50
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def make_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """A K-component mixture with block missingness (five patterns, 20% of entries)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, (k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    z = rng.integers(0, k, n)
    x = means[z] + np.einsum("nij,nj->ni", np.linalg.cholesky(covs)[z],
                             rng.standard_normal((n, d)))
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


def _timed(label: str, call) -> tuple:
    t = time.perf_counter()
    fit = call()
    wall = time.perf_counter() - t
    print(f"  {label}: {wall:.1f} s", flush=True)
    return fit, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1_000)
    ap.add_argument("--method", default="advi", choices=["advi", "fullrank_advi"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-full", action="store_true", help="no full-batch ADVI (large N)")
    ap.add_argument("--draws", type=int, default=1000,
                    help="draws kept per ADVI fit (each holds draws x N x D imputations)")
    args = ap.parse_args()

    import ppgmm

    warnings.simplefilter("ignore")
    x = make_data(args.n, args.d, args.k, args.seed)
    spec = ppgmm.GMM(args.k, covariance="full", prior="default")
    print(f"N={args.n:,} x D={args.d}, K={args.k} full, {np.isnan(x).mean():.0%} missing "
          f"(block patterns), {args.method}, batch {args.batch:,}, {args.draws} draws; load "
          "average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    em, t_em = _timed("MAP-EM", lambda: ppgmm.fit(spec, x, backend="em", seed=args.seed))
    fits = {"MAP-EM": (em, t_em)}
    # init="em" (the default) starts ADVI from this same EM fit (same seed and prior)
    opts = {"backend": "advi", "seed": args.seed, "method": args.method, "reference": em,
            "draws": args.draws}
    if not args.skip_full:
        fits["ADVI, full batch"] = _timed("ADVI, full batch",
                                          lambda: ppgmm.fit(spec, x, **opts))
    fits[f"ADVI, batch {args.batch:,}"] = _timed(
        "ADVI, minibatch", lambda: ppgmm.fit(spec, x, batch_size=args.batch, **opts))
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
