"""The evaluation report's figures, drawn with matplotlib's Agg canvas (no display, no global
backend switch): map grids, uncertainty-reduction and degradation curves, a reliability diagram
and the ablation's bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from uattr.report.markdown import percent

__all__ = [
    "ablation_bars",
    "blurring_curves_figure",
    "degradation_curves_figure",
    "figure",
    "map_grid",
    "reliability_diagram",
]


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def map_grid(
    images: torch.Tensor,
    maps: dict[str, torch.Tensor],
    labels: dict[str, str],
    path: Path,
    title: str,
    boxes: torch.Tensor | None = None,
) -> Path:
    from matplotlib.patches import Rectangle

    n, cols = images.shape[0], 1 + len(maps)
    fig = figure(1.3 * cols, 1.35 * n + 0.6)
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        img = images[i].permute(1, 2, 0).numpy()
        axes[i, 0].imshow(
            img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1
        )
        for j, (key, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(m[i].float().numpy(), cmap="inferno")
            if i == 0:
                axes[i, j].set_title(
                    labels.get(key, key).split(" (")[0].replace(", ", "\n"), fontsize=6
                )
        if boxes is not None:
            x0, y0, x1, y1 = boxes[i].tolist()
            for j in range(cols):
                axes[i, j].add_patch(
                    Rectangle(
                        (x0 - 0.5, y0 - 0.5),
                        x1 - x0,
                        y1 - y0,
                        fill=False,
                        edgecolor="cyan",
                        linewidth=0.8,
                    )
                )
    axes[0, 0].set_title("input", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def blurring_curves_figure(
    curves: dict[str, dict],
    labels: dict[str, str],
    fractions: Sequence[float],
    kind: str,
    path: Path,
) -> Path:
    p_min, p_max = min(fractions), max(fractions)
    panels = [
        (f"budget@{percent(p_max)}", f"budget reading (up to {percent(p_max)} of the pixels)"),
        (f"step@{percent(p_min)}", f"step reading ({percent(p_min)} of the pixels per step)"),
    ]
    fig = figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for ax, (name, title) in zip(axes, panels, strict=True):
        for key, c in curves.items():
            frac, r = c[name]
            ax.plot(
                frac.numpy() * 100,
                r.numpy(),
                label=labels.get(key, key),
                linewidth=1.2,
                linestyle="--" if key == "random" else "-",
            )
        ax.set_xlabel("pixels blurred (%)")
        ax.set_ylabel(f"mean remaining {kind} uncertainty U_n / U_0")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    return path


def degradation_curves_figure(curves: dict[str, dict], labels: dict[str, str], path: Path) -> Path:
    fig = figure(7, 4.5)
    ax = fig.subplots()
    for i, (key, c) in enumerate(curves.items()):
        color = f"C{i % 10}"
        frac, morf = c["morf"]
        ax.plot(frac.numpy(), morf.numpy(), color=color, label=labels.get(key, key))
        frac, lerf = c["lerf"]
        ax.plot(frac.numpy(), lerf.numpy(), color=color, linestyle="--")
    ax.set_xlabel("fraction of tiles replaced (solid: MoRF, dashed: LeRF)")
    ax.set_ylabel("normalised class probability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    return path


def reliability_diagram(
    probs: torch.Tensor, labels: torch.Tensor, path: Path, bins: int = 15
) -> Path:
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1], right=True)
    fig = figure(4.5, 4.5)
    ax = fig.subplots()
    centers, accs, counts = [], [], []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            centers.append(float((edges[b] + edges[b + 1]) / 2))
            accs.append(float(correct[sel].mean()))
            counts.append(int(sel.sum()))
    ax.bar(centers, accs, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    for x, y, c in zip(centers, accs, counts, strict=True):
        ax.text(x, y + 0.01, str(c), ha="center", fontsize=5)
    ax.set_xlabel("confidence (max posterior-predictive probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_title("reliability diagram (test split; counts above bars)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return path


def ablation_bars(
    names: Sequence[str],
    means: Sequence[float],
    ses: Sequence[float],
    selected: Sequence[bool],
    xlabel: str,
    path: Path,
) -> Path:
    """Horizontal bars (mean ± se) of the ablation's settings; the selected ones in red."""
    fig = figure(7, 0.35 * len(names) + 1.2)
    ax = fig.subplots()
    ax.barh(range(len(names)), means, xerr=ses, color=["C3" if s else "C0" for s in selected])
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    return path
