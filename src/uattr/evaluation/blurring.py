"""The blurring test (Table A of the UA-Backprop paper): MURR and AUC-URR of every method.

For each uncertainty kind, test images at or above that kind's median uncertainty (seeded
subset); pixels are blurred in the order of each method's map and the remaining uncertainty
traced (:class:`uattr.metrics.BlurringTest`, both readings of "p%").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch

from uattr.common import check_positive_int
from uattr.evaluation.context import EvaluationContext
from uattr.evaluation.protocol import EvaluationProtocol, OverviewColumn, ProtocolResult
from uattr.evaluation.result import SuiteResult
from uattr.evaluation.stats import (
    above_median,
    json_floats,
    mean_and_se,
    paired_differences,
    seeded_subset,
)
from uattr.metrics import BlurringTest, blurring_scores
from uattr.report.claims import PAPER_MNIST, UA_ROWS
from uattr.report.figures import blurring_curves_figure, map_grid
from uattr.report.markdown import fmt, markdown_table, percent, plus_minus

__all__ = ["BlurringProtocol", "BlurringResult", "BlurringSettings", "resolve_blur_sigma"]

#: The two readings of "p%": (MURR key, AUC-URR key) templates.
READINGS = {"budget": ("murr@{}", "auc_urr@{}"), "step": ("murr_step@{}", "auc_urr_step@{}")}


@dataclasses.dataclass(frozen=True)
class BlurringSettings:
    """The blurring test.

    Args:
        blur_images: test images for the headline uncertainty (a seeded random subset of the
            test images at or above that uncertainty's median).
        blur_images_other: the same for the other uncertainty kinds (extra columns).
        blur_sigma: Gaussian sigma in pixels (``None`` = 1.5 for one-channel images, Perez et
            al.'s MNIST value; 1.0 for RGB; UNCONFIRMED for UA-Backprop).
        fractions: the "2% / 5%" of MURR and AUC-URR.
    """

    blur_images: int = 50
    blur_images_other: int = 20
    blur_sigma: float | None = None
    fractions: tuple[float, ...] = (0.02, 0.05)

    def check(self) -> None:
        check_positive_int(self.blur_images, "blur_images")
        check_positive_int(self.blur_images_other, "blur_images_other")
        if not self.fractions or any(not 0 < p <= 1 for p in self.fractions):
            raise ValueError(f"fractions must be values in (0, 1], got {self.fractions}.")
        if self.blur_sigma is not None and not self.blur_sigma > 0:
            raise ValueError(f"blur_sigma must be positive (pixels) or None, got "
                             f"{self.blur_sigma!r}.")


def resolve_blur_sigma(settings: BlurringSettings, channels: int) -> float:
    """``blur_sigma``, or its default for images with ``channels`` channels."""
    return settings.blur_sigma or (1.5 if channels == 1 else 1.0)


@dataclasses.dataclass
class BlurringResult(ProtocolResult):
    """``kinds[kind]``: ``num_images``, ``selection``, ``methods`` (row -> metric -> value, with
    per-image ``mean``/``se`` under ``per_image``) and ``paired`` (UA-Backprop rows minus each
    row, image by image)."""

    json_field: ClassVar[str | None] = "kinds"
    kinds: dict[str, dict[str, Any]]


def _blur_kinds(ctx: EvaluationContext) -> list[str]:
    return [ctx.headline] + [k for k in ("total", "aleatoric")
                             if k != ctx.headline and k in ctx.kinds]


class BlurringProtocol(EvaluationProtocol,
                       name="blurring", result_type=BlurringResult, report_rank=20,
                       title="Blurring test (Table A: MURR ↑, AUC-URR ↓)"):
    """MURR / AUC-URR of every uncertainty-capable method, for each uncertainty kind."""

    def steps(self, ctx: EvaluationContext) -> int:
        rows = [r for r in ctx.rows if r.explains_uncertainty]
        return len(rows) * len(_blur_kinds(ctx))

    def run(self, ctx: EvaluationContext) -> BlurringResult:
        s = ctx.settings
        sigma = resolve_blur_sigma(s, ctx.x_test.shape[1])
        ctx.resolved["blur_sigma"] = sigma
        rows = [r for r in ctx.rows if r.explains_uncertainty]
        hw = ctx.x_test.shape[-2] * ctx.x_test.shape[-1]
        kinds: dict[str, Any] = {}
        figure_data: dict[str, Any] = {"maps": {}, "curves": {}}
        for kind in _blur_kinds(ctx):
            u_test = ctx.uncertainties[kind]
            candidates = above_median(u_test)
            pick = seeded_subset(candidates, s.blur_images if kind == ctx.headline
                                 else s.blur_images_other, s.seed)
            x = ctx.x_test[pick]
            entry: dict[str, Any] = {
                "num_images": int(pick.numel()),
                "selection": f"test images with {kind} uncertainty >= its median "
                             f"({int(candidates.numel())} of {ctx.x_test.shape[0]}), "
                             f"seeded subset of {int(pick.numel())}",
                "methods": {},
            }
            order = u_test[pick].argsort(descending=True)[: s.grid_images]
            if kind == ctx.headline:
                figure_data.update(kind=kind, images=x[order].cpu())
            values: dict[str, dict[str, torch.Tensor]] = {}
            for row in rows:
                ctx.progress.step(f"blurring/{kind}: {row.key}")
                with ctx.timed(f"attribution ({kind})"):
                    maps = ctx.attribute_row(row, x, kind)
                with ctx.timed(f"blurring test ({kind})"):
                    metric = BlurringTest(kind, s.fractions, sigma=sigma, selection="all",
                                          batch_size=s.metric_batch, seed=s.seed)
                    metric.update(ctx.posterior, x, maps.to(ctx.device))
                    result = json_floats(metric.compute())
                    u = torch.cat([c.cpu() for c in metric.u_curves])
                    values[row.key] = blurring_scores(u, hw, s.fractions)
                    result["per_image"] = mean_and_se(values[row.key])
                    entry["methods"][row.key] = result
                    if kind == ctx.headline:
                        figure_data["curves"][row.key] = metric.curves()
                        figure_data["maps"][row.key] = maps[order]
                ctx.progress.done()
            entry["paired"] = paired_differences(values, UA_ROWS)
            kinds[kind] = entry
        return BlurringResult(kinds=kinds, figure_data=figure_data)

    # ---- report ------------------------------------------------------------------------------
    def section(self, result: Any, suite: SuiteResult) -> str:
        headline = suite.headline_kind
        parts = []
        for kind, entry in result.kinds.items():
            tag = "headline" if kind == headline else "extra columns"
            parts.append(f"\n### {kind} uncertainty ({tag}): {entry['selection']}\n")
            for reading, text in (("budget", "at most p of the pixels blurred, one pixel per "
                                             "step"),
                                  ("step", "p of the pixels per step, until all are blurred")):
                parts.append(f"\n{reading.capitalize()} reading ({text}):\n\n")
                parts.append(markdown_table(
                    _headers(suite.fractions),
                    _rows(entry, suite, reading, paper=kind == "epistemic")))
                parts.append("\n")
            if kind == headline and entry.get("paired"):
                parts.append(_paired_table(entry, suite))
        parts.append(
            "\n*Paper rows*: the only MNIST numbers the project has (MURR at 2%, "
            f"{PAPER_MNIST['source']}). The paper's model (a deep ensemble) and image selection "
            "differ from ours, its blur sigma is unknown and it reports medians over the budget "
            "reading, so they sit beside both readings; compare rankings, not absolute values.\n"
        )
        return "".join(parts)

    def overview(self, result: Any, suite: SuiteResult) -> list[OverviewColumn]:
        methods = result.kinds.get(suite.headline_kind, {}).get("methods", {})
        columns = []
        for p in suite.fractions:
            for header, key in ((f"MURR@{percent(p)} ↑", f"murr@{percent(p)}"),
                                (f"AUC-URR@{percent(p)} ↓", f"auc_urr@{percent(p)}")):
                columns.append((header, {row: m.get(key) for row, m in methods.items()}))
        return columns

    def figures(self, result: Any, suite: SuiteResult, out_dir: Path) -> list[Path]:
        data = result.figure_data
        if not data.get("maps"):
            return []
        kind = data["kind"]
        return [
            map_grid(data["images"], data["maps"], suite.labels, out_dir / f"maps_{kind}.png",
                     f"{kind} maps of the most uncertain test digits of the blurring test "
                     "(each map on its own scale)"),
            blurring_curves_figure(data["curves"], suite.labels, suite.fractions, kind,
                                   out_dir / "blurring_curves.png"),
        ]


def _headers(fractions: list[float]) -> list[str]:
    headers = ["method"]
    for p in fractions:
        headers += [f"MURR@{percent(p)} ↑", f"AUC-URR@{percent(p)} ↓"]
    return headers


def _rows(entry: dict[str, Any], suite: SuiteResult, reading: str, paper: bool) -> list[list]:
    labels = suite.labels
    murr_key, auc_key = READINGS[reading]
    rows = []
    for key, m in entry["methods"].items():
        row: list[Any] = [labels.get(key, key)]
        for p in suite.fractions:
            mk, ak = murr_key.format(percent(p)), auc_key.format(percent(p))
            row += [plus_minus(m["per_image"].get(mk)), fmt(m[ak])]
        rows.append(row)
    if paper:
        for key, value in PAPER_MNIST["murr@2%"].items():
            row = [f"*{labels.get(key, key).split(',')[0]} — paper, MNIST*"]
            for p in suite.fractions:
                row += [fmt(value) if percent(p) == "2%" else "—", "—"]
            rows.append(row)
    return rows


def _paired_table(entry: dict[str, Any], suite: SuiteResult) -> str:
    """The first UA-Backprop row minus each method, image by image, budget reading."""
    labels = suite.labels
    headers = ["UA-Backprop row − method"]
    for p in suite.fractions:
        headers += [f"Δ MURR@{percent(p)}", f"Δ AUC-URR@{percent(p)}"]
    first = next(k for k in UA_ROWS if k in labels)  # the val-selected row when there is one
    rows = []
    for name, diffs in entry["paired"].items():
        ua, other = name.split(" - ")
        if ua != first:
            continue
        line: list[Any] = [f"{labels.get(ua, ua).split(' (')[0]} − {labels.get(other, other)}"]
        for p in suite.fractions:
            line += [plus_minus(diffs[f"murr@{percent(p)}"]),
                     plus_minus(diffs[f"auc_urr@{percent(p)}"])]
        rows.append(line)
    return ("\nPaired differences (same images; mean ± paired standard error; the claim needs "
            "Δ MURR > 0 and Δ AUC-URR < 0):\n\n" + markdown_table(headers, rows) + "\n")
