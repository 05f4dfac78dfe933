"""Lightning callbacks: attribution and uncertainty metrics and heat-map images at validation time.

- :class:`AttributionMetrics`: blurring test (MURR / AUC-URR) and anomaly localisation (IoU / ADA)
  of uncertainty maps on a fixed probe subset, logged as ``val/attr/<method>/<metric>``.
- :class:`UncertaintyMetrics`: OOD detection per uncertainty kind (``val/ood/<kind>/auroc`` ...)
  and the rotation curve (``val/rotation/<kind>@<angle>``).
- :class:`AttributionImages`: grids of inputs and maps, to TensorBoard and PNG files.
- :class:`AttentionMitigation`: fine-tuning with attention A(x) = (1 - M(x)) * M(x) from a map.

All work in ``fit`` (every N validation epochs), ``trainer.validate`` and ``trainer.test``, under
DDP (synced torchmetrics state, rank-zero writing), and restore the module's train/eval flags.
"""

from uattr.callbacks.attention import AttentionMitigation, attend, attention_mask, unit_maps
from uattr.callbacks.attribution_images import AttributionImages
from uattr.callbacks.attribution_metrics import AttributionMetrics
from uattr.callbacks.probe import Probe, ProbeCallback, build_probe, probe_indices
from uattr.callbacks.uncertainty_metrics import UncertaintyMetrics

__all__ = [
    "AttentionMitigation",
    "AttributionImages",
    "AttributionMetrics",
    "Probe",
    "ProbeCallback",
    "UncertaintyMetrics",
    "attend",
    "attention_mask",
    "build_probe",
    "probe_indices",
    "unit_maps",
]
