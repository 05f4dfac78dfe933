"""Bad input gets a clear error: NaN/Inf images, wrong channels, files that are not checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

import evaluate
from uattr.lit import BayesianClassifier, EvidentialClassifier, load_checkpoint
from uattr.models import LeNet5


@pytest.fixture(params=[BayesianClassifier, EvidentialClassifier], ids=lambda c: c.__name__)
def module(request):
    return request.param(LeNet5())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_images_are_rejected(module, bad):
    x = torch.rand(4, 1, 28, 28)
    x[2, 0, 5, 5] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf.*rows \[2\]"):
        module.training_step((x, torch.zeros(4, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        module.validation_step((x, torch.zeros(4, dtype=torch.long)), 0)


def test_huge_finite_values_are_not_mistaken_for_inf():
    from uattr.common import check_images

    x = torch.full((2, 1, 4, 4), 3e38)  # finite, but the sum overflows to inf
    assert check_images(x) is x
    x[1, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"NaN or Inf.*rows \[1\]"):
        check_images(x)


def test_wrong_channel_count_is_rejected(module):
    x = torch.rand(4, 3, 28, 28)
    with pytest.raises(ValueError, match="3 channel.*expects 1"):
        module.training_step((x, torch.zeros(4, dtype=torch.long)), 0)


def test_wrong_label_shape_and_class_count_are_rejected():
    module = BayesianClassifier(LeNet5(num_classes=10))
    with pytest.raises(ValueError, match=r"labels must have shape \[B\]"):
        module.training_step((torch.rand(4, 1, 28, 28), torch.zeros(4, 1, dtype=torch.long)), 0)
    mismatched = BayesianClassifier(LeNet5(num_classes=10), num_classes=7)
    with pytest.raises(ValueError, match="outputs 10 logits but the data has 7 classes"):
        mismatched.training_step((torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)), 0)


def test_unknown_posterior_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method 'laplace'"):
        BayesianClassifier(LeNet5(), method="laplace")


def test_share_prefix_reaches_the_posterior():
    assert BayesianClassifier(LeNet5()).posterior.share_prefix
    module = BayesianClassifier(LeNet5(), share_prefix=False)
    assert not module.posterior.share_prefix and module.hparams.share_prefix is False


class _Arbitrary:  # an object a safe load must refuse to unpickle
    pass


def test_files_that_are_not_checkpoints_are_rejected(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_checkpoint(text)
    tensors = tmp_path / "tensors.pt"
    torch.save({"weights": torch.zeros(3)}, tensors)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_checkpoint(tensors)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"thing": _Arbitrary()}}, pickled)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(pickled)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_evaluate_reports_a_bad_checkpoint_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00\x01garbage")
    assert evaluate.main(["--ckpt", str(bad), "--out", str(tmp_path / "report")]) == 2
    assert "is not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_train_accuracy_is_logged_once_per_epoch():
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    module = BayesianClassifier(LeNet5(), num_samples=2)
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    acc = trainer.callback_metrics["train/acc"].item()
    assert 0.0 <= acc <= 1.0 and acc * 32 == pytest.approx(round(acc * 32))  # 32 images
    assert not module.train_acc.update_called  # reset for the next epoch
