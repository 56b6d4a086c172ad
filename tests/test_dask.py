"""EM on dask data against the in-memory EM (itself checked against scikit-learn and scipy).

One LocalCluster (2 worker processes, 1 thread each, a memory limit) serves the module and
is torn down at its end.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import mcar, mixture, scipy_row_loglik, typed_cov
from numpy.testing import assert_allclose

import ppgmm
from ppgmm.chunked import is_dask, persist_fits, prepare_chunked
from ppgmm.numerics.em import run_em
from ppgmm.prior import data_moments

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

COV_TYPES = ["full", "diag", "spherical", "tied"]
MEMORY_LIMIT = 512 * 2**20
DROP = "dropped 3 of 603 rows with no observed entry"


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cluster's start-up chatter is not under test
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           memory_limit=MEMORY_LIMIT, dashboard_address=None)
        client = distributed.Client(cluster)
    yield client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def data():
    """600 rows of a 3-component mixture in 4-D, 25% MCAR, 3 rows with nothing observed."""
    x, _, _ = mixture(seed=4, n=600, d=4, k=3, sep=2.5)
    x = mcar(x, 0.25, seed=5)
    return np.insert(x, [10, 250, 599], np.nan, axis=0)


def _start(x: np.ndarray, covariance: str, k: int = 3) -> ppgmm.Params:
    """One deterministic start of the covariance type, shared by both fits."""
    rng = np.random.default_rng(7)
    xf = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
    xf = xf[~np.isnan(x).all(axis=1)]
    means = xf[rng.choice(len(xf), k, replace=False)]
    covs = typed_cov(np.broadcast_to(np.cov(xf, rowvar=False), (k, 4, 4)).copy(), covariance)
    return ppgmm.Params(np.full(k, 1.0 / k), means, covs)


def _fit(spec, data, **kw):
    """A fit of ``data`` (which has 3 empty rows); from a given start, 15 EM steps."""
    kw = {"max_iter": 15, "tol": 0.0, **kw} if "init" in kw else {"tol": 1e-8, **kw}
    with pytest.warns(UserWarning, match=DROP):
        if kw.get("tol"):
            return ppgmm.fit(spec, data, seed=0, **kw)
        with pytest.warns(ppgmm.ConvergenceWarning, match="did not converge"):
            return ppgmm.fit(spec, data, seed=0, **kw)


def _same(a: ppgmm.Fit, b: ppgmm.Fit, rtol: float = 1e-10) -> None:
    ta, tb = a.idata.sample_stats.objective.values, b.idata.sample_stats.objective.values
    assert len(ta) == len(tb)
    assert_allclose(ta, tb, rtol=rtol, atol=0)
    for name in ("weights", "means", "covariances"):
        assert_allclose(getattr(a.params, name), getattr(b.params, name), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("prior", [None, "default"])
@pytest.mark.parametrize("covariance", COV_TYPES)
def test_same_fit_as_in_memory(client, data, covariance, prior):
    spec = ppgmm.GMM(3, covariance=covariance, prior=prior)
    p0 = _start(data, covariance)
    mem = _fit(spec, data, init=p0)
    dsk = _fit(spec, da.from_array(data, chunks=(97, 2)), init=p0)
    assert dsk.attrs["n_chunks"] == 7 and dsk.attrs["persisted"] == 1
    _same(mem, dsk)


def test_chunk_boundaries_do_not_matter(client, data):
    """Chunks that split every missingness pattern, and one chunk, give the same fit."""
    spec = ppgmm.GMM(3, covariance="full", prior="default")
    p0 = _start(data, "full")
    mem = _fit(spec, data, init=p0)
    for chunks in (29, 603):  # 21 chunks (a two-level reduction tree), and one
        _same(mem, _fit(spec, da.from_array(data, chunks=(chunks, 4)), init=p0))


def test_prior_moments_chunk_by_chunk(client, data):
    """The default prior's mean and scale: the K=1 MAR EM on chunks equals it in memory, and
    on complete data equals numpy's column means and covariance."""
    with pytest.warns(UserWarning, match=DROP):
        md = ppgmm.prepare(data)
        cd = prepare_chunked(da.from_array(data, chunks=50))
    for got, want in zip(data_moments(cd), data_moments(md), strict=True):
        assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # a fixed point of the K=1 EM (the MAR maximum likelihood), not a loosely stopped run:
    # one more EM step moves nothing beyond 1e-10 relative (the rule; it was 3e-7)
    mean, cov = data_moments(md)
    cov = cov * (md.n - 1) / md.n  # data_moments gives the N - 1 form; the MLE has N
    step = run_em(ppgmm.Params(np.ones(1), mean[None], cov[None]), md.layout, "full", None,
                  max_iter=1, tol=0.0, reg_covar=0.0).params
    assert_allclose(step.means[0], mean, rtol=1e-9, atol=1e-13)
    assert_allclose(step.covariances[0], cov, rtol=1e-9, atol=1e-13)
    full, _, _ = mixture(seed=1, n=500, d=3)
    mean, cov = data_moments(prepare_chunked(da.from_array(full, chunks=64)))
    assert_allclose(mean, full.mean(0), rtol=1e-12)
    assert_allclose(cov, np.cov(full, rowvar=False), rtol=1e-12)


def test_degenerate_prior_fit_chunk_by_chunk_falls_back_as_in_memory(client, monkeypatch):
    """When the one-Gaussian fit behind the default prior has no maximum, chunked data take
    the in-memory way out: a DataError for full covariances, for diagonal ones each
    column's observed mean and variance (numpy's), with a warning. The fit's failure is
    stubbed: found chunk by chunk it takes its 12,000 passes over the chunks (minutes)."""
    x = np.random.default_rng(0).normal(size=(30, 3))
    x[2:, 1] = np.nan
    cd = prepare_chunked(da.from_array(x, chunks=10))

    def no_maximum():
        raise ppgmm.PpgmmError("the one-Gaussian EM appears to have no maximum")

    monkeypatch.setattr(cd, "single_gaussian", no_maximum)
    with pytest.raises(ppgmm.DataError, match=r"too few rows \(the fewest: 'x1', 2 rows\)"):
        data_moments(cd, "full")
    with pytest.warns(UserWarning, match="come from each column's observed mean and variance"):
        mean, scale = data_moments(cd, "diag")
    assert_allclose(mean, np.nanmean(x, axis=0), rtol=1e-12)
    assert_allclose(scale, np.diag(np.nanvar(x, axis=0, ddof=1)), rtol=1e-12)


def test_default_start_from_sample(client, data):
    """With every row in the sample the start is the in-memory default's; from a 200-row
    sample the fit reaches the same optimum."""
    spec = ppgmm.GMM(3)
    mem = _fit(spec, data)
    _same(mem, _fit(spec, da.from_array(data, chunks=100)))
    small = _fit(spec, da.from_array(data, chunks=100), init_sample=200)
    # both stop at a per-row gain below 1e-8; another optimum would differ by far more
    assert_allclose(small.loglik, mem.loglik, rtol=1e-6)


def _held(client) -> int:
    """Keys held in the workers' memory."""
    return sum(client.run(lambda dask_worker: len(dask_worker.data)).values())


def test_streams_from_storage(client, data, tmp_path):
    """With persist=False (what "auto" picks when the chunks exceed half the workers'
    memory) each pass reads the Zarr store: same fit, nothing left on the workers."""
    total = 2 * MEMORY_LIMIT
    assert persist_fits(0.4 * total) and not persist_fits(0.6 * total)
    store = str(tmp_path / "x.zarr")
    da.from_array(data, chunks=(64, 4)).to_zarr(store)
    spec = ppgmm.GMM(3, covariance="diag", prior="default")
    p0 = _start(data, "diag")
    dsk = _fit(spec, da.from_zarr(store), init=p0, persist=False)
    assert dsk.attrs["persisted"] == 0
    # the scheduler tells workers to release keys asynchronously: give it a moment
    deadline = time.monotonic() + 10.0
    while _held(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _held(client) == 0
    _same(_fit(spec, data, init=p0), dsk)


def _stored(client) -> dict[str, int]:
    """Bytes held in the workers' memory per task name (dask's own size estimate), once
    the scheduler's asynchronous releases have settled (up to 10 s). A key copied to a
    second worker (the scheduler may move a plan to the worker that reads its chunk)
    counts once: the bound is on what the fit keeps, not on how the scheduler places it."""
    def held(dask_worker):
        from dask.sizeof import sizeof

        return [(str(k), sizeof(v)) for k, v in dask_worker.data.items()]

    deadline = time.monotonic() + 10.0
    while True:
        sizes = {k: size for pairs in client.run(held).values() for k, size in pairs}
        out: dict[str, int] = {}
        for key, size in sizes.items():
            name = key.rsplit("-", 1)[0]
            out[name] = out.get(name, 0) + size
        if set(out) <= {"chunk_plan"} or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def test_streamed_passes_read_each_chunk_once(client, tmp_path):
    """persist=False: validation reads each chunk once and every E-step reads each chunk
    once more, holding on the workers only each chunk's plan (under 5% of the values'
    bytes; the values are 32 bytes a row here, the plan 1); persist=True reads each chunk
    once in all. Both give the same statistics."""
    x = mcar(mixture(seed=3, n=20_000, d=4, k=3)[0], 0.25, seed=1)
    x[[5, 6_000, 19_999]] = np.nan
    store = str(tmp_path / "x.zarr")
    da.from_array(x, chunks=(5_000, 4)).to_zarr(store)
    p0 = _start(x, "full")
    starts = [p0, p0._replace(means=p0.means + 0.5)]  # two passes, two different E-steps
    stats = {}
    for persist in (False, True):
        log = tmp_path / f"reads-{persist}.txt"

        def logged(block, block_info=None, path=str(log)):
            with open(path, "a") as f:
                f.write(f"{block_info[0]['chunk-location'][0]}\n")
            return block

        def reads(path=log) -> list[int]:
            return np.bincount(np.loadtxt(path, dtype=int, ndmin=1), minlength=4).tolist()

        with pytest.warns(UserWarning, match="dropped 3 of 20000 rows"):
            cd = prepare_chunked(da.from_zarr(store).map_blocks(logged, dtype=float),
                                 n_components=3, persist=persist)
        assert reads() == [1] * 4
        stats[persist] = [cd.expected_stats(p) for p in starts]
        assert reads() == ([3] * 4 if not persist else [1] * 4)
        if not persist:
            held = _stored(client)
            assert set(held) == {"chunk_plan"} and held["chunk_plan"] < 0.05 * x.nbytes
        del cd
    for a, b in zip(stats[False], stats[True], strict=True):
        for u, v in zip(a, b, strict=True):
            assert_allclose(u, v, rtol=1e-12, atol=0)


def test_other_dask_inputs(client, data):
    """A dask-backed DataArray and a dask DataFrame: names kept, same fit, same-type output."""
    spec = ppgmm.GMM(3, covariance="tied")
    p0 = _start(data, "tied")
    feats = ["a", "b", "c", "d"]
    mem = _fit(spec, pd.DataFrame(data, columns=feats), init=p0)
    arr = xr.DataArray(data, dims=("obs", "feature"),
                       coords={"obs": np.arange(603) * 10, "feature": feats}).chunk({"obs": 150})
    fa = _fit(spec, arr, init=p0)
    _same(mem, fa)
    assert fa.feature_names == feats
    assert list(fa.idata.observed_data.obs.values[9:12]) == [90, 110, 120]
    imp = fa.impute()
    assert isinstance(imp, xr.DataArray) and is_dask(imp)
    # the rows dropped at fit time come back in memory, in place; a dask fit skips them
    kept = ~np.isnan(data).all(axis=1)
    assert_allclose(imp.values, mem.impute().to_numpy()[kept], rtol=1e-10, atol=1e-12)
    dd = pytest.importorskip("dask.dataframe")
    ff = _fit(spec, dd.from_pandas(pd.DataFrame(data, columns=feats), npartitions=4), init=p0)
    _same(mem, ff)
    out = ff.impute()
    assert is_dask(out) and list(out.columns) == feats
    # rows keep their positions in the data (the dropped rows 10, 250, 599 are skipped;
    # in memory they come back in place), so the imputations join back to the input
    pd.testing.assert_index_equal(out.compute().index, mem.impute().index[kept], exact=False)
    # nullable columns (pd.NA for missing, as read_parquet(dtype_backend="numpy_nullable"))
    nullable = pd.DataFrame(data, columns=feats).astype("Float64")
    _same(mem, _fit(spec, dd.from_pandas(nullable, npartitions=3), init=p0))
    assert_allclose(out.compute().loc[[9, 11, 600]].to_numpy(),
                    mem.impute().loc[[9, 11, 600]].to_numpy(), rtol=1e-10, atol=1e-12)


def test_per_row_outputs_lazy_and_equal(client, data, tmp_path):
    """Per-row results of a dask fit are dask arrays equal to the in-memory ones (and to
    scipy's densities); saving writes them chunk by chunk; nothing per entry is stored."""
    spec = ppgmm.GMM(3, covariance="full")
    p0 = _start(data, "full")
    mem = _fit(spec, data, init=p0)
    dsk = _fit(spec, da.from_array(data, chunks=120), init=p0)
    assert "posterior_predictive" not in dsk.idata.groups()
    assert "imputed_mean" not in dsk.idata.posterior
    assert is_dask(dsk.idata.observed_data["x"]) and is_dask(dsk.idata.log_likelihood["x"])
    w, mu, cov = dsk.params
    kept = ~np.isnan(data).all(axis=1)
    assert_allclose(dsk.idata.log_likelihood["x"].values[0, 0],
                    scipy_row_loglik(data[kept], w, mu, cov), rtol=1e-9)
    new = da.from_array(mcar(mixture(seed=9, n=250, d=4, k=3)[0], 0.3, seed=2), chunks=60)
    local = new.compute()
    for lazy, eager in ((dsk.score_samples(new), mem.score_samples(local)),
                        (dsk.predict_proba(new), mem.predict_proba(local)),
                        (dsk.impute(new), mem.impute(local)),
                        (dsk.predict(new), mem.predict(local))):
        assert is_dask(lazy)
        assert_allclose(lazy.compute(), eager, rtol=1e-9, atol=1e-12)
    assert_allclose(dsk.loglik, mem.loglik, rtol=1e-12)
    assert_allclose(dsk.bic(), mem.bic(), rtol=1e-12)
    sims = dsk.impute(new, draws=2, seed=3)
    again = dsk.impute(new, draws=2, seed=3)[1].compute()
    assert_allclose(sims[1].compute(), again)
    obs = ~np.isnan(local)
    assert_allclose(sims[0].compute()[obs], local[obs])
    assert not np.isnan(sims[0].compute()).any()
    assert not np.allclose(sims[0].compute()[~obs], sims[1].compute()[~obs])
    back = ppgmm.load(dsk.to_netcdf(str(tmp_path / "fit.nc")))
    assert_allclose(back.idata.log_likelihood["x"].values, mem.idata.log_likelihood["x"].values,
                    rtol=1e-10)
    assert_allclose(back.params.means, mem.params.means, rtol=1e-10)
    assert back.chunked and is_dask(back.impute())
    # a seed gives the same draws after loading (read back in the fitted chunks), and a
    # draw does not depend on how many were asked for
    before = [x.compute() for x in dsk.impute(draws=2, seed=5)]
    assert_allclose(back.impute(draws=2, seed=5)[1].compute(), before[1], rtol=0, atol=0)
    assert_allclose(dsk.impute(draws=1, seed=5)[0].compute(), before[0], rtol=0, atol=0)
    # the two fits' parameters agree to 1e-10 relative, so an imputed entry to 1e-10 of the
    # data's scale: one near 0 has no relative agreement (4.6e-12 apart at -0.019 was seen)
    scale = np.nanmax(np.abs(data))
    assert_allclose(back.impute().compute(), mem.impute()[kept], rtol=1e-10, atol=1e-10 * scale)
    zpath = dsk.to_zarr(str(tmp_path / "fit.zarr"))
    read = xr.open_zarr(zpath, group="observed_data")
    assert_allclose(read["x"].values, mem.idata.observed_data["x"].values)


def test_compare_says_what_to_do_with_dask_fits(client, data):
    """compare() needs data in memory: a dask fit gets an error that names it and says
    what to do, alone or beside an in-memory fit."""
    spec = ppgmm.GMM(3, covariance="diag")
    p0 = _start(data, "diag")
    mem = _fit(spec, data, init=p0)
    dsk = _fit(spec, da.from_array(data, chunks=200), init=p0)
    for fits in ([dsk], {"in memory": mem, "dask": dsk}):
        with pytest.raises(ppgmm.DataError, match=r"fitted on dask data.*in-memory sample"):
            ppgmm.compare(fits)


def _message(call) -> str:
    with pytest.raises(ppgmm.DataError) as info:
        call()
    return str(info.value)


def test_validation_errors_as_in_memory(client):
    """Infinities, columns with no value, too few rows, non-numeric columns: the in-memory
    errors, word for word."""
    x = mixture(seed=2, n=60, d=3)[0]
    x[41, 2] = np.inf
    spec = ppgmm.GMM(2)
    want = _message(lambda: ppgmm.fit(spec, x))
    assert _message(lambda: ppgmm.fit(spec, da.from_array(x, chunks=16))) == want
    x[41, 2], x[:, 1] = 0.0, np.nan
    want = _message(lambda: ppgmm.fit(spec, x))
    assert "have no observed value" in want
    assert _message(lambda: ppgmm.fit(spec, da.from_array(x, chunks=16))) == want
    x[:] = np.nan
    want = _message(lambda: ppgmm.fit(spec, x))
    assert "all 60 rows are empty" in want
    assert _message(lambda: ppgmm.fit(spec, da.from_array(x, chunks=16))) == want
    for scale in (1e160, 1e-160):  # beyond float64's comfortable range, either way
        far = mixture(seed=2, n=60, d=3)[0] * np.array([1.0, scale, 1.0])
        want = _message(lambda far=far: ppgmm.fit(spec, far))
        assert "rescale the columns" in want
        assert _message(lambda far=far: ppgmm.fit(spec, da.from_array(far, chunks=16))) == want
    small = mixture(seed=2, n=2, d=3)[0]
    want = _message(lambda: ppgmm.fit(ppgmm.GMM(3), small))
    assert _message(lambda: ppgmm.fit(ppgmm.GMM(3), da.from_array(small))) == want
    dd = pytest.importorskip("dask.dataframe")
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "s": ["x", "y", "z"]})
    want = _message(lambda: ppgmm.fit(spec, df))
    assert _message(lambda: ppgmm.fit(spec, dd.from_pandas(df, npartitions=2))) == want
    with pytest.raises(ppgmm.SpecError, match="needs the data in memory"):
        ppgmm.fit(spec, da.from_array(small), backend="nuts")
    with pytest.raises(ppgmm.SpecError, match="needs the data in memory"):
        ppgmm.fit(spec, da.from_array(small), uncertainty="bootstrap")
    with pytest.raises(ppgmm.SpecError, match="init_sample should be an integer >= 2"):
        ppgmm.fit(spec, da.from_array(mixture(seed=2, n=60, d=3)[0]), init_sample=1)


def test_in_memory_path_does_not_load_dask():
    """``import ppgmm`` loads no dask; an in-memory fit loads none of the dask path (ArviZ
    may load dask itself)."""
    code = ("import sys, numpy as np, ppgmm; x = np.random.default_rng(0).normal(size=(50, 2));"
            "print([m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]);"
            "ppgmm.fit(ppgmm.GMM(2), x, seed=0);"
            "print(sorted(m for m in ('distributed', 'ppgmm.backends.em_dask') if m in"
            " sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["[]", "[]"]


def test_zarr_store_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """Saving over a store replaces it: no group of the old fit survives beside the new one
    (xarray appends groups into an existing store). A write that fails midway leaves the
    old store readable as it was and no temporary folder; a path that is not a store is
    refused."""
    x, _, _ = mixture(seed=3, n=120, d=2, k=2)
    x = mcar(x, 0.2, seed=4)
    two = ppgmm.fit(ppgmm.GMM(2), x, seed=0)
    three = ppgmm.fit(ppgmm.GMM(3), x, seed=0, imputation_draws=3)
    store = str(tmp_path / "fit.zarr")
    two.to_zarr(store)
    three.to_zarr(store)
    for group in three.idata.groups():
        xr.testing.assert_identical(xr.open_zarr(store, group=group).load(),
                                    three.idata[group])

    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    original = xr.Dataset.to_zarr
    monkeypatch.setattr(xr.Dataset, "to_zarr", failing)
    with pytest.raises(OSError, match="disk full"):
        two.to_zarr(store)
    monkeypatch.undo()
    assert xr.open_zarr(store, group="estimate").sizes["component"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.zarr"]
    # the swap itself fails after moving the old store aside: it is put back
    import os

    replace, moves = os.replace, []

    def second_fails(src, dst):
        moves.append(src)
        if len(moves) == 2:
            raise OSError("rename failed")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="rename failed"):
        two.to_zarr(store)
    monkeypatch.undo()
    assert xr.open_zarr(store, group="estimate").sizes["component"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.zarr"]
    (tmp_path / "notes.txt").write_text("keep")
    for bad, why in ((tmp_path / "notes.txt", "not a Zarr store"),
                     (tmp_path / "none" / "f.zarr", "does not exist")):
        with pytest.raises(OSError, match=why):
            two.to_zarr(str(bad))
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_several_starts_warn_once_for_the_chosen_one(client, data):
    """With n_init starts on dask data, only the chosen start's convergence warning is said
    (each start used to say its own)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fit = ppgmm.fit(ppgmm.GMM(3), da.from_array(data, chunks=200), seed=0, n_init=3,
                        max_iter=2)
    said = [w for w in rec if issubclass(w.category, ppgmm.ConvergenceWarning)]
    assert not fit.converged and len(said) == 1 and said[0].filename == __file__
    assert str(said[0].message) in fit.attrs["warnings"]


@pytest.mark.parametrize("n_init", [1, 3])
def test_warnings_point_at_the_callers_line(client, data, n_init):
    """The EM's warnings on dask data are attributed to the user's call, with one start as
    with several (one start pointed one frame too deep, inside ppgmm)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ppgmm.fit(ppgmm.GMM(3), da.from_array(data, chunks=200), seed=0, n_init=n_init,
                  max_iter=2)
    said = [w for w in rec if issubclass(w.category, ppgmm.ConvergenceWarning)]
    assert len(said) == 1 and said[0].filename == __file__
