r"""Study 2, calibration: simulation-based calibration and frequentist interval coverage.

**SBC** (Talts et al. 2018, arXiv:1804.06788). Under an explicit proper prior (K = 2, D = 2:
:math:`\kappa = 0.1`, :math:`\mu_P = 0`, :math:`\nu = D + 4`, :math:`\Lambda = (\nu - D - 1) I`,
so :math:`E\Sigma_k = I`; weights flat Dirichlet) each replication draws parameters from the
prior, N = 100 rows from them with 20% of the entries missing completely at random, fits NUTS
and both ADVIs under that prior, and records the rank of each true quantity among L = 99
thinned draws. Quantities are label-invariant (components ordered by their first mean
coordinate): the weight, both mean coordinates and the log variance of the first feature of
each component, and the value of the first three missing entries. A calibrated method gives
uniform ranks; a chi-square test over 10 bins judges it. An approximation too narrow (the
known failure of mean-field ADVI) would show as a U-shaped histogram, one biased as a
sloped one.

**Coverage.** Fixed true parameters (K = 2, D = 2, well separated), N = 200 rows, 20% MCAR;
per replication, central 50/90/95% intervals of the same quantities from NUTS, both ADVIs and
EM with 100 bootstrap refits, and of every missing entry. Error bars come from the number of
replications in the cache: binomial for each parameter quantity (one 0/1 outcome per
replication), and the standard error across replications of the per-data-set fraction for
the pooled groups (parameters, missing entries), whose outcomes within a data set are
correlated. Bayesian intervals are calibrated on average over the prior, which SBC tests;
at one fixed parameter value a correct posterior can cover a little more or less than
nominal, so coverage here measures, it does not certify.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import ppgmm
from studies import common

K, D = 2, 2
PRIOR = ppgmm.Prior(shrinkage=0.1, mean=(0.0,) * D, dof=D + 4.0, scale=3.0 * np.eye(D))
METHODS = ("NUTS", "ADVI mean-field", "ADVI full-rank")
COVERAGE_METHODS = (*METHODS, "EM bootstrap")
LEVELS = (0.5, 0.9, 0.95)
N_RANKS = 99
N_MISSING_SCORED = 3
FULL_SIZE = "SBC 200 replications x 3 methods; coverage 200 replications x 4 methods"
QUANTITIES = ["w[1]", "w[2]", "mu[1,0]", "mu[1,1]", "mu[2,0]", "mu[2,1]", "log s2[1,0]",
              "log s2[2,0]"]


def tasks(quick: bool = False, reps: int | None = None,
          methods: list[str] | None = None) -> list[dict]:
    """SBC and coverage tasks, one per (replication, method)."""
    if quick:
        return [{"kind": "sbc", "rep": 0, "method": "ADVI mean-field", "quick": True},
                {"kind": "coverage", "rep": 0, "method": "EM bootstrap", "quick": True}]
    reps = reps or 200
    out = []  # replications outermost: a run stopped early covers every method
    for rep, (kind, meths) in itertools.product(
            range(reps), (("sbc", METHODS), ("coverage", COVERAGE_METHODS))):
        for m in meths:
            if methods is None or m in methods:
                out.append({"kind": kind, "rep": rep, "method": m, "quick": False})
    return out


DESIGN = common.Design(tasks, FULL_SIZE, ("kind", "method"))


def prior_draw(rng: np.random.Generator) -> ppgmm.Params:
    """Parameters from the study's prior (scipy.stats, independent of ppgmm)."""
    w = rng.dirichlet(np.ones(K))
    cov = stats.invwishart(df=PRIOR.dof, scale=np.asarray(PRIOR.scale)).rvs(K, random_state=rng)
    mu = np.array([rng.multivariate_normal(np.asarray(PRIOR.mean), c / PRIOR.shrinkage)
                   for c in cov])
    return ppgmm.Params(w, mu, cov)


FIXED = ppgmm.Params(np.array([0.4, 0.6]), np.array([[-2.0, 0.0], [2.0, 1.0]]),
                     np.array([[[1.0, 0.3], [0.3, 0.8]], [[0.7, -0.2], [-0.2, 1.2]]]))


def quantities(p: ppgmm.Params) -> np.ndarray:
    """Label-invariant quantities: components ordered by their first mean coordinate."""
    o = np.argsort(p.means[:, 0])
    return np.concatenate([p.weights[o], p.means[o].ravel(), np.log(p.covariances[o, 0, 0])])


def _backend(method: str, quick: bool) -> tuple[str, dict]:
    """The backend and options of ``method`` in this study."""
    if method == "EM bootstrap":
        return "em", {"n_init": 3, "uncertainty": "bootstrap",
                      "n_bootstrap": 20 if quick else 100}
    _, backend, options = common.METHODS[method]
    options = {**options, **(common.QUICK_OPTIONS.get(method, {}) if quick else {})}
    if backend == "advi":
        options["draws"] = 400
    return backend, options


def draws_per_fit(method: str, quick: bool = False) -> int:
    """S, the draws each interval is read from: posterior draws (NUTS: chains x draws),
    ADVI draws, or bootstrap refits, with one predictive draw of the missing entries each."""
    backend, options = _backend(method, quick)
    if backend == "em":
        return options["n_bootstrap"]
    if backend == "nuts":
        return options["draws"] * options["chains"]
    return options["draws"]


def reference_level(level: float, s: int) -> float:
    r"""Expected coverage of the central ``level`` interval read by ``np.quantile`` from
    ``s`` independent draws of the exact distribution: :math:`\mathrm{level}\,(S-1)/(S+1)`.

    The quantile at p sits at order-statistic position :math:`(S-1)p + 1` (linear
    interpolation), and the CDF at the j-th of S order statistics has mean
    :math:`j/(S+1)`, linear in j, so the mean of the CDF at the interpolated quantile is
    :math:`((S-1)p + 1)/(S+1)`; the interval's coverage is the difference at the two ends.
    """
    return level * (s - 1) / (s + 1)


def _fit(task: dict, data: np.ndarray, seed: int) -> ppgmm.Fit:
    backend, options = _backend(task["method"], task["quick"])
    spec = ppgmm.GMM(K, prior=PRIOR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ppgmm.fit(spec, data, backend=backend, seed=seed, **options)


def _draws(fit: ppgmm.Fit) -> tuple[np.ndarray, np.ndarray]:
    """Quantities (S, Q) and missing-entry draws (S, M) of a fit, all draws."""
    sets = common.draws_of(fit, max_draws=100_000)
    q = np.array([quantities(p) for p in sets])
    xm = fit.idata.posterior_predictive["x_missing"].stack(sample=("chain", "draw"))
    return q, xm.transpose("sample", "missing").values


def _hidden(fit: ppgmm.Fit, truth: ppgmm.Truth) -> np.ndarray:
    """True values of the missing entries, in the order of the fit's ``missing`` dim."""
    miss = fit.idata.posterior_predictive["x_missing"]["missing"]
    rows = miss["missing_obs"].values
    names = fit.feature_names
    cols = [names.index(str(f)) for f in miss["missing_feature"].values]
    return truth.values[np.asarray(rows, dtype=int), cols]


def run_task(task: dict) -> list[dict]:
    """One SBC or coverage replication of one method."""
    theta_seed, data_seed, fit_seed = common.stream_seeds(
        task["kind"], task["rep"], streams=("parameters", "data", "fit"))
    if task["kind"] == "sbc":
        truth_params = prior_draw(np.random.default_rng(theta_seed))
    else:
        truth_params = FIXED
    n = 100 if task["kind"] == "sbc" else 200
    data, truth = ppgmm.simulate(truth_params, n=60 if task["quick"] else n, missing=0.2,
                                 seed=data_seed)
    base = {"kind": task["kind"], "rep": task["rep"], "method": task["method"]}
    try:
        fit = _fit(task, data, fit_seed)
    except Exception as err:  # recorded, not hidden
        return [{**base, "note": f"failed: {type(err).__name__}: {err}"[:300]}]
    q, xm = _draws(fit)
    hidden = _hidden(fit, truth)
    tq = quantities(truth.params)
    rows = []
    if task["kind"] == "sbc":
        take = np.linspace(0, len(q) - 1, N_RANKS).astype(int)
        m = min(N_MISSING_SCORED, xm.shape[1])
        names = QUANTITIES + [f"x_mis[{j}]" for j in range(m)]
        values = np.concatenate([q[take], xm[take, :m]], axis=1)
        truths = np.concatenate([tq, hidden[:m]])
        for name, col, t in zip(names, values.T, truths, strict=True):
            rows.append({**base, "quantity": name, "rank": int((col < t).sum()),
                         "n_draws": N_RANKS, "note": ""})
        return rows
    for level in LEVELS:
        lo, hi = np.quantile(q, [(1 - level) / 2, (1 + level) / 2], axis=0)
        for name, a, b, t in zip(QUANTITIES, lo, hi, tq, strict=True):
            rows.append({**base, "quantity": name, "level": level,
                         "covered": float(a <= t <= b), "note": ""})
        lo, hi = np.quantile(xm, [(1 - level) / 2, (1 + level) / 2], axis=0)
        rows.append({**base, "quantity": "missing entries", "level": level,
                     "covered": float(np.mean((lo <= hidden) & (hidden <= hi))), "note": ""})
    return rows


# --------------------------------------------------------------------------- page


def sbc_tests(df: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Chi-square test of uniform ranks per method and quantity."""
    sbc = df[(df["kind"] == "sbc") & (df["note"].fillna("") == "")]
    rows = []
    for (meth, qn), g in sbc.groupby(["method", "quantity"]):
        b = int(np.clip(len(g) // 4, 2, bins))  # at least 4 expected per bin
        counts = np.bincount(g["rank"].astype(int) * b // (N_RANKS + 1), minlength=b)
        p = stats.chisquare(counts).pvalue if len(g) >= 8 else np.nan
        rows.append({"method": meth, "quantity": qn, "replications": len(g), "bins": b,
                     "chi2_p": p})
    return pd.DataFrame(rows)


#: a quantity whose ranks mirror another's (with K = 2, w[2] = 1 - w[1]): one test, not two
MIRRORED = ("w[2]",)


def _distinct(tests: pd.DataFrame) -> pd.DataFrame:
    """The tests that ran, :data:`MIRRORED` quantities left out."""
    return tests[~tests["quantity"].isin(MIRRORED)].dropna(subset=["chi2_p"])


def _n_distinct(tests: pd.DataFrame) -> int:
    """The most quantities tested for one method, mirrored ones counted once."""
    kept = _distinct(tests)
    return int(kept.groupby("method").size().max()) if len(kept) else 0


def _family_p(tests: pd.DataFrame) -> pd.Series:
    """Per method, the Bonferroni p-value of "every quantity's ranks are uniform": the
    smallest p-value times the number of distinct quantities tested, at most 1."""
    g = _distinct(tests).groupby("method")["chi2_p"]
    return (g.min() * g.size()).clip(upper=1.0)


def coverage_table(df: pd.DataFrame, quick: bool = False) -> pd.DataFrame:
    """Coverage per method, level and quantity group, with its standard error and the
    coverage an exact interval read from the method's S draws has (:func:`reference_level`)."""
    cov = df[(df["kind"] == "coverage") & (df["note"].fillna("") == "")].copy()
    if cov.empty:
        return pd.DataFrame()
    cov["group"] = np.where(cov["quantity"] == "missing entries", "missing entries",
                            "parameters")
    rows = []
    for (meth, level, group), g in cov.groupby(["method", "level", "group"]):
        # entries of one data set are correlated: the error bar is the standard error of
        # the per-replication fractions, not a binomial one over entries
        per_rep = g.groupby("rep")["covered"].mean()
        p, se = per_rep.mean(), common.mcse(per_rep)
        s = draws_per_fit(meth, quick)
        rows.append({"method": meth, "level": level, "group": group, "coverage": p,
                     "se": se, "replications": int(g["rep"].nunique()), "draws": s,
                     "reference": reference_level(level, s)})
    return pd.DataFrame(rows)


def per_quantity(df: pd.DataFrame, level: float = 0.9) -> pd.DataFrame:
    """Coverage of each parameter quantity at ``level`` ± its binomial standard error."""
    cov = df[(df["kind"] == "coverage") & (df["note"].fillna("") == "")
             & (df["quantity"] != "missing entries") & (df.get("level") == level)]
    if cov.empty:
        return pd.DataFrame()
    g = cov.groupby(["quantity", "method"])["covered"].agg(["mean", "size"]).reset_index()
    g["cell"] = [f"{p:.2f} ± {np.sqrt(p * (1 - p) / n):.2f}" for p, n in
                 zip(g["mean"], g["size"], strict=True)]
    wide = g.pivot(index="quantity", columns="method", values="cell").reset_index()
    wide.columns.name = None
    return wide


def _rank_figure(df: pd.DataFrame, out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sbc = df[(df["kind"] == "sbc") & (df["note"].fillna("") == "")]
    if sbc.empty:
        return None
    meths = sorted(set(sbc["method"]))
    qs = [q for q in QUANTITIES + [f"x_mis[{j}]" for j in range(N_MISSING_SCORED)]
          if q in set(sbc["quantity"])]
    fig, axes = plt.subplots(len(meths), len(qs), figsize=(1.6 * len(qs), 1.6 * len(meths)),
                             sharex=True, squeeze=False)
    for i, m in enumerate(meths):
        for j, qn in enumerate(qs):
            r = sbc[(sbc["method"] == m) & (sbc["quantity"] == qn)]["rank"]
            ax = axes[i][j]
            ax.hist(r, bins=10, range=(0, N_RANKS + 1), color="C0")
            n = len(r)
            if n:  # 99% band of a bin count under uniformity
                lo, hi = stats.binom.ppf([0.005, 0.995], n, 0.1)
                ax.axhspan(lo, hi, color="grey", alpha=0.3)
            ax.set_yticks([])
            if i == 0:
                ax.set_title(qn, fontsize=7)
            if j == 0:
                ax.set_ylabel(m, fontsize=7)
    return common.save_figure(fig, out, "calibration_ranks.png", dpi=100)


def _flags(table: pd.DataFrame) -> str:
    """Plain words on which intervals miss their reference level by more than 2 standard
    errors."""
    low = table[table["coverage"] < table["reference"] - 2 * table["se"]]
    high = table[table["coverage"] > table["reference"] + 2 * table["se"]]

    def say(t: pd.DataFrame) -> str:
        return "; ".join(f"{r.method} {r.group} at {r.level:.0%} ({r.coverage:.2f})"
                         for r in t.itertuples()) or "none"

    return (f"**Too narrow** (coverage more than 2 se below the reference): {say(low)}. "
            f"**Too wide** (more than 2 se above): {say(high)}.")


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    t = table.assign(cell=[f"{c:.3f} ± {s:.3f}" for c, s in
                           zip(table["coverage"], table["se"], strict=True)])
    wide = t.pivot_table(index=["group", "method"], columns="level", values="cell",
                         aggfunc="first").reset_index()
    wide.columns = [c if isinstance(c, str) else f"{c:.0%} nominal" for c in wide.columns]
    reps = t.groupby("method")["replications"].max()
    wide["replications"] = wide["method"].map(reps)
    wide["draws S"] = wide["method"].map(t.groupby("method")["draws"].max())
    return wide


def _coverage_figure(table: pd.DataFrame, out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if table.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, group in zip(axes, ("parameters", "missing entries"), strict=True):
        g = table[table["group"] == group]
        for i, (m, h) in enumerate(g.groupby("method")):
            ax.errorbar(h["level"] + 0.006 * (i - 1.5), h["coverage"], yerr=2 * h["se"],
                        marker="o", capsize=3, ls="", label=m)
        ax.plot([0.45, 1], [0.45, 1], color="grey", lw=1)
        ax.set_title(group)
        ax.set_xlabel("nominal level")
    axes[0].set_ylabel("coverage (± 2 se)")
    axes[1].legend(fontsize=7)
    return common.save_figure(fig, out, "calibration_coverage.png")


def render(df: pd.DataFrame, meta: dict, out: Path) -> str:
    """The study page from the cached rows."""
    out = Path(out)
    lines = common.page_head("Calibration: SBC and interval coverage", "calibration", __doc__,
                             meta, df, DESIGN, "ppgmm study calibration [--reps R]")
    if df.empty:
        return "\n".join(lines)
    tests = sbc_tests(df)
    if not tests.empty:
        wide = tests.pivot_table(index="quantity", columns="method", values="chi2_p").reset_index()
        wide.columns.name = None
        n = tests.groupby("method")["replications"].max().to_dict()
        m = _n_distinct(tests)
        lines += ["## SBC rank uniformity", "",
                  "Chi-square p-values of the ranks (10 bins, fewer below 40 replications: "
                  "at least 4 expected per bin; none below 8); small p = not uniform = "
                  f"miscalibrated. Replications: {n}.", "", common.md_table(wide), "",
                  f"With {m} distinct quantities per method (w[2] = 1 - w[1] "
                  "ranks as its mirror image), a calibrated method's smallest p-value falls "
                  f"below 0.05 in up to {1 - 0.95 ** m:.0%} of studies; the "
                  "family-wise (Bonferroni) p-value, the smallest p times that number, is what "
                  "to hold against 0.05: "
                  + "; ".join(f"{m} {p:.2g}" for m, p in _family_p(tests).items()) + ".", ""]
        fig = _rank_figure(df, out)
        if fig:
            lines += ["Rank histograms (grey: 99% band of a bin count under uniformity):", "",
                      f"![SBC ranks]({fig})", ""]
    table = coverage_table(df, common.was_quick(meta))
    if not table.empty:
        refs = "; ".join(
            f"S = {s}: " + ", ".join(f"{reference_level(lv, s):.3f}" for lv in LEVELS)
            for s in sorted(set(table["draws"])))
        lines += ["## Frequentist coverage", "",
                  "Fraction of replications whose central interval holds the true value "
                  "(parameters: the quantities above; missing entries: every missing entry), as "
                  "the mean over replications of the per-data-set fraction ± its standard error "
                  "across replications.", "",
                  common.md_table(_wide(table)), "",
                  "Each interval is read from a fit's S draws (`np.quantile`), so even draws "
                  "from the exact distribution cover a little less than nominal: on average "
                  "level x (S - 1)/(S + 1) for independent draws (for 50/90/95%: "
                  f"{refs}). The flags below judge each method against that reference; "
                  "autocorrelated NUTS draws would sit slightly below it.", "",
                  _flags(table), "",
                  "Per parameter quantity, 90% intervals, ± binomial standard error:", "",
                  common.md_table(per_quantity(df)), ""]
        fig = _coverage_figure(table, out)
        if fig:
            lines += [f"![coverage]({fig})", ""]
    notes = df[df["note"].fillna("") != ""]
    if len(notes):
        lines += ["## Failed fits", "",
                  common.md_table(notes.groupby(["method", "note"]).size().reset_index(
                      name="count")), ""]
    return "\n".join(lines)


def headline(df: pd.DataFrame, meta: dict) -> str:
    """Index entry: coverage of 90% intervals per method, worst SBC p-value per method."""
    table = coverage_table(df, common.was_quick(meta))
    parts = []
    if not table.empty:
        t = table[table["level"] == 0.9]
        parts.append("Coverage of nominal 90% intervals (parameters / missing entries): "
                     + "; ".join(
            f"{m} " + " / ".join(f"{v:.3f}±{s:.3f}" for v, s in zip(g["coverage"], g["se"],
                                                                   strict=True))
            for m, g in t.sort_values("group", ascending=False).groupby("method")) + ".")
    tests = sbc_tests(df)
    if not tests.empty:
        parts.append("SBC rank uniformity, family-wise (Bonferroni) p-value over "
                     f"{_n_distinct(tests)} distinct quantities; small = miscalibrated: "
                     + "; ".join(f"{m} {p:.2g}" for m, p in _family_p(tests).items()) + ".")
    return "\n\n".join(parts) or "No results."
