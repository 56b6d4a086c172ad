r"""``ppgmm.compare``: what the backends agree and disagree on, side by side.

Everything is read from each fit's InferenceData by dimension name. Parameters are put on
one labelling (the reference fit's, the EM fit by default) with
:func:`ppgmm.numerics.alignment.align_to`, then summarised per backend; imputations are
compared entry by entry and, when the complete data are known, scored against them with the
kernels of :mod:`ppgmm.numerics.scores` (L2 distance between mixtures, CRPS).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtri

from .backends import kind
from .exceptions import DataError, PpgmmError
from .fit import Fit, params_dataset
from .numerics import diagnostics
from .numerics.alignment import align_to, count_relabelled
from .numerics.patterns import missing_marginals
from .numerics.scores import (
    crps_ensemble,
    crps_mapped_normal_mixture,
    crps_normal,
    crps_normal_mixture,
    l2_distance,
    normal_mixture_quantile,
)
from .spec import PARAM_NAMES, Draws, Params, as_params
from .transforms import suggest_transform

__all__ = ["Comparison", "compare", "convergence_row"]

STATS = ("point", "sd", "hdi_lower", "hdi_upper")


# --------------------------------------------------------------------------- result


@dataclass(eq=False)
class Comparison:
    r"""Fits from several backends, side by side.

    Attributes
    ----------
    fits : dict of str to Fit
        The fits, by label (the backend name, or ``"em K=3"`` when one backend has several).
    reference : str
        Label of the fit whose component labelling every other fit was put on.
    parameters : xarray.Dataset
        ``weights`` (backend, stat, component), ``means`` (backend, stat, component,
        feature), ``covariances`` (backend, stat, component, feature, feature_), with
        ``stat`` one of point, sd, hdi_lower, hdi_upper; for the fits with the reference's
        number of components.
    em_in_hdi : xarray.Dataset
        Whether the EM estimate lies inside each other backend's HDI (backend, component,
        ...); empty without an EM fit or without another backend with draws. Fits that did
        not converge are left out (an unconverged sampler's HDIs can span everything and
        "agree" with anything) unless ``include_unconverged=True``.
    distance : xarray.DataArray
        L2 distance between fitted mixtures (their point estimates), dims (backend, backend_).
    relative_distance : xarray.DataArray
        The same divided by :math:`(\|f\|^2 + \|g\|^2)^{1/2}`: in [0, 1] (1 for densities
        that do not overlap), unchanged by shifting, rescaling or rotating the data.
    imputations : xarray.Dataset
        Per missing entry (dim ``missing``, coords ``missing_obs``, ``missing_feature``) and
        backend: ``mean`` (E[x_mis | x_obs]), ``lower``, ``upper`` (central interval of the
        predictive draws), ``crps`` and ``truth`` when the truth is known. The backend
        ``"column mean"`` is the baseline: observed column mean, normal interval with the
        observed column standard deviation.
    imputation_scores : pandas.DataFrame or None
        With ``truth``: RMSE, interval coverage and CRPS per backend and feature (feature
        ``"all"`` pools the entries).
    convergence : pandas.DataFrame
        One row per fit: converged (the backend's own criterion: R-hat, ESS and divergences
        for NUTS, ELBO and parameter checks for ADVI, ``max_iter`` for EM), wall time, EM
        objective trace (iterations, monotone), ADVI ELBO, R-hat, ESS bulk/tail,
        divergences, relabelled draws, the permutation applied to put the fit on the
        reference's labels.
    model_comparison : pandas.DataFrame or None
        When a backend has several fits (different K or covariance): BIC for EM, LOO
        (``arviz.compare``) for the Bayesian backends, with a ``converged`` column. Fits that
        did not converge are ranked after every converged fit of their backend, whatever
        their criterion, and carry a note.
    posteriors : dict of str to xarray.Dataset
        Each fit's parameter draws (chain, draw, ...) on the reference's labelling.
    truth_params : xarray.Dataset or None
        The true parameters, relabelled to the reference, when ``truth`` carries them.
    warnings : list of str
        Everything worth a reader's attention, in plain words, each prefixed by its fit.
    hdi_prob, interval_prob : float
    agreement : pandas.DataFrame or None
        What "different" means: per compared fit, its relative L2 distance :math:`r` to the
        reference fit beside a threshold :math:`t`, and a verdict ("agrees" when
        :math:`r \le t`, "differs" otherwise, "not judged" for a fit that did not
        converge or without a threshold). :math:`t` is the 95th percentile of the relative
        L2 distances between an EM bootstrap fit's refits and its estimate: how far EM
        itself moves when the data are resampled.
    agreement_threshold : float or None
        :math:`t`; None without an EM fit with ``uncertainty="bootstrap"`` of the
        reference's K.
    bootstrap_distances : ndarray or None
        The relative L2 distances :math:`t` is the 95th percentile of.
    out_of_range : pandas.DataFrame or None
        Per backend and feature, how many imputed means fall outside the observed range of
        their column (a sign that the normal model does not suit a bounded variable), how
        far (``imputed_min``, ``imputed_max``), the same for the stored predictive draws
        (``n_draws_outside`` of ``n_draws``, ``draws_min``, ``draws_max``), and the
        transform to try (``suggest``: "log" for a positive column, else empty). Columns a
        fit transformed (``GMM(transform=...)``) are left out for that fit.
    include_unconverged : bool
        Whether unconverged fits were kept in the agreement checks.
    """

    fits: dict[str, Fit]
    reference: str
    parameters: xr.Dataset
    em_in_hdi: xr.Dataset
    distance: xr.DataArray
    relative_distance: xr.DataArray
    imputations: xr.Dataset
    imputation_scores: pd.DataFrame | None
    convergence: pd.DataFrame
    model_comparison: pd.DataFrame | None
    posteriors: dict[str, xr.Dataset]
    truth_params: xr.Dataset | None = None
    warnings: list[str] = field(default_factory=list)
    hdi_prob: float = 0.94
    interval_prob: float = 0.94
    agreement: pd.DataFrame | None = None
    agreement_threshold: float | None = None
    bootstrap_distances: np.ndarray | None = None
    out_of_range: pd.DataFrame | None = None
    include_unconverged: bool = False

    @property
    def converged(self) -> dict[str, bool]:
        """Whether each fit met its backend's convergence criterion, by label."""
        return {b: f.converged for b, f in self.fits.items()}

    @property
    def dropped_rows(self) -> list[int]:
        """Positions, in the input, of the rows dropped at fit time for having no observed
        entry (the reference fit's; every compared fit has the same data)."""
        return list(self.fits[self.reference].data.dropped)

    @property
    def labels(self) -> list[str]:
        """Labels of all fits, in the order given."""
        return list(self.fits)

    @property
    def compared(self) -> list[str]:
        """Labels of the fits whose parameters are compared (the reference's K)."""
        return [str(b) for b in self.parameters["backend"].values]

    def __repr__(self) -> str:
        return (
            f"<ppgmm.Comparison fits={self.labels} reference={self.reference!r} "
            f"missing={self.imputations.sizes.get('missing', 0)}>"
        )

    def summary(self) -> pd.DataFrame:
        """Tidy parameter table: one row per parameter entry and backend.

        Columns: parameter, component, feature, feature_ (covariances: upper triangle
        only), backend, point, sd, hdi_lower, hdi_upper, em_in_hdi (nullable boolean:
        whether the EM estimate lies in this backend's HDI), converged (the backend's own
        convergence verdict) and truth when known.
        """
        out = _tidy(self.parameters, self.em_in_hdi, self.truth_params)
        out.insert(out.columns.get_loc("em_in_hdi") + 1, "converged",
                   out["backend"].map(self.converged).astype(bool))
        return out

    def report(self, path: str, title: str = "ppgmm comparison") -> str:
        """Write one self-contained HTML report to ``path`` and return the path.

        See :func:`ppgmm.report.write_report`.
        """
        from .report import write_report

        return write_report(self, path, title=title)


# --------------------------------------------------------------------------- helpers


#: the label of the imputation baseline (observed column means) among the fits' labels
BASELINE = "column mean"


def _labels(fits: Any) -> dict[str, Fit]:
    """Fits by label: the backend name, made unique with K, transforms, covariance, then a
    counter."""
    if isinstance(fits, Fit):
        fits = [fits]
    if isinstance(fits, Mapping):
        given = list(fits.values())
    elif isinstance(fits, Sequence) and not isinstance(fits, str):
        given = list(fits)
    else:
        given = []
    bad = sorted({type(f).__name__ for f in given if not isinstance(f, Fit)})
    if not given or bad:
        raise PpgmmError(
            "fits should be a non-empty list (or dict) of ppgmm.Fit objects from ppgmm.fit or "
            f"ppgmm.load, but got {type(fits).__name__}"
            + (f" holding {bad}" if bad else "")
        )
    if isinstance(fits, Mapping):
        labels = [str(k) for k in fits]
        twice = sorted({k for k in labels if labels.count(k) > 1})
        if twice:
            raise PpgmmError(f"the keys of fits give the label(s) {twice} more than once "
                             "(labels are the keys as text); give each fit its own key")
        if BASELINE in labels:
            raise PpgmmError(f"{BASELINE!r} names the imputation baseline in a comparison; "
                             "give that fit another key")
        return dict(zip(labels, fits.values(), strict=True))
    backends = [f.backend for f in given]
    out: dict[str, Fit] = {}
    for f, b in zip(given, backends, strict=True):
        label = b if backends.count(b) == 1 else f"{b} K={f.spec.n_components}"
        if backends.count(b) > 1 and f.transformed_columns:
            label += " " + ", ".join(f"{t}({c})" for c, t in f.transformed_columns.items())
        if label in out and out[label].spec.covariance != f.spec.covariance:
            label = f"{label} ({f.spec.covariance})"
        base, i = label, 2
        while label in out:
            label, i = f"{base} #{i}", i + 1
        out[label] = f
    return out


def _refuse_chunked(fits: dict[str, Fit]) -> None:
    """A clear error for fits of dask data: their per-row results are lazy and not kept."""
    chunked = [label for label, f in fits.items() if f.chunked]
    if chunked:
        raise DataError(
            f"compare() reads each fit's data, imputations and draws in memory, but "
            f"{chunked} {'was' if len(chunked) == 1 else 'were'} fitted on dask data (lazy "
            "per-row results); compare fits of an in-memory sample instead (e.g. xs = "
            "x[:100_000].compute(), then ppgmm.fit(spec, xs, backend=...) for each backend), "
            "and read a dask fit's estimate with fit.point() and its criteria with fit.bic()"
        )


def _check_same_data(fits: dict[str, Fit]) -> None:
    """Fits compared side by side must come from one data set (values, NaN, row labels)."""
    (first, f0), *rest = fits.items()
    x0 = f0.idata.observed_data["x"]
    for label, f in rest:
        x = f.idata.observed_data["x"]
        if f.feature_names != f0.feature_names:
            why = f"features {f.feature_names} vs {f0.feature_names}"
        elif x.shape != x0.shape:
            why = f"{x.shape[0]} rows vs {x0.shape[0]}"
        elif not (np.array_equal(x.values, x0.values, equal_nan=True)
                  and np.array_equal(x["obs"].values, x0["obs"].values)):
            why = "the same shape but different values or row labels"
        else:
            continue
        raise DataError(
            f"fits are compared on one data set, but {label!r} and {first!r} were fitted on "
            f"different data ({why}); refit them on the same data"
        )


def _n_draws(ds: xr.Dataset) -> int:
    return int(ds.sizes["chain"] * ds.sizes["draw"])


def _relabel(ds: xr.Dataset, perm: np.ndarray) -> xr.Dataset:
    return ds.isel(component=perm).assign_coords(component=np.arange(len(perm)))


def _param_stats(post: xr.Dataset, point: xr.Dataset, hdi_prob: float) -> xr.Dataset:
    """point / sd / HDI of each parameter, stacked along a ``stat`` dim."""
    import arviz as az

    if _n_draws(post) >= 2:
        sd = post.std(("chain", "draw"), ddof=1)
        hdi = az.hdi(post, hdi_prob=hdi_prob)
        lo, hi = hdi.sel(hdi="lower", drop=True), hdi.sel(hdi="higher", drop=True)
    else:
        sd = lo = hi = xr.full_like(point, np.nan)
    return xr.concat([point, sd, lo, hi], dim=pd.Index(list(STATS), name="stat"))


def _truth_array(truth: Any, fit: Fit) -> np.ndarray:
    """Complete values (n, d) matching the fit's rows and features."""
    md = fit.data
    values = getattr(truth, "values", truth)
    if isinstance(truth, pd.DataFrame):
        if set(md.feature_names) <= {str(c) for c in truth.columns}:
            truth = truth.rename(columns=str)[md.feature_names]
        if set(md.obs_names.tolist()) <= set(truth.index.tolist()):
            truth = truth.loc[md.obs_names]
        values = truth.to_numpy(dtype=float, na_value=np.nan)
    elif isinstance(truth, xr.DataArray):
        values = truth.values
    elif callable(values):  # e.g. a dict's .values
        values = truth
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise DataError(
            "truth should be a ppgmm.Truth (from ppgmm.simulate) or the complete data as an "
            f"array or DataFrame of numbers, but got {type(truth).__name__}"
        ) from None
    if arr.ndim != 2 or arr.shape[1] != md.d:
        raise DataError(
            f"truth should have the shape of the data ({md.n}, {md.d}), but got {arr.shape}"
        )
    if arr.shape[0] != md.n:
        if md.dropped and arr.shape[0] == md.n + len(md.dropped):
            arr = np.delete(arr, list(md.dropped), axis=0)  # rows dropped at fit time
        else:
            raise DataError(
                f"truth should have one row per data row ({md.n}"
                + (f", or {md.n + len(md.dropped)} with the rows dropped for having no "
                   "observed entry" if md.dropped else "")
                + f"), but got {arr.shape[0]}"
            )
    rows, cols = md.missing_index
    n_nan = int(np.isnan(arr[rows, cols]).sum())
    if n_nan:
        raise DataError(
            f"truth should be complete at the missing entries, but {n_nan} of them are NaN; "
            "pass the complete data"
        )
    return arr


def _warnings_of(fit: Fit) -> list[str]:
    try:
        return [str(w) for w in json.loads(fit.attrs.get("warnings", "[]"))]
    except (TypeError, ValueError):
        return [str(fit.attrs["warnings"])]


# --------------------------------------------------------------------------- sections


def _parameters(fits: dict[str, Fit], ref: str, hdi_prob: float):
    ref_fit = fits[ref]
    k = ref_fit.spec.n_components
    posteriors: dict[str, xr.Dataset] = {}
    perms: dict[str, np.ndarray] = {}
    stats: dict[str, xr.Dataset] = {}
    for label, f in fits.items():
        post = f.idata.posterior[list(PARAM_NAMES)]
        point = f.point()
        if f.spec.n_components == k and label != ref:
            _, perm = align_to(f.params, ref_fit.params)
        else:
            perm = np.arange(f.spec.n_components)
        perms[label] = perm
        posteriors[label] = _relabel(post, perm)
        if f.spec.n_components != k:
            continue
        stats[label] = _param_stats(posteriors[label], _relabel(point, perm), hdi_prob)
    params = xr.concat(list(stats.values()), dim=pd.Index(list(stats), name="backend"))
    return params, posteriors, perms


def _em_in_hdi(params: xr.Dataset, fits: dict[str, Fit], ref: str, include_unconverged: bool
               ) -> xr.Dataset:
    """Whether an EM estimate (the reference's when it is one, else the first) lies in each
    other fit's HDI, for the fits on that estimate's scale."""
    labels = [str(b) for b in params["backend"].values
              if include_unconverged or fits[str(b)].converged]
    em = sorted((b for b in labels if kind(fits[b].backend) == "optimum"), key=lambda b: b != ref)
    if not em:
        return xr.Dataset()
    others = [
        b for b in labels
        if kind(fits[b].backend) != "optimum" and bool(np.isfinite(params["weights"].sel(
            backend=b, stat="hdi_lower")).all())
        and fits[b].transformed_columns == fits[em[0]].transformed_columns
    ]
    if not others:
        return xr.Dataset()
    est = params.sel(backend=em[0], stat="point", drop=True)
    sub = params.sel(backend=others)
    lo, hi = sub.sel(stat="hdi_lower", drop=True), sub.sel(stat="hdi_upper", drop=True)
    out = (lo <= est) & (est <= hi)
    out.attrs["em"] = em[0]
    return out


def _bootstrap_distances(fits: dict[str, Fit], ref: str) -> tuple[str, np.ndarray] | None:
    """Relative L2 distances between an EM bootstrap fit's refits and its own estimate."""
    k = fits[ref].spec.n_components
    for label, f in fits.items():
        post = f.idata.posterior
        if (kind(f.backend) != "optimum" or f.spec.n_components != k or _n_draws(post) < 2
                or (not f.converged and label != ref)):
            continue
        draws = Draws.from_dataset(post[list(PARAM_NAMES)]).flat()
        est = f.params
        dist = np.array([
            l2_distance(est, Params(w, m, c), relative=True)
            for w, m, c in zip(draws.weights, draws.means, draws.covariances, strict=True)
        ])
        return label, dist[np.isfinite(dist)]
    return None


def _agreement(fits: dict[str, Fit], ref: str, compared: list[str], rel: xr.DataArray,
               boot: tuple[str, np.ndarray] | None, include_unconverged: bool
               ) -> tuple[pd.DataFrame, float | None]:
    """Each compared fit's relative L2 distance to the reference against EM's own spread."""
    t = float(np.quantile(boot[1], 0.95)) if boot is not None and len(boot[1]) else None
    rows = []
    for b in compared:
        if b == ref:
            continue
        r = float(rel.sel(backend=b, backend_=ref))
        ok = fits[b].converged and fits[ref].converged
        if fits[b].transformed_columns != fits[ref].transformed_columns:
            # densities on different scales: their distance measures the transform
            verdict = "not judged: fitted on a different scale (transform)"
        elif not ok and not include_unconverged:
            verdict = "not judged: did not converge"
        elif t is None:
            verdict = "not judged: no EM bootstrap fit to set the threshold"
        else:
            verdict = "agrees" if r <= t else "differs"
        rows.append({"backend": b, "reference": ref, "converged": fits[b].converged,
                     "relative_l2": r, "threshold": np.nan if t is None else t,
                     "verdict": verdict})
    cols = ["backend", "reference", "converged", "relative_l2", "threshold", "verdict"]
    return pd.DataFrame(rows, columns=cols), t


def _out_of_range(imp: xr.Dataset, md: Any, fits: dict[str, Fit]) -> pd.DataFrame | None:
    """Imputed means outside the observed range of their column, per backend and feature
    (columns a fit transformed onto their support are left out: they cannot leave it)."""
    if imp.sizes.get("missing", 0) == 0:
        return None
    lo, hi = np.nanmin(md.values, axis=0), np.nanmax(md.values, axis=0)
    pos = {f: j for j, f in enumerate(md.feature_names)}
    feat = np.asarray([str(f) for f in imp["missing_feature"].values])
    j = np.array([pos[f] for f in feat])
    rows = []
    for b in imp["backend"].values:
        m = imp["mean"].sel(backend=b).values
        outside = (m < lo[j]) | (m > hi[j])
        fit = fits.get(str(b))
        done = set() if fit is None else set(fit.transformed_columns)
        sims = np.empty((0, len(feat)))
        if fit is not None and "posterior_predictive" in fit.idata.groups():
            x = fit.idata.posterior_predictive["x_missing"].transpose("chain", "draw", "missing")
            sims = x.values.reshape(-1, x.sizes["missing"])
        for f in dict.fromkeys(feat):
            sel = feat == f
            if outside[sel].any() and f not in done:
                d = sims[:, sel].ravel()
                lo_f, hi_f = lo[pos[f]], hi[pos[f]]
                rows.append({"backend": str(b), "feature": f, "n_missing": int(sel.sum()),
                             "n_outside": int(outside[sel].sum()),
                             "observed_min": float(lo[pos[f]]),
                             "observed_max": float(hi[pos[f]]),
                             "imputed_min": float(m[sel].min()),
                             "imputed_max": float(m[sel].max()),
                             "n_draws": int(d.size),
                             "n_draws_outside": int(((d < lo_f) | (d > hi_f)).sum()),
                             "draws_min": float(d.min()) if d.size else np.nan,
                             "draws_max": float(d.max()) if d.size else np.nan,
                             "suggest": suggest_transform(md.values[:, pos[f]]) or ""})
    return pd.DataFrame(rows) if rows else None


def _scale_notes(fits: dict[str, Fit], out_of_range: pd.DataFrame | None) -> list[str]:
    """Warnings about scales: fits under different transforms, imputations out of range."""
    notes = []
    scales = {json.dumps(f.transformed_columns) for f in fits.values()}
    if len(scales) > 1:
        notes.append("fits with different transforms: their parameters are on different "
                     "scales, so the parameter tables, L2 distances and agreement verdicts "
                     "compare unlike things; compare imputations and log-likelihoods (BIC, "
                     "LOO, which include the Jacobian) instead.")
    for r in [] if out_of_range is None else out_of_range.itertuples():
        fix = (f"fit it on the {r.suggest} scale, transform={{{r.feature!r}: {r.suggest!r}}}"
               if r.suggest else "a bounded variable may need a transform (transform=)")
        draws = (f", and {r.n_draws_outside} of its {r.n_draws} predictive draws (from "
                 f"{r.draws_min:.4g} to {r.draws_max:.4g})" if r.n_draws else "")
        notes.append(f"{r.backend}: {r.n_outside} of {r.n_missing} imputed {r.feature} "
                     f"values (from {r.imputed_min:.4g} to {r.imputed_max:.4g}){draws} fall "
                     f"outside its observed range [{r.observed_min:.4g}, {r.observed_max:.4g}]; "
                     f"{fix}.")
    return notes


def _distance(fits: dict[str, Fit], labels: list[str], relative: bool) -> xr.DataArray:
    n = len(labels)
    dist = np.full((n, n), np.nan)
    for i, a in enumerate(labels):
        for j, b in enumerate(labels[i:], start=i):
            dist[i, j] = dist[j, i] = 0.0 if i == j else l2_distance(
                fits[a].params, fits[b].params, relative=relative
            )
    what = ("relative L2 distance ||f - g|| / sqrt(||f||^2 + ||g||^2)" if relative
            else "L2 distance")
    return xr.DataArray(
        dist, dims=("backend", "backend_"), coords={"backend": labels, "backend_": labels},
        name="relative_l2_distance" if relative else "l2_distance",
        attrs={"description": f"{what} between fitted mixture densities (point estimates)"},
    )


def _imputations(fits: dict[str, Fit], labels: list[str], ref: str, truth: Any,
                 interval_prob: float):
    ref_fit = fits[ref]
    md = ref_fit.data
    rows, cols = md.missing_index
    n_mis = len(rows)
    miss = ref_fit.idata.posterior["imputed_mean"]["missing"]
    coords = {"missing_obs": miss["missing_obs"].values,
              "missing_feature": miss["missing_feature"].values}
    q = [(1 - interval_prob) / 2, (1 + interval_prob) / 2]
    means, lows, highs, draws, exact, mapped = {}, {}, {}, {}, {}, {}
    for label in labels:
        f = fits[label]
        ct = f.transform
        if _n_draws(f.idata.posterior) == 1 and n_mis and ct is not None:
            # a point estimate on a transformed scale: its predictive is a normal mixture
            # there, whose quantiles map back through the increasing inverse exactly, and
            # whose CRPS on the original scale is a 1-D integral (_crps_mapped)
            mapped[label] = w, mu, var = missing_marginals(f.params, md.transformed(ct))
            lows[label], highs[label] = (
                ct.inverse_entries(normal_mixture_quantile(w, mu, var, p), cols) for p in q)
        elif _n_draws(f.idata.posterior) == 1 and n_mis:
            # a point estimate (EM): its predictive is a known normal mixture per entry, so
            # the mean, intervals and CRPS are exact rather than from a few stored draws
            exact[label] = w, mu, var = missing_marginals(f.params, md)
            means[label] = (w * mu).sum(1)
            lows[label], highs[label] = (normal_mixture_quantile(w, mu, var, p) for p in q)
            continue
        means[label] = f._completed(f._data_or(None), True, None, None)[rows, cols]
        pp = f.idata.posterior_predictive["x_missing"].transpose("missing", "chain", "draw")
        x = pp.values.reshape(n_mis, pp.sizes["chain"] * pp.sizes["draw"])
        draws[label] = x
        if label in lows:  # exact, above
            continue
        if x.shape[1] >= 2:
            lows[label], highs[label] = np.quantile(x, q, axis=1)
        else:
            lows[label] = highs[label] = np.full(n_mis, np.nan)
    # baseline: observed column means, normal interval from the observed column sd
    obs_mean = np.nanmean(md.values, axis=0)
    n_obs = md.observed.sum(0)
    dev2 = np.where(md.observed, (md.values - obs_mean) ** 2, 0.0).sum(0)
    obs_sd = np.sqrt(dev2 / np.maximum(n_obs - 1, 1)) * np.where(n_obs > 1, 1.0, np.nan)
    z = ndtri(q[1])
    base = BASELINE
    means[base] = obs_mean[cols]
    lows[base], highs[base] = obs_mean[cols] - z * obs_sd[cols], obs_mean[cols] + z * obs_sd[cols]
    names = list(means)
    ds = xr.Dataset(
        {
            "mean": (("backend", "missing"), np.stack([means[b] for b in names])),
            "lower": (("backend", "missing"), np.stack([lows[b] for b in names])),
            "upper": (("backend", "missing"), np.stack([highs[b] for b in names])),
        },
        coords={"backend": names, "missing_obs": ("missing", coords["missing_obs"]),
                "missing_feature": ("missing", coords["missing_feature"])},
        attrs={"interval_prob": interval_prob, "baseline": base},
    )
    scores = None
    if truth is not None and n_mis:
        y = _truth_array(truth, ref_fit)[rows, cols]
        crps = np.stack([
            crps_normal_mixture(*exact[b], y) if b in exact
            else _crps_mapped(fits[b].transform, *mapped[b], y, cols) if b in mapped
            else crps_normal(obs_mean[cols], obs_sd[cols], y) if b == base
            else crps_ensemble(draws[b], y) if draws[b].shape[1] >= 2
            else np.full(n_mis, np.nan)
            for b in names
        ])
        ds["truth"] = ("missing", y)
        ds["crps"] = (("backend", "missing"), crps)
        scores = _scores(ds, md.feature_names)
    return ds, scores


def _truth_params(truth: Any, ref_fit: Fit, ref: str, notes: list[str]) -> xr.Dataset | None:
    """A Truth's parameters on the reference's labels, when they are on its scale (else a
    note says why they are not shown)."""
    if truth is None or not hasattr(truth, "params"):
        return None
    tp = as_params(truth, name="truth")
    ref_scale = [ref_fit.transformed_columns.get(f) for f in ref_fit.feature_names]
    truth_scale = [getattr(truth, "transform", {}).get(f"x{j}") for j in range(len(ref_scale))]
    if truth_scale != ref_scale:
        notes.append(
            f"truth: the true parameters are on the scale of transform "
            f"{_scale_words(truth_scale, ref_fit.feature_names)}, the reference fit's ({ref}) "
            f"on {_scale_words(ref_scale, ref_fit.feature_names)}; they are not shown beside "
            "its estimates")
        return None
    if tp.means.shape != ref_fit.params.means.shape:
        return None
    aligned, _ = align_to(tp, ref_fit.params)
    return params_dataset(aligned, ref_fit.feature_names)


def _scale_words(scale: list[str | None], names: list[str]) -> str:
    """Transforms by column in words: "{'Ozone': 'log'}", or "none"."""
    named = {f: t for f, t in zip(names, scale, strict=True) if t is not None}
    return str(named) if named else "none"


def _crps_mapped(ct: Any, w: np.ndarray, mu: np.ndarray, var: np.ndarray, y: np.ndarray,
                 cols: np.ndarray) -> np.ndarray:
    """Exact CRPS of a point estimate's predictive on the original scale: a normal mixture
    per entry on the transformed scale, mapped back through each column's inverse."""
    out = np.empty(len(y))
    for j, t in enumerate(ct.by_column):
        sel = cols == j
        if t is None:
            out[sel] = crps_normal_mixture(w[sel], mu[sel], var[sel], y[sel])
            continue
        yj = y[sel]
        s = np.where(yj <= t.lower, -np.inf, np.where(yj >= t.upper, np.inf, 0.0))
        inside = t.contains(yj)
        s[inside] = t.forward(yj[inside])
        out[sel] = crps_mapped_normal_mixture(w[sel], mu[sel], var[sel], yj, s, t.inverse,
                                              t.inverse_derivative)
    return out


def _scores(ds: xr.Dataset, features: list[str]) -> pd.DataFrame:
    """RMSE, coverage and CRPS per backend, per feature and pooled."""
    err2 = (ds["mean"] - ds["truth"]) ** 2
    inside = ((ds["lower"] <= ds["truth"]) & (ds["truth"] <= ds["upper"])).where(
        ds["lower"].notnull()
    )
    feat = ds["missing_feature"].values
    rows = []
    groups = [("all", np.ones(len(feat), bool))] + [
        (f, feat == f) for f in features if (feat == f).any()
    ]
    for b in ds["backend"].values:
        for name, sel in groups:
            e = err2.sel(backend=b).values[sel]
            cov = inside.sel(backend=b).values[sel]
            rows.append({
                "backend": str(b), "feature": str(name), "n_missing": int(sel.sum()),
                "rmse": float(np.sqrt(e.mean())),
                "coverage": float(np.mean(cov)) if np.isfinite(cov).all() else np.nan,
                "crps": float(ds["crps"].sel(backend=b).values[sel].mean()),
            })
    return pd.DataFrame(rows)


def convergence_row(fit: Fit) -> dict[str, Any]:
    """One fit's convergence diagnostics, as a row of :attr:`Comparison.convergence`.

    The backend's own flag (``converged``) with the figures behind it: EM's iteration count,
    final objective and whether the objective never decreased (to a relative 1e-9); ADVI's
    final ELBO; for any fit with at least two chains of four draws, the largest split R-hat
    and the smallest bulk and tail ESS over every weight, mean and covariance entry
    (Vehtari et al. 2021); NUTS's divergences and the label permutations its draws needed.
    Keys a backend has no figure for are absent.
    """
    a = fit.attrs
    post = fit.idata.posterior
    k = fit.spec.n_components
    row: dict[str, Any] = {
        "backend": fit.backend, "K": k, "covariance": fit.spec.covariance,
        "draws": _n_draws(post), "converged": fit.converged,
        "wall_time_s": float(a.get("wall_time", np.nan)),
        "seed": a.get("seed"),
    }
    stats = fit.idata.sample_stats if "sample_stats" in fit.idata.groups() else xr.Dataset()
    if "objective" in stats:
        obj = np.asarray(stats["objective"].values, float)
        tol = 1e-9 * np.maximum(1.0, np.abs(obj[1:]))
        row.update(n_iter=int(a.get("n_iter", len(obj) - 1)),
                   objective_final=float(obj[-1]),
                   objective_monotone=bool(np.all(np.diff(obj) >= -tol)))
    if "elbo" in stats:
        elbo = np.asarray(stats["elbo"].values, float)
        tail = elbo[-max(1, len(elbo) // 10):]
        # the ELBO of the returned approximation where the backend recorded it
        row.update(n_iter=int(a.get("n_iter", len(elbo))),
                   elbo_final=float(a.get("elbo_final", np.mean(tail))))
    if post.sizes["chain"] >= 2 and post.sizes["draw"] >= 4:
        # the backends' own diagnostics: every weight, mean and covariance entry
        draws = Draws.from_dataset(post)
        row.update(
            rhat_max=diagnostics.rhat_max(draws),
            ess_bulk_min=diagnostics.ess_min(draws),
            ess_tail_min=diagnostics.ess_min(draws, method="tail"),
        )
    if "diverging" in stats:
        row["divergences"] = int(stats["diverging"].sum())
    elif "divergences" in a:
        row["divergences"] = int(a["divergences"])
    if "permutation" in stats:
        p = stats["permutation"].transpose("chain", "draw", "component").values
        row["relabelled_draws"] = count_relabelled(p)
        uniq, counts = np.unique(p.reshape(-1, k), axis=0, return_counts=True)
        row["permutations"] = "; ".join(
            f"({', '.join(map(str, u))}): {c}" for u, c in zip(uniq, counts, strict=True)
        )
    elif "relabelled_draws" in a:
        row["relabelled_draws"] = int(a["relabelled_draws"])
    return row


def _convergence(fits: dict[str, Fit], perms: dict[str, np.ndarray]) -> pd.DataFrame:

    rows = []
    for label, f in fits.items():
        k = f.spec.n_components
        perm = perms.get(label, np.arange(k))
        rows.append({
            "label": label, **convergence_row(f),
            "relabelled_to_reference": (
                "none" if np.array_equal(perm, np.arange(k)) else
                ", ".join(f"{i}<-{j}" for i, j in enumerate(perm))),
        })
    cols = ["label", "backend", "K", "covariance", "draws", "converged", "wall_time_s", "seed",
            "n_iter", "objective_final", "objective_monotone", "elbo_final", "rhat_max",
            "ess_bulk_min", "ess_tail_min", "divergences", "relabelled_draws",
            "permutations", "relabelled_to_reference"]
    df = pd.DataFrame(rows)
    return df[[c for c in cols if c in df.columns]]


def _model_comparison(fits: dict[str, Fit], notes: list[str]) -> pd.DataFrame | None:
    import arviz as az

    by_backend: dict[str, list[str]] = {}
    for label, f in fits.items():
        by_backend.setdefault(f.backend, []).append(label)
    rows = []
    for backend, labels in by_backend.items():
        if len(labels) < 2:
            continue
        if kind(backend) == "optimum":
            bic = {b: fits[b].bic() for b in labels}
            order = sorted(labels, key=lambda b: (not fits[b].converged, bic[b]))
            for rank, b in enumerate(order):
                rows.append({"backend": backend, "label": b, "K": fits[b].spec.n_components,
                             "covariance": fits[b].spec.covariance, "criterion": "BIC",
                             "value": bic[b], "se": np.nan, "rank": rank,
                             "loglik": fits[b].loglik})
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                table = az.compare({b: fits[b].idata for b in labels}, ic="loo")
            except (ValueError, TypeError, KeyError) as err:
                notes.append(f"{backend}: LOO comparison failed ({err}).")
                continue
        noise = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
        for w in dict.fromkeys(" ".join(str(w.message).split()) for w in caught
                               if not issubclass(w.category, noise)):
            notes.append(f"{backend} LOO: {w}")
        for b, r in table.iterrows():
            rows.append({"backend": backend, "label": str(b),
                         "K": fits[str(b)].spec.n_components,
                         "covariance": fits[str(b)].spec.covariance, "criterion": "LOO elpd",
                         "value": float(r["elpd_loo"]), "se": float(r["se"]),
                         "rank": int(r["rank"]), "loglik": np.nan})
    if not rows:
        return None
    return _rank_converged_first(pd.DataFrame(rows), fits, notes)


def _rank_converged_first(df: pd.DataFrame, fits: dict[str, Fit], notes: list[str]
                          ) -> pd.DataFrame:
    """Within each backend, unconverged fits rank after every converged one, with a note."""
    df["converged"] = df["label"].map(lambda b: fits[b].converged).astype(bool)
    df["note"] = np.where(df["converged"], "",
                          "did not converge: ranked last, its criterion is not trustworthy")
    parts = []
    for _, g in df.groupby("backend", sort=False):
        g = g.sort_values(["converged", "rank"], ascending=[False, True], kind="stable")
        parts.append(g.assign(rank=np.arange(len(g))))
    for b in df.loc[~df["converged"], "label"]:
        notes.append(f"{b}: did not converge, so it is ranked after the converged fits in "
                     "the model comparison; refit it until it converges before comparing K.")
    return pd.concat(parts, ignore_index=True)


def _tidy(params: xr.Dataset, inside: xr.Dataset, truth: xr.Dataset | None) -> pd.DataFrame:
    frames = []
    for name in PARAM_NAMES:
        da = params[name]
        df = da.to_dataset(dim="stat").to_dataframe().reset_index()
        df.insert(0, "parameter", name)
        if name in inside:
            flag = inside[name].rename("em_in_hdi").to_dataframe().reset_index()
            df = df.merge(flag, how="left", on=list(inside[name].dims))
        if truth is not None:
            t = truth[name].rename("truth").to_dataframe().reset_index()
            df = df.merge(t, how="left", on=[d for d in truth[name].dims])
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    for col in ("feature", "feature_"):
        if col not in out:
            out[col] = None
    if "feature" in params.coords:
        pos = {str(f): i for i, f in enumerate(params["feature"].values)}
        fi = out["feature"].map(lambda f: pos.get(str(f), -1))
        fj = out["feature_"].map(lambda f: pos.get(str(f), -1))
        out = out[(out["parameter"] != "covariances") | (fi <= fj)]
    out["em_in_hdi"] = (out["em_in_hdi"] if "em_in_hdi" in out else pd.NA)
    out["em_in_hdi"] = out["em_in_hdi"].astype("boolean")
    cols = ["parameter", "component", "feature", "feature_", "backend", *STATS, "em_in_hdi"]
    cols += ["truth"] if "truth" in out else []
    out = out[cols].astype({"feature": object, "feature_": object})
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- entry point


def compare(
    fits: Sequence[Fit] | Mapping[str, Fit],
    truth: Any = None,
    reference: Fit | str | None = None,
    *,
    hdi_prob: float = 0.94,
    interval_prob: float = 0.94,
    include_unconverged: bool = False,
) -> Comparison:
    """Compare fits of one data set from several backends (and several K).

    Parameters
    ----------
    fits : list of ppgmm.Fit, or dict of label to Fit
        Fits of the same data, e.g. ``[fit_em, fit_advi, fit_nuts]``. With one fit per
        backend the labels are the backend names; with several (e.g. K = 2, 3) they read
        ``"em K=2"``. Pass a dict to choose the labels.
    truth : ppgmm.Truth, ndarray or DataFrame, optional
        The complete data (``ppgmm.simulate`` returns a Truth with them): imputations are
        then scored (RMSE, interval coverage, CRPS) against the hidden values, and the true
        parameters, when known, are shown beside the estimates.
    reference : ppgmm.Fit or str, optional
        The fit (or its label) whose component labels all others are put on; default the
        first EM fit, else the first fit. Parameters are compared across the fits with the
        reference's number of components.
    hdi_prob : float, default 0.94
        Probability mass of the highest-density intervals of the parameters.
    interval_prob : float, default 0.94
        Probability of the central predictive intervals of the imputations.
    include_unconverged : bool, default False
        Keep fits that did not meet their convergence criterion in the agreement checks
        (EM inside HDI, the distance verdicts). By default they are shown, marked, but left
        out: an unconverged sampler's HDIs can span everything and "agree" with any value.

    Returns
    -------
    Comparison

    Examples
    --------
    >>> cmp = ppgmm.compare([fit_em, fit_advi, fit_nuts])  # doctest: +SKIP
    >>> cmp.summary().head()  # doctest: +SKIP
    >>> cmp.report("report.html")  # doctest: +SKIP
    """
    for name, p in (("hdi_prob", hdi_prob), ("interval_prob", interval_prob)):
        if not (isinstance(p, float | int) and 0 < p < 1):
            raise PpgmmError(f"{name} should be a probability in (0, 1), but got {p!r}")
    fits = _labels(fits)
    _refuse_chunked(fits)
    _check_same_data(fits)
    if reference is None:
        ems = [b for b, f in fits.items() if kind(f.backend) == "optimum"]
        ref = ems[0] if ems else next(iter(fits))
    elif isinstance(reference, Fit):
        matches = [b for b, f in fits.items() if f is reference]
        if not matches:
            raise PpgmmError("reference should be one of the fits passed to compare()")
        ref = matches[0]
    else:
        if str(reference) not in fits:
            raise PpgmmError(
                f"reference should be one of the labels {list(fits)}, but got {reference!r}"
            )
        ref = str(reference)
    notes: list[str] = []
    for label, f in fits.items():
        own = _warnings_of(f)
        notes += [f"{label}: {w}" for w in own]
        if not f.converged and not own:
            notes.append(f"{label}: the {f.backend} fit did not meet its convergence criterion.")
    params, posteriors, perms = _parameters(fits, ref, hdi_prob)
    compared = [str(b) for b in params["backend"].values]
    truth_params = _truth_params(truth, fits[ref], ref, notes)
    imputations, scores = _imputations(fits, compared, ref, truth, interval_prob)
    md = fits[ref].data
    if md.dropped:
        notes.insert(0, f"data: {len(md.dropped)} row(s) with no observed entry were dropped "
                     f"at fit time (input positions {list(md.dropped)}).")
    left_out = [b for b in compared if not fits[b].converged]
    if left_out and not include_unconverged:
        notes.append(f"{', '.join(left_out)}: did not converge, so left out of the agreement "
                     "checks; pass include_unconverged=True to compare it anyway.")
    rel = _distance(fits, list(fits), relative=True)
    boot = _bootstrap_distances(fits, ref)
    agreement, threshold = _agreement(fits, ref, compared, rel, boot, include_unconverged)
    out_of_range = _out_of_range(imputations, md, fits)
    notes += _scale_notes(fits, out_of_range)
    # unconverged fits' own warnings first: they are what a reader must see before any table
    notes.sort(key=lambda w: not any(w.startswith(f"{b}:") for b in fits
                                     if not fits[b].converged))
    return Comparison(
        fits=fits,
        reference=ref,
        parameters=params,
        em_in_hdi=_em_in_hdi(params, fits, ref, include_unconverged),
        distance=_distance(fits, list(fits), relative=False),
        relative_distance=rel,
        imputations=imputations,
        imputation_scores=scores,
        convergence=_convergence(fits, perms),
        model_comparison=_model_comparison(fits, notes),
        posteriors=posteriors,
        truth_params=truth_params,
        warnings=notes,
        hdi_prob=float(hdi_prob),
        interval_prob=float(interval_prob),
        agreement=agreement,
        agreement_threshold=threshold,
        bootstrap_distances=None if boot is None else boot[1],
        out_of_range=out_of_range,
        include_unconverged=bool(include_unconverged),
    )
