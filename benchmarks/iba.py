"""Cost of the information-bottleneck attributions (Schulz et al., ICLR 2020), batched and not.

1. Per-Sample IBA batched (all B images and their noise copies in one forward per step) against the
   IBA library's way, one image at a time, for a batch of B = 32. The target is >= 3x faster per
   image on CPU (see docs/choices_and_timings.md).
2. Readout Bottleneck maps (one nested forward + the 1x1-conv readout) against one plain forward
   pass of the posterior on the same images (no gradients).

Setup: the embedded default's shapes: LeNet5 with MC dropout, S = 20 fixed posterior samples,
MNIST digits (mnist5k; the cost does not depend on the weights, which are random here unless
``--ckpt`` names a classifier checkpoint), bottleneck at ``backbone.conv2`` (16 x 10 x 10), the
IBA library's defaults (10 steps, 10 noise copies), class target = predicted class. Times are
medians of ``--runs`` runs after one warm-up run (the one-at-a-time loop: ``--loop-runs``).

Usage: ``python benchmarks/iba.py [--device cpu|cuda] [--batch 32] [--samples 20] [--runs 3]
[--loop-runs 1] [--threads N] [--ckpt PATH]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from uattr.attribution.iba import (  # noqa: E402
    PerSampleBottleneck,  # noqa: E402
    Readout,
    ReadoutBottleneck,
)
from uattr.bayes import MCDropout  # noqa: E402
from uattr.data import MNIST5k  # noqa: E402
from uattr.models import LeNet5  # noqa: E402

READOUTS = ["backbone.conv1", "backbone.conv2", "backbone.fc1", "backbone.fc2", "backbone.fc3"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], runs: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _posterior(args: argparse.Namespace, device: torch.device) -> MCDropout:
    if args.ckpt:
        from uattr.lit.readout import load_classifier

        post, _ = load_classifier(args.ckpt)
        post.num_samples = args.samples
    else:
        torch.manual_seed(0)
        post = MCDropout(LeNet5(dropout=0.25), num_samples=args.samples, seed=0)
    return post.to(device).eval().requires_grad_(False)


def measure(
    post: torch.nn.Module,
    x: torch.Tensor,
    data: MNIST5k,
    runs: int,
    loop_runs: int,
    device: torch.device,
) -> dict[str, float]:
    """Seconds per batch ``x``: Per-Sample IBA batched and as a one-image loop, Readout maps, one
    no-grad posterior forward; plus the largest batched vs one-at-a-time map difference (bits)."""
    b = x.shape[0]
    iba = PerSampleBottleneck(post, "backbone.conv2")
    iba.estimate(data, n_samples=1000)
    t_batched = _median_time(lambda: iba(x), runs, device)
    t_loop = _median_time(lambda: [iba(x[i : i + 1]) for i in range(b)], loop_runs, device)
    k = min(4, b)
    diff = (torch.cat([iba(x[i : i + 1]) for i in range(k)]) - iba(x[:k])).abs().max().item()

    readout = Readout(post, "backbone.conv2", READOUTS, tuple(x.shape[1:])).to(device)
    readout.estimate(data, n_samples=1000)
    method = ReadoutBottleneck(post, readout)
    t_readout = _median_time(lambda: method(x), max(runs, 5), device)
    with torch.no_grad():
        t_forward = _median_time(lambda: post.sample_logits(x), max(runs, 5), device)
    return {
        "batched": t_batched,
        "loop": t_loop,
        "readout": t_readout,
        "forward": t_forward,
        "max_diff": diff,
    }


def print_table(times: dict[str, float], b: int) -> None:
    """The ms-per-image table of :func:`measure` and the batching verdict (target >= 3x)."""
    per = 1000.0 / b
    print(
        f"per-sample IBA: 10 steps x 10 noise copies at backbone.conv2; batched vs one-at-a-time "
        f"max |map difference| on up to 4 images = {times['max_diff']:.2e} bits"
    )
    rows = [
        ("Per-Sample IBA, batched (B images per forward)", times["batched"] * per, "1.00"),
        (
            "Per-Sample IBA, one image at a time (library)",
            times["loop"] * per,
            f"{times['loop'] / times['batched']:.2f} x slower",
        ),
        (
            "Readout Bottleneck maps (batched)",
            times["readout"] * per,
            f"{times['readout'] / times['forward']:.2f} x one forward",
        ),
        ("one forward pass of the posterior (no grad)", times["forward"] * per, "1.00"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'method'.ljust(width)} | ms / image | ratio |")
    print(f"|{'-' * (width + 2)}|-----------:|------:|")
    for label, ms, ratio in rows:
        print(f"| {label.ljust(width)} | {ms:10.2f} | {ratio} |")
    speedup = times["loop"] / times["batched"]
    print(f"batching gain: {speedup:.2f}x (target >= 3x): {'met' if speedup >= 3 else 'NOT met'}")


def digits(data: MNIST5k, count: int) -> torch.Tensor:
    """The first ``count`` validation digits [count, 1, 28, 28]."""
    data.setup("fit")
    return torch.stack([data.val_dataset[i][0] for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=20, help="S, MC-dropout samples")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loop-runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--ckpt", default=None, help="a classifier checkpoint (else random weights)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    post = _posterior(args, device)
    data = MNIST5k(batch_size=128)
    x = digits(data, args.batch).to(device)
    times = measure(post, x, data, args.runs, args.loop_runs, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, B = {x.shape[0]}, S = {args.samples}, "
        f"weights: {'checkpoint' if args.ckpt else 'random'}"
    )
    print_table(times, x.shape[0])


if __name__ == "__main__":
    main()
