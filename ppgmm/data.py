"""The missing-data layer: validation at the boundary and rows grouped by missingness pattern.

This module is the one owner of missingness patterns. Every backend reads a
:class:`MissingData`; none re-derives the grouping.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .exceptions import DataError

__all__ = ["MissingData", "PatternLayout", "prepare"]


@dataclass(frozen=True, eq=False)
class PatternLayout:
    """Rows sorted by missingness pattern: the layout the numerics read.

    Attributes
    ----------
    xs : ndarray of shape (n, d)
        The rows in pattern order, missing entries set to 0.
    pat : ndarray of int, shape (n,)
        Pattern of each sorted row.
    patterns : ndarray of bool, shape (p, d)
        The observed-masks; the rows of pattern ``j`` are ``xs[starts[j]:starts[j + 1]]``.
    starts : ndarray of int, shape (p + 1,)
    order : ndarray of int, shape (n,)
        Original position of each sorted row.
    """

    xs: np.ndarray
    pat: np.ndarray
    patterns: np.ndarray
    starts: np.ndarray
    order: np.ndarray

    @property
    def n(self) -> int:
        """Number of rows."""
        return self.xs.shape[0]

    @property
    def observed(self) -> np.ndarray:
        """Observed-mask of each sorted row, shape (n, d)."""
        return self.patterns[self.pat]

    def block(self, a: int, b: int) -> tuple[PatternLayout, tuple[int, int]]:
        """Sorted rows ``a:b`` as a layout of the patterns they hold, and those patterns'
        range ``(p0, p1)`` in this layout (every one of them has rows in the block)."""
        p0 = int(np.searchsorted(self.starts, a, side="right")) - 1
        p1 = int(np.searchsorted(self.starts, b, side="left"))
        starts = np.clip(self.starts[p0:p1 + 1], a, b) - a
        sub = PatternLayout(self.xs[a:b], self.pat[a:b] - p0, self.patterns[p0:p1], starts,
                            self.order[a:b])
        return sub, (p0, p1)

    def unsort(self, a: np.ndarray, axis: int = 0) -> np.ndarray:
        """``a``, whose ``axis`` runs over the sorted rows, with the rows in original order."""
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(len(self.order))
        return np.take(a, inverse, axis=axis)


@dataclass(frozen=True, eq=False)
class MissingData:
    """Validated data with rows grouped by missingness pattern.

    Rows are stored in their original order. ``order`` sorts them by pattern, so the
    rows of pattern ``p`` are ``order[starts[p]:starts[p + 1]]``.

    Attributes
    ----------
    values : ndarray of shape (n, d)
        The data, NaN where missing.
    observed : ndarray of bool, shape (n, d)
        True where an entry is observed.
    feature_names : list of str
    obs_names : ndarray of shape (n,)
        Row labels (the DataFrame index, DataArray ``obs`` coordinate, or 0..n-1).
    patterns : ndarray of bool, shape (p, d)
        The distinct observed-masks, complete pattern first when present.
    pattern_index : ndarray of int, shape (n,)
        Pattern of each row.
    order, starts : ndarray of int
        Row permutation grouping rows by pattern, and the segment boundaries (length p + 1).
    input_kind : {"ndarray", "DataFrame", "DataArray"}
        The type the data came in, so imputations are returned in the same type.
    index_name : str, optional
        The DataFrame index's name, kept for imputations.
    dropped : tuple of int
        Positions, in the input, of the rows dropped for having no observed entry.
    """

    values: np.ndarray
    observed: np.ndarray
    feature_names: list[str]
    obs_names: np.ndarray
    patterns: np.ndarray
    pattern_index: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    input_kind: str = "ndarray"
    index_name: str | None = None
    dropped: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        """Number of rows."""
        return self.values.shape[0]

    @property
    def d(self) -> int:
        """Number of features."""
        return self.values.shape[1]

    @property
    def n_patterns(self) -> int:
        """Number of distinct missingness patterns."""
        return self.patterns.shape[0]

    @property
    def zero_filled(self) -> np.ndarray:
        """The values with missing entries replaced by 0."""
        return np.where(self.observed, self.values, 0.0)

    @property
    def layout(self) -> PatternLayout:
        """The rows sorted by pattern, the layout the numerics read."""
        o = self.order
        return PatternLayout(self.zero_filled[o], self.pattern_index[o], self.patterns,
                             self.starts, o)

    @property
    def missing_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, feature) positions of the missing entries, row-major."""
        return np.nonzero(~self.observed)

    @classmethod
    def from_arrays(
        cls,
        values: np.ndarray,
        feature_names: list[str],
        obs_names: np.ndarray,
        input_kind: str = "ndarray",
        index_name: str | None = None,
        dropped: tuple[int, ...] = (),
    ) -> MissingData:
        """Group already validated values by missingness pattern."""
        observed = ~np.isnan(values)
        # each row's mask packed into bytes, viewed as one scalar key: a 1-D unique, O(N D)
        # work plus a sort of N keys (never a lexicographic sort of whole rows)
        packed = np.packbits(observed, axis=1)
        width = packed.shape[1]
        if width <= 8:
            packed = np.pad(packed, ((0, 0), (0, 8 - width)))
            keys = np.ascontiguousarray(packed).view(np.uint64).ravel()
        else:
            keys = np.ascontiguousarray(packed).view(np.dtype((np.void, width))).ravel()
        first, inverse = np.unique(keys, return_index=True, return_inverse=True)[1:]
        patterns = observed[first]
        inverse = inverse.reshape(-1)
        # complete pattern first, then by number observed (descending): stable and readable
        rank = np.lexsort((np.arange(len(patterns)), -patterns.sum(axis=1)))
        relabel = np.empty_like(rank)
        relabel[rank] = np.arange(len(rank))
        patterns = patterns[rank]
        pattern_index = relabel[inverse]
        order = np.argsort(pattern_index, kind="stable")
        counts = np.bincount(pattern_index, minlength=len(patterns))
        starts = np.concatenate([[0], np.cumsum(counts)])
        return cls(
            values=values,
            observed=observed,
            feature_names=list(feature_names),
            obs_names=np.asarray(obs_names),
            patterns=patterns,
            pattern_index=pattern_index,
            order=order,
            starts=starts,
            input_kind=input_kind,
            index_name=index_name,
            dropped=tuple(dropped),
        )

    def wrap(self, values: np.ndarray) -> Any:
        """Return ``values`` (n, d) in the type and labels the data came in."""
        if self.input_kind == "DataFrame":
            return pd.DataFrame(values, index=pd.Index(self.obs_names, name=self.index_name),
                                columns=self.feature_names)
        if self.input_kind == "DataArray":
            return xr.DataArray(
                values,
                dims=("obs", "feature"),
                coords={"obs": self.obs_names, "feature": self.feature_names},
            )
        return values


def _to_array(data: Any) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    if isinstance(data, pd.DataFrame):
        # by dtype, not data[c]: with duplicate column names data[c] is a DataFrame
        bad = [
            str(c) for c, t in data.dtypes.items()
            if not pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t)
        ]
        if bad:
            raise DataError(
                f"column(s) {sorted(set(bad))} are not numeric; ppgmm models numeric features "
                "only. Drop or encode them first (e.g. df.select_dtypes('number'))."
            )
        values = data.to_numpy(dtype=float, na_value=np.nan)
        return values, [str(c) for c in data.columns], np.asarray(data.index), "DataFrame"
    if isinstance(data, xr.DataArray):
        if data.ndim != 2:
            raise DataError(
                f"data should be 2-D (obs, feature), but got a DataArray with dims {data.dims}"
            )
        if set(data.dims) == {"obs", "feature"}:
            data = data.transpose("obs", "feature")
        values = _numeric(data.values)
        obs_dim, feat_dim = data.dims
        feats = (
            [str(f) for f in data[feat_dim].values]
            if feat_dim in data.coords
            else [f"x{j}" for j in range(values.shape[1])]
        )
        obs = data[obs_dim].values if obs_dim in data.coords else np.arange(values.shape[0])
        return values, feats, np.asarray(obs), "DataArray"
    values = _numeric(np.asarray(data))
    if values.ndim != 2:
        raise DataError(
            f"data should have the shape (n_samples, n_features), but got an array of shape "
            f"{values.shape}; reshape a single feature with x.reshape(-1, 1)."
        )
    return values, [f"x{j}" for j in range(values.shape[1])], np.arange(values.shape[0]), "ndarray"


def _numeric(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == object
    ):
        raise DataError(f"data should be numeric, but got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DataError(
            f"data should have the shape (n_samples, n_features), but got an array of shape "
            f"{arr.shape}; reshape a single feature with x.reshape(-1, 1)."
        )
    if np.iscomplexobj(arr):
        raise DataError("data should be real-valued, but got complex numbers")
    try:
        return arr.astype(float)
    except (TypeError, ValueError):
        bad = []
        for j in range(arr.shape[1]):
            try:
                arr[:, j].astype(float)
            except (TypeError, ValueError):
                bad.append(j)
        raise DataError(
            f"column(s) {bad} are not numeric; ppgmm models numeric features only"
        ) from None


def prepare(
    data: Any,
    *,
    n_components: int | None = None,
    feature_names: list[str] | None = None,
    drop_empty: bool = True,
) -> MissingData:
    """Validate ``data`` and group its rows by missingness pattern.

    Parameters
    ----------
    data : ndarray, pandas.DataFrame or xarray.DataArray, shape (n, d)
        NaN (or pandas NA) marks a missing entry.
    n_components : int, optional
        When given, at least this many usable rows are required.
    feature_names : list of str, optional
        Expected features (for new data given to a fitted model). A DataFrame is
        reordered to them by name; other inputs must have this many columns.
    drop_empty : bool, default True
        Drop rows with no observed entry, with a warning saying how many. New data
        passed for prediction keeps them (``False``): such rows get the prior weights.

    Raises
    ------
    DataError
        For non-numeric columns, infinite values, a column with no observed value,
        fewer usable rows than components, or data that is not 2-D.
    """
    values, feats, obs, kind = _to_array(data)
    if feature_names is not None:
        generic = list(feature_names) == [f"x{j}" for j in range(len(feature_names))]
        if kind != "ndarray" and set(feature_names) <= set(feats):
            cols = [feats.index(f) for f in feature_names]
            values, feats = values[:, cols], list(feature_names)
        elif kind != "ndarray" and not generic:
            # named columns are matched by name, never silently by position
            absent = [f for f in feature_names if f not in feats]
            raise DataError(
                f"data should have the features {list(feature_names)} the model was fitted "
                f"on, but {absent} are not among its columns {feats}; rename the columns, "
                "or pass a NumPy array with the features in the fitted order"
            )
        elif values.shape[1] != len(feature_names):
            raise DataError(
                f"data should have the {len(feature_names)} features {feature_names} the model "
                f"was fitted on, but got {values.shape[1]} columns"
            )
        else:
            feats = list(feature_names)
    if values.shape[1] == 0:
        raise DataError("data should have at least one feature, but got 0 columns")
    if values.shape[0] == 0:
        raise DataError("data should have at least one row, but got 0 rows")
    if np.isinf(values).any():
        rows, cols = np.nonzero(np.isinf(values))
        raise DataError(
            f"data contain {len(rows)} infinite value(s) (first at row {obs[rows[0]].tolist()!r}, "
            f"column {feats[cols[0]]!r}); use NaN for missing entries and remove or clip infinities"
        )
    if len(set(feats)) != len(feats):
        raise DataError(f"feature names should be unique, but got {feats}")
    dropped: tuple[int, ...] = ()
    if drop_empty:
        empty = np.isnan(values).all(axis=1)
        if empty.any():
            dropped = tuple(int(i) for i in np.flatnonzero(empty))
            warnings.warn(
                f"dropped {int(empty.sum())} of {len(empty)} rows with no observed entry: they "
                "carry no information about the mixture.",
                UserWarning,
                stacklevel=3,
            )
            values, obs = values[~empty], obs[~empty]
        all_nan = np.isnan(values).all(axis=0) if values.shape[0] else np.ones(len(feats), bool)
        if all_nan.any():
            names = [feats[j] for j in np.flatnonzero(all_nan)]
            raise DataError(
                f"column(s) {names} have no observed value; remove them before fitting"
            )
    if n_components is not None and values.shape[0] < n_components:
        raise DataError(
            f"data should have at least n_components={n_components} usable rows, but got "
            f"{values.shape[0]}; use fewer components or more data"
        )
    index_name = data.index.name if kind == "DataFrame" else None
    index_name = None if index_name is None else str(index_name)
    return MissingData.from_arrays(values, feats, obs, kind, index_name, dropped)
