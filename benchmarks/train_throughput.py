"""Training throughput of BayesianClassifier vs a plain LightningModule, and sample_logits cost.

    python benchmarks/train_throughput.py [--epochs 3] [--repeats 5] [--device cpu|cuda]

Both modules train the same LeNet-5 on the same in-memory mnist5k batches with the same optimiser;
images/s counts only the time inside training batches (a callback times them), the median over
repeats, alternating the two modules so machine noise hits both alike. The target is a ratio
>= 0.9 (see docs/choices_and_timings.md): the Bayesian routine's bookkeeping (input checks,
metrics) must cost little. Then the cost of ``MCDropout.sample_logits`` (S = 20, fixed masks)
as a multiple of one plain forward of the B-image batch and of a plain forward of S*B rows, with
the shared prefix (the default: the layers before the first dropout run on B rows, the rest on
S*B) and without it (``share_prefix=False``: every layer on S*B rows, so about 1 x the S*B-row
forward plus the hooks' overhead).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from uattr.bayes import MCDropout
from uattr.data import MNIST5k
from uattr.lit import BayesianClassifier
from uattr.models import LeNet5


class PlainClassifier(LightningModule):
    """The reference: LeNet-5, cross-entropy, Adam, nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.net = LeNet5()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


class BatchTimer(Callback):
    """Sums the wall time spent inside training batches and counts the images."""

    def __init__(self, device: str) -> None:
        self.device, self.seconds, self.images, self._start = device, 0.0, 0, 0.0

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync()
        if trainer.current_epoch > 0:  # epoch 0 is warm-up
            self.seconds += time.perf_counter() - self._start
            self.images += len(batch[0])


def images_per_second(
    module: LightningModule, loader: DataLoader, epochs: int, device: str
) -> float:
    timer = BatchTimer(device)
    trainer = Trainer(
        accelerator=device,
        devices=1,
        max_epochs=epochs + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, loader)
    return timer.images / timer.seconds


def median_time(fn, repeats: int = 20, device: str = "cpu") -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    data = MNIST5k(batch_size=args.batch_size)
    data.setup("fit")
    x, y = zip(*[data.train_dataset[i] for i in range(len(data.train_dataset))], strict=True)
    dataset = TensorDataset(torch.stack(x), torch.as_tensor(y))

    plain, bayes = [], []
    for repeat in range(args.repeats):
        torch.manual_seed(repeat)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
        plain.append(images_per_second(PlainClassifier(), loader, args.epochs, args.device))
        torch.manual_seed(repeat)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
        module = BayesianClassifier(
            LeNet5(),
            method="mc_dropout",
            num_samples=20,
            optimizer=lambda p: torch.optim.Adam(p, lr=2e-3),
        )
        bayes.append(images_per_second(module, loader, args.epochs, args.device))

    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    backbone = LeNet5().to(device).eval()
    posterior = MCDropout(backbone, num_samples=20, seed=0)
    expanded = MCDropout(backbone, num_samples=20, seed=0, share_prefix=False)
    batch = torch.rand(args.batch_size, 1, 28, 28, device=device)
    big = batch.repeat(20, 1, 1, 1)
    with torch.no_grad():
        t_plain = median_time(lambda: backbone(batch), device=args.device)
        t_big = median_time(lambda: backbone(big), device=args.device)
        t_sample = median_time(lambda: posterior.sample_logits(batch), device=args.device)
        t_expanded = median_time(lambda: expanded.sample_logits(batch), device=args.device)

    p, b = statistics.median(plain), statistics.median(bayes)
    print(
        f"device: {name}; torch {torch.__version__}; batch {args.batch_size}; "
        f"{args.epochs} timed epochs x {args.repeats} repeats (median)"
    )
    print()
    print("| training throughput | images/s |")
    print("|---|---|")
    print(f"| plain LightningModule (LeNet-5) | {p:,.0f} |")
    print(f"| BayesianClassifier (MC dropout, S=20) | {b:,.0f} |")
    print(f"| ratio Bayesian / plain (target >= 0.9) | {b / p:.3f} |")
    print()
    print(f"| inference cost, B = {args.batch_size} | time | multiple |")
    print("|---|---|---|")
    print(f"| plain forward, B rows | {t_plain * 1e3:.2f} ms | 1.00 |")
    print(f"| plain forward, S*B rows | {t_big * 1e3:.2f} ms | {t_big / t_plain:.2f} |")
    for label, t in (("shared prefix", t_sample), ("share_prefix=False", t_expanded)):
        print(
            f"| MCDropout.sample_logits, S=20, {label} | {t * 1e3:.2f} ms | {t / t_plain:.2f} "
            f"({t / t_big:.2f} x the S*B-row forward) |"
        )


if __name__ == "__main__":
    main()
