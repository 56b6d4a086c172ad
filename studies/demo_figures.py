"""The figures and numbers the user guides show from ``ppgmm demo``.

Run: ``python studies/demo_figures.py [--demo DIR]`` (about a minute and a half on two cores).

Runs ``ppgmm demo --out DIR`` (or reads a finished demo folder given with ``--demo``), copies
the report's figures to ``docs/img/demo-*.png`` (the images embedded in ``report.html``, so
the guides show exactly what the report shows), and prints the numbers that
docs/guide-report.md and docs/guide-cli.md quote: how many EM estimates lie in each Bayesian
backend's 94% HDIs (and which do not), the relative L2 distances between the fitted
densities, ADVI's iterations, and NUTS's largest R-hat, smallest bulk ESS and divergences.
"""

from __future__ import annotations

import argparse
import base64
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: the report's image alt texts and the files the guides show them from
FIGURES = {
    "forest plots of weights and means": "demo-forest.png",
    "component ellipses on pairwise scatter plots": "demo-ellipses.png",
    "imputation comparison": "demo-imputations.png",
    "objective and ELBO traces": "demo-traces.png",
    "nuts rank plots": "demo-rank.png",
}


def copy_figures(report: Path, img: Path) -> None:
    """Write the report's embedded PNGs named in :data:`FIGURES` to ``img``."""
    found = dict(re.findall(r'<img[^>]*alt="([^"]*)"[^>]*src="data:image/png;base64,'
                            r'([A-Za-z0-9+/=]+)"', report.read_text()))
    lost = sorted(set(FIGURES) - set(found))
    if lost:  # a renamed figure would otherwise leave its old image in the guides
        raise SystemExit(f"{report} has no figure {lost}; update FIGURES")
    img.mkdir(parents=True, exist_ok=True)
    for alt, name in FIGURES.items():
        (img / name).write_bytes(base64.b64decode(found[alt]))
        print(f"wrote {img / name}")


def numbers(folder: Path) -> None:
    """Print the numbers the guides quote, from the demo's saved fits."""
    import ppgmm

    fits = [ppgmm.load(folder / f"fit_{b}.nc") for b in ("em", "advi", "nuts")]
    cmp = ppgmm.compare(fits)
    table = cmp.summary()
    for backend, rows in table.dropna(subset=["em_in_hdi"]).groupby("backend", sort=False):
        out = rows[~rows["em_in_hdi"].astype(bool)]
        where = ", ".join(f"{r.parameter}[{r.component}]"
                          + (f" {r.feature}" if isinstance(r.feature, str) else "")
                          + (f",{r.feature_}" if isinstance(r.feature_, str) else "")
                          for r in out.itertuples())
        print(f"EM estimate inside {backend}'s 94% HDI: {len(rows) - len(out)} of {len(rows)}"
              + (f" (outside: {where})" if where else ""))
    dist = cmp.relative_distance
    labels = [str(b) for b in dist["backend"].values]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            print(f"relative L2 distance {a}-{b}: {float(dist.sel(backend=a, backend_=b)):.3f}")
    print(f"ADVI iterations: {fits[1].attrs['n_iter']}")
    nuts = fits[2].attrs  # the diagnostics ppgmm judged convergence by
    print(f"NUTS: largest R-hat {nuts['rhat_max']:.4f}, smallest bulk ESS "
          f"{nuts['ess_bulk_min']:.0f}, divergences {nuts['divergences']}")
    print(f"versions: {nuts['versions']}")  # NUTS's digits move with them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="a finished `ppgmm demo --out` folder")
    parser.add_argument("--img", type=Path, default=Path(__file__).parents[1] / "docs" / "img")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.demo
        if folder is None:
            folder = Path(tmp)
            code = "import sys; from ppgmm.cli import main; sys.exit(main(sys.argv[1:]))"
            subprocess.run([sys.executable, "-c", code, "demo", "--out", str(folder)],
                           check=True)
        copy_figures(folder / "report.html", args.img)
        numbers(folder)


if __name__ == "__main__":
    main()
