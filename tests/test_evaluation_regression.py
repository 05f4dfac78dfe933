"""The evaluation of the shipped checkpoint writes the numbers and report tables it wrote before
the evaluation was split into protocol modules (stored in tests/data/evaluation_regression)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from conftest import ROOT

from uattr.evaluation import EvaluationSettings, evaluate_checkpoint

STORED = ROOT / "tests" / "data" / "evaluation_regression"
SHIPPED = ROOT / "checkpoints" / "mnist5k_lenet_mcdropout.ckpt"
#: Entries that name this run rather than measure it.
NOT_COMPARED = ("/checkpoint", "/timing", "/figures", "/settings/device", "/settings/torch_threads")


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """``{"/a/b/0": leaf}`` of a JSON document."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in leaves(sub, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in leaves(sub, f"{path}/{i}").items()}
    return {path: value}


def differences(stored: dict[str, Any], new: dict[str, Any], tol: float = 1e-9) -> list[str]:
    """Every stored leaf that is missing from ``new`` or differs (numbers: by more than tol)."""
    out, now = [], leaves(new)
    for key, old in leaves(stored).items():
        if key.startswith(NOT_COMPARED):
            continue
        if key not in now:
            out.append(f"{key}: missing (was {old!r})")
            continue
        value = now[key]
        if isinstance(old, int | float) and not isinstance(old, bool):
            same = (math.isnan(old) and math.isnan(value)) or abs(value - old) <= tol * max(
                1.0, abs(old))
        else:
            same = value == old
        if not same:
            out.append(f"{key}: {value!r} != stored {old!r}")
    return out


def tables(report: str) -> list[str]:
    """The table lines of a report, without the timing section (seconds vary)."""
    body = report.split("\n## Timing")[0]
    return [line for line in body.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("preset", ["quick", "default"])
def test_shipped_checkpoint_evaluates_as_before(preset, tmp_path):
    settings = (EvaluationSettings.quick(progress=False) if preset == "quick"
                else EvaluationSettings(progress=False))
    out = tmp_path / preset
    evaluate_checkpoint(SHIPPED, out, accelerator="cpu", settings=settings)
    new = json.loads((out / "metrics.json").read_text())
    stored = json.loads((STORED / f"metrics_{preset}.json").read_text())
    assert differences(stored, new) == []
    stored_tables = (STORED / f"report_tables_{preset}.md").read_text().splitlines()
    assert tables((out / "report.md").read_text()) == stored_tables


def test_the_comparison_sees_a_changed_number():
    stored = {"blurring": {"epistemic": {"murr@2%": 0.25, "n": 3}}, "timing": {"s": 1.0}}
    assert differences(stored, stored) == []
    assert differences(stored, {**stored, "timing": {"s": 2.0}}) == []
    changed = {"blurring": {"epistemic": {"murr@2%": 0.25 + 1e-6, "n": 3}}}
    assert differences(stored, changed) == [
        "/blurring/epistemic/murr@2%: 0.250001 != stored 0.25"]
    assert differences(stored, {"blurring": {"epistemic": {"n": 3}}}) == [
        "/blurring/epistemic/murr@2%: missing (was 0.25)"]
