"""Blurring test of uncertainty maps: MURR and AUC-URR (UA-Backprop, Wang et al. CVPR 2023).

Pixels are replaced, most-attributed first, by the pixels of a Gaussian-blurred copy of the original
image, and the uncertainty is recomputed after each step. A good uncertainty map removes uncertainty
fast: a high maximum uncertainty-reduction rate (MURR) and a low area under the
remaining-uncertainty curve (AUC-URR). The precedent is Perez et al. (UAI 2022, Featurespace
``uncertainty_library``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn
from torchmetrics.utilities.data import dim_zero_cat
from torchvision.transforms.functional import gaussian_blur

from uattr.common import check_choice, check_positive_int
from uattr.metrics._common import (
    UncertaintyFn,
    check_images_and_maps,
    evaluate_chunks,
    index_batches,
    percent,
    resolve_uncertainty,
    tie_break_ranks,
)

__all__ = ["BlurringTest", "blur_images", "blurring_curves", "blurring_scores", "count_grid"]

_SELECTIONS = ("above_median", "all")


def _kernel_size(sigma: float, kernel_size: int | None, height: int, width: int) -> int:
    """Odd Gaussian kernel size: scipy's ``gaussian_filter`` radius int(4 sigma + 0.5) by default,
    capped so that the reflect padding (radius) stays below the image side."""
    if kernel_size is None:
        radius = int(4.0 * sigma + 0.5)
    else:
        radius = (kernel_size - 1) // 2
    radius = max(0, min(radius, min(height, width) - 1))
    return 2 * radius + 1


def blur_images(
    x: torch.Tensor, sigma: float = 1.5, kernel_size: int | None = None
) -> torch.Tensor:
    """Gaussian blur of every channel of ``x`` [B, C, H, W] (torchvision ``gaussian_blur``).

    The default kernel has scipy's radius int(4 sigma + 0.5) (13 taps for sigma 1.5), as Perez et
    al.'s ``scipy.ndimage.gaussian_filter``; torchvision reflects at the border without repeating
    the edge pixel (scipy's "mirror"), so the outermost pixels differ slightly from scipy's default.
    """
    k = _kernel_size(sigma, kernel_size, x.shape[-2], x.shape[-1])
    if k == 1:
        return x.clone()
    return gaussian_blur(x, [k, k], [sigma, sigma])


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """The fractions p as a tuple of floats, checked: non-empty, in (0, 1], distinct keys."""
    fractions = tuple(float(p) for p in fractions)
    if not fractions or any(not 0.0 < p <= 1.0 for p in fractions):
        raise ValueError(
            f"fractions must be a non-empty list of values in (0, 1], got {fractions}."
        )
    if len({percent(p) for p in fractions}) != len(fractions):
        raise ValueError(f"fractions must be distinct, got {fractions}.")
    return fractions


def count_grid(
    num_pixels: int, fractions: Sequence[float], budget_only: bool = False
) -> dict[str, torch.Tensor]:
    """Pixel counts at which the blurring test reads the uncertainty, and where each reading reads.

    Returns ``"grid"`` (LongTensor of the sorted unique counts, starting with 0) and, per fraction
    p, ``"step@p"`` and ``"budget@p"``: LongTensor indices into ``grid`` of that reading's counts,
    in order (see :class:`BlurringTest`):

    - step reading: k = 0 .. ceil(1/p), count min(ceil(k p HW), HW);
    - budget reading: counts 0, 1, ..., floor(p HW) (one pixel per step, at most p of the pixels).

    With ``budget_only`` there is no ``"step@p"`` and the grid is the budget counts
    0 .. floor(max(fractions) HW) alone, so ``budget@p`` = 0 .. floor(p HW): the curves of
    :func:`blurring_curves` on that grid give the budget reading at a fraction of the cost.

    Args:
        num_pixels: H * W, the pixels of one image.
        fractions: the p values, in (0, 1].
    """
    check_positive_int(num_pixels, "num_pixels")
    counts: dict[str, list[int]] = {}
    for p in _check_fractions(fractions):
        if not budget_only:
            steps = math.ceil(1.0 / p - 1e-9)
            counts[f"step@{percent(p)}"] = [
                min(math.ceil(k * p * num_pixels - 1e-9), num_pixels) for k in range(steps + 1)
            ]
        counts[f"budget@{percent(p)}"] = list(range(math.floor(p * num_pixels + 1e-9) + 1))
    grid = sorted({c for cs in counts.values() for c in cs})
    where = {c: i for i, c in enumerate(grid)}
    out = {"grid": torch.tensor(grid)}
    out.update({name: torch.tensor([where[c] for c in cs]) for name, cs in counts.items()})
    return out



def _remaining_ratios(u_curves: torch.Tensor, min_uncertainty: float) -> torch.Tensor:
    """Remaining-uncertainty curves r_n = U_n / U_0, float64 [N', M], of the N' images whose
    U_0 (column 0) is above ``min_uncertainty`` (nats), in their original order."""
    u = u_curves.double()
    valid = u[:, 0] > min_uncertainty
    return u[valid] / u[valid, :1]


def blurring_scores(
    u_curves: torch.Tensor,
    num_pixels: int,
    fractions: Sequence[float],
    min_uncertainty: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Per-image MURR and AUC-URR of blurring curves (Perez et al. UAI 2022): float64 [N'] each.

    The one implementation of the scores: :class:`BlurringTest` reports the mean (and median) of
    these values over the images it selects. With r_n = U_n / U_0 and x_n = n / HW the fraction
    blurred, per fraction p (definitions in :class:`BlurringTest`):

    - ``"murr@p"`` = max URR_n = max (1 - r_n) over the budget counts n = 0 .. floor(p HW);
    - ``"auc_urr@p"`` = trapezoid area under r over [0, floor(p HW) / HW], divided by that width;
    - ``"murr_step@p"``, ``"auc_urr_step@p"``: the same over the step counts, the area over
      [0, 1] undivided (only when the curves are on the full count grid).

    Args:
        u_curves: uncertainty U_n (nats) [N, M] of N images, either on the full
            ``count_grid(num_pixels, fractions)["grid"]`` (``BlurringTest``'s ``u_curves`` state)
            or on the budget counts ``count_grid(num_pixels, fractions, budget_only=True)["grid"]``
            = 0 .. floor(max(fractions) HW) (then only the budget keys are returned).
        num_pixels: H * W.
        fractions: the p values, in (0, 1].
        min_uncertainty: images with U_0 <= this (nats) are left out (the default 1e-6 is a
            choice: float32 entropy noise; a plain classifier's epistemic uncertainty is 0).

    Returns:
        ``{"murr@2%": [N'], "auc_urr@2%": [N'], "murr_step@2%": [N'], "auc_urr_step@2%": [N'],
        ...}`` over the N' images with U_0 > ``min_uncertainty``, in their order in ``u_curves``.
    """
    fractions = _check_fractions(fractions)
    full = count_grid(num_pixels, fractions)
    budget = count_grid(num_pixels, fractions, budget_only=True)
    sizes = (full["grid"].numel(), budget["grid"].numel())
    if (
        not isinstance(u_curves, torch.Tensor)
        or u_curves.dim() != 2
        or u_curves.shape[1] not in sizes
    ):
        n_max = sizes[1] - 1
        raise ValueError(
            f"u_curves must be [N, M] curves on the full count grid (M = {sizes[0]}) or on the "
            f"budget counts 0..{n_max} (M = {n_max + 1}), got "
            f"{getattr(u_curves, 'shape', type(u_curves).__name__)}."
        )
    grid = full if u_curves.shape[1] == sizes[0] else budget
    r = _remaining_ratios(u_curves, min_uncertainty)
    frac = grid["grid"].to(r.device, torch.float64) / num_pixels
    out: dict[str, torch.Tensor] = {}
    for p in fractions:
        key = percent(p)
        ib = grid[f"budget@{key}"].to(r.device)
        rb, xb = r[:, ib], frac[ib]
        out[f"murr@{key}"] = (1.0 - rb).amax(1)
        out[f"auc_urr@{key}"] = torch.trapezoid(rb, xb, dim=1) / xb[-1]
        if f"step@{key}" in grid:
            i_s = grid[f"step@{key}"].to(r.device)
            rs, xs = r[:, i_s], frac[i_s]
            out[f"murr_step@{key}"] = (1.0 - rs).amax(1)
            out[f"auc_urr_step@{key}"] = torch.trapezoid(rs, xs, dim=1)
    return out


def blurring_curves(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    counts: torch.Tensor,
    uncertainty: str | UncertaintyFn = "epistemic",
    sigma: float = 1.5,
    kernel_size: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Uncertainty after blurring the top-``counts`` pixels of each map: float64 [B, len(counts)].

    For each image, spatial locations (all channels together) are ranked by map value, descending,
    ties broken by one seeded random permutation; the first n of them take the pixels of
    :func:`blur_images` of the *original* image. All B x len(counts) perturbed copies are scored in
    chunks of ``batch_size`` under ``no_grad`` with the model in eval mode.

    Args:
        model: a posterior wrapper or a plain classifier
            (see :func:`uattr.bayes.posterior.uncertainty`).
        x: images [B, C, H, W] in [0, 1].
        maps: attributions [B, H, W], larger = more responsible.
        counts: LongTensor of pixel counts in [0, H * W].
        uncertainty: a kind ("total", "aleatoric", "epistemic", "vacuity") or ``(model, x) -> [B]``.
    """
    x, maps = check_images_and_maps(x, maps)
    fn = resolve_uncertainty(uncertainty)
    check_positive_int(batch_size, "batch_size")
    b, c, h, w = x.shape
    counts = counts.to(x.device)
    m = counts.numel()
    ranks = tie_break_ranks(maps.flatten(1), seed)  # [B, HW]
    blurred = blur_images(x, sigma, kernel_size)

    def chunks():
        for idx in index_batches(b * m, batch_size, x.device):
            img, n = idx // m, counts[idx % m]
            mask = (ranks[img] < n[:, None]).view(-1, 1, h, w)
            yield torch.where(mask, blurred[img], x[img])

    u = evaluate_chunks(model, fn, chunks())
    if u.dim() != 1:
        raise RuntimeError(
            f"the uncertainty must be one value per image [B], got shape {tuple(u.shape)}."
        )
    return u.view(b, m)


class BlurringTest(Metric):
    """Blurring test of uncertainty maps: MURR (higher is better) and AUC-URR (lower is better).

    Protocol (UA-Backprop, Wang et al. CVPR 2023; Perez et al. UAI 2022):

    - ``update(model, x [B, C, H, W], maps [B, H, W])`` ranks each image's pixels (spatial
      locations, all channels together) by map value, descending, with a seeded random tie-break,
      replaces the first n by the pixels of a Gaussian-blurred copy of the *original* image
      (``sigma`` 1.5 as Perez et al.'s MNIST script; torchvision reflect padding) and recomputes the
      chosen uncertainty U_n (nats) with fixed posterior samples. The perturbed copies are scored as
      batches of ``batch_size``.
    - Remaining-uncertainty curve r_n = U_n / U_0; reduction rate URR_n = 1 - r_n.
    - The paper blurs at most p of the pixels (the budget reading; Wang et al. 2023, section
      5.2.1); the step reading is reported too, for comparison:

      * **step** reading (blur p of the pixels per step until all are blurred; counts
        min(ceil(k p HW), HW), k = 0 .. ceil(1/p)): ``murr_step@p`` = mean over images of
        max_k URR_k; ``auc_urr_step@p`` = mean over images of the trapezoid area under r against
        the fraction blurred, over [0, 1].
      * **budget** reading (Perez et al.: one pixel per step, at most floor(p HW) pixels):
        ``murr@p`` = mean over images of the max URR within the budget; ``auc_urr@p`` = mean over
        images of the area under r over [0, floor(p HW) / HW] divided by that width (the mean
        remaining uncertainty, in [0, 1] for a curve that never rises).

      MURR includes step 0, so it is never negative. Medians over images: ``murr_median@p`` and
      ``murr_step_median@p`` (Perez et al. report medians, and so does the paper, section 5.2.1).
    - Image selection (``selection``): ``"above_median"`` (default, as Perez et al.'s MNIST script)
      keeps images whose U_0 is at or above the median U_0 (numpy's median: the mean of the two
      middle values for an even count) of *all images seen since the last reset*, so the selection
      happens in ``compute`` over the synced per-image curves (``cat`` states); ``"all"`` keeps
      every image.
      UA-Backprop scores "highly uncertain" images (section 5.2.1); how many, and the threshold,
      are in its supplement (UNCONFIRMED).
    - Selected images with U_0 <= ``min_uncertainty`` (default 1e-6 nats, a choice: float32 entropy
      noise; a plain classifier's epistemic uncertainty is 0) are skipped and counted in
      ``num_skipped``; ``num_images`` counts the images scored.

    ``compute()`` -> ``{"murr@2%", "auc_urr@2%", "murr_median@2%", "murr_step@2%",
    "auc_urr_step@2%", "murr_step_median@2%", ... for each fraction, "num_images",
    "num_skipped"}`` (float64 scalars; NaN with a warning if no image is left). :meth:`curves`
    gives the mean curves for plotting.

    Args:
        uncertainty: "total" | "aleatoric" | "epistemic" | "vacuity" (via
            :func:`uattr.bayes.posterior.uncertainty`), or a callable ``(model, x) -> Tensor[B]``.
        fractions: the p values (default 2% and 5%, the paper's, section 5.2.1).
        sigma: Gaussian blur standard deviation in pixels (default 1.5, Perez et al.'s MNIST value;
            UA-Backprop's is in its supplement, UNCONFIRMED).
        kernel_size: odd blur kernel size; default scipy's 2 int(4 sigma + 0.5) + 1, capped by the
            image size.
        selection: "above_median" or "all".
        batch_size: perturbed copies per model call.
        seed: seed of the tie-break permutation.
        min_uncertainty: U_0 at or below this (nats) is skipped.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        uncertainty: str | UncertaintyFn = "epistemic",
        fractions: Sequence[float] = (0.02, 0.05),
        sigma: float = 1.5,
        kernel_size: int | None = None,
        selection: Literal["above_median", "all"] = "above_median",
        batch_size: int = 256,
        seed: int = 0,
        min_uncertainty: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._uncertainty_fn = resolve_uncertainty(uncertainty)
        fractions = _check_fractions(fractions)
        if sigma <= 0:
            raise ValueError(f"sigma must be positive (pixels), got {sigma}.")
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
        check_choice(selection, _SELECTIONS, "selection")
        self.uncertainty = uncertainty if isinstance(uncertainty, str) else "custom"
        self.fractions = fractions
        self.sigma = float(sigma)
        self.kernel_size = kernel_size
        self.selection = selection
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = seed
        self.min_uncertainty = min_uncertainty
        self.add_state("u_curves", default=[], dist_reduce_fx="cat")
        self.add_state("num_pixels", default=torch.tensor(0), dist_reduce_fx="max")

    def update(self, model: nn.Module, x: torch.Tensor, maps: torch.Tensor) -> None:
        """Score ``maps`` [B, H, W] of images ``x`` [B, C, H, W] under ``model``."""
        x, maps = check_images_and_maps(x, maps)
        hw = x.shape[-2] * x.shape[-1]
        if int(self.num_pixels) not in (0, hw):
            raise ValueError(
                f"all images of one BlurringTest must have the same size; got {hw} pixels after "
                f"{int(self.num_pixels)}. Use one metric per image size, or reset() it."
            )
        grid = count_grid(hw, self.fractions)
        if grid["budget@" + percent(min(self.fractions))].numel() < 2:
            raise ValueError(
                f"a {x.shape[-2]}x{x.shape[-1]} image has fewer than 1/{min(self.fractions)} "
                "pixels, so the budget reading would blur nothing; use larger fractions."
            )
        u = blurring_curves(
            model,
            x,
            maps,
            grid["grid"],
            self._uncertainty_fn,
            self.sigma,
            self.kernel_size,
            self.batch_size,
            self.seed,
        )
        self.u_curves.append(u)
        self.num_pixels = torch.tensor(hw, device=self.num_pixels.device)

    def _selected_curves(self) -> torch.Tensor:
        """The synced curves [N_sel, M] (float64) of the images that ``selection`` keeps."""
        u = dim_zero_cat(self.u_curves)
        if self.selection == "above_median":
            u0 = u[:, 0]
            u = u[u0 >= torch.quantile(u0, 0.5)]
        return u

    def _warn_if_empty(self, num_images: int, num_skipped: int) -> None:
        if num_images == 0:
            rank_zero_warn(
                f"BlurringTest: no image has an uncertainty above {self.min_uncertainty} nats "
                f"({num_skipped} skipped); the results are NaN. A plain classifier has no "
                "epistemic uncertainty: use a posterior wrapper or uncertainty='total'.",
                UserWarning,
            )

    def compute(self) -> dict[str, torch.Tensor]:
        u = self._selected_curves()
        scores = blurring_scores(u, int(self.num_pixels), self.fractions, self.min_uncertainty)
        num_images = scores[f"murr@{percent(self.fractions[0])}"].numel()
        num_skipped = u.shape[0] - num_images
        self._warn_if_empty(num_images, num_skipped)
        out: dict[str, torch.Tensor] = {}
        for p in self.fractions:
            key = percent(p)
            murr, murr_step = scores[f"murr@{key}"], scores[f"murr_step@{key}"]
            out[f"murr@{key}"] = murr.mean()
            out[f"auc_urr@{key}"] = scores[f"auc_urr@{key}"].mean()
            out[f"murr_median@{key}"] = _median(murr)
            out[f"murr_step@{key}"] = murr_step.mean()
            out[f"auc_urr_step@{key}"] = scores[f"auc_urr_step@{key}"].mean()
            out[f"murr_step_median@{key}"] = _median(murr_step)
        out["num_images"] = torch.tensor(float(num_images), dtype=torch.float64, device=u.device)
        out["num_skipped"] = torch.tensor(float(num_skipped), dtype=torch.float64, device=u.device)
        return out

    def curves(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Mean remaining-uncertainty curves over the scored images, for plotting.

        Returns ``{"step@2%": (fraction blurred [L], mean r [L]), "budget@2%": (...), ...}``
        (float64, on the CPU). Call after the last ``update`` (it syncs like ``compute``).
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
            u = self._selected_curves()
            hw = int(self.num_pixels)
        r = _remaining_ratios(u, self.min_uncertainty)
        self._warn_if_empty(r.shape[0], u.shape[0] - r.shape[0])
        grid = count_grid(hw, self.fractions)
        frac = grid["grid"].to(torch.float64) / hw
        mean = r.mean(0).cpu()
        return {name: (frac[idx], mean[idx]) for name, idx in grid.items() if name != "grid"}


def _median(v: torch.Tensor) -> torch.Tensor:
    """numpy-style median (mean of the two middle values); NaN for an empty tensor."""
    if v.numel() == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=v.device)
    return torch.quantile(v, 0.5)
