"""The ``ppgmm`` command: ``demo``, ``fit``, ``compare`` and ``report``.

Every user error (a missing file, a non-numeric column, a bad K, an unknown option) ends
with one line on stderr, ``ppgmm: error: ...``, and exit status 2; no traceback. With
``--strict``, a run in which some fit did not converge exits with status 3 (after saving
and printing everything, so the results can be inspected).

Exit status: 0 success, 2 user error, 3 (``--strict`` only) a fit did not converge,
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .exceptions import warn_user
from .io import check_writable

__all__ = ["main", "DEMO_SETTINGS"]

#: backend options of ``ppgmm demo``: small enough to finish in about a minute on 2 cores,
#: compilation included, large enough for stable intervals
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "em": {"n_init": 5, "uncertainty": "bootstrap", "n_bootstrap": 100},
    "advi": {"method": "advi", "n_iter": 20_000},
    "nuts": {"draws": 1000, "tune": 1500, "chains": 2},
}

#: options passed to a backend only when it accepts them (quiet runs from the command line)
_QUIET = {"progressbar": False}


class UsageError(Exception):
    """A command-line usage error, reported in one line."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# --------------------------------------------------------------------------- argument types


def _k_list(text: str) -> list[int]:
    try:
        ks = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"K should be a positive integer or a comma-separated list such as 2,3, but got "
            f"{text!r}"
        ) from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(
            f"K should be a positive integer (number of components), but got {text!r}"
        )
    if len(set(ks)) < len(ks):
        raise argparse.ArgumentTypeError(f"K repeats a value in {text!r}; list each K once")
    return ks


def _positive_k(text: str) -> int:
    ks = _k_list(text)
    if len(ks) != 1:
        raise argparse.ArgumentTypeError(f"K should be one positive integer, but got {text!r}")
    return ks[0]


def _seed(text: str) -> int:
    from .checks import SEED_LIMIT

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"the seed should be a non-negative integer below 2**63, but got {text!r}")
    return value


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"options should read KEY=VALUE, but got {text!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def _transform(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in (t.strip() for t in text.split(",")):
        col, sep, name = item.rpartition("=")
        if not item or not sep or not col.strip() or not name.strip():
            raise argparse.ArgumentTypeError(
                f"transforms should read COLUMN=NAME (comma-separated or repeated), e.g. "
                f"--transform Ozone=log, but got {text!r}"
            )
        pairs.append((col.strip(), name.strip()))
    return pairs


def _transforms(args) -> dict[str, str]:
    """--transform given (repeatable, comma-separated) as one {column: name} dict."""
    out: dict[str, str] = {}
    for pairs in args.transform or []:
        for col, name in pairs:
            if col in out:
                raise UsageError(f"--transform names column {col!r} twice")
            out[col] = name
    return out


# --------------------------------------------------------------------------- helpers


def _is_number(text: str, decimal: str = ".") -> bool:
    try:
        float(text.replace(decimal, ".") if decimal != "." else text)
    except ValueError:
        return False
    return True


#: how much of a CSV is read to find its separator and header
SAMPLE_BYTES = 65536


def _layout(path: str, decimal: str) -> tuple[str, list[str], str]:
    """The separator, header names and first 64 KiB of the CSV at ``path`` (refused when
    ambiguous)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: drop a BOM
        sample = fh.read(SAMPLE_BYTES)
    first = sample.partition("\n")[0]
    delimiters = ",\t;|" if decimal != "," else "\t;|"
    try:  # commas, tabs, semicolons and bars all read
        sep = csv.Sniffer().sniff(sample, delimiters=delimiters).delimiter
    except csv.Error:  # e.g. one column: nothing to sniff
        # with decimal commas a comma separates columns only where the header has one
        sep = ";" if decimal == "," and (";" in sample or "," not in first) else ","
    if decimal == "," and sep == "," and "," in first:
        raise UsageError(
            f"--decimal , reads decimal commas, so {path} should separate its columns by "
            "semicolons, tabs or bars, but it uses commas; numbers with commas inside "
            "quotes there (e.g. \"1,234\") are ambiguous: write them without separators"
        )
    header = next(csv.reader(io.StringIO(sample), delimiter=sep), [])
    names = [h.strip() for h in header]
    lines = sample.splitlines()
    if (len(names) == 1 and len(names[0].split()) > 1 and len(lines) > 1
            and len(lines[1].split()) == len(names[0].split())):  # "a b" over "1 2"
        raise UsageError(
            f"the header of {path} ({names[0]!r}) reads as one column: separate the "
            "columns by commas, tabs, semicolons or bars (spaces are not read as "
            "separators)"
        )
    return sep, names, sample


def _read_rows(path: str, sep: str, names: list[str], sample: str,
               na_values: list[str] | None, decimal: str) -> Any:
    """The table, read so that no field is lost or shifted.

    index_col=False: a row longer than the header is an error, not a shift that makes the
    first column row labels, except in R's ``write.table`` layout (every row one field
    longer than the header: its row names), which is read so with a warning. One column: a
    blank (or blank-looking) line is a missing value, not a line to skip, except the blank
    lines that end the file.
    """
    import pandas as pd

    one = len(names) == 1
    kw = dict(sep=sep, na_values=na_values or None, decimal=decimal,
              skip_blank_lines=not one, skipinitialspace=one)
    with warnings.catch_warnings():  # a row longer than the header loses data
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            df = pd.read_csv(path, index_col=False, **kw)
        except pd.errors.ParserWarning:
            rows = list(csv.reader(io.StringIO(sample), delimiter=sep))[1:]
            rows = rows[:-1] if len(sample) == SAMPLE_BYTES else rows  # the last may be cut
            # one column with two fields per row is more likely decimal commas than R
            if one or not (rows and all(len(r) == len(names) + 1 for r in rows if r)
                           and names[0]):
                hint = (" (with --decimal , the columns should be separated by semicolons, "
                        "tabs or bars)" if decimal == "," else
                        " (decimal commas? use --decimal ,)" if one and sep == "," else "")
                raise UsageError(
                    f"rows of {path} hold more fields than its header names ({len(names)}: "
                    f"{names[:6]}{' ...' if len(names) > 6 else ''}); give every column a "
                    f"name, or remove the extra fields{hint}") from None
            warn_user(f"{path}: every row has one field more than the header names; the "
                          "first field is read as the row's label (as R's write.table "
                          "writes row names), not as a feature", UserWarning)
            df = pd.read_csv(path, index_col=0, **kw)
            df.index.name = None
    if one:  # blank lines closing the file are no rows
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            lines = fh.read().decode("utf-8", "replace").splitlines()
        blank = next((i for i, line in enumerate(reversed(lines)) if line.strip()), len(lines))
        if 0 < blank <= len(df) and df.iloc[len(df) - blank:].isna().all().all():
            df = df.iloc[:len(df) - blank]
    return df


def _read_csv(path: str, columns: str | None, na_values: list[str] | None = None,
              decimal: str = ".") -> Any:
    import pandas as pd

    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path!r}")
    try:
        sep, names, sample = _layout(path, decimal)
        dup = sorted({h for h in names if names.count(h) > 1 and h})
        if dup:
            raise UsageError(f"the header of {path} repeats the column name(s) {dup}; column "
                             "names should be unique")
        df = _read_rows(path, sep, names, sample, na_values, decimal)
        df.columns = [c.strip() if isinstance(c, str) else c for c in df.columns]
        given = [h for h in names if h]
        bare = bool(given) and all(_is_number(h, decimal) for h in given)
        if bare:
            warn_user(f"{path}: the first line holds numbers only ({', '.join(names[:4])}"
                          f"{', ...' if len(names) > 4 else ''}); it is read as the column "
                          "names, not as a row of data. If the file has no header line, "
                          "add one", UserWarning)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(f"could not read {path} as CSV: {err}") from None
    if df.shape[0] == 0:
        raise UsageError(f"{path} has a header but no data rows")
    if not bare and len(df.columns) and str(df.columns[0]).startswith("Unnamed: 0"):
        # a CSV written with its row index (pandas' default): row labels, not a feature
        df = df.set_index(df.columns[0])
        df.index.name = None
        warn_user(f"{path}: the first column has no name; it is used as row labels, "
                      "not as a feature", UserWarning)
    if columns is not None:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        if not wanted:
            raise UsageError(f"--columns names no column; its columns are {list(df.columns)}")
        unknown = [c for c in wanted if c not in df.columns]
        if unknown:
            raise UsageError(
                f"column(s) {unknown} are not in {path}; its columns are {list(df.columns)}"
            )
        df = df[wanted]
    bad = [str(c) for c, t in df.dtypes.items()
           if not pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t)]
    if bad:
        raise UsageError(
            f"column(s) {bad} of {path} are not numeric{_not_numeric_hint(df[bad], decimal, sep)}"
            "; choose numeric columns with --columns A,B,..."
        )
    if df.shape[1] == 0:
        raise UsageError(f"{path} has no columns")
    return df


def _not_numeric_hint(df: Any, decimal: str, sep: str) -> str:
    """What the cells of non-numeric columns look like, and the option that reads them."""
    import pandas as pd

    texts = [c for c, t in df.dtypes.items() if not pd.api.types.is_bool_dtype(t)]
    if len(texts) < df.shape[1]:
        return " (true/false values)"
    text = df[texts].stack().dropna().astype(str)  # empty cells are missing, not text
    odd = text[pd.to_numeric(text, errors="coerce").isna()] if len(text) else text
    if len(odd) and odd.str.strip().str.lower().isin(["true", "false"]).all():
        return " (true/false values)"
    if len(odd) and decimal == "." and sep != "," and odd.str.fullmatch(
            r"\s*[-+]?\d+,\d+\s*").all():
        return " (decimal commas? use --decimal ,)"
    # numbers with thousands separators: 1,234 or 1.234.567,5 (not dates such as 01.02.2020)
    grouped = odd[odd.str.fullmatch(r"\s*[-+]?\d{1,3}([.,]\d{3})+([.,]\d+)?\s*")] if len(
        odd) else odd
    if len(grouped):
        return (f" (numbers with separators, e.g. {grouped.iloc[0]!r}: ppgmm reads plain "
                "numbers, so write them without thousands separators"
                + (", and use --decimal , for decimal commas" if decimal == "." and sep != ","
                   else "") + ")")
    tokens = list(dict.fromkeys(odd.str.strip()))
    if len(odd) and len(odd) < len(text) and len(tokens) <= 3:
        # numbers and a few other tokens: likely codes for missing
        these = " and ".join(repr(t) for t in tokens)
        mark = "that marks a missing value" if len(tokens) == 1 else "those mark missing values"
        use = " ".join(f"--na-values {t!r}" for t in tokens)
        return f" (e.g. {these}; if {mark}, use {use})"
    return f" (they hold text, e.g. {odd.iloc[0]!r})" if len(odd) else ""


def _check_out(path: str | None) -> None:
    """Fail before any fitting when an output cannot be written (no such folder, or a
    folder given for a file)."""
    if path:
        try:
            check_writable(path)
        except OSError as err:
            raise UsageError(str(err)) from None


def _make_folder(path: str, option: str) -> None:
    """Create the output folder ``path`` (and its parents), or fail before any fitting."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path!r} exists and is not a folder; give a folder name")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{option} {path!r}: cannot create the folder ({err.strerror})") from None


def _options_help() -> str:
    from .backends import BACKENDS, backend_options

    # options that take Python objects are left out: reference (compare sets it), engine_kwargs
    python_only = {"reference", "engine_kwargs"}
    return "; ".join(f"{b}: {', '.join(sorted(backend_options(b) - python_only))}"
                     for b in BACKENDS)


class _Formatter(argparse.HelpFormatter):
    """Fills in the backends' option names only when help is shown (they need imports)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and "{backend_options}" in text:
            text = text.replace("{backend_options}", _options_help())
        return text


def _backend_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options for ``backend`` plus the quiet defaults it accepts."""
    from .backends import backend_options

    accepted = backend_options(backend)
    out = {k: v for k, v in _QUIET.items() if k in accepted}
    out.update(options)
    return out


def _fit(spec, data, backend: str, seed: int | None, options: dict[str, Any], reference=None):
    """Fit one backend; a Bayesian backend's draws are labelled like ``reference`` (EM)."""
    import ppgmm

    options = _backend_options(backend, options)
    if reference is not None and "reference" in ppgmm.backend_options(backend):
        options.setdefault("reference", reference)
    start = time.perf_counter()
    f = ppgmm.fit(spec, data, backend=backend, seed=seed, **options)
    print(f"  {backend:<5} K={spec.n_components}: {time.perf_counter() - start:6.1f} s, "
          f"converged={f.converged}", flush=True)
    return f


def _summary(f) -> str:
    p = f.point()
    lines = [repr(f), f"log-likelihood {f.loglik:.4f}   BIC {f.bic():.4f}   "
             f"wall time {float(f.attrs.get('wall_time', float('nan'))):.2f} s"]
    if f.transform is not None:
        scaled = ", ".join(f"{c} ({t})" for c, t in f.transformed_columns.items())
        lines.append(f"transformed columns: {scaled}; means below are on that scale")
    lines.append("weights: " + ", ".join(f"{w:.3f}" for w in p["weights"].values))
    for k, mu in enumerate(p["means"].values):
        pairs = ", ".join(f"{n}={v:.4g}" for n, v in zip(f.feature_names, mu, strict=True))
        lines.append(f"mean[{k}]: {pairs}")
    for w in json.loads(f.attrs.get("warnings", "[]") or "[]"):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _split_options(pairs: list[tuple[str, Any]], backends: list[str]) -> dict[str, dict]:
    """``backend.key=value`` pairs to per-backend option dicts."""
    out: dict[str, dict] = {b: {} for b in backends}
    for key, value in pairs:
        backend, dot, name = key.partition(".")
        if not dot or backend not in out:
            raise UsageError(
                f"compare options should read BACKEND.KEY=VALUE with BACKEND one of {backends}, "
                f"but got {key!r}"
            )
        out[backend][name] = value
    from .backends import backend_options

    for backend, given in out.items():  # names checked before any fitting; values by each fit
        unknown = sorted(set(given) - backend_options(backend))
        if unknown:
            raise UsageError(f"unknown option(s) {unknown} for backend {backend!r}; its options "
                             f"are {sorted(backend_options(backend))}")
    return out


# --------------------------------------------------------------------------- commands


def _prior(args) -> str | None:
    return None if getattr(args, "prior", "default") == "none" else "default"


def _status(args, fits) -> int:
    """0, or 3 under --strict when some fit did not converge (listed on stderr)."""
    failed = [f"{f.backend} K={f.spec.n_components}" for f in fits if not f.converged]
    if failed and getattr(args, "strict", False):
        print(f"ppgmm: not converged: {', '.join(failed)} (--strict: exit status 3)",
              file=sys.stderr)
        return 3
    return 0


def _cmd_demo(args) -> int:
    import ppgmm
    from ppgmm.datasets import load_airquality

    _make_folder(args.out, "--out")
    df = load_airquality()
    spec = ppgmm.GMM(n_components=2, covariance="full", prior="default")
    backends = list(DEMO_SETTINGS)
    print(f"ppgmm demo: {spec!r} on airquality ({len(df)} days; Ozone, Solar.R, Wind, Temp)",
          flush=True)
    start = time.perf_counter()
    fits = []
    for b in backends:
        f = _fit(spec, df, b, args.seed, DEMO_SETTINGS[b], reference=fits[0] if fits else None)
        f.to_netcdf(os.path.join(args.out, f"fit_{b}.nc"))
        fits.append(f)
    cmp = ppgmm.compare(fits)
    path = cmp.report(os.path.join(args.out, "report.html"), title="ppgmm demo: airquality")
    print(f"report: {os.path.abspath(path)}")
    names = (os.path.abspath(os.path.join(args.out, f"fit_{b}.nc")) for b in backends)
    print(f"fits:   {', '.join(names)}")
    print(f"total time {time.perf_counter() - start:.1f} s")
    return _status(args, fits)


def _cmd_fit(args) -> int:
    import ppgmm

    _check_out(args.out)
    df = _read_csv(args.data, args.columns, args.na_values, args.decimal)
    spec = ppgmm.GMM(args.k, covariance=args.covariance, prior=_prior(args),
                     transform=_transforms(args))
    f = _fit(spec, df, args.backend, args.seed, dict(args.option or []))
    f.to_netcdf(args.out)
    print(_summary(f))
    print(f"saved: {args.out}")
    return _status(args, [f])


def _cmd_compare(args) -> int:
    import pandas as pd

    import ppgmm
    from ppgmm.backends import BACKENDS, kind

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends or len(set(backends)) < len(backends):
        raise UsageError(
            f"--backends should list some of {', '.join(BACKENDS)}, each once, but got "
            f"{args.backends!r}"
        )
    options = _split_options(args.option or [], backends)
    _check_out(args.report)
    if args.save_fits:
        _make_folder(args.save_fits, "--save-fits")
    df = _read_csv(args.data, args.columns, args.na_values, args.decimal)
    truth = None
    if args.truth:
        truth = _read_csv(args.truth, args.columns, args.na_values, args.decimal)
        _check_truth(truth, df, args.truth, args.data)
    fits = []
    for k in args.k:
        spec = ppgmm.GMM(k, covariance=args.covariance, prior=_prior(args),
                         transform=_transforms(args))
        first = None
        for b in backends:
            fits.append(_fit(spec, df, b, args.seed, options[b], reference=first))
            first = first or (fits[-1] if kind(b) == "optimum" else None)
    cmp = ppgmm.compare(fits, truth=truth)
    if args.save_fits:
        for label, f in cmp.fits.items():
            f.to_netcdf(os.path.join(args.save_fits, f"fit_{label.replace(' ', '_')}.nc"))
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(cmp.convergence.to_string(index=False))
        if cmp.imputation_scores is not None:
            print(cmp.imputation_scores.query("feature == 'all'").to_string(index=False))
        if cmp.model_comparison is not None:
            print("\nmodel comparison (BIC: smaller is better; LOO elpd: larger is better; "
                  "rank 0 is best within each backend)")
            print(cmp.model_comparison.to_string(index=False))
    if args.report:
        print(f"report: {os.path.abspath(cmp.report(args.report))}")
    return _status(args, fits)


def _check_truth(truth, df, truth_path: str, data_path: str) -> None:
    """Refuse a --truth file that cannot score the data, before any fitting."""
    if truth.shape != df.shape:
        raise UsageError(f"{truth_path} should hold the complete data, with the shape of "
                         f"{data_path} {df.shape}, but has shape {truth.shape}")
    gaps = int((truth.isna().to_numpy() & df.isna().to_numpy()).sum())
    if gaps:
        raise UsageError(f"{truth_path} should be complete where {data_path} has missing "
                         f"values, but {gaps} of those entries are empty in it too")


def _cmd_report(args) -> int:
    import ppgmm

    _check_out(args.out)
    fits = [ppgmm.load(path) for path in args.fits]
    truth = (_read_csv(args.truth, None, args.na_values, args.decimal) if args.truth
             else None)
    cmp = ppgmm.compare(fits, truth=truth)
    print(f"report: {os.path.abspath(cmp.report(args.out))}")
    return 0


# --------------------------------------------------------------------------- parser


def _cmd_study(args) -> int:
    """``ppgmm study NAME ...``: delegated to the source tree's ``studies.runner``."""
    import importlib

    try:
        runner = importlib.import_module("studies.runner")
    except ImportError:
        runner = None
    if not hasattr(runner, "STUDIES"):
        raise UsageError("the studies live in ppgmm's source tree, not in the installed "
                         "package: clone ppgmm's repository, run `pip install -e \".[studies]\"` "
                         "there and run `ppgmm study` from it")
    return int(runner.main(["--help"] * args.help + args.args))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ppgmm`` command."""
    from . import __version__
    from .backends import BACKENDS
    from .spec import COVARIANCE_TYPES

    p = _Parser(prog="ppgmm", description=(
        "Fit Gaussian mixtures to data with missing values by EM, ADVI and NUTS, and compare."
    ), epilog="Exit status: 0 success, 2 user error, 3 a fit did not converge (--strict only).")
    p.add_argument("--version", action="version", version=f"ppgmm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def run_args(q):  # every command that fits
        q.add_argument("--strict", action="store_true",
                       help="exit with status 3 when any fit did not converge (EM or ADVI "
                            "criterion, NUTS R-hat/ESS/divergence checks)")
        q.add_argument("--seed", type=_seed, default=0,
                       help="seed of every random step (default 0)")

    def csv_args(q):
        q.add_argument("--na-values", metavar="TOKEN", action="append",
                       help="also read TOKEN as missing, e.g. --na-values ? (repeatable; empty "
                            "cells, NA, NaN, N/A, null and None are always missing)")
        q.add_argument("--decimal", default=".", choices=[".", ","], metavar="{.|,}",
                       help="decimal separator (default .; with , columns are separated by "
                            "; or tabs)")

    d = sub.add_parser("demo", help="fit EM, ADVI and NUTS on airquality and write a report")
    d.add_argument("--out", default="ppgmm-demo", help="output folder (default ppgmm-demo)")
    run_args(d)
    d.set_defaults(run=_cmd_demo)

    def data_args(q):
        q.add_argument("data", metavar="DATA.csv", help="CSV with a header; empty cells = missing")
        q.add_argument("--columns", help="comma-separated columns to model (default all)")
        q.add_argument("--covariance", default="full",
                       choices=list(COVARIANCE_TYPES))
        q.add_argument("--prior", default="default", choices=["default", "none"],
                       help="default: Fraley & Raftery's conjugate prior (MAP for EM); none: "
                            "maximum likelihood for EM (ADVI and NUTS then use the default)")
        q.add_argument("--transform", type=_transform, action="append", metavar="COLUMN=NAME",
                       help="fit a column on a transformed scale, e.g. --transform Ozone=log "
                            "(log: values > 0; logit: values in (0, 1)); imputations and "
                            "draws are mapped back inside the support (repeatable, or "
                            "comma-separated)")
        csv_args(q)
        run_args(q)

    f = sub.add_parser("fit", help="fit one backend and save the fit as netCDF",
                       formatter_class=_Formatter)
    data_args(f)
    f.add_argument("-k", type=_positive_k, required=True, metavar="K",
                   help="number of components")
    f.add_argument("--backend", default="em", choices=list(BACKENDS))
    f.add_argument("-o", "--option", type=_option, action="append", metavar="KEY=VALUE",
                   help="backend option, e.g. -o n_init=5 (repeatable; values are read as "
                        "JSON, else as text). Options: {backend_options}")
    f.add_argument("--out", required=True, metavar="FIT.nc", help="write the fit here (netCDF)")
    f.set_defaults(run=_cmd_fit)

    c = sub.add_parser("compare", help="fit several backends (and K) and compare them",
                       formatter_class=_Formatter)
    data_args(c)
    c.add_argument("-k", type=_k_list, required=True, metavar="K",
                   help="number of components, or a list such as 2,3 to compare K")
    c.add_argument("--backends", default="em,advi,nuts",
                   help="comma-separated backends (default em,advi,nuts)")
    c.add_argument("-o", "--option", type=_option, action="append",
                   metavar="BACKEND.KEY=VALUE",
                   help="e.g. -o nuts.draws=500 (repeatable). Options: {backend_options}")
    c.add_argument("--truth", metavar="TRUTH.csv",
                   help="the complete data, to score the imputations")
    c.add_argument("--report", metavar="report.html", help="write the HTML report here")
    c.add_argument("--save-fits", metavar="DIR", help="also save every fit as netCDF in DIR")
    c.set_defaults(run=_cmd_compare)

    r = sub.add_parser("report", help="write a report from saved fits")
    r.add_argument("fits", nargs="+", metavar="FIT.nc")
    r.add_argument("--out", required=True, metavar="report.html", help="write the report here")
    r.add_argument("--truth", metavar="TRUTH.csv",
                   help="the complete data, to score the imputations")
    csv_args(r)
    r.set_defaults(run=_cmd_report)

    st = sub.add_parser("study", add_help=False, help="run a validation study (source checkout; "
                        "ppgmm study --help)")
    st.add_argument("-h", "--help", action="store_true")
    st.add_argument("args", nargs=argparse.REMAINDER)
    st.set_defaults(run=_cmd_study)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one plain line each on stderr (no source line)."""
    print(f"ppgmm: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _fail(message: str) -> int:
    text = " ".join(str(message).split())
    print(f"ppgmm: error: {text}", file=sys.stderr)
    return 2


#: seconds between a Ctrl-C and the forced exit, when the KeyboardInterrupt got lost
INTERRUPT_GRACE = 5.0


@contextlib.contextmanager
def _firm_interrupt() -> Iterator[None]:
    """Make Ctrl-C always stop the command.

    Python raises KeyboardInterrupt wherever the main thread is, and when that is a
    callback a library runs at garbage collection (JAX's), Python prints "Exception ignored
    in ..." and the run goes on. So the first Ctrl-C also starts a timer that ends the
    process with status 130 after :data:`INTERRUPT_GRACE` seconds unless the interrupt
    arrived. Files are written atomically, so a forced exit leaves none half-written.
    """
    # only where Ctrl-C would raise KeyboardInterrupt anyway (not in a background job that
    # ignores SIGINT, nor under a handler someone else installed)
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    timers: list[threading.Timer] = []

    def forced_exit() -> None:
        print("ppgmm: interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    def on_interrupt(signum, frame):
        if not timers:
            timers.append(threading.Timer(INTERRUPT_GRACE, forced_exit))
            timers[0].daemon = True
            timers[0].start()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
        if timers:  # interrupted, but the KeyboardInterrupt was swallowed on the way
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        for timer in timers:
            timer.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ppgmm`` command; returns the exit status (0 ok, 2 user error, 3 a fit did
    not converge under ``--strict``)."""
    from .exceptions import PpgmmError

    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        return _fail(str(err))
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    try:
        import matplotlib

        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
        # a study's cluster needs its own shutdown: no forced exit there
        firm = _firm_interrupt() if args.command != "study" else contextlib.nullcontext()
        with warnings.catch_warnings(), firm:
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return int(args.run(args))
    except (UsageError, PpgmmError, ValueError, OSError) as err:
        return _fail(str(err) or type(err).__name__)
    except KeyboardInterrupt:
        print("ppgmm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
