r"""Study 3, agreement as N grows: MAP-EM, its bootstrap, and the NUTS posterior.

Fixed true parameters (K = 2, D = 2, those of the calibration study's coverage part), 20% of
the entries missing completely at random, N from 100 to 100,000. Per replication and N: the
MAP-EM estimate with 100 bootstrap refits, and NUTS under the same (default) prior. Per
parameter type (weights, means, covariances), over its entries:

- ``z``: :math:`|\hat\theta_{MAP} - E[\theta \mid x]| / sd[\theta \mid x]`, the distance
  between the EM estimate and the posterior mean in posterior standard deviations (the
  Bernstein-von Mises theorem says it shrinks like :math:`N^{-1/2}`);
- ``sd ratio``: bootstrap sd / posterior sd (tends to 1 when both are right).

Labels: the posterior and the bootstrap draws are put on the EM estimate's labelling.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import ppgmm
from ppgmm.numerics.alignment import align_to
from studies import common
from studies.calibration import FIXED

SIZES = (100, 300, 1000, 3000, 10_000, 30_000, 100_000)
FULL_SIZE = "N in {100, 300, 1k, 3k, 10k, 30k, 100k} x 20 replications, EM bootstrap + NUTS"
TYPES = ("weights", "means", "covariances")


def tasks(quick: bool = False, reps: int | None = None,
          methods: list[str] | None = None) -> list[dict]:
    """One task per (N, replication)."""
    if quick:
        return [{"N": 100, "rep": 0, "quick": True}]
    return [{"N": n, "rep": r, "quick": False}
            for r, n in itertools.product(range(reps or 20), SIZES)]


DESIGN = common.Design(tasks, FULL_SIZE, (), {"N": lambda t: t["N"]})


def _sd(fit: ppgmm.Fit) -> ppgmm.Params:
    post = fit.idata.posterior
    return ppgmm.Params(*(post[v].std(("chain", "draw")).values for v in TYPES))


def _on(params: ppgmm.Params, sd: ppgmm.Params, ref: ppgmm.Params):
    """Point and sd of a fit on ``ref``'s labelling."""
    _, perm = align_to(params, ref)
    perm = np.asarray(perm)
    return (ppgmm.Params(params.weights[perm], params.means[perm], params.covariances[perm]),
            ppgmm.Params(sd.weights[perm], sd.means[perm], sd.covariances[perm]))


def run_task(task: dict) -> list[dict]:
    """EM with bootstrap and NUTS on one data set."""
    data_seed, s = common.stream_seeds("agreement", task["N"], task["rep"])
    data, _ = ppgmm.simulate(FIXED, n=task["N"], missing=0.2, seed=data_seed)
    quick = task["quick"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em, em_wall = common.fit_method("EM (MAP)", 2, data, s, uncertainty="bootstrap",
                                        n_bootstrap=20 if quick else 100)
        nuts, nuts_wall = common.fit_method("NUTS", 2, data, s, quick=quick)
    em_point = common.point_params(em)
    # EM's stored draws are the bootstrap refits; its point is the MAP estimate
    post_mean, post_sd = _on(common.point_params(nuts), _sd(nuts), em_point)
    _, boot_sd = _on(em_point, _sd(em), em_point)
    rows = []
    for i, name in enumerate(TYPES):
        z = np.abs(em_point[i] - post_mean[i]) / post_sd[i]
        ratio = boot_sd[i] / post_sd[i]
        if name == "covariances":  # the upper triangle: symmetric entries once
            iu = np.triu_indices(em_point.means.shape[1])
            z, ratio = z[:, iu[0], iu[1]], ratio[:, iu[0], iu[1]]
        rows.append({"N": task["N"], "rep": task["rep"], "type": name,
                     "z_median": float(np.median(z)), "z_max": float(np.max(z)),
                     "sd_ratio_median": float(np.median(ratio)),
                     "em_wall_s": em_wall, "nuts_wall_s": nuts_wall,
                     "nuts_converged": bool(nuts.converged), "note": ""})
    return rows


def _figure(df: pd.DataFrame, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for t, g in df.groupby("type"):
        s = g.groupby("N").agg(z=("z_median", "mean"), zse=("z_median", common.mcse),
                               r=("sd_ratio_median", "mean"),
                               rse=("sd_ratio_median", common.mcse))
        axes[0].errorbar(s.index, s["z"], yerr=s["zse"], marker="o", capsize=3, label=t)
        axes[1].errorbar(s.index, s["r"], yerr=s["rse"], marker="o", capsize=3, label=t)
    axes[0].set_ylabel("|MAP - posterior mean| / posterior sd")
    axes[1].set_ylabel("bootstrap sd / posterior sd")
    axes[1].axhline(1, color="grey", lw=1)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("N")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    return common.save_figure(fig, out, "agreement.png")


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Means over replications per N and parameter type."""
    ok = df[df["note"].fillna("") == ""]
    return ok.groupby(["N", "type"]).agg(
        z_median=("z_median", "mean"), z_max=("z_max", "mean"),
        sd_ratio=("sd_ratio_median", "mean"), sd_ratio_se=("sd_ratio_median", common.mcse),
        reps=("rep", "nunique"), nuts_converged=("nuts_converged", "mean"),
        em_s=("em_wall_s", "median"), nuts_s=("nuts_wall_s", "median")).reset_index()


def render(df: pd.DataFrame, meta: dict, out: Path) -> str:
    """The study page from the cached rows."""
    out = Path(out)
    lines = common.page_head("Agreement of MAP-EM and NUTS as N grows", "agreement", __doc__,
                             meta, df, DESIGN, "ppgmm study agreement [--reps R]")
    if df.empty:
        return "\n".join(lines)
    lines += ["## Results", "",
              "Per N and parameter type, means over replications of: the median and max over "
              "entries of z; the median bootstrap/posterior sd ratio (± MCSE); the share of "
              "NUTS runs that met their convergence criteria; median wall seconds.", "",
              common.md_table(table(df)), "", f"![agreement]({_figure(df, out)})", ""]
    return "\n".join(lines)


def headline(df: pd.DataFrame, meta: dict) -> str:
    """Index entry: z and sd ratio at the smallest and largest N run."""
    t = table(df)
    if t.empty:
        return "No results."
    parts = []
    for n in sorted({t["N"].min(), t["N"].max()}):
        g = t[t["N"] == n]
        parts.append(f"N = {n:,}: " + "; ".join(
            f"{r.type} z {r.z_median:.2f}, sd ratio {r.sd_ratio:.2f}" for r in g.itertuples()))
    return ("MAP-EM vs the NUTS posterior mean in posterior sds (z, median over entries) and "
            "bootstrap sd / posterior sd:\n\n- " + "\n- ".join(parts))
