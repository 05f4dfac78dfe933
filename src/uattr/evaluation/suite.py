"""The evaluation suite behind ``evaluate.py``: run the selected protocols, write the report.

:func:`evaluate_checkpoint` rebuilds a run from its checkpoint and runs, on its data module, the
protocols of :data:`PROTOCOLS` that the settings select (all by default), in this order:

1. predictive quality on the test split (:mod:`~uattr.evaluation.predictive`);
2. OOD detection of the test split against perturbed copies (:mod:`~uattr.evaluation.ood`);
3. UA-Backprop's open choices scored on the VALIDATION split (:mod:`~uattr.evaluation.ablation`);
4. the blurring test of every method for each uncertainty kind (:mod:`~uattr.evaluation.blurring`);
5. the anomaly-patch test (:mod:`~uattr.evaluation.anomaly`);
6. the degradation test of class maps (:mod:`~uattr.evaluation.degradation`);

then writes ``metrics.json``, ``report.md`` and PNG figures (:mod:`uattr.report`). Every choice
lives in :class:`EvaluationSettings` and is recorded in ``metrics.json``; the same images, fixed
posterior samples and protocol serve every method. A new protocol is one module (settings
dataclass, result, :class:`~uattr.evaluation.protocol.EvaluationProtocol`) listed in
:data:`PROTOCOLS` and among the bases of :class:`EvaluationSettings`. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from uattr.attribution.registry import METHODS
from uattr.common import check_positive_int
from uattr.evaluation.ablation import AblationSettings, UABackpropAblation
from uattr.evaluation.anomaly import AnomalyProtocol, AnomalySettings
from uattr.evaluation.blurring import BlurringProtocol, BlurringSettings
from uattr.evaluation.context import EvaluationContext
from uattr.evaluation.degradation import DegradationProtocol, DegradationSettings
from uattr.evaluation.methods import default_methods
from uattr.evaluation.ood import OODDetectionProtocol, OODSettings
from uattr.evaluation.predictive import PredictiveQuality
from uattr.evaluation.progress import Progress
from uattr.evaluation.protocol import EvaluationProtocol
from uattr.evaluation.result import SuiteResult
from uattr.lit.checkpoint import rebuild_from_checkpoint
from uattr.lit.readout import load_readout
from uattr.report import iba_claim, paper_claim, write_figures, write_report

__all__ = ["PROTOCOLS", "EvaluationSettings", "SharedSettings", "evaluate_checkpoint",
           "input_transform_cautions", "run_suite"]

#: Every protocol, in run order (the ablation before the protocols that use the method rows).
PROTOCOLS: tuple[EvaluationProtocol, ...] = (
    PredictiveQuality(), OODDetectionProtocol(), UABackpropAblation(), BlurringProtocol(),
    AnomalyProtocol(), DegradationProtocol(),
)


@dataclasses.dataclass(frozen=True)
class SharedSettings:
    """What every protocol shares.

    Args:
        protocols: names of the protocols to run (``None`` = all of :data:`PROTOCOLS`).
        methods: registry names to run; ``None`` = every method applicable to the model.
        calibration_images: test images read (for every protocol; ``None`` = all).
        attribution_batch: images per attribution call.
        metric_batch: perturbed copies per model call inside the metrics.
        iba_samples: training images for Per-Sample IBA's feature statistics.
        grid_images: images per map-grid figure.
        seed: seeds every subset, the patch and the metrics' tie-breaks.
        progress: show a progress bar (rich, on stderr).
        readout: path of a trained readout-bottleneck checkpoint, trained on the classifier
            evaluated (adds "readout" to the anomaly and degradation tests).
    """

    protocols: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    calibration_images: int | None = None
    attribution_batch: int = 16
    metric_batch: int = 1024
    iba_samples: int = 1000
    grid_images: int = 6
    seed: int = 0
    progress: bool = True
    readout: str | None = None

    def check(self) -> None:
        for name in ("attribution_batch", "metric_batch", "grid_images"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.iba_samples, "iba_samples", minimum=2)
        if self.calibration_images is not None:
            check_positive_int(self.calibration_images, "calibration_images", minimum=2)
        names = [p.name for p in PROTOCOLS]
        if self.protocols is not None:
            unknown = [p for p in self.protocols if p not in names]
            if unknown or not self.protocols:
                raise ValueError(f"protocols must name some of {', '.join(names)}; got "
                                 f"{list(self.protocols)}.")
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown:
                raise ValueError(
                    f"unknown attribution method(s) {', '.join(map(repr, unknown))}; choose from "
                    f"{', '.join(METHODS)}."
                )
            if not self.methods:
                raise ValueError("methods is empty; pass at least one method or None for all.")


@dataclasses.dataclass(frozen=True)
class EvaluationSettings(DegradationSettings, AnomalySettings, BlurringSettings,
                         AblationSettings, OODSettings, SharedSettings):
    """Every setting of one evaluation, the shared ones and each protocol's.

    All are recorded in ``metrics.json``. The defaults size a full run of the embedded default
    to well under 15 minutes on 2 CPU cores; :meth:`quick` is a smoke-test setting.
    """

    #: The smoke-test sizes of :meth:`quick`.
    QUICK: ClassVar[dict[str, Any]] = dict(
        blur_images=6, blur_images_other=4, anomaly_images=6, degradation_images=4,
        ablation_images=6, ablation_grid="quick", calibration_images=100, iba_samples=100,
        grid_images=4, degradation_steps=20,
    )

    @classmethod
    def quick(cls, **overrides: Any) -> EvaluationSettings:
        """A smoke-test setting: a handful of images per test, the small ablation grid."""
        return cls(**{**cls.QUICK, **overrides})

    def check(self) -> EvaluationSettings:
        """Raise a ValueError naming the first illegal value; return self."""
        for base in reversed(type(self).__mro__[1:]):
            if "check" in vars(base):
                base.check(self)
        return self

    def selected_protocols(self) -> tuple[EvaluationProtocol, ...]:
        return tuple(p for p in PROTOCOLS if self.protocols is None or p.name in self.protocols)


def _posterior(model: nn.Module) -> nn.Module:
    if isinstance(posterior := getattr(model, "posterior", None), nn.Module):
        return posterior
    raise ValueError(f"{type(model).__name__} has no `posterior` module; evaluate.py evaluates "
                     "the classifiers of uattr.lit (BayesianClassifier, EvidentialClassifier).")


def _methods(settings: EvaluationSettings, posterior: nn.Module) -> tuple[str, ...]:
    methods = settings.methods or default_methods(posterior, settings.readout)
    if "readout" in methods and not settings.readout:
        raise ValueError("the 'readout' method needs a trained readout checkpoint: pass --readout.")
    if settings.readout and "readout" not in methods:
        raise ValueError(
            f"--readout {settings.readout} was given but the methods ({', '.join(methods)}) do "
            "not include 'readout'; add it to --methods or drop --readout."
        )
    return tuple(methods)


def run_suite(model: nn.Module, data: Any, settings: EvaluationSettings | None = None,
              device: str | torch.device = "cpu") -> SuiteResult:
    """Run the selected protocols on a rebuilt model and data module; return their results."""
    settings = (settings or EvaluationSettings()).check()
    device = torch.device(device)
    posterior = _posterior(model).to(device).eval()
    methods = _methods(settings, posterior)
    # loaded first, so that a bad checkpoint fails before minutes of evaluation
    prebuilt = ({"readout": load_readout(settings.readout, posterior)}
                if "readout" in methods else {})
    wall, cpu = time.perf_counter(), time.process_time()
    results = {}
    with Progress(settings.progress) as progress:
        ctx = EvaluationContext(posterior, data, settings, device, methods, progress, prebuilt)
        ctx.load_test_split()
        for protocol in settings.selected_protocols():
            progress.add_total(protocol.steps(ctx))
            results[protocol.name] = protocol.run(ctx)
    ctx.timing["total"] = {"wall_s": time.perf_counter() - wall,
                           "cpu_s": time.process_time() - cpu}
    ctx.timing["attribution_cpu_s_by_method"] = ctx.method_cpu
    recorded = {k: v for k, v in dataclasses.asdict(settings).items() if k != "progress"}
    recorded.update({
        "methods": list(methods), "blur_sigma": settings.blur_sigma,
        "patch_size": settings.patch_size, **ctx.resolved,
        "uncertainty_kinds": list(ctx.kinds), "headline_kind": ctx.headline,
        "device": str(device), "torch_threads": torch.get_num_threads(),
    })
    return SuiteResult(settings=recorded, rows=[dataclasses.asdict(r) for r in ctx.rows],
                       results=results, timing=ctx.timing)


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


def write_outputs(suite: SuiteResult, out_dir: str | Path,
                  protocols: Sequence[EvaluationProtocol] = PROTOCOLS) -> Path:
    """Check the claims, then write figures, ``metrics.json`` and ``report.md`` to ``out_dir``;
    return the path of ``report.md``."""
    suite.claim = paper_claim(suite)
    suite.iba_claim = iba_claim(suite)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    suite.figures = [p.name for p in write_figures(suite, protocols, out_dir)]
    suite.timing["report"] = {"wall_s": time.perf_counter() - wall,
                              "cpu_s": time.process_time() - cpu}
    (out_dir / "metrics.json").write_text(json.dumps(suite.to_json(), indent=2, default=str)
                                          + "\n")
    return write_report(suite, protocols, out_dir)


def evaluate_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    config_path: str | Path | None = None,
    accelerator: str = "auto",
    settings: EvaluationSettings | None = None,
    on_results: Callable[[SuiteResult], None] | None = None,
) -> Path:
    """Evaluate ``ckpt_path`` and write ``metrics.json``, ``report.md`` and figures to ``out_dir``.

    The model and data module are rebuilt from the configuration the checkpoint carries (or
    ``config_path``); the weights load with ``torch.load(weights_only=True)``. ``out_dir`` is
    created only once the run has been rebuilt, so a bad checkpoint leaves nothing behind.
    Returns the path of ``report.md``.
    """
    settings = (settings or EvaluationSettings()).check()
    device = _device(accelerator)
    model, data, config = rebuild_from_checkpoint(ckpt_path, config_path)
    cautions = input_transform_cautions(config)
    for caution in cautions:
        warnings.warn(caution, stacklevel=2)
    suite = run_suite(model, data, settings, device)
    suite.checkpoint, suite.cautions = str(ckpt_path), cautions
    suite.model = config["model"]["class_path"].rsplit(".", 1)[-1]
    suite.data = config["data"]["class_path"].rsplit(".", 1)[-1]
    suite.config = {"model": config["model"], "data": config["data"]}
    path = write_outputs(suite, out_dir, settings.selected_protocols())
    if on_results is not None:
        on_results(suite)
    return path
