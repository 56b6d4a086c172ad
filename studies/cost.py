r"""Study 5, cost: wall time, iterations, ESS per second and memory per backend, with scaling
exponents.

From a base problem (N = 1000, D = 3, K = 2, 20% MCAR) one factor grows at a time: N in
{250, ..., 16000}, D in {2, 3, 5, 8}, K in {1, 2, 3, 5}, missing fraction in {0.1, 0.25, 0.4}.
Backends as a user runs them (:data:`studies.common.METHODS`): EM (MAP), mean-field ADVI,
NUTS. Per fit: wall seconds (compilation included, as a user waits for it), iterations (EM
iterations, ADVI steps), the smallest bulk ESS over parameters per second (NUTS), and the peak
resident memory of the process during the fit above its level before it (sampled every 5 ms
from ``/proc/self/statm``, so JAX's buffers count; NaN where that file is absent). Each fit
starts with ppgmm's compile caches empty, as a user's first fit of that shape does. Scaling
exponents are least-squares slopes of log wall time on log N, log D and log K.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd

import ppgmm
from studies import common

BASE = {"N": 1000, "D": 3, "K": 2, "missing": 0.2}
FACTORS = {"N": (250, 500, 1000, 2000, 4000, 8000, 16000), "D": (2, 3, 5, 8),
           "K": (1, 2, 3, 5), "missing": (0.1, 0.25, 0.4)}
METHODS = ("EM (MAP)", "ADVI mean-field", "NUTS")
FULL_SIZE = "4 factors (7 + 4 + 4 + 3 levels) x 3 backends x 3 replications"


def tasks(quick: bool = False, reps: int | None = None,
          methods: list[str] | None = None) -> list[dict]:
    """One task per (factor, level, method, replication)."""
    if quick:
        return [{"factor": "N", "N": n, "D": 2, "K": 2, "missing": 0.2, "method": "EM (MAP)",
                 "rep": 0, "quick": True} for n in (100, 200)]
    out = []
    for rep, (factor, levels), method in itertools.product(
            range(reps or 3), FACTORS.items(), methods or METHODS):
        for level in levels:
            out.append({**BASE, factor: level, "factor": factor, "method": method,
                        "rep": rep, "quick": False})
    return out


DESIGN = common.Design(tasks, FULL_SIZE, ("method",), {
    ("missing fraction" if f == "missing" else f): (lambda t, f=f: t[f] if t["factor"] == f
                                                    else None) for f in FACTORS})

_WARM: set[str] = set()


def _warm_up(method: str) -> None:
    """Fit a tiny problem once per process and method, so that imports are not timed."""
    if method not in _WARM:
        data, _ = ppgmm.simulate(ppgmm.GMM(1), n=30, missing=0.1, seed=0)
        common.fit_method(method, 1, data, 0, quick=True)
        _WARM.add(method)


class PeakMemory:
    """Peak resident memory of this process while the block runs, above its level at entry.

    A thread reads ``/proc/self/statm`` every ``interval`` seconds. Unlike ``tracemalloc`` it
    costs the timed code nothing (tracing every allocation took a NUTS fit of the base
    problem from 14 s to 27 s, and ADVI from 7.8 s to 12 s), and it counts memory that NumPy
    does not allocate (JAX's buffers, compiled code). ``mib`` is NaN where the file is
    absent (not Linux).
    """

    def __init__(self, interval: float = 0.005):
        self.interval, self.mib = interval, float("nan")
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss() or 0)

    def __enter__(self) -> PeakMemory:
        self._base = self._rss()
        self._peak = self._base or 0
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._base is not None:
            self.mib = (max(self._peak, self._rss() or 0) - self._base) / 2**20


def _cold_caches() -> None:
    """Empty the backends' compile caches: each timed fit compiles, as a first fit does."""
    from ppgmm.backends import advi, nuts
    advi._CACHE.clear()
    nuts._NUTPIE_CACHE.clear()


def run_task(task: dict) -> list[dict]:
    """Time one fit (after a warm-up fit of the same method in this process)."""
    seed = common.seed_of("cost", task["N"], task["D"], task["K"], task["missing"], task["rep"])
    data, _ = ppgmm.simulate(ppgmm.GMM(task["K"]), n=task["N"], n_features=task["D"],
                             missing=task["missing"], seed=seed)
    row = {k: task[k] for k in ("factor", "N", "D", "K", "missing", "method", "rep")}
    _warm_up(task["method"])
    _cold_caches()
    try:
        with PeakMemory() as memory:
            fit, wall = common.fit_method(task["method"], task["K"], data, seed % 2**31,
                                          quick=task["quick"])
    except Exception as err:
        return [{**row, "note": f"failed: {type(err).__name__}: {err}"[:300]}]
    conv = ppgmm.compare([fit]).convergence.iloc[0]
    ess = float(conv.get("ess_bulk_min", np.nan))
    return [{**row, "wall_s": wall, "peak_mib": memory.mib,
             "n_iter": float(conv.get("n_iter", np.nan)), "ess_bulk_min": ess,
             "ess_per_s": ess / wall, "converged": bool(fit.converged), "note": ""}]


def exponents(df: pd.DataFrame) -> pd.DataFrame:
    """Slope of log wall time on log level, per factor and method (N, D, K)."""
    ok = df[df["note"].fillna("") == ""]
    rows = []
    for (factor, method), g in ok.groupby(["factor", "method"]):
        if factor == "missing" or g[factor].nunique() < 2:
            continue
        x, y = np.log(g[factor].astype(float)), np.log(g["wall_s"])
        slope, _ = np.polyfit(x, y, 1)
        resid = y - np.polyval(np.polyfit(x, y, 1), x)
        se = np.sqrt(resid.var(ddof=2) / ((x - x.mean()) ** 2).sum()) if len(x) > 2 else np.nan
        rows.append({"factor": factor, "method": method, "exponent": slope, "se": se,
                     "levels": f"{g[factor].min():g}..{g[factor].max():g}", "fits": len(g)})
    return pd.DataFrame(rows)


def _figure(df: pd.DataFrame, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["note"].fillna("") == ""]
    factors = [f for f in FACTORS if f in set(ok["factor"])]
    fig, axes = plt.subplots(1, len(factors), figsize=(3.6 * len(factors), 3.2), squeeze=False)
    for ax, f in zip(axes[0], factors, strict=True):
        for m, g in ok[ok["factor"] == f].groupby("method"):
            s = g.groupby(f)["wall_s"].median()
            ax.plot(s.index, s.values, marker="o", label=m)
        ax.set_xlabel(f)
        ax.set_yscale("log")
        if f != "missing":
            ax.set_xscale("log")
    axes[0][0].set_ylabel("wall seconds (median)")
    axes[0][-1].legend(fontsize=7)
    return common.save_figure(fig, out, "cost.png")


def render(df: pd.DataFrame, meta: dict, out: Path) -> str:
    """The study page from the cached rows."""
    out = Path(out)
    lines = common.page_head("Cost: time, iterations, ESS/s and memory", "cost", __doc__, meta,
                             df, DESIGN, "ppgmm study cost [--reps R]")
    if df.empty:
        return "\n".join(lines)
    ok = df[df["note"].fillna("") == ""]
    lines += ["Timings were taken on a shared machine: compare backends within a row, and treat "
              "absolute seconds as indicative.", "",
              "## Scaling exponents (wall ~ level^exponent)", "",
              common.md_table(exponents(df)), "", f"![cost]({_figure(df, out)})", "",
              "## Medians per level", ""]
    cols = ["wall_s", "n_iter", "ess_per_s", "peak_mib"]
    for factor in [f for f in FACTORS if f in set(ok["factor"])]:
        t = ok[ok["factor"] == factor].groupby([factor, "method"])[cols].median().reset_index()
        lines += [f"### {factor}", "", common.md_table(t), ""]
    return "\n".join(lines)


def headline(df: pd.DataFrame, meta: dict) -> str:
    """Index entry: the N exponents."""
    e = exponents(df)
    e = e[e["factor"] == "N"]
    if e.empty:
        return "No results."
    return "Wall time ~ N^b: " + "; ".join(
        f"{r.method} b = {r.exponent:.2f}" + (f" ± {r.se:.2f}" if np.isfinite(r.se) else "")
        + f" (N {r.levels})" for r in e.itertuples()) + "."
