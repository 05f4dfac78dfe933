"""evaluate.py's command line: every EvaluationSettings field is a flag and a YAML key, the
earlier spellings keep working, --quick presets lose to explicit values, bad input fails with
exit code 2. ``evaluate_checkpoint`` is replaced by a stub that records its arguments, so
nothing is evaluated."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

import evaluate
from uattr.evaluation import EvaluationSettings

FIELDS = [f for f in dataclasses.fields(EvaluationSettings) if f.init]
HINTS = typing.get_type_hints(EvaluationSettings)
CKPT = "checkpoints/run/last.ckpt"


@pytest.fixture
def calls(monkeypatch) -> list[dict[str, Any]]:
    """The arguments of every evaluate_checkpoint call made by evaluate.main."""
    recorded: list[dict[str, Any]] = []

    def fake_evaluate_checkpoint(ckpt_path, out_dir, config_path=None, accelerator="auto",
                                 settings=None, on_results=None):
        recorded.append({"ckpt": ckpt_path, "out": out_dir, "config_path": config_path,
                         "accelerator": accelerator, "settings": settings})
        return Path(out_dir) / "report.md"

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fake_evaluate_checkpoint)
    return recorded


def evaluated(calls, *argv: str) -> dict[str, Any]:
    """evaluate.main(--ckpt CKPT *argv) succeeds; the arguments evaluate_checkpoint got."""
    assert evaluate.main(["--ckpt", CKPT, *argv]) == 0
    return calls[-1]


def settings(calls, *argv: str) -> EvaluationSettings:
    result = evaluated(calls, *argv)["settings"]
    assert isinstance(result, EvaluationSettings)
    return result


def failure(calls, capsys, *argv: str) -> str:
    """evaluate.main(argv) exits with code 2 before evaluating; its stderr."""
    assert evaluate.main(list(argv)) == 2
    assert not calls
    return capsys.readouterr().err


def _members(hint: Any) -> list[Any]:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return [h for h in typing.get_args(hint) if h is not type(None)] if union else [hint]


def other_value(hint: Any, default: Any) -> Any:
    """A value of type ``hint`` that differs from ``default`` (legal or not for check())."""
    first = _members(hint)[0]
    if typing.get_origin(first) is typing.Literal:
        return next(v for v in typing.get_args(first) if v != default)
    if typing.get_origin(first) in (tuple, list):
        item = typing.get_args(first)[0]
        return (other_value(item, None), other_value(item, None))
    if first is bool:
        return not default
    if first is int:
        return (default or 0) + 3
    if first is float:
        return (default or 0.0) + 0.25
    if first is str:
        return "other"
    raise AssertionError(f"no test value for type {hint}: extend other_value")


def as_flag_value(value: Any) -> str:
    return yaml.safe_dump(list(value) if isinstance(value, tuple) else value,
                          default_flow_style=True).strip().removesuffix("...").strip()


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_settings_field_is_a_flag_and_a_yaml_key(field, tmp_path):
    value = other_value(HINTS[field.name], field.default)
    from_flag = evaluate.parse_args(["--ckpt", CKPT, f"--{field.name}", as_flag_value(value)])
    assert getattr(evaluate.settings_from_args(from_flag), field.name) == value
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({field.name: list(value) if isinstance(value, tuple)
                                    else value}))
    from_yaml = evaluate.parse_args(["--ckpt", CKPT, "--config", str(path)])
    assert getattr(evaluate.settings_from_args(from_yaml), field.name) == value
    other = evaluate.settings_from_args(from_yaml)
    assert dataclasses.replace(other, **{field.name: field.default}) == EvaluationSettings()


def test_defaults_are_the_dataclass_defaults(calls):
    call = evaluated(calls)
    assert call["settings"] == EvaluationSettings()
    assert call["ckpt"] == Path(CKPT) and call["config_path"] is None
    assert call["out"] == Path("reports") / "run" and call["accelerator"] == "auto"


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in [f.name for f in FIELDS] + [*evaluate.OPTIONS, "config", "print_config"]:
        assert f"--{name}" in text, name
    assert "checkpoint written by train.py (required" in text
    for earlier in ("--blur-images", "--no-ablation", "--methods a b c", "--config RUN.yaml"):
        assert earlier in text


def test_print_config_round_trips(calls, capsys, tmp_path):
    argv = ["--ckpt", CKPT, "--quick", "--methods", "gradient", "random", "--blur_images", "7",
            "--out", str(tmp_path / "r"), "--accelerator", "cpu"]
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([*argv, "--print_config"])
    assert exit_.value.code == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert yaml.safe_load(printed.read_text())["blur_images"] == 7
    direct = evaluated(calls, *argv[2:])
    assert evaluate.main(["--config", str(printed)]) == 0
    assert calls[-1] == direct


def test_earlier_spellings_give_the_same_settings(calls):
    earlier = ["--blur-images", "7", "--anomaly-images", "5", "--degradation-images", "3",
               "--ablation-images", "4", "--no-ablation", "--no-progress",
               "--methods", "gradient", "random", "--readout", "r.ckpt", "--seed", "3"]
    current = ["--blur_images", "7", "--anomaly_images", "5", "--degradation_images", "3",
               "--ablation_images", "4", "--ablation", "false", "--progress", "false",
               "--methods", "[gradient, random]", "--readout", "r.ckpt", "--seed", "3"]
    expected = dict(blur_images=7, anomaly_images=5, degradation_images=3, ablation_images=4,
                    ablation=False, progress=False, methods=("gradient", "random"),
                    readout="r.ckpt", seed=3)
    assert settings(calls, *earlier) == settings(calls, *current) == EvaluationSettings(**expected)
    quick = EvaluationSettings.quick(**expected)
    assert settings(calls, "--quick", *earlier) == settings(calls, "--quick", *current) == quick


@pytest.mark.parametrize(("argv", "progress"), [
    ([], True), (["--progress"], True), (["--no-progress"], False), (["--no_progress"], False),
    (["--progress", "false"], False), (["--progress=false"], False),
    (["--no-progress", "--progress"], True),
])
def test_progress_flags(calls, argv, progress):
    assert settings(calls, *argv).progress is progress


def test_methods_single_and_yaml_forms(calls):
    assert settings(calls, "--methods", "gradient").methods == ("gradient",)
    assert settings(calls, "--methods=[gradient,random]").methods == ("gradient", "random")
    assert settings(calls, "--methods", "gradient", "--seed", "2").seed == 2
    assert settings(calls, "--fractions", "0.1", "0.2").fractions == (0.1, 0.2)


def test_quick_presets_lose_to_explicit_flags_and_yaml(calls, tmp_path):
    assert settings(calls, "--quick") == EvaluationSettings.quick()
    assert settings(calls, "--quick", "--blur_images", "9") == EvaluationSettings.quick(
        blur_images=9)
    assert settings(calls, "--blur_images", "9", "--quick") == EvaluationSettings.quick(
        blur_images=9)
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("blur_images: 9\nablation_grid: full\n")
    expected = EvaluationSettings.quick(blur_images=9, ablation_grid="full")
    assert settings(calls, "--quick", "--config", str(yaml_file)) == expected
    assert settings(calls, "--config", str(yaml_file), "--quick") == expected
    yaml_file.write_text("quick: true\nblur_images: 9\n")
    assert settings(calls, "--config", str(yaml_file)) == EvaluationSettings.quick(blur_images=9)
    assert settings(calls, "--config", str(yaml_file), "--quick", "false") == EvaluationSettings(
        blur_images=9)


def test_settings_files_apply_in_order(calls, tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("blur_images: 9\nseed: 4\n")
    second.write_text("blur_images: 11\n")
    got = settings(calls, "--config", str(first), "--config", str(second), "--seed", "5")
    assert (got.blur_images, got.seed) == (11, 5)


def test_run_config_and_the_earlier_config_flag(calls, capsys, tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("model:\n  class_path: uattr.lit.BayesianClassifier\ndata: {}\n")
    assert evaluated(calls, "--run_config", str(run_yaml))["config_path"] == str(run_yaml)
    assert "deprecated" not in capsys.readouterr().err
    earlier = evaluated(calls, "--config", str(run_yaml), "--quick")
    assert earlier["config_path"] == str(run_yaml)
    assert earlier["settings"] == EvaluationSettings.quick()
    err = capsys.readouterr().err
    assert "deprecated" in err and f"--run_config {run_yaml}" in err
    calls.clear()
    err = failure(calls, capsys, "--ckpt", CKPT, "--run_config", str(run_yaml), "--config",
                  str(run_yaml))
    assert "more than one run configuration" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "gradient", "no_such_method"], "unknown attribution method(s) 'no_such_method'"),
    (["--blur_images", "many"], "blur_images"),
    (["--blur-images", "0"], "blur_images"),
    (["--ablation_grid", "huge"], "ablation_grid"),
    (["--accelerator", "tpu"], "accelerator"),
    (["--blur_imagez", "3"], "blur_imagez"),
    (["--config", "missing.yaml"], "no config file"),
])
def test_bad_values_fail_with_a_message(calls, capsys, argv, message):
    err = failure(calls, capsys, "--ckpt", CKPT, *argv)
    assert message in err and "evaluate.py: error:" in err


def test_a_missing_ckpt_fails_with_a_message(calls, capsys):
    assert "ckpt" in failure(calls, capsys, "--quick")


def test_bad_settings_files_fail_with_a_message(calls, capsys, tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("blur_imagez: 3\n")
    assert "blur_imagez" in failure(calls, capsys, "--ckpt", CKPT, "--config", str(unknown))
    broken = tmp_path / "broken.yaml"
    broken.write_text("blur_images: [\n")
    assert "evaluate.py: error:" in failure(calls, capsys, "--ckpt", CKPT, "--config",
                                            str(broken))
    assert settings(calls, "--config", "{blur_images: 3}").blur_images == 3  # inline YAML


def test_patch_fill_grey_level_from_the_command_line(calls, capsys):
    assert "patch_fill" in failure(calls, capsys, "--ckpt", CKPT, "--patch_fill", "grey")
    assert settings(calls, "--patch_fill", "0.5").patch_fill == 0.5
    assert settings(calls, "--patch_fill", "white").patch_fill == "white"
