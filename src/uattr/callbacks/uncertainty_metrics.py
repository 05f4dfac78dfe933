"""OOD detection by uncertainty and the rotation curve, on the probe set, at validation time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torchmetrics
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch import nn

from uattr.bayes.posterior import check_uncertainty_kind
from uattr.callbacks.probe import (
    DEFAULT_CHUNK,
    Probe,
    ProbeCallback,
    Stage,
    build_probe,
    posterior_of,
    probe_uncertainties,
)
from uattr.common import check_positive_int
from uattr.data.perturbations import GaussianNoise, Perturbation, Rotation
from uattr.metrics.ood import OODDetection

__all__ = ["UncertaintyMetrics", "default_ood"]


def default_ood() -> list[Perturbation]:
    """The default OOD probe: each probe image rotated by 90 degrees, then Gaussian noise of std
    0.1 added (seed 0, clipped to [0, 1]). A choice: a covariate shift that a digit classifier
    should flag without any extra data set."""
    return [Rotation(90.0), GaussianNoise(0.1, seed=0)]


def _angle_name(angle: float) -> str:
    return f"{angle:g}"


class UncertaintyMetrics(ProbeCallback):
    """OOD detection by each uncertainty kind, and the rotation curve, every N validation epochs.

    Calibration (ECE, NLL, Brier) and the mean uncertainties of the split are logged by the
    LightningModule itself (:class:`~uattr.lit.ClassifierRoutine`); this callback adds, on a fixed
    seeded probe of the validation set (test set in ``trainer.test``):

    - **OOD detection** per uncertainty kind: in-distribution = the probe, OOD = ``ood`` (the
      probe perturbed by a :class:`~uattr.data.Perturbation` or a list of them applied in order,
      each item seeded by its dataset index; or a probe of the same size drawn with the same seed
      from an OOD data module's val/test split). Score = -uncertainty (higher = more
      in-distribution, :class:`~uattr.metrics.OODDetection`): ``<stage>/ood/<kind>/auroc``,
      ``aupr_in``, ``aupr_out``, ``fpr@95tpr``, ``detection_acc``.
    - **rotation curve**: the mean of each uncertainty kind (nats; vacuity in (0, 1]) over the probe
      rotated by each angle (degrees, counter-clockwise, :class:`~uattr.data.Rotation`):
      ``<stage>/rotation/<kind>@<angle>``.

    Scores live in torchmetrics states (``cat`` for the OOD scores, sum/count for the means),
    synced across DDP ranks, each rank scoring its shard ``rank::world_size`` of the probe with
    the unwrapped ``pl_module.posterior``: the numbers equal one process's on the same probe.

    Cost per run: one forward of the probe for each non-zero angle, one for the probe itself and
    one for the OOD images (``benchmarks/callbacks.py`` reports its share of ``fit``).

    Args:
        kinds: uncertainty kinds to evaluate; ``None`` takes ``pl_module.uncertainty_kinds``
            (total, aleatoric, epistemic; plus vacuity for an evidential model).
        ood: ``"default"`` (:func:`default_ood`: rotation 90 then Gaussian noise 0.1), a
            :class:`~uattr.data.Perturbation`, a list of them (composed in order), a
            ``LightningDataModule`` (its images must have the probe's shape; its data must be
            available locally: the callback calls ``setup`` only), or ``None`` to skip OOD.
        rotation_angles: angles of the rotation curve (empty: no curve). 0 is the probe itself.
        every_n_epochs, probe_size, probe_seed: see :class:`~uattr.callbacks.probe.ProbeCallback`.
        batch_size: images per forward (:data:`~uattr.callbacks.probe.DEFAULT_CHUNK`).
    """

    def __init__(
        self,
        kinds: Sequence[str] | None = None,
        ood: Perturbation
        | Sequence[Perturbation]
        | LightningDataModule
        | Literal["default"]
        | None = "default",
        rotation_angles: Sequence[float] = (0, 45, 90, 135, 180),
        every_n_epochs: int = 5,
        probe_size: int = 64,
        probe_seed: int = 0,
        batch_size: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__(every_n_epochs, probe_size, probe_seed)
        if isinstance(kinds, str):
            kinds = (kinds,)
        self.kinds = None if kinds is None else tuple(kinds)
        if self.kinds is not None and not self.kinds:
            raise ValueError("kinds is empty: give uncertainty kinds, or None for the module's.")
        if isinstance(ood, str):
            if ood != "default":
                raise ValueError(
                    f"ood must be 'default', a Perturbation, a list of them, a "
                    f"LightningDataModule or None; got {ood!r}."
                )
            ood = default_ood()
        elif isinstance(ood, Perturbation):
            ood = [ood]
        elif ood is not None and not isinstance(ood, LightningDataModule):
            ood = list(ood)
            bad = [p for p in ood if not callable(p)]
            if not ood or bad:
                raise TypeError(f"ood perturbations must be Perturbation objects, got {ood!r}.")
        self.ood = ood
        self.rotation_angles = tuple(float(a) for a in rotation_angles)
        if len({_angle_name(a) for a in self.rotation_angles}) != len(self.rotation_angles):
            raise ValueError(f"rotation_angles must be distinct, got {list(rotation_angles)}.")
        if self.ood is None and not self.rotation_angles:
            raise ValueError("ood is None and rotation_angles is empty: nothing to compute.")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self._rotations = {a: Rotation(a) for a in self.rotation_angles}
        self.metrics = nn.ModuleDict()
        self._built_for: tuple[str, ...] | None = None
        self._ood_probes: dict[tuple[str, int], Probe] = {}

    def _kinds(self, pl_module: LightningModule, posterior: nn.Module) -> tuple[str, ...]:
        kinds = self.kinds or tuple(getattr(pl_module, "uncertainty_kinds", ()))
        if not kinds:
            raise ValueError(
                f"{type(pl_module).__name__} declares no uncertainty_kinds: pass kinds=[...]."
            )
        for kind in kinds:
            check_uncertainty_kind(posterior, kind)
        return kinds

    def _setup(self, kinds: tuple[str, ...], device: torch.device) -> None:
        if self._built_for != kinds:
            metrics = nn.ModuleDict()
            for kind in kinds:
                # ModuleDict keys may not contain "."; angles are indexed by position instead.
                metrics[kind] = nn.ModuleDict(
                    {
                        "ood": OODDetection(),
                        "rotation": nn.ModuleList(
                            torchmetrics.MeanMetric().set_dtype(torch.float64)
                            for _ in self.rotation_angles
                        ),
                    }
                )
            self.metrics = metrics
            self._built_for = kinds
        self.metrics.to(device)

    def _ood_images(
        self, trainer: Trainer, stage: Stage, local: Probe, probe: Probe
    ) -> torch.Tensor:
        """This rank's OOD images (CPU)."""
        if isinstance(self.ood, LightningDataModule):
            key = (stage, trainer.world_size)
            if key not in self._ood_probes:
                self.ood.setup("validate" if stage == "val" else "test")
                dataset = getattr(
                    self.ood, "val_dataset" if stage == "val" else "test_dataset", None
                )
                if dataset is None:
                    raise RuntimeError(
                        f"the OOD data module {type(self.ood).__name__} has no "
                        f"{'val' if stage == 'val' else 'test'}_dataset after setup()."
                    )
                with torch.inference_mode(False):
                    ood_probe = build_probe(
                        dataset, len(probe), self.probe_seed, trainer.world_size
                    )
                if ood_probe.images.shape[1:] != probe.images.shape[1:]:
                    raise ValueError(
                        f"the OOD data module {type(self.ood).__name__} yields images of shape "
                        f"{tuple(ood_probe.images.shape[1:])}, the in-distribution data "
                        f"{tuple(probe.images.shape[1:])}; OOD images must match the model's input."
                    )
                self._ood_probes[key] = ood_probe
            return self._ood_probes[key].shard(trainer.global_rank, trainer.world_size).images
        x = local.images
        for perturbation in self.ood:
            x = perturbation(x, index=local.indices)
            if isinstance(x, tuple):  # AnomalyPatch also returns boxes
                x = x[0]
        return x

    def run(self, trainer: Trainer, pl_module: LightningModule, stage: Stage) -> dict[str, float]:
        posterior = posterior_of(pl_module)
        device = pl_module.device
        kinds = self._kinds(pl_module, posterior)
        self._setup(kinds, device)
        probe = self.probe(trainer, stage)
        local = probe.shard(trainer.global_rank, trainer.world_size)
        u_in = probe_uncertainties(posterior, local.images.to(device), self.batch_size)
        if self.ood is not None:
            x_out = self._ood_images(trainer, stage, local, probe).to(device)
            u_out = probe_uncertainties(posterior, x_out, self.batch_size)
            for kind in kinds:
                self.metrics[kind]["ood"].update(-u_in[kind], -u_out[kind])
        for i, angle in enumerate(self.rotation_angles):
            if angle % 360 == 0:
                u = u_in
            else:
                u = probe_uncertainties(
                    posterior, self._rotations[angle](local.images).to(device), self.batch_size
                )
            for kind in kinds:
                self.metrics[kind]["rotation"][i].update(u[kind])
        logs: dict[str, float] = {}
        for kind in kinds:
            if self.ood is not None:
                for key, value in self.metrics[kind]["ood"].compute().items():
                    logs[f"{stage}/ood/{kind}/{key}"] = float(value)
                self.metrics[kind]["ood"].reset()
            for angle, mean in zip(
                self.rotation_angles, self.metrics[kind]["rotation"], strict=True
            ):
                logs[f"{stage}/rotation/{kind}@{_angle_name(angle)}"] = float(mean.compute())
                mean.reset()
        return logs
