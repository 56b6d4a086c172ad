"""EM on dask data through a LocalCluster against the in-memory EM, side by side.

The data (N rows x D columns from a K-component mixture, a share of entries missing
completely at random) are written to a Zarr store chunk by chunk, so no process ever
holds them whole. Then, from one start:

- dask, persisted: the pattern-sorted chunks are kept on the workers (``persist=True``);
- dask, streamed: every pass reads the Zarr store again (``persist=False``);
- in memory: the NumPy EM on N / scale rows, its time per iteration multiplied by scale.

Printed: seconds per EM iteration (the best of ``--rounds`` timings, the modes
interleaved so that a burst of other load hits each of them), rows per second, the ratio
to the scaled in-memory time (the issue's target: <= 1.5), the CPU seconds per iteration
(the worker processes and this one together; the in-memory peer's own process) and their
ratio, which other load on the machine disturbs far less than wall time, the one-off
validation pass, and the peak memory of each worker process (sampled from the scheduler's
heartbeats during the validation pass and the first timing).

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


def _worker_cpu(client) -> float:
    """CPU seconds (user + system) used so far by the worker processes, together."""
    def cpu():
        import psutil

        t = psutil.Process().cpu_times()
        return t.user + t.system

    return float(sum(client.run(cpu).values()))


def _em_time(p0, data, iters: int, n: int, cpu) -> tuple[float, float, float]:
    """Wall and CPU seconds per EM iteration (one E-step and one M-step), final objective."""
    from ppgmm.numerics.em import run_em

    c0, start = cpu(), time.perf_counter()
    run = run_em(p0, data, "full", None, max_iter=iters, tol=0.0, reg_covar=1e-6, n=n)
    wall, used = time.perf_counter() - start, cpu() - c0
    return wall / (iters + 1), used / (iters + 1), run.objective[-1]


def _local_rows(n: int, args) -> np.ndarray:
    """The first n rows of the store's data, made in this process."""
    return np.concatenate([_block((i,), min(args.chunk, n - i * args.chunk), args.d, args.k,
                                  args.missing, 0)
                           for i in range(-(-n // args.chunk))])


def _run(client, store: str, args) -> tuple[dict, int]:
    """Each mode's best s/iter over the rounds (wall, CPU), first pass, peak MiB, objective."""
    import dask.array as da

    import ppgmm
    from ppgmm.backends.em import initial_params
    from ppgmm.chunked import prepare_chunked

    x = da.from_zarr(store)
    spec = ppgmm.GMM(args.k, covariance="full", prior=None)

    def workers() -> float:
        return _worker_cpu(client) + time.process_time()

    out, data = {}, {}
    # streamed first: the persisted chunks would otherwise sit on the workers meanwhile
    for label, persist in (("dask, streamed", False), ("dask, persisted", True)):
        with PeakMemory(client) as mem:
            t = time.perf_counter()
            cd = prepare_chunked(x, n_components=args.k, persist=persist)
            prep = time.perf_counter() - t
            if not data:
                sample = cd.sample(50_000, np.random.default_rng(0))
                p0 = initial_params(spec, sample, "kmeans++", np.random.default_rng(0), 1e-6)
            wall, cpu, obj = _em_time(p0, cd.expected_stats, args.iters, cd.n, workers)
        data[label] = (cd.expected_stats, cd.n, workers)
        out[label] = [wall, cpu, prep, max(mem.peak.values()) / 2**20, obj]
    m = args.n // args.scale
    md = ppgmm.prepare(_local_rows(m, args))
    label = f"in memory, {m:,} rows x {args.scale}"
    data[label] = (md.layout, md.n, time.process_time)
    out[label] = [*_em_time(p0, md.layout, args.iters, md.n, time.process_time)[:2], 0, 0, 0]
    for _ in range(args.rounds - 1):  # interleaved, so a burst of load hits every mode
        for label, (estep, n, cpu) in data.items():
            wall, used, _ = _em_time(p0, estep, args.iters, n, cpu)
            out[label][0], out[label][1] = min(out[label][0], wall), min(out[label][1], used)
    return out, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--missing", type=float, default=0.2)
    ap.add_argument("--chunk", type=int, default=250_000, help="rows per chunk")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="timings per mode, best kept")
    ap.add_argument("--scale", type=int, default=10, help="in-memory EM on n / scale rows")
    ap.add_argument("--memory-limit", default="3GiB", help="per worker")
    ap.add_argument("--store", default=None, help="Zarr path (default: a temporary folder)")
    args = ap.parse_args()

    import distributed

    warnings.simplefilter("ignore")  # the cluster's chatter
    n = args.n
    tmp = None if args.store else tempfile.mkdtemp(prefix="ppgmm-bench-")
    store = args.store or os.path.join(tmp, "x.zarr")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       memory_limit=args.memory_limit, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        t = time.perf_counter()
        _write_store(store, n, args.d, args.k, args.missing, args.chunk)
        print(f"wrote {n:,} x {args.d} ({args.missing:.0%} missing) to Zarr in "
              f"{time.perf_counter() - t:.1f} s; 2 workers x 1 thread, memory limit "
              f"{args.memory_limit} each; load average {os.getloadavg()[0]:.1f}")
        rows, m = _run(client, store, args)
    finally:
        client.close()
        cluster.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    _report(rows, args, m)


def _report(rows: dict, args, m: int) -> None:
    n = args.n
    base_wall, base_cpu = (v * args.scale for v in list(rows.values())[-1][:2])
    print(f"\nEM, K={args.k} full, {args.iters} iterations from one start, best of "
          f"{args.rounds} (N={n:,}, {-(-n // args.chunk)} chunks of {args.chunk:,} rows); "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"{'':30s}{'s/iter':>8s}{'rows/s':>12s}{'ratio':>7s}{'CPU s/iter':>12s}"
          f"{'CPU ratio':>10s}{'first pass s':>14s}{'peak MiB/worker':>17s}")
    for label, (wall, cpu, prep, peak, _) in rows.items():
        if label.startswith("in memory"):
            wall, cpu = base_wall, base_cpu
        tail = f"{prep:14.1f}{peak:17.0f}" if prep else ""
        print(f"{label:30s}{wall:8.2f}{n / wall:12,.0f}{wall / base_wall:7.2f}{cpu:12.2f}"
              f"{cpu / base_cpu:10.2f}{tail}")
    objs = [r[4] for r in list(rows.values())[:2]]
    print(f"\nobjective after {args.iters} iterations: streamed {objs[0]:.10g}, persisted "
          f"{objs[1]:.10g} (relative difference {abs(objs[0] - objs[1]) / abs(objs[0]):.1e})")


if __name__ == "__main__":
    main()
