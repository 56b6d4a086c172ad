"""Inputs a user may hand over: every one works or gets a clear ppgmm error.

One test (or parameter) per row of the bad-input table of the 2026-12 newcomer review,
plus the containers of NumPy, pandas and xarray. Where an input works, the result is
checked against an independent reference (the same data as a plain float array).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import xarray as xr
from numpy.testing import assert_allclose, assert_array_equal

import ppgmm
from ppgmm.data import prepare


@pytest.fixture
def x(rng):
    return rng.normal(size=(200, 3))


def _nan(x, rng, frac=0.1):
    x = x.copy()
    x[rng.random(x.shape) < frac] = np.nan
    x[np.isnan(x).all(axis=1), 0] = 0.5  # no empty rows (they are dropped with a warning)
    return x


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed", [-1, 1.5, 2**63, 2**64, True, "0", np.float64(2.0)])
def test_bad_seeds_are_spec_errors_at_the_boundary(seed, x):
    msg = r"seed should be None or an integer in \[0, 2\*\*63\)"
    with pytest.raises(ppgmm.SpecError, match=msg):
        ppgmm.fit(ppgmm.GMM(1), x, seed=seed)
    with pytest.raises(ppgmm.SpecError, match="seed should be"):
        ppgmm.simulate(ppgmm.GMM(2), 10, seed=seed)
    with pytest.raises(ppgmm.SpecError, match="random_state should be"):
        ppgmm.GaussianMixture(1, random_state=seed).fit(x)


def test_largest_seed_saves_and_loads(x, tmp_path):
    f = ppgmm.fit(ppgmm.GMM(1), x, seed=2**63 - 1)
    f.to_netcdf(tmp_path / "f.nc")
    assert ppgmm.load(tmp_path / "f.nc").attrs["seed"] == 2**63 - 1


# --------------------------------------------------------------------------- the prior


def test_negative_scalar_prior_scale_with_full_covariance_is_a_spec_error(x):
    with pytest.raises(ppgmm.SpecError, match=r"shape \(3, 3\).*positive definite.*"
                       r"got the number -1.0.*scale > 0"):
        ppgmm.fit(ppgmm.GMM(2, prior=ppgmm.Prior(scale=-1.0)), x, seed=0)
    with pytest.raises(ppgmm.SpecError, match="positive number"):
        ppgmm.fit(ppgmm.GMM(2, "diag", prior=ppgmm.Prior(scale=-1.0)), x, seed=0)
    with pytest.raises(ppgmm.SpecError, match=r"prior mean should have the shape \(3,\)"):
        ppgmm.fit(ppgmm.GMM(2, prior=ppgmm.Prior(mean=[0.0, 0.0])), x, seed=0)


# --------------------------------------------------------------------------- collinearity


@pytest.mark.parametrize("kind", ["duplicate", "combination"])
def test_collinear_columns_with_nan_are_named(kind, x, rng):
    extra = x[:, 2] if kind == "duplicate" else x[:, 0] + 2 * x[:, 1]
    xc = _nan(np.column_stack([x, extra]), rng)
    for cov in ("full", "tied"):
        with pytest.raises(ppgmm.DataError) as err:
            ppgmm.fit(ppgmm.GMM(2, cov), xc, seed=0)
        msg = str(err.value)
        if kind == "duplicate":
            assert "'x2' and 'x3' are exact linear functions of each other" in msg
        else:
            assert "['x0', 'x1', 'x3'] are linear combinations of one another" in msg
        assert "fewest" not in msg
    # diagonal covariances never need the joint covariance: they fit, with a note
    for cov in ("diag", "spherical"):
        with pytest.warns(UserWarning, match="each column's observed mean and variance"):
            f = ppgmm.fit(ppgmm.GMM(2, cov), xc, seed=0)
        assert np.isfinite(f.loglik)
        # the prior's mean is then the columns' observed means
        from ppgmm.prior import resolve_prior

        with pytest.warns(UserWarning):
            rp = resolve_prior(ppgmm.GMM(2, cov), prepare(xc))
        assert_allclose(rp.mean, np.nanmean(xc, axis=0))


# --------------------------------------------------------------------------- scale


@pytest.mark.parametrize("scale, what", [(1e300, "too large"), (1e150, "too large"),
                                         (1e-300, "too little"), (1e-150, "too little")])
def test_values_beyond_float64_range_ask_to_rescale(scale, what, x):
    for call in (lambda d: ppgmm.fit(ppgmm.GMM(2), d, seed=0),
                 lambda d: ppgmm.GaussianMixture(2, random_state=0).fit(d)):
        with pytest.raises(ppgmm.DataError, match=f"{what} to model in float64: rescale"):
            call(x * scale)
    # the suggested fix (divide by a power of ten) works
    z = (x * scale) / scale
    assert np.isfinite(ppgmm.fit(ppgmm.GMM(2), z, seed=0).loglik)


def test_large_but_representable_scale_fits_like_unit_scale(x):
    """1e80 is far from overflow: the fit is the unit-scale fit, rescaled."""
    a = ppgmm.fit(ppgmm.GMM(1), x, seed=0).params
    b = ppgmm.fit(ppgmm.GMM(1), x * 1e80, seed=0).params
    assert_allclose(b.means, a.means * 1e80, rtol=1e-8)
    assert_allclose(b.covariances, a.covariances * 1e160, rtol=1e-8)


# --------------------------------------------------------------------------- degenerate data


def test_as_many_rows_as_components_warns(rng):
    with pytest.warns(UserWarning, match="4 distinct rows, fewer than the 12 that 4 components"):
        ppgmm.fit(ppgmm.GMM(4), rng.normal(size=(4, 2)), seed=0)


def test_few_distinct_rows_warns(rng):
    x = np.repeat(rng.normal(size=(5, 3)), 40, axis=0)
    with pytest.warns(UserWarning, match="5 distinct rows, fewer than the 8"):
        ppgmm.fit(ppgmm.GMM(2), x, seed=0)


def test_too_few_rows_advice_names_only_what_the_data_support_and_the_call_lacks(rng):
    """4 distinct rows, K=3: diag needs 6, spherical 6, tied 5 (3 + d): only fewer
    components is left; and a column seen in every row is not called sparse."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ppgmm.fit(ppgmm.GMM(3, "diag"), rng.normal(size=(4, 2)), seed=0)
    text = [str(w.message) for w in rec if "distinct rows" in str(w.message)]
    assert len(text) == 1 and text[0].endswith("Use fewer components")
    assert not any("very few" in str(w.message) for w in rec)
    # full needs 3 x 4 = 12; diag, spherical and tied need 6
    with pytest.warns(UserWarning, match="Use fewer components, covariance='diag', "
                                         "covariance='spherical', covariance='tied'$"):
        ppgmm.fit(ppgmm.GMM(3), rng.normal(size=(8, 3)), seed=0)


def test_one_component_on_too_few_distinct_rows_warns(rng):
    """Two distinct points in 3-D: the MLE covariance is singular (its likelihood is held
    up by reg_covar alone), so K=1 warns too."""
    x = np.repeat(rng.normal(size=(2, 3)), 25, axis=0)
    with pytest.warns(UserWarning, match="2 distinct rows, fewer than the 4 that one component"):
        with pytest.warns(UserWarning, match=r"component\(s\) 0 .* collapsed") as rec:
            ppgmm.fit(ppgmm.GMM(1, prior=None), x, seed=0)
    assert "fewer components" not in str(rec[-1].message)


def test_column_observed_in_few_rows_warns(x):
    x = x.copy()
    x[3:, 1] = np.nan
    with warnings.catch_warnings(), \
            pytest.warns(UserWarning, match=r"very few of the 200 rows \('x1' in 3\)"):
        warnings.simplefilter("ignore", ppgmm.ConvergenceWarning)  # as the warning says
        try:
            ppgmm.fit(ppgmm.GMM(2), x, seed=0)
        except ppgmm.DataError as err:  # or the prior's one-Gaussian fit names the column
            assert "'x1' (3 rows) are observed in too few" in str(err)


def test_enough_rows_give_no_warning(x, rng):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ppgmm.fit(ppgmm.GMM(3), _nan(x, rng, 0.3), seed=0)


# --------------------------------------------------------------------------- containers


def test_dataarray_with_other_dims_is_refused_not_read_positionally(rng):
    da = xr.DataArray(rng.normal(size=(3, 200)), dims=("variable", "sample"))
    msg = r"dims \('obs', 'feature'\).*\('variable', 'sample'\).*da.rename"
    with pytest.raises(ppgmm.DataError, match=msg):
        ppgmm.fit(ppgmm.GMM(2), da, seed=0)
    with pytest.raises(ppgmm.DataError, match=msg):
        ppgmm.GaussianMixture(2).fit(da)
    named = da.rename({"variable": "feature", "sample": "obs"})
    md = prepare(named)
    assert md.values.shape == (200, 3)
    assert_array_equal(md.values, da.values.T)


@pytest.mark.parametrize("make", [scipy.sparse.csr_matrix, scipy.sparse.csr_array,
                                  scipy.sparse.coo_matrix])
def test_scipy_sparse_is_refused_with_the_right_advice(make):
    with pytest.raises(ppgmm.DataError, match=r"sparse input is not supported.*toarray\(\)"):
        ppgmm.fit(ppgmm.GMM(1), make(np.eye(5)))


def test_object_numbers_are_numbers(x, rng):
    xn = _nan(x, rng)
    df = pd.DataFrame(xn, columns=list("abc"))
    obj = df.astype(object)
    obj.iloc[3, 1] = None
    obj.iloc[4, 2] = pd.NA
    ref = xn.copy()
    ref[3, 1] = ref[4, 2] = np.nan
    assert_array_equal(prepare(obj).values, ref)
    assert_array_equal(prepare(np.asarray(obj)).values, ref)
    assert_array_equal(prepare([[1, None], [2.5, 3]]).values, [[1, np.nan], [2.5, 3]])


@pytest.mark.parametrize("data", [
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "s": ["1.5", "2", "3"]}),
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "s": pd.array(["1.5", "2", "3"], dtype="string")}),
    np.array([[1.0, "1.5"], [2.0, "2"], [3.0, "3"]], dtype=object),
    np.array([["1.5", "2"], ["3", "4"], ["5", "1"]]),
])
def test_numbers_stored_as_text_are_refused_consistently(data):
    with pytest.raises(ppgmm.DataError, match=r"not numeric.*pd.to_numeric"):
        prepare(data)
    with pytest.raises(TypeError):  # a DataTypeError: also what scikit-learn expects
        prepare(data)


@pytest.mark.parametrize("column, why", [
    ([True, False, True], "booleans"),
    (pd.array([True, None, False], dtype="boolean"), "booleans"),
    (pd.Categorical([1, 2, 3]), "category"),
    (pd.date_range("2020", periods=3), "datetime64"),
    (pd.to_timedelta([1, 2, 3], unit="s"), "timedelta64"),
    ([{"a": 1}, 2.0, 3.0], "dict"),
])
def test_other_non_numeric_columns_are_named(column, why):
    df = pd.DataFrame({"ok": [1.0, 2.0, 3.0], "bad": column})
    with pytest.raises(ppgmm.DataError, match=rf"\['bad'\] are not numeric \(.*{why}"):
        prepare(df)


@pytest.mark.parametrize("column", [pd.Categorical(["a", "b", "a"]),
                                    pd.date_range("2020", periods=3)])
def test_category_and_date_columns_are_not_told_about_text(column):
    df = pd.DataFrame({"ok": [1.0, 2.0, 3.0], "bad": column})
    with pytest.raises(ppgmm.DataError, match="Drop such columns") as err:
        prepare(df)
    assert "text" not in str(err.value)


def test_boolean_columns_get_advice_about_booleans():
    with pytest.raises(ppgmm.DataError, match=r"not a model of true/false.*astype\(float\)"):
        prepare(np.array([[True, False], [False, True]]))


def test_options_that_would_be_ignored_or_out_of_range_say_so(x):
    with pytest.raises(ppgmm.SpecError, match="used only with uncertainty='bootstrap'"):
        ppgmm.fit(ppgmm.GMM(2), x, seed=0, n_bootstrap=5)
    fit = ppgmm.fit(ppgmm.GMM(2), x, seed=0)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="draws should be None or a positive integer"):
            fit.impute(draws=bad)
    xm = _nan(x, np.random.default_rng(1))
    boot = ppgmm.fit(ppgmm.GMM(2), xm, seed=0, uncertainty="bootstrap", n_bootstrap=2)
    with pytest.raises(ValueError, match="between 1 and the 2 stored.*parameter uncertainty"):
        boot.impute(draws=3)


def test_draws_of_data_with_nothing_missing_are_the_data(rng):
    x = rng.normal(size=(50, 2))
    fit = ppgmm.fit(ppgmm.GMM(2), x, seed=0)
    sets = fit.impute(draws=3)
    assert len(sets) == 3 and all(np.array_equal(s, x) for s in sets)


def test_masked_array_masked_entries_are_missing(x):
    m = np.ma.masked_array(x, mask=np.zeros_like(x, dtype=bool))
    m.mask[2, 1] = m.mask[5, 0] = True
    ref = x.copy()
    ref[2, 1] = ref[5, 0] = np.nan
    assert_array_equal(prepare(m).values, ref)


@pytest.mark.parametrize("dtype", ["Int64", "Float64", "float64[pyarrow]"])
def test_pandas_nullable_and_arrow_columns(dtype):
    if "pyarrow" in dtype:
        pytest.importorskip("pyarrow")
    df = pd.DataFrame({"a": pd.array([1, None, 3, 4], dtype=dtype), "b": [1.0, 2.0, 3.0, 1.0]})
    assert_array_equal(prepare(df).values, [[1, 1], [np.nan, 2], [3, 3], [4, 1]])


def test_pandas_sparse_dataframe_reads_zeros_as_values():
    df = pd.DataFrame({"a": pd.arrays.SparseArray([1.0, 0.0, np.nan]), "b": [1.0, 2.0, 3.0]})
    assert_array_equal(prepare(df).values, [[1, 1], [0, 2], [np.nan, 3]])


def test_dataset_variables_are_features_and_imputations_come_back_as_a_dataset(x, rng):
    xn = _nan(x, rng)
    ds = xr.Dataset({n: ("t", xn[:, j]) for j, n in enumerate("abc")},
                    coords={"t": np.arange(100, 300)})
    f = ppgmm.fit(ppgmm.GMM(1), ds, seed=0)
    ref = ppgmm.fit(ppgmm.GMM(1), xn, seed=0)
    assert f.feature_names == ["a", "b", "c"]
    assert_allclose(f.params.means, ref.params.means)
    out = f.impute()
    assert isinstance(out, xr.Dataset) and list(out.data_vars) == ["a", "b", "c"]
    assert_array_equal(out["t"].values, np.arange(100, 300))
    assert_allclose(np.column_stack([out[n].values for n in "abc"]), ref.impute())
    with pytest.raises(ppgmm.DataError, match="one variable per feature"):
        prepare(xr.Dataset({"a": (("u", "v"), np.zeros((2, 2)))}))


def test_structured_array_fields_are_features():
    rec = np.array([(1.0, 2), (3.0, 4), (np.nan, 1)], dtype=[("a", float), ("b", int)])
    md = prepare(rec)
    assert md.feature_names == ["a", "b"]
    assert_array_equal(md.values, [[1, 2], [3, 4], [np.nan, 1]])


@pytest.mark.parametrize("data, match", [
    ([[1.0, 2.0], [3.0]], "rows of equal length"),
    ("data.csv", "not a file name"),
    (pd.Series([1.0, 2.0, 3.0]),
     r"pandas Series.*to_frame\(\) if it is one feature.*to_frame\(\).T if it is one row"),
    (np.ones(5), r"shape \(5,\).*Reshape your data"),
    ({"a": [1, 2]}, "0-d array"),
    (np.ones((3, 2)) * 1j, "Complex data not supported"),
    (np.empty((12, 0)), r"0 feature\(s\) \(shape=\(12, 0\)\)"),
    (np.empty((0, 3)), r"0 sample\(s\)"),
])
def test_unusable_containers_get_clear_errors(data, match):
    with pytest.raises(ppgmm.DataError, match=match):
        ppgmm.fit(ppgmm.GMM(1), data)


# --------------------------------------------------------------------------- files


def test_failed_save_leaves_no_partial_file_and_keeps_the_old_one(x, tmp_path, monkeypatch):
    f = ppgmm.fit(ppgmm.GMM(1), x, seed=0)
    path = tmp_path / "fit.nc"
    f.to_netcdf(path)
    before = path.read_bytes()

    def boom(self, target, *args, **kwargs):
        with open(target, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(type(f.idata), "to_netcdf", boom)
    with pytest.raises(OSError, match="disk full"):
        f.to_netcdf(path)
    with pytest.raises(OSError, match="disk full"):
        f.to_netcdf(tmp_path / "new.nc")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["fit.nc"]


def test_saving_over_the_loaded_file_works(x, tmp_path):
    f = ppgmm.fit(ppgmm.GMM(2), x, seed=0)
    path = tmp_path / "fit.nc"
    f.to_netcdf(path)
    g = ppgmm.load(path)
    g.to_netcdf(path)
    h = ppgmm.load(path)
    for group in f.idata.groups():
        assert h.idata[group].identical(f.idata[group])
    assert sorted(os.listdir(tmp_path)) == ["fit.nc"]


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from ppgmm.io import atomic_write

    target = tmp_path / "r.html"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.html"]
    with atomic_write(target) as tmp, open(tmp, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["r.html"]


def test_writes_to_a_folder_or_a_missing_folder_name_the_user_s_path(tmp_path):
    """No temporary file's name in the message, and nothing left behind."""
    from ppgmm.io import atomic_write

    with pytest.raises(IsADirectoryError, match=r"it is a folder") as err, \
            atomic_write(tmp_path):
        pass
    assert ".tmp" not in str(err.value)
    missing = tmp_path / "no" / "f.nc"
    with pytest.raises(FileNotFoundError, match=r"the folder .*no' does not exist") as err, \
            atomic_write(missing):
        pass
    assert ".tmp" not in str(err.value) and os.listdir(tmp_path) == []
    with pytest.raises(IsADirectoryError, match="is a folder, not a fit file"):
        ppgmm.load(tmp_path)


def test_report_is_written_through_atomic_write(x, tmp_path, monkeypatch):
    import ppgmm.io

    used = []
    real = ppgmm.io.atomic_write
    monkeypatch.setattr(ppgmm.io, "atomic_write", lambda p: used.append(p) or real(p))
    cmp = ppgmm.compare([ppgmm.fit(ppgmm.GMM(1), x, seed=0)])
    cmp.report(tmp_path / "r.html")
    assert used == [tmp_path / "r.html"] and os.listdir(tmp_path) == ["r.html"]


# --------------------------------------------------------------------------- import


def test_import_stays_light():
    code = ("import ppgmm, sys; print([m for m in ('arviz', 'pymc', 'sklearn', 'matplotlib') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(ppgmm.__file__)))
    assert out.stdout.strip() == "[]"


def test_reg_covar_large_next_to_the_data_s_variances_warns():
    """Two clusters 4 apart in units of 1e-4: reg_covar's 1e-6 is 20 times a column's
    variance (about 5e-8) and merges them (scikit-learn does the same, silently)."""
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 4]) * 1e-4
    with pytest.warns(UserWarning, match=r"reg_covar=1e-06 .* \(reg_covar is 2\d times it\)"):
        ppgmm.GaussianMixture(2, random_state=0).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ppgmm.GaussianMixture(2, random_state=0, reg_covar=1e-12).fit(x)
        ppgmm.GaussianMixture(2, random_state=0).fit(x * 100)


def test_data_with_no_observed_value_says_so():
    with pytest.raises(ppgmm.DataError, match="all 5 rows are empty"):
        prepare(np.full((5, 2), np.nan))
