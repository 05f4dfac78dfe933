"""The papers' claims, checked on the measured numbers, and their summary in ``report.md``.

- UA-Backprop (Wang et al., CVPR 2023), MNIST: its epistemic MURR at 2% and 5% is above
  Gradient's, FullGrad's, IG's and a random map's, and its AUC-URR below.
- IBA (Schulz et al., ICLR 2020): Per-Sample IBA beats Grad-CAM on the degradation test and the
  bounding-box test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uattr.report.markdown import fmt, percent, plus_minus

if TYPE_CHECKING:
    from uattr.evaluation.result import SuiteResult

__all__ = [
    "CLAIM_COMPETITORS",
    "IBA_CLAIM_METRICS",
    "PAPER_MNIST",
    "UA_ROWS",
    "claims_section",
    "iba_claim",
    "paper_claim",
]

#: The UA-Backprop paper's MNIST numbers known to the project: MURR of the blurring test at 2%.
#: The paper's model (a deep ensemble) and image selection differ from ours, its blur sigma is
#: unknown and it reports medians, so these are a reference, not a target.
PAPER_MNIST = {
    "source": "Wang et al., CVPR 2023, Table 1, MNIST",
    "murr@2%": {"ua_backprop": 0.648, "gradient": 0.506},
}
#: The methods UA-Backprop must beat for the paper's claim.
CLAIM_COMPETITORS = ("gradient", "fullgrad", "integrated_gradients", "random")
#: (protocol, metric key, label) of each test in the IBA paper's claim (higher is better).
IBA_CLAIM_METRICS = (
    ("degradation", "degradation", "degradation, LeRF − MoRF"),
    ("anomaly", "bbox_ratio", "bounding box (the anomaly patch as the box), bbox ratio"),
)
#: UA-Backprop's table rows: the validation-selected setting and the default one.
UA_ROWS = ("ua_backprop_selected", "ua_backprop")
_READINGS = {"budget": ("murr@{}", "auc_urr@{}"), "step": ("murr_step@{}", "auc_urr_step@{}")}


def paper_claim(suite: SuiteResult) -> dict[str, Any]:
    """Does UA-Backprop beat Gradient, FullGrad, IG and a random map on the blurring test here?

    Checked on the test-split blurring results for each UA-Backprop row (val-selected setting,
    default setting) and each reading of "p%" (budget, step), with the paired differences (same
    images) beside. Competitors missing from the run are listed in ``missing``.
    """
    kind = suite.headline_kind
    out: dict[str, Any] = {
        "statement": "UA-Backprop's epistemic MURR at 2% and 5% above Gradient's, FullGrad's, "
        "IG's and a random map's, and its AUC-URR below (UA-Backprop paper, MNIST)",
        "kind": kind,
        "split": "test",
        "holds": {},
        "checks": {},
    }
    blurring = suite.get("blurring")
    if kind != "epistemic" or blurring is None or kind not in blurring.kinds:
        out["applicable"] = False
        out["reason"] = (
            "the model has no epistemic uncertainty"
            if kind != "epistemic"
            else "the blurring test did not run"
        )
        return out
    methods = blurring.kinds[kind]["methods"]
    competitors = [c for c in CLAIM_COMPETITORS if c in methods]
    out["competitors"] = competitors
    out["missing"] = [c for c in CLAIM_COMPETITORS if c not in methods]
    ua_rows = [k for k in UA_ROWS if k in methods]
    out["applicable"] = bool(ua_rows and competitors)
    if not out["applicable"]:
        out["reason"] = "UA-Backprop or every competitor is missing from the run"
        return out
    paired = blurring.kinds[kind].get("paired", {})
    for ua in ua_rows:
        for reading, (murr_key, auc_key) in _READINGS.items():
            checks = []
            for comp in competitors:
                diffs = paired.get(f"{ua} - {comp}", {})
                for p in suite.fractions:
                    for key, better in (
                        (murr_key.format(percent(p)), 1),
                        (auc_key.format(percent(p)), -1),
                    ):
                        a, b = methods[ua][key], methods[comp][key]
                        checks.append(
                            {
                                "competitor": comp,
                                "metric": key,
                                "ua": a,
                                "other": b,
                                "holds": bool(better * (a - b) > 0),
                                "paired": diffs.get(key),
                            }
                        )
            out["checks"][f"{ua}/{reading}"] = checks
            out["holds"][f"{ua}/{reading}"] = all(c["holds"] for c in checks)
    out["holds_anywhere"] = any(out["holds"].values())
    return out


def iba_claim(suite: SuiteResult) -> dict[str, Any]:
    """Does Per-Sample IBA beat Grad-CAM on the degradation and the bounding-box test here?

    Compared on the test-split numbers of :data:`IBA_CLAIM_METRICS`, with the paired difference
    (same images) where the test has per-image scores (bbox ratio). Unlike the paper's
    bounding-box test, which maps the labelled class and scores its object box, the anomaly test
    maps the headline uncertainty and scores the patch.
    """
    out: dict[str, Any] = {
        "statement": "Per-Sample IBA beats Grad-CAM on the degradation and the bounding-box "
        "test (IBA paper, Schulz et al., ICLR 2020)",
        "checks": [],
    }
    for section, metric, label in IBA_CLAIM_METRICS:
        result = suite.get(section)
        methods = {} if result is None else result.methods
        if "per_sample_iba" not in methods or "gradcam" not in methods:
            continue
        a, b = methods["per_sample_iba"][metric], methods["gradcam"][metric]
        paired = (getattr(result, "paired", None) or {}).get("per_sample_iba - gradcam", {})
        out["checks"].append(
            {
                "test": label,
                "section": section,
                "metric": metric,
                "per_sample_iba": a,
                "gradcam": b,
                "holds": bool(a > b),
                "paired": paired.get(metric),
            }
        )
    out["applicable"] = len(out["checks"]) == len(IBA_CLAIM_METRICS)
    if not out["applicable"]:
        out["reason"] = "Per-Sample IBA or Grad-CAM is missing from a test of the run"
    else:
        out["holds"] = all(c["holds"] for c in out["checks"])
    return out


def _iba_claim_text(claim: dict[str, Any]) -> str:
    if not claim["applicable"]:
        return f"The IBA paper's claim cannot be checked here: {claim['reason']}.\n"
    lines = [f"**Claim** ({claim['statement']}), on the test split:", ""]
    for c in claim["checks"]:
        verdict = "**holds**" if c["holds"] else "**does not hold**"
        paired = ""
        if c.get("paired"):
            d = c["paired"]
            noise = "more" if abs(d["mean"]) > 2 * d["se"] else "less"
            paired = (
                f" (paired difference {plus_minus(d)}, {noise} than two paired standard errors)"
            )
        lines.append(
            f"- {c['test']}: Per-Sample IBA {fmt(c['per_sample_iba'])}, Grad-CAM "
            f"{fmt(c['gradcam'])}{paired}: {verdict}."
        )
    verdict = "holds here on both tests" if claim["holds"] else "does **not** hold here"
    lines += [
        "",
        f"So the claim {verdict} (anomaly and degradation sections; unlike the paper's, "
        "the anomaly maps explain the headline uncertainty, not a class, and the box "
        "is the patch).",
    ]
    return "\n".join(lines) + "\n"


def _paper_claim_text(suite: SuiteResult, claim: dict[str, Any]) -> str:
    if not claim.get("applicable"):
        return f"The paper's claim cannot be checked here: {claim.get('reason')}.\n"
    labels = suite.labels
    n = suite.get("blurring").kinds[claim["kind"]]["num_images"]
    lines = [
        f"**Claim** ({claim['statement']}), checked on the test split ({n} digits at or above "
        "the median epistemic uncertainty), for each UA-Backprop row and each reading of "
        '"p%" (budget: at most p of the pixels blurred one at a time; step: p of the pixels '
        "per step):",
        "",
    ]
    for name, holds in claim["holds"].items():
        ua, reading = name.split("/")
        failed = [c for c in claim["checks"][name] if not c["holds"]]
        verdict = "**holds**" if holds else "**does not hold**"
        detail = ""
        if failed:
            beaten_by = sorted({labels.get(c["competitor"], c["competitor"]) for c in failed})
            detail = (
                f": {len(failed)} of {len(claim['checks'][name])} comparisons fail "
                f"(against {', '.join(beaten_by)})"
            )
        lines.append(f"- {labels.get(ua, ua)}, {reading} reading: {verdict}{detail}.")
    if claim["missing"]:
        lines.append(f"- Not run here, so not compared: {', '.join(claim['missing'])}.")
    first = next(iter(claim["holds"]))
    murr = f"murr@{percent(suite.fractions[0])}"
    diffs = [
        f"{labels.get(c['competitor'], c['competitor'])} {plus_minus(c['paired'])}"
        for c in claim["checks"][first]
        if c["metric"] == murr and c.get("paired")
    ]
    if diffs:
        lines += [
            "",
            f"Paired differences, {labels.get(first.split('/')[0])}, budget "
            f"{murr.upper()} (UA-Backprop − method, same images): {'; '.join(diffs)}.",
        ]
    lines.append("")
    if claim["holds_anywhere"]:
        lines.append('So the claim holds here under the settings marked "holds" above.')
    else:
        lines.append(
            "So the paper's MNIST claim does **not** hold here under any UA-Backprop "
            "setting or reading tried; the numbers are below, beside the paper's."
        )
    return "\n".join(lines) + "\n"


def claims_section(suite: SuiteResult) -> str:
    """The report's two claim summaries (checked now when ``suite`` has no verdicts yet)."""
    claim = suite.claim or paper_claim(suite)
    ibac = suite.iba_claim or iba_claim(suite)
    return (
        "\n## Summary: the UA-Backprop paper's MNIST claim\n\n"
        + _paper_claim_text(suite, claim)
        + "\n## Summary: the IBA paper's claim against Grad-CAM\n\n"
        + _iba_claim_text(ibac)
    )
