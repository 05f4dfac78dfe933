"""The size limits of the house: small modules, and short functions where the protocols live."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "src" / "uattr"
MAX_FILE_LINES = 500
#: Packages whose functions stay short: a protocol is read top to bottom.
SHORT_FUNCTIONS = ("evaluation", "report")
MAX_FUNCTION_LINES = 80


def test_no_source_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_function_in_the_evaluation_or_report_is_over_80_lines():
    long = {}
    for package in SHORT_FUNCTIONS:
        for path in (PACKAGE / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long[f"{path.relative_to(ROOT)}:{node.name}"] = n
    assert long == {}
