"""EM on dask data through a LocalCluster against the in-memory EM, side by side.

The data (N rows x D columns from a K-component mixture, a share of entries missing
completely at random) are written to a Zarr store chunk by chunk, so no process ever
holds them whole. Then, from one start:

- dask, persisted: the pattern-sorted chunks are kept on the workers (``persist=True``);
- dask, streamed: every pass reads the Zarr store again (``persist=False``);
- in memory: the NumPy EM on N / scale rows, its time per iteration multiplied by scale.

Printed: seconds per EM iteration, rows per second, the ratio to the scaled in-memory
time (the issue's target: <= 1.5), the one-off validation pass, and the peak memory of
each worker process (sampled from the scheduler's heartbeats).

    python studies/bench_dask.py                      # 10M x 10, 20% missing (the target)
    nice -n 10 python studies/bench_dask.py --n 2000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import warnings

import numpy as np


def _block(block_id: tuple[int, int], rows: int, d: int, k: int, missing: float,
           seed: int) -> np.ndarray:
    """Rows of chunk ``block_id[0]``: a fixed K-component mixture, entries masked MCAR."""
    truth = np.random.default_rng(seed)
    means = truth.normal(0.0, 3.0, (k, d))
    scales = truth.uniform(0.5, 1.5, (k, d))
    rng = np.random.default_rng([seed, block_id[0]])
    z = rng.integers(0, k, rows)
    x = means[z] + scales[z] * rng.standard_normal((rows, d))
    x[rng.random((rows, d)) < missing] = np.nan
    return x


def _write_store(path: str, n: int, d: int, k: int, missing: float, chunk: int) -> None:
    import dask.array as da

    chunks = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
    x = da.map_blocks(lambda block_id=None: _block(block_id, chunks[block_id[0]], d, k, missing,
                                                   0),
                      chunks=(tuple(chunks), (d,)), dtype=float)
    x.to_zarr(path, overwrite=True)


class PeakMemory:
    """Peak process memory of each worker, from the scheduler's heartbeat metrics."""

    def __init__(self, client, every: float = 0.25):
        self.client, self.every, self.peak = client, every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for addr, info in self.client.scheduler_info(n_workers=-1)["workers"].items():
                mem = info.get("metrics", {}).get("memory", 0)
                self.peak[addr] = max(self.peak.get(addr, 0), mem)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _em_time(p0, data, covariance: str, iters: int, n: int) -> tuple[float, float]:
    """Seconds per EM iteration (one E-step and one M-step) and the final objective."""
    from ppgmm.numerics.em import run_em

    start = time.perf_counter()
    run = run_em(p0, data, covariance, None, max_iter=iters, tol=0.0, reg_covar=1e-6, n=n)
    return (time.perf_counter() - start) / (iters + 1), run.objective[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--missing", type=float, default=0.2)
    ap.add_argument("--chunk", type=int, default=250_000, help="rows per chunk")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--scale", type=int, default=10, help="in-memory EM on n / scale rows")
    ap.add_argument("--memory-limit", default="3GiB", help="per worker")
    ap.add_argument("--store", default=None, help="Zarr path (default: a temporary folder)")
    args = ap.parse_args()

    import dask.array as da
    import distributed

    import ppgmm
    from ppgmm.backends.em import initial_params
    from ppgmm.chunked import prepare_chunked

    warnings.simplefilter("ignore")  # the cluster's chatter
    n, d, k = args.n, args.d, args.k
    tmp = None if args.store else tempfile.mkdtemp(prefix="ppgmm-bench-")
    store = args.store or os.path.join(tmp, "x.zarr")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       memory_limit=args.memory_limit, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        t = time.perf_counter()
        _write_store(store, n, d, k, args.missing, args.chunk)
        print(f"wrote {n:,} x {d} ({args.missing:.0%} missing) to Zarr in "
              f"{time.perf_counter() - t:.1f} s; {2} workers x 1 thread, memory limit "
              f"{args.memory_limit} each")
        x = da.from_zarr(store)
        spec = ppgmm.GMM(k, covariance="full", prior=None)
        rows = {}
        # streamed first: the persisted run's chunks would otherwise still be on the workers
        for label, persist in (("dask, streamed", False), ("dask, persisted", True)):
            with PeakMemory(client) as mem:
                t = time.perf_counter()
                cd = prepare_chunked(x, n_components=k, persist=persist)
                prep = time.perf_counter() - t
                if "p0" not in locals():
                    sample = cd.sample(50_000, np.random.default_rng(0))
                    p0 = initial_params(spec, sample, "kmeans++", np.random.default_rng(0), 1e-6)
                per, obj = _em_time(p0, cd.expected_stats, "full", args.iters, cd.n)
            rows[label] = (per, prep, max(mem.peak.values()) / 2**20, obj)
            del cd
        m = n // args.scale
        local = np.concatenate([_block((i,), min(args.chunk, m - i * args.chunk), d, k,
                                       args.missing, 0)
                                for i in range(-(-m // args.chunk))])
        md = ppgmm.prepare(local)
        per_mem, _ = _em_time(p0, md.layout, "full", args.iters, md.n)
    finally:
        client.close()
        cluster.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    base = per_mem * args.scale
    print(f"\nEM, K={k} full, {args.iters} iterations from one start "
          f"(N={n:,}, {-(-n // args.chunk)} chunks of {args.chunk:,} rows)")
    print(f"{'':28s}{'s/iter':>9s}{'rows/s':>13s}{'ratio':>8s}{'first pass s':>14s}"
          f"{'peak MiB/worker':>17s}")
    for label, (per, prep, peak, _) in rows.items():
        print(f"{label:28s}{per:9.2f}{n / per:13,.0f}{per / base:8.2f}{prep:14.1f}{peak:17.0f}")
    print(f"{f'in memory, {m:,} rows x {args.scale}':28s}{base:9.2f}{n / base:13,.0f}"
          f"{1.0:8.2f}")
    objs = [r[3] for r in rows.values()]
    print(f"\nobjective after {args.iters} iterations: streamed {objs[0]:.10g}, persisted "
          f"{objs[1]:.10g} (relative difference {abs(objs[0] - objs[1]) / abs(objs[0]):.1e})")


if __name__ == "__main__":
    main()
