"""docs/studies/index.md: what was compared, the headline numbers, how to rerun each study.

Written from each study's cached results (``DIR/data/NAME.parquet``) through the study
module's ``headline(results, meta) -> str``; never by hand.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from studies.common import (
    design_brief,
    design_summary,
    design_table,
    load_results,
    was_quick,
    write_text,
)

__all__ = ["write_index", "ORDER"]

ORDER = {
    "sweep": ("studies.sweep", "Missingness sweep: EM vs VI, NUTS and impute-then-fit peers"),
    "calibration": ("studies.calibration", "Calibration: SBC and interval coverage"),
    "agreement": ("studies.agreement", "Agreement of MAP-EM and NUTS as N grows"),
    "realdata": ("studies.realdata", "Real data: airquality, Palmer penguins, penguin isotopes"),
    "cost": ("studies.cost", "Cost: time, ESS/s, memory, scaling exponents"),
}

INTRO = """\
# Studies

*Written by `studies/index.py` from the cached results under `data/`; every number on these
pages is written by the study scripts.*

ppgmm fits Gaussian mixtures to incomplete data by exact-likelihood EM (MLE or MAP), ADVI
(mean-field, full-rank) and NUTS. These studies check those fits against the truth, against
each other, and against what users do today: fill the gaps (column means, scikit-learn's
IterativeImputer) and fit scikit-learn's GaussianMixture, or pygmmis with the missing entries
given a huge noise variance.

Each study runs with `ppgmm study NAME [--quick] [--reps R] [--scheduler ADDRESS] [--out DIR]`
from a source checkout (`pip install -e ".[studies]"`), on a Dask LocalCluster by default or a
running cluster with `--scheduler`. Raw results are cached in `data/NAME.parquet`;
`ppgmm study NAME --render` rewrites a page without refitting; `--reps`, `--only KEY=V1,V2`,
`--methods` and `--set KEY=VALUE` run part of a design (recorded on the page). The studies
live in the source tree, not in the installed wheel: from a wheel, `ppgmm study` says so in
one line. Each entry below says which part of the study's full design its cached results
cover, counted from the cache itself.
"""


def _status(name: str, module, df, meta: dict) -> tuple[str, str]:
    """(short status for the intro, the entry's closing line) from the cache."""
    _, n = design_table(df, module.DESIGN)
    runs = meta["runs"]
    wall = sum(r["wall_s"] for r in runs)
    timing = f"{wall / 60:.1f} min wall recorded" if runs else "no run record kept"
    if was_quick(meta):
        short = "quick mode"
    elif n["run"] == n["full"]:
        short = "full design"
    else:
        short = f"{n['run']:,} of {n['full']:,} tasks of the full design"
    brief = "" if short == "full design" else f" Ran: {design_brief(df, module.DESIGN)}."
    line = (f"\nDesign: {design_summary(df, module.DESIGN)}{brief} {timing}; see the page. "
            f"Rerun: `ppgmm study {name}`.\n")
    return short, line


def write_index(out: Path) -> Path:
    """Rewrite ``out/index.md`` from the cached results of every study there."""
    out = Path(out)
    parts, status = [], []
    for name, (module_name, title) in ORDER.items():
        parts.append(f"## [{title}]({name}.md)\n")
        data = out / "data" / f"{name}.parquet"
        meta_path = out / "data" / f"{name}.json"
        if not data.exists():
            parts.append(f"Not run yet. Run: `ppgmm study {name}`\n")
            status.append(f"{name}: not run")
            continue
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
        module = importlib.import_module(module_name)
        df = load_results(data)
        parts.append(module.headline(df, meta))
        short, line = _status(name, module, df, meta)
        parts.append(line)
        status.append(f"{name}: {short}")
    intro = INTRO + "\nPublished runs: " + "; ".join(status) + ".\n"
    path = out / "index.md"
    write_text(path, "\n".join([intro, *parts]))
    return path
