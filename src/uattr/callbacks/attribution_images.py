"""Heat-map grids of the probe images at validation time: TensorBoard images and PNG files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import nn

from uattr.attribution.registry import check_uncertainty_methods
from uattr.bayes.posterior import check_uncertainty_kind, predictive_distribution
from uattr.callbacks.probe import (
    Probe,
    ProbeCallback,
    Stage,
    build_callback_methods,
    posterior_of,
    probe_uncertainties,
)
from uattr.common import check_positive_int, minmax_scale
from uattr.modes import evaluating

__all__ = ["AttributionImages", "render_grid"]


def render_grid(
    images: torch.Tensor,
    maps: dict[str, torch.Tensor],
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """A matplotlib ``Figure``: one row per image, columns = the input and each method's map.

    ``images`` [N, C, H, W] in [0, 1] (grey for C = 1, RGB for C = 3, else the channel mean);
    ``maps`` ``{method: [N, H, W]}``, each map min-max scaled on its own ("inferno": bright =
    more responsible). Built on a ``Figure`` directly (no pyplot state, no GUI backend).
    """
    from matplotlib.figure import Figure

    n = images.shape[0]
    cols = 1 + len(maps)
    fig = Figure(figsize=(1.6 * cols, 1.6 * n + (0.4 if title else 0.0)), dpi=80)
    axes = fig.subplots(n, cols, squeeze=False)
    pictures = images.detach().float().cpu()
    if pictures.shape[1] == 3:
        pictures = pictures.permute(0, 2, 3, 1).clamp(0, 1).numpy()
        cmap = None
    else:
        pictures = pictures.mean(1).clamp(0, 1).numpy()
        cmap = "gray"
    scaled = {name: minmax_scale(m.detach().float()).cpu().numpy() for name, m in maps.items()}
    for i in range(n):
        axes[i, 0].imshow(pictures[i], cmap=cmap, vmin=0.0, vmax=1.0)
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
        for j, (name, m) in enumerate(scaled.items(), start=1):
            axes[i, j].imshow(m[i], cmap="inferno", vmin=0.0, vmax=1.0)
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
        if i == 0:
            axes[i, 0].set_title("input", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _figure_to_array(fig: Any) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a matplotlib figure (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class AttributionImages(ProbeCallback):
    """A grid of probe images and their uncertainty maps per method, every N validation epochs.

    The first ``num_images`` items of the seeded probe of the validation set (test set in
    ``trainer.test``) and, for each method, its maps of the ``uncertainty`` kind, drawn as one
    figure (rows: images, labelled with label / prediction / uncertainty in nats; columns: the
    input and one map per method, each map min-max scaled). The figure goes

    - to every attached ``TensorBoardLogger`` as an image (``add_image``, tag
      ``<stage>/attributions``, step = global step), and
    - as a PNG file to ``<trainer.log_dir>/attributions/<stage>/epoch_<NNN>.png`` (the first
      logger's directory, e.g. the CSV logger's; the root dir without a logger), so runs with
      the CSV logger alone get images too.

    Only rank zero computes the maps and writes: nothing here is a collective, so other ranks go
    on at once (``trainer.log_dir``, which broadcasts, is read on every rank). Maps are computed on
    the unwrapped ``pl_module.posterior``; train/eval flags are restored.

    Args:
        methods: attribution method names (:data:`uattr.attribution.registry.METHODS`); see
            :func:`~uattr.callbacks.probe.build_callback_methods` for ``"readout"``.
        num_images: rows of the grid (the probe size).
        every_n_epochs: run after validation epochs e with (e + 1) % N == 0 in ``fit``; always in
            ``trainer.validate`` / ``trainer.test``; never in the sanity check.
        uncertainty: the explained uncertainty kind.
        probe_seed: seeds which images are shown (the same every epoch).
        method_kwargs: ``{method name: constructor kwargs}``.
    """

    def __init__(
        self,
        methods: Sequence[str] = ("ua_backprop", "gradient"),
        num_images: int = 8,
        every_n_epochs: int = 5,
        uncertainty: str = "epistemic",
        probe_seed: int = 0,
        method_kwargs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(every_n_epochs, check_positive_int(num_images, "num_images"), probe_seed)
        self.methods, self.method_kwargs = check_uncertainty_methods(
            methods, uncertainty, method_kwargs
        )
        self.num_images = num_images
        self.uncertainty = uncertainty
        self._methods: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {}
        self._built_for: int | None = None
        #: paths of the PNG files written so far (rank zero)
        self.saved: list[Path] = []

    def _build(self, pl_module: LightningModule) -> None:
        posterior = posterior_of(pl_module)
        if self._built_for != id(posterior):
            check_uncertainty_kind(posterior, self.uncertainty)
            self._methods = build_callback_methods(self.methods, pl_module, self.method_kwargs)
            self._built_for = id(posterior)

    def _figure(self, posterior: nn.Module, probe: Probe, device: torch.device, title: str) -> Any:
        x = probe.images.to(device)
        maps = {name: method(x, self.uncertainty) for name, method in self._methods.items()}
        u = probe_uncertainties(posterior, x)[self.uncertainty]
        with evaluating(posterior), torch.no_grad():
            predicted = predictive_distribution(posterior, x).argmax(-1)
        rows = [
            f"y={int(y)} pred={int(p)}\n{self.uncertainty[:3]}={float(v):.3f}"
            for y, p, v in zip(probe.labels, predicted, u, strict=True)
        ]
        return render_grid(x, maps, rows, title)

    def run(self, trainer: Trainer, pl_module: LightningModule, stage: Stage) -> dict[str, float]:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast: every rank
        if not trainer.is_global_zero:
            return {}
        posterior = posterior_of(pl_module)
        self._build(pl_module)
        probe = self.probe(trainer, stage, world_size=1)
        epoch, step = trainer.current_epoch, trainer.global_step
        fig = self._figure(posterior, probe, pl_module.device, f"{stage} epoch {epoch} step {step}")
        array = _figure_to_array(fig)  # rendered once, for the PNG and TensorBoard
        path = log_dir / "attributions" / stage / f"epoch_{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        self.saved.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    f"{stage}/attributions", array, global_step=step, dataformats="HWC"
                )
        return {}
