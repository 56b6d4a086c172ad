"""The result schema: one ``arviz.InferenceData`` layout that every backend fills.

This module is the one owner of the schema. Groups, variables and dims:

============================  =====================  =====================================
group                         variable               dims
============================  =====================  =====================================
posterior                     weights                chain, draw, component
posterior                     means                  chain, draw, component, feature
posterior                     covariances            chain, draw, component, feature, feature\\_
posterior                     imputed_mean           chain, draw, missing
posterior_predictive          x_missing              chain, draw, missing
log_likelihood                x                      chain, draw, obs
observed_data                 x                      obs, feature
sample_stats                  objective / elbo       iteration  (EM / ADVI traces)
estimate (EM only)            weights, means, ...    component, feature, feature\\_
============================  =====================  =====================================

The ``missing`` dim carries coordinates ``missing_obs`` and ``missing_feature``. Rows with
no observed entry are not fitted: ``posterior.attrs["dropped_rows"]`` holds their positions
in the input and the ``observed_data`` coordinate ``dropped_obs`` (dim ``dropped``) their
labels, so that per-row outputs put them back in place. The EM
estimate is stored twice over when there is no bootstrap (posterior chain=1, draw=1 and
the ``estimate`` group); with ``uncertainty="bootstrap"`` the posterior holds the B
refits and ``estimate`` the fit itself. Run attributes live in ``posterior.attrs``.

A spec with ``transform=`` (:mod:`ppgmm.transforms`) is fitted on the transformed scale,
where the parameters (``weights``, ``means``, ``covariances``, ``estimate``) stay;
``posterior.attrs["transform"]`` records {feature: transform name}. Everything else is on
the data's original scale: ``observed_data`` as given, ``imputed_mean`` the conditional
mean :math:`E[x_{mis} \\mid x_{obs}, \\theta]` of the back-transformed variable,
``x_missing`` the back-transformed draws, ``log_likelihood`` with each row's Jacobian
:math:`\\sum_{j \\in o_i}\\log|f_j'(x_{ij})|` added, and the ``objective`` and ``elbo``
traces (and ``elbo_final``) shifted by the data's total Jacobian, a constant in the
parameters.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import numpy as np
import xarray as xr

from .checks import check_seed
from .chunked import is_dask
from .data import MissingData, prepare
from .exceptions import DataError, PpgmmError, SpecError, warn_user
from .numerics.patterns import (
    conditional_draws,
    e_step,
    responsibilities,
    row_loglik,
)
from .spec import GMM, PARAM_NAMES, Draws, Params, as_params
from .transforms import ColumnTransforms

__all__ = ["Fit", "build_idata", "build_chunked_idata", "load", "params_dataset"]


#: sample statistics that are log densities of the data (a change of the data's scale
#: shifts them by its log-Jacobian)
LOG_DENSITY_STATS = ("objective", "elbo", "check_elbo")


@cache
def _versions() -> str:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    # the samplers too: NUTS's and ADVI's draws move in their digits with any of these
    for name in ("ppgmm", "numpy", "scipy", "xarray", "arviz", "pymc", "pytensor", "jax",
                 "nutpie", "numpyro"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return json.dumps(out)


def params_dataset(params: Params, features: list[str]) -> xr.Dataset:
    """Parameters as an xarray Dataset (component, feature, feature_)."""
    k = len(params.weights)
    coords = {"component": np.arange(k), "feature": features, "feature_": features}
    return xr.Dataset(
        {
            "weights": ("component", np.asarray(params.weights)),
            "means": (("component", "feature"), np.asarray(params.means)),
            "covariances": (("component", "feature", "feature_"), np.asarray(params.covariances)),
        },
        coords=coords,
    )


def build_idata(
    md: MissingData,
    spec: GMM,
    *,
    backend: str,
    draws: Draws,
    imputed_mean: np.ndarray,
    x_missing: np.ndarray,
    loglik: np.ndarray,
    attrs: dict[str, Any],
    sample_stats: xr.Dataset | None = None,
    estimate: Params | None = None,
    extra: dict[str, xr.Dataset] | None = None,
) -> Any:
    """Assemble the InferenceData of the schema from parameter draws and (chain, draw, ...) arrays.

    ``imputed_mean`` and ``x_missing`` are (chain, draw, M) arrays over the M missing
    entries, in ``md.missing_index`` order and on the data's original scale, and ``loglik``
    (chain, draw, N) the rows' log-likelihoods on the model's scale (what
    :func:`~ppgmm.numerics.patterns.derived_quantities` returns). ``attrs`` are added to
    ``posterior.attrs`` after the common ones (backend, spec, versions, input kind); values
    must be str, int or float.
    """
    import arviz as az

    rows, cols = md.missing_index
    feats = md.feature_names
    obs = md.obs_names
    k = spec.n_components
    if md.transform is not None:
        loglik, sample_stats, attrs = _original_scale(md, loglik, sample_stats, attrs)
    miss_coords = {
        "missing_obs": ("missing", obs[rows]),
        # fixed-width text: an object array would be converted by xarray into one new
        # Python string per missing entry, per group (about 55 bytes each)
        "missing_feature": ("missing", np.asarray(feats, dtype=str)[cols]),
    }

    def cd(a: np.ndarray) -> dict[str, np.ndarray]:
        return {"chain": np.arange(a.shape[0]), "draw": np.arange(a.shape[1])}

    weights, means, covariances = draws
    comp = {"component": np.arange(k), "feature": feats, "feature_": feats}
    posterior = xr.Dataset(
        {
            "weights": (("chain", "draw", "component"), weights),
            "means": (("chain", "draw", "component", "feature"), means),
            "covariances": (
                ("chain", "draw", "component", "feature", "feature_"),
                covariances,
            ),
            "imputed_mean": (("chain", "draw", "missing"), imputed_mean),
        },
        coords={**cd(weights), **comp, **miss_coords},
    )
    posterior.attrs.update(
        backend=backend,
        spec=spec.to_json(),
        versions=_versions(),
        input_kind=md.input_kind,
        **({"index_name": md.index_name} if md.index_name is not None else {}),
        **({"dropped_rows": json.dumps(list(md.dropped))} if md.dropped else {}),
        **({"column_labels": json.dumps(list(md.column_labels))} if md.column_labels else {}),
        n_obs=int(md.n),
        n_patterns=int(md.n_patterns),
    )
    posterior.attrs.update(attrs)
    groups: dict[str, xr.Dataset] = {
        "posterior": posterior,
        "posterior_predictive": xr.Dataset(
            {"x_missing": (("chain", "draw", "missing"), x_missing)},
            coords={**cd(x_missing), **miss_coords},
        ),
        "log_likelihood": xr.Dataset(
            {"x": (("chain", "draw", "obs"), loglik)}, coords={**cd(loglik), "obs": obs}
        ),
        "observed_data": xr.Dataset(
            {"x": (("obs", "feature"), md.original)},
            coords={"obs": obs, "feature": feats,
                    # labels of the rows dropped for having no observed entry
                    **({"dropped_obs": ("dropped", md.dropped_names)}
                       if md.dropped_names is not None else {})},
        ),
    }
    if sample_stats is not None:
        groups["sample_stats"] = sample_stats
    if estimate is not None:
        groups["estimate"] = params_dataset(estimate, feats)
    groups.update(extra or {})
    return az.InferenceData(**groups)


def _original_scale(md: MissingData, loglik: np.ndarray, stats: xr.Dataset | None,
                    attrs: dict[str, Any]):
    """Log-likelihoods (C, S, N), traces and attrs of a fit on a transformed scale, moved
    to the data's scale by the Jacobian (imputations come back-transformed already)."""
    ct = md.transform
    assert ct is not None
    jac = md.log_jacobian
    total = float(jac.sum())
    attrs = {**attrs, "transform": ct.to_json(), "log_jacobian": total}
    if "elbo_final" in attrs:
        attrs["elbo_final"] = float(attrs["elbo_final"]) + total
    if stats is not None:
        stats = stats.copy()
        for name in LOG_DENSITY_STATS:
            if name in stats:
                stats[name] = stats[name] + total
    return loglik + jac, stats, attrs


def build_chunked_idata(
    spec: GMM,
    *,
    backend: str,
    estimate: Params,
    feature_names: list[str],
    obs_names: np.ndarray,
    rows: Any,
    loglik: Any,
    attrs: dict[str, Any],
    sample_stats: xr.Dataset,
    input_kind: str,
) -> Any:
    """The schema for a fit of chunked (dask) data, whose per-row groups stay lazy.

    ``rows`` (n, d) and ``loglik`` (n,) are dask arrays: ``observed_data`` and
    ``log_likelihood`` refer to them and are computed chunk by chunk only when read or
    written. The posterior holds the estimate (chain=1, draw=1) without ``imputed_mean``,
    and there is no ``posterior_predictive`` group: imputed means and draws are computed on
    request (:meth:`Fit.impute`), so the result stays O(parameters) in memory at any N.
    """
    import arviz as az

    post = params_dataset(estimate, feature_names).expand_dims(chain=[0], draw=[0])
    post = post.transpose("chain", "draw", ...)
    post.attrs.update(
        backend=backend, spec=spec.to_json(), versions=_versions(), input_kind=input_kind,
        n_obs=int(rows.shape[0]), chunked=1,
    )
    post.attrs.update(attrs)
    obs = {"obs": np.asarray(obs_names)}
    groups = {
        "posterior": post,
        "log_likelihood": xr.Dataset({"x": (("chain", "draw", "obs"), loglik[None, None])},
                                     coords={"chain": [0], "draw": [0], **obs}),
        "observed_data": xr.Dataset({"x": (("obs", "feature"), rows)},
                                    coords={**obs, "feature": feature_names}),
        "sample_stats": sample_stats,
        "estimate": params_dataset(estimate, feature_names),
    }
    return az.InferenceData(**groups)


def _spread(n: int, m: int) -> np.ndarray:
    """``m`` indices spread evenly over ``n`` stacked draws (chain by chain)."""
    return np.linspace(0, n - 1, m).round().astype(int)


def _stack(da: xr.DataArray) -> np.ndarray:
    """(chain * draw, ...) values, chain by chain (also when ``...`` has no entries)."""
    v = da.transpose("chain", "draw", ...).values
    return v.reshape(v.shape[0] * v.shape[1], *v.shape[2:])


@dataclass(eq=False)
class Fit:
    """A fitted mixture from any backend, wrapping its ``arviz.InferenceData``.

    Everything is derived from ``idata``, so a fit read back with :func:`ppgmm.load`
    behaves exactly as the one that was saved.
    """

    idata: Any
    #: named in the error for new data with the wrong number of features (not a field)
    _fitted_by = "this fit"

    # ------------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict[str, Any]:
        """Run attributes: backend, spec, seed, wall time, versions, convergence, options."""
        return dict(self.idata.posterior.attrs)

    @property
    def backend(self) -> str:
        """"em", "advi" or "nuts"."""
        return str(self.attrs["backend"])

    @cached_property
    def spec(self) -> GMM:
        """The model specification this fit was made from."""
        return GMM.from_json(self.attrs["spec"])

    @property
    def converged(self) -> bool:
        """Whether the backend met its convergence criterion."""
        return bool(self.attrs.get("converged", 0))

    @property
    def chunked(self) -> bool:
        """Whether this is a fit of chunked (dask) data, with lazy per-row groups."""
        return bool(self.attrs.get("chunked", 0))

    @property
    def n_obs(self) -> int:
        """Number of fitted rows."""
        return int(self.idata.observed_data.sizes["obs"])

    @property
    def feature_names(self) -> list[str]:
        """Feature names, in column order."""
        return [str(f) for f in self.idata.observed_data["feature"].values]

    @cached_property
    def transform(self) -> ColumnTransforms | None:
        """The per-column transforms the mixture was fitted under (``spec.transform``
        matched to the features), or None."""
        text = self.attrs.get("transform")
        return None if text is None else ColumnTransforms.from_json(text, self.feature_names)

    @property
    def transformed_columns(self) -> dict[str, str]:
        """{feature: transform name} of the columns fitted on a transformed scale ({} when
        none)."""
        return {} if self.transform is None else self.transform.mapping()

    @cached_property
    def _model_data(self) -> MissingData:
        """The fitted data on the scale the mixture was fitted on."""
        return self.data.transformed(self.transform)

    @cached_property
    def data(self) -> MissingData:
        """The fitted data as given (rows with no observed entry were dropped at fit time)."""
        od = self.idata.observed_data
        x = od["x"]
        return MissingData.from_arrays(
            np.asarray(x.values, dtype=float),
            self.feature_names,
            np.asarray(x["obs"].values),
            str(self.attrs.get("input_kind", "ndarray")),
            self.attrs.get("index_name"),
            tuple(json.loads(self.attrs.get("dropped_rows", "[]"))),
            tuple(json.loads(self.attrs["column_labels"])) if "column_labels" in self.attrs
            else None,
            od["dropped_obs"].values if "dropped_obs" in od.coords else None,
        )

    def __repr__(self) -> str:
        post = self.idata.posterior
        return (
            f"<ppgmm.Fit backend={self.backend!r} {self.spec!r} n_obs={self.n_obs} "
            f"draws={post.sizes['chain']}x{post.sizes['draw']} converged={self.converged}>"
        )

    # ------------------------------------------------------------------ parameters
    def point(self) -> xr.Dataset:
        """Point estimate: the EM estimate, or the (aligned) posterior mean.

        With ``spec.transform``, on the transformed scale of the transformed columns
        (:attr:`transform`).
        """
        if "estimate" in self.idata.groups():
            return self.idata["estimate"][list(PARAM_NAMES)]
        return self.idata.posterior[list(PARAM_NAMES)].mean(("chain", "draw"))

    @cached_property
    def params(self) -> Params:
        """:meth:`point` as plain arrays."""
        return as_params(self.point(), name="the fit's point estimate")

    @cached_property
    def loglik(self) -> float:
        """Observed-data log-likelihood of the fitted data at :meth:`point`."""
        return float(self.score_samples().sum())

    def score_samples(self, data: Any = None) -> np.ndarray:
        r"""Observed-data log-likelihood of each row at :meth:`point` (NaN allowed).

        :math:`\log \sum_k w_k N(x_{i,o} \mid \mu_{k,o}, \Sigma_{k,oo})`, 0 for a row with
        nothing observed. On the data's original scale: with a transform,
        :math:`\log p_Y(f(x_{i,o})) + \sum_{j \in o_i}\log|f_j'(x_{ij})|`. Returns an ndarray
        (n,) in the rows' order (see :meth:`predict_proba`). Lazy (a dask array, computed
        chunk by chunk) for dask data and chunked fits.
        """
        lazy = self._chunked_rows(data)
        if lazy is not None:
            from .chunked import row_map

            return row_map(self.params, lazy[0], "loglik")
        md = self._data_or(data)
        out = self._row_loglik(md)
        if not self._restores(data, md):
            return out
        # a dropped row has nothing observed: its log-likelihood is log 1 = 0
        return md.restored(out, np.zeros(len(md.dropped)))

    def bic(self) -> float:
        """Bayesian information criterion, -2 loglik + p log n (smaller is better).

        mclust reports the negative of this (larger is better); the parameter count p is
        the same (:meth:`ppgmm.GMM.n_parameters`).
        """
        d = len(self.feature_names)
        return -2 * self.loglik + self.spec.n_parameters(d) * np.log(self.n_obs)

    def aic(self) -> float:
        """Akaike information criterion, -2 loglik + 2 p (smaller is better)."""
        return -2 * self.loglik + 2 * self.spec.n_parameters(len(self.feature_names))

    # ------------------------------------------------------------------ ArviZ checks
    def _require_posterior(self, what: str) -> None:
        if "estimate" in self.idata.groups():
            raise PpgmmError(
                f"{what} needs draws from a posterior, but this {self.backend} fit holds a "
                "point estimate (arviz's own az.loo/az.waic fail on its one chain of one "
                "draw, and bootstrap refits are not posterior draws); compare EM fits by "
                "fit.bic() (ppgmm.compare ranks them by BIC), or fit with backend='nuts' or "
                "'advi' for LOO"
            )

    def loo(self, **kwargs: Any) -> Any:
        """PSIS-LOO (``arviz.loo``) of a Bayesian fit: the expected log predictive density
        of each row given the others, from the stored per-row log-likelihood.

        Parameters
        ----------
        **kwargs
            Passed to ``arviz.loo`` (e.g. ``pointwise=True``).

        Raises
        ------
        PpgmmError
            For an EM fit (a point estimate or bootstrap refits): use :meth:`bic`.
        """
        import arviz as az

        self._require_posterior("LOO")
        return self._criterion(az.loo, kwargs, (
            "PSIS-LOO may be unreliable here: some rows have a Pareto k above {good_k:.2f} "
            "(the limit for this many draws), so their leave-one-out densities rest on a few "
            "draws (fit.loo(pointwise=True).pareto_k names them). Refit with more draws, and "
            "check the ranking by the EM fits' BIC"))

    def waic(self, **kwargs: Any) -> Any:
        """WAIC (``arviz.waic``) of a Bayesian fit; an EM fit raises as :meth:`loo`."""
        import arviz as az

        self._require_posterior("WAIC")
        return self._criterion(az.waic, kwargs, (
            "WAIC may be unreliable here: for some rows the posterior variance of the log "
            "predictive density exceeds 0.4; use fit.loo(), which says which rows are hard"))

    def _criterion(self, func: Any, kwargs: dict, advice: str) -> Any:
        """``func(idata)`` (arviz.loo or waic), its warning said once, in ppgmm's words."""
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            out = func(self.idata, **kwargs)
        reworded = ("Estimated shape parameter of Pareto", "posterior variance of the log "
                    "predictive densities exceeds")
        for w in rec:  # anything else ArviZ says is passed on as it is
            if not any(text in str(w.message) for text in reworded):
                warn_user(w.message, w.category)
        if getattr(out, "warning", False):
            good_k = float(getattr(out, "good_k", 0.7) or 0.7)
            warn_user(advice.format(good_k=good_k), UserWarning)
        return out

    def ppc_idata(self, draws: int = 100, seed: int | None = None) -> Any:
        r"""An InferenceData for ``arviz.plot_ppc``: the observed entries against replicates.

        For each of ``draws`` parameter sets :math:`\theta_s` (spread evenly over the stored
        draws; the point estimate, repeated, for an EM fit without bootstrap), a replicate
        data set is drawn from the fitted mixture, row by row,
        :math:`z_i \sim \mathrm{Cat}(w_s)`, :math:`x^{rep}_i \sim N(\mu_{s z_i},
        \Sigma_{s z_i})`, and only the entries observed in the real data are kept. Under
        missingness at random this is the posterior predictive distribution of the observed
        part of the data (the marginal of a normal mixture on the observed coordinates is the
        mixture of the marginals), so each feature's observed values are checked against
        what the model says they should look like on the same rows. The missing entries
        have no observed value to check against, and are left out.

        One variable per feature (named by the feature), over the dim
        ``"<feature>_observed"`` (its observed rows), in both ``observed_data`` and
        ``posterior_predictive`` (chain 1, ``draws`` draws): ``az.plot_ppc`` then draws one
        panel per feature. The fit's own ``idata`` has no such pair: its
        ``posterior_predictive`` holds the imputation draws ``x_missing``, which have no
        observed counterpart.

        Parameters
        ----------
        draws : int, default 100
            Number of replicate data sets.
        seed : int, optional

        Returns
        -------
        arviz.InferenceData
        """
        import arviz as az

        if not (isinstance(draws, int | np.integer) and draws >= 1):
            raise SpecError(f"draws should be a positive integer, but got {draws!r}")
        rng = np.random.default_rng(check_seed(seed))
        md = self.data
        ct = self.transform
        post = Draws.from_dataset(self.idata.posterior[list(PARAM_NAMES)]).flat()
        pick = _spread(len(post.weights), draws)
        reps = np.empty((draws, md.n, md.d))
        for s, i in enumerate(pick):
            w, mu, cov = post.weights[i], post.means[i], post.covariances[i]
            z = rng.choice(len(w), size=md.n, p=w / w.sum())
            chol = np.linalg.cholesky(cov)
            eps = rng.standard_normal((md.n, md.d))
            reps[s] = mu[z] + np.einsum("nij,nj->ni", chol[z], eps)
        if ct is not None:
            reps = ct.inverse(reps)
        obs_vars, pp_vars = {}, {}
        for j, f in enumerate(md.feature_names):
            keep = md.observed[:, j]
            dim = f"{f}_observed"
            coords = {dim: md.obs_names[keep]}
            obs_vars[f] = xr.DataArray(md.values[keep, j], dims=(dim,), coords=coords)
            pp_vars[f] = xr.DataArray(reps[None, :, keep, j], dims=("chain", "draw", dim),
                                      coords=coords)
        return az.InferenceData(observed_data=xr.Dataset(obs_vars),
                                posterior_predictive=xr.Dataset(pp_vars))

    # ------------------------------------------------------------------ prediction
    def _chunked_rows(self, data: Any) -> tuple[Any, np.ndarray | None, str] | None:
        """(dask rows, row labels, input kind) of dask data or a chunked fit's data; else None."""
        if data is None and self.chunked:
            x = self.idata.observed_data["x"]
            # read back: in the chunks it was fitted in, so seeded draws repeat
            sizes = tuple(json.loads(self.attrs.get("row_chunks", "[]"))) or 250_000
            rows = x.data if is_dask(x) else x.chunk({"obs": sizes}).data
            return rows, np.asarray(x["obs"].values), str(self.attrs["input_kind"])
        if data is not None and is_dask(data):
            from .chunked import as_rows

            if self.transform is not None:
                raise DataError(
                    f"this fit has transform={self.transform.mapping()}, which dask data "
                    "do not support; pass data.compute()"
                )

            return as_rows(data, self.feature_names)
        return None

    @property
    def _point_fit(self) -> bool:
        """An EM estimate without bootstrap: its draws are all made at :meth:`point`."""
        return ("estimate" in self.idata.groups()
                and self.attrs.get("uncertainty", "none") == "none")

    def _row_loglik(self, md: MissingData) -> np.ndarray:
        """Per-row log-likelihood at :meth:`point` of prepared data, on its original scale."""
        return row_loglik(self.params, md) + md.log_jacobian

    @staticmethod
    def _restores(data: Any, md: MissingData) -> bool:
        """Whether per-row output for ``md`` gets the rows dropped at fit time (no observed
        entry) back in their input positions, so that it lines up with the input: only for
        the fitted data (``data`` None), with rows dropped, and their positions known."""
        return data is None and bool(md.dropped) and md.input_obs_names is not None

    def _dropped_imputed(self, md: MissingData, draws: int | None,
                         seed: int | None) -> np.ndarray | list[np.ndarray]:
        """The rows dropped at fit time (nothing observed) imputed as new rows: the mean at
        :meth:`point`, or one draw from each parameter set behind the fitted data's m draws
        (the posterior or bootstrap draws that :meth:`impute` picks, else the point),
        seeded by ``seed`` or else by the fit's own seed, so the same call repeats."""
        empty = self._data_or(np.full((len(md.dropped), md.d), np.nan))
        if draws is None:
            return self._completed(empty, False, None, None)
        base = max(int(self.attrs.get("seed", 0)), 0) if seed is None else seed
        post = Draws.from_dataset(self.idata.posterior[list(PARAM_NAMES)]).flat()
        pick = _spread(len(post.weights), draws)
        layout, out = empty.layout, []
        for i in range(draws):
            p = self.params if self._point_fit else Params(*(v[pick[i]] for v in post))
            _, sims = conditional_draws(p, e_step(p, layout), layout,
                                        np.random.default_rng([base, 1, i]), 1, empty.transform)
            out.append(sims[0])
        return out

    def _data_or(self, data: Any) -> MissingData:
        """The fitted data or new ``data``, on the scale the mixture was fitted on."""
        if data is None:
            return self._model_data
        return prepare(data, feature_names=self.feature_names, drop_empty=False,
                       fitted_by=self._fitted_by, transform=self.transform)

    def predict_proba(self, data: Any = None) -> np.ndarray:
        r"""Component membership probabilities given each row's observed entries.

        .. math:: r_{ik} = \frac{w_k\,N(x_{i,o} \mid \mu_{k,o}, \Sigma_{k,oo})}
                               {\sum_j w_j\,N(x_{i,o} \mid \mu_{j,o}, \Sigma_{j,oo})}

        at :meth:`point`; a row with nothing observed gets the weights. Returns an ndarray
        (n, K) in the rows' order, as scikit-learn does, for a DataFrame too
        (``pd.DataFrame(p, index=df.index)`` puts the labels back; :meth:`impute` keeps
        them). Lazy (a dask array, computed chunk by chunk) for dask data and chunked fits.
        """
        lazy = self._chunked_rows(data)
        if lazy is not None:
            from .chunked import row_map

            return row_map(self.params, lazy[0], "proba")
        md = self._data_or(data)
        out = responsibilities(self.params, md)
        if not self._restores(data, md):
            return out
        # nothing observed: the membership probabilities are the weights
        return md.restored(out, np.tile(self.params.weights, (len(md.dropped), 1)))

    def predict(self, data: Any = None) -> np.ndarray:
        """Most probable component of each row."""
        return self.predict_proba(data).argmax(axis=1)

    def impute(self, data: Any = None, *, draws: int | None = None, seed: int | None = None):
        """Fill missing entries.

        Parameters
        ----------
        data : array-like, optional
            New data; default the fitted data.
        draws : int, optional
            None gives one completed data set with :math:`E[x_{mis} \\mid x_{obs}]`
            (responsibility-weighted conditional means; with a transform, the conditional
            mean on the original scale, :math:`\\sum_k r_k E[f^{-1}(Y_k)]`, see
            :mod:`ppgmm.transforms`). An integer m gives a list of m
            completed data sets for multiple imputation: for the fitted data, m of the
            stored predictive draws ``x_missing`` (spread evenly over chains and draws,
            so a Bayesian or bootstrap fit carries parameter uncertainty; asking for more
            than were stored is an error there); for new data, or an EM point fit asked
            for more than it stored, m draws from the predictive distribution at
            :meth:`point`, seeded by ``seed``. Rows of the fitted data that were dropped
            for having nothing observed come back in place, imputed as new rows at
            :meth:`point` (the mixture's mean :math:`\\sum_k w_k \\mu_k`, or draws from it).
        seed : int, optional
            Seed for draws computed on demand.

        Returns
        -------
        Same type as the input (ndarray, DataFrame, DataArray or Dataset), or a list of
        them. For dask data and chunked fits: lazy, of the input's dask type, computed chunk
        by chunk when read or written; draws are made on request at :meth:`point` (chunk ``c``
        seeded by ``[seed, c, i]`` for draw ``i``).
        """
        seed = check_seed(seed)
        if draws is not None and not (isinstance(draws, int | np.integer)
                                      and not isinstance(draws, bool) and draws >= 1):
            raise SpecError(f"draws should be None or a positive integer, but got {draws!r}")
        lazy = self._chunked_rows(data)
        if lazy is not None:
            return self._impute_chunked(*lazy, draws=draws, seed=seed)
        md = self._data_or(data)
        out = self._completed(md, data is None, draws, seed)
        if self._restores(data, md):
            # the rows dropped at fit time, imputed as new rows with nothing observed
            rest = self._dropped_imputed(md, draws, seed)
            out = (md.restored(out, rest) if draws is None else
                   [md.restored(a, b) for a, b in zip(out, rest, strict=True)])
            return (md.wrap(out, md.input_obs_names) if draws is None else
                    [md.wrap(x, md.input_obs_names) for x in out])
        return md.wrap(out) if draws is None else [md.wrap(x) for x in out]

    def _completed(self, md: MissingData, fitted: bool, draws: int | None,
                   seed: int | None) -> np.ndarray | list[np.ndarray]:
        """:meth:`impute` as arrays (n, d) on the original scale, before wrapping."""
        if fitted and draws is None and "estimate" not in self.idata.groups():
            mean = self.idata.posterior["imputed_mean"].mean(("chain", "draw")).values
            return self._fill(md, mean)
        if fitted and draws is not None:
            stored = _stack(self.idata.posterior_predictive["x_missing"])
            # a point estimate (EM without bootstrap) asked for more draws than it stored
            # makes all of them on demand at the estimate, as for new data
            on_demand = self._point_fit and draws > len(stored)
            if not on_demand and draws > len(stored):  # draws >= 1: checked above
                raise SpecError(
                    f"draws should be an integer between 1 and the {len(stored)} stored "
                    f"predictive draws, but got {draws!r}; they carry parameter uncertainty "
                    "(posterior or bootstrap draws), so more need a refit with more draws"
                )
            if not on_demand:
                pick = _spread(len(stored), draws)
                return [self._fill(md, stored[i]) for i in pick]
        layout = md.layout
        n_draws = 0 if draws is None else int(draws)
        mean, sims = conditional_draws(self.params, e_step(self.params, layout), layout,
                                       np.random.default_rng(seed), n_draws, md.transform)
        if md.transform is not None:
            # the missing entries came back on the original scale; observed ones as given
            rows, cols = md.missing_index
            out = np.repeat(md.original[None], len(sims), axis=0)
            out[:, rows, cols] = sims[:, rows, cols]
            mean, sims = self._fill(md, mean[rows, cols]), out
        return mean if draws is None else list(sims)

    def _impute_chunked(self, rows: Any, obs: np.ndarray | None, kind: str, *,
                        draws: int | None, seed: int | None) -> Any:
        from .chunked import row_map, wrap

        feats = self.feature_names
        if draws is None:
            return wrap(row_map(self.params, rows, "mean"), kind, feats, obs)
        if seed is None:  # one seed for the set, so its draws are distinct streams
            seed = int(np.random.SeedSequence().entropy % 2**63)
        return [wrap(row_map(self.params, rows, "draw", seed=seed, draw=i), kind, feats, obs)
                for i in range(draws)]

    @staticmethod
    def _fill(md: MissingData, missing_values: np.ndarray) -> np.ndarray:
        out = md.original.copy()
        out[md.missing_index] = missing_values
        return out

    # ------------------------------------------------------------------ i/o
    def to_netcdf(self, path: str) -> str:
        """Write every group to one netCDF file; :func:`ppgmm.load` reads it back unchanged.

        The write is atomic: the file appears whole or not at all (a failed write leaves
        an existing file as it was), and saving over the file the fit was loaded from works.
        """
        from .io import atomic_write

        with atomic_write(path) as tmp:
            self.idata.to_netcdf(tmp)
        return str(path)

    def to_zarr(self, path: str) -> str:
        """Write every group to one Zarr store (format 2, a group per InferenceData group).

        Lazy groups of a chunked fit are computed and written chunk by chunk; read them
        back with ``xarray.open_zarr(path, group=...)``. The store is written beside
        ``path`` and then renamed into place, so a failed write leaves an existing store as
        it was; a ``path`` that exists and is not a Zarr store is refused.
        """
        from .io import atomic_store

        with atomic_store(path) as tmp:
            xr.Dataset().to_zarr(tmp, mode="w", zarr_format=2)  # the root group marks a store
            for group in self.idata.groups():
                ds = self.idata[group]
                if self.chunked and "obs" in ds.dims:
                    # Zarr stores regular chunks: rows dropped per chunk left them uneven
                    ds = ds.chunk({"obs": max(ds["x"].chunksizes["obs"])})
                ds.to_zarr(tmp, group=group, mode="a", zarr_format=2)
        return str(path)

    def to_datatree(self) -> xr.DataTree:
        """The same groups as an ``xarray.DataTree`` (the ArviZ 1.x layout)."""
        return xr.DataTree.from_dict({g: self.idata[g] for g in self.idata.groups()})


def load(path: str) -> Fit:
    """Read a fit written by :meth:`Fit.to_netcdf`.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ppgmm.DataError
        If the file is not a fit saved by ppgmm.
    """
    import arviz as az

    if os.path.isdir(str(path)):
        raise IsADirectoryError(f"{str(path)!r} is a folder, not a fit file")
    if not os.path.isfile(str(path)):
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        idata = az.from_netcdf(str(path))
        # read every group into memory and close the file, so the fit does not hold it
        # open (saving over the file it came from must work)
        for group in idata.groups():
            ds = idata[group]
            loaded = ds.load()
            ds.close()
            setattr(idata, group, loaded)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a netCDF file saved by ppgmm ({err})") from None
    groups = set(idata.groups())
    missing = {"posterior", "observed_data"} - groups
    if missing or "backend" not in idata.posterior.attrs or "spec" not in idata.posterior.attrs:
        raise DataError(
            f"{path} is a netCDF file but not a ppgmm fit (it lacks "
            f"{sorted(missing) or 'the posterior attrs backend and spec'}); write fits with "
            "Fit.to_netcdf"
        )
    return Fit(idata)
