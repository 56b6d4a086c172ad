"""The missing-data layer: validation at the boundary and rows grouped by missingness pattern.

This module is the one owner of missingness patterns. Every backend reads a
:class:`MissingData`; none re-derives the grouping.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .exceptions import DataError, DataTypeError, warn_user
from .transforms import ColumnTransforms

__all__ = ["MissingData", "PatternLayout", "prepare", "check_dtypes", "check_dims",
           "check_array_dtype", "match_features", "check_scale"]


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
    input_kind : {"ndarray", "DataFrame", "DataArray", "Dataset"}
        The type the data came in, so imputations are returned in the same type.
    index_name : str, optional
        The DataFrame index's name (a Dataset's row dim), kept for imputations.
    dropped : tuple of int
        Positions, in the input, of the rows dropped for having no observed entry.
    dropped_names : ndarray, optional
        Their row labels (for an ndarray input, the positions themselves).
    transform : ColumnTransforms, optional
        Set on data put on a model's transformed scale (:meth:`transformed`): ``values``
        then hold :math:`f_j(x_{ij})`, and ``given`` the values as given.
    given : ndarray of shape (n, d), optional
        The values before the transform (None when there is none).
    column_labels : tuple of int, optional
        A DataFrame's column labels when they are integers (as ``pd.DataFrame(x)`` makes
        them), so that imputations come back with them; ``feature_names`` holds their text.
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
    transform: ColumnTransforms | None = None
    given: np.ndarray | None = None
    column_labels: tuple[int, ...] | None = None
    dropped_names: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of rows."""
        return self.values.shape[0]

    @property
    def original(self) -> np.ndarray:
        """The values on the scale they were given in (``values`` when not transformed)."""
        return self.values if self.given is None else self.given

    def transformed(self, transform: ColumnTransforms | None) -> MissingData:
        """The same rows and patterns on a transformed scale: values :math:`f_j(x_{ij})`.

        Raises a DataError for observed values outside a transform's support. ``None``
        returns the data unchanged.
        """
        if transform is None:
            return self
        if self.transform is not None:
            raise ValueError("the data are already on a transformed scale")
        transform.check_support(self.values)
        return dataclasses.replace(self, values=transform.forward(self.values),
                                   transform=transform, given=self.values)

    @property
    def log_jacobian(self) -> np.ndarray:
        r""":math:`\sum_{j \in o_i}\log|f_j'(x_{ij})|` per row (zeros when not transformed):
        a row's log-likelihood on the original scale is the transformed scale's plus this."""
        if self.transform is None:
            return np.zeros(self.n)
        return self.transform.log_jacobian(self.original)

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

    @cached_property
    def layout(self) -> PatternLayout:
        """The rows sorted by pattern, the layout the numerics read (built once)."""
        o = self.order
        return PatternLayout(self.zero_filled[o], self.pattern_index[o], self.patterns,
                             self.starts, o)

    @cached_property
    def var(self) -> np.ndarray:
        """Each column's variance over its observed entries (N denominator), as chunked
        data's ``var``."""
        return np.nanvar(self.values, axis=0)

    @cached_property
    def col_counts(self) -> np.ndarray:
        """Observed entries per column, as chunked data's ``col_counts``."""
        return self.observed.sum(axis=0)

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
        column_labels: tuple[int, ...] | None = None,
        dropped_names: np.ndarray | None = None,
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
            column_labels=column_labels,
            dropped_names=(None if dropped_names is None or not len(dropped)
                           else np.asarray(dropped_names)),
        )

    def restored(self, kept: np.ndarray, fill: np.ndarray) -> np.ndarray:
        """Rows in the input's order: ``kept`` (one per row here) with ``fill`` (one per
        dropped row) put back at the positions they were dropped from."""
        if not self.dropped:
            return kept
        at = np.r_[np.delete(np.arange(self.n + len(self.dropped)), self.dropped), self.dropped]
        return np.concatenate([kept, fill])[np.argsort(at, kind="stable")]

    @cached_property
    def input_obs_names(self) -> np.ndarray | None:
        """Row labels of the input, dropped rows included (None if they were not kept)."""
        if not self.dropped:
            return self.obs_names
        names = (np.asarray(self.dropped) if self.dropped_names is None
                 and self.input_kind == "ndarray" else self.dropped_names)
        return None if names is None else self.restored(self.obs_names, names)

    def wrap(self, values: np.ndarray, obs_names: np.ndarray | None = None) -> Any:
        """Return ``values`` (n, d) in the type and labels the data came in (``obs_names``
        for other rows, e.g. :attr:`input_obs_names`)."""
        obs = self.obs_names if obs_names is None else obs_names
        if self.input_kind == "DataFrame":
            columns = self.feature_names if self.column_labels is None else self.column_labels
            return pd.DataFrame(values, index=pd.Index(obs, name=self.index_name),
                                columns=list(columns))
        if self.input_kind == "DataArray":
            return xr.DataArray(
                values,
                dims=("obs", "feature"),
                coords={"obs": obs, "feature": self.feature_names},
            )
        if self.input_kind == "Dataset":
            dim = self.index_name or "obs"
            return xr.Dataset({f: (dim, values[:, j]) for j, f in enumerate(self.feature_names)},
                              coords={dim: obs})
        return values


_TEXT_ADVICE = (
    "ppgmm does not parse text: convert numbers stored as text first (pd.to_numeric(df[col]) "
    "or x.astype(float)), and drop or encode other columns (e.g. df.select_dtypes('number'))"
)
_BOOL_ADVICE = (
    "A Gaussian mixture is not a model of true/false values: drop such columns, or convert "
    "them with x.astype(float) if 0 and 1 are meant as numbers"
)
_OTHER_ADVICE = (
    "Drop such columns (e.g. df.select_dtypes('number')), or encode them as numbers first "
    "if that is meant (e.g. dates as days since a start)"
)
_RESHAPE = (
    "Reshape your data with x.reshape(-1, 1) if it has a single feature, or x.reshape(1, -1) if "
    "it is a single row"
)


def _not_numeric(names: list, why: str) -> DataTypeError:
    advice = (_BOOL_ADVICE if why == "booleans" else
              _OTHER_ADVICE if why.startswith("dtype ") else _TEXT_ADVICE)
    return DataTypeError(
        f"column(s) {names} are not numeric ({why}); ppgmm models numeric features only. "
        f"{advice}."
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _object_column(col: np.ndarray) -> tuple[np.ndarray | None, str]:
    """An object column as floats (None and pd.NA as NaN), or None and why it is not numeric."""
    out = np.empty(len(col))
    for i, v in enumerate(col):
        if _is_missing(v):
            out[i] = np.nan
        elif _is_number(v):
            out[i] = float(v)
        elif isinstance(v, str | bytes):
            return None, f"they hold text such as {v!r}"
        else:
            try:  # float()'s own wording, e.g. "argument must be a string or a real number"
                float(v)
            except (TypeError, ValueError) as err:
                return None, f"they hold {type(v).__name__} values: {err}"
            return None, f"they hold {type(v).__name__} values"
    return out, ""


def _object_to_float(arr: np.ndarray, names: list) -> np.ndarray:
    """A 2-D object array of numbers and None/pd.NA as floats, or a DataTypeError."""
    cols, bad, why = [], [], ""
    for j in range(arr.shape[1]):
        col, reason = _object_column(arr[:, j])
        if col is None:
            bad.append(names[j])
            why = why or reason
        else:
            cols.append(col)
    if bad:
        raise _not_numeric(bad, why)
    return np.column_stack(cols) if cols else np.empty(arr.shape, dtype=float)


def check_dtypes(dtypes: Any) -> None:
    """The errors :func:`prepare` gives for columns of these dtypes, from metadata alone.

    ``dtypes`` holds (name, dtype) pairs (``df.dtypes.items()``, also of a dask DataFrame).
    Booleans and types that are not numbers are a DataTypeError naming the columns, complex
    numbers a DataError; object columns pass here and are read value by value.
    """
    bad, why = [], ""
    for name, dtype in dtypes:
        if pd.api.types.is_bool_dtype(dtype):
            bad.append(name)
            why = why or "booleans"
        elif pd.api.types.is_complex_dtype(dtype):
            raise DataError(f"Complex data not supported: column {name!r} holds complex numbers; "
                            "data should be real-valued")
        elif pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
            bad.append(name)
            why = why or "they hold text"
        elif not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_object_dtype(dtype)):
            bad.append(name)
            why = why or f"dtype {dtype}"
    if bad:
        raise _not_numeric(sorted({str(b) for b in bad}), why)


def _frame(data: pd.DataFrame) -> np.ndarray:
    check_dtypes(data.dtypes.items())
    cols, bad, why = [], [], ""
    for j, dtype in enumerate(data.dtypes):
        # by position, not data[name]: with duplicate names data[name] is a DataFrame
        series = data.iloc[:, j]
        if pd.api.types.is_object_dtype(dtype):
            col, reason = _object_column(series.to_numpy())
            if col is None:
                bad.append(data.columns[j])
                why = why or reason
            else:
                cols.append(col)
        else:
            cols.append(series.to_numpy(dtype=float, na_value=np.nan))
    if bad:
        raise _not_numeric(sorted({str(b) for b in bad}), why)
    if not cols:
        return np.empty((len(data), 0))
    return np.column_stack(cols)


def match_features(feats: list[str], n_cols: int, named: bool, feature_names: list[str],
                   fitted_by: str = "the model") -> list[int] | None:
    """Columns of new data that hold the fitted ``feature_names``, in the fitted order.

    Named columns (a DataFrame's, a DataArray's) are matched by name, never silently by
    position, unless the model was fitted on generic names (x0, x1, ...); unnamed columns
    are taken by position. Returns the column indices, or None to take the columns as
    they are; a DataError says what does not match.
    """
    if named and set(feature_names) <= set(feats):
        return [feats.index(f) for f in feature_names]
    generic = list(feature_names) == [f"x{j}" for j in range(len(feature_names))]
    if named and not generic:
        absent = [f for f in feature_names if f not in feats]
        raise DataError(
            f"data should have the features {list(feature_names)} the model was fitted "
            f"on, but {absent} are not among its columns {feats}; rename the columns, "
            "or pass a NumPy array with the features in the fitted order"
        )
    if n_cols != len(feature_names):
        raise DataError(
            f"X has {n_cols} features, but {fitted_by} is expecting {len(feature_names)} "
            f"features as input (the features {list(feature_names)} it was fitted on)"
        )
    return None


def check_dims(data: xr.DataArray) -> None:
    """A DataArray's dims must be ('obs', 'feature') in either order: never guessed."""
    if data.ndim != 2:
        raise DataError(
            f"data should be 2-D (obs, feature), but got a DataArray with dims {data.dims}"
        )
    if set(data.dims) != {"obs", "feature"}:
        a, b = data.dims
        raise DataError(
            f"a DataArray should have the dims ('obs', 'feature') in either order, but got "
            f"{data.dims}: ppgmm does not guess which dim holds the rows; name them, e.g. "
            f"da.rename({{{str(a)!r}: 'obs', {str(b)!r}: 'feature'}}) if rows run along the first"
        )


def _dataarray(data: xr.DataArray) -> tuple[np.ndarray, list[str], np.ndarray]:
    check_dims(data)
    data = data.transpose("obs", "feature")
    values = _numeric(data.values, ["x"])
    feats = ([str(f) for f in data["feature"].values] if "feature" in data.coords
             else [f"x{j}" for j in range(values.shape[1])])
    obs = data["obs"].values if "obs" in data.coords else np.arange(values.shape[0])
    return values, feats, np.asarray(obs)


def _dataset(data: xr.Dataset) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    dims = {v.dims for v in data.data_vars.values()}
    if not data.data_vars or len(dims) != 1 or len(next(iter(dims))) != 1:
        raise DataError(
            "a Dataset is read with one variable per feature, each 1-D along one shared row "
            f"dim, but got variables with dims {sorted(map(str, dims))}; select the variables, "
            "or pass a DataArray with dims ('obs', 'feature')"
        )
    (dim,) = next(iter(dims))
    feats = [str(n) for n in data.data_vars]
    cols = [_numeric(np.asarray(data[n].values)[:, None], [n]) for n in data.data_vars]
    obs = data[dim].values if dim in data.coords else np.arange(data.sizes[dim])
    return np.column_stack(cols), feats, np.asarray(obs), str(dim)


def _savable(index: pd.Index) -> np.ndarray:
    """Row labels as netCDF stores them: numbers, naive times or text as they are; others
    (a MultiIndex's tuples, times with a time zone, mixed objects) as their text."""
    if isinstance(index, pd.MultiIndex) or isinstance(index.dtype, pd.DatetimeTZDtype) or not (
            index.dtype.kind in "biufM"
            or pd.api.types.infer_dtype(index, skipna=False) == "string"):
        return np.array([str(i) for i in index])
    return np.asarray(index)


def _int_labels(columns: pd.Index) -> tuple[int, ...] | None:
    """A DataFrame's column labels when all are integers (else None: text is kept)."""
    if isinstance(columns, pd.MultiIndex) or columns.dtype.kind not in "iu":
        return None
    return tuple(int(c) for c in columns)


def _to_array(data: Any) -> tuple[np.ndarray, list[str], np.ndarray, str, str | None]:
    """Values (n, d) with NaN where missing, feature names, row labels, kind, index name."""
    import scipy.sparse

    if scipy.sparse.issparse(data):
        raise DataError(
            "sparse input is not supported: ppgmm marks missing entries with NaN, while a sparse "
            "matrix's absent entries are zeros. Densify it with X.toarray(), with NaN where "
            "entries are missing"
        )
    if isinstance(data, str | bytes | os.PathLike):
        raise DataError(
            f"data should be an array or a table, not a file name ({data!r}); read the file first "
            "(e.g. pd.read_csv(path)), or use the ppgmm command line"
        )
    if isinstance(data, pd.Series):
        raise DataError(
            f"data should have the shape (n_samples, n_features), but got a pandas Series of "
            f"length {len(data)}: use s.to_frame() if it is one feature (a column), or "
            "s.to_frame().T if it is one row (e.g. df.iloc[0]; df.iloc[[0]] keeps it a table)"
        )
    if isinstance(data, pd.DataFrame):
        name = data.index.name
        return (_frame(data), [str(c) for c in data.columns], _savable(data.index),
                "DataFrame", None if name is None else str(name))
    if isinstance(data, xr.DataArray):
        return (*_dataarray(data), "DataArray", None)
    if isinstance(data, xr.Dataset):
        values, feats, obs, dim = _dataset(data)
        return values, feats, obs, "Dataset", dim
    if isinstance(data, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(data)
        arr = np.asarray(np.ma.getdata(data))
        if arr.dtype.kind in "biuf":  # masked entries are missing
            arr = np.where(mask, np.nan, arr.astype(float))
        elif arr.dtype == object:
            arr = arr.copy()
            arr[mask] = None
    else:
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as err:  # e.g. rows of different lengths
            raise DataError(
                f"data could not be read as a 2-D array of numbers ({err}); give rows of equal "
                "length, or a DataFrame"
            ) from None
    if arr.dtype.names:  # a structured (record) array: one field per feature
        if arr.ndim != 1:
            raise DataError(f"a structured array should be 1-D (one record per row), but got "
                            f"shape {arr.shape}")
        feats = [str(n) for n in arr.dtype.names]
        values = np.column_stack([_numeric(np.asarray(arr[n])[:, None], [n]) for n in feats])
        return values, feats, np.arange(len(arr)), "ndarray", None
    values = _numeric(arr, None)
    return values, [f"x{j}" for j in range(values.shape[1])], np.arange(values.shape[0]), \
        "ndarray", None


def _numeric(arr: np.ndarray, names: list | None) -> np.ndarray:
    """A 2-D array as floats, or a DataError naming what is wrong."""
    if arr.ndim != 2:
        got = (f"an array of shape {arr.shape}" if arr.ndim
               else f"a 0-d array (from {type(arr.item()).__name__ if arr.size else 'nothing'})")
        raise DataError(
            f"data should have the shape (n_samples, n_features), but got {got}. {_RESHAPE}."
        )
    names = list(range(arr.shape[1])) if names is None else names
    check_array_dtype(arr.dtype, names)
    if arr.dtype.kind == "O":
        return _object_to_float(arr, names)
    return arr.astype(float)


def check_array_dtype(dtype: Any, names: list) -> None:
    """The errors :func:`prepare` gives for an array of this dtype, from the dtype alone.

    Complex numbers are a DataError; booleans, text and other non-numbers a DataTypeError
    naming the columns ``names``; object arrays pass here and are read value by value.
    """
    dtype = np.dtype(dtype)
    kind = dtype.kind
    if kind == "c":
        raise DataError("Complex data not supported: data should be real-valued, but got "
                        "complex numbers")
    if kind in "iufO":
        return
    if kind == "b":
        raise _not_numeric(names, "booleans")
    if kind in "USa":
        raise _not_numeric(names, f"they hold text (dtype {dtype})")
    raise _not_numeric(names, f"dtype {dtype}")


#: data whose squares and products leave float64's range cannot be fitted; beyond these
#: magnitudes the user is asked to rescale (squares reach 1e200 or 1e-200, with room left
#: for sums over rows and products of several entries)
_LARGEST, _SMALLEST_SPREAD = 1e100, 1e-100


def _check_scale(values: np.ndarray, feats: list[str], *, fitting: bool) -> None:
    with np.errstate(invalid="ignore"):
        low = np.nanmin(values, axis=0, initial=np.inf)
        high = np.nanmax(values, axis=0, initial=-np.inf)
    check_scale(low, high, feats, fitting=fitting)


def check_scale(low: np.ndarray, high: np.ndarray, feats: list[str], *, fitting: bool) -> None:
    """A DataError for a column beyond float64's comfortable range or varying too little,
    from each column's observed lowest and highest values (inf / -inf when none)."""
    big = np.maximum(np.abs(np.where(np.isfinite(low), low, 0.0)),
                     np.abs(np.where(np.isfinite(high), high, 0.0)))
    with np.errstate(invalid="ignore"):
        spread = high - low
    fix = ("rescale the columns first, e.g. (x - x.mean()) / x.std() or by a power of ten; "
           "squares and products of the values must stay within float64's range (about "
           "1e-300 to 1e300)")
    if (big > _LARGEST).any():
        j = int(np.argmax(big))
        raise DataError(f"column {feats[j]!r} reaches {big[j]:.3g}, too large to model in float64: "
                        f"{fix}")
    tiny = (spread > 0) & (spread < _SMALLEST_SPREAD)
    if fitting and tiny.any():
        j = int(np.flatnonzero(tiny)[0])
        raise DataError(f"column {feats[j]!r} varies only by {spread[j]:.3g}, too little to model "
                        f"in float64: {fix}")


def _distinct_rows(values: np.ndarray, need: int) -> int:
    """The number of distinct rows (NaN a value of its own), or some count >= ``need``.

    Rows are counted in growing leading blocks, so data with enough distinct rows early on
    (nearly all data) cost a few small ``unique`` calls, not a sort of every row.
    """
    rows = 4 * need
    while True:
        head = values[:rows]
        distinct = len(np.unique(np.where(np.isnan(head), np.inf, head), axis=0))
        if distinct >= need or rows >= len(values):
            return distinct
        rows *= 16


def _check_support(values: np.ndarray, feats: list[str], n_components: int,
                   covariance: str | None) -> None:
    """Warnings for fits the data cannot support: sparse columns, too few distinct rows."""
    n, d = values.shape
    counts = (~np.isnan(values)).sum(axis=0)
    # a column seen in every row is not sparse, however few the rows (other checks say so)
    few = [(feats[j], int(c)) for j, c in enumerate(counts)
           if c < n and (c < d + 1 or c < 0.05 * n)]
    if few and n > 1:
        listed = ", ".join(f"{f!r} in {c}" for f, c in few)
        warn_user(
            f"column(s) observed in very few of the {n} rows ({listed}): their means and "
            "covariances rest on those rows alone (the EM may converge slowly or not at all). "
            "Drop such columns, or collect more data",
            UserWarning,
        )
    if n_components < 2 and covariance is None:
        return
    def rows_needed(cov: str) -> int:
        per = {"full": d + 1, "tied": 1, "diag": 2, "spherical": 2}[cov]
        return n_components * per + (d if cov == "tied" else 0)

    need = rows_needed(covariance or "diag")
    distinct = _distinct_rows(values, need)
    if distinct < need and (n_components >= 2 or n > 1):  # one row: its own errors follow
        what = (f"{n_components} components with {covariance or 'their'} covariances need: "
                "components may sit on single points" if n_components >= 2 else
                f"one component with a {covariance or 'full'} covariance needs: its covariance "
                "is singular")
        # only what the data can support and the call does not already use
        others = [f"covariance={c!r}" for c in ("diag", "spherical", "tied")
                  if c != covariance and rows_needed(c) <= distinct
                  and (n_components >= 2 or c != "tied")]
        fix = ", ".join((["fewer components"] if n_components >= 2 else []) + others) or (
            "more data")
        warn_user(
            f"the data have {distinct} distinct rows, fewer than the {need} that {what} (a "
            f"degenerate fit, whatever 'converged' says). Use {fix}",
            UserWarning,
        )


def prepare(
    data: Any,
    *,
    n_components: int | None = None,
    feature_names: list[str] | None = None,
    drop_empty: bool = True,
    covariance: str | None = None,
    fitted_by: str = "the model",
    transform: Any = None,
) -> MissingData:
    """Validate ``data`` and group its rows by missingness pattern.

    Parameters
    ----------
    data : array-like of shape (n, d)
        A NumPy array (a masked array's masked entries are missing), a list of rows, a
        pandas DataFrame (NaN, None and pd.NA are missing; object columns of numbers are
        read as numbers), an xarray DataArray with dims ("obs", "feature") in either order,
        or an xarray Dataset with one 1-D variable per feature. NaN marks a missing entry.
        Text is never parsed as numbers; sparse matrices are refused.
    n_components : int, optional
        When given (at fit time), at least this many usable rows are required, and
        warnings flag columns observed in very few rows and data with too few distinct
        rows for the model.
    feature_names : list of str, optional
        Expected features (for new data given to a fitted model). A DataFrame is
        reordered to them by name; other inputs must have this many columns.
    drop_empty : bool, default True
        Drop rows with no observed entry, with a warning saying how many. New data
        passed for prediction keeps them (``False``): such rows get the prior weights.
    covariance : str, optional
        The model's covariance type, for the distinct-rows warning.
    fitted_by : str, default "the model"
        Named in the error for new data with the wrong number of features.
    transform : dict or ColumnTransforms, optional
        A spec's ``transform`` (column name or position -> transform name): the data are
        returned on the transformed scale (:meth:`MissingData.transformed`).

    Raises
    ------
    DataError
        For non-numeric columns (a :class:`~ppgmm.exceptions.DataTypeError`), infinite
        values, values beyond float64's comfortable range, a column with no observed value,
        fewer usable rows than components, data that is not 2-D, or observed values outside
        a transform's support.
    SpecError
        For a transform of a column the data do not have.
    """
    if feature_names is not None and isinstance(data, pd.DataFrame):
        names = [str(c) for c in data.columns]
        if set(feature_names) <= set(names) and len(set(names)) == len(names):
            # new data for a fitted model: columns it was not fitted on are not read, so an
            # id or text column beside the features is ignored whatever its type
            data = data.iloc[:, [names.index(f) for f in feature_names]]
    values, feats, obs, kind, index_name = _to_array(data)
    labels = _int_labels(data.columns) if isinstance(data, pd.DataFrame) else None
    if feature_names is not None:
        cols = match_features(feats, values.shape[1], kind != "ndarray", feature_names,
                              fitted_by)
        if cols is not None and cols != list(range(values.shape[1])):  # else: no copy
            values = values[:, cols]
            labels = labels and tuple(labels[c] for c in cols)
        feats = list(feature_names)
    if values.shape[1] == 0:
        raise DataError(
            f"data should have at least one feature, but found 0 feature(s) "
            f"(shape={values.shape}) while a minimum of 1 is required."
        )
    if values.shape[0] == 0:
        raise DataError(
            f"data should have at least one row, but found 0 sample(s) (shape={values.shape}) "
            "while a minimum of 1 is required."
        )
    if np.isinf(values).any():
        rows, cols = np.nonzero(np.isinf(values))
        raise DataError(
            f"data contain {len(rows)} infinite value(s) (first at row {obs[rows[0]].tolist()!r}, "
            f"column {feats[cols[0]]!r}); use NaN for missing entries and remove or clip infinities"
        )
    if len(set(feats)) != len(feats):
        raise DataError(f"feature names should be unique, but got {feats}")
    _check_scale(values, feats, fitting=n_components is not None)
    dropped: tuple[int, ...] = ()
    dropped_names = None
    if drop_empty:
        empty = np.isnan(values).all(axis=1)
        if empty.all():
            raise DataError(f"all {len(empty)} rows are empty: the data hold no observed value")
        if empty.any():
            dropped = tuple(int(i) for i in np.flatnonzero(empty))
            warn_user(
                f"dropped {int(empty.sum())} of {len(empty)} rows with no observed entry: they "
                "carry no information about the mixture (the fit's impute(), predict_proba() "
                "and score_samples() still give them, in place: the mixture's mean, its "
                "weights and 0).",
                UserWarning,
            )
            values, obs, dropped_names = values[~empty], obs[~empty], obs[empty]
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
    if n_components is not None:
        _check_support(values, feats, n_components, covariance)
    md = MissingData.from_arrays(values, feats, obs, kind, index_name, dropped, labels,
                                 dropped_names)
    if not isinstance(transform, ColumnTransforms):
        transform = ColumnTransforms.resolve(transform, feats)
    return md.transformed(transform)
