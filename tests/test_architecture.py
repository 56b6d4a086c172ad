"""The package's layering, read statically (studies/check_architecture.py)."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location(
        "check_architecture", ROOT / "studies" / "check_architecture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_circles_private_imports_or_long_functions():
    check = _checker()
    graph, private, long = check.scan(check.modules(str(ROOT / "ppgmm")))
    assert check.circles(graph) == []
    assert private == []
    assert long == []


def test_the_checker_finds_each_kind_of_fault(tmp_path):
    """A package written to hold one circle, one private import and one long function."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import _hidden\n")
    (pkg / "b.py").write_text(
        "_hidden = 1\n\n\ndef f():\n    from .a import _hidden as h\n"
        + "".join(f"    x{i} = {i}\n" for i in range(81)) + "    return h\n")
    check = _checker()
    graph, private, long = check.scan(check.modules(str(pkg)))
    assert set(graph) == {"pkg", "pkg.a", "pkg.b"}
    assert check.circles(graph) == [["pkg.a", "pkg.b"]]
    assert sorted(private) == [("pkg.a", "pkg.b._hidden"), ("pkg.b", "pkg.a._hidden")]
    assert long == [("pkg.b", "f", 83)]
