"""The callbacks run inside trainer.validate / trainer.test (inference mode) and fit (no_grad), and
leave every submodule's train/eval flag as they found it."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from uattr.callbacks import AttributionImages, AttributionMetrics, UncertaintyMetrics
from uattr.data import MNIST5k
from uattr.lit import BayesianClassifier, EvidentialClassifier
from uattr.models import LeNet5


def _bayesian(method: str = "mc_dropout", samples: int = 4) -> BayesianClassifier:
    seed_everything(0)
    return BayesianClassifier(LeNet5(dropout=0.25), method=method, num_samples=samples)


def _callbacks() -> dict[str, Callback]:
    return {
        "attribution_metrics": AttributionMetrics(
            methods=("ua_backprop", "gradient", "random"), every_n_epochs=1, probe_size=4
        ),
        "uncertainty_metrics": UncertaintyMetrics(probe_size=8),
        "attribution_images": AttributionImages(methods=("gradient",), num_images=2),
    }


def _modes(module: torch.nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in module.named_modules()}


def _mix(module: torch.nn.Module) -> None:
    """A pattern no single .train()/.eval() call produces: dropouts train, the rest eval."""
    module.eval()
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.train()
    next(m for m in module.modules() if isinstance(m, torch.nn.Linear)).train()


class _SetModes(Callback):
    """Runs before the tested callback: sets the mixed pattern and records it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, bool]] = []
        self.inference: list[bool] = []

    def _set(self, pl_module) -> None:
        _mix(pl_module)
        self.seen.append(_modes(pl_module))
        self.inference.append(torch.is_inference_mode_enabled())

    def on_validation_epoch_end(self, trainer, pl_module):
        self._set(pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._set(pl_module)


class _CheckModes(Callback):
    """Runs after the tested callback: the flags must be those _SetModes left."""

    def __init__(self, before: _SetModes) -> None:
        self.before = before
        self.checked = 0

    def _check(self, pl_module) -> None:
        assert _modes(pl_module) == self.before.seen[-1]
        self.checked += 1

    def on_validation_epoch_end(self, trainer, pl_module):
        self._check(pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._check(pl_module)


def _trainer(tmp_path, callback: Callback) -> tuple[Trainer, _CheckModes]:
    setter = _SetModes()
    checker = _CheckModes(setter)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path),
        callbacks=[setter, callback, checker],
        limit_val_batches=1,
        limit_test_batches=1,
        limit_train_batches=2,
        max_epochs=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    return trainer, checker


def _expected_keys(name: str, stage: str) -> set[str]:
    if name == "attribution_metrics":
        return {
            f"{stage}/attr/{m}/{k}"
            for m in ("ua_backprop", "gradient", "random")
            for k in ("murr@2%", "auc_urr@5%", "iou", "ada", "pointing_game")
        }
    if name == "uncertainty_metrics":
        return {f"{stage}/ood/epistemic/auroc", f"{stage}/rotation/total@90"}
    return set()


@pytest.mark.parametrize(
    "name", ["attribution_metrics", "uncertainty_metrics", "attribution_images"]
)
def test_callback_runs_in_validate_and_test_under_inference_mode(name, tmp_path):
    model, data = _bayesian(), MNIST5k(batch_size=32)
    callback = _callbacks()[name]
    trainer, checker = _trainer(tmp_path, callback)
    for run, stage in ((trainer.validate, "val"), (trainer.test, "test")):
        _mix(model)
        before = _modes(model)
        (logged,) = run(model, data, verbose=False)
        assert _modes(model) == before
        assert _expected_keys(name, stage) <= set(logged)
        assert all(math.isfinite(logged[key]) for key in _expected_keys(name, stage))
    assert checker.checked == 2
    assert checker.before.inference == [True, True]  # the Trainer default: inference_mode=True
    if name == "attribution_images":
        assert [p.parent.name for p in callback.saved] == ["val", "test"]
        assert all(p.is_file() for p in callback.saved)


def test_callbacks_run_in_fit_on_schedule_and_skip_the_sanity_check(tmp_path):
    model, data = _bayesian(), MNIST5k(batch_size=32)
    images = AttributionImages(methods=("gradient",), num_images=2, every_n_epochs=2)
    metrics = AttributionMetrics(
        methods=("gradient",), probe_size=4, every_n_epochs=2, anomaly=False
    )
    setter = _SetModes()
    checker = _CheckModes(setter)
    trainer = Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        callbacks=[setter, metrics, images, checker],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, data)
    # epochs 0, 1, 2 with every_n_epochs=2: only epoch 1 ((1 + 1) % 2 == 0); not the sanity check
    assert [p.name for p in images.saved] == ["epoch_001.png"]
    assert (metrics.num_runs, images.num_runs) == (1, 1)
    assert checker.checked == 4  # sanity check + 3 epochs, flags intact after each
    assert math.isfinite(float(trainer.callback_metrics["val/attr/gradient/murr@2%"]))


@pytest.mark.parametrize("kind", ["evidential", "ensemble"])
def test_attribution_metrics_on_other_posteriors(kind, tmp_path):
    seed_everything(0)
    if kind == "evidential":
        model = EvidentialClassifier(LeNet5(dropout=0.0))
        uncertainty = "vacuity"
    else:
        model = _bayesian("ensemble", samples=2)
        uncertainty = "epistemic"
    callback = AttributionMetrics(
        methods=("ua_backprop", "gradient"),
        uncertainty=uncertainty,
        probe_size=4,
        blurring={"fractions": [0.05]},
    )
    trainer, _ = _trainer(tmp_path, callback)
    (logged,) = trainer.validate(model, MNIST5k(batch_size=32), verbose=False)
    for method in ("ua_backprop", "gradient"):
        assert math.isfinite(logged[f"val/attr/{method}/murr@5%"])
        assert 0.0 <= logged[f"val/attr/{method}/iou"] <= 1.0


def test_unknown_or_class_only_methods_and_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown attribution method 'saliency'"):
        AttributionMetrics(methods=("saliency",))
    with pytest.raises(ValueError, match="contrast_cam explains class scores only"):
        AttributionMetrics(methods=("contrast_cam",))
    for callback in (AttributionMetrics, AttributionImages):  # one check serves both
        with pytest.raises(ValueError, match="contrast_cam explains class scores only"):
            callback(methods=("gradient", "contrast_cam"))  # a readout's map is target-free: ok
        with pytest.raises(ValueError, match="distinct"):
            callback(methods=("gradient", "gradient"))
        with pytest.raises(ValueError, match=r"method_kwargs names method\(s\) \['smoothgrad'\]"):
            callback(methods=("gradient",), method_kwargs={"smoothgrad": {"num_samples": 5}})
    with pytest.raises(ValueError, match="fractions"):
        AttributionMetrics(blurring={"fractions": [2.0]})
    with pytest.raises(ValueError, match="unknown anomaly setting"):
        AttributionMetrics(anomaly={"size": 7})
    trainer, _ = _trainer(
        tmp_path, AttributionMetrics(methods=("gradient",), uncertainty="vacuity", probe_size=4)
    )
    with pytest.raises(ValueError, match="vacuity"):
        trainer.validate(_bayesian(), MNIST5k(batch_size=32), verbose=False)
