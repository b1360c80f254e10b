"""Layering: no import cycles between the package's modules (module- and function-level
imports both count), and no module grows past a size a reader can hold in their head."""

from __future__ import annotations

from pathlib import Path

from edgecompress.devtools.import_cycles import find_cycles, package_graph

PACKAGE = Path(__file__).resolve().parents[1] / "edgecompress"


def test_cycle_finder_sees_function_level_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg import a  # re-export: not a cycle\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import a\n\ndef g():\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert find_cycles(package_graph(pkg, "pkg")) == [["pkg.a", "pkg.b"]]


def test_the_package_has_no_import_cycles():
    cycles = find_cycles(package_graph(PACKAGE, "edgecompress"))
    assert cycles == [], f"import cycles: {cycles}"
