"""The evaluation's outputs laid out from the protocols: ``report.md`` and the PNG figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from uattr.report.claims import claims_section
from uattr.report.markdown import markdown_table

if TYPE_CHECKING:
    from uattr.evaluation.protocol import EvaluationProtocol
    from uattr.evaluation.result import SuiteResult

__all__ = ["write_figures", "write_report"]


def _ran(suite: SuiteResult, protocols: Sequence[EvaluationProtocol]) -> list[EvaluationProtocol]:
    """The protocols with a result in ``suite``, in report order."""
    return sorted((p for p in protocols if p.name in suite.results), key=lambda p: p.report_rank)


def write_figures(
    suite: SuiteResult, protocols: Sequence[EvaluationProtocol], out_dir: Path
) -> list[Path]:
    """Draw every protocol's PNG figures into ``out_dir``; return their paths."""
    paths: list[Path] = []
    for protocol in _ran(suite, protocols):
        result = suite.get(protocol.name)
        if result is not None:
            paths += protocol.figures(result, suite, Path(out_dir))
    return paths


def _header(suite: SuiteResult) -> str:
    s, total = suite.settings, suite.timing.get("total", {})
    text = (
        f"# Evaluation report: {suite.model} on {suite.data}\n\n"
        f"Checkpoint: `{suite.checkpoint}`  \n"
        f"Device: {s['device']} ({s['torch_threads']} threads). Run time: "
        f"{total.get('wall_s', float('nan')):.0f} s wall, {total.get('cpu_s', float('nan')):.0f} "
        "s CPU.  \nEvery attribution table uses the test split; the UA-Backprop setting marked "
        '"val-selected" was chosen on the validation split only (see the ablation section). '
        "Mean ± standard error over images where shown. Protocol: `docs/evaluation.md`.\n"
    )
    return text + "".join(f"\n**Caution:** {c}\n" for c in suite.cautions)


def _overview(suite: SuiteResult, protocols: Sequence[EvaluationProtocol]) -> str:
    columns = [
        c
        for p in protocols
        if suite.get(p.name) is not None
        for c in p.overview(suite.get(p.name), suite)
    ]
    if not columns:
        return ""
    rows = [
        [row["label"]] + [values.get(row["key"]) for _, values in columns] for row in suite.rows
    ]
    return (
        f"\n## Overview (test split; blurring: {suite.headline_kind}, budget reading)\n\n"
        + markdown_table(["method"] + [h for h, _ in columns], rows)
        + "\n"
    )


def _timing(suite: SuiteResult) -> str:
    stages = {k: t for k, t in suite.timing.items() if isinstance(t, dict) and "wall_s" in t}
    text = (
        "\n## Timing\n\n"
        + markdown_table(
            ["stage", "wall s", "CPU s"],
            [[name, t["wall_s"], t["cpu_s"]] for name, t in stages.items()],
        )
        + "\n"
    )
    by_method = suite.timing.get("attribution_cpu_s_by_method")
    if by_method:
        labels = suite.labels
        text += (
            "\nAttribution CPU seconds by method (all tests together):\n\n"
            + markdown_table(
                ["method", "CPU s"], [[labels.get(k, k), v] for k, v in by_method.items()]
            )
            + "\n"
        )
    return text


def write_report(
    suite: SuiteResult, protocols: Sequence[EvaluationProtocol], out_dir: Path
) -> Path:
    """Write ``report.md`` (claims, overview, one numbered section per protocol that ran,
    figures, timing) into ``out_dir`` and return its path."""
    ran = _ran(suite, protocols)
    parts = [_header(suite), claims_section(suite), _overview(suite, ran)]
    for number, protocol in enumerate(ran, start=1):
        result = suite.get(protocol.name)
        parts.append(f"\n## {number}. {protocol.heading(result)}\n\n")
        parts.append(protocol.section(result, suite))
    if suite.figures:
        parts.append("\n## Figures\n\n" + "".join(f"![{n}]({n})\n\n" for n in suite.figures))
    parts.append(_timing(suite))
    text = "".join(parts)
    # one blank line after every heading and between blocks, whatever the parts end with
    lines = [line + ("\n" if line.startswith("#") else "") for line in text.split("\n")]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    path = Path(out_dir) / "report.md"
    path.write_text(text.lstrip("\n"))
    return path
