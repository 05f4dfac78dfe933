"""The mitigation table (Wang et al., CVPR 2023): fine-tune with attention from each map.

    python train.py fit --config configs/mnist5k_lenet_mcdropout.yaml        # the starting model
    python benchmarks/mitigation.py --base checkpoints/mnist5k_lenet_mcdropout/last.ckpt \\
        --out mitigation_results [--seeds 0 1 2] [--protocol 5:1e-4 --protocol 5:1e-3]

Rows: no attention (the control), attention from UA-Backprop, Gradient, SmoothGrad, FullGrad, IG,
Blur IG. Columns: accuracy and NLL (nats, the S = 20 MC-dropout predictive) on the test split and on
its high-uncertainty half (the 250 test digits with the highest total predictive uncertainty of the
*starting* model on clean images: the same digits for every row, so rows are paired). Each cell is
mean ± sample std over the fine-tuning seeds, and ``d`` columns give the per-seed paired difference
to the no-attention row (mean ± std).

Protocol (every choice below is a cost decision for a 2-core CPU, stated in docs/mitigation.md):

- The starting model is the embedded default's checkpoint; attention is computed by
  :class:`uattr.callbacks.attention.AttentionMitigation` in ``attention_model="frozen"`` mode (a
  frozen copy of the starting model, so A(x) is a fixed function of x and is computed once per
  image and cached in ``--cache``), with the callback's defaults (total uncertainty, ``|maps|``,
  ``apply="scale"``) and ``--attention-samples`` of the posterior's fixed dropout samples (the first
  ones: MC-dropout masks do not depend on S).
- Fine-tuning: ``--train-subset`` class-balanced training digits, attended like the test digits,
  ``BayesianClassifier.training_loss`` (cross-entropy with fresh dropout) and Adam, for each
  ``--protocol EPOCHS:LR``; the seed sets the shuffling and the fresh dropout. The same loop with
  identity attention is the no-attention control.
- Also reported: "test-time only" (the starting model evaluated on attended test digits, no
  fine-tuning), which needs no seeds.

Variants (docs/mitigation.md "What we tried"): ``--apply suppress``, ``--uncertainty epistemic``,
``--from-scratch`` (retrain from a fresh seeded initialisation on the attended digits), and
``--current UA-Backprop ...`` (extra rows whose attention comes from the model being fine-tuned,
recomputed every step, as the callback's default ``attention_model="current"``). ``--cache`` shares
the maps between runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from uattr.bayes import decompose_logits
from uattr.callbacks.attention import AttentionMitigation, attend
from uattr.cli import instantiate_from_config
from uattr.lit import load_checkpoint, saved_config
from uattr.metrics.calibration import negative_log_likelihood

#: row label -> (registry name, constructor kwargs); step counts are cut for the CPU (see docstring)
METHODS: dict[str, tuple[str, dict]] = {
    "UA-Backprop": ("ua_backprop", {}),
    "Gradient": ("gradient", {}),
    "SmoothGrad": ("smoothgrad", {"num_samples": 10, "internal_batch_size": 256}),
    "FullGrad": ("fullgrad", {}),
    "IG": ("integrated_gradients", {"steps": 16, "internal_batch_size": 256}),
    "Blur IG": ("blur_ig", {"steps": 16, "internal_batch_size": 256}),
}
NONE = "no attention"


def balanced_subset(labels: torch.Tensor, size: int, num_classes: int, seed: int) -> torch.Tensor:
    """``size`` indices, ``size / num_classes`` per class, drawn with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    per_class = size // num_classes
    picks = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([it[0] for it in items])
    return images, torch.stack([torch.as_tensor(it[1]) for it in items])


@torch.no_grad()
def predict(module, x: torch.Tensor, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs [N, K], total uncertainty [N]) of the module's posterior predictive."""
    module.eval()
    probs, total = [], []
    for i in range(0, len(x), batch):
        logits = module.posterior.sample_logits(x[i : i + batch])
        probs.append(logits.softmax(-1).mean(0))
        total.append(decompose_logits(logits).total)
    return torch.cat(probs), torch.cat(total)


def scores(probs: torch.Tensor, y: torch.Tensor, high: torch.Tensor) -> dict[str, float]:
    out = {}
    for name, idx in (("all", slice(None)), ("high", high)):
        p, t = probs[idx], y[idx]
        out[f"acc_{name}"] = float((p.argmax(1) == t).float().mean())
        out[f"nll_{name}"] = float(negative_log_likelihood(p, t))
    return out


def fine_tune(base_module, state, x, y, epochs: int, lr: float, seed: int, batch: int = 64,
              callback: AttentionMitigation | None = None):
    """``epochs`` of Adam on (x, y) from ``state``: the step of BayesianClassifier.training_step.

    With a ``callback`` (``attention_model="current"``) every batch is attended by the model being
    fine-tuned, as the callback does in ``on_train_batch_start``.
    """
    module = copy.deepcopy(base_module)
    module.load_state_dict(state)
    torch.manual_seed(seed)  # fresh dropout masks
    gen = torch.Generator().manual_seed(seed)  # shuffling
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb = x[idx] if callback is None else callback.attended(module, x[idx])
            loss, _ = module.training_loss(xb, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return module


def maps_for(callback, module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([callback.attention_maps(module, x[i : i + batch])
                      for i in range(0, len(x), batch)])


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def table(results: dict, rows: list[str], seeds: list[int]) -> str:
    cols = [("acc_all", 100, 2, "Acc % (test)"), ("nll_all", 1, 3, "NLL (test)"),
            ("acc_high", 100, 2, "Acc % (high-U half)"), ("nll_high", 1, 3, "NLL (high-U half)")]
    head = "| attention | " + " | ".join(c[3] for c in cols) + " | d Acc % (test) | d NLL (test) |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for row in rows:
        runs = [results[row][str(s)] for s in seeds]
        cells = [fmt([r[k] for r in runs], sc, d) for k, sc, d, _ in cols]
        ref = [results[NONE][str(s)] for s in seeds]
        d_acc = fmt([r["acc_all"] - q["acc_all"] for r, q in zip(runs, ref, strict=True)], 100, 2)
        d_nll = fmt([r["nll_all"] - q["nll_all"] for r, q in zip(runs, ref, strict=True)], 1, 3)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {d_acc} | {d_nll} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the starting checkpoint (train.py .ckpt)")
    parser.add_argument("--out", default="mitigation_results", help="folder for the results")
    parser.add_argument("--cache", default=None, help="folder for the maps (default: --out)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocol", action="append", default=None,
                        help="EPOCHS:LR of a fine-tuning (repeatable; default 5:1e-4)")
    parser.add_argument("--train-subset", type=int, default=1000)
    parser.add_argument("--from-scratch", action="store_true",
                        help="retrain from a fresh initialisation (seeded) instead of fine-tuning "
                             "the starting model; the maps still come from the starting model")
    parser.add_argument("--attention-samples", type=int, default=5)
    parser.add_argument("--uncertainty", default="total")
    parser.add_argument("--apply", default="scale", choices=["scale", "raw", "suppress"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--current", nargs="*", default=[], choices=list(METHODS),
                        help="also fine-tune with attention from the model being fine-tuned "
                             "(attention_model='current', recomputed every step) for these maps")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    protocols = [(int(e), float(lr))
                 for e, lr in (p.split(":") for p in args.protocol or ["5:1e-4"])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache) if args.cache else out
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    checkpoint = load_checkpoint(args.base)
    module, data = instantiate_from_config(saved_config(checkpoint, args.base))
    state = checkpoint["state_dict"]
    module.load_state_dict(state)
    data.setup("fit")
    x_train, y_train = stack(data.train_dataset)
    x_test, y_test = stack(data.test_dataset)
    subset = balanced_subset(y_train, args.train_subset, data.num_classes, seed=0)
    x_train, y_train = x_train[subset], y_train[subset]

    _, u_base = predict(module, x_test)
    high = u_base.argsort(descending=True)[: len(x_test) // 2]
    results: dict = {"test-time only": {}}
    timings: dict[str, float] = {}
    attended: dict[str, tuple[torch.Tensor, torch.Tensor]] = {NONE: (x_train, x_test)}
    for row in args.methods:
        name, kwargs = METHODS[row]
        tag = f"{name}_{args.uncertainty}_S{args.attention_samples}_n{args.train_subset}"
        cache = cache_dir / f"maps_{tag}.pt"
        callback = AttentionMitigation(name, args.uncertainty, kwargs, apply=args.apply,
                                       attention_model="frozen",
                                       attention_samples=args.attention_samples)
        if cache.is_file():
            maps = torch.load(cache, weights_only=True)
        else:
            t0 = time.perf_counter()
            maps = {"train": maps_for(callback, module, x_train),
                    "test": maps_for(callback, module, x_test)}
            timings[row] = time.perf_counter() - t0
            torch.save(maps, cache)
        attended[row] = (attend(x_train, maps["train"], args.apply),
                         attend(x_test, maps["test"], args.apply))
        probs, _ = predict(module, attended[row][1])
        results["test-time only"][row] = scores(probs, y_test, high)
        print(f"maps {row}: {timings.get(row, 0):.0f}s; "
              f"test-time only {results['test-time only'][row]}", flush=True)
    probs, _ = predict(module, x_test)
    results["test-time only"][NONE] = scores(probs, y_test, high)

    def start(seed: int) -> dict:
        """The weights a run starts from: the starting model's, or a fresh seeded initialisation."""
        if not args.from_scratch:
            return state
        torch.manual_seed(10_000 + seed)
        fresh, _ = instantiate_from_config(saved_config(checkpoint, args.base))
        return fresh.state_dict()

    rows = [NONE, *args.methods]
    current = {f"{row} (current model)": row for row in args.current}
    report = [f"starting model {args.base}; attention {args.uncertainty} uncertainty, "
              f"apply={args.apply}, S'={args.attention_samples}; fine-tuning on "
              f"{args.train_subset} training digits; seeds {args.seeds}", ""]
    report[0] += "; retrained from scratch" if args.from_scratch else ""
    report.append("test-time only (starting model on attended test digits):")
    report.append("| attention | Acc % | NLL | Acc % high-U | NLL high-U |\n|---|---|---|---|---|")
    for row in rows:
        r = results["test-time only"][row]
        report.append(f"| {row} | {100 * r['acc_all']:.2f} | {r['nll_all']:.3f} | "
                      f"{100 * r['acc_high']:.2f} | {r['nll_high']:.3f} |")
    for epochs, lr in protocols:
        key = f"{'retrain' if args.from_scratch else 'fine-tune'} {epochs} epochs lr {lr:g}"
        results[key] = {}
        t0 = time.perf_counter()
        for row in rows:
            results[key][row] = {}
            for seed in args.seeds:
                tuned = fine_tune(module, start(seed), attended[row][0], y_train, epochs, lr, seed)
                probs, _ = predict(tuned, attended[row][1])
                results[key][row][str(seed)] = scores(probs, y_test, high)
            print(f"{key} {row}: {results[key][row]}", flush=True)
        for label, row in current.items():
            name, kwargs = METHODS[row]
            callback = AttentionMitigation(name, args.uncertainty, kwargs, apply=args.apply,
                                           attention_samples=args.attention_samples)
            results[key][label] = {}
            t1 = time.perf_counter()
            for seed in args.seeds:
                tuned = fine_tune(module, start(seed), x_train, y_train, epochs, lr, seed,
                                  callback=callback)
                x_att = torch.cat([callback.attended(tuned, x_test[i : i + 64])
                                   for i in range(0, len(x_test), 64)])
                probs, _ = predict(tuned, x_att)
                results[key][label][str(seed)] = scores(probs, y_test, high)
            timings[f"{key} {label}"] = time.perf_counter() - t1
            print(f"{key} {label}: {results[key][label]}", flush=True)
        timings[key] = time.perf_counter() - t0
        report += ["", f"{key} (mean ± std over seeds {args.seeds}):",
                   table(results[key], [*rows, *current], args.seeds)]
    timings["total"] = time.perf_counter() - started
    report += ["", "wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    text = "\n".join(report)
    print(text)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results,
                                                  "timings_s": timings}, indent=1))
    (out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
