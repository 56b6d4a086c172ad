"""The HTML report: valid, self-contained, escaped, and renders in headless Chromium."""

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_compare import posterior_like, unconverged

import ppgmm
from ppgmm.report import SECTIONS, parameter_table

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
HOSTILE = "<script>alert(1)</script>"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "")
                 if p and Path(p).exists()), None)


class StrictParser(HTMLParser):
    """Collects ids, images and tags; fails on unbalanced or misnested tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.ids, self.imgs, self.tags, self.errors = [], set(), [], set(), []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.imgs.append(attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def parse(text):
    p = StrictParser()
    p.feed(text)
    p.close()
    return p


@pytest.fixture(scope="module")
def fits():
    params = ppgmm.Params(
        np.array([0.5, 0.5]), np.array([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]]),
        np.array([np.eye(3), 0.7 * np.eye(3)]),
    )
    data, truth = ppgmm.simulate(params, n=120, missing=0.15, seed=5)
    spec = ppgmm.GMM(2)
    em = ppgmm.fit(spec, data, seed=0)
    boot = ppgmm.fit(spec, data, seed=1, init=em.point(), uncertainty="bootstrap",
                     n_bootstrap=30)
    return data, truth, em, boot, posterior_like(boot)


@pytest.fixture(scope="module")
def report(fits, tmp_path_factory):
    data, truth, em, boot, nuts = fits
    more_k = ppgmm.fit(ppgmm.GMM(3), data, seed=0)
    cmp = ppgmm.compare({"em": em, "em bootstrap": boot, "nuts": nuts, "em K=3": more_k},
                        truth=truth)
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert cmp.report(str(path)) == str(path)
    return cmp, path.read_text(encoding="utf-8")


def test_report_is_valid_html_with_every_section(report):
    _, text = report
    p = parse(text)
    assert p.doctype.lower() == "doctype html"
    assert not p.errors and not p.stack, (p.errors, p.stack)
    assert {anchor for anchor, _ in SECTIONS} <= p.ids
    for _, title in SECTIONS:
        assert f"<h2>{title}</h2>" in text
    assert "could not be drawn" not in text
    # the data overview, parameter table, scores, model comparison and reproduction code
    for needle in ("Missingness patterns", "hdi_lower", "coverage", "BIC",
                   "ppgmm.fit(spec, data, backend=&#x27;em&#x27;", "numpy"):
        assert needle in text, needle


def test_report_is_self_contained(report):
    _, text = report
    p = parse(text)
    assert len(p.imgs) >= 6  # missingness, forest, ellipses, imputations, traces, rank
    for img in p.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert img.get("alt")
    assert "script" not in p.tags and "link" not in p.tags
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
    assert "Content-Security-Policy" in text


def test_parameter_table_marks_hdis_that_miss_the_em_estimate(report):
    cmp, text = report
    table = parameter_table(cmp)
    assert list(table.columns) == ["parameter", "truth", "em", "em bootstrap", "nuts"]
    outside = cmp.summary().query("em_in_hdi == False")
    assert table.map(lambda v: "\u2020" in str(v)).to_numpy().sum() == len(outside)


def test_hostile_names_appear_only_escaped(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (40, 2)), rng.normal(2, 1, (40, 2))])
    x[rng.random(x.shape) < 0.1] = np.nan
    df = pd.DataFrame(x, columns=[HOSTILE, 'a&b "q" $x$'])
    f = ppgmm.fit(ppgmm.GMM(2), df, seed=0, uncertainty="bootstrap", n_bootstrap=10)
    cmp = ppgmm.compare({f"<b>{HOSTILE}</b>": f})
    path = cmp.report(str(tmp_path / "r.html"), title=f"title {HOSTILE}")
    text = Path(path).read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert f"<b>{HOSTILE}" not in text and "&lt;b&gt;&lt;script&gt;" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a&amp;b" in text
    p = parse(text)
    assert not p.errors and not p.stack
    assert "could not be drawn" not in text


def test_report_from_saved_fits_reproduces_the_tables(fits, tmp_path):
    data, truth, em, boot, nuts = fits
    paths = []
    for name, f in (("em", em), ("boot", boot), ("nuts", nuts)):
        paths.append(str(tmp_path / f"{name}.nc"))
        f.to_netcdf(paths[-1])
    live = ppgmm.compare([em, nuts], truth=truth)
    saved = ppgmm.compare([ppgmm.load(p) for p in (paths[0], paths[2])], truth=truth)
    pd.testing.assert_frame_equal(live.summary(), saved.summary())
    pd.testing.assert_frame_equal(live.imputation_scores, saved.imputation_scores)
    pd.testing.assert_frame_equal(live.convergence, saved.convergence)

    def tables(cmp):
        text = Path(cmp.report(str(tmp_path / "r.html"))).read_text(encoding="utf-8")
        return re.findall(r"<table.*?</table>|<pre>.*?</pre>", text, flags=re.S)

    assert tables(live) == tables(saved)


HOOK = """<script>
window.__errs = [];
const __ce = console.error;
console.error = (...a) => { window.__errs.push(a.join(' ')); __ce(...a); };
window.addEventListener('error', e => window.__errs.push(String(e.message ||
  (e.target && e.target.tagName))), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute('data-check',
    'images=' + imgs.length + ';bad=' + bad + ';errors=' + window.__errs.length);
});
</script>"""


def _chromium(path: Path, tmp_path: Path) -> tuple[str, str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
           path.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, out.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium_without_console_errors(report, tmp_path):
    _, text = report
    page = tmp_path / "report.html"
    page.write_text(text, encoding="utf-8")
    dom, log = _chromium(page, tmp_path)
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert 'id="reproduce"' in dom
    # the same page with an error hook (and without the CSP that would block the hook):
    # every image decodes, no error event fires
    hooked = tmp_path / "hooked.html"
    n_imgs = len(parse(text).imgs)
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
    hooked.write_text(text.replace("<head>", "<head>" + HOOK, 1), encoding="utf-8")
    dom, log = _chromium(hooked, tmp_path)
    assert f'data-check="images={n_imgs};bad=0;errors=0"' in dom, log[-2000:]
    assert not [line for line in log.splitlines() if ":CONSOLE" in line]


@pytest.mark.parametrize("case", ["complete", "one feature"])
def test_edge_cases_give_a_full_report(case, tmp_path, rng):
    # one feature: a row's only entry cannot be missing, so neither case has missing entries
    if case == "complete":
        x = rng.normal(size=(50, 2))
    else:
        x = np.concatenate([rng.normal(-2, 1, 40), rng.normal(2, 1, 40)])[:, None]
    f = ppgmm.fit(ppgmm.GMM(1 if case == "complete" else 2), x, seed=0,
                  uncertainty="bootstrap", n_bootstrap=5)
    cmp = ppgmm.compare([f], truth=x)
    text = Path(cmp.report(str(tmp_path / "r.html"))).read_text(encoding="utf-8")
    assert "could not be drawn" not in text
    assert not parse(text).errors
    assert "no missing entries: nothing to score" in text and "No truth given" not in text


def test_warnings_section_lists_each_fits_warnings_in_plain_words(fits, tmp_path):
    data = fits[0]
    with pytest.warns(ppgmm.ConvergenceWarning, match="did not converge"):
        short = ppgmm.fit(ppgmm.GMM(2), data, seed=0, max_iter=2)
    cmp = ppgmm.compare({"short <run>": short})
    text = Path(cmp.report(str(tmp_path / "w.html"))).read_text(encoding="utf-8")
    section = text[text.index('<section id="warnings">'):text.index('<section id="data">')]
    assert "short &lt;run&gt;: EM did not converge in max_iter=2 iterations" in section
    assert "increase max_iter" in section


def test_warnings_come_first(report):
    _, text = report
    assert SECTIONS[0] == ("warnings", "Warnings")
    starts = [text.index(f'<section id="{a}">') for a, _ in SECTIONS]
    assert starts == sorted(starts)


def test_unconverged_fit_is_badged_and_greyed(fits, tmp_path):
    data, truth, em, boot, nuts = fits
    data = data.copy()
    data[7] = np.nan  # a row with nothing observed: dropped at fit time
    with pytest.warns(UserWarning, match="dropped 1 of 120 rows"):
        em = ppgmm.fit(ppgmm.GMM(2), data, seed=0)
    with pytest.warns(UserWarning, match="dropped 1 of 120 rows"):
        boot = ppgmm.fit(ppgmm.GMM(2), data, seed=1, init=em.point(),
                         uncertainty="bootstrap", n_bootstrap=20)
    bad = unconverged(posterior_like(boot))
    cmp = ppgmm.compare({"em": em, "nuts": bad})
    text = Path(cmp.report(str(tmp_path / "r.html"))).read_text(encoding="utf-8")
    p = parse(text)
    assert not p.errors and not p.stack
    head = text[:text.index("<section")]
    assert '<span class="badge bad">nuts: NOT converged</span>' in head
    assert '<span class="badge ok">em: converged</span>' in head
    # every table row of the unconverged fit is greyed, no row of the converged one
    rows = re.findall(r'<tr class="unconverged">\s*<td>(.*?)</td>', text, flags=re.S)
    assert rows and set(rows) <= {"nuts", "parameters", "weights", "means", "covariances"}
    tidy = cmp.summary()
    assert text.count('<tr class="unconverged">') >= (~tidy["converged"]).sum() + 1
    assert "nuts (NOT converged)" in text  # parameter and convergence table headers
    agreement = text[text.index('<section id="agreement">'):text.index('<section id="forest">')]
    assert "Left out of these checks because they did not converge: nuts" in agreement
    data_sec = text[text.index('<section id="data">'):text.index('<section id="parameters">')]
    assert "Dropped rows" in data_sec and "counting from 0: 7." in data_sec
    warn = text[text.index('<section id="warnings">'):text.index('<section id="data">')]
    assert warn.index("nuts: ") < warn.index("data: 1 row(s)")
