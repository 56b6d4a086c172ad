"""One self-contained HTML report of a :class:`ppgmm.compare.Comparison`.

The file embeds its figures as base64 PNGs, carries its own CSS, and runs no script; a
Content-Security-Policy forbids loading anything from elsewhere, so it opens offline
and is safe to share. Every column name and piece of user text is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import re
import sys
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .backends import backend_options, kind

if TYPE_CHECKING:
    from .compare import Comparison

__all__ = ["write_report", "render_report"]

#: sections of the report, (anchor, title), in order
SECTIONS = (
    ("warnings", "Warnings"),
    ("data", "Data and missingness"),
    ("parameters", "Parameters"),
    ("agreement", "Agreement between backends"),
    ("forest", "Forest plots"),
    ("ellipses", "Fitted components"),
    ("imputations", "Imputations"),
    ("convergence", "Convergence"),
    ("model-comparison", "Model comparison across K"),
    ("reproduce", "Reproduce"),
)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table.tbl{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1em}
table.tbl th,table.tbl td{border:1px solid #ccc;padding:2px 6px;text-align:right}
table.tbl th{background:#f2f2f2}
img{max-width:100%;height:auto;display:block;margin:0.5em 0}
pre{background:#f6f6f6;padding:0.7em;overflow-x:auto;font-size:0.85em}
.note{color:#555;font-size:0.9em}.warn{color:#8a4b00}
nav a{margin-right:0.8em}.scroll{overflow-x:auto}
.badge{display:inline-block;padding:1px 7px;margin:2px 4px 2px 0;border-radius:3px;
font-size:0.85em;font-weight:600}.badge.ok{background:#dff0d8;color:#2b542c}
.badge.bad{background:#f2dede;color:#a94442}
tr.unconverged td{color:#999;background:#f7f7f7}
"""

#: appended to a fit's label wherever it did not converge (tables' headers, legends)
UNCONVERGED = " (NOT converged)"

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


# --------------------------------------------------------------------------- helpers


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _pyplot():
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _img(fig, alt: str) -> str:
    """PNG of ``fig`` as an embedded <img>; the figure is closed."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, index: bool = False, grey: Any = None) -> str:
    """``df`` as an HTML table; rows where ``grey`` is true get the class "unconverged"."""
    table = df.to_html(
        index=index, escape=True, border=0, classes="tbl", na_rep="",
        float_format=lambda v: f"{v:.4g}",
    )
    if grey is not None and np.any(grey):
        head, sep, body = table.partition("<tbody>")
        rows = body.split("<tr>")
        for i, g in enumerate(np.asarray(grey, bool)):
            if g:
                rows[i + 1] = '<tr class="unconverged">' + rows[i + 1]
            else:
                rows[i + 1] = "<tr>" + rows[i + 1]
        table = head + sep + rows[0] + "".join(rows[1:])
    return f'<div class="scroll">{table}</div>'


def _bad(cmp: Comparison, labels: Any) -> np.ndarray:
    """For each label, whether it names a fit that did not converge."""
    return np.array([str(b) in cmp.fits and not cmp.fits[str(b)].converged for b in labels],
                    dtype=bool)


def _mark(cmp: Comparison, label: str) -> str:
    """The label, with :data:`UNCONVERGED` appended for a fit that did not converge."""
    return label + (UNCONVERGED if _bad(cmp, [label])[0] else "")


def _fmt(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


def _colors(labels: list[str]) -> dict[str, str]:
    return {b: _COLORS[i % len(_COLORS)] for i, b in enumerate(labels)}


# --------------------------------------------------------------------------- tables


def parameter_table(cmp: Comparison) -> pd.DataFrame:
    """Wide parameter table: one row per entry, one column per backend ("point [HDI]").

    A dagger marks an HDI that does not contain the EM estimate.
    """
    s = cmp.summary()

    def entry(r) -> str:
        idx = [str(r["component"])] + [
            str(r[c]) for c in ("feature", "feature_") if r[c] is not None and r[c] == r[c]
        ]
        return f"{r['parameter']}[{', '.join(idx)}]"

    s = s.assign(entry=s.apply(entry, axis=1))

    def cell(r) -> str:
        out = _fmt(r["point"])
        if np.isfinite(r["hdi_lower"]):
            out += f" [{_fmt(r['hdi_lower'])}, {_fmt(r['hdi_upper'])}]"
        if r["em_in_hdi"] is False:
            out += " \u2020"
        return out

    s = s.assign(cell=s.apply(cell, axis=1))
    order = list(dict.fromkeys(s["entry"]))
    wide = s.pivot(index="entry", columns="backend", values="cell")
    wide = wide.loc[order, [b for b in cmp.compared if b in wide.columns]]
    if "truth" in s:
        wide.insert(0, "truth", s.drop_duplicates("entry").set_index("entry")["truth"]
                    .loc[order].map(_fmt))
    wide.columns.name = None
    wide = wide.rename(columns={b: _mark(cmp, b) for b in cmp.compared})
    return wide.reset_index().rename(columns={"entry": "parameter"})


def agreement_table(cmp: Comparison) -> pd.DataFrame | None:
    """Share of entries per parameter whose HDI contains the EM estimate, per backend."""
    if not cmp.em_in_hdi.data_vars:
        return None
    s = cmp.summary().dropna(subset=["em_in_hdi"])
    s = s.assign(inside=s["em_in_hdi"].astype(bool))
    g = s.groupby(["backend", "parameter"], sort=False)["inside"]
    out = g.agg(["sum", "count"]).reset_index()
    out["share inside"] = out["sum"] / out["count"]
    return out.rename(columns={"sum": "EM inside HDI", "count": "entries"})


def data_tables(cmp: Comparison) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-feature summary and the missingness patterns of the reference fit's data."""
    md = cmp.fits[cmp.reference].data
    x = pd.DataFrame(md.values, columns=md.feature_names)
    feats = pd.DataFrame({
        "feature": md.feature_names,
        "observed": md.observed.sum(0),
        "missing": (~md.observed).sum(0),
        "% missing": 100 * (~md.observed).mean(0),
        "mean": x.mean().values, "sd": x.std().values,
        "min": x.min().values, "max": x.max().values,
    })
    counts = np.bincount(md.pattern_index, minlength=md.n_patterns)
    pats = pd.DataFrame(
        np.where(md.patterns, "observed", "MISSING"), columns=md.feature_names
    )
    pats.insert(0, "rows", counts)
    return feats, pats


def convergence_table(cmp: Comparison) -> pd.DataFrame:
    """:attr:`Comparison.convergence` turned on its side: one column per fit."""
    conv = cmp.convergence.set_index("label")
    out = conv.T.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                     else _fmt(v) if isinstance(v, float) else str(v))
    out.columns.name = None
    out.index.name = "diagnostic"
    out = out.rename(columns={b: _mark(cmp, b) for b in cmp.fits})
    return out.reset_index()


# --------------------------------------------------------------------------- figures


def _fig_missingness(cmp: Comparison) -> str:
    plt = _pyplot()
    md = cmp.fits[cmp.reference].data
    order = md.order
    fig, ax = plt.subplots(figsize=(min(1.2 * md.d + 2, 10), 3.2))
    ax.imshow(~md.observed[order], aspect="auto", cmap="Greys", interpolation="nearest",
              vmin=0, vmax=1)
    ax.set_xticks(range(md.d), md.feature_names, rotation=30, ha="right")
    ax.set_ylabel("row (grouped by pattern)")
    ax.set_title("missing entries (black)")
    return _img(fig, "missingness matrix")


def _fig_forest(cmp: Comparison) -> str:
    """Weights, then the means of each feature on its own axis (features differ in scale)."""
    import arviz as az

    plt = _pyplot()
    labels = cmp.compared
    data = [cmp.posteriors[b][["weights", "means"]] for b in labels]
    feats = [str(f) for f in data[0]["feature"].values]
    k = data[0].sizes["component"]
    panels = [("weights", None)] + [("means", f) for f in feats]
    ncol = min(3, len(panels))
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, squeeze=False,
                             figsize=(4.2 * ncol, nrow * (0.9 + 0.3 * k * len(labels))))
    # a feature's means are drawn for the fits on the reference's scale of that feature
    scale = cmp.fits[cmp.reference].transformed_columns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ax, (var, feat) in zip(axes.flat, panels, strict=False):
            keep = [i for i, b in enumerate(labels) if feat is None
                    or cmp.fits[b].transformed_columns.get(feat) == scale.get(feat)]
            sub = [data[i] if feat is None else data[i].sel(feature=[feat]) for i in keep]
            az.plot_forest(sub, model_names=[_mark(cmp, labels[i]) for i in keep],
                           var_names=[var], combined=True, hdi_prob=cmp.hdi_prob, ax=ax,
                           legend=ax is axes.flat[0], textsize=9)
            shown = f"{scale[feat]}({feat})" if feat in scale else feat
            ax.set_title(var if feat is None else f"means: {shown}", fontsize=10)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"point and {cmp.hdi_prob:.0%} HDI per backend")
    fig.tight_layout()
    return _img(fig, "forest plots of weights and means")


def _ellipse(ax, mean: np.ndarray, cov: np.ndarray, color: str, ls: str, label: str | None):
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0, None)
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    width, height = 2 * 2 * np.sqrt(vals[1]), 2 * 2 * np.sqrt(vals[0])
    ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, color=color, ls=ls,
                         lw=1.6, label=label))
    ax.plot(*mean, marker="+", color=color, ms=8)


def _fig_ellipses(cmp: Comparison, max_features: int = 6) -> str:
    plt = _pyplot()
    md = cmp.fits[cmp.reference].data
    d = min(md.d, max_features)
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    if not pairs:
        pairs = [(0, 0)]
    ncol = min(3, len(pairs))
    nrow = int(np.ceil(len(pairs) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.8 * nrow), squeeze=False)
    colors = _colors(cmp.compared)
    styles = ("-", "--", ":", "-.")
    # the reference's scale: a transformed fit's ellipses live on its transformed columns,
    # and fits under other transforms (other scales) are left out
    ct = cmp.fits[cmp.reference].transform
    scale = cmp.fits[cmp.reference].transformed_columns
    shown = [b for b in cmp.compared if cmp.fits[b].transformed_columns == scale]
    x = md.values if ct is None else ct.forward(md.values)
    names = [f"{scale[f]}({f})" if f in scale else f for f in md.feature_names]
    for ax, (i, j) in zip(axes.flat, pairs, strict=False):
        if i == j:  # one feature: histogram and component densities
            v = x[:, i][~np.isnan(x[:, i])]
            ax.hist(v, bins=30, density=True, color="0.8")
            grid = np.linspace(v.min(), v.max(), 200)
            for n, b in enumerate(shown):
                p = cmp.parameters.sel(backend=b, stat="point")
                dens = sum(
                    float(w) * np.exp(-0.5 * (grid - m) ** 2 / s) / np.sqrt(2 * np.pi * s)
                    for w, m, s in zip(p["weights"].values, p["means"].values[:, 0],
                                       p["covariances"].values[:, 0, 0], strict=True)
                )
                ax.plot(grid, dens, color=colors[b], ls=styles[n % 4], label=_mark(cmp, b))
            ax.set_xlabel(names[i])
            continue
        both = ~np.isnan(x[:, i]) & ~np.isnan(x[:, j])
        ax.scatter(x[both, i], x[both, j], s=6, color="0.6", label="observed pairs")
        for n, b in enumerate(shown):
            p = cmp.parameters.sel(backend=b, stat="point")
            mu, cov = p["means"].values, p["covariances"].values
            for k in range(mu.shape[0]):
                _ellipse(ax, mu[k, [i, j]], cov[k][np.ix_([i, j], [i, j])], colors[b],
                         styles[n % 4], _mark(cmp, b) if k == 0 else None)
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
        ax.autoscale_view()
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="best")
    fig.suptitle("component ellipses (2 sd) per backend, on rows with both features observed")
    fig.tight_layout()
    return _img(fig, "component ellipses on pairwise scatter plots")


def _fig_imputations(cmp: Comparison) -> str | None:
    plt = _pyplot()
    imp = cmp.imputations
    if imp.sizes.get("missing", 0) == 0:
        return None
    feats = list(dict.fromkeys(str(f) for f in imp["missing_feature"].values))
    fig, axes = plt.subplots(len(feats), 1, figsize=(10, 2.8 * len(feats)), squeeze=False)
    labels = [str(b) for b in imp["backend"].values]
    colors = _colors(labels[:-1])
    colors[imp.attrs.get("baseline", labels[-1])] = "0.5"
    width = 0.7 / len(labels)
    ref = cmp.reference if cmp.reference in labels else labels[0]
    for ax, f in zip(axes[:, 0], feats, strict=True):
        sel = np.flatnonzero(imp["missing_feature"].values == f)
        key = (imp["truth"] if "truth" in imp else imp["mean"].sel(backend=ref)).values[sel]
        sel = sel[np.argsort(key, kind="stable")]
        pos = np.arange(len(sel))
        for n, b in enumerate(labels):
            m = imp["mean"].sel(backend=b).values[sel]
            lo = imp["lower"].sel(backend=b).values[sel]
            hi = imp["upper"].sel(backend=b).values[sel]
            err = np.clip(np.vstack([m - lo, hi - m]), 0, None) if np.isfinite(lo).all() else None
            ax.errorbar(pos + (n - (len(labels) - 1) / 2) * width, m, yerr=err, fmt="o", ms=3,
                        lw=0.8, color=colors[b], label=_mark(cmp, b))
        if "truth" in imp:
            ax.plot(pos, imp["truth"].values[sel], "kx", ms=5, label="truth")
        ax.set_ylabel(f)
        ax.set_xlabel("missing entry (sorted by " + ("truth" if "truth" in imp else ref) + ")")
    axes[0, 0].legend(fontsize=8, ncol=len(labels) + 1, loc="upper left")
    fig.suptitle(f"imputed E[x_mis | x_obs] with {cmp.interval_prob:.0%} predictive intervals")
    fig.tight_layout()
    return _img(fig, "imputation comparison")


def _fig_traces(cmp: Comparison) -> list[str]:
    import arviz as az

    plt = _pyplot()
    out = []
    traces = []
    for b, f in cmp.fits.items():
        stats = f.idata.sample_stats if "sample_stats" in f.idata.groups() else None
        if stats is None:
            continue
        for name, title in (("objective", "EM objective"), ("elbo", "ADVI ELBO")):
            if name in stats:
                traces.append((b, title, np.asarray(stats[name].values, float)))
    if traces:
        fig, axes = plt.subplots(1, len(traces), figsize=(4.5 * len(traces), 3.2),
                                 squeeze=False)
        for ax, (b, title, y) in zip(axes[0], traces, strict=True):
            ax.plot(np.arange(len(y)), y, lw=0.6 if title.startswith("ADVI") else 1.2,
                    color="#9ecae1" if title.startswith("ADVI") else "#1f77b4")
            if title.startswith("ADVI") and len(y) >= 50:
                w = max(5, len(y) // 50)
                smooth = np.convolve(y, np.ones(w) / w, mode="valid")
                ax.plot(np.arange(w - 1, len(y)), smooth, color="#08519c", lw=1.4,
                        label=f"running mean ({w})")
                ax.legend(fontsize=8, loc="lower right")
            ax.set_title(f"{_mark(cmp, b)}: {title}")
            ax.set_xlabel("iteration")
            if title.startswith("ADVI") and len(y) > 20:
                lo = np.nanpercentile(y[len(y) // 10:], 1)
                ax.set_ylim(lo, np.nanmax(y) + 0.05 * (np.nanmax(y) - lo + 1e-12))
        fig.tight_layout()
        out.append(_img(fig, "objective and ELBO traces"))
    for b, post in cmp.posteriors.items():
        if kind(cmp.fits[b].backend) != "mcmc" or post.sizes["chain"] < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = az.plot_rank(post, var_names=["weights"], figsize=(8, 2.6))
        for ax in np.ravel(axes):
            ax.set_title(f"{_mark(cmp, b)}: " + " ".join(ax.get_title().split()), fontsize=11)
        fig = np.ravel(axes)[0].figure
        out.append(_img(fig, f"{b} rank plots"))
    return out


# --------------------------------------------------------------------------- sections


def _section(anchor: str, body: str) -> str:
    title = dict(SECTIONS)[anchor]
    return f'<section id="{anchor}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>\n'


def _figure(render, *args) -> str:
    """A figure, or a plain-words note when it could not be drawn."""
    try:
        out = render(*args)
    except Exception as err:  # a figure must never cost the user the whole report
        return f'<p class="warn">This figure could not be drawn: {_esc(err)}</p>'
    if out is None:
        return ""
    return "\n".join(out) if isinstance(out, list) else out


def _var(label: str) -> str:
    return "fit_" + (re.sub(r"\W+", "_", label).strip("_") or "x")


def _reproduce(cmp: Comparison) -> str:
    ems = [b for b, f in cmp.fits.items() if kind(f.backend) == "optimum"]
    parts = []
    for b, f in cmp.fits.items():
        a = f.attrs
        note = ""
        if "options" in a:  # the options as given (fits made by ppgmm.fit)
            opts = json.loads(a["options"])
            objects = json.loads(a.get("options_objects", "[]"))
            if "reference" in objects and ems and b not in ems:
                opts["reference"] = _Code(_var(ems[0]))
                objects.remove("reference")
            if objects:
                note = "\n# also given as objects, not shown here: " + ", ".join(objects)
        else:  # read back from the run's attrs
            try:
                allowed = backend_options(f.backend)
            except Exception:  # backend not known or importable here: show the attrs only
                allowed = set()
            opts = {k: v.item() if isinstance(v, np.generic) else v
                    for k, v in a.items() if k in allowed and k not in ("reference", "init")}
            if opts.get("uncertainty") == "none":
                opts["uncertainty"] = None
        seed = a.get("seed")
        seed = None if seed in (None, -1) else int(seed)
        args = "".join(f", {k}={v!r}" for k, v in opts.items())
        code = (
            "import ppgmm\n"
            f"spec = ppgmm.GMM.from_json({a.get('spec', '')!r})\n"
            f"{_var(b)} = ppgmm.fit(spec, data, backend={f.backend!r}, seed={seed!r}{args})"
            + note
        )
        settings = {k: v for k, v in a.items() if k not in ("versions", "warnings", "spec")}
        settings_df = pd.DataFrame({"setting": list(settings),
                                    "value": [str(v) for v in settings.values()]})
        try:
            versions = json.loads(a.get("versions", "{}"))
        except (TypeError, ValueError):
            versions = {"versions": a.get("versions")}
        vers = ", ".join(f"{k} {v}" for k, v in versions.items())
        parts.append(
            f"<h3>{_esc(b)}</h3>\n<pre>{_esc(code)}</pre>\n"
            f'<p class="note">Versions: {_esc(vers)}</p>\n'
            f"<details><summary>All settings</summary>{_table(settings_df)}</details>"
        )
    head = (
        '<p class="note"><code>data</code> is the data as fitted; every fit stores it, so '
        "<code>ppgmm.load(path).data.values</code> gives it back from a saved fit (NaN where "
        "missing). Fits run in the order shown.</p>"
    )
    return head + "\n".join(parts)


class _Code(str):
    """Text shown as code in the reproduction snippet (its repr is itself)."""

    def __repr__(self) -> str:
        return str(self)


def _header(cmp: Comparison, title: str) -> list[str]:
    md = cmp.fits[cmp.reference].data
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fits_df = pd.DataFrame({
        "label": list(cmp.fits),
        "backend": [f.backend for f in cmp.fits.values()],
        "model": [repr(f.spec) for f in cmp.fits.values()],
        "status": ["converged" if f.converged else "NOT converged" for f in cmp.fits.values()],
    })
    badges = "".join(
        f'<span class="badge ok">{_esc(b)}: converged</span>' if f.converged else
        f'<span class="badge bad">{_esc(b)}: NOT converged</span>'
        for b, f in cmp.fits.items()
    )
    transformed = {b: f.transformed_columns for b, f in cmp.fits.items() if f.transform}
    scale = ("" if not transformed else " Transforms: " + "; ".join(
        f"{b}: " + ", ".join(f"{c} ({t})" for c, t in m.items()) for b, m in transformed.items())
        + ". Those fits' parameters (means, covariances, ellipses) are on the transformed "
        "scale; their imputations, predictive draws and log-likelihoods (with the Jacobian) "
        "are on the data's scale.")
    return [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="note">Made by ppgmm on {_esc(now)}. Reference labelling: '
        f"<b>{_esc(cmp.reference)}</b>. {md.n} rows, {md.d} features, "
        f"{int((~md.observed).sum())} missing entries.{_esc(scale)}</p>",
        f'<p class="badges">{badges}</p>',
        "<nav>" + "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in SECTIONS) + "</nav>",
        _table(fits_df, grey=_bad(cmp, fits_df["label"])),
    ]


def _data_section(cmp: Comparison) -> str:
    feats, pats = data_tables(cmp)
    dropped = cmp.dropped_rows
    return (f"{_table(feats)}\n<h3>Dropped rows</h3>\n"
            + (f"<p>{len(dropped)} row(s) with no observed entry were dropped at fit time (they "
               "carry no information about the mixture); their positions in the input, "
               f"counting from 0: {_esc(', '.join(map(str, dropped)))}.</p>" if dropped else
               '<p class="note">None: every row has at least one observed entry.</p>')
            + f"\n<h3>Missingness patterns</h3>\n{_table(pats)}\n"
            + _figure(_fig_missingness, cmp))


def _parameters_section(cmp: Comparison) -> str:
    tidy = cmp.summary()
    return (
        f'<p class="note">Point estimate (EM estimate or posterior mean) and '
        f"{cmp.hdi_prob:.0%} HDI per backend, on the labelling of {_esc(cmp.reference)}. "
        "\u2020: the EM estimate lies outside this HDI. Covariances: upper triangle.</p>"
        + _table(parameter_table(cmp))
        + "<details><summary>Tidy table (also <code>cmp.summary()</code>)</summary>"
        + _table(tidy, grey=~tidy["converged"].to_numpy(bool)) + "</details>"
    )


def _agreement_section(cmp: Comparison) -> str:
    agree = agreement_table(cmp)
    dist = cmp.relative_distance.to_pandas()
    dist.index.name, dist.columns.name = None, None
    dist = dist.rename(index=lambda b: _mark(cmp, b), columns=lambda b: _mark(cmp, b))
    left_out = [b for b in cmp.compared if not cmp.fits[b].converged]
    excluded = (
        f'<p class="warn">Left out of these checks because they did not converge: '
        f"{_esc(', '.join(left_out))} (an unconverged sampler's HDIs can span everything and "
        "contain any value). Pass <code>include_unconverged=True</code> to "
        "<code>ppgmm.compare</code> to include them.</p>"
        if left_out and not cmp.include_unconverged else ""
    )
    return (
        excluded
        + ("<h3>EM estimate inside each HDI</h3>" + _table(agree) if agree is not None else
           '<p class="note">No EM fit with another converged backend that has draws: nothing '
           "to check.</p>")
        + _verdict_section(cmp)
        + "<h3>Distance between the fitted mixture densities</h3>"
        + '<p class="note">Relative L2 distance ||f - g|| / sqrt(||f||² + ||g||²), closed '
        "form: 0 for identical densities, 1 for densities that do not overlap; it does not "
        "change when the data are shifted or rescaled. The plain L2 distance is "
        "<code>cmp.distance</code>.</p>"
        + _table(dist, index=True)
    )


def _verdict_section(cmp: Comparison) -> str:
    """What "different" means: distance to the reference against EM's bootstrap spread."""
    ag = cmp.agreement
    if ag is None or ag.empty:
        return ""
    if cmp.agreement_threshold is None:
        how = ('<p class="note">No threshold: fit EM with <code>uncertainty="bootstrap"</code> '
               "and pass it to <code>ppgmm.compare</code> to judge whether two fits differ by "
               "more than EM's own sampling spread.</p>")
    else:
        n = len(cmp.bootstrap_distances)
        how = (f'<p class="note">Two fits are called different when the relative L2 distance '
               f"between their densities exceeds {cmp.agreement_threshold:.4g}: the 95th "
               f"percentile of the distances between EM's {n} bootstrap refits and its "
               "estimate, i.e. more than EM itself moves when the data are resampled.</p>")
    return ("<h3>Are the fits different?</h3>" + how
            + _table(ag, grey=_bad(cmp, ag["backend"]) | _bad(cmp, ag["reference"])))


def _imputations_section(cmp: Comparison) -> str:
    entries = cmp.imputations[["mean", "lower", "upper"]].to_dataframe().reset_index()
    entries = entries.drop(columns=["missing"])
    wide = entries.pivot_table(index=["missing_obs", "missing_feature"], columns="backend",
                               values="mean", sort=False)
    wide.columns.name = None
    if cmp.imputation_scores is not None:
        sc = cmp.imputation_scores
        scores = _table(sc, grey=_bad(cmp, sc["backend"]))
    elif cmp.imputations.sizes.get("missing", 0) == 0:
        scores = '<p class="note">The data have no missing entries: nothing to score.</p>'
    else:
        scores = ('<p class="note">No truth given: pass <code>truth=</code> (e.g. from '
                  "<code>ppgmm.simulate</code>) to score RMSE, coverage and CRPS.</p>")
    if cmp.out_of_range is not None:
        scores += ('<h3>Imputations outside the observed range</h3><p class="warn">Imputed '
                   "means beyond the smallest or largest observed value of their column: a "
                   "bounded variable (a count, a concentration) is better fitted on a "
                   "transformed scale, where imputations and draws cannot leave its support"
                   f"{_suggestion(cmp.out_of_range)}.</p>"
                   + _table(cmp.out_of_range, grey=_bad(cmp, cmp.out_of_range["backend"])))
    return (scores + _figure(_fig_imputations, cmp)
            + "<details><summary>E[x_mis | x_obs] per missing entry</summary>"
            + _table(wide.reset_index()) + "</details>")


def _suggestion(out_of_range: pd.DataFrame) -> str:
    """``: ppgmm.GMM(..., transform={...})`` for the columns with a suggested transform."""
    pairs = dict(zip(out_of_range["feature"], out_of_range["suggest"], strict=True))
    pairs = {f: t for f, t in pairs.items() if t}
    return (f": <code>ppgmm.GMM(..., transform={_esc(repr(pairs))})</code>, or "
            f"<code>{_esc(' '.join(f'--transform {f}={t}' for f, t in pairs.items()))}"
            "</code> on the command line" if pairs else "")


def _convergence_section(cmp: Comparison) -> str:
    return (
        _table(convergence_table(cmp)) + _figure(_fig_traces, cmp)
        + ('<p class="note">Rank plots: histograms of each chain\'s draws ranked among all '
           "chains; flat when the chains sample the same distribution.</p>"
           if any(kind(f.backend) == "mcmc" for f in cmp.fits.values()) else "")
    )


def _model_comparison_section(cmp: Comparison) -> str:
    mc = cmp.model_comparison
    how = ('<p class="note">BIC: smaller is better; LOO elpd: larger is better; rank 0 is the '
           "best fit of its backend.</p>")
    return (how + _table(mc, grey=_bad(cmp, mc["label"])) if mc is not None else
            '<p class="note">One fit per backend: pass fits with several K to compare them '
            "(BIC for EM, LOO for ADVI and NUTS).</p>")


def _warnings_section(cmp: Comparison) -> str:
    return ("<ul>" + "".join(f'<li class="warn">{_esc(w)}</li>' for w in cmp.warnings)
            + "</ul>" if cmp.warnings else "<p>No warnings.</p>")


#: section anchor -> its builder, in the order of SECTIONS
_BUILDERS = {
    "warnings": _warnings_section,
    "data": _data_section,
    "parameters": _parameters_section,
    "agreement": _agreement_section,
    "forest": lambda cmp: _figure(_fig_forest, cmp),
    "ellipses": lambda cmp: _figure(_fig_ellipses, cmp),
    "imputations": _imputations_section,
    "convergence": _convergence_section,
    "model-comparison": _model_comparison_section,
    "reproduce": lambda cmp: _reproduce(cmp),
}


def render_report(cmp: Comparison, title: str = "ppgmm comparison") -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    body = _header(cmp, title) + [_section(a, _BUILDERS[a](cmp)) for a, _ in SECTIONS]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )


def write_report(cmp: Comparison, path: str, title: str = "ppgmm comparison") -> str:
    """Write the report of ``cmp`` to ``path`` (one HTML file, opens offline).

    Parameters
    ----------
    cmp : Comparison
    path : str or path-like
    title : str, default "ppgmm comparison"

    Returns
    -------
    str
        The path written.
    """
    plt = _pyplot()
    with plt.rc_context({"text.parse_math": False}):
        text = render_report(cmp, title)
    from .io import atomic_write

    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    return str(path)
