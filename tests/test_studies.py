"""The study suite (studies/): its metrics against independent references, and each study's
quick mode as a smoke test (fit, cache, page, index, re-render without refitting)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import ppgmm

pytest.importorskip("sklearn")
pytest.importorskip("pyarrow")
common = pytest.importorskip("studies.common")
from studies import agreement, calibration, cost, realdata, runner, sweep  # noqa: E402

TRUTH = ppgmm.Params(np.array([0.3, 0.7]), np.array([[0.0, 0.0], [3.0, 1.0]]),
                     np.array([[[1.0, 0.2], [0.2, 0.5]], [[0.8, -0.1], [-0.1, 1.5]]]))


# --------------------------------------------------------------------------- metrics


def test_param_errors_ignore_labels():
    swapped = ppgmm.Params(TRUTH.weights[::-1], TRUTH.means[::-1], TRUTH.covariances[::-1])
    assert common.param_errors(swapped, TRUTH) == {
        "err_weights": 0.0, "err_means": 0.0, "err_covariances": 0.0}
    shifted = ppgmm.Params(swapped.weights, swapped.means + 0.25, swapped.covariances)
    assert common.param_errors(shifted, TRUTH)["err_means"] == pytest.approx(0.25, abs=1e-12)


def test_mixture_logpdf_matches_sklearn():
    from sklearn.mixture import GaussianMixture

    x = np.random.default_rng(0).normal(size=(50, 2))
    gm = GaussianMixture(2, covariance_type="full")
    gm.weights_, gm.means_, gm.covariances_ = TRUTH
    gm.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(TRUTH.covariances))
    np.testing.assert_allclose(common.mixture_logpdf(TRUTH, x), gm.score_samples(x), rtol=1e-10)


def test_heldout_lpd_of_draws_averages_densities():
    """log mean_s p(x | theta_s), not mean_s log p(x | theta_s)."""
    x = np.array([[0.5, 0.1], [2.0, 1.0]])
    a, b = TRUTH, ppgmm.Params(TRUTH.weights, TRUTH.means + 1.0, TRUTH.covariances)
    dens = np.exp([common.mixture_logpdf(a, x), common.mixture_logpdf(b, x)]).mean(0)

    class TwoDraws:  # a stand-in with the Fit interface draws_of reads
        pass

    fit = TwoDraws()
    import xarray as xr

    fit.idata = type("I", (), {"posterior": xr.Dataset({
        "weights": (("chain", "draw", "component"), np.stack([a.weights, b.weights])[None]),
        "means": (("chain", "draw", "component", "feature"),
                  np.stack([a.means, b.means])[None]),
        "covariances": (("chain", "draw", "component", "feature", "feature_"),
                        np.stack([a.covariances, b.covariances])[None])})})()
    assert common.heldout_lpd(fit, x) == pytest.approx(np.log(dens).mean(), rel=1e-12)


def test_peer_imputation_scores_against_hand_computation():
    data = np.array([[1.0, np.nan], [np.nan, 2.0], [3.0, 4.0]])
    values = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 4.0]])
    filled = np.array([[1.0, 3.0], [2.5, 2.0], [3.0, 4.0]])
    truth = type("T", (), {"values": values})()
    s = common.imputation_scores(None, truth, data, filled)
    assert s["rmse"] == pytest.approx(np.sqrt((4 + 0.25) / 2))
    assert s["crps"] == pytest.approx(1.25) and np.isnan(s["coverage"])


def test_seeds_are_stable_and_distinct():
    assert common.seed_of("MCAR", 0.1, 2) == common.seed_of("MCAR", 0.1, 2)
    assert common.seed_of("MCAR", 0.1, 2) != common.seed_of("MCAR", 0.1, 3)


def _disjoint_streams(seeds: dict) -> bool:
    """Whether generators seeded with ``seeds``' values share no word of their first 64."""
    words = [set(np.random.default_rng(s).integers(2**63, size=64).tolist())
             for s in seeds.values()]
    return all(not (a & b) for i, a in enumerate(words) for b in words[i + 1:])


def test_calibration_draws_parameters_data_and_fit_from_separate_streams(monkeypatch):
    """The data of an SBC replication must be independent of how its parameters were drawn,
    and the fit must not replay the draws that made its data (they once shared one seed)."""
    seen: dict = {}
    real = ppgmm.simulate

    def simulate(*args, seed, **kw):
        seen["data"] = seed
        return real(*args, seed=seed, **kw)

    def prior_draw(rng):
        seen["parameters"] = rng.bit_generator.seed_seq.entropy
        return calibration.FIXED

    def fit(task, data, seed):
        seen["fit"] = seed
        raise RuntimeError("stop here")

    monkeypatch.setattr(ppgmm, "simulate", simulate)
    monkeypatch.setattr(calibration, "prior_draw", prior_draw)
    monkeypatch.setattr(calibration, "_fit", fit)
    rows = calibration.run_task({"kind": "sbc", "rep": 3, "method": "NUTS", "quick": True})
    assert rows[0]["note"].startswith("failed: RuntimeError")
    assert set(seen) == {"parameters", "data", "fit"} and seen["fit"] < 2**31
    assert _disjoint_streams(seen)


def test_agreement_fits_from_a_stream_separate_from_its_data(monkeypatch):
    seen: dict = {}
    real = ppgmm.simulate

    def simulate(*args, seed, **kw):
        seen["data"] = seed
        return real(*args, seed=seed, **kw)

    def fit_method(name, k, data, seed, **kw):
        seen["fit"] = seed
        raise RuntimeError("stop here")

    monkeypatch.setattr(ppgmm, "simulate", simulate)
    monkeypatch.setattr(common, "fit_method", fit_method)
    with pytest.raises(RuntimeError, match="stop here"):
        agreement.run_task({"N": 100, "rep": 0, "quick": True})
    assert set(seen) == {"data", "fit"} and _disjoint_streams(seen)


def test_ratio_table_is_the_geometric_mean_of_paired_ratios():
    rows = []
    for rep, (e, m) in enumerate([(1.0, 2.0), (2.0, 8.0), (1.0, 1.0)]):
        for meth, v in (("EM (MLE)", e), ("peer", m)):
            rows.append({"mechanism": "MCAR", "rate": 0.1, "K": 2, "D": 2, "N": 200,
                         "rep": rep, "method": meth, "err_means": v, "note": ""})
    r = sweep.ratio_table(pd.DataFrame(rows)).iloc[0]
    lr = np.log([2.0, 4.0, 1.0])
    assert r["ratio"] == pytest.approx(np.exp(lr.mean()))
    assert r["mcse"] == pytest.approx(np.exp(lr.mean()) * lr.std(ddof=1) / np.sqrt(3))


def test_ratio_mcse_measures_spread_within_cells():
    """Two (K, D, N) cells at different levels: the spread is taken about each cell's
    mean (pooled within-cell variance, n - 2 dof), not about the overall mean."""
    rows, ratios = [], {(2, 200): [1.0, 2.0, 4.0], (3, 2000): [8.0, 16.0]}
    for (k, n), rs in ratios.items():
        for rep, ratio in enumerate(rs):
            for meth, v in (("EM (MLE)", 1.0), ("peer", ratio)):
                rows.append({"mechanism": "MCAR", "rate": 0.1, "K": k, "D": 2, "N": n,
                             "rep": rep, "method": meth, "err_means": v, "note": ""})
    r = sweep.ratio_table(pd.DataFrame(rows)).iloc[0]
    a, b = np.log(ratios[2, 200]), np.log(ratios[3, 2000])
    within = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / (5 - 2)
    gm = np.exp(np.concatenate([a, b]).mean())
    assert r["mcse"] == pytest.approx(gm * np.sqrt(within / 5), rel=1e-12)
    pooled = np.concatenate([a, b]).std(ddof=1) / np.sqrt(5)
    assert r["mcse"] < gm * pooled  # the level difference is not counted as noise


def test_convergence_section_splits_the_error_by_flag():
    """By hand: NUTS fits with errors 1, 3 (converged) and 10, 20 (not): share 0.5, medians
    2 and 15; a peer (always 'converged') is left out."""
    ok = pd.DataFrame({"method": ["NUTS"] * 4 + ["pygmmis"], "K": 2, "D": 2, "N": 200,
                       "converged": [True, True, False, False, True],
                       "err_means": [1.0, 3.0, 10.0, 20.0, 5.0]})
    text = "\n".join(sweep._convergence_section(ok))
    assert "| NUTS | (2, 2) | 200 | 4 | 0.5 | 2 | 15 |" in text
    assert "pygmmis |" not in text


def test_convergence_section_reports_diagnostics_of_flagged_fits_that_kept_them():
    """Flagged NUTS fits with R-hat 1.02, 1.04 and one older row without diagnostics: the
    median is over the two that have them, 1.03; converged fits' R-hat do not enter."""
    ok = pd.DataFrame({"method": "NUTS", "K": 2, "D": 2, "N": 200,
                       "converged": [True, False, False, False],
                       "err_means": [1.0, 2.0, 3.0, 4.0],
                       "rhat_max": [1.001, 1.02, 1.04, np.nan],
                       "ess_bulk_min": [900.0, 100.0, 300.0, np.nan],
                       "divergences": [0.0, 3.0, 0.0, np.nan]})
    text = "\n".join(sweep._convergence_section(ok))
    assert "| rhat_max, not converged | ess_bulk_min, not converged | divergences, not " in text
    assert "| NUTS | (2, 2) | 200 | 4 | 0.25 | 1 | 3 | 1.03 | 200 | 1.5 |" in text


def test_sbc_chisquare_matches_scipy():
    ranks = np.random.default_rng(1).integers(0, 100, 200)
    df = pd.DataFrame({"kind": "sbc", "method": "m", "quantity": "q", "rank": ranks,
                       "note": ""})
    p = calibration.sbc_tests(df)["chi2_p"].iloc[0]
    assert p == pytest.approx(stats.chisquare(np.bincount(ranks // 10, minlength=10)).pvalue)


def test_reference_level_is_the_coverage_of_a_quantile_interval_from_s_draws():
    # Monte Carlo: intervals read by np.quantile from S uniform draws, scored by the
    # probability mass they hold (the CDF of a uniform is the identity)
    rng = np.random.default_rng(3)
    for s, level in ((9, 0.9), (40, 0.5), (100, 0.95)):
        u = rng.random((50_000, s))
        lo, hi = np.quantile(u, [(1 - level) / 2, (1 + level) / 2], axis=1)
        mass = hi - lo
        se = mass.std() / np.sqrt(len(mass))
        assert abs(mass.mean() - calibration.reference_level(level, s)) < 4 * se
    assert calibration.draws_per_fit("NUTS") == 1000  # 2 chains x 500 draws
    assert calibration.draws_per_fit("EM bootstrap", quick=True) == 20


def test_prior_draws_follow_the_prior():
    """Inverse-Wishart mean (nu - D - 1)^-1 Lambda = I, judged by an MCSE-scaled z-score."""
    rng = np.random.default_rng(2)
    s00 = np.array([calibration.prior_draw(rng).covariances[0, 0, 0] for _ in range(2000)])
    z = (s00.mean() - 1.0) / (s00.std(ddof=1) / np.sqrt(len(s00)))
    assert abs(z) < 4


def test_cost_exponent_recovers_a_known_slope():
    n = np.array([100, 200, 400, 800])
    df = pd.DataFrame({"factor": "N", "method": "m", "N": n, "wall_s": 0.01 * n**1.5,
                       "note": ""})
    e = cost.exponents(df).iloc[0]
    assert e["exponent"] == pytest.approx(1.5, abs=1e-10)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_peak_memory_sees_a_known_allocation():
    """200 MiB written inside the block (touched, so resident) and freed before it ends: the
    sampler must see the peak, not the level at exit."""
    with cost.PeakMemory() as m:
        a = np.ones(200 * 2**20 // 8)
        time.sleep(0.05)
        del a
    assert 190 < m.mib < 260


def test_realdata_mask_hides_observed_entries_only_and_keeps_rows():
    full = realdata.load("airquality")
    data, hide = realdata.mask(full, 0.5, 0)
    assert not (hide & full.isna().to_numpy()).any()
    assert data.notna().any(axis=1).all()
    np.testing.assert_array_equal(data.isna().to_numpy(), full.isna().to_numpy() | hide)


def test_loo_table_difference_and_its_se_from_the_pointwise_terms():
    """elpd difference = difference of the PSIS-LOO sums; its se = sqrt(n var(pointwise
    difference)) (Vehtari, Gelman & Gabry 2017, eq. 24, with ArviZ's 1/n variance; R's loo
    uses 1/(n - 1), sqrt(n / (n - 1)) larger)."""
    import arviz as az

    rng = np.random.default_rng(0)
    n = 60
    idatas = {k: az.from_dict(posterior={"mu": rng.normal(size=(2, 200))},
                              log_likelihood={"x": rng.normal(-1.0 - 0.1 * k, 0.3,
                                                              size=(2, 200, n))})
              for k in (1, 2, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = realdata._loo_table(idatas)
        point = {k: az.loo(d, pointwise=True).loo_i.values for k, d in idatas.items()}
    best = max(point, key=lambda k: point[k].sum())
    for k in idatas:
        d = point[best] - point[k]
        assert table.loc[k, "elpd_loo"] == pytest.approx(point[k].sum(), rel=1e-12)
        assert table.loc[k, "elpd_diff"] == pytest.approx(d.sum(), abs=1e-9)
        assert table.loc[k, "elpd_dse"] == pytest.approx(np.sqrt(n * d.var(ddof=0)), abs=1e-9)


def test_loo_choice_is_the_smallest_k_within_two_se_of_the_best():
    nuts = pd.DataFrame({"K": [1, 2, 3, 4], "elpd_loo": [-110.0, -100.0, -99.0, -98.5],
                         "elpd_diff": [11.5, 1.5, 0.5, 0.0], "elpd_dse": [3.0, 1.0, 2.0, 0.0]})
    assert realdata._loo_choice(nuts) == ("2", "4 (largest tried)")
    nuts["elpd_dse"] = [3.0, 0.5, 0.2, 0.0]  # K = 2 and 3 now resolved as worse
    assert realdata._loo_choice(nuts) == ("4 (largest tried)", "4 (largest tried)")
    nuts["converged"] = [True, True, True, False]  # a choice from a flagged fit says so
    assert realdata._loo_choice(nuts) == ("4 (largest tried; not converged)",) * 2
    nuts["elpd_dse"] = [3.0, 1.0, 2.0, 0.0]
    assert realdata._loo_choice(nuts) == ("2", "4 (largest tried; not converged)")


def _design() -> common.Design:
    def full() -> list[dict]:
        return [{"method": m, "N": n, "rep": r, "quick": False}
                for r in range(3) for m in ("a", "b") for n in (10, 20)]

    return common.Design(full, "2 methods x 2 N x 3 replications", ("method",),
                         {"N": lambda t: t["N"]})


def _cache(tasks: list[dict], rows_per_task: int = 2) -> pd.DataFrame:
    keys = [json.dumps(dict(sorted(t.items()))) for t in tasks]
    return pd.DataFrame({"task": [k for k in keys for _ in range(rows_per_task)]})


def test_design_table_counts_what_the_cache_holds():
    """Counted by hand: method a has 3 of its 6 tasks (N=10 twice, N=20 once), b none, and
    one cached task (method x) is outside the design."""
    df = _cache([{"method": "a", "N": 10, "rep": 0}, {"method": "a", "N": 10, "rep": 1},
                 {"method": "a", "N": 20, "rep": 0}, {"method": "x", "N": 10, "rep": 0}])
    table, n = common.design_table(df, _design())
    assert n == {"full": 12, "run": 3, "outside": 1}
    a, b = (table[table["method"] == m].iloc[0] for m in ("a", "b"))
    assert (a["tasks"], a["cells"], a["N"]) == ("3 of 6", "2 of 2", "10, 20")
    assert a["replications"] == "2 (1 cell), 1 (1 cell) of 3"
    assert a["not run"] == "3 replication(s) short in the cells run"
    assert (b["tasks"], b["cells"], b["replications"], b["not run"]) == (
        "0 of 6", "0 of 2", "0 of 3", "all")
    text = common.design_summary(df, _design())
    assert "Part of the full design ran: 3 of 12 tasks (25%)" in text
    assert "1 task(s) outside the full design" in text


def test_design_summary_says_full_only_when_every_task_is_cached():
    full = _design().tasks()
    assert "The full design ran" in common.design_summary(_cache(full), _design())
    assert "The full design ran" not in common.design_summary(_cache(full[1:]), _design())
    no_a10 = [t for t in full if (t["method"], t["N"]) != ("a", 10)]
    table, _ = common.design_table(_cache(no_a10), _design())
    assert table.set_index("method").loc["a", "not run"] == "N 10"
    assert table.set_index("method").loc["b", "not run"] == "nothing: full design"


def test_run_section_lists_runs_by_date_and_counts_unrecorded_tasks():
    """Merged caches append run records out of order; the page lists them by start time.
    Two recorded runs did 2 + 1 of the 4 cached tasks, so 1 came from an unrecorded run."""
    run = {"tasks": 2, "wall_s": 60.0, "scheduler": "LocalCluster", "workers": 1,
           "machine": "m", "settings": {}}
    meta = {"runs": [{**run, "date": "2026-12-03 04:00 UTC"},
                     {**run, "date": "2026-12-02 22:00 UTC", "tasks": 3, "done": 1,
                      "status": "stopped"}]}
    df = _cache(_design().tasks()[:4])
    text = common.run_section(meta, df, _design(), "rerun")
    assert text.index("2026-12-02 22:00") < text.index("2026-12-03 04:00")
    assert "(stopped after 1 of them)" in text
    assert "- 1 task(s) in the cache come from runs stopped before" in text
    assert "Total wall time of the recorded runs: 2.0 min." in text


# --------------------------------------------------------------------------- quick modes


@pytest.mark.parametrize("name", sorted(runner.STUDIES))
def test_quick_mode_runs_caches_and_renders(name, tmp_path):
    page = runner.run(name, quick=True, out=tmp_path)
    text = page.read_text()
    assert text.startswith("# ") and "## Published run" in text and "quick" in text
    data = pd.read_parquet(tmp_path / "data" / f"{name}.parquet")
    assert len(data) and (data["note"].fillna("") == "").any()
    meta = json.loads((tmp_path / "data" / f"{name}.json").read_text())
    assert meta["runs"][0]["quick"] is True
    if name == "sweep":  # a row keeps the figures behind its flag: EM's iteration count
        assert (data.loc[data["method"].str.startswith("EM"), "n_iter"] >= 1).all()
    if name == "realdata":  # the HTML report of compare() at BIC's K, written by the run
        assert (tmp_path / "realdata_airquality.html").stat().st_size > 10_000
    for img in (tmp_path / "img").glob("*.png"):
        assert img.stat().st_size > 1000
    # a rerun finds every task cached and rewrites the same page without fitting
    page.unlink()
    runner.run(name, quick=True, out=tmp_path, render_only=True)
    assert page.read_text() == text
    assert len(json.loads((tmp_path / "data" / f"{name}.json").read_text())["runs"]) == 1
    assert f"]({name}.md)" in (tmp_path / "index.md").read_text()


def test_cli_study_delegates(tmp_path, capsys):
    from ppgmm.cli import main

    assert main(["study", "sweep", "--render", "--out", str(tmp_path)]) == 0
    assert "No run cached yet" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "index.md").exists()
    assert "sweep.md" in capsys.readouterr().out


def test_tasks_run_on_a_dask_cluster(tmp_path):
    """The --scheduler path: tasks mapped over a running cluster, rows cached as they come."""
    distributed = pytest.importorskip("distributed")
    # one worker thread: fits running side by side in threads of the test process (which
    # by then holds JAX's and nutpie's thread pools) crashed once in OpenBLAS
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        runner.run("cost", quick=True, out=tmp_path, scheduler=cluster.scheduler_address)
    data = pd.read_parquet(tmp_path / "data" / "cost.parquet")
    assert sorted(data["N"]) == [100, 200] and (data["wall_s"] > 0).all()
    meta = json.loads((tmp_path / "data" / "cost.json").read_text())
    assert meta["runs"][0]["status"] == "complete" and meta["runs"][0]["done"] == 2


def test_merge_cache_adds_new_tasks_once(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    runner.run("cost", quick=True, out=a)
    assert common.merge_cache("cost", a, b) == 2
    assert common.merge_cache("cost", a, b) == 0
    assert len(pd.read_parquet(b / "data" / "cost.parquet")) == 2
    assert len(json.loads((b / "data" / "cost.json").read_text())["runs"]) == 1


def test_a_task_that_raises_is_recorded_and_the_run_goes_on(tmp_path):
    def run_task(task: dict) -> list[dict]:
        if task["rep"] == 1:
            raise RuntimeError("boom")
        return [{"rep": task["rep"], "note": ""}]

    common.run_study("x", [{"rep": r, "quick": True} for r in range(3)], run_task,
                     lambda df, meta, out: "# x\n", tmp_path, quick=True)
    rows = pd.read_parquet(tmp_path / "data" / "x.parquet").set_index("rep")["note"]
    assert rows.to_dict() == {0: "", 1: "failed: RuntimeError: boom", 2: ""}
    meta = json.loads((tmp_path / "data" / "x.json").read_text())
    assert meta["runs"][0]["status"] == "complete" and meta["runs"][0]["done"] == 3


def test_a_run_stopped_while_writing_the_cache_keeps_the_rows_before(tmp_path, monkeypatch):
    """The third task's cache write is cut off after a few bytes (as a kill would): the
    cache on disk still holds the first two tasks' rows, the record says stopped, and no
    temporary file is left beside it."""
    real = pd.DataFrame.to_parquet

    def to_parquet(df, path, *args, **kwargs):
        if len(df) == 3:
            Path(path).write_bytes(b"PAR1 half")
            raise KeyboardInterrupt
        return real(df, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    with pytest.raises(KeyboardInterrupt):
        common.run_study("x", [{"rep": r, "quick": True} for r in range(3)],
                         lambda t: [{"rep": t["rep"]}], lambda df, meta, out: "# x\n",
                         tmp_path, quick=True)
    assert pd.read_parquet(tmp_path / "data" / "x.parquet")["rep"].tolist() == [0, 1]
    meta = json.loads((tmp_path / "data" / "x.json").read_text())
    assert meta["runs"][0]["status"] == "stopped: KeyboardInterrupt"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "x.json", "x.parquet", "x.parquet.lock"]


def test_only_repeated_key_keeps_both_values_and_unknown_key_is_an_error(tmp_path, monkeypatch):
    seen = {}

    def fake_run_study(name, tasks, *args, settings, **kwargs):
        seen["tasks"], seen["settings"] = tasks, settings
        return tmp_path / "page.md"

    from studies import common, index

    monkeypatch.setattr(common, "run_study", fake_run_study)
    monkeypatch.setattr(index, "write_index", lambda out: None)
    runner.main(["sweep", "--only", "K=2", "--only", "K=3", "--only", "N=200",
                 "--methods", "EM (MAP)", "--out", str(tmp_path)])
    # 3 mechanisms x 3 rates x 20 replications in each of the two (K, D) cells at N = 200
    assert len(seen["tasks"]) == 2 * 3 * 3 * 20
    assert {(t["K"], t["N"]) for t in seen["tasks"]} == {(2, 200), (3, 200)}
    assert seen["settings"]["only"] == {"K": ["2", "3"], "N": ["200"]}
    with pytest.raises(ValueError, match="no field 'k'; they have D, K, N"):
        runner.main(["sweep", "--only", "k=2", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        runner.main(["sweep", "--only", "K", "--out", str(tmp_path)])


def test_family_wise_p_counts_mirrored_weights_once():
    """With K = 2, w[2] = 1 - w[1] ranks as w[1]'s mirror (the same chi-square p): the
    Bonferroni factor counts the two once."""
    tests = pd.DataFrame({"method": ["NUTS"] * 3, "quantity": ["w[1]", "w[2]", "mu[1,0]"],
                          "chi2_p": [0.01, 0.01, 0.4]})
    assert calibration._family_p(tests)["NUTS"] == pytest.approx(0.02, rel=1e-12)
