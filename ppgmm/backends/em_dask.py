r"""The EM backend on dask data: the same EM, its E-step mapped over chunks on a cluster.

``ppgmm.fit(spec, data, backend="em")`` routes a dask collection here. The data are
validated and sorted by pattern chunk by chunk (:func:`ppgmm.chunked.prepare_chunked`),
the starting point comes from a uniform sample of rows (the in-memory default on that
sample), and :func:`ppgmm.backends.em.fit_em` runs the EM loop with the chunked E-step
(per-chunk sufficient statistics, tree-reduced): the M-step, the prior, acceleration and
stopping are those of the in-memory EM. The result keeps the Fit schema with lazy
per-row groups (:func:`ppgmm.fit.build_chunked_idata`). See docs/scale.md.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..checks import check_int, check_number
from ..chunked import ChunkedData, prepare_chunked, row_map
from ..exceptions import ConvergenceWarning, PpgmmError, SpecError, warn_user
from ..fit import Fit, build_chunked_idata
from ..prior import resolve_prior, warn_if_prior_dominates
from ..spec import GMM
from .em import EMResult, fit_em, initial_params, warn_if_reg_covar_dominates

__all__ = ["DASK_OPTIONS", "fit_dask", "em_dask_backend"]

#: options of the dask path besides the EM's own
DASK_OPTIONS = {"persist", "init_sample"}


def fit_dask(spec: GMM, data: ChunkedData, *, seed: int | None = None, n_init: int = 1,
             init: Any = "auto", init_sample: int = 50_000, uncertainty: str | None = None,
             imputation_draws: int | None = None, **options: Any) -> EMResult:
    """EM on chunked data: starts from a sample of rows, iterations over every chunk.

    Each of the ``n_init`` starts is the in-memory start (``init="auto"``, emEM on k-POD
    starts, under the prior resolved on the sample) computed on ``init_sample`` rows drawn
    uniformly (all rows when there are no more), then iterated by EM on all rows; the start
    with the highest objective wins.
    With at most ``init_sample`` rows and the same seed, the starts are those of the
    in-memory EM. ``imputation_draws`` is accepted for a common call and not used:
    draws are made on request (``fit.impute(draws=m)``).
    """
    n_init = check_int("n_init", n_init, 1)
    # the start is fitted to the sample: it needs at least one row per component
    init_sample = check_int("init_sample", init_sample, spec.n_components)
    if uncertainty is not None:
        raise SpecError(
            f"uncertainty={uncertainty!r} refits on resampled data sets, which needs the data "
            "in memory; with dask data use uncertainty=None (or .compute() the data first)"
        )
    reg = options.get("reg_covar")
    reg = (0.0 if spec.prior is not None else 1e-6) if reg is None else check_number(
        "reg_covar", reg)
    rng = np.random.default_rng(seed)
    if not isinstance(init, str):
        n_init = 1
    sample = None
    best: EMResult | None = None
    for _ in range(n_init):
        if isinstance(init, str) and sample is None:
            sample = data.sample(init_sample, rng)
        p0 = initial_params(spec, sample if isinstance(init, str) else data, init, rng, reg,
                            _sample_prior(spec, sample) if isinstance(init, str) else None)
        # with several starts, only the chosen one's warnings are said (below)
        res = fit_em(spec, data, seed=seed, init=p0, warn=n_init == 1, **options)
        if best is None or res.run.objective[-1] > best.run.objective[-1]:
            best = res
    assert best is not None
    best.n_init = n_init
    if n_init > 1:
        warn_if_reg_covar_dominates(best.reg_covar, data)
        warn_if_prior_dominates(spec, data, best.prior)
        for message in best.messages:
            warn_user(message, UserWarning if best.run.converged else ConvergenceWarning)
    return best


def _sample_prior(spec: GMM, sample: Any) -> Any:
    """The prior resolved on the sample, for the short EM runs of the start (None if the
    sample cannot support the default prior's moments: the start is a heuristic)."""
    try:
        return resolve_prior(spec, sample)
    except PpgmmError:
        return None


def em_dask_backend(spec: GMM, data: Any, *, seed: int | None = None, persist: Any = "auto",
                    **options: Any) -> Fit:
    """Validate the dask collection ``data``, run :func:`fit_dask`, build the lazy Fit."""
    import xarray as xr

    if persist not in ("auto", True, False):
        raise SpecError(f"persist should be 'auto', True or False, but got {persist!r}")
    cd = prepare_chunked(data, n_components=spec.n_components, persist=persist)
    res = fit_dask(spec, cd, seed=seed, **options)
    run = res.run
    rows = cd.rows()
    attrs = {
        "seed": -1 if seed is None else int(seed),
        "converged": int(run.converged),
        "n_iter": int(run.n_iter),
        "n_init": int(res.n_init),
        "objective": "log-posterior" if res.prior is not None else "log-likelihood",
        "reg_covar": float(res.reg_covar),
        "uncertainty": "none",
        "n_bootstrap": 0,
        "warnings": json.dumps(res.messages),
        "persisted": int(cd.persisted),
        "n_chunks": len(cd.parts),
        # rows kept per chunk: a loaded fit is read back in these chunks (seeded draws)
        "row_chunks": json.dumps([int(c) for c in rows.chunks[0]]),
        **({"dropped_rows": json.dumps(list(cd.dropped))} if cd.dropped else {}),
    }
    stats = xr.Dataset(
        {"objective": ("iteration", np.asarray(run.objective))},
        coords={"iteration": np.arange(len(run.objective))},
    )
    idata = build_chunked_idata(
        spec, backend="em", estimate=res.params, feature_names=cd.feature_names,
        obs_names=cd.obs_names, rows=rows, loglik=row_map(res.params, rows, "loglik"),
        attrs=attrs, sample_stats=stats, input_kind=cd.input_kind,
    )
    return Fit(idata)
