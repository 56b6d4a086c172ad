"""``ppgmm.fit``: a thin dispatcher over the backend registry (:mod:`ppgmm.backends`)."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from .backends import BACKENDS, backend_options, get
from .checks import check_seed
from .chunked import is_dask
from .data import prepare
from .exceptions import SpecError
from .fit import Fit
from .spec import GMM

__all__ = ["fit", "backend_options", "BACKENDS"]


def fit(spec: GMM, data: Any, *, backend: str = "em", seed: int | None = None,
        **options: Any) -> Fit:
    """Fit the mixture ``spec`` to ``data`` with one backend.

    Parameters
    ----------
    spec : ppgmm.GMM
        The model specification.
    data : ndarray, pandas.DataFrame or xarray.DataArray, shape (n, d)
        NaN marks a missing entry; missing entries are marginalised exactly (MAR). A dask
        array, dask-backed DataArray or dask DataFrame runs the EM chunk by chunk on the
        active dask scheduler (docs/scale.md), with two more options: ``persist``
        ("auto", True, False: keep the chunks in the workers' memory, or read them from
        storage at every iteration) and ``init_sample`` (50000 rows for the start).
    backend : {"em", "advi", "nuts"}, default "em"
    seed : int, optional
        Seed for everything random (initialisation, bootstrap, draws): a non-negative
        integer below 2**63 (it is saved with the fit), or None for fresh entropy.
    **options
        Backend options. With ``spec.transform``, every backend fits the transformed
        columns and the result is mapped back (:mod:`ppgmm.transforms`). EM: ``n_init``
        (1), ``init`` ("auto": emEM, short EM runs from several k-POD starts on a
        subsample, the best one continued; "kpod", "kmeans++", "random", or parameters such
        as ``fit.point()``), ``max_iter`` (1000), ``tol`` (1e-10, on the gain in the
        objective per row), ``reg_covar`` (1e-6 for MLE, 0 under a prior),
        ``uncertainty`` (None or "bootstrap"), ``n_bootstrap`` (200),
        ``imputation_draws`` (None: 20 stored predictive draws, or none when that would
        exceed a million numbers; they are then drawn on request), ``stop`` ("gain": stop
        once a step gains less than ``tol``; "sklearn": scikit-learn's rule, one M-step
        later), ``accelerate`` (True: SQUAREM steps, with ``stop="gain"``). See the ADVI and
        NUTS backends for theirs.

    Returns
    -------
    ppgmm.Fit
    """
    if not isinstance(spec, GMM):
        raise SpecError(f"spec should be a ppgmm.GMM, but got {type(spec).__name__}")
    seed = check_seed(seed)
    entry = get(backend)
    dask_data = is_dask(data)
    if dask_data and spec.transform:
        raise SpecError(
            f"transform={dict(spec.transform)} is not supported for data in a dask collection "
            "(the chunked EM fits the columns as given); transform the columns before fitting "
            "(e.g. np.log on the dask DataFrame's column, and np.exp on its imputations), or "
            "pass data.compute()"
        )
    if dask_data and backend != "em":
        raise SpecError(
            f"backend {backend!r} needs the data in memory, but got a dask collection; use "
            "backend='em', which runs on the active dask scheduler, or pass data.compute()"
        )
    valid = entry.options()
    if dask_data:
        from .backends.em_dask import DASK_OPTIONS

        valid = valid | DASK_OPTIONS
    unknown = set(options) - valid
    if unknown:
        raise SpecError(
            f"unknown option(s) {sorted(unknown)} for backend {backend!r}; valid options are "
            f"{sorted(valid)}"
        )
    # wall_time is the fit's: the one-off imports of the result container (arviz, seconds)
    # and of the backend's module are made before the clock starts
    import arviz  # noqa: F401

    run = entry.load()
    start = time.perf_counter()
    if dask_data:
        from .backends.em_dask import em_dask_backend

        result: Fit = em_dask_backend(spec, data, seed=seed, **options)
    else:
        md = prepare(data, n_components=spec.n_components, covariance=spec.covariance,
                     transform=spec.transform)
        start = time.perf_counter()
        result = run(spec, md, seed=seed, **options)
    attrs = result.idata.posterior.attrs
    attrs["wall_time"] = time.perf_counter() - start
    recorded, objects = _record(options)
    attrs["options"] = json.dumps(recorded)  # as given, so a report can show the call again
    if objects:
        attrs["options_objects"] = json.dumps(objects)  # given as objects (a Fit, parameters)
    return result


def _record(options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Options that JSON can hold, and the names of those it cannot."""
    recorded, objects = {}, []
    for key, value in options.items():
        value = value.item() if isinstance(value, np.generic) else value
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            objects.append(key)
        else:
            recorded[key] = value
    return recorded, objects
