r"""Data that stay where they live: a dask collection, read chunk by chunk.

A dask array, a dask-backed ``xarray.DataArray`` or a dask DataFrame is never gathered
into one array. Its rows are cut into chunks (all columns in each); each chunk is
validated and sorted by missingness pattern once (:class:`~ppgmm.data.PatternLayout`),
kept on the workers when it fits in their memory (persisted). When it does not, only its
:class:`ChunkPlan` (each row's pattern as a small integer) stays on the workers, and every
pass reads the chunk from storage again and sorts it by a stable sort of those integers,
without validating again or comparing rows. An E-step maps
:func:`~ppgmm.numerics.em.expected_stats` over the chunks and tree-reduces the per-chunk
:class:`~ppgmm.numerics.em.SuffStats` with their exact pairwise
:meth:`~ppgmm.numerics.em.SuffStats.combine`, so :func:`~ppgmm.numerics.em.run_em`
iterates on a cluster exactly as in memory. Per-row quantities (log-likelihoods,
responsibilities, imputations) are lazy dask arrays, computed chunk by chunk.

Dask is optional: it is imported only when a dask collection is given
(:func:`is_dask` tests for one by duck typing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from .data import (
    MissingData,
    PatternLayout,
    check_array_dtype,
    check_dims,
    check_dtypes,
    check_scale,
    match_features,
)
from .exceptions import DataError, warn_user
from .numerics.em import SuffStats, expected_stats, single_gaussian_em, single_gaussian_start
from .numerics.patterns import conditional_draws, e_step
from .spec import Params

__all__ = ["is_dask", "ChunkedData", "prepare_chunked", "persist_fits", "row_map"]

#: chunks combined per task of the tree reduction
FAN_IN = 8
#: share of the workers' memory that persisted chunks may take under persist="auto"
MEMORY_SHARE = 0.5


def is_dask(data: Any) -> bool:
    """Whether ``data`` is a dask collection (a dask-backed DataArray counts)."""
    graph = getattr(data, "__dask_graph__", None)
    return callable(graph) and graph() is not None


# --------------------------------------------------------------------------- the input


def _as_dask_array(data: Any) -> tuple[Any, list[str], np.ndarray | None, str]:
    """(dask array (n, d), feature names, row labels or None for positions, input kind)."""
    if isinstance(data, xr.DataArray):
        check_dims(data)
        data = data.transpose("obs", "feature")
        obs_dim, feat_dim = data.dims
        check_array_dtype(data.dtype, ["x"])
        feats = ([str(f) for f in data[feat_dim].values] if feat_dim in data.coords
                 else [f"x{j}" for j in range(data.shape[1])])
        obs = np.asarray(data[obs_dim].values) if obs_dim in data.coords else None
        return data.data, feats, obs, "dask.DataArray"
    if hasattr(data, "to_dask_array") and hasattr(data, "dtypes"):  # a dask DataFrame
        check_dtypes(data.dtypes.items())
        # nullable numbers (Float64, Int64: pd.NA for missing) as float64 with NaN
        nullable = {c: "float64" for c, t in data.dtypes.items()
                    if pd.api.types.is_extension_array_dtype(t)
                    and pd.api.types.is_numeric_dtype(t)}
        data = data.astype(nullable) if nullable else data
        return (data.to_dask_array(lengths=True), [str(c) for c in data.columns], None,
                "dask.DataFrame")
    if data.ndim != 2:
        raise DataError(
            f"data should have the shape (n_samples, n_features), but got an array of shape "
            f"{data.shape}; reshape a single feature with x.reshape(-1, 1)."
        )
    check_array_dtype(data.dtype, list(range(data.shape[1])))
    return data, [f"x{j}" for j in range(data.shape[1])], None, "dask.array"


def _rows_chunked(arr: Any) -> Any:
    """Float rows with every column in each chunk and known chunk sizes."""
    if any(np.isnan(c) for c in arr.chunks[0]):
        arr = arr.compute_chunk_sizes()
    return arr.rechunk({1: -1})


# --------------------------------------------------------------------------- one chunk


class ChunkSummary(NamedTuple):
    """What the validation pass learns from one chunk (small: O(d) and its empty rows)."""

    n_in: int
    numeric: bool
    n_inf: int
    first_inf: tuple[int, int]  # (row in the chunk, column) of its first infinity
    empty: np.ndarray  # positions in the chunk of rows with no observed entry
    count: np.ndarray  # observed entries per column
    mean: np.ndarray  # observed mean per column
    m2: np.ndarray  # sum of squared deviations from it, per column
    low: np.ndarray
    high: np.ndarray


class ChunkPart(NamedTuple):
    """One chunk, validated and sorted by pattern (``layout`` None when no row is usable)."""

    layout: PatternLayout | None
    summary: ChunkSummary


class ChunkPlan(NamedTuple):
    """How one validated chunk's rows group by missingness pattern: what a streamed pass
    keeps between reads (about 1-2 bytes a row, a few % of the chunk's values).

    ``code[i]`` is the pattern of row ``i`` of the chunk as read, ``len(patterns)`` for a
    row dropped (no observed entry); a stable sort of ``code`` gives the pattern order,
    so no whole row is compared or sorted again. ``code`` is None when no row is usable.
    """

    code: np.ndarray | None  # (n_in,) smallest unsigned integer type that holds P + 1
    patterns: np.ndarray  # (P, d) observed-masks
    starts: np.ndarray  # (P + 1,) segment boundaries in the sorted usable rows
    summary: ChunkSummary


def _float(block: np.ndarray) -> np.ndarray | None:
    try:
        return np.asarray(block, dtype=float)
    except (TypeError, ValueError):
        return None


def _summarise(x: np.ndarray, n_in: int, empty: np.ndarray) -> ChunkSummary:
    d = x.shape[1]
    inf = np.isinf(x)
    n_inf = int(inf.sum())
    first = tuple(int(i) for i in np.argwhere(inf)[0]) if n_inf else (-1, -1)
    obs = ~np.isnan(x) & ~inf
    count = obs.sum(axis=0)
    # over: values near 1e160 square past float64; check_scale refuses them after the pass
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = np.where(obs, x, 0.0)
        mean = np.divide(z.sum(0), count, out=np.zeros(d), where=count > 0)
        m2 = (np.where(obs, x - mean, 0.0) ** 2).sum(0)
    big = np.finfo(float).max
    low = np.where(obs, x, big).min(0) if len(x) else np.full(d, big)
    high = np.where(obs, x, -big).max(0) if len(x) else np.full(d, -big)
    return ChunkSummary(n_in, True, n_inf, first, empty, count, mean, m2, low, high)


def chunk_plan(block: np.ndarray, drop_empty: bool = True) -> ChunkPlan:
    """Validate one chunk (the first pass) and find each row's missingness pattern."""
    x = _float(block)
    d = block.shape[1]
    if x is None:
        z = np.zeros(d)
        summary = ChunkSummary(len(block), False, 0, (-1, -1), np.zeros(0, int), z, z, z, z, z)
        return ChunkPlan(None, np.zeros((0, d), bool), np.zeros(1, int), summary)
    empty = np.flatnonzero(np.isnan(x).all(axis=1)) if drop_empty else np.zeros(0, int)
    summary = _summarise(x, len(x), empty)
    kept = np.ones(len(x), bool)
    kept[empty] = False
    if summary.n_inf or not kept.any():
        return ChunkPlan(None, np.zeros((0, d), bool), np.zeros(1, int), summary)
    md = MissingData.from_arrays(x[kept], [f"x{j}" for j in range(d)], np.flatnonzero(kept))
    code = np.full(len(x), md.n_patterns, dtype=np.min_scalar_type(md.n_patterns))
    code[kept] = md.pattern_index
    return ChunkPlan(code, md.patterns, md.starts, summary)


def plan_part(block: np.ndarray, plan: ChunkPlan) -> ChunkPart:
    """The chunk's usable rows sorted by pattern, from its :class:`ChunkPlan`: a stable
    sort of small integer codes and one gather, no validation (the first pass made it).

    The layout's ``order`` holds each sorted row's position in the chunk as read.
    """
    if plan.code is None:
        return ChunkPart(None, plan.summary)
    counts = np.diff(plan.starts)
    order = np.argsort(plan.code, kind="stable")[:plan.starts[-1]]
    xs = np.take(np.asarray(block, dtype=float), order, axis=0)
    np.copyto(xs, 0.0, where=np.isnan(xs))
    pat = np.repeat(np.arange(len(counts)), counts)
    return ChunkPart(PatternLayout(xs, pat, plan.patterns, plan.starts, order), plan.summary)


def chunk_part(block: np.ndarray, drop_empty: bool = True) -> ChunkPart:
    """Validate one chunk and sort its usable rows by missingness pattern."""
    return plan_part(block, chunk_plan(block, drop_empty))


def _summary(part: ChunkPart | ChunkPlan) -> ChunkSummary:
    return part.summary


def _chunk_stats(params: Params, part: ChunkPart) -> SuffStats | None:
    if part.layout is None:
        return None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return expected_stats(params, part.layout)


def _combine_all(*stats: SuffStats | None) -> SuffStats | None:
    total = None
    for s in stats:
        if s is not None:
            total = s if total is None else total.combine(s)
    return total


def _drop_rows(block: np.ndarray, drop: np.ndarray) -> np.ndarray:
    return np.delete(np.asarray(block, dtype=float), drop, axis=0)


# --------------------------------------------------------------------------- the data set


def _merge(summaries: list[ChunkSummary]) -> tuple[np.ndarray, ...]:
    """Column counts, means, variances, minima and maxima of all chunks (Chan et al.)."""
    count = np.zeros_like(summaries[0].count)
    mean = np.zeros(len(count))
    m2 = np.zeros(len(count))
    for s in summaries:
        n = count + s.count
        frac = np.divide(s.count, n, out=np.zeros(len(n)), where=n > 0)
        delta = s.mean - mean
        with np.errstate(over="ignore", invalid="ignore"):  # as in _summarise
            m2 = m2 + s.m2 + count * frac * delta**2
        mean = mean + frac * delta
        count = n
    var = np.divide(m2, count, out=np.zeros(len(count)), where=count > 0)
    low = np.min([s.low for s in summaries], axis=0)
    high = np.max([s.high for s in summaries], axis=0)
    return count, mean, var, low, high


@dataclass(eq=False)
class ChunkedData:
    """Validated rows of a dask collection, chunk by chunk: what the EM reads off a cluster.

    It stands where a :class:`~ppgmm.data.MissingData` stands for the in-memory EM:
    ``n``, ``d``, ``feature_names``, ``obs_names`` and ``dropped`` mean the same;
    :meth:`expected_stats` is the E-step (``layout`` names it for
    :func:`~ppgmm.numerics.em.run_em`), :meth:`sample` draws rows for a starting point.

    Attributes
    ----------
    x : dask.array.Array of shape (n_in, d)
        The input's rows (all columns per chunk), before rows with no observed entry
        were dropped.
    parts : list of dask.delayed.Delayed
        One :class:`ChunkPart` per chunk: persisted on the workers, or rebuilt at each
        pass from the chunk read again from storage and its :class:`ChunkPlan` (persisted
        on the workers: the first pass's validation and pattern grouping are not redone).
    """

    x: Any
    feature_names: list[str]
    obs_names: np.ndarray
    input_kind: str
    parts: list[Any]
    kept: tuple[int, ...]  # usable rows per chunk
    dropped_local: list[np.ndarray]  # per chunk, positions of the rows dropped
    count: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    spread: np.ndarray
    persisted: bool
    dropped: tuple[int, ...] = ()
    index_name: str | None = None
    _moments: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Number of usable rows."""
        return int(sum(self.kept))

    @property
    def d(self) -> int:
        """Number of features."""
        return len(self.feature_names)

    @property
    def complete(self) -> bool:
        """Whether every entry of the usable rows is observed."""
        return bool((self.count == self.n).all())

    @property
    def col_counts(self) -> np.ndarray:
        """Observed entries per column."""
        return self.count

    def expected_stats(self, params: Params) -> SuffStats:
        """The E-step: per-chunk statistics, tree-reduced by their exact ``combine``."""
        import dask
        from dask import delayed

        level = [delayed(_chunk_stats, pure=True)(params, p) for p in self.parts]
        while len(level) > 1:
            level = [delayed(_combine_all, pure=True)(*level[i:i + FAN_IN])
                     for i in range(0, len(level), FAN_IN)]
        (total,) = dask.compute(level[0])
        assert total is not None
        return total

    @property
    def layout(self) -> Any:
        """The E-step function that :func:`~ppgmm.numerics.em.run_em` iterates."""
        return self.expected_stats

    def rows(self) -> Any:
        """The usable rows as a lazy dask array (n, d), chunk sizes known."""
        import dask.array as da
        from dask import delayed

        if not self.dropped:
            return self.x
        blocks = self.x.to_delayed().ravel()
        return da.concatenate([
            da.from_delayed(delayed(_drop_rows, pure=True)(b, drop), (k, self.d), dtype=float)
            for b, drop, k in zip(blocks, self.dropped_local, self.kept, strict=True)
        ])

    def sample(self, m: int, rng: np.random.Generator) -> MissingData:
        """Up to ``m`` usable rows drawn uniformly without replacement (all rows if n <= m)."""
        n_in = self.x.shape[0]
        if n_in <= m:
            values = np.asarray(self.x.compute(), dtype=float)
        else:
            idx = np.sort(rng.choice(n_in, m, replace=False))
            values = np.asarray(self.x[idx].compute(), dtype=float)
        values = values[~np.isnan(values).all(axis=1)]
        return MissingData.from_arrays(values, self.feature_names, np.arange(len(values)))

    def single_gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """Maximum-likelihood mean and covariance (N denominator) of one Gaussian under MAR.

        The same K = 1 EM as :func:`~ppgmm.numerics.em.fit_single_gaussian`, from the
        same start (observed column means and variances), on the chunked E-step. On
        complete data one E-step gives the column means and covariance exactly.
        """
        if self._moments is None:
            if self.complete:
                stats = self.expected_stats(single_gaussian_start(self.mean, self.var))
                self._moments = stats.mean[0], stats.scatter[0] / self.n
            else:
                self._moments = single_gaussian_em(self.mean, self.var, self.expected_stats,
                                                   n=self.n)
        return self._moments


def persist_fits(nbytes: float) -> bool:
    """Whether ``nbytes`` of pattern-sorted chunks fit in the share :data:`MEMORY_SHARE` of
    the memory of the active ``dask.distributed`` cluster (or of this machine's free memory
    under the threaded scheduler)."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        limits = [w.get("memory_limit") or 0
                  for w in client.scheduler_info(n_workers=-1)["workers"].values()]
        total = float(sum(limits))
        if total <= 0:
            return True  # no limit set
    else:
        try:
            import psutil
        except ImportError:
            return True
        total = float(psutil.virtual_memory().available)
    return nbytes <= MEMORY_SHARE * total


def _raise_invalid(arr: Any, summaries: list[ChunkSummary], offsets: np.ndarray,
                   feats: list[str], obs: np.ndarray | None) -> None:
    """The in-memory validation errors, from the chunks' summaries."""
    if not all(s.numeric for s in summaries):
        raise DataError(f"data should be numeric, but got dtype {arr.dtype} with values that "
                        "are not numbers")
    bad = [(i, s) for i, s in enumerate(summaries) if s.n_inf]
    if bad:
        i, s = bad[0]
        row = int(offsets[i] + s.first_inf[0])
        label = row if obs is None else obs[row]
        label = label.tolist() if isinstance(label, np.generic) else label
        raise DataError(
            f"data contain {sum(t.n_inf for _, t in bad)} infinite value(s) (first at row "
            f"{label!r}, column {feats[s.first_inf[1]]!r}); use NaN for missing entries and "
            "remove or clip infinities"
        )


def prepare_chunked(data: Any, *, n_components: int | None = None, persist: Any = "auto",
                    drop_empty: bool = True) -> ChunkedData:
    """Validate a dask collection in one pass and sort each chunk's rows by pattern.

    The checks and their errors are those of :func:`ppgmm.prepare`: non-numeric
    columns, infinite values, rows with no observed entry (dropped, with one warning that
    counts them all), columns with no observed value, fewer usable rows than components.

    Parameters
    ----------
    data : dask.array.Array, dask-backed xarray.DataArray or dask.dataframe.DataFrame
    n_components : int, optional
    persist : {"auto", True, False}, default "auto"
        Keep the pattern-sorted chunks in the workers' memory between passes (True), or
        read them from storage again at every pass, keeping only each chunk's
        :class:`ChunkPlan` (1-4 bytes a row) on the workers (False). "auto" persists when
        they take at most half the cluster's memory.
    drop_empty : bool, default True
    """
    import dask
    from dask import delayed

    arr, feats, obs, kind = _as_dask_array(data)
    arr = _rows_chunked(arr)
    if arr.shape[1] == 0:
        raise DataError("data should have at least one feature, but got 0 columns")
    if arr.shape[0] == 0:
        raise DataError("data should have at least one row, but got 0 rows")
    if len(set(feats)) != len(feats):
        raise DataError(f"feature names should be unique, but got {feats}")
    n_in, d = arr.shape
    if persist == "auto":
        persist = persist_fits(n_in * (8.0 * d + 16.0))
    blocks = arr.to_delayed().ravel()
    if persist:
        # the pattern-sorted chunks stay on the workers
        parts = list(dask.persist(*[delayed(chunk_part, pure=True)(b, drop_empty)
                                    for b in blocks]))
        kept_on_workers = parts
    else:
        # only each chunk's plan stays; every pass reads the chunk again and applies it
        kept_on_workers = list(dask.persist(*[delayed(chunk_plan, pure=True)(b, drop_empty)
                                              for b in blocks]))
        parts = [delayed(plan_part, pure=True)(b, plan)
                 for b, plan in zip(blocks, kept_on_workers, strict=True)]
    summaries = list(dask.compute(*[delayed(_summary, pure=True)(p) for p in kept_on_workers]))
    offsets = np.concatenate([[0], np.cumsum(arr.chunks[0])])
    _raise_invalid(arr, summaries, offsets, feats, obs)
    dropped_local = [s.empty for s in summaries]
    dropped = np.concatenate([o + e for o, e in zip(offsets[:-1], dropped_local, strict=True)])
    dropped = dropped.astype(int)
    if drop_empty and len(dropped) == n_in:
        raise DataError(f"all {n_in} rows are empty: the data hold no observed value")
    if len(dropped):
        warn_user(
            f"dropped {len(dropped)} of {n_in} rows with no observed entry: they "
            "carry no information about the mixture (a dask fit's outputs skip them).",
            UserWarning,
        )
    count, mean, var, low, high = _merge(summaries)
    kept = tuple(s.n_in - len(s.empty) for s in summaries)
    if drop_empty and (count == 0).any():
        names = [feats[j] for j in np.flatnonzero(count == 0)]
        raise DataError(f"column(s) {names} have no observed value; remove them before fitting")
    check_scale(np.where(count > 0, low, np.inf), np.where(count > 0, high, -np.inf), feats,
                fitting=n_components is not None)
    if n_components is not None and sum(kept) < n_components:
        raise DataError(
            f"data should have at least n_components={n_components} usable rows, but got "
            f"{sum(kept)}; use fewer components or more data"
        )
    labels = np.arange(n_in) if obs is None else obs
    return ChunkedData(arr, feats, np.delete(labels, dropped), kind, parts, kept, dropped_local,
                       count, mean, var, high - low, bool(persist), tuple(dropped.tolist()))


# --------------------------------------------------------------------------- per-row maps


def _row_block(block: np.ndarray, params: Params, what: str, seed: Any, draw: int,
               block_info: Any = None) -> np.ndarray:
    """One chunk's per-row quantity ``what`` at ``params`` (rows with no entry allowed)."""
    x = np.asarray(block, dtype=float)
    if np.isinf(x).any():
        raise DataError("data contain infinite value(s); use NaN for missing entries and "
                        "remove or clip infinities")
    md = MissingData.from_arrays(x, [f"x{j}" for j in range(x.shape[1])], np.arange(len(x)))
    layout = md.layout
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = e_step(params, layout)
        if what == "loglik":
            return layout.unsort(e.row_loglik)
        if what == "proba":
            return layout.unsort(e.resp)
        if what == "mean":
            return conditional_draws(params, e, layout, np.random.default_rng(0), 0)[0]
        where = 0 if block_info is None else block_info[0]["chunk-location"][0]
        rng = np.random.default_rng([int(seed), where, int(draw)])
        return conditional_draws(params, e, layout, rng, 1)[1][0]


def row_map(params: Params, x: Any, what: str, *, seed: int | None = None,
            draw: int = 0) -> Any:
    """A lazy per-row quantity of the dask array ``x`` (n, d), chunk by chunk.

    ``what``: "loglik" (n,), "proba" (n, K), "mean" (n, d: missing entries replaced by
    :math:`E[x_{mis} \\mid x_{obs}]`) or "draw" (n, d: predictive draw number ``draw``;
    chunk ``c`` draws it from ``numpy.random.default_rng([seed, c, draw])``, so each draw
    is computed alone, and the same chunks give the same draws).
    """
    x = _rows_chunked(x)
    k = len(params.weights)
    seed = int(np.random.SeedSequence(seed).entropy % 2**63) if seed is None else seed
    args = (params, what, seed, draw)
    if what == "loglik":
        return x.map_blocks(_row_block, *args, drop_axis=1, dtype=float)
    if what == "proba":
        return x.map_blocks(_row_block, *args, chunks=(x.chunks[0], (k,)), dtype=float)
    return x.map_blocks(_row_block, *args, dtype=float)


def as_rows(data: Any, feature_names: list[str]) -> tuple[Any, np.ndarray | None, str]:
    """New dask data for a fitted model: (rows (n, d) in the fitted column order, row labels
    or None for positions, input kind)."""
    arr, feats, obs, kind = _as_dask_array(data)
    cols = match_features(feats, arr.shape[1], kind != "dask.array", feature_names)
    return (arr if cols is None else arr[:, cols]), obs, kind


def wrap(arr: Any, kind: str, feature_names: list[str], obs: np.ndarray | None) -> Any:
    """A lazy (n, d) result in the type the data came in: a dask array, a dask-backed
    DataArray or a dask DataFrame, labelled by ``obs`` (the fitted rows' positions, which
    skip dropped rows), else positional."""
    if kind == "dask.DataArray":
        coords: dict[str, Any] = {"feature": feature_names}
        if obs is not None:
            coords["obs"] = obs
        return xr.DataArray(arr, dims=("obs", "feature"), coords=coords)
    if kind == "dask.DataFrame":
        import dask.array as da
        import dask.dataframe as dd

        out = dd.from_dask_array(arr, columns=feature_names)
        if obs is None:
            return out
        labels = dd.from_dask_array(da.from_array(obs, chunks=(arr.chunks[0],)))
        return out.map_partitions(_label_rows, labels, meta=out._meta,
                                  align_dataframes=False).clear_divisions()
    return arr


def _label_rows(part: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    return part.set_axis(pd.Index(labels.to_numpy()), axis=0)
