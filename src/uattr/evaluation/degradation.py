"""The degradation test (MoRF / LeRF) of class maps for the predicted class."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from uattr.common import check_positive_int
from uattr.evaluation.context import EvaluationContext
from uattr.evaluation.protocol import EvaluationProtocol, OverviewColumn, ProtocolResult
from uattr.evaluation.result import SuiteResult
from uattr.evaluation.stats import json_floats, seeded_subset
from uattr.metrics import Degradation
from uattr.report.figures import degradation_curves_figure
from uattr.report.markdown import markdown_table

__all__ = ["DegradationProtocol", "DegradationResult", "DegradationSettings"]


@dataclasses.dataclass(frozen=True)
class DegradationSettings:
    """The degradation test.

    Args:
        degradation_images: test images (seeded random subset).
        degradation_tile: tile side in pixels.
        degradation_steps: evaluation points of each curve.
    """

    degradation_images: int = 20
    degradation_tile: int = 4
    degradation_steps: int = 100

    def check(self) -> None:
        for name in ("degradation_images", "degradation_tile", "degradation_steps"):
            check_positive_int(getattr(self, name), name)


@dataclasses.dataclass
class DegradationResult(ProtocolResult):
    """MoRF / LeRF areas per row (``methods``) on ``num_images`` test digits."""

    target: str
    num_images: int
    tile_size: int
    steps: int
    methods: dict[str, dict[str, Any]]


class DegradationProtocol(EvaluationProtocol,
                          name="degradation", result_type=DegradationResult, report_rank=40,
                          title="Degradation test (MoRF / LeRF), class maps", per_row=True):
    """Tiles removed most-relevant-first and least-relevant-first; the class probability traced."""

    def run(self, ctx: EvaluationContext) -> DegradationResult:
        s = ctx.settings
        pick = seeded_subset(torch.arange(ctx.x_test.shape[0]), s.degradation_images, s.seed)
        x = ctx.x_test[pick]
        predicted = ctx.probs[pick.cpu()].argmax(1).to(ctx.device)
        result = DegradationResult(
            target="class predicted on the original image", num_images=int(pick.numel()),
            tile_size=s.degradation_tile, steps=s.degradation_steps, methods={},
            figure_data={"curves": {}},
        )
        for row in ctx.rows:
            ctx.progress.step(f"degradation: {row.key}")
            with ctx.timed("attribution (class)"):
                maps = ctx.attribute_row(row, x, predicted)
            with ctx.timed("degradation test"):
                metric = Degradation(tile_size=s.degradation_tile, steps=s.degradation_steps,
                                     batch_size=s.metric_batch, seed=s.seed)
                metric.update(ctx.posterior, x, maps.to(ctx.device), predicted)
                result.methods[row.key] = json_floats(metric.compute())
                result.figure_data["curves"][row.key] = metric.curves()
            ctx.progress.done()
        return result

    def section(self, result: Any, suite: SuiteResult) -> str:
        d, labels = result, suite.labels
        return (
            f"{d.num_images} test digits; maps of the {d.target}; {d.tile_size}x"
            f"{d.tile_size} tiles replaced by the image mean, {d.steps} steps; curves of the "
            "posterior-predictive probability normalised to [0, 1] between the fully degraded "
            "and the original image; areas over the fraction of tiles removed.\n\n"
            + markdown_table(
                ["method", "MoRF AUC ↓", "LeRF AUC ↑", "LeRF − MoRF ↑"],
                [[labels.get(key, key), m["morf_auc"], m["lerf_auc"], m["degradation"]]
                 for key, m in d.methods.items()],
            ) + "\n"
        )

    def overview(self, result: Any, suite: SuiteResult) -> list[OverviewColumn]:
        return [("LeRF−MoRF ↑", {row: m.get("degradation") for row, m in result.methods.items()})]

    def figures(self, result: Any, suite: SuiteResult, out_dir: Path) -> list[Path]:
        curves = result.figure_data.get("curves")
        if not curves:
            return []
        return [degradation_curves_figure(curves, suite.labels,
                                          out_dir / "degradation_curves.png")]
