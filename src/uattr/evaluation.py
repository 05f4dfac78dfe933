"""The evaluation suite behind ``evaluate.py``: rebuild a run from its checkpoint, test it, report.

:func:`evaluate_checkpoint` runs, on the checkpoint's data module:

1. predictive quality on the test split: accuracy, NLL, ECE, Brier, mean uncertainties;
2. OOD detection of the test split against perturbed copies of it (rotation 90 and 180, Gaussian
   noise, Gaussian blur), with each uncertainty kind as the score;
3. (``ablation``) UA-Backprop's open choices (psi form, tau2, tau1, bias terms) scored on the
   VALIDATION split by MURR@2% of the headline uncertainty (:func:`ablate_ua_backprop`);
4. the blurring test (MURR / AUC-URR, both readings of "2% / 5%") of every attribution method
   for each uncertainty kind, on test images at or above the median of that uncertainty;
5. the anomaly test: a noise patch pasted into test digits, maps of the headline uncertainty
   (class-only methods: of the class the posterior mean predicts for the patched digit), box
   IoU / ADA / pointing game / bounding-box ratio;
6. the degradation test (MoRF / LeRF) of class maps for the predicted class;

then writes ``metrics.json``, ``report.md`` and PNG figures (:mod:`uattr.report`).

Every protocol choice lives in :class:`EvaluationSettings` and is recorded in ``metrics.json``. The
same images, fixed posterior samples and protocol serve every method; nothing is tuned on the
test split. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from uattr.attribution.base import Attribution
from uattr.attribution.registry import CLASS_ONLY_METHODS, METHODS, build_method
from uattr.bayes.posterior import (
    EVIDENTIAL_UNCERTAINTY_KINDS,
    UNCERTAINTY_KINDS,
    posterior_kind,
    predict,
    uncertainty,
)
from uattr.cli import instantiate_from_config
from uattr.data.perturbations import (
    AnomalyPatch,
    GaussianBlur,
    GaussianNoise,
    Perturbation,
    Rotation,
)
from uattr.lit.checkpoint import load_checkpoint, saved_config
from uattr.metrics import (
    AnomalyLocalization,
    BlurringTest,
    BoundingBoxRatio,
    Degradation,
    blurring_curves,
    bounding_box_ratio,
    brier_score,
    dice_iou_thresholded,
    expected_calibration_error,
    negative_log_likelihood,
    ood_detection,
)
from uattr.metrics.blurring import _count_grid
from uattr.modes import evaluating

__all__ = [
    "ABLATION_GRIDS",
    "ANOMALY_CLASS_TARGET",
    "CLASS_ONLY_METHODS",
    "EvaluationSettings",
    "MethodRow",
    "ablate_ua_backprop",
    "blur_scores_per_image",
    "default_methods",
    "evaluate_checkpoint",
    "load_readout",
    "rebuild_from_checkpoint",
    "run_suite",
]

# CLASS_ONLY_METHODS (from the registry) skip the blurring test, and in the anomaly test they map
# the class the posterior mean predicts for the patched image.
#: What the class-only rows of the anomaly test explain (recorded in ``metrics.json``).
ANOMALY_CLASS_TARGET = "class predicted on the patched image (posterior mean)"
#: Rows whose bbox ratios the anomaly test also compares image by image (the IBA paper's claim).
ANOMALY_PAIRS = (("per_sample_iba", "gradcam"), ("readout", "gradcam"))
#: Table order of the registry's methods.
METHOD_ORDER = (
    "ua_backprop",
    "gradient",
    "smoothgrad",
    "integrated_gradients",
    "blur_ig",
    "fullgrad",
    "gradcam",
    "counterfactual_cam",
    "contrast_cam",
    "per_sample_iba",
    "readout",
    "random",
)
LABELS = {
    "ua_backprop": "UA-Backprop",
    "gradient": "Gradient",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated Gradients",
    "blur_ig": "Blur IG",
    "fullgrad": "FullGrad",
    "gradcam": "Grad-CAM",
    "counterfactual_cam": "Counterfactual CAM",
    "contrast_cam": "Contrast CAM",
    "per_sample_iba": "Per-Sample IBA",
    "readout": "Readout IBA",
    "random": "Random map",
}
#: UA-Backprop's constructor defaults, the "default setting" row.
UA_DEFAULT = {"psi": "softmax", "tau2": 1.0, "tau1": 0.1, "bias_terms": True}

#: UA-Backprop ablation grids, searched in three stages (see :func:`ablate_ua_backprop`):
#: (psi, tau2) pairs with tau1 = 0.1 and bias terms on, then tau1, then the bias terms.
ABLATION_GRIDS: dict[str, dict[str, tuple]] = {
    "full": {
        "psi_tau2": (
            ("softmax", 0.1), ("softmax", 0.3), ("softmax", 1.0), ("softmax", 3.0),
            ("power", 0.5), ("power", 1.0), ("power", 2.0),
        ),
        "tau1": (0.0, 0.1, 1.0),
        "bias_terms": (True, False),
    },
    "quick": {
        "psi_tau2": (("softmax", 1.0), ("power", 1.0)),
        "tau1": (0.1, 1.0),
        "bias_terms": (True, False),
    },
}


@dataclass(frozen=True)
class EvaluationSettings:
    """Sizes and protocol choices of one evaluation (all recorded in ``metrics.json``).

    The defaults size a full run of the embedded default (mnist5k, LeNet-5, MC dropout S = 20) to
    well under 15 minutes on 2 CPU cores; :meth:`quick` is a smoke-test setting.

    Args:
        methods: registry names to run; ``None`` = every method applicable to the model
            (:func:`default_methods`).
        blur_images: test images of the blurring test for the headline uncertainty (a seeded
            random subset of the test images at or above that uncertainty's median).
        blur_images_other: the same for the other uncertainty kinds (extra columns).
        anomaly_images: patched test images whose headline uncertainty the patch raised.
        degradation_images: test images of the MoRF / LeRF test (seeded random subset).
        ablation: run the UA-Backprop ablation on the validation split and add its selected
            setting as a row of every test table.
        ablation_images: validation images of the ablation (above-median subset, as the test).
        ablation_grid: ``"full"`` or ``"quick"`` (:data:`ABLATION_GRIDS`).
        calibration_images: test images for calibration and OOD (``None`` = all).
        patch_size: anomaly patch side (``None`` = image side // 4: 7 on MNIST, 8 on CIFAR).
        patch_fill: anomaly patch content (``"noise"``, ``"white"`` or a grey level).
        blur_sigma: blurring-test Gaussian sigma in pixels (``None`` = 1.5 for one-channel
            images, Perez et al.'s MNIST value; 1.0 for RGB; UNCONFIRMED for UA-Backprop).
        fractions: the "2% / 5%" of MURR and AUC-URR.
        degradation_tile: MoRF / LeRF tile side in pixels.
        degradation_steps: MoRF / LeRF evaluation points.
        ood_noise_std: std of the Gaussian-noise OOD set (pixels in [0, 1]).
        ood_blur_sigma: sigma of the blurred OOD set (pixels).
        attribution_batch: images per attribution call.
        metric_batch: perturbed copies per model call inside the metrics.
        iba_samples: training images for Per-Sample IBA's feature statistics.
        grid_images: images per map-grid figure.
        seed: seeds every subset, the patch and the metrics' tie-breaks.
        progress: show a progress bar (rich, on stderr).
        readout: path of a trained readout-bottleneck checkpoint, trained on the classifier
            evaluated (adds "readout" to the anomaly and degradation tests).
    """

    methods: tuple[str, ...] | None = None
    blur_images: int = 50
    blur_images_other: int = 20
    anomaly_images: int = 40
    degradation_images: int = 20
    ablation: bool = True
    ablation_images: int = 40
    ablation_grid: str = "full"
    calibration_images: int | None = None
    patch_size: int | None = None
    patch_fill: str | float = "noise"
    blur_sigma: float | None = None
    fractions: tuple[float, ...] = (0.02, 0.05)
    degradation_tile: int = 4
    degradation_steps: int = 100
    ood_noise_std: float = 0.5
    ood_blur_sigma: float = 2.0
    attribution_batch: int = 16
    metric_batch: int = 1024
    iba_samples: int = 1000
    grid_images: int = 6
    seed: int = 0
    progress: bool = True
    readout: str | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> EvaluationSettings:
        """A smoke-test setting: a handful of images per test, the small ablation grid."""
        sizes: dict[str, Any] = dict(
            blur_images=6, blur_images_other=4, anomaly_images=6, degradation_images=4,
            ablation_images=6, ablation_grid="quick", calibration_images=100, iba_samples=100,
            grid_images=4, degradation_steps=20,
        )
        sizes.update(overrides)
        return cls(**sizes)

    def check(self) -> EvaluationSettings:
        """Raise a ValueError naming the first illegal value; return self."""
        for name in ("blur_images", "blur_images_other", "anomaly_images", "degradation_images",
                     "ablation_images", "attribution_batch", "metric_batch", "grid_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.ablation_grid not in ABLATION_GRIDS:
            raise ValueError(
                f"ablation_grid must be one of {', '.join(ABLATION_GRIDS)}, got "
                f"{self.ablation_grid!r}."
            )
        if self.calibration_images is not None and self.calibration_images < 2:
            raise ValueError(
                f"calibration_images must be >= 2 or None (all), got {self.calibration_images}."
            )
        if self.iba_samples < 2:
            raise ValueError(f"iba_samples must be >= 2, got {self.iba_samples}.")
        if not self.fractions or any(not 0 < p <= 1 for p in self.fractions):
            raise ValueError(f"fractions must be values in (0, 1], got {self.fractions}.")
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown:
                raise ValueError(
                    f"unknown attribution method(s) {', '.join(map(repr, unknown))}; choose from "
                    f"{', '.join(METHODS)}."
                )
            if not self.methods:
                raise ValueError("methods is empty; pass at least one method or None for all.")
        return self


@dataclass(frozen=True)
class MethodRow:
    """One row of the result tables: a registry method with its constructor arguments."""

    key: str
    method: str
    label: str
    kwargs: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# rebuilding the run
def rebuild_from_checkpoint(ckpt_path: str | Path, config_path: str | Path | None = None):
    """(model with the checkpoint's weights, data module, config dict) of a saved run."""
    checkpoint = load_checkpoint(ckpt_path)
    if config_path is not None:
        config_path = Path(config_path)
        if not config_path.is_file():
            raise FileNotFoundError(f"no config file at {config_path}.")
        config = yaml.safe_load(config_path.read_text())
    else:
        config = saved_config(checkpoint, ckpt_path)
    model, data = instantiate_from_config(config)
    model.load_state_dict(checkpoint["state_dict"])
    return model, data, config


def _split_tensors(data: Any, split: str, limit: int | None = None):
    """(images [N, C, H, W], labels [N]) of the first ``limit`` items of a data module's split.

    Items are read in dataset order, so item i keeps its index (seeded perturbations of the data
    module, if any, are those of its loaders)."""
    data.setup("test")
    dataset: Dataset | None = getattr(data, f"{split}_dataset", None)
    if dataset is None or len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(
            f"{type(data).__name__} has no {split} split (or it is empty); the evaluation needs "
            f"one. Configure a {split} split in the data module."
        )
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    subset = torch.utils.data.Subset(dataset, range(n))
    xs, ys = [], []
    for batch in DataLoader(subset, batch_size=256, shuffle=False):
        xs.append(batch[0])
        ys.append(batch[1])
    return torch.cat(xs), torch.cat(ys).long()


def _posterior(model: nn.Module) -> nn.Module:
    posterior = getattr(model, "posterior", None)
    if not isinstance(posterior, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no `posterior` module; evaluate.py evaluates the "
            "classifiers of uattr.lit (BayesianClassifier, EvidentialClassifier)."
        )
    return posterior


def uncertainty_kinds(posterior: nn.Module) -> tuple[str, ...]:
    """The uncertainty kinds ``posterior`` defines, in report order."""
    if posterior_kind(posterior) == "evidential":
        return EVIDENTIAL_UNCERTAINTY_KINDS
    return UNCERTAINTY_KINDS


def headline_kind(posterior: nn.Module) -> str:
    """Epistemic (the UA-Backprop paper's headline), or total for a model without epistemic U."""
    return "total" if posterior_kind(posterior) == "deterministic" else "epistemic"


def default_methods(posterior: nn.Module, readout: str | None = None) -> tuple[str, ...]:
    """Every registry method applicable to ``posterior``.

    All of them apply to any posterior except "readout", which needs a trained readout bottleneck
    (``readout``); UA-Backprop's epistemic map of a deterministic model is zero, so it is still
    listed (its rows then explain total uncertainty, the headline kind of such a model).
    """
    return tuple(m for m in METHOD_ORDER if m in METHODS and (m != "readout" or readout))


# ---------------------------------------------------------------------------------------------
# small helpers
def _cpu_seconds() -> float:
    return time.process_time()


@contextmanager
def _timed(timing: dict[str, dict[str, float]], name: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    try:
        yield
    finally:
        entry = timing.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
        entry["wall_s"] += time.perf_counter() - wall
        entry["cpu_s"] += _cpu_seconds() - cpu


def _predict(posterior: nn.Module, x: torch.Tensor, batch_size: int = 256):
    """(probs [N, K], {kind: [N]}) under no_grad in eval mode (float64 on the CPU)."""
    probs, us = [], []
    with evaluating(posterior), torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            p, u = predict(posterior, x[i : i + batch_size])
            probs.append(p.double().cpu())
            us.append({k: v.double().cpu() for k, v in u._asdict().items()})
    return torch.cat(probs), {k: torch.cat([u[k] for u in us]) for k in us[0]}


def _uncertainty(posterior: nn.Module, x: torch.Tensor, kind: str, batch_size: int = 256):
    with evaluating(posterior), torch.no_grad():
        return torch.cat(
            [uncertainty(posterior, x[i : i + batch_size], kind).double().cpu()
             for i in range(0, x.shape[0], batch_size)]
        )


def _seeded_subset(candidates: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """At most ``n`` of the ``candidates`` (indices), a seeded random choice, kept in order."""
    if candidates.numel() <= n:
        return candidates
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(candidates.numel(), generator=gen)[:n]
    return candidates[pick.sort().values]


def above_median(u: torch.Tensor) -> torch.Tensor:
    """Indices of the values at or above the median (numpy's median), the blurring-test rule."""
    return (u >= torch.quantile(u, 0.5)).nonzero().flatten()


def _attribute(method: Attribution, x: torch.Tensor, target, batch: int,
               account: dict[str, float] | None = None, key: str = "") -> torch.Tensor:
    """Maps [N, H, W] (CPU) of ``method`` in batches; adds its CPU seconds to ``account[key]``."""
    cpu = _cpu_seconds()
    maps = []
    for i in range(0, x.shape[0], batch):
        t = target if isinstance(target, str) else target[i : i + batch]
        maps.append(method(x[i : i + batch], t).cpu())
    if account is not None:
        account[key] = account.get(key, 0.0) + _cpu_seconds() - cpu
    return torch.cat(maps)


def _floats(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _floats(v)
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, torch.Tensor):
            out[k] = v.tolist()
        else:
            out[k] = v
    return out


def blur_scores_per_image(
    u: torch.Tensor, num_pixels: int, fractions: Sequence[float], min_uncertainty: float = 1e-6
) -> dict[str, torch.Tensor]:
    """Per-image MURR / AUC-URR of blurring curves, exactly as :class:`BlurringTest` averages them.

    Args:
        u: uncertainty curves [N, M] on the count grid of ``BlurringTest`` (its ``u_curves``
            state), or on the budget counts 0..floor(max(fractions) * HW) only (then only the
            budget reading is returned).
        num_pixels: H * W.
        fractions: the p values.

    Returns:
        ``{"murr@2%": [N'], "auc_urr@2%": [N'], ("murr_step@2%", "auc_urr_step@2%"), ...}`` over
        the N' images with U_0 > ``min_uncertainty`` (float64).
    """
    grid = _count_grid(num_pixels, fractions)
    budget_only = u.shape[1] != grid["grid"].numel()
    if budget_only:
        n_max = math.floor(max(fractions) * num_pixels + 1e-9)
        if u.shape[1] != n_max + 1:
            raise ValueError(
                f"curves have {u.shape[1]} points: expected the full grid "
                f"({grid['grid'].numel()}) or the budget counts 0..{n_max} ({n_max + 1})."
            )
        counts = torch.arange(n_max + 1)
    else:
        counts = grid["grid"]
    u = u.double()
    valid = u[:, 0] > min_uncertainty
    r = u[valid] / u[valid, :1]
    frac = counts.double() / num_pixels
    out: dict[str, torch.Tensor] = {}
    for p in fractions:
        key = f"{p * 100:g}%"
        nb = math.floor(p * num_pixels + 1e-9)
        ib = torch.arange(nb + 1) if budget_only else grid[f"budget@{key}"]
        rb, xb = r[:, ib], frac[ib]
        out[f"murr@{key}"] = (1.0 - rb).amax(1)
        out[f"auc_urr@{key}"] = torch.trapezoid(rb, xb, dim=1) / xb[-1]
        if not budget_only:
            i_s = grid[f"step@{key}"]
            rs, xs = r[:, i_s], frac[i_s]
            out[f"murr_step@{key}"] = (1.0 - rs).amax(1)
            out[f"auc_urr_step@{key}"] = torch.trapezoid(rs, xs, dim=1)
    return out


def _mean_and_se(values: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    out = {}
    for k, v in values.items():
        n = v.numel()
        se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        out[k] = {"mean": float(v.mean()) if n else float("nan"), "se": se}
    return out


def _paired_differences(values: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """UA-Backprop minus every other method, image by image (the same images and U_0 for all).

    ``{"<ua row> - <method>": {"murr@2%": {"mean", "se"}, ...}}``: the paired standard error is
    far smaller than the per-method ones when methods are compared on the same images.
    """
    out: dict[str, Any] = {}
    for ua in ("ua_backprop_selected", "ua_backprop"):
        if ua not in values:
            continue
        for other, v in values.items():
            if other == ua:
                continue
            out[f"{ua} - {other}"] = _mean_and_se(
                {k: values[ua][k] - v[k] for k in values[ua]}
            )
    return out


class _Progress:
    """Progress over units of work: a rich bar on a terminal, one line per unit in a log.

    Writes to stderr; a no-op when disabled.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._console: Any = None
        self._task: Any = None
        self._total = 0
        self._done = 0
        self._description = ""
        self._start = time.perf_counter()

    def __enter__(self) -> _Progress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._console = Console(stderr=True)
        if self._console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]evaluate[/bold] {task.description:<44}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def set_total(self, total: int) -> None:
        self._total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def add_total(self, extra: int) -> None:
        self.set_total(self._total + extra)

    def step(self, description: str) -> None:
        self._description = description
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def done(self, units: int = 1) -> None:
        self._done += units
        if self._progress is not None:
            self._progress.advance(self._task, units)
        elif self._console is not None:
            elapsed = time.perf_counter() - self._start
            self._console.print(
                f"evaluate [{self._done}/{self._total}] {elapsed:6.0f}s  {self._description}",
                highlight=False, markup=False,
            )


# ---------------------------------------------------------------------------------------------
# the ablation
def _ua_kwargs(psi: str, tau2: float, tau1: float, bias_terms: bool) -> dict[str, Any]:
    return {"psi": psi, "tau2": float(tau2), "tau1": float(tau1), "bias_terms": bool(bias_terms)}


def _setting_name(kw: dict[str, Any]) -> str:
    bias = "on" if kw["bias_terms"] else "off"
    return f"psi={kw['psi']}, tau2={kw['tau2']:g}, tau1={kw['tau1']:g}, bias terms {bias}"


def ablation_size(grid_name: str) -> int:
    """How many distinct settings :func:`ablate_ua_backprop` scores with grid ``grid_name``."""
    grid = ABLATION_GRIDS[grid_name]
    return (len(grid["psi_tau2"]) + sum(t != 0.1 for t in grid["tau1"])
            + sum(b is not True for b in grid["bias_terms"]))


def ablate_ua_backprop(
    posterior: nn.Module,
    x_val: torch.Tensor,
    kind: str,
    settings: EvaluationSettings,
    sigma: float,
    progress: _Progress | None = None,
) -> dict[str, Any]:
    """Score UA-Backprop settings on VALIDATION images and select one by MURR@2% of ``kind``.

    ``x_val`` are the validation images of the blurring protocol (at or above the median ``kind``
    uncertainty of the validation split, seeded subset). Each setting's maps are scored with the
    budget reading of the blurring test (:func:`blur_scores_per_image` on the curves of
    :func:`uattr.metrics.blurring_curves`: identical numbers to ``BlurringTest``'s ``murr@p`` /
    ``auc_urr@p``; the step reading is not needed for the criterion and would cost 2.6x).

    Search (a staged coordinate search, not a full factorial: 10 settings instead of 42):

    1. every (psi, tau2) of the grid, with tau1 = 0.1 and bias terms on;
    2. every tau1, at the best (psi, tau2);
    3. bias terms on / off, at the best (psi, tau2, tau1).

    The best is the highest mean MURR@2%; ties go to UA-Backprop's default, then to the earlier
    setting. Returns ``{"criterion", "kind", "num_images", "settings": [{"kwargs", "name",
    "stage", scores...}], "selected": kwargs, "default": kwargs}``.
    """
    grid = ABLATION_GRIDS[settings.ablation_grid]
    hw = x_val.shape[-2] * x_val.shape[-1]
    n_max = math.floor(max(settings.fractions) * hw + 1e-9)
    counts = torch.arange(n_max + 1)
    key = f"murr@{settings.fractions[0] * 100:g}%"
    scored: dict[tuple, dict[str, Any]] = {}

    def score(kw: dict[str, Any], stage: str) -> dict[str, Any]:
        ident = tuple(sorted(kw.items()))
        if ident in scored:
            return scored[ident]
        if progress is not None:
            bias = "bias" if kw["bias_terms"] else "no bias"
            progress.step(f"ablation (val): {kw['psi']} tau2={kw['tau2']:g} "
                          f"tau1={kw['tau1']:g} {bias}")
        method = build_method("ua_backprop", posterior, **kw)
        maps = _attribute(method, x_val, kind, settings.attribution_batch)
        u = blurring_curves(posterior, x_val, maps, counts, kind, sigma,
                            batch_size=settings.metric_batch, seed=settings.seed)
        per_image = blur_scores_per_image(u, hw, settings.fractions)
        entry = {"kwargs": kw, "name": _setting_name(kw), "stage": stage,
                 "scores": _mean_and_se(per_image), "_per_image": per_image}
        scored[ident] = entry
        if progress is not None:
            progress.done()
        return entry

    def best(entries: list[dict[str, Any]]) -> dict[str, Any]:
        return max(
            enumerate(entries),
            key=lambda ie: (ie[1]["scores"][key]["mean"], ie[1]["kwargs"] == UA_DEFAULT, -ie[0]),
        )[1]

    stage1 = [score(_ua_kwargs(psi, tau2, 0.1, True), "psi, tau2")
              for psi, tau2 in grid["psi_tau2"]]
    b1 = best(stage1)["kwargs"]
    stage2 = [score(_ua_kwargs(b1["psi"], b1["tau2"], tau1, True), "tau1")
              for tau1 in grid["tau1"]]
    b2 = best(stage2)["kwargs"]
    stage3 = [score(_ua_kwargs(b2["psi"], b2["tau2"], b2["tau1"], bias), "bias terms")
              for bias in grid["bias_terms"]]
    selected = best(stage3)["kwargs"]
    # paired differences to the default setting (same images, same U_0): the resolution of
    # the ablation, far finer than the per-setting standard errors
    per_images = {ident: entry.pop("_per_image") for ident, entry in scored.items()}
    base = per_images.get(tuple(sorted(UA_DEFAULT.items())))
    if base is not None:
        for ident, entry in scored.items():
            entry["minus_default"] = _mean_and_se(
                {k: per_images[ident][k] - base[k] for k in base})
    return {
        "split": "val",
        "criterion": f"{key} ({kind}, budget reading), highest mean",
        "kind": kind,
        "num_images": int(x_val.shape[0]),
        "grid": settings.ablation_grid,
        "settings": list(scored.values()),
        "selected": selected,
        "selected_name": _setting_name(selected),
        "default": dict(UA_DEFAULT),
        "default_name": _setting_name(UA_DEFAULT),
    }


# ---------------------------------------------------------------------------------------------
# the suite
def _method_rows(methods: Sequence[str], ablation: dict[str, Any] | None) -> list[MethodRow]:
    rows: list[MethodRow] = []
    for name in methods:
        if name == "ua_backprop":
            if ablation is not None and ablation["selected"] != UA_DEFAULT:
                rows.append(MethodRow(
                    "ua_backprop_selected", name,
                    f"UA-Backprop, val-selected ({ablation['selected_name']})",
                    dict(ablation["selected"]),
                ))
                rows.append(MethodRow("ua_backprop", name, "UA-Backprop, default setting",
                                      dict(UA_DEFAULT)))
            elif ablation is not None:
                rows.append(MethodRow("ua_backprop", name,
                                      "UA-Backprop, default setting (= val-selected)",
                                      dict(UA_DEFAULT)))
            else:
                rows.append(MethodRow("ua_backprop", name, "UA-Backprop, default setting",
                                      dict(UA_DEFAULT)))
        else:
            rows.append(MethodRow(name, name, LABELS.get(name, name)))
    return rows


def load_readout(path: str | Path, posterior: nn.Module) -> Attribution:
    """The maps of the readout checkpoint ``path``, checked to explain ``posterior``.

    A readout checkpoint carries the weights of the classifier it was trained on; they must equal
    ``posterior``'s, or its maps would explain another model. The readout is moved to
    ``posterior``'s device.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` is not a readout checkpoint, or was trained on another classifier.
    """
    from uattr.attribution.readout import ReadoutBottleneck, check_explains

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no readout checkpoint at {path} (--readout). Train one on this classifier first: "
            "`python train.py fit --config configs/mnist5k_readout.yaml` writes "
            "checkpoints/mnist5k_readout/last.ckpt (another classifier: "
            "--model.init_args.classifier=PATH)."
        )
    method = ReadoutBottleneck(path)
    try:
        check_explains(method, posterior)
    except ValueError as error:
        raise ValueError(f"--readout {path}: {error}") from error
    ours = posterior.state_dict()
    device = next(iter(ours.values())).device if ours else torch.device("cpu")
    method.model.to(device)
    return method


def _build(row: MethodRow, posterior: nn.Module, data: Any, settings: EvaluationSettings,
           readout: Attribution | None = None):
    if row.method == "readout":
        return readout  # loaded and checked at the start of run_suite
    method = build_method(row.method, posterior, **row.kwargs)
    if row.method == "per_sample_iba":
        method.estimate(data, n_samples=settings.iba_samples)
    return method


def run_suite(
    model: nn.Module, data: Any, settings: EvaluationSettings | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run the whole evaluation on a rebuilt model and data module; return the results dict.

    The dict is what ``metrics.json`` holds plus ``"_figures"`` (maps, curves and predictions for
    :mod:`uattr.report`, not serialised).
    """
    settings = (settings or EvaluationSettings()).check()
    device = torch.device(device)
    posterior = _posterior(model).to(device).eval()
    kinds = uncertainty_kinds(posterior)
    headline = headline_kind(posterior)
    methods = settings.methods or default_methods(posterior, settings.readout)
    if "readout" in methods and not settings.readout:
        raise ValueError("the 'readout' method needs a trained readout checkpoint: pass --readout.")
    if settings.readout and "readout" not in methods:
        raise ValueError(
            f"--readout {settings.readout} was given but the methods ({', '.join(methods)}) do "
            "not include 'readout'; add it to --methods or drop --readout."
        )
    # loaded first, so that a bad checkpoint fails before minutes of evaluation
    readout = load_readout(settings.readout, posterior) if "readout" in methods else None
    timing: dict[str, dict[str, float]] = {}
    method_cpu: dict[str, float] = {}
    figures: dict[str, Any] = {}
    total_wall, total_cpu = time.perf_counter(), _cpu_seconds()

    with _timed(timing, "load data"):
        x_test, y_test = _split_tensors(data, "test", settings.calibration_images)
        x_test, y_test = x_test.to(device), y_test.to(device)
    channels = x_test.shape[1]
    sigma = settings.blur_sigma or (1.5 if channels == 1 else 1.0)
    patch = settings.patch_size or max(1, min(x_test.shape[-2:]) // 4)
    blur_kinds = [headline] + [k for k in ("total", "aleatoric") if k != headline and k in kinds]

    with _Progress(settings.progress) as progress:
        do_ablation = settings.ablation and "ua_backprop" in methods
        progress.set_total(2 + (ablation_size(settings.ablation_grid) if do_ablation else 0))
        # 1. predictive quality -------------------------------------------------------------
        progress.step("calibration (test)")
        with _timed(timing, "calibration"):
            probs, us = _predict(posterior, x_test)
            y_cpu = y_test.cpu()
            calibration = {
                "num_images": int(x_test.shape[0]),
                "acc": float((probs.argmax(1) == y_cpu).double().mean()),
                "nll": float(negative_log_likelihood(probs, y_cpu)),
                "ece": float(expected_calibration_error(probs.float(), y_cpu, n_bins=15)),
                "brier": float(brier_score(probs, y_cpu)),
                "uncertainty": {k: float(v.mean()) for k, v in us.items()},
            }
            figures["probs"], figures["labels"] = probs, y_cpu
        progress.done()

        # 2. OOD detection ------------------------------------------------------------------
        progress.step("OOD detection (test)")
        with _timed(timing, "ood"):
            shifts: dict[str, Perturbation] = {
                "rotation 90": Rotation(90),
                "rotation 180": Rotation(180),
                f"gaussian noise (std {settings.ood_noise_std:g})":
                    GaussianNoise(settings.ood_noise_std, seed=settings.seed),
                f"gaussian blur (sigma {settings.ood_blur_sigma:g})":
                    GaussianBlur(settings.ood_blur_sigma),
            }
            ood: dict[str, Any] = {}
            for name, shift in shifts.items():
                _, u_out = _predict(posterior, shift(x_test.cpu(), 0).to(device))
                ood[name] = {
                    kind: _floats(ood_detection(-us[kind], -u_out[kind])) for kind in kinds
                }
                ood[name]["mean_uncertainty"] = {k: float(v.mean()) for k, v in u_out.items()}
        progress.done()

        # 3. the ablation on the validation split --------------------------------------------
        ablation = None
        if do_ablation:
            with _timed(timing, "ablation (val)"):
                x_val, _ = _split_tensors(data, "val")
                x_val = x_val.to(device)
                u_val = _uncertainty(posterior, x_val, headline)
                pick = _seeded_subset(above_median(u_val), settings.ablation_images,
                                      settings.seed)
                ablation = ablate_ua_backprop(posterior, x_val[pick], headline, settings, sigma,
                                              progress)
        rows = _method_rows(methods, ablation)
        uncertainty_rows = [r for r in rows if r.method not in CLASS_ONLY_METHODS]
        progress.add_total(len(uncertainty_rows) * len(blur_kinds) + 2 * len(rows))

        built: dict[str, Attribution] = {}

        def method_of(row: MethodRow) -> Attribution:
            if row.key not in built:
                with _timed(timing, "build methods"):
                    built[row.key] = _build(row, posterior, data, settings, readout)
            return built[row.key]

        # 4. blurring test per uncertainty kind ---------------------------------------------
        blurring: dict[str, Any] = {}
        figures["blur_curves"], figures["blur_maps"] = {}, {}
        for kind in blur_kinds:
            n = settings.blur_images if kind == headline else settings.blur_images_other
            pick = _seeded_subset(above_median(us[kind]), n, settings.seed)
            x = x_test[pick]
            per_kind: dict[str, Any] = {
                "num_images": int(pick.numel()),
                "selection": f"test images with {kind} uncertainty >= its median "
                             f"({int(above_median(us[kind]).numel())} of {x_test.shape[0]}), "
                             f"seeded subset of {int(pick.numel())}",
                "methods": {},
            }
            if kind == headline:
                order = us[kind][pick].argsort(descending=True)[: settings.grid_images]
                figures["blur_images"] = x[order].cpu()
            values: dict[str, dict[str, torch.Tensor]] = {}
            for row in uncertainty_rows:
                progress.step(f"blurring/{kind}: {row.key}")
                with _timed(timing, f"attribution ({kind})"):
                    maps = _attribute(method_of(row), x, kind, settings.attribution_batch,
                                      method_cpu, row.key)
                with _timed(timing, f"blurring test ({kind})"):
                    metric = BlurringTest(kind, settings.fractions, sigma=sigma, selection="all",
                                          batch_size=settings.metric_batch, seed=settings.seed)
                    metric.update(posterior, x, maps.to(device))
                    result = _floats(metric.compute())
                    u = torch.cat([c.cpu() for c in metric.u_curves])
                    values[row.key] = blur_scores_per_image(u, x.shape[-2] * x.shape[-1],
                                                            settings.fractions)
                    result["per_image"] = _mean_and_se(values[row.key])
                    per_kind["methods"][row.key] = result
                    if kind == headline:
                        figures["blur_curves"][row.key] = metric.curves()
                        figures["blur_maps"][row.key] = maps[order]
                progress.done()
            per_kind["paired"] = _paired_differences(values)
            blurring[kind] = per_kind

        # 5. anomaly test ---------------------------------------------------------------------
        anomaly_patch = AnomalyPatch(size=patch, seed=settings.seed, fill=settings.patch_fill)
        x_patched, boxes = anomaly_patch(x_test.cpu(), 0)
        x_patched, boxes = x_patched.to(device), boxes.to(device)
        u_patched = _uncertainty(posterior, x_patched, headline)
        raised = (u_patched > us[headline]).nonzero().flatten()
        pick = _seeded_subset(raised, settings.anomaly_images, settings.seed)
        xa, ba = x_patched[pick], boxes[pick]
        # what the class-only rows explain: the class the model predicts for the image it sees
        predicted_patched = (
            _predict(posterior, xa)[0].argmax(1).to(device) if pick.numel() else None
        )
        anomaly: dict[str, Any] = {
            "kind": headline,
            "class_target": ANOMALY_CLASS_TARGET,
            "patch": {"size": patch, "fill": settings.patch_fill, "seed": settings.seed},
            "num_candidates": int(x_test.shape[0]),
            "num_raised": int(raised.numel()),
            "num_images": int(pick.numel()),
            "methods": {},
        }
        figures["anomaly_images"] = xa[: settings.grid_images].cpu()
        figures["anomaly_boxes"] = ba[: settings.grid_images].cpu()
        figures["anomaly_maps"] = {}
        ratios: dict[str, torch.Tensor] = {}
        for row in rows:
            class_only = row.method in CLASS_ONLY_METHODS
            progress.step(f"anomaly/{'class' if class_only else headline}: {row.key}")
            if pick.numel() == 0:
                progress.done()
                continue
            with _timed(timing, "attribution (anomaly)"):
                maps = _attribute(method_of(row), xa, predicted_patched if class_only else headline,
                                  settings.attribution_batch, method_cpu, row.key)
            with _timed(timing, "anomaly test"):
                loc = AnomalyLocalization(patch_size=patch)
                loc.update(maps, ba.cpu())
                ratio = BoundingBoxRatio()
                ratio.update(maps, ba.cpu())
                thr = dice_iou_thresholded(maps, ba.cpu())
                ratios[row.key] = bounding_box_ratio(maps, ba.cpu())
                anomaly["methods"][row.key] = {
                    "target": "class" if class_only else headline,
                    **_floats(loc.compute()),
                    "bbox_ratio": float(ratio.compute()),
                    "dice_thresholded": float(thr["dice"].mean()),
                    "iou_thresholded": float(thr["iou"].mean()),
                }
                figures["anomaly_maps"][row.key] = maps[: settings.grid_images]
            progress.done()
        anomaly["paired"] = {
            f"{a} - {b}": _mean_and_se({"bbox_ratio": ratios[a] - ratios[b]})
            for a, b in ANOMALY_PAIRS if a in ratios and b in ratios
        }

        # 6. degradation of class maps --------------------------------------------------------
        pick = _seeded_subset(torch.arange(x_test.shape[0]), settings.degradation_images,
                              settings.seed)
        xd = x_test[pick]
        predicted = probs[pick.cpu()].argmax(1).to(device)
        degradation: dict[str, Any] = {
            "target": "class predicted on the original image",
            "num_images": int(pick.numel()),
            "tile_size": settings.degradation_tile,
            "steps": settings.degradation_steps,
            "methods": {},
        }
        figures["degradation_curves"] = {}
        for row in rows:
            progress.step(f"degradation: {row.key}")
            with _timed(timing, "attribution (class)"):
                maps = _attribute(method_of(row), xd, predicted, settings.attribution_batch,
                                      method_cpu, row.key)
            with _timed(timing, "degradation test"):
                metric = Degradation(tile_size=settings.degradation_tile,
                                     steps=settings.degradation_steps,
                                     batch_size=settings.metric_batch, seed=settings.seed)
                metric.update(posterior, xd, maps.to(device), predicted)
                degradation["methods"][row.key] = _floats(metric.compute())
                figures["degradation_curves"][row.key] = metric.curves()
            progress.done()

    timing["total"] = {"wall_s": time.perf_counter() - total_wall,
                       "cpu_s": _cpu_seconds() - total_cpu}
    timing["attribution_cpu_s_by_method"] = method_cpu
    return {
        "settings": {
            **{k: v for k, v in dataclasses.asdict(settings).items() if k != "progress"},
            "methods": list(methods),
            "blur_sigma": sigma,
            "patch_size": patch,
            "uncertainty_kinds": list(kinds),
            "headline_kind": headline,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
        },
        "rows": [dataclasses.asdict(r) for r in rows],
        "calibration": calibration,
        "ood": ood,
        "ablation": ablation,
        "blurring": blurring,
        "anomaly": anomaly,
        "degradation": degradation,
        "timing": timing,
        "_figures": figures,
    }


def _device(accelerator: str) -> torch.device:
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--accelerator gpu was asked for but no CUDA device is available.")
        return torch.device("cuda")
    if accelerator == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown accelerator {accelerator!r}: use cpu, gpu or auto.")


#: Callbacks that change what the model sees at every step; evaluate.py does not replay them.
INPUT_TRANSFORM_CALLBACKS = ("uattr.callbacks.AttentionMitigation",
                             "uattr.callbacks.attention.AttentionMitigation")


def input_transform_cautions(config: dict[str, Any]) -> list[str]:
    """Warnings for a run whose trainer callbacks transform the model's inputs (attention
    mitigation multiplies every batch by A(x)): evaluate.py scores the bare model, not that."""
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    found = [
        c["class_path"]
        for c in callbacks
        if isinstance(c, dict)
        and c.get("class_path") in INPUT_TRANSFORM_CALLBACKS
        # method: null is the no-attention control: it sees the plain images too
        and (c.get("init_args") or {}).get("method", "default") is not None
    ]
    return [
        f"the run was trained with {name}, which multiplies every input by its attention mask; "
        "evaluate.py evaluates the model on the plain images, without attention. Evaluate the "
        "mitigated model with `python train.py test --config <its config> --ckpt_path <ckpt>`."
        for name in found
    ]


def evaluate_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    config_path: str | Path | None = None,
    accelerator: str = "auto",
    settings: EvaluationSettings | None = None,
    on_results: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Evaluate ``ckpt_path`` and write ``metrics.json``, ``report.md`` and figures to ``out_dir``.

    The model and data module are rebuilt from the configuration the checkpoint carries (or
    ``config_path``); the weights load with ``torch.load(weights_only=True)``. ``out_dir`` is
    created only once the run has been rebuilt, so a bad checkpoint leaves nothing behind.
    Returns the path of ``report.md``.
    """
    from uattr import report as report_module

    settings = (settings or EvaluationSettings()).check()
    device = _device(accelerator)
    model, data, config = rebuild_from_checkpoint(ckpt_path, config_path)
    cautions = input_transform_cautions(config)
    for caution in cautions:
        warnings.warn(caution, stacklevel=2)
    results = run_suite(model, data, settings, device)
    results = {
        "checkpoint": str(ckpt_path),
        "cautions": cautions,
        "model": config["model"]["class_path"].rsplit(".", 1)[-1],
        "data": config["data"]["class_path"].rsplit(".", 1)[-1],
        "config": {"model": config["model"], "data": config["data"]},
        **results,
    }
    results["claim"] = report_module.paper_claim(results)
    results["iba_claim"] = report_module.iba_claim(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = results.pop("_figures")
    with _timed(results["timing"], "report"):
        figure_paths = report_module.write_figures(results, figures, out_dir)
        results["figures"] = [p.name for p in figure_paths]
        (out_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        path = report_module.write_report(results, out_dir)
    if on_results is not None:
        on_results(results)
    return path
