"""Information Bottleneck Attribution (Schulz, Sixt, Tombari & Landgraf, "Restricting the Flow:
Information Bottlenecks for Attribution", ICLR 2020): the Per-Sample and the Readout Bottleneck.

At a layer with features R [C, h, w], the bottleneck replaces R by

    Z = lambda * R + (1 - lambda) * eps,    eps ~ N(mu_R, sigma_R^2)   (per element),

with lambda = G_sigma * sigmoid(alpha) (a fixed depthwise Gaussian smoothing of the mask) and
mu_R, sigma_R estimated per element over a data set. The heat map is the information Z keeps
about R (a KL capacity per element) summed over channels, in bits, scaled by (h w) / (H W) so the
total number of bits is kept, and resized bilinearly to the image.

Posterior samples. The bottleneck is one forward hook that replaces a layer's output and makes
the noisy copies of every image. MCDropout runs a layer before its first dropout once on the B
images (its shared prefix) and a later layer on S*B sample-major rows; a DeepEnsemble runs each
member once (hook every member with ``"members.*.conv2"``). Every call gets the same lambda for
the same image, and the capacity is averaged over the posterior copies the layer saw and over the
calls (for a layer before the first dropout that is the capacity of the one feature map).

Modules, one job each:

- :mod:`~uattr.attribution.iba.capacity`: the capacity, the smoothing of lambda, the map in bits;
- :mod:`~uattr.attribution.iba.estimator`: :class:`FeatureEstimator` (mu_R, sigma_R);
- :mod:`~uattr.attribution.iba.bottleneck`: :class:`Bottleneck`, the hooks that insert Z;
- :mod:`~uattr.attribution.iba.per_sample`: :class:`PerSampleBottleneck`, alpha optimised per image;
- :mod:`~uattr.attribution.iba.readout`: :class:`Readout` (the trained network that predicts
  alpha) and :class:`ReadoutBottleneck` (its maps).
"""

from uattr.attribution.iba.bottleneck import Bottleneck, named_layers
from uattr.attribution.iba.capacity import capacity, capacity_map, gaussian_smoothing
from uattr.attribution.iba.estimator import FeatureEstimator
from uattr.attribution.iba.per_sample import PerSampleBottleneck
from uattr.attribution.iba.readout import Readout, ReadoutBottleneck, check_explains

__all__ = [
    "Bottleneck",
    "FeatureEstimator",
    "PerSampleBottleneck",
    "Readout",
    "ReadoutBottleneck",
    "capacity",
    "capacity_map",
    "check_explains",
    "gaussian_smoothing",
    "named_layers",
]
