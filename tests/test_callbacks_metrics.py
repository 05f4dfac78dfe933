"""Known answers of the metric callbacks, and the probe they share."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from lightning.pytorch import Trainer, seed_everything

from uattr.attribution import Gradient
from uattr.attribution.registry import build_method
from uattr.callbacks import AttributionMetrics, UncertaintyMetrics, build_probe, probe_indices
from uattr.callbacks.attribution_metrics import _item_seed
from uattr.cli import UattrCLI
from uattr.data import AnomalyPatch, Digits, GaussianBlur, GaussianNoise, MNIST5k, Rotation
from uattr.lit import BayesianClassifier
from uattr.metrics import AnomalyLocalization, BlurringTest
from uattr.models import LeNet5

DEFAULT = ROOT / "configs" / "mnist5k_lenet_mcdropout.yaml"


class _Items(torch.utils.data.Dataset):
    """Item i is an image filled with i / n, label i % 10."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((1, 4, 4), i / self.n), i % 10


def _trainer(**kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def _model() -> BayesianClassifier:
    seed_everything(0)
    return BayesianClassifier(LeNet5(dropout=0.25), num_samples=4)


# ---- the probe ---------------------------------------------------------------------------------
def test_probe_is_seeded_fixed_and_a_prefix_of_larger_probes():
    a, b = probe_indices(500, 24, seed=0), probe_indices(500, 24, seed=0)
    assert torch.equal(a, b) and len(set(a.tolist())) == 24
    assert torch.equal(probe_indices(500, 48, seed=0)[:24], a)
    assert not torch.equal(probe_indices(500, 24, seed=1), a)
    assert len(probe_indices(10, 24, seed=0)) == 10  # capped by the dataset


def test_probe_shards_partition_it_and_keep_dataset_indices():
    probe = build_probe(_Items(50), 12, seed=3)
    assert probe.images.shape == (12, 1, 4, 4) and probe.images.dtype == torch.float32
    assert torch.equal((probe.images[:, 0, 0, 0] * 50).round().long(), probe.indices)  # i/n
    assert torch.equal(probe.labels, probe.indices % 10)
    shards = [probe.shard(r, 3) for r in range(3)]
    assert sorted(torch.cat([s.indices for s in shards]).tolist()) == sorted(probe.indices.tolist())
    assert [len(s) for s in shards] == [4, 4, 4]


def test_probe_is_rounded_down_to_a_multiple_of_the_world_size():
    with pytest.warns(UserWarning, match="rounded down to 8"):
        probe = build_probe(_Items(50), 10, seed=0, world_size=4)
    assert torch.equal(probe.indices, probe_indices(50, 8, seed=0))
    with pytest.raises(ValueError, match="probe_size >= 4"):
        build_probe(_Items(3), 10, seed=0, world_size=4)


# ---- known answers -----------------------------------------------------------------------------
def test_uncertainty_metrics_known_answers():
    """An OOD probe identical to the in-distribution one cannot be told apart (AUROC 0.5, every
    score tied); the rotation curve at 0 degrees over the whole validation set is the mean
    uncertainty the module itself logs."""
    model, data = _model(), MNIST5k(batch_size=250)
    callback = UncertaintyMetrics(ood=Rotation(0), rotation_angles=(0, 90), probe_size=500)
    (logged,) = _trainer(callbacks=[callback]).validate(model, data, verbose=False)
    for kind in ("total", "aleatoric", "epistemic"):
        assert logged[f"val/ood/{kind}/auroc"] == pytest.approx(0.5, abs=1e-12)
        assert logged[f"val/ood/{kind}/detection_acc"] == pytest.approx(0.5, abs=1e-12)
        assert logged[f"val/rotation/{kind}@0"] == pytest.approx(
            logged[f"val/uncertainty/{kind}"], rel=1e-5
        )
        assert logged[f"val/rotation/{kind}@90"] != logged[f"val/rotation/{kind}@0"]


def test_attribution_metrics_equal_the_metrics_computed_directly():
    """The callback's pre-selection (images at or above the probe's median uncertainty, chosen
    before attribution) gives exactly BlurringTest's own above-median rule, and the anomaly test
    scores AnomalyPatch(seed=probe_seed, index=dataset index) images."""
    model, data = _model(), MNIST5k(batch_size=250)
    callback = AttributionMetrics(
        methods=("gradient",), probe_size=8, probe_seed=5, blurring={"fractions": [0.05]}
    )
    (logged,) = _trainer(callbacks=[callback], limit_val_batches=1).validate(
        model, data, verbose=False
    )

    probe = build_probe(data.val_dataset, 8, seed=5)
    gradient = Gradient(model.posterior)
    blurring = BlurringTest("epistemic", fractions=(0.05,))  # selection="above_median"
    blurring.update(model.posterior, probe.images, gradient(probe.images, "epistemic"))
    patched, boxes = AnomalyPatch(7, seed=5)(probe.images, index=probe.indices)
    anomaly = AnomalyLocalization(7)
    anomaly.update(gradient(patched, "epistemic"), boxes)
    direct = {**blurring.compute(), **anomaly.compute()}
    assert direct["num_images"] == 4  # the upper half of 8
    for key, value in direct.items():
        assert logged[f"val/attr/gradient/{key}"] == pytest.approx(float(value), abs=1e-6), key


def test_random_maps_do_not_depend_on_how_the_probe_is_sharded():
    model = _model()
    callback = AttributionMetrics(methods=("random",), anomaly=False)
    method = build_method("random", model.posterior)
    probe = build_probe(_Items(40), 8, seed=0)
    full = callback._maps(method, probe.images, probe.indices)
    for rank in range(2):
        shard = probe.shard(rank, 2)
        assert torch.equal(callback._maps(method, shard.images, shard.indices), full[rank::2])
    assert not torch.equal(full[0], full[1])
    assert _item_seed(0, 1) != _item_seed(1, 0)


def test_an_ood_data_module_drawing_the_same_probe_gives_auroc_one_half():
    model = _model()
    callback = UncertaintyMetrics(ood=MNIST5k(), rotation_angles=(), probe_size=16)
    (logged,) = _trainer(callbacks=[callback], limit_val_batches=1).validate(
        model, MNIST5k(batch_size=250), verbose=False
    )
    assert logged["val/ood/epistemic/auroc"] == pytest.approx(0.5, abs=1e-12)


def test_the_cli_builds_every_ood_form_from_yaml(tmp_path, monkeypatch):
    overlay = tmp_path / "callbacks.yaml"
    overlay.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: uattr.callbacks.UncertaintyMetrics\n"
        "      init_args:\n"
        "        ood:\n"
        "          - {class_path: uattr.data.Rotation, init_args: {angle: 45}}\n"
        "          - {class_path: uattr.data.GaussianBlur, init_args: {sigma: 1.0}}\n"
        "    - class_path: uattr.callbacks.UncertaintyMetrics\n"
        "      init_args: {ood: {class_path: uattr.data.Digits}}\n"
        "    - class_path: uattr.callbacks.UncertaintyMetrics\n"
        "      init_args: {ood: null}\n"
    )
    monkeypatch.chdir(tmp_path)
    cli = UattrCLI(args=["--config", str(DEFAULT), "--config", str(overlay)], run=False)
    composed, datamodule, off = [
        c.ood for c in cli.trainer.callbacks if isinstance(c, UncertaintyMetrics)
    ]
    assert [type(p) for p in composed] == [Rotation, GaussianBlur]
    assert isinstance(datamodule, Digits) and off is None
    default = next(
        c
        for c in UattrCLI(args=["--config", str(DEFAULT)], run=False).trainer.callbacks
        if isinstance(c, UncertaintyMetrics)
    )
    assert [type(p) for p in default.ood] == [Rotation, GaussianNoise]
