"""Predictive quality on the test split: accuracy, NLL, ECE, Brier and the mean uncertainties."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from uattr.evaluation.context import EvaluationContext
from uattr.evaluation.protocol import EvaluationProtocol, ProtocolResult
from uattr.evaluation.result import SuiteResult
from uattr.metrics import brier_score, expected_calibration_error, negative_log_likelihood
from uattr.report.figures import reliability_diagram
from uattr.report.markdown import markdown_table

__all__ = ["PredictiveQuality", "PredictiveResult"]

#: Bins of the expected calibration error and of the reliability diagram.
ECE_BINS = 15


@dataclasses.dataclass
class PredictiveResult(ProtocolResult):
    """Predictive quality of the posterior-predictive distribution (NLL and U in nats)."""

    num_images: int
    acc: float
    nll: float
    ece: float
    brier: float
    uncertainty: dict[str, float]


class PredictiveQuality(EvaluationProtocol,
                        name="calibration", result_type=PredictiveResult, report_rank=10,
                        title="Predictive quality (test split)"):
    """Accuracy, NLL, ECE (15 equal-width bins), Brier and mean uncertainty of each kind."""

    def run(self, ctx: EvaluationContext) -> PredictiveResult:
        ctx.progress.step("calibration (test)")
        with ctx.timed("calibration"):
            probs, y = ctx.probs, ctx.y_test.cpu()
            result = PredictiveResult(
                num_images=int(ctx.x_test.shape[0]),
                acc=float((probs.argmax(1) == y).double().mean()),
                nll=float(negative_log_likelihood(probs, y)),
                ece=float(expected_calibration_error(probs.float(), y, n_bins=ECE_BINS)),
                brier=float(brier_score(probs, y)),
                uncertainty={k: float(v.mean()) for k, v in ctx.uncertainties.items()},
                figure_data={"probs": probs, "labels": y},
            )
        ctx.progress.done()
        return result

    def section(self, result: Any, suite: SuiteResult) -> str:
        kinds = suite.settings["uncertainty_kinds"]
        table = markdown_table(
            ["images", "accuracy ↑", "NLL ↓", "ECE ↓", "Brier ↓"] + [f"mean U {k}" for k in kinds],
            [[str(result.num_images), result.acc, result.nll, result.ece, result.brier]
             + [result.uncertainty[k] for k in kinds]],
        )
        return (table + f"\n\nNLL and uncertainties in nats; ECE with {ECE_BINS} equal-width "
                "bins; Brier summed over classes. Reliability diagram: `reliability.png`.\n")

    def figures(self, result: Any, suite: SuiteResult, out_dir: Path) -> list[Path]:
        if "probs" not in result.figure_data:
            return []
        return [reliability_diagram(result.figure_data["probs"], result.figure_data["labels"],
                                    out_dir / "reliability.png", bins=ECE_BINS)]
