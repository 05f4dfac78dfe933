"""Evaluate a trained checkpoint and write a report folder.

    python evaluate.py --ckpt checkpoints/mnist5k_lenet_mcdropout/last.ckpt \\
        --out reports/mnist5k_lenet_mcdropout
    python evaluate.py --ckpt CKPT --quick                        # smoke test: a few images a test
    python evaluate.py --ckpt CKPT --quick --print_config > s.yaml   # every setting, as YAML
    python evaluate.py --ckpt CKPT --config s.yaml --blur_images 100  # YAML, then a flag on top

The model and data module are rebuilt from the configuration the checkpoint carries (or from
--run_config) and the weights loaded with torch.load(weights_only=True). On the test split:
predictive quality and calibration, OOD detection against rotated / noisy / blurred copies, and,
for every attribution method, the blurring test (MURR, AUC-URR), the anomaly-patch test (IoU,
ADA, pointing, bounding-box ratio) and the degradation test (MoRF / LeRF). UA-Backprop's open
choices are first ablated on the VALIDATION split (--ablation false skips it). Writes
metrics.json, report.md and PNG figures to --out. See docs/evaluation.md.

Every field of uattr.evaluation.EvaluationSettings is a flag --<field> and a key of the settings
YAML read by --config (repeatable). Later sources win: defaults (--quick: the smoke-test preset
EvaluationSettings.quick()), then --config files and flags in the order given. Lists are YAML
(--methods [gradient,random]) or space-separated (--methods gradient random). Paths are relative
to the working directory, also inside a YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Literal

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace

from uattr.attribution.registry import METHODS
from uattr.evaluation import EvaluationSettings, evaluate_checkpoint

#: EvaluationSettings fields, each a flag and a YAML key.
FIELDS = tuple(f.name for f in dataclasses.fields(EvaluationSettings) if f.init)
#: evaluate.py's own options besides the settings (and --config, --print_config).
OPTIONS = ("ckpt", "out", "run_config", "accelerator", "quick")
#: Top-level keys that mark a YAML given to --config as a run configuration (train.py's).
RUN_CONFIG_KEYS = {"model", "data", "trainer", "seed_everything", "include"}

EARLIER_SPELLINGS = f"""\
earlier spellings, still accepted:
  --blur-images N, --no-ablation, ...   hyphens for underscores; --no-<flag> = --<flag> false
  --progress, --quick, --ablation       a bare flag means true
  --methods a b c                       space-separated values of any list setting
  --config RUN.yaml                     a run configuration (top-level model, data, trainer
                                        or include) is read as --run_config RUN.yaml, with a
                                        warning

{textwrap.fill("methods: " + ", ".join(METHODS), 96, subsequent_indent="  ")}
"""


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, keeping the line breaks of the description and the epilog."""


def _field_kinds() -> tuple[set[str], set[str]]:
    """(the bool fields, the list-valued fields: tuple[...] or list[...], maybe | None)."""
    hints = typing.get_type_hints(EvaluationSettings)

    def members(hint: object) -> tuple[object, ...]:
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        return typing.get_args(hint) if union else (hint,)

    booleans = {name for name in FIELDS if hints[name] is bool}
    sequences = {name for name in FIELDS
                 if any(typing.get_origin(h) in (tuple, list) for h in members(hints[name]))}
    return booleans, sequences


def build_parser(quick: bool = False, require_ckpt: bool = True) -> ArgumentParser:
    """The parser; with ``quick``, the defaults are :meth:`EvaluationSettings.quick`'s."""
    parser = ArgumentParser(prog="evaluate.py", description=__doc__, epilog=EARLIER_SPELLINGS,
                            formatter_class=_HelpFormatter, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="settings YAML (keys: the flags below, without --); repeatable")
    parser.add_argument("--ckpt", type=str, required=require_ckpt,
                        help="checkpoint written by train.py")
    parser.add_argument("--out", type=str | None, default=None,
                        help="report folder (default: reports/<checkpoint folder name>)")
    parser.add_argument("--run_config", type=str | None, default=None,
                        help="run YAML to rebuild the model and data from, instead of the one "
                             "saved in the checkpoint")
    parser.add_argument("--accelerator", type=Literal["auto", "cpu", "gpu", "cuda"],
                        default="auto", help="where to evaluate (auto: a GPU if there is one)")
    parser.add_argument("--quick", type=bool, default=False,
                        help="a smoke test: start from EvaluationSettings.quick() (a handful of "
                             "images per test, the small ablation grid); flags and YAML keys "
                             "still win")
    parser.add_class_arguments(EvaluationSettings, None, instantiate=False)
    if quick:
        preset = EvaluationSettings.quick()
        parser.set_defaults({name: getattr(preset, name) for name in FIELDS})
    return parser


def _is_run_config(value: str) -> bool:
    """Whether ``--config value`` names a run YAML (the old meaning of --config)."""
    path = Path(value)
    try:
        content = yaml.safe_load(path.read_text() if path.is_file() else value)
    except yaml.YAMLError:
        content = None  # jsonargparse reports what is wrong with the file
    if not path.is_file() and not isinstance(content, dict):  # a dict: YAML given inline
        raise ValueError(f"no config file at {path}: --config takes a settings YAML "
                         "(--run_config takes a run YAML).")
    return path.is_file() and isinstance(content, dict) and bool(RUN_CONFIG_KEYS & set(content))


def _flag_value(token: str) -> tuple[str, str | None]:
    name, sep, value = token.partition("=")
    return name, (value if sep else None)


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off")


def normalize_argv(argv: list[str]) -> list[str]:
    """Rewrite the earlier spellings (see ``EARLIER_SPELLINGS``) into jsonargparse's form."""
    booleans, sequences = _field_kinds()
    booleans.add("quick")
    known = set(FIELDS) | set(OPTIONS) | {"config", "print_config"}
    known |= {f"no_{name}" for name in booleans}
    out: list[str] = []
    run_configs = 0
    i = 0
    while i < len(argv):
        token, i = argv[i], i + 1
        name, value = _flag_value(token[2:])
        if not token.startswith("--") or name.replace("-", "_") not in known:
            out.append(token)  # a value, or an unknown flag for jsonargparse to report
            continue
        name = name.replace("-", "_")
        if value is None and name.startswith("no_"):
            out.append(f"--{name[3:]}=false")
        elif name in booleans and value is None and (
                i == len(argv) or argv[i].lower() not in _BOOL_WORDS):
            out.append(f"--{name}=true")
        elif name in sequences and value is None:
            values = []
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            single = len(values) == 1 and (values[0].startswith("[") or values[0] == "null")
            out.append(f"--{name}={values[0]}" if single else f"--{name}=[{', '.join(values)}]")
        elif name == "config" and (value is not None or i < len(argv)):
            if value is None:
                value, i = argv[i], i + 1
            if _is_run_config(value):
                print(f"evaluate.py: warning: --config {value} is a run configuration, read as "
                      f"--run_config {value}. This use of --config is deprecated: --config takes "
                      "evaluation settings now.", file=sys.stderr)
                out.append(f"--run_config={value}")
            else:
                out.append(f"--config={value}")
        else:
            out.append(f"--{name}" + ("" if value is None else f"={value}"))
        run_configs += out[-1].startswith("--run_config")
    if run_configs > 1:
        raise ValueError("more than one run configuration (--run_config, or a run YAML given to "
                         "--config); keep one.")
    return out


def _without_print_config(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i].startswith("--print_config"):
            skip_value = argv[i] == "--print_config" and i + 1 < len(argv)
            i += 2 if skip_value and not argv[i + 1].startswith("-") else 1
            continue
        out.append(argv[i])
        i += 1
    return out


def parse_args(argv: list[str] | None = None) -> Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``). Raises ``argparse.ArgumentError`` or
    ``ValueError`` on bad input; ``--help`` and ``--print_config`` exit."""
    argv = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    # --quick (from a flag or a YAML) decides the defaults, so it is read first
    helping = "-h" in argv or "--help" in argv
    quick = not helping and build_parser(require_ckpt=False).parse_args(
        _without_print_config(argv)).quick
    return build_parser(quick).parse_args(argv)


def settings_from_args(args: Namespace) -> EvaluationSettings:
    return EvaluationSettings(**{name: args[name] for name in FIELDS})


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        settings = settings_from_args(args).check()
    except (argparse.ArgumentError, ValueError) as error:
        print(f"evaluate.py: error: {error}\n(python evaluate.py --help lists every option)",
              file=sys.stderr)
        return 2
    ckpt = Path(args.ckpt)
    out = Path(args.out) if args.out else Path("reports") / ckpt.resolve().parent.name
    try:
        report = evaluate_checkpoint(ckpt, out, config_path=args.run_config,
                                     accelerator=args.accelerator, settings=settings)
    except (FileNotFoundError, ValueError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    print(f"report written to {report}")
    return 0


#: glibc malloc settings for this workload: keep freed large buffers in the heap instead of
#: returning them to the OS. The metrics re-score thousands of batches of S x 1024 rows, and by
#: default every such activation buffer is mmap-ed and unmapped again, so page faults dominate the
#: system time (measurements in docs/choices_and_timings.md).
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": "4294967295", "MALLOC_TRIM_THRESHOLD_": "4294967295"}


def _restart_with_malloc_settings() -> None:
    """Re-run this script with :data:`MALLOC_SETTINGS` unless the environment sets either one.

    glibc reads them only at start-up, hence the exec; harmless on other C libraries.
    """
    if sys.platform != "linux" or any(k in os.environ for k in MALLOC_SETTINGS):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_SETTINGS})


if __name__ == "__main__":
    _restart_with_malloc_settings()
    sys.exit(main())
