"""evaluate.py end to end on a briefly trained checkpoint (with a readout bottleneck trained on
it), and the pieces of the report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ROOT, run_train_py

import evaluate
from uattr.bayes import MCDropout
from uattr.evaluation import (
    ABLATION_GRIDS,
    PROTOCOLS,
    UA_DEFAULT,
    EvaluationSettings,
    SuiteResult,
    ablation_size,
    above_median,
    default_methods,
    method_rows,
)
from uattr.evaluation.anomaly import AnomalyResult
from uattr.evaluation.blurring import BlurringResult
from uattr.evaluation.degradation import DegradationResult
from uattr.lit.readout import load_readout
from uattr.models import LeNet5
from uattr.report import iba_claim, markdown_table, paper_claim, write_report

DEFAULT = ROOT / "configs" / "mnist5k_lenet_mcdropout.yaml"
READOUT = ROOT / "configs" / "mnist5k_readout.yaml"
#: enough training to give a model with real (non-degenerate) uncertainties, in a few seconds
BRIEF = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=15",
         "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
         "--trainer.logger=false"]
QUICK_METHODS = ["ua_backprop", "gradient", "fullgrad", "gradcam", "random", "contrast_cam",
                 "readout"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    run_train_py(["fit", "--config", str(DEFAULT), *BRIEF], cwd=workdir)
    ckpt = workdir / "checkpoints" / "mnist5k_lenet_mcdropout" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def readout_checkpoint(checkpoint):
    """A readout bottleneck trained a few steps on ``checkpoint`` (named by its absolute path, so
    the readout rebuilds from any working directory)."""
    workdir = checkpoint.parents[2]
    run_train_py(["fit", "--config", str(READOUT), f"--model.init_args.classifier={checkpoint}",
                  "--model.init_args.estimator_samples=200", *BRIEF,
                  "--trainer.limit_train_batches=5"], cwd=workdir)
    ckpt = workdir / "checkpoints" / "mnist5k_readout" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def report(checkpoint, readout_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "quick"
    code = evaluate.main(["--ckpt", str(checkpoint), "--out", str(out), "--quick",
                          "--methods", *QUICK_METHODS, "--readout", str(readout_checkpoint),
                          "--no-progress", "--accelerator", "cpu"])
    assert code == 0
    return out


def test_report_folder_has_every_file(report):
    for name in ("metrics.json", "report.md", "reliability.png", "maps_epistemic.png",
                 "maps_anomaly.png", "blurring_curves.png", "degradation_curves.png",
                 "ablation.png"):
        path = report / name
        assert path.is_file() and path.stat().st_size > 0, name
    for png in report.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name


def test_metrics_json_has_the_expected_keys(report):
    m = json.loads((report / "metrics.json").read_text())
    for key in ("checkpoint", "model", "data", "config", "settings", "rows", "calibration",
                "ood", "ablation", "blurring", "anomaly", "degradation", "claim", "iba_claim",
                "timing", "figures"):
        assert key in m, key
    assert m["settings"]["headline_kind"] == "epistemic"
    for key in ("acc", "nll", "ece", "brier"):
        assert math.isfinite(m["calibration"][key])
    assert 0.0 <= m["calibration"]["acc"] <= 1.0
    assert set(m["blurring"]) == {"epistemic", "total", "aleatoric"}
    epistemic = m["blurring"]["epistemic"]["methods"]
    # UA-Backprop rows, and contrast_cam (class targets only) absent from uncertainty tables
    assert "ua_backprop" in epistemic and "contrast_cam" not in epistemic
    assert "contrast_cam" in m["degradation"]["methods"]
    for row in epistemic.values():
        for key in ("murr@2%", "auc_urr@2%", "murr@5%", "auc_urr@5%", "murr_step@2%",
                    "auc_urr_step@2%", "num_images"):
            assert math.isfinite(row[key]), key
        assert 0.0 <= row["murr@2%"] <= row["murr@5%"] <= 1.0  # a larger budget never hurts
    for row in m["anomaly"]["methods"].values():
        assert set(row) >= {"iou", "ada", "pointing_game", "bbox_ratio"}
    for shift in ("rotation 90", "rotation 180"):
        assert set(m["ood"][shift]) >= {"total", "aleatoric", "epistemic"}
        assert 0.0 <= m["ood"][shift]["epistemic"]["auroc"] <= 1.0
    assert m["timing"]["total"]["wall_s"] > 0


def test_ablation_runs_on_the_validation_split_and_selects_its_best(report):
    m = json.loads((report / "metrics.json").read_text())
    ab = m["ablation"]
    assert ab["split"] == "val" and ab["grid"] == "quick"
    assert len(ab["settings"]) == ablation_size("quick")
    best = max(s["scores"]["murr@2%"]["mean"] for s in ab["settings"])
    chosen = [s for s in ab["settings"] if s["kwargs"] == ab["selected"]]
    assert chosen and chosen[0]["scores"]["murr@2%"]["mean"] == best
    keys = [r["key"] for r in m["rows"]]
    assert "ua_backprop" in keys  # the default setting row is always reported
    if ab["selected"] != UA_DEFAULT:
        assert "ua_backprop_selected" in keys


def test_report_md_holds_the_paper_style_tables(report):
    text = (report / "report.md").read_text()
    for needle in ("## Summary: the UA-Backprop paper's MNIST claim", "MURR@2% ↑",
                   "AUC-URR@5% ↓", "Budget reading", "Step reading", "paper, MNIST",
                   "0.648", "0.506", "IoU ↑", "ADA ↑", "LeRF − MoRF ↑", "AUROC ↑",
                   "UA-Backprop ablation (validation split)", "![reliability.png]",
                   "IBA paper's claim against Grad-CAM", "maps of"):
        assert needle in text, needle
    assert "does not hold" in text or "holds" in text


def _table_row(text: str, section: str, label: str) -> list[str]:
    """The cells of the row ``label`` in the first table after the heading ``section``."""
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, (section, label)
    return [cell.strip() for cell in rows[0].strip("|").split("|")][1:]


def test_readout_is_in_the_anomaly_and_degradation_tables(report):
    m = json.loads((report / "metrics.json").read_text())
    assert "readout" not in m["blurring"]["epistemic"]["methods"]  # a class-only method
    anomaly, degradation = m["anomaly"]["methods"], m["degradation"]["methods"]
    assert anomaly["readout"]["target"] == anomaly["contrast_cam"]["target"] == "class"
    assert anomaly["gradient"]["target"] == "epistemic"
    for key in ("iou", "ada", "pointing_game", "bbox_ratio"):
        assert 0.0 <= anomaly["readout"][key] <= 1.0, key
    for key in ("morf_auc", "lerf_auc", "degradation"):
        assert math.isfinite(degradation["readout"][key]), key
    paired = m["anomaly"]["paired"]["readout - gradcam"]["bbox_ratio"]
    assert paired["mean"] == pytest.approx(
        anomaly["readout"]["bbox_ratio"] - anomaly["gradcam"]["bbox_ratio"])
    text = (report / "report.md").read_text()
    cells = _table_row(text, "## 3. Anomaly test", "Readout IBA")
    assert cells[0] == "class" and len(cells) == 7
    assert all(math.isfinite(float(c)) for c in cells[1:])  # IoU, ADA, pointing, bbox ratio...
    cells = _table_row(text, "## 4. Degradation test", "Readout IBA")
    assert len(cells) == 3 and all(math.isfinite(float(c)) for c in cells)  # MoRF, LeRF, diff


def test_bad_readout_checkpoints_fail_before_any_work(checkpoint, readout_checkpoint, tmp_path,
                                                        capsys):
    out = tmp_path / "r"
    assert evaluate.main(["--ckpt", str(checkpoint), "--out", str(out), "--quick",
                          "--readout", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "no readout checkpoint at" in err and "configs/mnist5k_readout.yaml" in err
    assert evaluate.main(["--ckpt", str(checkpoint), "--out", str(out), "--quick",
                          "--readout", str(checkpoint)]) == 2  # the classifier, not a readout
    assert "not of a readout bottleneck" in capsys.readouterr().err
    assert evaluate.main(["--ckpt", str(checkpoint), "--out", str(out), "--quick",
                          "--methods", "gradient", "--readout", str(readout_checkpoint)]) == 2
    assert "do not include 'readout'" in capsys.readouterr().err  # not silently ignored
    assert not out.exists()
    # a readout trained on another classifier would explain that one, not the model evaluated
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="another classifier"):
        load_readout(readout_checkpoint, MCDropout(LeNet5(dropout=0.25), num_samples=20, seed=0))


def test_bad_method_name_and_missing_config_fail_cleanly(checkpoint, tmp_path, capsys):
    out = tmp_path / "r"
    assert evaluate.main(["--ckpt", str(checkpoint), "--out", str(out),
                          "--methods", "gradient", "no_such_method"]) == 2
    assert "unknown attribution method(s) 'no_such_method'" in capsys.readouterr().err
    assert evaluate.main(["--ckpt", str(checkpoint), "--out", str(out),
                          "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no config file" in capsys.readouterr().err
    assert not out.exists()


# ---- pieces ------------------------------------------------------------------------------
@pytest.fixture
def posterior():
    torch.manual_seed(0)
    return MCDropout(LeNet5(dropout=0.5), num_samples=4, seed=0).eval()


def test_above_median_is_the_numpy_rule():
    u = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    assert above_median(u).tolist() == [1, 3]  # median 0.25


def test_ablation_size_counts_distinct_settings():
    full = ABLATION_GRIDS["full"]
    assert ablation_size("full") == len(full["psi_tau2"]) + 2 + 1 == 10
    assert ablation_size("quick") == 4


def test_method_rows_keep_the_default_and_add_the_selected_setting():
    selected = {**UA_DEFAULT, "tau1": 1.0}
    rows = method_rows(["ua_backprop", "gradient"], selected)
    assert [r.key for r in rows] == ["ua_backprop_selected", "ua_backprop", "gradient"]
    assert rows[0].kwargs == selected and rows[1].kwargs == UA_DEFAULT
    same = method_rows(["ua_backprop"], dict(UA_DEFAULT))
    assert [r.key for r in same] == ["ua_backprop"] and "val-selected" in same[0].label


@pytest.mark.parametrize("bad", [dict(blur_images=0), dict(ablation_grid="huge"),
                                 dict(methods=("gradient", "nope")), dict(fractions=(0.0,))])
def test_settings_reject_bad_values(bad):
    with pytest.raises(ValueError):
        EvaluationSettings(**bad).check()


def _suite(**results) -> SuiteResult:
    return SuiteResult(settings={"headline_kind": "epistemic", "fractions": [0.02, 0.05]},
                       rows=[], results=results)


def _claim_results(ua: float, grad: float) -> SuiteResult:
    def row(murr: float) -> dict:
        return {"murr@2%": murr, "murr@5%": murr + 0.1, "auc_urr@2%": 1 - murr,
                "auc_urr@5%": 1 - murr, "murr_step@2%": murr, "murr_step@5%": murr,
                "auc_urr_step@2%": 1 - murr, "auc_urr_step@5%": 1 - murr}

    return _suite(blurring=BlurringResult(kinds={"epistemic": {"methods": {
        "ua_backprop": row(ua), "gradient": row(grad), "random": row(0.01)}}}))


def test_paper_claim_logic():
    holds = paper_claim(_claim_results(ua=0.6, grad=0.5))
    assert holds["applicable"] and holds["holds_anywhere"]
    assert holds["missing"] == ["fullgrad", "integrated_gradients"]
    assert all(holds["holds"].values())
    fails = paper_claim(_claim_results(ua=0.1, grad=0.2))
    assert not fails["holds_anywhere"]
    failed = [c for c in fails["checks"]["ua_backprop/budget"] if not c["holds"]]
    assert {c["competitor"] for c in failed} == {"gradient"} and len(failed) == 4


def test_default_methods_put_the_iba_rows_beside_the_baselines(posterior):
    methods = default_methods(posterior, readout="readout.ckpt")
    assert {"per_sample_iba", "readout", "gradcam", "gradient", "integrated_gradients",
            "smoothgrad"} <= set(methods)
    assert "readout" not in default_methods(posterior)  # only with a trained readout


def test_iba_claim_compares_per_sample_iba_with_gradcam():
    def results(deg: float, bbox: float) -> SuiteResult:
        paired = {"bbox_ratio": {"mean": bbox - 0.2, "se": 0.05}}
        degradation = DegradationResult(
            target="class", num_images=1, tile_size=4, steps=10,
            methods={"per_sample_iba": {"degradation": deg}, "gradcam": {"degradation": 0.1}})
        anomaly = AnomalyResult(
            kind="epistemic", class_target="class", patch={}, num_candidates=1, num_raised=1,
            num_images=1, methods={"per_sample_iba": {"bbox_ratio": bbox},
                                   "gradcam": {"bbox_ratio": 0.2}},
            paired={"per_sample_iba - gradcam": paired})
        return _suite(degradation=degradation, anomaly=anomaly)

    assert iba_claim(results(0.5, 0.3))["holds"]
    claim = iba_claim(results(0.5, 0.1))
    assert not claim["holds"] and [c["holds"] for c in claim["checks"]] == [True, False]
    assert claim["checks"][0]["paired"] is None  # the degradation test has no per-image score
    assert claim["checks"][1]["paired"]["mean"] == pytest.approx(-0.1)
    missing = results(0.5, 0.3)
    del missing.results["anomaly"].methods["gradcam"]
    assert not iba_claim(missing)["applicable"]


def test_markdown_table_formats_numbers_and_gaps():
    text = markdown_table(["a", "b"], [["x", 0.12345], ["y", float("nan")]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x | 0.123 |", "| y | — |"]


def test_runs_trained_with_attention_get_a_caution():
    """evaluate.py scores the bare model; a run whose inputs were multiplied by attention masks
    (AttentionMitigation) is flagged in a warning and in the report instead of passing silently."""
    from uattr.evaluation import input_transform_cautions
    from uattr.lit.run_config import load_run_config

    mitigation = load_run_config(ROOT / "configs/mnist5k_lenet_mcdropout_mitigation.yaml")
    control = load_run_config(  # method: null, no attention
        ROOT / "configs/mnist5k_lenet_mcdropout_mitigation_control.yaml"
    )
    (caution,) = input_transform_cautions(mitigation)
    assert "AttentionMitigation" in caution and "train.py test" in caution
    assert input_transform_cautions(control) == []
    assert input_transform_cautions({"trainer": {"callbacks": None}}) == []


def test_cautions_are_in_the_report(report, tmp_path):
    results = json.loads((report / "metrics.json").read_text())
    assert results["cautions"] == []  # the quick run's checkpoint had no attention
    # the report reads the typed results back from metrics.json, and writes the same text
    again = write_report(SuiteResult.from_json(results, list(PROTOCOLS)), PROTOCOLS, tmp_path)
    assert again.read_text() == (report / "report.md").read_text()
    results["cautions"] = ["the run was trained with AttentionMitigation (a test caution)"]
    suite = SuiteResult.from_json(results, list(PROTOCOLS))
    text = write_report(suite, PROTOCOLS, tmp_path).read_text()
    assert "**Caution:** the run was trained with AttentionMitigation" in text
