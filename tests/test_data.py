"""The missing-data layer: validation at the boundary and grouping rows by missingness pattern."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

import ppgmm
from ppgmm.data import MissingData, prepare


def _x(n=10, d=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


# --------------------------------------------------------------------------- errors


def test_errors_are_value_errors():
    assert issubclass(ppgmm.DataError, ValueError)
    assert issubclass(ppgmm.SpecError, ValueError)


def test_non_numeric_dataframe_column():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "name": ["x", "y", "z"], "b": [1.0, np.nan, 2.0]})
    with pytest.raises(ppgmm.DataError, match=r"\['name'\] are not numeric.*select_dtypes"):
        prepare(df)
    with pytest.raises(ppgmm.DataError, match="name"):
        ppgmm.fit(ppgmm.GMM(1), df)


def test_bool_dataframe_column_is_not_numeric():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "flag": [True, False, True]})
    with pytest.raises(ppgmm.DataError, match="flag"):
        prepare(df)


def test_non_numeric_array():
    arr = np.array([[1.0, "a"], [2.0, "b"]], dtype=object)
    with pytest.raises(ppgmm.DataError, match=r"column\(s\) \[1\] are not numeric"):
        prepare(arr)
    with pytest.raises(ppgmm.DataError, match="numeric"):
        prepare(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ppgmm.DataError, match="real-valued"):
        prepare(np.ones((3, 2)) * 1j)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_values(value):
    x = _x()
    x[3, 1] = value
    with pytest.raises(ppgmm.DataError, match=r"1 infinite value.*row 3.*'x1'.*NaN"):
        prepare(x)
    with pytest.raises(ppgmm.DataError, match="infinite"):
        ppgmm.fit(ppgmm.GMM(2), x)


def test_column_with_no_observed_value():
    df = pd.DataFrame(_x(), columns=["a", "b", "c"])
    df["b"] = np.nan
    with pytest.raises(ppgmm.DataError, match=r"\['b'\] have no observed value"):
        prepare(df)


def test_fewer_usable_rows_than_components():
    with pytest.raises(ppgmm.DataError, match="at least n_components=5 usable rows.*got 4"):
        prepare(_x(4), n_components=5)
    with pytest.raises(ppgmm.DataError, match="n_components=5"):
        ppgmm.fit(ppgmm.GMM(5), _x(4))
    # rows with nothing observed do not count
    x = _x(6)
    x[:3] = np.nan
    with pytest.warns(UserWarning, match="dropped 3 of 6 rows"):
        with pytest.raises(ppgmm.DataError, match="got 3"):
            prepare(x, n_components=4)


@pytest.mark.parametrize("bad", [np.arange(5.0), np.zeros((2, 3, 4)), 3.0])
def test_not_two_dimensional(bad):
    with pytest.raises(ppgmm.DataError, match="shape"):
        prepare(bad)


def test_one_dimensional_message_says_how_to_fix():
    with pytest.raises(ppgmm.DataError, match=r"reshape\(-1, 1\)"):
        ppgmm.fit(ppgmm.GMM(1), np.arange(5.0))


def test_three_dimensional_dataarray():
    with pytest.raises(ppgmm.DataError, match="2-D"):
        prepare(xr.DataArray(np.zeros((2, 3, 4))))


def test_no_features():
    with pytest.raises(ppgmm.DataError):
        prepare(np.zeros((5, 0)))


def test_duplicate_feature_names():
    df = pd.DataFrame(_x(5, 2), columns=["a", "a"])
    with pytest.raises(ppgmm.DataError, match="unique"):
        prepare(df)


def test_empty_rows_dropped_with_warning_saying_how_many():
    x = _x(10)
    x[[2, 7], :] = np.nan
    x[4, 0] = np.nan  # partly observed: kept
    with pytest.warns(UserWarning, match="dropped 2 of 10 rows with no observed entry") as one:
        md = prepare(x)
    assert md.n == 8
    assert_array_equal(md.obs_names, [0, 1, 3, 4, 5, 6, 8, 9])
    with pytest.warns(UserWarning, match="dropped 2 of 10 rows") as two:
        fit = ppgmm.fit(ppgmm.GMM(1), x)
    assert fit.data.n == 8
    # attributed to the caller's line, whichever public function was called
    assert {w.filename for w in [*one, *two]} == {__file__}


def test_warnings_skip_foreign_frames_between_ppgmm_frames():
    """A frame of other code in the middle of ppgmm's own calls (functools, contextlib, a
    generated __init__) must not be taken for the caller: the warning goes to the line that
    called into ppgmm. Two functions compiled as if in ppgmm's files call through a frame of
    this file."""
    import inspect
    import os

    from ppgmm.exceptions import warn_user

    pkg = os.path.dirname(ppgmm.__file__)
    outer, inner = {}, {"warn_user": warn_user}
    exec(compile("def outer(cb):\n    return cb()\n", os.path.join(pkg, "_outer.py"), "exec"),
         outer)
    exec(compile("def inner():\n    warn_user('deep')\n", os.path.join(pkg, "_inner.py"),
                 "exec"), inner)

    def foreign():  # stands in for functools, contextlib, ...
        return inner["inner"]()

    with pytest.warns(UserWarning, match="deep") as rec:
        line = inspect.currentframe().f_lineno + 1
        outer["outer"](foreign)
    assert (rec[0].filename, rec[0].lineno) == (__file__, line)


def test_prediction_data_keeps_empty_rows():
    x = _x(5)
    x[1] = np.nan
    md = prepare(x, drop_empty=False)
    assert md.n == 5


# --------------------------------------------------------------------------- input types


def test_dataframe_nullable_integers_become_nan():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": pd.array([1, None, 2], "Int64")},
                      index=["r1", "r2", "r3"])
    md = prepare(df)
    assert md.input_kind == "DataFrame"
    assert md.feature_names == ["a", "b"]
    assert list(md.obs_names) == ["r1", "r2", "r3"]
    assert np.isnan(md.values[1, 1]) and not md.observed[1, 1]


def test_dataarray_any_dim_order():
    x = _x(6, 2)
    da = xr.DataArray(x.T, dims=("feature", "obs"),
                      coords={"feature": ["u", "v"], "obs": np.arange(10, 16)})
    md = prepare(da)
    assert md.input_kind == "DataArray"
    assert md.feature_names == ["u", "v"]
    assert_array_equal(md.obs_names, np.arange(10, 16))
    assert_array_equal(md.values, x)


def test_wrap_returns_the_input_type():
    df = pd.DataFrame(_x(4, 2), columns=["p", "q"], index=list("abcd"))
    out = prepare(df).wrap(np.zeros((4, 2)))
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["p", "q"] and list(out.index) == list("abcd")
    da = xr.DataArray(_x(4, 2), dims=("obs", "feature"))
    out = prepare(da).wrap(np.zeros((4, 2)))
    assert isinstance(out, xr.DataArray) and out.dims == ("obs", "feature")
    assert isinstance(prepare(_x(4, 2)).wrap(np.zeros((4, 2))), np.ndarray)


def test_feature_names_reorder_dataframe_and_check_width():
    df = pd.DataFrame(_x(4, 3), columns=["a", "b", "c"])
    md = prepare(df[["c", "a", "b"]], feature_names=["a", "b", "c"])
    assert md.feature_names == ["a", "b", "c"]
    assert_array_equal(md.values, df.to_numpy())
    with pytest.raises(ppgmm.DataError, match="3 features"):
        prepare(_x(4, 2), feature_names=["a", "b", "c"])
    # named columns that do not match are refused, not used by position
    renamed = df[["c", "b", "a"]].rename(columns={"c": "C"})
    with pytest.raises(ppgmm.DataError, match=r"\['c'\] are not among its columns"):
        prepare(renamed, feature_names=["a", "b", "c"])
    # a model fitted on an unnamed array takes any same-width table by position
    assert prepare(renamed, feature_names=["x0", "x1", "x2"]).feature_names == ["x0", "x1", "x2"]


# --------------------------------------------------------------------------- patterns


masks = hnp.arrays(bool, st.tuples(st.integers(1, 30), st.integers(1, 5)))


@settings(max_examples=60, deadline=None)
@given(masks)
def test_pattern_grouping(mask):
    """Rows are grouped exactly by their observed-mask; the layout is consistent."""
    mask[:, 0] |= ~mask.any(axis=1)  # every row keeps one observed entry
    n, d = mask.shape
    values = np.where(mask, np.arange(n * d, dtype=float).reshape(n, d), np.nan)
    md = MissingData.from_arrays(values, [f"f{j}" for j in range(d)], np.arange(n))
    assert_array_equal(md.observed, mask)
    assert_array_equal(md.patterns[md.pattern_index], mask)
    assert len(np.unique(md.patterns, axis=0)) == md.n_patterns  # distinct
    assert_array_equal(np.sort(md.order), np.arange(n))  # a permutation
    assert md.starts[0] == 0 and md.starts[-1] == n
    for p in range(md.n_patterns):
        rows = md.order[md.starts[p]: md.starts[p + 1]]
        assert len(rows) > 0
        assert np.all(md.pattern_index[rows] == p)
    counts = md.patterns.sum(1)
    assert np.all(np.diff(counts) <= 0)  # most observed first (complete pattern first)
    if mask.all(axis=1).any():
        assert md.patterns[0].all()
    rows, cols = md.missing_index
    assert_array_equal(~mask, np.isin(np.arange(n * d), rows * d + cols).reshape(n, d))
    assert np.all(md.zero_filled[~mask] == 0)
