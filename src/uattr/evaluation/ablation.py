"""UA-Backprop's open choices (psi, tau2, tau1, bias terms), scored on the VALIDATION split.

The selected setting becomes a row ("val-selected") of every test table; nothing is tuned on the
test split.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from uattr.attribution.registry import build_method
from uattr.common import check_choice, check_positive_int
from uattr.evaluation.blurring import resolve_blur_sigma
from uattr.evaluation.context import EvaluationContext
from uattr.evaluation.methods import UA_DEFAULT, ua_setting_name
from uattr.evaluation.protocol import EvaluationProtocol, ProtocolResult
from uattr.evaluation.result import SuiteResult
from uattr.evaluation.stats import above_median, mean_and_se, seeded_subset
from uattr.metrics import blurring_curves, blurring_scores, count_grid
from uattr.report.figures import ablation_bars
from uattr.report.markdown import markdown_table, percent, plus_minus

__all__ = ["ABLATION_GRIDS", "AblationResult", "AblationSettings", "UABackpropAblation",
           "ablation_size"]

#: UA-Backprop ablation grids, searched in three stages (see :meth:`UABackpropAblation.search`):
#: (psi, tau2) pairs with tau1 = 0.1 and bias terms on, then tau1, then the bias terms.
ABLATION_GRIDS: dict[str, dict[str, tuple]] = {
    "full": {
        "psi_tau2": (
            ("softmax", 0.1), ("softmax", 0.3), ("softmax", 1.0), ("softmax", 3.0),
            ("power", 0.5), ("power", 1.0), ("power", 2.0),
        ),
        "tau1": (0.0, 0.1, 1.0),
        "bias_terms": (True, False),
    },
    "quick": {
        "psi_tau2": (("softmax", 1.0), ("power", 1.0)),
        "tau1": (0.1, 1.0),
        "bias_terms": (True, False),
    },
}


@dataclasses.dataclass(frozen=True)
class AblationSettings:
    """The UA-Backprop ablation.

    Args:
        ablation: run it (when UA-Backprop is among the methods) and add the selected setting
            as a row of every test table.
        ablation_images: validation images (at or above the median headline uncertainty of the
            validation split, seeded subset, as the blurring test on the test split).
        ablation_grid: ``"full"`` or ``"quick"`` (:data:`ABLATION_GRIDS`).
    """

    ablation: bool = True
    ablation_images: int = 40
    ablation_grid: str = "full"

    def check(self) -> None:
        check_positive_int(self.ablation_images, "ablation_images")
        check_choice(self.ablation_grid, tuple(ABLATION_GRIDS), "ablation_grid")


def ablation_size(grid_name: str) -> int:
    """How many distinct settings the staged search scores with grid ``grid_name``."""
    grid = ABLATION_GRIDS[grid_name]
    return (len(grid["psi_tau2"]) + sum(t != 0.1 for t in grid["tau1"])
            + sum(b is not True for b in grid["bias_terms"]))


def _ua_kwargs(psi: str, tau2: float, tau1: float, bias_terms: bool) -> dict[str, Any]:
    return {"psi": psi, "tau2": float(tau2), "tau1": float(tau1), "bias_terms": bool(bias_terms)}


@dataclasses.dataclass
class AblationResult(ProtocolResult):
    """Every scored setting (``settings``: kwargs, name, stage, scores, minus_default) and the
    one ``selected`` by ``criterion`` on the validation images."""

    split: str
    criterion: str
    kind: str
    num_images: int
    grid: str
    settings: list[dict[str, Any]]
    selected: dict[str, Any]
    selected_name: str
    default: dict[str, Any]
    default_name: str


class UABackpropAblation(EvaluationProtocol,
                         name="ablation", result_type=AblationResult, report_rank=60,
                         title="UA-Backprop ablation (validation split)"):
    """A staged search over UA-Backprop's settings on validation images, by MURR@2%.

    Each setting's maps are scored with the budget reading of the blurring test
    (:func:`uattr.metrics.blurring_scores` on :func:`uattr.metrics.blurring_curves`: the same
    numbers as ``BlurringTest``'s ``murr@p`` / ``auc_urr@p``; the step reading is not needed for
    the criterion and would cost more than twice as much). Stages (10 settings instead of a
    42-setting factorial):

    1. every (psi, tau2) of the grid, with tau1 = 0.1 and bias terms on;
    2. every tau1, at the best (psi, tau2);
    3. bias terms on / off, at the best (psi, tau2, tau1).

    The best is the highest mean MURR@2%; ties go to UA-Backprop's default, then to the earlier
    setting. It runs before the tables' method rows are fixed.
    """

    def enabled(self, ctx: EvaluationContext) -> bool:
        return bool(ctx.settings.ablation) and "ua_backprop" in ctx.methods

    def steps(self, ctx: EvaluationContext) -> int:
        return ablation_size(ctx.settings.ablation_grid) if self.enabled(ctx) else 0

    def run(self, ctx: EvaluationContext) -> AblationResult | None:
        if not self.enabled(ctx):
            return None
        if ctx.rows_fixed:
            raise RuntimeError("the UA-Backprop ablation must run before the protocols that use "
                               "the method rows; list it earlier in the protocols.")
        with ctx.timed("ablation (val)"):
            x_val = ctx.split("val")
            u_val = ctx.uncertainty(x_val, ctx.headline)
            pick = seeded_subset(above_median(u_val), ctx.settings.ablation_images,
                                 ctx.settings.seed)
            result = self.search(ctx, x_val[pick], ctx.headline)
        ctx.selected_ua = dict(result.selected)
        return result

    def search(self, ctx: EvaluationContext, x_val: torch.Tensor, kind: str) -> AblationResult:
        """Score the grid's settings on ``x_val`` (the chosen validation images)."""
        settings = ctx.settings
        grid = ABLATION_GRIDS[settings.ablation_grid]
        hw = x_val.shape[-2] * x_val.shape[-1]
        counts = count_grid(hw, settings.fractions, budget_only=True)["grid"]
        sigma = resolve_blur_sigma(settings, x_val.shape[1])
        key = f"murr@{percent(settings.fractions[0])}"
        scored: dict[tuple, dict[str, Any]] = {}
        per_image: dict[tuple, dict[str, torch.Tensor]] = {}

        def score(kw: dict[str, Any], stage: str) -> dict[str, Any]:
            ident = tuple(sorted(kw.items()))
            if ident not in scored:
                bias = "bias" if kw["bias_terms"] else "no bias"
                ctx.progress.step(f"ablation (val): {kw['psi']} tau2={kw['tau2']:g} "
                                  f"tau1={kw['tau1']:g} {bias}")
                method = build_method("ua_backprop", ctx.posterior, **kw)
                maps = ctx.attribute(method, x_val, kind)
                u = blurring_curves(ctx.posterior, x_val, maps, counts, kind, sigma,
                                    batch_size=settings.metric_batch, seed=settings.seed)
                per_image[ident] = blurring_scores(u, hw, settings.fractions)
                scored[ident] = {"kwargs": kw, "name": ua_setting_name(kw), "stage": stage,
                                 "scores": mean_and_se(per_image[ident])}
                ctx.progress.done()
            return scored[ident]

        def best(entries: list[dict[str, Any]]) -> dict[str, Any]:
            return max(
                enumerate(entries),
                key=lambda ie: (ie[1]["scores"][key]["mean"], ie[1]["kwargs"] == UA_DEFAULT,
                                -ie[0]),
            )[1]["kwargs"]

        b1 = best([score(_ua_kwargs(psi, tau2, 0.1, True), "psi, tau2")
                   for psi, tau2 in grid["psi_tau2"]])
        b2 = best([score(_ua_kwargs(b1["psi"], b1["tau2"], tau1, True), "tau1")
                   for tau1 in grid["tau1"]])
        selected = best([score(_ua_kwargs(b2["psi"], b2["tau2"], b2["tau1"], bias), "bias terms")
                         for bias in grid["bias_terms"]])
        # paired differences to the default setting (same images, same U_0): the resolution of
        # the ablation, far finer than the per-setting standard errors
        base = per_image.get(tuple(sorted(UA_DEFAULT.items())))
        if base is not None:
            for ident, entry in scored.items():
                entry["minus_default"] = mean_and_se(
                    {k: per_image[ident][k] - base[k] for k in base})
        return AblationResult(
            split="val", criterion=f"{key} ({kind}, budget reading), highest mean", kind=kind,
            num_images=int(x_val.shape[0]), grid=settings.ablation_grid,
            settings=list(scored.values()), selected=selected,
            selected_name=ua_setting_name(selected), default=dict(UA_DEFAULT),
            default_name=ua_setting_name(UA_DEFAULT),
        )

    def section(self, result: Any, suite: SuiteResult) -> str:
        if result is None:
            return "Not run (`--no-ablation`, or UA-Backprop not among the methods).\n"
        fractions = suite.fractions
        first = f"murr@{percent(fractions[0])}"
        text = (
            f"{result.num_images} validation digits at or above the median {result.kind} "
            f"uncertainty of the validation split (seeded subset); budget reading of the "
            f"blurring test. Criterion: {result.criterion}. Staged search: (psi, tau2) at "
            "tau1 = 0.1 with bias terms, then tau1, then bias terms on/off. "
            f"**Selected: {result.selected_name}** (default: {result.default_name}).\n\n"
        )
        headers = ["stage", "setting"]
        for p in fractions:
            headers += [f"MURR@{percent(p)} ↑", f"AUC-URR@{percent(p)} ↓"]
        headers += [f"MURR@{percent(fractions[0])} − default (paired)", ""]
        rows = []
        for entry in result.settings:
            s = entry["scores"]
            line: list[Any] = [entry["stage"], entry["name"]]
            for p in fractions:
                line += [plus_minus(s[f"murr@{percent(p)}"]),
                         plus_minus(s[f"auc_urr@{percent(p)}"])]
            line.append(plus_minus(entry.get("minus_default", {}).get(first)))
            marks = ["**selected**"] * (entry["kwargs"] == result.selected)
            marks += ["default"] * (entry["kwargs"] == result.default)
            line.append(", ".join(marks))
            rows.append(line)
        text += markdown_table(headers, rows) + "\n"
        chosen = next(e for e in result.settings if e["kwargs"] == result.selected)
        diff = chosen.get("minus_default", {}).get(first)
        if diff and result.selected != result.default:
            verdict = ("more than two paired standard errors"
                       if abs(diff["mean"]) > 2 * diff["se"] else
                       "less than two paired standard errors: within noise, so the selection is "
                       "close to a tie")
            text += (f"\nThe selected setting's gain over the default on the validation images "
                     f"is {plus_minus(diff)} ({verdict}).\n")
        return text

    def figures(self, result: Any, suite: SuiteResult, out_dir: Path) -> list[Path]:
        if result is None:
            return []
        key = f"murr@{percent(suite.fractions[0])}"
        entries = result.settings
        return [ablation_bars(
            [e["name"] for e in entries], [e["scores"][key]["mean"] for e in entries],
            [e["scores"][key]["se"] for e in entries],
            [e["kwargs"] == result.selected for e in entries],
            f"{key} ({result.kind}, validation split; red = selected)", out_dir / "ablation.png",
        )]
