"""Evaluate a trained checkpoint and write a report folder.

    python evaluate.py --ckpt checkpoints/mnist5k_lenet_mcdropout/last.ckpt --out reports/default

The model and data module are rebuilt from the configuration the checkpoint carries (or from
``--config``), the weights loaded with ``torch.load(weights_only=True)``, and the test split is
evaluated. Writes ``metrics.json`` and ``report.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uattr.evaluation import evaluate_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by train.py")
    parser.add_argument("--config", type=Path, default=None,
                        help="run YAML to use instead of the one saved in the checkpoint")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: reports/<checkpoint folder name>)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path("reports") / args.ckpt.resolve().parent.name
    try:
        report = evaluate_checkpoint(args.ckpt, out, config_path=args.config,
                                     accelerator=args.accelerator)
    except (FileNotFoundError, ValueError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    print(f"report written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
