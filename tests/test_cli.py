"""The ``ppgmm`` command, run in-process through ``main`` and once as the console script."""

import importlib.util
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import ppgmm
from ppgmm import cli

INSTALLED = [b for b in ("em", "advi", "nuts")
             if importlib.util.find_spec(f"ppgmm.backends.{b}") is not None]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    params = ppgmm.Params(np.array([0.5, 0.5]), np.array([[-2.0, 0.0], [2.0, 1.0]]),
                          np.array([np.eye(2), 0.6 * np.eye(2)]))
    data, truth = ppgmm.simulate(params, n=60, missing=0.15, seed=2)
    cols = ["height", "weight"]
    pd.DataFrame(data, columns=cols).to_csv(d / "data.csv", index=False)
    pd.DataFrame(truth.values, columns=cols).to_csv(d / "truth.csv", index=False)
    pd.DataFrame(truth.values[:10], columns=cols).to_csv(d / "short.csv", index=False)
    text = pd.DataFrame(data, columns=cols).assign(name="x")
    text.to_csv(d / "text.csv", index=False)
    (d / "empty.csv").write_text("")
    (d / "dup.csv").write_text("a,a,b\n1,2,3\n4,5,6\n2,1,1\n")
    (d / "header.csv").write_text("height,weight\n")
    marked = pd.DataFrame(data, columns=cols).round(4).astype(object)
    marked[marked.isna()] = "?"
    marked.to_csv(d / "marked.csv", index=False)
    pd.DataFrame(data, columns=cols).round(4).to_csv(d / "comma.csv", index=False, sep=";",
                                                      decimal=",")
    (d / "thousands.csv").write_text('a,b\n"1,234",2\n3,4\n5,6\n7,9\n')
    (d / "grouped.csv").write_text("a;b\n1.234,5;2\n3;4\n5;6\n7;9\n")
    (d / "spaces.csv").write_text("a b\n1 2\n3 4\n5 6\n")
    pd.DataFrame(data, columns=cols).round(4).to_csv(d / "rounded.csv", index=False)
    pd.DataFrame(data, columns=cols).assign(flag=True).to_csv(d / "bool.csv", index=False)
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(d / "other.nc")
    codes = pd.DataFrame(data, columns=cols).round(4).astype(object)
    gaps = np.flatnonzero(codes["height"].isna())
    codes.loc[gaps[0], "height"], codes.loc[gaps[1], "height"] = "?", "-"  # the rest stay empty
    codes.to_csv(d / "codes.csv", index=False)
    (d / "extra.csv").write_text("a,b\n1,2,9\n3,4\n5,7\n6,1\n")
    (d / "boolgap.csv").write_text("a,b\nTrue,2\n,3\nFalse,4\nTrue,5\n")
    (d / "commagap.csv").write_text("a;b\n1,5;2\n;3\n3,5;4\n4,5;6\n")
    return d


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fit_saves_a_fit_and_prints_a_summary(files, tmp_path, capsys):
    nc = tmp_path / "fit.nc"
    code, out, err = run(["fit", files / "data.csv", "-k", "2", "--seed", "3",
                          "--covariance", "diag", "-o", "n_init=2", "--out", nc], capsys)
    assert code == 0, err
    assert "weights:" in out and f"saved: {nc}" in out
    fit = ppgmm.load(str(nc))
    assert fit.backend == "em" and fit.spec.covariance == "diag"
    assert fit.attrs["seed"] == 3 and fit.attrs["n_init"] == 2
    assert fit.feature_names == ["height", "weight"]
    direct = ppgmm.fit(ppgmm.GMM(2, covariance="diag"), pd.read_csv(files / "data.csv"),
                       seed=3, n_init=2)
    np.testing.assert_allclose(fit.params.means, direct.params.means)


def test_compare_and_report_commands_agree(files, tmp_path, capsys):
    html = tmp_path / "compare.html"
    saved = tmp_path / "fits"
    code, out, err = run(["compare", files / "data.csv", "-k", "2,3", "--backends", "em",
                          "-o", "em.uncertainty=\"bootstrap\"", "-o", "em.n_bootstrap=10",
                          "--truth", files / "truth.csv", "--report", html,
                          "--save-fits", saved], capsys)
    assert code == 0, err
    assert "report:" in out and html.exists()
    assert "rmse" in out  # imputation scores printed
    ncs = sorted(saved.glob("*.nc"))
    assert [p.name for p in ncs] == ["fit_em_K=2.nc", "fit_em_K=3.nc"]
    text = html.read_text(encoding="utf-8")
    assert "BIC" in text and "coverage" in text

    html2 = tmp_path / "from_saved.html"
    code, out, err = run(["report", *ncs, "--out", html2, "--truth", files / "truth.csv"],
                         capsys)
    assert code == 0, err
    text2 = html2.read_text(encoding="utf-8")

    def tables(t):
        return re.findall(r"<table.*?</table>|<pre>.*?</pre>", t, flags=re.S)

    assert tables(text) == tables(text2)
    # and the same tables as compare() on the in-memory fits
    fits = [ppgmm.load(str(p)) for p in ncs]
    cmp = ppgmm.compare(fits, truth=pd.read_csv(files / "truth.csv"))
    assert tables(Path(cmp.report(str(tmp_path / "mem.html"))).read_text("utf-8")) == tables(text)


BAD = [
    (["fit", "{d}/nope.csv", "-k", "2", "--out", "{t}/f.nc"], "no such file"),
    (["fit", "{d}/text.csv", "-k", "2", "--out", "{t}/f.nc"],
     "text.csv are not numeric (they hold text, e.g. 'x')"),
    (["fit", "{d}/data.csv", "-k", "0", "--out", "{t}/f.nc"], "positive integer"),
    (["fit", "{d}/data.csv", "-k", "two", "--out", "{t}/f.nc"], "positive integer"),
    (["fit", "{d}/data.csv", "-k", "500", "--out", "{t}/f.nc"], "at least n_components=500"),
    (["fit", "{d}/data.csv", "-k", "2", "--out", "{t}/f.nc", "--bogus"], "unrecognized"),
    (["fit", "{d}/data.csv", "-k", "2", "--out", "{t}/f.nc", "-o", "nope=1"], "unknown option"),
    (["fit", "{d}/data.csv", "-k", "2", "--out", "{t}/f.nc", "--columns", "x"], "not in"),
    (["fit", "{d}/data.csv", "-k", "2", "--out", "{t}/no/such/dir/f.nc"], "does not exist"),
    (["fit", "{d}/data.csv", "-k", "2", "--out", "{t}"], "it is a folder"),
    (["compare", "{d}/data.csv", "-k", "2,2", "--backends", "em"], "repeats a value"),
    (["compare", "{d}/data.csv", "-k", "2", "--backends", "em,em"], "each once"),
    (["fit", "{d}/data.csv", "-k", "2", "--out", "{t}/f.nc", "--columns", " "], "names no column"),
    (["fit", "{d}/empty.csv", "-k", "2", "--out", "{t}/f.nc"], "could not read"),
    (["fit", "{d}/data.csv", "-k", "2", "--out", "{t}/f.nc", "-o", "tol=\"abc\""],
     "tol should be a non-negative number"),
    (["compare", "{d}/data.csv", "-k", "2", "--backends", "em", "--report", "{t}/no/r.html"],
     "does not exist"),
    (["fit", "{d}/data.csv", "--out", "{t}/f.nc"], "required"),
    # a --truth that cannot score the data is refused before anything is fitted
    (["compare", "{d}/data.csv", "-k", "2", "--backends", "em", "--truth", "{d}/short.csv"],
     "with the shape of"),
    (["compare", "{d}/data.csv", "-k", "2", "--backends", "em", "--truth", "{d}/data.csv"],
     "of those entries are empty in it too"),
    (["compare", "{d}/data.csv", "-k", "2", "--backends", "em,gibbs"], "--backends"),
    (["compare", "{d}/data.csv", "-k", "2", "--backends", "em", "-o", "x=1"], "BACKEND.KEY"),
    (["compare", "{d}/data.csv", "-k", "2", "--backends", "em,nuts", "-o", "nuts.drawz=9"],
     "unknown option(s) ['drawz'] for backend 'nuts'; its options"),
    (["report", "{d}/missing.nc", "--out", "{t}/r.html"], "no such file"),
    (["report", "{d}/data.csv", "--out", "{t}/r.html"], "not a netCDF file saved by ppgmm"),
    (["report", "{d}/other.nc", "--out", "{t}/r.html"], "not a ppgmm fit"),
    (["fit", "{d}/data.csv", "-k", "2", "--seed", "-1", "--out", "{t}/f.nc"], "non-negative"),
    (["fit", "{d}/data.csv", "-k", "2", "--seed", "18446744073709551616", "--out",
      "{t}/f.nc"], "below 2**63"),
    (["fit", "{d}/dup.csv", "-k", "2", "--out", "{t}/f.nc"],
     "repeats the column name(s) ['a']"),
    (["fit", "{d}/header.csv", "-k", "2", "--out", "{t}/f.nc"], "has a header but no data rows"),
    (["fit", "{d}/marked.csv", "-k", "2", "--out", "{t}/f.nc"], "use --na-values '?'"),
    (["fit", "{d}/comma.csv", "-k", "2", "--out", "{t}/f.nc"], "use --decimal ,"),
    (["fit", "{d}/bool.csv", "-k", "2", "--out", "{t}/f.nc"], "['flag'] of"),
    # a thousands separator is not a decimal comma: never read "1,234" as 1.234
    (["fit", "{d}/thousands.csv", "-k", "1", "--out", "{t}/f.nc"],
     "e.g. '1,234': ppgmm reads plain numbers, so write them without thousands separators)"),
    (["fit", "{d}/thousands.csv", "-k", "1", "--out", "{t}/f.nc", "--decimal", ","],
     "should separate its columns by semicolons, tabs or bars, but it uses commas"),
    (["fit", "{d}/grouped.csv", "-k", "1", "--out", "{t}/f.nc", "--decimal", ","],
     "e.g. '1.234,5'"),
    (["compare", "{d}/data.csv", "-k", "2", "--backends", "em", "--save-fits",
      "{d}/data.csv"], "--save-fits '"),
    (["demo", "--out", "{d}/data.csv"], "exists and is not a folder"),
    (["fit", "{d}/spaces.csv", "-k", "1", "--out", "{t}/f.nc"],
     "reads as one column: separate the columns by commas"),
    (["fit", "{d}/data.csv", "-k", "2", "--out", "{t}/f.nc", "--prior", "mclust"],
     "invalid choice"),
    (["frobnicate"], "invalid choice"),
    # empty cells beside other codes: the hint ignores the empty cells
    (["fit", "{d}/codes.csv", "-k", "2", "--out", "{t}/f.nc"],
     "e.g. '?' and '-'; if those mark missing values, use --na-values '?' --na-values '-'"),
    (["fit", "{d}/boolgap.csv", "-k", "1", "--out", "{t}/f.nc"], "(true/false values)"),
    (["fit", "{d}/commagap.csv", "-k", "1", "--out", "{t}/f.nc"], "use --decimal ,"),
    # a row longer than the header never shifts the columns
    (["fit", "{d}/extra.csv", "-k", "1", "--out", "{t}/f.nc"],
     "extra.csv hold more fields than its header names (2: ['a', 'b'])"),
    ([], "required"),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_input_gives_one_line_and_exit_2(argv, message, files, tmp_path, capsys):
    argv = [a.format(d=files, t=tmp_path) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ppgmm: error: ")
    assert message in lines[0]
    assert "Traceback" not in err + out
    assert "converged=" not in out  # refused before any fitting


def _console_script():
    here = Path(sys.executable).parent / "ppgmm"
    return str(here) if here.exists() else shutil.which("ppgmm")


@pytest.mark.skipif(_console_script() is None, reason="the ppgmm console script is not installed")
def test_console_script_runs_and_fails_cleanly(files, tmp_path):
    exe = _console_script()
    ok = subprocess.run([exe, "fit", str(files / "data.csv"), "-k", "2", "--out",
                         str(tmp_path / "f.nc")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "saved:" in ok.stdout
    bad = subprocess.run([exe, "fit", str(files / "text.csv"), "-k", "2", "--out",
                          str(tmp_path / "g.nc")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("ppgmm: error: ")
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


def test_tabs_and_a_written_index_read_like_the_plain_csv(files, tmp_path, capsys):
    df = pd.read_csv(files / "data.csv")
    df.to_csv(tmp_path / "data.tsv", sep="\t", index=False)
    df.to_csv(tmp_path / "indexed.csv")  # pandas' default writes the row index
    fits = []
    for name in ("data.tsv", "indexed.csv"):
        out = tmp_path / f"{name}.nc"
        code, _, err = run(["fit", tmp_path / name, "-k", "2", "--out", out], capsys)
        assert code == 0, err
        assert ("used as row labels" in err) == (name == "indexed.csv")
        fits.append(ppgmm.load(str(out)))
    plain = tmp_path / "plain.nc"
    assert run(["fit", files / "data.csv", "-k", "2", "--out", plain], capsys)[0] == 0
    ref = ppgmm.load(str(plain))
    for f in fits:
        assert f.feature_names == ["height", "weight"]
        np.testing.assert_allclose(f.params.means, ref.params.means, rtol=1e-12)


def test_a_csv_without_a_header_line_is_named_in_a_warning(files, tmp_path, capsys):
    pd.read_csv(files / "data.csv").to_csv(tmp_path / "bare.csv", header=False, index=False)
    code, _, err = run(["fit", tmp_path / "bare.csv", "-k", "2", "--out", tmp_path / "f.nc"],
                       capsys)
    assert code == 0 and "the first line holds numbers only" in err
    code, _, err = run(["fit", files / "data.csv", "-k", "2", "--out", tmp_path / "g.nc"],
                       capsys)
    assert code == 0 and "numbers only" not in err


def test_blank_lines_spaces_trailing_separators_and_a_bom_read_as_written(tmp_path, capsys):
    """One column: a blank line is a missing value (pandas would skip it); header names lose
    their spaces; a separator closing every row adds no column; a BOM is not part of a name."""
    (tmp_path / "one.csv").write_text("x\n1,5\n2\n\n4\n5,5\n \n7\n8\n\n\n")
    code, _, err = run(["fit", tmp_path / "one.csv", "-k", "1", "--decimal", ",", "--out",
                        tmp_path / "one.nc"], capsys)
    assert code == 0, err
    assert "dropped 2 of 8 rows" in err
    f = ppgmm.load(str(tmp_path / "one.nc"))
    assert list(f.data.dropped) == [2, 5]
    assert f.params.means[0, 0] == pytest.approx(np.mean([1.5, 2, 4, 5.5, 7, 8]), abs=1e-12)
    (tmp_path / "sp.csv").write_text("a , b,\n1,2,\n3,4,\n5,7,\n6,1,\n")
    code, _, err = run(["fit", tmp_path / "sp.csv", "-k", "1", "--columns", "a", "--prior",
                        "none", "--out", tmp_path / "sp.nc"], capsys)
    assert code == 0, err
    f = ppgmm.load(str(tmp_path / "sp.nc"))
    assert f.feature_names == ["a"]
    assert f.params.means[0, 0] == pytest.approx(3.75, abs=1e-12)
    (tmp_path / "bom.csv").write_bytes("\ufeff1,2\n3,4\n5,7\n6,1\n".encode())
    code, _, err = run(["fit", tmp_path / "bom.csv", "-k", "1", "--out", tmp_path / "b.nc"],
                       capsys)
    assert code == 0 and "the first line holds numbers only (1, 2)" in err
    # R's write.table: every row starts with its (quoted) row name, which the header lacks
    (tmp_path / "r.csv").write_text('"a","b"\n"d1",1,2\n"d2",3,4\n"d3",5,7\n"d4",6,1\n')
    code, _, err = run(["fit", tmp_path / "r.csv", "-k", "1", "--prior", "none", "--out",
                        tmp_path / "r.nc"], capsys)
    assert code == 0 and "read as the row's label (as R's write.table" in err
    f = ppgmm.load(str(tmp_path / "r.nc"))
    assert f.feature_names == ["a", "b"]
    assert list(f.idata.observed_data["obs"].values) == ["d1", "d2", "d3", "d4"]
    np.testing.assert_allclose(f.params.means[0], [3.75, 3.5], atol=1e-12)


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_demo_writes_the_report(tmp_path, capsys, monkeypatch):
    # the demo's settings, shrunk so the test stays fast
    tiny = {"em": {"n_init": 1, "uncertainty": "bootstrap", "n_bootstrap": 5},
            "advi": {"n_iter": 600, "window": 200},
            "nuts": {"draws": 30, "tune": 30, "chains": 2}}
    monkeypatch.setattr(cli, "DEMO_SETTINGS", tiny)
    code, out, err = run(["demo", "--out", tmp_path / "demo"], capsys)
    assert code == 0, err
    report = tmp_path / "demo" / "report.html"
    assert f"report: {report}" in out
    printed = out.split("fits:", 1)[1].splitlines()[0].split(",")
    assert [p.strip() for p in printed] == [str(tmp_path / "demo" / f"fit_{b}.nc")
                                            for b in INSTALLED]
    text = report.read_text(encoding="utf-8")
    assert "Ozone" in text and "Solar.R" in text
    for b in INSTALLED:
        assert (tmp_path / "demo" / f"fit_{b}.nc").exists()
        assert f"<h3>{b}</h3>" in text  # its reproduction snippet


def test_na_values_and_decimal_read_like_the_plain_csv(files, tmp_path, capsys):
    ref = tmp_path / "ref.nc"
    assert run(["fit", files / "rounded.csv", "-k", "2", "--out", ref], capsys)[0] == 0
    for name, extra in (("marked.csv", ["--na-values", "?"]), ("comma.csv", ["--decimal", ","])):
        out = tmp_path / f"{name}.nc"
        code, _, err = run(["fit", files / name, "-k", "2", "--out", out, *extra], capsys)
        assert code == 0, err
        a, b = ppgmm.load(ref), ppgmm.load(out)
        np.testing.assert_array_equal(a.data.values, b.data.values)
        np.testing.assert_allclose(a.params.means, b.params.means)


def test_prior_none_gives_the_mle(files, tmp_path, capsys):
    nc = tmp_path / "mle.nc"
    code, out, _ = run(["fit", files / "data.csv", "-k", "2", "--prior", "none", "--out", nc],
                       capsys)
    assert code == 0 and "prior=None" in out
    f = ppgmm.load(nc)
    assert f.spec.prior is None
    df = pd.read_csv(files / "data.csv")
    ref = ppgmm.fit(ppgmm.GMM(2, prior=None), df, seed=0)
    np.testing.assert_allclose(f.params.means, ref.params.means)


def test_strict_exits_3_when_a_fit_did_not_converge(files, tmp_path, capsys):
    argv = ["fit", files / "data.csv", "-k", "2", "--out", tmp_path / "f.nc", "-o", "max_iter=2",
            "-o", "tol=0"]
    code, _, err = run(argv, capsys)
    assert code == 0 and "did not converge" in err  # documented: a warning, exit 0
    code, out, err = run([*argv, "--strict"], capsys)
    assert code == 3
    assert "not converged: em K=2" in err and (tmp_path / "f.nc").exists()
    assert run(["fit", files / "data.csv", "-k", "2", "--out", tmp_path / "g.nc", "--strict"],
               capsys)[0] == 0


def test_compare_prints_the_bic_table(files, capsys):
    code, out, _ = run(["compare", files / "data.csv", "-k", "1,2,3", "--backends", "em"],
                       capsys)
    assert code == 0
    table = out[out.index("model comparison"):]
    rows = [ln.split() for ln in table.splitlines()[2:] if ln.strip()]
    bic = {int(r[3]): float(r[6]) for r in rows}  # backend, "em", "K=k", K, cov, BIC, value
    assert set(bic) == {1, 2, 3}
    df = pd.read_csv(files / "data.csv")
    for k, value in bic.items():
        ref = ppgmm.fit(ppgmm.GMM(k), df, seed=0).bic()
        assert value == pytest.approx(ref, rel=1e-6)
    ranks = [int(r[8]) for r in rows]
    assert ranks == sorted(ranks) and [float(r[6]) for r in rows] == sorted(bic.values())


def test_version_and_option_help(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ppgmm {ppgmm.__version__}"
    assert cli.main(["fit", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for backend in ("em", "advi", "nuts"):
        # options that take Python objects cannot be given on the command line
        names = ", ".join(sorted(ppgmm.backend_options(backend) - {"reference", "engine_kwargs"}))
        assert f"{backend}: {names}" in help_text
    assert "--strict" in help_text and "--na-values" in help_text and "--prior" in help_text


def test_a_failed_save_leaves_no_file(files, tmp_path, capsys, monkeypatch):
    def boom(self, path):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    import arviz as az

    monkeypatch.setattr(az.InferenceData, "to_netcdf", boom)
    code, _, err = run(["fit", files / "data.csv", "-k", "2", "--out", tmp_path / "f.nc"],
                       capsys)
    assert code == 2 and "disk full" in err
    assert list(tmp_path.iterdir()) == []


_INTERRUPT = """
import os, signal, sys, threading, time
from ppgmm import cli
cli.INTERRUPT_GRACE = 1.0
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, even when the
# tests run in a background job (which starts with SIGINT ignored)
threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    with cli._firm_interrupt():
        end = time.time() + 30
        while time.time() < end:
            try:
                time.sleep(0.05)
            except KeyboardInterrupt:
                if sys.argv[1] == "swallowed":  # as a garbage-collection callback's is
                    continue
                raise
except KeyboardInterrupt:
    time.sleep(2.0)  # past the grace period: the forced exit was called off
    print("handled")
"""


@pytest.mark.parametrize("case", ["swallowed", "raised"])
def test_ctrl_c_always_stops_with_status_130(case):
    """A KeyboardInterrupt that a library swallows (JAX's gc callback prints "Exception
    ignored" and goes on) still ends the run, with status 130, after the grace period; one
    that arrives is handled as usual, and the forced exit is called off."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _INTERRUPT, case], capture_output=True,
                         text=True, timeout=60)
    if case == "swallowed":
        assert run.returncode == 130 and "ppgmm: interrupted" in run.stderr
        assert time.perf_counter() - start < 20  # not the 30 s the loop would run
    else:
        assert run.returncode == 0 and run.stdout.strip() == "handled", run.stderr
