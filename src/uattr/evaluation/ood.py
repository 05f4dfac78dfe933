"""OOD detection: the test split against perturbed copies of it, each uncertainty kind a score."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from uattr.data.perturbations import GaussianBlur, GaussianNoise, Perturbation, Rotation
from uattr.evaluation.context import EvaluationContext
from uattr.evaluation.protocol import EvaluationProtocol, ProtocolResult
from uattr.evaluation.result import SuiteResult
from uattr.evaluation.stats import json_floats
from uattr.metrics import ood_detection
from uattr.report.markdown import markdown_table

__all__ = ["OODDetectionProtocol", "OODResult", "OODSettings"]


@dataclasses.dataclass(frozen=True)
class OODSettings:
    """The shifted copies of the test split.

    Args:
        ood_noise_std: std of the Gaussian-noise OOD set (pixels in [0, 1]).
        ood_blur_sigma: sigma of the blurred OOD set (pixels).
    """

    ood_noise_std: float = 0.5
    ood_blur_sigma: float = 2.0

    def check(self) -> None:
        for name in ("ood_noise_std", "ood_blur_sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")


def shifts(settings: OODSettings, seed: int) -> dict[str, Perturbation]:
    """The named shifts: rotations by 90 and 180 degrees, Gaussian noise and Gaussian blur."""
    return {
        "rotation 90": Rotation(90),
        "rotation 180": Rotation(180),
        f"gaussian noise (std {settings.ood_noise_std:g})":
            GaussianNoise(settings.ood_noise_std, seed=seed),
        f"gaussian blur (sigma {settings.ood_blur_sigma:g})": GaussianBlur(settings.ood_blur_sigma),
    }


@dataclasses.dataclass
class OODResult(ProtocolResult):
    """``shifts[name][kind]``: AUROC, AUPR-in/out, FPR@95TPR, detection accuracy with minus the
    uncertainty as the score (in-distribution positive); ``shifts[name]["mean_uncertainty"]``."""

    json_field: ClassVar[str | None] = "shifts"
    shifts: dict[str, dict[str, Any]]


class OODDetectionProtocol(EvaluationProtocol,
                           name="ood", result_type=OODResult, report_rank=50,
                           title="OOD detection (test split vs perturbed copies)"):
    """Detect rotated, noisy and blurred copies of the test images by their uncertainty."""

    def run(self, ctx: EvaluationContext) -> OODResult:
        ctx.progress.step("OOD detection (test)")
        out: dict[str, Any] = {}
        with ctx.timed("ood"):
            for name, shift in shifts(ctx.settings, ctx.settings.seed).items():
                _, u_out = ctx.predict(shift(ctx.x_test.cpu(), 0).to(ctx.device))
                out[name] = {
                    kind: json_floats(ood_detection(-ctx.uncertainties[kind], -u_out[kind]))
                    for kind in ctx.kinds
                }
                out[name]["mean_uncertainty"] = {k: float(v.mean()) for k, v in u_out.items()}
        ctx.progress.done()
        return OODResult(shifts=out)

    def section(self, result: Any, suite: SuiteResult) -> str:
        rows = []
        for shift, per_kind in result.shifts.items():
            for k in suite.settings["uncertainty_kinds"]:
                m = per_kind[k]
                rows.append([shift, k, m["auroc"], m["aupr_in"], m["aupr_out"], m["fpr@95tpr"],
                             m["detection_acc"], per_kind["mean_uncertainty"][k]])
        return ("Score = minus the uncertainty; in-distribution is the positive class.\n\n"
                + markdown_table(["shift", "score", "AUROC ↑", "AUPR-in ↑", "AUPR-out ↑",
                                  "FPR@95TPR ↓", "det. acc ↑", "mean U (shifted)"], rows) + "\n")
