"""Study 4, real data: K by BIC (EM) and by LOO (NUTS), and imputations scored on masked entries.

Data sets, each with natural missing values:

- ``airquality``: R's daily New York air quality, May-September 1973 (shipped with ppgmm,
  ``ppgmm.datasets.load_airquality``): Ozone, Solar.R, Wind, Temp; 153 rows, 44 missing.
- ``penguins``: Palmer penguins (Gorman, Williams & Fraser 2014; the ``palmerpenguins``
  package): bill length and depth, flipper length, body mass; 344 rows. Its two incomplete
  rows miss all four measurements, so they carry no information and are dropped (ppgmm
  would drop them with a warning).
- ``penguins isotopes``: the same expedition's raw table (``penguins-raw.csv`` in the
  ``palmerpenguins`` package): blood isotope ratios delta-15N and delta-13C, missing for
  the birds whose blood was not analysed (14 and 13 rows), with culmen length and flipper
  length; a different missingness process from the first two.

Per data set, 10% of the observed entries (at random, rows keep at least one entry) are
masked and held back: imputations of them are scored (RMSE, 90% interval coverage, CRPS)
against the held-back values. EM (MAP) is fitted for K = 1..K_max (BIC, lower is better),
NUTS for the same K (PSIS-LOO elpd from ``fit.idata``, higher is better; the smallest K within
2 standard errors of the best is chosen, since smaller differences are not resolved by the
data); the HTML report of
``ppgmm.compare`` of EM (MAP), ADVI (mean-field) and NUTS at the K chosen by BIC is written
next to this page by the run (``realdata_NAME.html``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import ppgmm
from studies import common

FULL_SIZE = "3 data sets x K = 1..5 x (EM, NUTS), 1 masking replication"
DATASETS = ("airquality", "penguins", "penguins isotopes")
K_MAX = 5
#: NUTS runs as long as the backend's defaults, as a user's would, not as short as in the
#: simulation studies: LOO is read per fit here, and with 2 x 500 draws the K = 1 fits (one
#: mode) of airquality and penguins isotopes missed R-hat <= 1.01 (1.014, 1.013)
NUTS_RUN = {"draws": 1000, "tune": 1000}
#: NUTS diagnostics kept per fit (``Fit.attrs``), next to its LOO
NUTS_CHECKS = ("rhat_max", "ess_bulk_min", "divergences", "modes_differ")
#: LOO picks the smallest K whose elpd is within this many standard errors of the best's
LOO_SE_RULE = 2.0


def load(name: str) -> pd.DataFrame:
    """The data set's modelled columns, natural missing values as NaN."""
    if name == "airquality":
        from ppgmm.datasets import load_airquality

        return load_airquality()
    from importlib.resources import files

    if name == "penguins":
        import palmerpenguins

        cols = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
        df = palmerpenguins.load_penguins()[cols]
    elif name == "penguins isotopes":
        cols = ["Delta 15 N (o/oo)", "Delta 13 C (o/oo)", "Culmen Length (mm)",
                "Flipper Length (mm)"]
        with files("palmerpenguins").joinpath("data/penguins-raw.csv").open() as fh:
            df = pd.read_csv(fh)[cols]
        df.columns = ["d15N", "d13C", "culmen_length_mm", "flipper_length_mm"]
    else:
        raise ValueError(f"data set should be one of {DATASETS}, but got {name!r}")
    return df[df.notna().any(axis=1)].reset_index(drop=True)


def mask(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Hide ``fraction`` of the observed entries (no row left empty); returns the masked data
    and the mask of hidden entries."""
    rng = np.random.default_rng(seed)
    obs = df.notna().to_numpy()
    hide = obs & (rng.random(obs.shape) < fraction)
    empty = np.flatnonzero((obs & ~hide).sum(1) == 0)
    for i in empty:  # give back one hidden entry
        hide[i, rng.choice(np.flatnonzero(hide[i]))] = False
    return df.mask(hide), hide


def tasks(quick: bool = False, reps: int | None = None,
          methods: list[str] | None = None) -> list[dict]:
    """One task per data set."""
    if quick:
        return [{"dataset": "airquality", "k_max": 2, "quick": True}]
    return [{"dataset": d, "k_max": K_MAX, "quick": False} for d in DATASETS]


DESIGN = common.Design(tasks, FULL_SIZE, ("dataset",))


def _fit(method: str, k: int, data: pd.DataFrame, quick: bool) -> tuple[Any, float]:
    """One fit at K = k (seeded by k), NUTS at :data:`NUTS_RUN`'s length outside quick mode."""
    extra = NUTS_RUN if method == "NUTS" and not quick else {}
    return common.fit_method(method, k, data, seed=k, quick=quick, **extra)


def _fits(task: dict, data: pd.DataFrame) -> tuple[list[dict], dict]:
    rows, fits = [], {}
    ks = range(1, task["k_max"] + 1)
    for k in ks:
        for method in ("EM (MAP)", "NUTS"):
            if task["quick"] and method == "NUTS" and k != task["k_max"]:
                continue
            try:
                fit, wall = _fit(method, k, data, task["quick"])
            except Exception as err:
                rows.append({"method": method, "K": k, "note": f"failed: {err}"[:300]})
                continue
            fits[method, k] = fit
            row = {"method": method, "K": k, "wall_s": wall, "converged": bool(fit.converged),
                   "note": ""}
            if method == "EM (MAP)":
                row["bic"] = float(fit.bic())
            else:
                row.update({c: float(fit.attrs[c]) for c in NUTS_CHECKS})
            rows.append(row)
    loo = _loo_table({k: f.idata for (m, k), f in fits.items() if m == "NUTS"})
    for row in rows:
        if row["method"] == "NUTS" and row["K"] in loo.index:
            row.update(loo.loc[row["K"]].to_dict())
    return rows, fits


def _loo_table(idatas: dict[int, Any]) -> pd.DataFrame:
    """PSIS-LOO per K and each K's elpd difference from the best K with the standard error
    of that difference (``arviz.compare``), and the count of Pareto k above ArviZ's
    threshold (those rows' LOO terms are unreliable)."""
    import arviz as az

    cols = ["elpd_loo", "elpd_se", "elpd_diff", "elpd_dse", "p_loo", "pareto_bad"]
    if not idatas:
        return pd.DataFrame(columns=cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # high Pareto k: counted in the table instead
        loos = {k: az.loo(idata, pointwise=True) for k, idata in idatas.items()}
        table = az.compare(loos, ic="loo") if len(loos) > 1 else None  # reuses the LOOs
    out = {}
    for k, loo in loos.items():
        diff, dse = ((table.loc[k, "elpd_diff"], table.loc[k, "dse"])
                     if table is not None else (0.0, 0.0))
        out[k] = [loo.elpd_loo, loo.se, diff, dse, loo.p_loo,
                  int((loo.pareto_k.values > loo.good_k).sum())]
    return pd.DataFrame.from_dict(out, orient="index", columns=cols, dtype=float)


def run_task(task: dict) -> list[dict]:
    """Fit one data set at every K, score masked entries, write the report at BIC's K."""
    name = task["dataset"]
    full = load(name)
    data, hide = mask(full, 0.1, common.seed_of("realdata", name))
    rows, fits = _fits(task, data)
    em = pd.DataFrame([r for r in rows if "bic" in r])
    k_bic = int(em.loc[em["bic"].idxmin(), "K"])
    advi, _ = common.fit_method("ADVI mean-field", k_bic, data, seed=0, quick=task["quick"])
    nuts = fits.get(("NUTS", k_bic)) or _fit("NUTS", k_bic, data, task["quick"])[0]
    chosen = {"em": fits["EM (MAP)", k_bic], "advi": advi, "nuts": nuts}
    # compare() wants a complete truth: natural gaps get 0 and are left out of the scores
    truth = np.nan_to_num(full.to_numpy(dtype=float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = ppgmm.compare(chosen, truth=truth, interval_prob=0.9)
        out = Path(task.get("out", "."))
        report = f"realdata_{name.replace(' ', '_')}.html"
        if "out" in task:
            cmp.report(str(out / report), title=f"ppgmm: {name}, K = {k_bic} (BIC)")
    scored = _masked_scores(cmp.imputations, data.isna().to_numpy(), hide, list(full.columns))
    n_natural = int(full.isna().to_numpy().sum())
    for r in rows:
        r.update(dataset=name, n=len(full), d=full.shape[1], natural_missing=n_natural,
                 masked=int(hide.sum()), report=report)
    for r in scored:
        rows.append({"dataset": name, "K": k_bic, "note": "", "report": report, **r})
    return rows


def _masked_scores(imp, missing: np.ndarray, hide: np.ndarray,
                   columns: list[str]) -> list[dict]:
    """RMSE, coverage and CRPS over the masked entries (natural gaps have no held-back
    value), per backend of ``compare``'s imputations."""
    rows, cols = np.nonzero(missing)  # the ``missing`` dim runs row by row
    named = [columns.index(str(f)) for f in imp["missing_feature"].values]
    if len(rows) != imp.sizes["missing"] or not np.array_equal(cols, named):
        raise RuntimeError("the missing entries of compare() are not in row-major order")
    held = hide[rows, cols]
    out = []
    for b in imp["backend"].values:
        e = imp.sel(backend=b)
        y = e["truth"].values[held]
        inside = (e["lower"].values[held] <= y) & (y <= e["upper"].values[held])
        out.append({"method": f"impute: {b}", "n_scored": int(held.sum()),
                    "rmse": float(np.sqrt(np.mean((e["mean"].values[held] - y) ** 2))),
                    "coverage": float(inside.mean()),
                    "crps": float(np.mean(e["crps"].values[held]))})
    return out


def _flag_k(k: int, g: pd.DataFrame) -> str:
    """``k``, flagged when it is the largest K tried (the criterion may still improve) and
    when the fit at ``k`` did not meet its convergence criterion (its criterion value is
    then not to be trusted)."""
    flags = ["largest tried"] if k == g["K"].max() and g["K"].nunique() > 1 else []
    if "converged" in g and not g.loc[g["K"] == k, "converged"].astype(bool).all():
        flags.append("not converged")
    return f"{k} ({'; '.join(flags)})" if flags else str(k)


def _loo_choice(nuts: pd.DataFrame) -> tuple[str, str]:
    """(K by LOO, K of the highest elpd): the first is the smallest K whose elpd is within
    ``LOO_SE_RULE`` standard errors of the difference from the best K."""
    if nuts.empty:
        return "", ""
    best = int(nuts.loc[nuts["elpd_loo"].idxmax(), "K"])
    close = nuts[nuts["elpd_diff"] <= LOO_SE_RULE * nuts["elpd_dse"]]
    return _flag_k(int(close["K"].min()), nuts), _flag_k(best, nuts)


def _choice(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, g in df.groupby("dataset", sort=False):
        em = g[g["method"] == "EM (MAP)"].dropna(subset=["bic"])
        nuts = g[g["method"] == "NUTS"].dropna(subset=["elpd_loo"])
        first = g.iloc[0]
        by_loo, best = _loo_choice(nuts)
        rows.append({
            "data set": name, "rows": int(first["n"]), "D": int(first["d"]),
            "natural missing": int(first["natural_missing"]), "masked": int(first["masked"]),
            "K by BIC (EM)": _flag_k(int(em.loc[em["bic"].idxmin(), "K"]), em)
            if len(em) else "",
            "K by LOO (NUTS)": by_loo, "highest elpd (NUTS)": best,
            "NUTS converged at K": ", ".join(str(int(k)) for k in nuts.loc[
                nuts["converged"].astype(bool), "K"]) or "none",
            "report": f"[{first['report']}]({first['report']})"})
    return pd.DataFrame(rows)


def _criteria(df: pd.DataFrame) -> pd.DataFrame:
    """BIC and LOO per data set and K, one row each, the criteria to one decimal."""
    em = df[df["method"] == "EM (MAP)"].set_index(["dataset", "K"])
    nuts = df[df["method"] == "NUTS"].set_index(["dataset", "K"])
    out = pd.DataFrame(index=em.index.union(nuts.index, sort=False))
    fmt = "{:.1f}".format
    out["BIC (EM)"] = em["bic"].map(fmt)
    out["elpd_loo ± se"] = (nuts["elpd_loo"].map(fmt) + " ± " + nuts["elpd_se"].map(fmt))
    out["elpd diff to best ± se"] = (nuts["elpd_diff"].map(fmt) + " ± "
                                     + nuts["elpd_dse"].map(fmt))
    out["p_loo"] = nuts["p_loo"].map(fmt)
    out["Pareto k bad"] = nuts["pareto_bad"].map("{:.0f}".format)
    out["NUTS converged"] = nuts["converged"]
    out["R-hat max"] = nuts["rhat_max"].map("{:.3f}".format)
    out["ESS bulk min"] = nuts["ess_bulk_min"].map("{:.0f}".format)
    out["divergences"] = nuts["divergences"].map("{:.0f}".format)
    out["chains in different modes"] = nuts["modes_differ"].map({0.0: "no", 1.0: "yes"})
    out["EM s"] = em["wall_s"].map("{:.2g}".format)
    out["NUTS s"] = nuts["wall_s"].map("{:.3g}".format)
    return out.fillna("").reset_index()


def render(df: pd.DataFrame, meta: dict, out: Path) -> str:
    """The study page from the cached rows."""
    lines = common.page_head("Real data: K by BIC and LOO, imputations of masked entries",
                             "realdata", __doc__, meta, df, DESIGN, "ppgmm study realdata")
    if df.empty:
        return "\n".join(lines)
    missing = [d for d in DATASETS if d not in set(df["dataset"])]
    if missing:
        lines += [f"Not in this run (not finished): {', '.join(missing)}.", ""]
    lines += ["## K chosen", "",
              "BIC: the K of the lowest BIC of EM (MAP). LOO: the smallest K whose NUTS elpd "
              f"is within {LOO_SE_RULE:g} standard errors of the difference from the K of the "
              "highest elpd (`arviz.compare`); differences within that are not resolved by "
              "these data. LOO from a NUTS run that missed its convergence criterion "
              f"({common.NUTS_CRITERION}) is read with care: its columns below say which "
              "check failed.", "",
              common.md_table(_choice(df)), "",
              "## BIC and LOO per K", "", common.md_table(_criteria(df)), "",
              "Failed fits: " + (", ".join(f"{r.dataset} {r.method} K={r.K}: {r.note}"
                                           for r in df[df["note"].fillna("").str.startswith(
                                               "failed")].itertuples()) or "none") + ".", "",
              "## Imputations of the masked entries (at BIC's K)", "",
              "`column mean` is compare()'s baseline (observed column mean, normal interval).",
              ""]
    imp = df[df["method"].str.startswith("impute: ")]
    lines += [common.md_table(imp[["dataset", "method", "K", "n_scored", "rmse", "coverage",
                                   "crps"]]), ""]
    return "\n".join(lines)


def headline(df: pd.DataFrame, meta: dict) -> str:
    """Index entry: K by BIC and LOO per data set."""
    if df.empty:
        return "No results."
    c = _choice(df)
    return (f"K chosen (BIC for EM / LOO for NUTS, the smallest K within {LOO_SE_RULE:g} se of "
            "the highest elpd): ") + "; ".join(
        f"{r['data set']} {r['K by BIC (EM)']} / {r['K by LOO (NUTS)']}"
        for _, r in c.iterrows()) + "."
