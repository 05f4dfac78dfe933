"""The package's layers: no module imports a higher layer, not even inside a function, and the
attribution and metrics layers load without Lightning or jsonargparse."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "src" / "uattr"
#: Lowest first; a module may import its own layer and those below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("uattr", "uattr.common", "uattr.modes"),
    ("uattr.models", "uattr.data"),
    ("uattr.bayes",),
    ("uattr.attribution",),
    ("uattr.metrics", "uattr.detection"),
    ("uattr.lit",),
    ("uattr.callbacks",),
    ("uattr.evaluation", "uattr.report", "uattr.cli"),
)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix naming ``module``'s layer."""
    best, rank = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            # the top-level package is its own layer; its sub-packages need their own entry
            prefix = name != "uattr" and module.startswith(name + ".")
            if (module == name or prefix) and len(name) > best:
                best, rank = len(name), i
    if rank < 0:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}.")
    return rank


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``uattr`` import in the file, at any depth (functions too)."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from uattr import bayes` imports the sub-package, not just the top level
            names = [f"{base}.{a.name}" for a in node.names] if base == "uattr" else [base]
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found if name.split(".")[0] == "uattr"]


def layer_violations(root: Path = PACKAGE) -> list[str]:
    """Every import in the package ``root`` that points to a higher layer, as text."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        for line, imported in imports_of(path, root):
            if layer_of(imported) > layer_of(module):
                out.append(f"{path.relative_to(root.parent)}:{line}: {module} imports {imported}")
    return out


def test_no_import_points_up_the_layers():
    assert layer_violations() == []


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(_module_name(path, PACKAGE))


def test_an_upward_import_inside_a_function_is_found(tmp_path):
    copy = tmp_path / "uattr"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "attribution" / "base.py"
    target.write_text(target.read_text() + "\n\ndef _sneaky():\n"
                      "    from uattr.evaluation import run_suite\n    return run_suite\n")
    (copy / "metrics" / "extra.py").write_text("from ..lit import checkpoint\n")
    found = layer_violations(copy)
    assert len(found) == 2, found
    assert "uattr.attribution.base imports uattr.evaluation" in found[0]
    assert "uattr.metrics.extra imports uattr.lit" in found[1]


def test_attribution_and_metrics_load_without_lightning_or_jsonargparse():
    code = ("import sys, uattr.attribution, uattr.metrics, uattr.bayes; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'lightning', 'pytorch_lightning', 'jsonargparse'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
