"""Cost of the validation-time callbacks: ``fit`` of the default experiment with vs without them.

    python benchmarks/callbacks.py [--config configs/mnist5k_lenet_mcdropout.yaml] [--repeats 3]
                                   [-- extra CLI overrides, e.g. --trainer.max_epochs=5]

Each arm is ``python train.py fit --config <config>`` as the config ships it (loggers, checkpoint
and progress-bar callbacks included), in a fresh subprocess and a fresh temporary directory;
the "without" arm drops the uattr callbacks (:class:`uattr.callbacks.probe.ProbeCallback`
subclasses) from the trainer after the CLI built it, so everything else is identical. Only
``trainer.fit`` is timed (wall clock and this process's CPU time), not the start-up. Arms alternate
(without, with, with, without, ...) and the fastest run of each arm is compared: other load on
the machine only ever adds time, so the minimum is the best estimate of the undisturbed cost
(``timeit``'s convention). Every hook of every uattr callback is timed, giving each callback's
share.

The target is a wall-time ratio with/without <= 1.5 for the default callback settings (see
docs/choices_and_timings.md). On a shared machine the wall clock is noisy; the CPU-time ratio is
printed beside it as a cross-check; the in-run ratio (fit / (fit - time inside the uattr hooks),
same run) is a third.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "mnist5k_lenet_mcdropout.yaml"


def _timed(fn, record: dict[str, float], key: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record[key] = record.get(key, 0.0) + time.perf_counter() - start

    return wrapper


def worker(arm: str, config: str, extra: list[str]) -> None:
    """One arm, in this process: build through the CLI, time ``trainer.fit``, print JSON."""
    from lightning.pytorch import Callback

    from uattr.callbacks.probe import ProbeCallback
    from uattr.cli import UattrCLI

    cli = UattrCLI(args=["--config", config, *extra], run=False)
    trainer = cli.trainer
    ours = [cb for cb in trainer.callbacks if isinstance(cb, ProbeCallback)]
    hooks: dict[str, float] = {}
    if arm == "without":
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, ProbeCallback)]
    else:
        if not ours:
            raise SystemExit(f"{config} configures no uattr callbacks: nothing to benchmark.")
        names = [n for n in dir(Callback) if n.startswith("on_") or n in ("setup", "teardown")]
        for cb in ours:
            for name in names:  # the hooks the callback overrides (the others are no-ops)
                if getattr(type(cb), name) is not getattr(Callback, name):
                    setattr(cb, name, _timed(getattr(cb, name), hooks, type(cb).__name__))
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(cli.model, cli.datamodule)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for cb in ours if arm == "with" else []:
        hooks[f"{type(cb).__name__}#runs"] = cb.num_runs
    print(
        "BENCH "
        + json.dumps(
            {"arm": arm, "wall": wall, "cpu": cpu, "hooks": hooks, "epochs": trainer.current_epoch}
        )
    )


def run_arm(arm: str, config: Path, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"uattr_bench_{arm}_") as tmp:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        result = subprocess.run(
            [sys.executable, __file__, "--worker", arm, "--config", str(config), "--", *extra],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        raise SystemExit(f"the {arm} arm failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("BENCH "))
    return json.loads(line[len("BENCH ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm (fastest is used)")
    parser.add_argument("--worker", choices=("with", "without"), help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="CLI overrides after --")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, str(args.config), args.extra)
        return

    runs: dict[str, list[dict]] = {"without": [], "with": []}
    for r in range(args.repeats):
        for arm in ("without", "with") if r % 2 == 0 else ("with", "without"):
            runs[arm].append(run_arm(arm, args.config.resolve(), args.extra))
            print(
                f"  run {r + 1}/{args.repeats} {arm:>7}: fit {runs[arm][-1]['wall']:.1f} s wall, "
                f"{runs[arm][-1]['cpu']:.1f} s CPU",
                flush=True,
            )

    base, best = (min(runs[arm], key=lambda run: run["wall"]) for arm in ("without", "with"))
    base_wall, base_cpu, wall, cpu = base["wall"], base["cpu"], best["wall"], best["cpu"]
    print(
        f"\nfit of {args.config.name} {' '.join(args.extra)} "
        f"({best['epochs']} epochs, fastest of {args.repeats} runs per arm)"
    )
    print(f"{'arm':<28}{'wall [s]':>10}{'CPU [s]':>10}")
    print(f"{'without uattr callbacks':<28}{base_wall:>10.1f}{base_cpu:>10.1f}")
    print(f"{'with default callbacks':<28}{wall:>10.1f}{cpu:>10.1f}")
    ratio = wall / base_wall
    print(
        f"{'ratio (target <= 1.5)':<28}{ratio:>10.2f}{cpu / base_cpu:>10.2f}   "
        f"{'PASS' if ratio <= 1.5 else 'FAIL'}"
    )
    # The same ratio inside the "with" run, fit / (fit - time in the uattr hooks): immune to the
    # load changing between runs, blind to any cost the callbacks cause outside their hooks.
    hooks = {k: v for k, v in best["hooks"].items() if "#" not in k}
    print(f"{'in-run ratio (fit / fit - hooks)':<38}{wall / (wall - sum(hooks.values())):>10.2f}")
    print(f"\n{'callback (hooks timed)':<28}{'wall [s]':>10}{'runs':>8}{'share':>9}")
    for name, seconds in sorted(hooks.items()):
        count = best["hooks"][f"{name}#runs"]
        print(f"{name:<28}{seconds:>10.1f}{count:>8}{seconds / base_wall:>9.1%}")
    print("share = hook wall time (in the fastest 'with' run) / fastest fit without callbacks")


if __name__ == "__main__":
    main()
