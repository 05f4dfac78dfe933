"""The anomaly test (Table B of the UA-Backprop paper): do maps find a noise patch?

A patch pasted into test digits at a seeded position raises their uncertainty; the maps of the
headline uncertainty should point at it. Scored by box IoU, ADA, the pointing game, the
bounding-box ratio and thresholded Dice / IoU.
"""

# No postponed annotations here: jsonargparse resolves the settings' annotations in the
# namespace of uattr.evaluation.suite, where Literal is not imported.
import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch

from uattr.common import check_positive_int
from uattr.data.perturbations import AnomalyPatch
from uattr.evaluation.context import EvaluationContext
from uattr.evaluation.protocol import EvaluationProtocol, OverviewColumn, ProtocolResult
from uattr.evaluation.result import SuiteResult
from uattr.evaluation.stats import json_floats, mean_and_se, seeded_subset
from uattr.metrics import (
    AnomalyLocalization,
    BoundingBoxRatio,
    bounding_box_ratio,
    dice_iou_thresholded,
)
from uattr.report.figures import map_grid
from uattr.report.markdown import markdown_table

__all__ = ["ANOMALY_CLASS_TARGET", "ANOMALY_PAIRS", "AnomalyProtocol", "AnomalyResult",
           "AnomalySettings"]

#: What the class-only rows explain (recorded in ``metrics.json``).
ANOMALY_CLASS_TARGET = "class predicted on the patched image (posterior mean)"
#: Rows whose bbox ratios are also compared image by image (the IBA paper's claim).
ANOMALY_PAIRS = (("per_sample_iba", "gradcam"), ("readout", "gradcam"))


@dataclasses.dataclass(frozen=True)
class AnomalySettings:
    """The anomaly test.

    Args:
        anomaly_images: patched test images whose headline uncertainty the patch raised.
        patch_size: patch side (``None`` = image side // 4: 7 on MNIST, 8 on CIFAR).
        patch_fill: patch content (``"noise"``, ``"white"`` or a grey level).
    """

    anomaly_images: int = 40
    patch_size: int | None = None
    patch_fill: Literal["noise", "white"] | float = "noise"

    def check(self) -> None:
        check_positive_int(self.anomaly_images, "anomaly_images")
        if self.patch_size is not None:
            check_positive_int(self.patch_size, "patch_size")


@dataclasses.dataclass
class AnomalyResult(ProtocolResult):
    """Localisation scores per row (``methods``) on ``num_images`` patched digits."""

    kind: str
    class_target: str
    patch: dict[str, Any]
    num_candidates: int
    num_raised: int
    num_images: int
    methods: dict[str, dict[str, Any]]
    paired: dict[str, Any] = dataclasses.field(default_factory=dict)


class AnomalyProtocol(EvaluationProtocol,
                      name="anomaly", result_type=AnomalyResult, report_rank=30,
                      title="Anomaly test (Table B), {kind} maps", per_row=True):
    """Maps of the headline uncertainty on patched digits, scored against the patch."""

    def run(self, ctx: EvaluationContext) -> AnomalyResult:
        s, headline = ctx.settings, ctx.headline
        patch = s.patch_size or max(1, min(ctx.x_test.shape[-2:]) // 4)
        ctx.resolved["patch_size"] = patch
        x_patched, boxes = AnomalyPatch(size=patch, seed=s.seed, fill=s.patch_fill)(
            ctx.x_test.cpu(), 0)
        x_patched, boxes = x_patched.to(ctx.device), boxes.to(ctx.device)
        u_patched = ctx.uncertainty(x_patched, headline)
        raised = (u_patched > ctx.uncertainties[headline]).nonzero().flatten()
        pick = seeded_subset(raised, s.anomaly_images, s.seed)
        xa, ba = x_patched[pick], boxes[pick].cpu()
        # what the class-only rows explain: the class the model predicts for the image it sees
        predicted = ctx.predict(xa)[0].argmax(1).to(ctx.device) if pick.numel() else None
        result = AnomalyResult(
            kind=headline, class_target=ANOMALY_CLASS_TARGET,
            patch={"size": patch, "fill": s.patch_fill, "seed": s.seed},
            num_candidates=int(ctx.x_test.shape[0]), num_raised=int(raised.numel()),
            num_images=int(pick.numel()), methods={},
            figure_data={"images": xa[: s.grid_images].cpu(), "boxes": ba[: s.grid_images],
                         "maps": {}, "kind": headline},
        )
        ratios: dict[str, torch.Tensor] = {}
        for row in ctx.rows:
            class_only = not row.explains_uncertainty
            ctx.progress.step(f"anomaly/{'class' if class_only else headline}: {row.key}")
            if pick.numel() == 0:
                ctx.progress.done()
                continue
            with ctx.timed("attribution (anomaly)"):
                maps = ctx.attribute_row(row, xa, predicted if class_only else headline)
            with ctx.timed("anomaly test"):
                loc = AnomalyLocalization(patch_size=patch)
                loc.update(maps, ba)
                ratio = BoundingBoxRatio()
                ratio.update(maps, ba)
                thresholded = dice_iou_thresholded(maps, ba)
                ratios[row.key] = bounding_box_ratio(maps, ba)
                result.methods[row.key] = {
                    "target": "class" if class_only else headline,
                    **json_floats(loc.compute()),
                    "bbox_ratio": float(ratio.compute()),
                    "dice_thresholded": float(thresholded["dice"].mean()),
                    "iou_thresholded": float(thresholded["iou"].mean()),
                }
                result.figure_data["maps"][row.key] = maps[: s.grid_images]
            ctx.progress.done()
        result.paired = {
            f"{a} - {b}": mean_and_se({"bbox_ratio": ratios[a] - ratios[b]})
            for a, b in ANOMALY_PAIRS if a in ratios and b in ratios
        }
        return result

    def heading(self, result: Any) -> str:
        return self.title.format(kind=result.kind)

    def section(self, result: Any, suite: SuiteResult) -> str:
        a, size = result, result.patch["size"]
        text = (
            f"A {size}x{size} {a.patch['fill']} patch at a seeded "
            f"position; the patch raised the {a.kind} uncertainty of {a.num_raised} of "
            f"{a.num_candidates} test digits; {a.num_images} of those (seeded subset) are "
            "scored. Box = the patch-sized window with the largest map sum; ADA = share with IoU "
            ">= 0.5; pointing = share whose argmax pixel is in the patch; bbox ratio = share of "
            "the top-|patch| pixels inside it; Dice/IoU thr = min-max map >= 0.5 vs the patch. "
            "Methods that can only explain a class (Readout IBA, Contrast CAM) map the "
            f"{a.class_target} instead of the {a.kind} uncertainty "
            "(\"maps of\": class); the readout's map does not depend on the class.\n\n"
        )
        labels = suite.labels
        return text + markdown_table(
            ["method", "maps of", "IoU ↑", "ADA ↑", "pointing ↑", "bbox ratio ↑", "Dice thr ↑",
             "IoU thr ↑"],
            [[labels.get(key, key), m.get("target", a.kind), m["iou"], m["ada"],
              m["pointing_game"], m["bbox_ratio"], m["dice_thresholded"], m["iou_thresholded"]]
             for key, m in a.methods.items()],
        ) + "\n"

    def overview(self, result: Any, suite: SuiteResult) -> list[OverviewColumn]:
        return [(header, {row: m.get(key) for row, m in result.methods.items()})
                for header, key in (("IoU ↑", "iou"), ("ADA ↑", "ada"))]

    def figures(self, result: Any, suite: SuiteResult, out_dir: Path) -> list[Path]:
        data = result.figure_data
        if not data.get("maps"):
            return []
        return [map_grid(data["images"], data["maps"], suite.labels, out_dir / "maps_anomaly.png",
                         f"{data['kind']} maps of patched digits (class-only methods: the "
                         "predicted class; cyan: the patch)", boxes=data["boxes"])]
