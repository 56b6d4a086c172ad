"""What every study shares: the Dask run with a result cache, the methods, the metrics, pages.

A study is a module with

- ``tasks(quick, reps) -> list[dict]``: one dict per replication (its keys are the cache key);
- ``run_task(task) -> list[dict]``: fit and score one replication, one row per method;
- ``render(results, meta, out) -> str``: the Markdown page, written only from cached results.

:func:`run_study` maps ``run_task`` over the tasks on a Dask cluster (a LocalCluster by
default, ``scheduler=ADDRESS`` for a running one, the synchronous scheduler in quick mode),
appends the rows to ``DIR/data/NAME.parquet`` as they arrive (a rerun skips the tasks that
are there) and then renders ``DIR/NAME.md`` and its figures under ``DIR/img/``.

Only ppgmm's public API is used (``ppgmm.fit``, ``ppgmm.simulate``, ``ppgmm.compare``,
``Fit`` methods, ``fit.idata``, and :func:`ppgmm.numerics.alignment.align_to`), so a rerun
measures whatever the backends are at that time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import ppgmm
from ppgmm.io import atomic_write
from ppgmm.numerics.alignment import align_to

__all__ = [
    "METHODS", "PEERS", "seed_of", "run_study", "fit_method", "param_errors", "heldout_lpd",
    "imputation_scores", "draws_of", "md_table", "mcse", "load_results", "merge_cache",
    "Design", "design_table", "design_summary", "design_brief", "run_section",
]

#: What NUTS must show to count as converged (:func:`ppgmm.backends.nuts.diagnose`), for pages.
NUTS_CRITERION = ("no divergence, chains in one mode, R-hat <= 1.01 and bulk ESS >= 100 per "
                  "chain after label alignment")

#: ppgmm methods: label -> (prior, backend, options). Short runs: studies measure the
#: backends as a user runs them, with the run lengths given here recorded in each page.
METHODS: dict[str, tuple[str | None, str, dict[str, Any]]] = {
    "EM (MLE)": (None, "em", {"n_init": 3}),
    "EM (MAP)": ("default", "em", {"n_init": 3}),
    "ADVI mean-field": ("default", "advi", {"method": "advi", "n_iter": 10_000,
                                            "progressbar": False}),
    "ADVI full-rank": ("default", "advi", {"method": "fullrank_advi", "n_iter": 10_000,
                                           "progressbar": False}),
    "NUTS": ("default", "nuts", {"draws": 500, "tune": 500, "chains": 2,
                                 "progressbar": False}),
}
#: what a user picks today: impute, then scikit-learn's GaussianMixture on complete data
PEERS = ("mean impute + sklearn", "IterativeImputer + sklearn", "pygmmis")
QUICK_OPTIONS = {"ADVI mean-field": {"n_iter": 3000, "window": 500},
                 "ADVI full-rank": {"n_iter": 3000, "window": 500},
                 "NUTS": {"draws": 100, "tune": 100}}


def seed_of(*key: Any) -> int:
    """A fixed seed from a task key (stable across runs, machines and Python versions)."""
    text = json.dumps([str(k) for k in key])
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def stream_seeds(*key: Any, streams: tuple[str, ...] = ("data", "fit")) -> tuple[int, ...]:
    """One seed (below 2**31, as every backend takes) per named random stream of a task.

    A task's streams (its true parameters, its data, its fit) must not share random numbers:
    a fit seeded like the data it is given would start from the very draws that made the
    data, and a simulation-based calibration needs the data independent of how the
    parameters were drawn. Each stream's seed is :func:`seed_of` the key and its name.
    """
    return tuple(seed_of(*key, name) % 2**31 for name in streams)


# --------------------------------------------------------------------------- methods


def fit_method(name: str, k: int, data: np.ndarray, seed: int, quick: bool = False,
               **extra: Any) -> tuple[Any, float]:
    """Fit one method; returns (Fit or peer Params, wall seconds)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in METHODS:
            prior, backend, options = METHODS[name]
            options = {**options, **(QUICK_OPTIONS.get(name, {}) if quick else {}), **extra}
            out = ppgmm.fit(ppgmm.GMM(k, prior=prior), data, backend=backend, seed=seed,
                            **options)
        else:
            out = _peer(name, k, data, seed)
    return out, time.perf_counter() - start


def _peer(name: str, k: int, data: np.ndarray, seed: int) -> tuple[ppgmm.Params, np.ndarray]:
    """A peer's parameters and its completed data."""
    from sklearn.impute import SimpleImputer
    from sklearn.mixture import GaussianMixture

    if name == "pygmmis":
        return _pygmmis(k, data, seed)
    if name == "mean impute + sklearn":
        filled = SimpleImputer(strategy="mean").fit_transform(data)
    elif name == "IterativeImputer + sklearn":
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        filled = IterativeImputer(random_state=seed, max_iter=20).fit_transform(data)
    else:
        raise ValueError(f"unknown method {name!r}")
    gm = GaussianMixture(k, n_init=3, random_state=seed).fit(filled)
    return ppgmm.Params(gm.weights_, gm.means_, gm.covariances_), filled


def _pygmmis(k: int, data: np.ndarray, seed: int) -> tuple[ppgmm.Params, np.ndarray]:
    """pygmmis (Melchior & Goulding 2018) with missing entries given a huge noise variance,
    the usual way to pass incomplete rows to a deconvolution GMM; completed data = means."""
    import pygmmis

    miss = np.isnan(data)
    col_mean = np.nanmean(data, axis=0)
    filled = np.where(miss, col_mean, data)
    big = 1e4 * np.nanvar(data, axis=0)
    covar = np.zeros((len(data), data.shape[1], data.shape[1]))
    idx = np.arange(data.shape[1])
    covar[:, idx, idx] = np.where(miss, big, 1e-8)
    gmm = pygmmis.GMM(K=k, D=data.shape[1])
    pygmmis.fit(gmm, filled, covar=covar, init_method="kmeans",
                rng=np.random.RandomState(seed % 2**31))
    return ppgmm.Params(gmm.amp / gmm.amp.sum(), gmm.mean, gmm.covar), filled


def peer_available(name: str) -> bool:
    """Whether an optional peer is installed (pygmmis is optional)."""
    if name != "pygmmis":
        return True
    try:
        import pygmmis  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- metrics


def draws_of(fit: Any, max_draws: int = 200) -> list[ppgmm.Params]:
    """Parameter sets of a fit (thinned to at most ``max_draws``), or [params] of a peer."""
    if isinstance(fit, ppgmm.Params):
        return [fit]
    post = fit.idata.posterior.stack(sample=("chain", "draw"))
    n = post.sizes["sample"]
    take = np.unique(np.linspace(0, n - 1, min(n, max_draws)).astype(int))
    w = post["weights"].transpose("sample", ...).values[take]
    mu = post["means"].transpose("sample", ...).values[take]
    cov = post["covariances"].transpose("sample", ...).values[take]
    return [ppgmm.Params(w[s], mu[s], cov[s]) for s in range(len(take))]


def point_params(fit: Any) -> ppgmm.Params:
    """The point estimate: EM's estimate, the posterior mean, or a peer's parameters."""
    if isinstance(fit, ppgmm.Params):
        return fit
    p = fit.point()
    return ppgmm.Params(p["weights"].values, p["means"].values, p["covariances"].values)


def param_errors(est: ppgmm.Params, truth: ppgmm.Params) -> dict[str, float]:
    """Max absolute error of weights, means, covariances after aligning labels to the truth."""
    aligned, _ = align_to(est, truth)
    return {
        "err_weights": float(np.max(np.abs(aligned.weights - truth.weights))),
        "err_means": float(np.max(np.abs(aligned.means - truth.means))),
        "err_covariances": float(np.max(np.abs(aligned.covariances - truth.covariances))),
    }


def mixture_logpdf(p: ppgmm.Params, x: np.ndarray) -> np.ndarray:
    """log sum_k w_k N(x | mu_k, Sigma_k) of complete rows, by scipy.stats."""
    comp = [np.log(w) + multivariate_normal(m, c, allow_singular=True).logpdf(x)
            for w, m, c in zip(p.weights, p.means, p.covariances, strict=True)]
    return logsumexp(np.atleast_2d(np.array(comp)).reshape(len(comp), len(x)), axis=0)


def heldout_lpd(fit: Any, x_test: np.ndarray, max_draws: int = 100) -> float:
    """Mean log predictive density per held-out complete row: the plug-in density for a point
    estimate, log of the draw-averaged density for draws."""
    sets = draws_of(fit, max_draws)
    lp = np.array([mixture_logpdf(p, x_test) for p in sets])
    return float(np.mean(logsumexp(lp, axis=0) - np.log(len(sets))))


def imputation_scores(fit: Any, truth: Any, data: np.ndarray, filled: np.ndarray | None = None,
                      interval: float = 0.9) -> dict[str, float]:
    """RMSE, coverage of central ``interval`` intervals and CRPS of the missing entries.

    ppgmm fits are scored by :func:`ppgmm.compare` against the truth; a peer's completed
    data has no interval (coverage NaN) and its CRPS is that of a point forecast, |error|.
    """
    mask = np.isnan(data)
    if not mask.any():
        return {"rmse": np.nan, "coverage": np.nan, "crps": np.nan}
    if filled is not None:
        err = filled[mask] - truth.values[mask]
        return {"rmse": float(np.sqrt(np.mean(err**2))), "coverage": np.nan,
                "crps": float(np.mean(np.abs(err)))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = ppgmm.compare([fit], truth=truth, interval_prob=interval)
    s = cmp.imputation_scores
    row = s[(s["backend"] == cmp.labels[0]) & (s["feature"] == "all")].iloc[0]
    return {"rmse": float(row["rmse"]), "coverage": float(row["coverage"]),
            "crps": float(row["crps"])}


def mcse(values: Any) -> float:
    """Monte Carlo standard error of a mean of independent replications."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else np.nan


def stratified_mcse(values: Any, strata: Any) -> float:
    """Monte Carlo standard error of the mean of replications pooled over strata whose
    levels differ: the pooled within-stratum variance over n (deviations from each
    stratum's own mean, n - S degrees of freedom), so a difference between strata is not
    counted as noise."""
    v = pd.Series(np.asarray(values, dtype=float))
    key = pd.Series(list(strata))
    ok = np.isfinite(v)
    v, key = v[ok], key[ok]
    dof = len(v) - key.nunique()
    if dof < 1:
        return np.nan
    dev = v - v.groupby(key).transform("mean")
    return float(np.sqrt((dev**2).sum() / dof / len(v)))


# --------------------------------------------------------------------------- running


def was_quick(meta: dict) -> bool:
    """Whether any run recorded in a study's metadata ran in quick (smoke-test) mode."""
    return any(r.get("quick") for r in meta.get("runs", []))


@contextmanager
def _cluster(scheduler: str | None, quick: bool, workers: int | None):
    """A Dask client (None for the synchronous scheduler of quick runs)."""
    if quick and scheduler is None:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    # pygmmis starts a multiprocessing pool: worker processes must be allowed children
    with dask.config.set({"distributed.worker.daemon": False}):
        n = workers or max(1, (os.cpu_count() or 1))
        # Dask's own warnings (a task cancelled by Ctrl-C, a worker killed on shutdown) are
        # noise to a reader of the study: a task's error is recorded in its row instead
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            yield client


def _key(task: dict) -> str:
    return json.dumps({k: task[k] for k in sorted(task) if k not in ("quick", "out")})


def write_file(path: Path, write: Callable[[str], Any]) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file beside it,
    which then replaces ``path`` (:func:`ppgmm.io.atomic_write`). A run stopped mid-write
    leaves the previous cache, page or figure intact."""
    with atomic_write(path) as tmp:
        write(tmp)


def write_text(path: Path, text: str) -> None:
    """:func:`write_file` for text."""
    write_file(path, lambda tmp: Path(tmp).write_text(text))


def load_results(path: Path) -> pd.DataFrame:
    """Cached rows of a study, or an empty frame."""
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def run_study(name: str, tasks: list[dict], run_task: Callable[[dict], list[dict]],
              render: Callable[[pd.DataFrame, dict, Path], str], out: Path, *,
              scheduler: str | None = None, quick: bool = False, workers: int | None = None,
              settings: dict | None = None, refit: bool = True) -> Path:
    """Run (or resume) a study's tasks on Dask, cache the rows, render its page."""
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(parents=True, exist_ok=True)
    path = out / "data" / f"{name}.parquet"
    meta_path = out / "data" / f"{name}.json"
    done = load_results(path)
    have = set(done["task"]) if len(done) else set()
    todo = [{**t, "out": str(out)} for t in tasks if _key(t) not in have] if refit else []
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    start = time.perf_counter()
    if todo:
        _progress(f"{name}: {len(todo)} task(s) to run, {len(have)} cached")
        meta["runs"].append({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": quick,
            "tasks": len(todo), "done": 0, "cached": len(have), "status": "running",
            "wall_s": 0.0,
            "scheduler": scheduler or ("synchronous" if quick else "LocalCluster"),
            "workers": workers or os.cpu_count(), "settings": settings or {},
            "python": platform.python_version(), "ppgmm": ppgmm.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        })
        record = meta["runs"][-1]
        try:
            for rows in _map(run_task, todo, scheduler, quick, workers):
                done = _append(path, pd.DataFrame(rows))
                record.update(done=record["done"] + 1,
                              wall_s=round(time.perf_counter() - start, 1))
                write_text(meta_path, json.dumps(meta, indent=1))
            record["status"] = "complete"
        except BaseException as err:  # stopped (interrupted, cluster lost): say so, keep rows
            record["status"] = f"stopped: {type(err).__name__}"
            raise
        finally:
            write_text(meta_path, json.dumps(meta, indent=1))
    page = render(done, meta, out)
    write_text(out / f"{name}.md", page)
    return out / f"{name}.md"


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` + ".lock" (several runs may share one cache)."""
    import fcntl

    with open(f"{path}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _append(path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Append rows to the cache as it is on disk now; returns the whole cache."""
    with _locked(path):
        done = pd.concat([load_results(path), rows], ignore_index=True)
        write_file(path, done.to_parquet)
    return done


def merge_cache(name: str, source: Path, out: Path) -> int:
    """Add the rows and run records of ``source``'s cache of a study to ``out``'s (rows whose
    task is already there are skipped); returns the number of rows added."""
    src = load_results(Path(source) / "data" / f"{name}.parquet")
    path = Path(out) / "data" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    have = set(load_results(path).get("task", []))
    new = src[~src["task"].isin(have)] if len(src) else src
    if len(new):
        _append(path, new)
    src_meta = Path(source) / "data" / f"{name}.json"
    if src_meta.exists():
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
        meta["runs"] += [r for r in json.loads(src_meta.read_text())["runs"]
                         if r not in meta["runs"]]
        write_text(meta_path, json.dumps(meta, indent=1))
    return len(new)


def _map(run_task: Callable, todo: list[dict], scheduler: str | None, quick: bool,
         workers: int | None):
    """Rows of each task, as they complete (tagged with the task's key)."""
    def tagged(task: dict) -> list[dict]:
        try:
            rows = run_task(task)
        except Exception as err:  # one task's error is recorded; the run goes on
            fields = {k: v for k, v in task.items() if k not in ("quick", "out")}
            rows = [{**fields, "note": f"failed: {type(err).__name__}: {err}"[:300]}]
        return [{**r, "task": _key(task)} for r in rows]

    with _cluster(scheduler, quick, workers) as client:
        if client is None:
            for i, t in enumerate(todo):
                yield tagged(t)
                _progress(f"  {i + 1}/{len(todo)}")
            return
        from distributed import as_completed

        futures = client.map(tagged, todo, pure=False)
        for i, fut in enumerate(as_completed(futures)):
            yield fut.result()
            _progress(f"  {i + 1}/{len(todo)}")


def _progress(text: str) -> None:
    if sys.stderr.isatty() or os.environ.get("PPGMM_STUDY_PROGRESS"):
        print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pages


def md_table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    """A Markdown table (no tabulate dependency)."""
    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "" if not np.isfinite(v) else floatfmt.format(v)
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


@dataclass(frozen=True)
class Design:
    """A study's full design, for stating what part of it the cache holds.

    Parameters
    ----------
    tasks : callable
        ``() -> list[dict]``: the full design's tasks (the study's ``tasks()``).
    text : str
        The full design in words.
    group : tuple of str, default ()
        Task keys a page reports separately (e.g. ``("method",)``).
    dims : dict, default {}
        Cell dimensions: display name -> ``task -> level`` (``None``: not a level of it).
        Tasks with equal levels in every dimension are replications of one cell.
    """

    tasks: Callable[[], list[dict]]
    text: str
    group: tuple[str, ...] = ()
    dims: dict[str, Callable[[dict], Any]] = field(default_factory=dict)


def _level(v: Any) -> str:
    if isinstance(v, tuple | list):
        return "(" + ", ".join(map(str, v)) + ")"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _levels(values: Any) -> str:
    vals = sorted({v for v in values if v is not None}, key=lambda v: (str(type(v)), v))
    return ", ".join(_level(v) for v in vals)


def _reps_text(counts: Counter, full: int) -> str:
    """Replications per cell run, e.g. '3 (18 cells), 2 (36 cells) of 20'."""
    if not counts:
        return f"0 of {full}"
    per = Counter(counts.values())
    if len(per) == 1:
        return f"{next(iter(per))} of {full}"
    parts = [f"{r} ({n} cell{'s' * (n > 1)})" for r, n in sorted(per.items(), reverse=True)]
    return ", ".join(parts) + f" of {full}"


def _design_row(design: Design, full: list[dict], run: list[dict]) -> dict:
    """What of one group's part of the full design ran."""
    def cell(t: dict) -> tuple:
        return tuple(fn(t) for fn in design.dims.values())

    f_cells, r_cells = Counter(map(cell, full)), Counter(map(cell, run))
    n_reps = max(f_cells.values())
    row: dict[str, Any] = {"tasks": f"{len(run):,} of {len(full):,}",
                           "cells": f"{len(r_cells)} of {len(f_cells)}",
                           "replications": _reps_text(r_cells, n_reps),
                           "_reps": (min(r_cells.values(), default=0),
                                     max(r_cells.values(), default=0), n_reps)}
    missing = []
    for name, fn in design.dims.items():
        levels, have = {fn(t) for t in full}, {fn(t) for t in run}
        if len(levels - {None}) > 1:
            row[name] = _levels(have)
        if run and levels - have - {None}:
            missing.append(f"{name} {_levels(levels - have)}")
    if not run:
        missing = ["all"]
    elif len(run) < len(full):
        short = sum(n_reps - r_cells.get(c, 0) for c in f_cells if c in r_cells)
        if short:
            missing.append(f"{short:,} replication(s) short in the cells run")
    row["not run"] = "; ".join(missing) or "nothing: full design"
    return row


def design_table(df: pd.DataFrame, design: Design) -> tuple[pd.DataFrame, dict]:
    """Per group, the part of the full design in the cache, derived from the cached task
    keys; and the totals (``full``, ``run``, ``outside``: cached tasks not in the design)."""
    full = {_key(t): json.loads(_key(t)) for t in design.tasks()}
    cached = [json.loads(k) for k in (df["task"].unique() if len(df) else [])]
    run = [t for t in cached if _key(t) in full]
    outside = len(cached) - len(run)

    def group(t: dict) -> tuple:
        return tuple(t.get(g) for g in design.group)

    rows = []
    for g in dict.fromkeys(map(group, full.values())):
        row = _design_row(design, [t for t in full.values() if group(t) == g],
                          [t for t in run if group(t) == g])
        rows.append({**dict(zip(design.group, g, strict=True)), **row})
    return pd.DataFrame(rows), {"full": len(full), "run": len(run), "outside": outside}


def design_summary(df: pd.DataFrame, design: Design) -> str:
    """One sentence: which part of the full design the cache holds."""
    table, n = design_table(df, design)
    if n["run"] == n["full"]:
        text = f"**The full design ran** ({n['full']:,} tasks: {design.text})."
    elif n["run"] == 0:
        text = (f"**None of the full design ran** ({design.text}; {n['full']:,} tasks).")
    else:
        done = [" ".join(map(str, r[list(design.group)])) for _, r in table.iterrows()
                if r["not run"].startswith("nothing")] if design.group else []
        text = (f"**Part of the full design ran: {n['run']:,} of {n['full']:,} tasks "
                f"({n['run'] / n['full']:.0%})**; full design: {design.text}."
                + (f" Complete for: {', '.join(done)}." if done else ""))
    if n["outside"]:
        text += (f" The cache also holds {n['outside']} task(s) outside the full design "
                 "(quick mode or changed settings), included in the results.")
    return text


def design_brief(df: pd.DataFrame, design: Design) -> str:
    """The per-group part of :func:`design_table` in one line (for the index); groups that
    ran the same part share an entry."""
    table, _ = design_table(df, design)
    same: dict[str, list[str]] = {}
    for _, r in table.iterrows():
        lo, hi, full = r["_reps"]
        cells = "" if r["cells"] == "1 of 1" else f"{r['cells']} cells x "
        text = f"{cells}{lo if lo == hi else f'{lo}-{hi}'} of {full} replications"
        same.setdefault(text, []).append(" ".join(map(str, r[list(design.group)])))
    return "; ".join(f"{', '.join(n)}: {t}" if any(n) else t for t, n in same.items())


def page_head(title: str, name: str, doc: str | None, meta: dict, df: pd.DataFrame,
              design: Design, rerun: str) -> list[str]:
    """The opening lines of a study page: title, provenance, the module docstring's body
    (after its first paragraph) and the :func:`run_section`."""
    return [f"# {title}", "",
            f"*Written by `studies/{name}.py` from `data/{name}.parquet`; do not edit by hand.*",
            "", (doc or "").split("\n\n", 1)[1].strip(), "",
            run_section(meta, df, design, rerun)]


def save_figure(fig: Any, out: Path, fname: str, dpi: int = 110) -> str:
    """Lay out, write to ``out/img/fname`` and close ``fig``; the path the page links."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    write_file(Path(out) / "img" / fname,
               lambda tmp: fig.savefig(tmp, dpi=dpi, format=Path(fname).suffix[1:]))
    plt.close(fig)
    return f"img/{fname}"


def run_section(meta: dict, df: pd.DataFrame, design: Design, rerun: str) -> str:
    """The 'published run' section: which part of the full design the cache holds (derived
    from the cached tasks), and the record of each run."""
    runs = meta.get("runs", [])
    n_tasks = df["task"].nunique() if len(df) else 0
    lines = ["## Published run", ""]
    if not n_tasks:
        return "\n".join(lines + ["No run cached yet.", f"Rerun: `{rerun}`", ""])
    quick = " Quick mode (smoke-test size)." if was_quick(meta) else ""
    table, _ = design_table(df, design)
    lines += [design_summary(df, design) + quick, "",
              "What the cache holds, per " + (" and ".join(design.group) or "design") + ":",
              "", md_table(table.drop(columns="_reps")), "", "Runs:", ""]
    for r in sorted(runs, key=lambda r: r["date"]):  # merged caches append out of order
        done = r.get("done", r["tasks"])
        state = ("" if r.get("status", "complete") == "complete" else
                 f" (stopped after {done} of them)")
        cached = f" (besides {r['cached']} cached)" if r.get("cached") else ""
        lines.append(f"- {r['date']}: {r['tasks']} task(s){cached}{state}, {r['wall_s']:.0f} s "
                     f"wall on "
                     f"{r['scheduler']} ({r['workers']} worker(s), {r['machine']}); "
                     f"settings {json.dumps(r['settings'])}")
    unrecorded = n_tasks - sum(r.get("done", r["tasks"]) for r in runs)
    if unrecorded > 0:
        lines.append(f"- {unrecorded} task(s) in the cache come from runs stopped before "
                     "their record was kept (their wall time is not in the total).")
    total = sum(r["wall_s"] for r in runs)
    lines += [f"- Total wall time of the recorded runs: {total / 60:.1f} min.",
              f"- Rerun: `{rerun}`", ""]
    return "\n".join(lines)
