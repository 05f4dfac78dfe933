"""AttributionImages writes valid PNG grids (CSV logger alone too) and TensorBoard images."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from uattr.callbacks import AttributionImages
from uattr.callbacks.attribution_images import render_grid
from uattr.data import MNIST5k
from uattr.lit import BayesianClassifier
from uattr.models import LeNet5


def _validate(tmp_path, logger) -> AttributionImages:
    seed_everything(0)
    model = BayesianClassifier(LeNet5(dropout=0.25), num_samples=4)
    callback = AttributionImages(methods=("gradient", "random"), num_images=3)
    trainer = Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[callback],
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.validate(model, MNIST5k(batch_size=32), verbose=False)
    return callback


def _check_png(path) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert height > width > 100  # 3 rows x 3 columns (input, gradient, random) plus titles


def test_png_grid_with_the_csv_logger_alone(tmp_path):
    callback = _validate(tmp_path, CSVLogger(tmp_path / "logs", name="run"))
    (path,) = callback.saved
    assert (
        path == tmp_path / "logs" / "run" / "version_0" / "attributions" / "val" / "epoch_000.png"
    )
    _check_png(path)


def test_tensorboard_gets_the_grid_as_an_image(tmp_path):
    logger = TensorBoardLogger(tmp_path / "logs", name="run")
    callback = _validate(tmp_path, [logger, CSVLogger(tmp_path / "logs", name="csv")])
    (path,) = callback.saved
    assert path.parent.parent.parent == tmp_path / "logs" / "run" / "version_0"  # first logger's
    _check_png(path)
    logger.experiment.flush()
    events = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0})
    events.Reload()
    assert "val/attributions" in events.Tags()["images"]
    (entry,) = events.Images("val/attributions")
    with Image.open(path) as png:
        assert (entry.width, entry.height) == png.size


def test_render_grid_handles_rgb_and_constant_maps():
    images = torch.rand(2, 3, 8, 8)
    maps = {"flat": torch.zeros(2, 8, 8), "ramp": torch.arange(64.0).view(1, 8, 8).repeat(2, 1, 1)}
    fig = render_grid(images, maps, ["a", "b"], "title")
    assert len(fig.axes) == 2 * 3
    ramp = fig.axes[2].images[0].get_array()
    assert np.isclose(ramp.min(), 0.0) and np.isclose(ramp.max(), 1.0)  # min-max scaled per map
    assert np.all(fig.axes[1].images[0].get_array() == 0.0)  # a constant map is drawn as 0
