"""Run a study by name, render its page, and rewrite the index of docs/studies/.

``ppgmm study NAME [--quick] [--reps R] [--scheduler ADDRESS] [--out DIR] [--render]``.
Results are cached under ``DIR/data/``; ``--render`` rewrites the pages from the cache
without fitting anything.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["STUDIES", "main", "run", "DOCS"]

#: study name -> module
STUDIES = {
    "sweep": "studies.sweep",
    "calibration": "studies.calibration",
    "agreement": "studies.agreement",
    "realdata": "studies.realdata",
    "cost": "studies.cost",
}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "studies"


def run(name: str, *, quick: bool = False, out: str | Path | None = None,
        scheduler: str | None = None, reps: int | None = None, workers: int | None = None,
        render_only: bool = False, methods: list[str] | None = None,
        only: dict[str, list[str]] | None = None, overrides: dict | None = None) -> Path:
    """Run (or resume) one study and render its page; returns the page's path."""
    from studies import common, index

    if name not in STUDIES:
        raise ValueError(f"study should be one of {sorted(STUDIES)}, but got {name!r}")
    module = importlib.import_module(STUDIES[name])
    out = Path(out) if out is not None else (Path("ppgmm-study-quick") if quick else DOCS)
    kwargs = {"methods": methods} if methods else {}
    tasks = module.tasks(quick=quick, reps=reps, **kwargs)
    fields = sorted({key for t in tasks for key in t})
    for key, values in (only or {}).items():
        if key not in fields:
            raise ValueError(f"--only {key}=...: the {name} study's tasks have no field "
                             f"{key!r}; they have {', '.join(fields)}")
        tasks = [t for t in tasks if str(t.get(key)) in values]
    tasks = [{**t, **(overrides or {})} for t in tasks]
    settings = {"reps": reps, "quick": quick, **kwargs, **({"only": only} if only else {}),
                **({"set": overrides} if overrides else {})}
    page = common.run_study(name, tasks, module.run_task, module.render, out,
                            scheduler=scheduler, quick=quick, workers=workers,
                            settings=settings, refit=not render_only)
    index.write_index(out)
    return page


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``ppgmm study`` (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(prog="ppgmm study", description=__doc__)
    p.add_argument("name", choices=sorted(STUDIES), metavar="NAME",
                   help="one of " + ", ".join(sorted(STUDIES)))
    p.add_argument("--quick", action="store_true", help="smoke-test size (seconds)")
    p.add_argument("--reps", type=int, help="replications (default: the full design's)")
    p.add_argument("--methods", help="comma-separated methods (default: the study's)")
    p.add_argument("--only", action="append", metavar="KEY=V1,V2",
                   help="run only the tasks whose KEY is one of the values, e.g. N=200 "
                   "(repeatable; a key given twice keeps both lists)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="set a field of every task, e.g. k_max=3 (repeatable)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler address (default: a LocalCluster)")
    p.add_argument("--workers", type=int, help="LocalCluster workers (default: CPU count)")
    p.add_argument("--out", metavar="DIR", help="pages and cached results (default "
                   "docs/studies/, or ppgmm-study-quick/ with --quick)")
    p.add_argument("--merge-from", metavar="DIR",
                   help="first add the cached results of a run with --out DIR")
    p.add_argument("--render", action="store_true",
                   help="only rewrite the page from the cached results")
    return p


def _value(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    return key.strip(), value.strip()


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = args if args is not None else build_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    if args.merge_from:
        from studies.common import merge_cache

        out = args.out or str(DOCS)
        print(f"{merge_cache(args.name, args.merge_from, out)} row(s) merged")
    only: dict[str, list[str]] = {}
    for item in args.only or []:  # a key given twice keeps the values of both
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--only should be KEY=V1,V2 (e.g. N=200), but got {item!r}")
        only.setdefault(key.strip(), []).extend(v.strip() for v in values.split(","))
    page = run(args.name, quick=args.quick, out=args.out, scheduler=args.scheduler,
               reps=args.reps, workers=args.workers, render_only=args.render, methods=methods,
               only=only, overrides=dict(_value(o) for o in args.overrides or []))
    print(page)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
