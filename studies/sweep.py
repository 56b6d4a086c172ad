"""Study 1, missingness sweep: exact-likelihood EM, VI and NUTS against impute-then-fit.

Grid (full mode): mechanism MCAR, MAR, MNAR (:func:`ppgmm.simulate`, slope 2) x missing
fraction 10/25/40% x (K, D) in {(2, 2), (3, 5), (5, 10)} x N in {200, 2000}, 20
replications, every method of :data:`studies.common.METHODS` and the peers. One task is one
(cell, replication, method): the data set is drawn from the cell and replication alone, so
every method sees the same data, and cached tasks are never refitted.

Metrics per fit: max absolute error of weights, means and covariances after aligning labels
to the truth; RMSE, 90% interval coverage and CRPS of the missing entries against the
hidden values; held-out log predictive density per row on 1000 fresh complete rows; wall time.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

import ppgmm
from ppgmm.compare import convergence_row
from studies import common

# the figures behind a fit's convergence flag kept in its row (absent where a backend has none)
DIAGNOSTICS = ("n_iter", "rhat_max", "ess_bulk_min", "ess_tail_min", "divergences")

MECHANISMS = ("MCAR", "MAR", "MNAR")
RATES = (0.1, 0.25, 0.4)
SHAPES = ((2, 2), (3, 5), (5, 10))
SIZES = (200, 2000)
EXACT = "EM (MLE)"
BAYES = ("ADVI mean-field", "ADVI full-rank", "NUTS")
FULL_SIZE = ("3 mechanisms x 3 rates x 3 (K, D) x 2 N = 54 cells, 20 replications, "
             "5 ppgmm methods + 3 peers (8,640 fits)")


def tasks(quick: bool = False, reps: int | None = None, methods: list[str] | None = None,
          shapes: list | None = None, sizes: list | None = None) -> list[dict]:
    """One task per (cell, replication, method)."""
    if quick:
        grid = [("MCAR", 0.25, 2, 2, 150), ("MNAR", 0.25, 2, 2, 150)]
        methods = methods or ["EM (MLE)", "EM (MAP)", "mean impute + sklearn",
                              "IterativeImputer + sklearn"]
        reps = reps or 1
    else:
        grid = [(m, r, k, d, n) for m, r, (k, d), n in itertools.product(
            MECHANISMS, RATES, shapes or SHAPES, sizes or SIZES)]
        methods = methods or [*common.METHODS, *common.PEERS]
        reps = reps or 20
    # replications outermost: a run stopped early covers the whole grid
    return [{"mechanism": m, "rate": r, "K": k, "D": d, "N": n, "rep": rep, "method": meth,
             "quick": quick}
            for rep, (m, r, k, d, n), meth in itertools.product(range(reps), grid, methods)]


DESIGN = common.Design(tasks, FULL_SIZE, ("method",), {
    "mechanism": lambda t: t["mechanism"], "missing": lambda t: t["rate"],
    "(K, D)": lambda t: (t["K"], t["D"]), "N": lambda t: t["N"]})


def draw(task: dict) -> tuple[np.ndarray, ppgmm.Truth, np.ndarray]:
    """The replication's data, its truth and 1000 held-out complete rows."""
    seed = common.seed_of(task["mechanism"], task["rate"], task["K"], task["D"], task["N"],
                          task["rep"])
    data, truth = ppgmm.simulate(ppgmm.GMM(task["K"]), n=task["N"], n_features=task["D"],
                                 missing=task["rate"], mechanism=task["mechanism"], seed=seed)
    test, _ = ppgmm.simulate(truth.params, n=1000, missing=0.0, seed=seed + 1)
    return data, truth, test


def run_task(task: dict) -> list[dict]:
    """Fit and score one method on one replication."""
    data, truth, test = draw(task)
    row = {k: task[k] for k in ("mechanism", "rate", "K", "D", "N", "rep", "method")}
    if not common.peer_available(task["method"]):
        return [{**row, "note": "not installed"}]
    try:
        out, wall = common.fit_method(task["method"], task["K"], data, seed=task["rep"],
                                      quick=task.get("quick", False))
    except Exception as err:  # a failed fit is a result of the study, recorded as such
        return [{**row, "note": f"failed: {type(err).__name__}: {err}"[:300]}]
    fit, filled = (out, None) if isinstance(out, ppgmm.Fit) else out
    converged = bool(fit.converged) if isinstance(fit, ppgmm.Fit) else True
    diag = convergence_row(fit) if isinstance(fit, ppgmm.Fit) else {}
    if not all(np.isfinite(a).all() for a in common.point_params(fit)):
        return [{**row, "wall_s": wall, "note": "failed: non-finite parameter estimates"}]
    return [{
        **row, "wall_s": wall, "converged": converged, "note": "",
        **{k: diag[k] for k in DIAGNOSTICS if k in diag},
        "missing_fraction": float(np.isnan(data).mean()),
        **common.param_errors(common.point_params(fit), truth.params),
        **common.imputation_scores(fit, truth, data, filled),
        "lpd": common.heldout_lpd(fit, test),
        "lpd_truth": float(common.mixture_logpdf(truth.params, test).mean()),
    }]


# --------------------------------------------------------------------------- page


def ratio_table(df: pd.DataFrame, metric: str = "err_means") -> pd.DataFrame:
    """Geometric mean of paired error ratios method / exact EM, per mechanism and rate, with
    its Monte Carlo standard error (delta method on the mean log ratio; the log ratios' spread
    is measured within each (K, D, N) cell, as the cells differ in level)."""
    ok = df[df["note"].fillna("") == ""]
    key = ["mechanism", "rate", "K", "D", "N", "rep"]
    base = ok[ok["method"] == EXACT].set_index(key)[metric]
    rows = []
    for (mech, rate, meth), g in ok[ok["method"] != EXACT].groupby(
            ["mechanism", "rate", "method"]):
        paired = g.set_index(key)[metric].to_frame("m").join(base.rename("e"), how="inner")
        lr = np.log(paired["m"] / paired["e"]).replace([np.inf, -np.inf], np.nan).dropna()
        if len(lr) == 0:
            continue
        gm = float(np.exp(lr.mean()))
        cell = lr.index.droplevel(["mechanism", "rate", "rep"])
        rows.append({"mechanism": mech, "rate": rate, "method": meth, "ratio": gm,
                     "mcse": gm * common.stratified_mcse(lr.to_numpy(), cell), "n": len(lr)})
    return pd.DataFrame(rows)


def _headline(ratios: pd.DataFrame) -> pd.DataFrame:
    ratios = ratios.assign(cell=[
        f"{r:.2f} ± {s:.2f} ({n})" if np.isfinite(s) else f"{r:.2f} ({n})"
        for r, s, n in zip(ratios["ratio"], ratios["mcse"], ratios["n"], strict=True)])
    wide = ratios.pivot_table(index=["mechanism", "rate"], columns="method", values="cell",
                              aggfunc="first").reset_index()
    wide.columns.name = None
    order = {m: i for i, m in enumerate(("MCAR", "MAR", "MNAR"))}
    wide = wide.sort_values(["mechanism", "rate"], key=lambda s: s.map(order).fillna(s))
    return wide.rename(columns={"rate": "missing"})


def _figure(ok: pd.DataFrame, out: Path, metric: str, ylabel: str, fname: str,
            log: bool = True) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mechs = [m for m in MECHANISMS if m in set(ok["mechanism"])]
    fig, axes = plt.subplots(1, len(mechs), figsize=(4 * len(mechs), 3.4), sharey=True,
                             squeeze=False)
    for ax, mech in zip(axes[0], mechs, strict=True):
        sub = ok[ok["mechanism"] == mech]
        for meth, g in sub.groupby("method"):
            stats = g.groupby("rate")[metric].agg(["mean", common.mcse])
            ax.errorbar(stats.index, stats["mean"], yerr=stats["mcse"], marker="o",
                        capsize=3, label=meth)
        ax.set_title(mech)
        ax.set_xlabel("fraction missing")
        if log:
            ax.set_yscale("log")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    return common.save_figure(fig, out, fname)


def _mnar_sentence(ok: pd.DataFrame) -> str:
    """Where MNAR breaks the methods, in numbers from the cache."""
    # the same (rate, K, D, N, replication) under both mechanisms, per method
    key = ["method", "rate", "K", "D", "N", "rep"]
    both = ok[ok["mechanism"] == "MNAR"][key].merge(ok[ok["mechanism"] == "MCAR"][key])
    ok = ok.merge(both)
    cov = ok.groupby(["mechanism", "method"])["coverage"].mean().dropna()
    err = ok.groupby(["mechanism", "method"])["err_means"].mean()
    parts = []
    for meth in sorted({m for _, m in err.index}):
        if ("MNAR", meth) in err and ("MCAR", meth) in err:
            parts.append(f"{meth} {err['MNAR', meth] / err['MCAR', meth]:.1f}x")
    covs = [f"{m} {cov['MNAR', m]:.2f}" for m in sorted({m for _, m in cov.index})
            if ("MNAR", m) in cov]
    ratios = [err["MNAR", m] / err["MCAR", m] for m in sorted({m for _, m in err.index})
              if ("MNAR", m) in err and ("MCAR", m) in err]
    verdict = ("**MNAR breaks every method.**" if ratios and min(ratios) > 1.2 else
               "**MNAR, measured:**")
    text = (f"{verdict} No method here models the missingness, so under MNAR (an entry is "
            "more likely missing the larger it is) each is fitted to a biased sample. Mean "
            "error of the means, MNAR / MCAR over the same (K, D, N) cells and replication "
            "numbers (each mechanism draws its own parameters and data, so the ratio is of "
            "averages, not of pairs): "
            + ", ".join(parts) + ".")
    if covs:
        text += (" Coverage of the nominal 90% intervals of the missing entries under MNAR: "
                 + ", ".join(covs) + ".")
    return text


def render(df: pd.DataFrame, meta: dict, out: Path) -> str:
    """The study page from the cached rows."""
    out = Path(out)
    lines = common.page_head("Missingness sweep: exact EM, VI and NUTS against impute-then-fit",
                             "sweep", __doc__, meta, df, DESIGN,
                             "ppgmm study sweep [--reps R] [--scheduler ADDRESS]")
    if df.empty:
        return "\n".join(lines)
    notes = df[df["note"].fillna("") != ""]
    ok = df[df["note"].fillna("") == ""]
    ratios = ratio_table(ok)
    if not ratios.empty:
        lines += ["## Headline: error of the means, method / exact EM (MLE)", "",
                  "Geometric mean over replications and (K, D, N) cells of the paired ratio "
                  "(max abs error of the means, after label alignment) ± its Monte Carlo "
                  "standard error, (number of pairs). Above 1: worse than exact-likelihood EM "
                  "on the same data. Each method's pairs are the cells where it ran (table "
                  "under Published run): methods run on fewer cells are compared with EM on those "
                  "cells only.",
                  "", common.md_table(_headline(ratios)), "",
                  "Covariances, same construction:", "",
                  common.md_table(_headline(ratio_table(ok, "err_covariances"))), ""]
    lines += [_mnar_sentence(ok), ""]
    means_png = _figure(ok, out, "err_means", "max abs error, means", "sweep_means.png")
    rmse_png = _figure(ok, out, "rmse", "imputation RMSE", "sweep_rmse.png")
    lines += [f"![error of the means]({means_png})", "", f"![imputation RMSE]({rmse_png})", ""]
    ok = ok.assign(lpd_gap=ok["lpd_truth"] - ok["lpd"],
                   converged=ok["converged"].astype(float))
    summ = ok.groupby(["mechanism", "method"]).agg(
        err_means=("err_means", "mean"), err_cov=("err_covariances", "mean"),
        rmse=("rmse", "mean"), coverage90=("coverage", "mean"), crps=("crps", "mean"),
        lpd_gap=("lpd_gap", "median"), converged=("converged", "mean"),
        wall_s=("wall_s", "median"), fits=("wall_s", "size"),
    ).reset_index()
    cells = ok.groupby("method")[["K", "N"]].apply(
        lambda g: ", ".join(f"({k}, {n})" for k, n in sorted(set(zip(g["K"].astype(int),
                                                                    g["N"].astype(int),
                                                                    strict=True)))),
        include_groups=False)
    lines += ["## All metrics, pooled over rates and cells", "",
              "err_*: mean max-abs parameter error; rmse, coverage90 (nominal 0.90), crps: "
              "missing entries against the hidden values (peers have no interval; their CRPS "
              "is the absolute error of a point forecast); lpd_gap: median over fits of the "
              "held-out log density per row of the truth minus the method's (0 is perfect; a "
              "median because one fit whose component collapsed onto a few points has an "
              "unbounded gap); converged: the share of fits that met their own criterion (EM: gain "
              "per row below tol within max_iter; ADVI and NUTS: ppgmm's checks; a peer "
              "counts as converged); wall_s: median seconds.", "",
              "Each method is pooled over the cells it ran, and those differ (see Published "
              "run): compare methods with the paired ratios above, not across the rows of "
              "this table. (K, N) pooled per method: "
              + "; ".join(f"{m}: {c}" for m, c in cells.items()) + ".",
              "", common.md_table(summ), ""]
    lines += _convergence_section(ok)
    if len(notes):
        tally = notes.groupby(["method", "note"]).size().reset_index(name="count")
        lines += ["## Skipped or failed fits", "", common.md_table(tally), ""]
    return "\n".join(lines)


def _convergence_section(ok: pd.DataFrame) -> list[str]:
    """Per ppgmm method and (K, D, N): the share of fits that met their convergence criterion
    and the median error of the means of those that did and of those that did not."""
    own = ok[ok["method"].isin(list(common.METHODS))]
    if own.empty:
        return []
    # fits cached before their rows kept diagnostics have none: medians over those that do
    diag = [c for c in ("rhat_max", "ess_bulk_min", "divergences") if c in own]
    rows = []
    for (meth, k, d, n), g in own.groupby(["method", "K", "D", "N"]):
        conv = g["converged"].astype(bool)
        rows.append({"method": meth, "(K, D)": f"({k}, {d})", "N": n, "fits": len(g),
                     "converged": conv.mean(),
                     "err_means, converged": g.loc[conv, "err_means"].median(),
                     "err_means, not converged": g.loc[~conv, "err_means"].median(),
                     **{f"{c}, not converged": g.loc[~conv, c].median() for c in diag}})
    runs = "; ".join(f"{m}: {', '.join(f'{k}={v}' for k, v in opts.items() if k != 'progressbar')}"
                     for m, (_, _, opts) in common.METHODS.items())
    return ["## Convergence flags and accuracy", "",
            "Share of fits that met their own criterion (EM: gain per row below tol within "
            f"max_iter; ADVI: ppgmm's ELBO checks; NUTS: {common.NUTS_CRITERION}) and the "
            "median max abs error of the means of the fits that met it and of those that did not"
            + (", and the median largest R-hat, smallest bulk ESS and divergences of those that "
               "did not (over the fits whose rows keep them)" if diag else "") + ". "
            f"Run lengths here: {runs}. A flagged fit is reported, never dropped: the "
            "ratios above include it.", "", common.md_table(pd.DataFrame(rows)), ""]


def headline(df: pd.DataFrame, meta: dict) -> str:
    """Index entry: the peer/exact ratios of the means at 25% missing."""
    ok = df[df["note"].fillna("") == ""]
    r = ratio_table(ok)
    if r.empty:
        return "No results."
    mid = r[r["rate"] == sorted(set(r["rate"]))[len(set(r["rate"])) // 2]]
    def cell(g: pd.Series) -> str:
        err = f"±{g['mcse']:.2f}" if np.isfinite(g["mcse"]) else " (1 pair)"
        return f"{g['mechanism']} {g['ratio']:.2f}{err}"

    rows = [f"{m} ({int(mid[mid['method'] == m]['n'].sum())} pairs): "
            + ", ".join(cell(g) for _, g in mid[mid["method"] == m].iterrows())
            for m in sorted(set(mid["method"]))]
    return (f"Error of the means relative to exact EM (MLE) at {mid['rate'].iloc[0]:.0%} "
            "missing (geometric mean ratio ± MCSE; > 1 is worse than EM):\n\n- "
            + "\n- ".join(rows) + "\n\n" + _mnar_sentence(ok))
