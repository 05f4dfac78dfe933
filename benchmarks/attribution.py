"""Cost of the attribution methods, as multiples of one training step on the same rows.

Setup: LeNet5 on MNIST-sized inputs (random [0, 1] images: the cost does not depend on the
pixels), MC dropout with S posterior samples, B images, K = 10 classes, target = epistemic
uncertainty. The unit is one training step on the same S*B rows: forward + backward with weight
gradients (cross-entropy, no optimiser step), the backbone in train mode.

Reported per method: the median wall time of ``--runs`` runs after ``--warmup`` runs, that time
over the training step's median, and the peak memory of the call:

- CUDA: ``torch.cuda.max_memory_allocated`` during the call minus the memory allocated before it;
- CPU: the peak of live tensor bytes allocated during the call (beyond those alive at its start),
  from the allocation events of ``torch.profiler`` (``profile_memory=True``), in one extra run
  outside the timed ones. It counts tensors from PyTorch's CPU allocator only (not Python objects
  or allocator fragmentation), the CPU analogue of the CUDA number.

The targets are the project's (see docs/choices_and_timings.md): UA-Backprop <= 6.5 training steps
at K = 10 (1.5 x the floor of (1 + K) / 3 steps that one forward and K input backwards cost, plus
one step); the batched path >= 5x faster than the naive (s, i) loop.

A second table (``--iba-batch``, default 32 digits; 0 skips it) times the information bottlenecks
with ``benchmarks/iba.py``: Per-Sample IBA batched vs one image at a time (the target is >= 3x,
see docs/choices_and_timings.md), and Readout maps vs one forward pass.

Other methods join the table through ``REGISTRY`` / ``OPTIONAL``: an optional entry names a module
and a class and is skipped, with a note, when it cannot be imported.

Usage: ``python benchmarks/attribution.py [--device cuda] [--batch 64] [--samples 20] [--runs 5]
[--methods NAME ...] [--threads N]``
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the profiler's allocation warnings

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/iba.py, also when imported

from uattr.attribution import conv_input_grad  # noqa: E402
from uattr.attribution.fullgrad import FullGrad  # noqa: E402
from uattr.attribution.ua_backprop import UABackprop  # noqa: E402
from uattr.bayes import MCDropout  # noqa: E402
from uattr.models import LeNet5  # noqa: E402

Factory = Callable[[nn.Module, argparse.Namespace], Callable]

STEP = "training step (fwd + bwd, weight grads)"
BATCHED = "UA-Backprop batched (default)"
NAIVE = "UA-Backprop naive (s,i) loop"


def _plain_conv_gradients(method: Callable) -> Callable:
    """``method`` with the first convolution's input gradient left to autograd (no reroute of
    :mod:`uattr.attribution.conv_input_grad`), to show what the reroute contributes."""

    def call(x: torch.Tensor, target: str) -> torch.Tensor:
        limit = conv_input_grad.SMALL_INPUT_CHANNELS
        conv_input_grad.SMALL_INPUT_CHANNELS = 0
        try:
            return method(x, target)
        finally:
            conv_input_grad.SMALL_INPUT_CHANNELS = limit

    return call


#: name -> factory(posterior, args) of an attribution callable ``method(x, target)``.
REGISTRY: dict[str, Factory] = {
    BATCHED: lambda post, a: UABackprop(post),
    "UA-Backprop batched, autograd conv1 grad": lambda post, a: _plain_conv_gradients(
        UABackprop(post)
    ),
    "UA-Backprop is_grads_batched (classes_per_backward=None)": lambda post, a: UABackprop(
        post, classes_per_backward=None
    ),
    NAIVE: lambda post, a: UABackprop(post, naive=True),
    "FullGrad": lambda post, a: FullGrad(post),
}

#: name -> (module, class, keyword arguments): added to REGISTRY when importable. Path methods and
#: SmoothGrad run 8 images' copies per pass to bound memory (same work as one pass).
OPTIONAL: dict[str, tuple[str, str, dict]] = {
    "Gradient": ("uattr.attribution.gradients", "Gradient", {}),
    "SmoothGrad (n=25)": (
        "uattr.attribution.gradients",
        "SmoothGrad",
        {"internal_batch_size": 512},
    ),
    "IntegratedGradients (50 steps)": (
        "uattr.attribution.gradients",
        "IntegratedGradients",
        {"internal_batch_size": 512},
    ),
    "BlurIG (50 steps)": ("uattr.attribution.gradients", "BlurIG", {"internal_batch_size": 512}),
    "GradCAM (conv2)": ("uattr.attribution.cam", "GradCAM", {"layer": "backbone.conv2"}),
}


def _optional_factory(module: str, cls: str, kwargs: dict) -> Factory | str:
    try:
        method = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        return f"skipped: {module}.{cls} is not importable ({err})"
    return lambda post, a: method(post, **kwargs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    fns: dict[str, Callable[[], object]], device: torch.device, runs: int, warmup: int
) -> dict[str, list[float]]:
    """Wall times of ``runs`` rounds after ``warmup`` rounds; each round calls every function once,
    so a slow phase of a shared machine hits all of them alike (ratios are taken per round)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + runs):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes allocated during ``fn`` beyond those alive at its start (see module doc)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for e in events:
        if e.device_type() == torch.profiler.DeviceType.CPU:
            live += e.nbytes()
            peak = max(peak, live)
    return float(peak)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--batch", type=int, default=64, help="B images")
    parser.add_argument("--samples", type=int, default=20, help="S posterior samples")
    parser.add_argument("--classes", type=int, default=10, help="K classes")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--methods", nargs="*", default=None, help="substrings of method names")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--iba-batch",
        type=int,
        default=32,
        help="digits of the information-bottleneck section (0 skips it)",
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = LeNet5(num_classes=args.classes, dropout=0.25).to(device)
    post = MCDropout(backbone, num_samples=args.samples, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, generator=gen).to(device)
    rows = x.repeat(args.samples, 1, 1, 1)
    labels = torch.randint(0, args.classes, (rows.shape[0],), generator=gen).to(device)

    def train_step() -> None:
        backbone.train()
        backbone.zero_grad(set_to_none=True)
        F.cross_entropy(backbone(rows), labels).backward()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        f"LeNet5, B={args.batch}, S={args.samples}, K={args.classes} -> S*B = {rows.shape[0]} "
        f"rows; median of {args.runs} runs after {args.warmup} warm-up; target: epistemic"
    )

    methods: dict[str, Factory | str] = dict(REGISTRY)
    for label, spec in OPTIONAL.items():
        methods[label] = _optional_factory(*spec)
    if args.methods:
        methods = {
            k: v for k, v in methods.items() if any(m.lower() in k.lower() for m in args.methods)
        }
    notes = [f"{label}: {f}" for label, f in methods.items() if isinstance(f, str)]
    calls: dict[str, Callable[[], object]] = {STEP: train_step}
    for label, factory in methods.items():
        if not isinstance(factory, str):
            method = factory(post, args)
            calls[label] = lambda method=method: method(x, "epistemic")

    times = interleaved_times(calls, device, args.runs, args.warmup)
    memory = {
        label: float("nan") if args.no_memory else peak_memory(fn, device)
        for label, fn in calls.items()
    }
    backbone.zero_grad(set_to_none=True)

    width = max(42, *(len(label) for label in times))
    header = (
        f"| {'method':{width}s} | {'median s':>9s} | {'x train step':>12s} | {'peak MiB':>9s} |"
    )
    print()
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    results: dict[str, float] = {}
    for label, ts in times.items():
        ratio = statistics.median(t / step for t, step in zip(ts, times[STEP], strict=True))
        results[label] = ratio
        print(
            f"| {label:{width}s} | {statistics.median(ts):9.3f} | {ratio:12.2f} | "
            f"{memory[label] / 2**20:9.1f} |"
        )
    for note in notes:
        print(f"note: {note}")
    print("(x train step: median over rounds of method time / training-step time of that round)")

    batched = results.get(BATCHED)
    naive = results.get(NAIVE)
    if batched is not None:
        ratio = batched
        floor = (1 + args.classes) / 3
        print(
            f"\nUA-Backprop (default): {ratio:.2f} training steps (target <= "
            f"{1.5 * floor + 1:.1f}; FLOP floor ~ (1+K)/3 = {floor:.1f}) -> "
            f"{'OK' if ratio <= 1.5 * floor + 1 else 'MISSED'}"
        )
    if batched is not None and naive is not None:
        gain = statistics.median(n / b for n, b in zip(times[NAIVE], times[BATCHED], strict=True))
        print(
            f"batched vs naive (s,i) loop: {gain:.2f}x faster (target >= 5) -> "
            f"{'OK' if gain >= 5 else 'MISSED'}"
        )

    if args.iba_batch:
        # Per-Sample IBA and Readout: their own units, one image at a time and one forward, on
        # real digits (the feature statistics are estimated from mnist5k).
        import iba

        data = iba.MNIST5k(batch_size=128)
        digits = iba.digits(data, args.iba_batch).to(device)
        print(f"\nInformation bottlenecks, B = {args.iba_batch} digits, S = {args.samples}:")
        iba.print_table(iba.measure(post, digits, data, 3, 1, device), args.iba_batch)


if __name__ == "__main__":
    main()
