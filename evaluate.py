"""Evaluate a trained checkpoint and write a report folder.

    python evaluate.py --ckpt checkpoints/mnist5k_lenet_mcdropout/last.ckpt \\
        --out reports/mnist5k_lenet_mcdropout

The model and data module are rebuilt from the configuration the checkpoint carries (or from
--config) and the weights loaded with torch.load(weights_only=True). On the test split: predictive
quality and calibration, OOD detection against rotated / noisy / blurred copies, and, for every
attribution method, the blurring test (MURR, AUC-URR), the anomaly-patch test (IoU, ADA, pointing,
bounding-box ratio) and the degradation test (MoRF / LeRF). UA-Backprop's open choices are first
ablated on the VALIDATION split (--no-ablation skips it). Writes metrics.json, report.md and PNG
figures to --out. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from uattr.attribution.registry import METHODS
from uattr.evaluation import EvaluationSettings, evaluate_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by train.py")
    parser.add_argument("--config", type=Path, default=None,
                        help="run YAML to use instead of the one saved in the checkpoint")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: reports/<checkpoint folder name>)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="attribution methods (default: every applicable one):\n"
                             + ", ".join(METHODS))
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                        help="ablate UA-Backprop's open choices on the validation split and add "
                             "the selected setting to every table (default: on)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: a handful of images per test, the small ablation grid")
    parser.add_argument("--blur-images", type=int, default=None,
                        help="test images of the headline blurring test (default 50; quick 6)")
    parser.add_argument("--anomaly-images", type=int, default=None,
                        help="patched test images of the anomaly test (default 40; quick 6)")
    parser.add_argument("--degradation-images", type=int, default=None,
                        help="test images of the degradation test (default 20; quick 4)")
    parser.add_argument("--ablation-images", type=int, default=None,
                        help="validation images of the ablation (default 40; quick 6)")
    parser.add_argument("--readout", default=None,
                        help="a readout-bottleneck checkpoint trained on this classifier (adds\n"
                             "'readout' to the anomaly and degradation tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every subset and patch")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> EvaluationSettings:
    overrides = {
        "methods": tuple(args.methods) if args.methods else None,
        "ablation": args.ablation,
        "readout": args.readout,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    sizes = {
        "blur_images": args.blur_images,
        "anomaly_images": args.anomaly_images,
        "degradation_images": args.degradation_images,
        "ablation_images": args.ablation_images,
    }
    overrides.update({k: v for k, v in sizes.items() if v is not None})
    if args.quick:
        return EvaluationSettings.quick(**overrides)
    return EvaluationSettings(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path("reports") / args.ckpt.resolve().parent.name
    try:
        report = evaluate_checkpoint(args.ckpt, out, config_path=args.config,
                                     accelerator=args.accelerator,
                                     settings=settings_from_args(args))
    except (FileNotFoundError, ValueError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    print(f"report written to {report}")
    return 0


#: glibc malloc settings for this workload: keep freed large buffers in the heap instead of
#: returning them to the OS. The metrics re-score thousands of batches of S x 1024 rows, and by
#: default every such activation buffer is mmap-ed and unmapped again, so page faults took ~40% of
#: the CPU time (measured: full run 433 s user + 257 s system; with these settings the system time
#: is ~1% and the wall time ~30% lower, peak memory +0.5 GB).
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
