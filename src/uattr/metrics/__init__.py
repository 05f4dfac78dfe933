"""Metrics as ``torchmetrics.Metric`` subclasses (DDP-synced state), each with a functional twin.

Attribution quality: :class:`BlurringTest` (MURR, AUC-URR), :class:`AnomalyLocalization` (IoU,
ADA, pointing game), :class:`BoundingBoxRatio`, :class:`PointingGame`, :class:`Degradation`
(MoRF / LeRF), :class:`SensitivityN`, :class:`RandomizationSanity` (SSIM). Uncertainty quality:
:class:`NegativeLogLikelihood`, :class:`BrierScore`, :class:`ExpectedCalibrationError`,
:class:`OODDetection` (AUROC, AUPR, FPR@95TPR).
"""

from uattr.metrics.blurring import (
    BlurringTest,
    blur_images,
    blurring_curves,
    blurring_scores,
    count_grid,
)
from uattr.metrics.calibration import (
    BrierScore,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
)
from uattr.metrics.degradation import Degradation, degradation_curves
from uattr.metrics.localization import (
    AnomalyLocalization,
    BoundingBoxRatio,
    PointingGame,
    bounding_box_ratio,
    box_iou,
    boxes_to_masks,
    dice_iou_thresholded,
    pointing_hits,
    predicted_boxes,
)
from uattr.metrics.ood import OODDetection, ood_detection
from uattr.metrics.randomization import RandomizationSanity, map_ssim, randomizable_layers
from uattr.metrics.sensitivity import SensitivityN, sensitivity_n_samples

__all__ = [
    "AnomalyLocalization",
    "BlurringTest",
    "BoundingBoxRatio",
    "BrierScore",
    "Degradation",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "OODDetection",
    "PointingGame",
    "RandomizationSanity",
    "SensitivityN",
    "blur_images",
    "blurring_curves",
    "blurring_scores",
    "bounding_box_ratio",
    "box_iou",
    "boxes_to_masks",
    "brier_score",
    "count_grid",
    "degradation_curves",
    "dice_iou_thresholded",
    "expected_calibration_error",
    "map_ssim",
    "negative_log_likelihood",
    "ood_detection",
    "pointing_hits",
    "predicted_boxes",
    "randomizable_layers",
    "sensitivity_n_samples",
]
