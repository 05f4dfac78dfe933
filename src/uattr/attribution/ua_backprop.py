"""UA-Backprop: gradient-based uncertainty attribution (Wang, Joshi, Wang & Ji, CVPR 2023).

The uncertainty U of a posterior with S samples (logits z^s [K], probabilities g^s = softmax(z^s),
mean g_bar) is passed back in three stages:

A. U -> per-class contributions U_{g_i}, summing to U (Wang et al. 2023, section 3):

   - total      U_{g_i} = h(g_bar_i),                       h(p) = -p log p
   - aleatoric  U_{g_i} = (1/S) sum_s h(g_i^s)
   - epistemic  U_{g_i} = h(g_bar_i) - (1/S) sum_s h(g_i^s)   (>= 0 by Jensen)

B. g -> z routing (section 3): c^s_{j->i} = softmax_i((d g_j^s / d z_i^s) / (g_j^s tau1)),
   which for a softmax is softmax_i((delta_ij - g_i^s) / tau1), in closed form (no Jacobian);
   U_{z_i^s} = sum_j c^s_{j->i} U_{g_j}, so (1/S) sum_{s,i} U_{z_i^s} = U.

C. z -> x (section 3, the paper's "UA-Backprop + FullGrad" variant): per (s, i) the map
   v_i^s = sum_c |grad_x z_i^s ⊙ x| + sum_l up(sum_c |grad_{h_l} z_i^s ⊙ b_l|) over the spatial
   biased layers l (conv, folded BatchNorm, ``Normalize``), and M_i^s = psi(v_i^s, tau2), a
   distribution over the H*W pixels.

M(x) = (1/S) sum_{s,i} U_{z_i^s} M_i^s, so sum_pixels M(x) = U (completeness), M >= 0, and, as
c and psi do not depend on the uncertainty kind, M_total = M_aleatoric + M_epistemic.

Cost: one forward of the S*B rows plus K input backwards over all of them, each of which also
gives every bias map. By default (``classes_per_backward=1``) the K backwards are a loop of plain
``torch.autograd.grad`` calls, one one-hot cotangent per class, each map folded into the running
sum at once. ``classes_per_backward=k > 1`` makes them ``torch.autograd.grad(...,
is_grads_batched=True)`` calls over k cotangents; that runs on torch's legacy vmap, which has no
batching rule for ``convolution_backward`` or ``max_pool2d_with_indices_backward`` and loops over
the slices inside those ops, so on CPU it was slower than the loop, at ~k x the
activation-gradient memory (``docs/choices_and_timings.md``); try it on a GPU. The input
gradient of a first convolution takes the faster CPU route of
:func:`~uattr.attribution.conv_input_grad.small_input_conv_gradients`. ``naive=True`` is the
reference: one B-row forward per sample and one plain-autograd backward per (s, i).

Choices (all constructor options; ``docs/choices_and_timings.md``):

- tau1, tau2: UNCONFIRMED, the paper's values are in its supplement;
- psi: ``"softmax"`` over pixels of v / tau2 (the main text's psi, a channel average followed by a
  temperature softmax; here the terms are summed over channels, and how the paper treats the
  channels of the bias terms is UNCONFIRMED), or ``"power"`` v^(1/tau2) / sum v^(1/tau2);
- whether v is min-max rescaled to [0, 1] before psi (``rescale``, default True so that tau2 is
  scale-free; the main text mentions no rescale, so ``rescale=False`` is the literal reading), and
  whether each term is rescaled before the sum (``per_term_rescale``, FullGrad's per-layer
  post-processing; the paper puts the raw sum inside psi, the default here);
- whether the bias terms are used at all (``bias_terms``; the paper's main variant uses them).

Evidential models (one Dirichlet, S = 1): g is the expected probability p_hat = alpha / alpha_0,
z the backbone's logits, and stage A uses the Dirichlet quantities of
:func:`uattr.bayes.dirichlet_uncertainty` split per class (UNCONFIRMED reading):
total h(p_hat_i); aleatoric p_hat_i (psi(alpha_0 + 1) - psi(alpha_i + 1)) (digamma psi; >= 0);
epistemic their difference (>= 0); vacuity K / alpha_0 split equally, 1 / alpha_0 per class (the
prior's one pseudo-count per class). Routing keeps the softmax form with g = p_hat: the exact
Jacobian weight of the evidence map, (delta_ij / alpha_j - 1 / alpha_0) e'(z_i), vanishes for
inactive ReLU evidence and shrinks with the evidence scale, so tau1 would lose its meaning.

Class targets t (UNCONFIRMED reading): stage A becomes U_{g_i} = g_bar_t [i = t] (the posterior
predictive probability of the class, all of it on class t), routed and spread exactly as above,
so maps are >= 0 and sum to g_bar_t (p_hat_t for an evidential model), not to the mean logit.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from uattr.attribution.base import Attribution, Target, renamed_arguments, resolve_target
from uattr.attribution.bias_gradients import (
    BiasOutput,
    gradients,
    input_map,
    num_posterior_samples,
    posterior_forward,
    sample_forward,
    upsample,
)
from uattr.bayes.evidential import evidence
from uattr.bayes.posterior import check_uncertainty_kind, posterior_kind
from uattr.common import check_choice, check_images, check_optional_positive_int, minmax_scale
from uattr.modes import evaluating

__all__ = [
    "Contributions",
    "UABackprop",
    "class_contributions",
    "dirichlet_class_contributions",
    "logit_contributions",
    "pixel_distribution",
    "routing",
]

Psi = Literal["softmax", "power"]


def class_contributions(probs: torch.Tensor, target: Target) -> torch.Tensor:
    """Stage A: per-class contributions U_{g_i} [B, K] of S sampled predictions (Wang et al. 2023,
    section 3).

    Args:
        probs: [S, B, K] class probabilities g^s.
        target: ``"total"``, ``"aleatoric"``, ``"epistemic"``, or class indices [B] (then
            U_{g_i} = g_bar_t [i = t]).

    Returns:
        [B, K], >= 0, in nats (probabilities for a class target); rows sum to the uncertainty of
        :func:`uattr.bayes.decompose`.
    """
    mean = probs.mean(0)
    if isinstance(target, torch.Tensor):
        return _one_hot_of(mean, target)
    if target == "total":
        return torch.special.entr(mean)
    expected = torch.special.entr(probs).mean(0)
    if target == "aleatoric":
        return expected
    if target == "epistemic":
        return _difference(torch.special.entr(mean), expected)
    raise ValueError(
        f"uncertainty kind {target!r} has no per-class split for sampled predictions; use "
        "'total', 'aleatoric', 'epistemic' or class indices."
    )


def dirichlet_class_contributions(alpha: torch.Tensor, target: Target) -> torch.Tensor:
    """Stage A for a Dirichlet Dir(alpha): per-class contributions [B, K] (module docstring).

    Rows sum to the matching field of :func:`uattr.bayes.dirichlet_uncertainty`.
    """
    strength = alpha.sum(-1, keepdim=True)
    p_hat = alpha / strength
    if isinstance(target, torch.Tensor):
        return _one_hot_of(p_hat, target)
    if target == "vacuity":
        return (1.0 / strength).expand_as(alpha)
    total = torch.special.entr(p_hat)
    aleatoric = p_hat * (torch.digamma(strength + 1) - torch.digamma(alpha + 1))
    if target == "total":
        return total
    if target == "aleatoric":
        return aleatoric
    if target == "epistemic":
        return _difference(total, aleatoric)
    raise ValueError(f"unknown uncertainty kind {target!r}.")


def _difference(total: torch.Tensor, aleatoric: torch.Tensor) -> torch.Tensor:
    """Per-class epistemic ``total - aleatoric``, >= 0 mathematically (Jensen).

    Differences within float rounding of the two terms (identical posterior samples give ~1e-18
    instead of 0) are set to exactly 0, so a model without epistemic uncertainty gets a zero map.
    """
    diff = total - aleatoric
    tol = 16 * torch.finfo(diff.dtype).eps * (total.abs() + aleatoric.abs())
    return torch.where(diff > tol, diff, 0.0)


def _one_hot_of(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    k = probs.shape[-1]
    if target.min() < 0 or target.max() >= k:
        raise ValueError(
            f"class target out of range: the model has {k} classes, got classes "
            f"{target.min().item()}..{target.max().item()}."
        )
    onehot = F.one_hot(target.to(probs.device), k).to(probs.dtype)
    return onehot * probs


def routing(probs: torch.Tensor, tau1: float) -> torch.Tensor:
    """Stage B weights c[s, b, j, i] = c^s_{j->i} = softmax_i((delta_ij - g_i^s) / tau1).

    The closed form of the paper's softmax_i((d g_j / d z_i) / (g_j tau1)) for a softmax output
    (d g_j / d z_i = g_j (delta_ij - g_i)). ``tau1 = 0`` is the limit tau1 -> 0: c = identity.

    Args:
        probs: [S, B, K] probabilities g^s.

    Returns:
        [S, B, K, K]; each c[s, b, j, :] is a distribution over the logits i.
    """
    k = probs.shape[-1]
    eye = torch.eye(k, dtype=probs.dtype, device=probs.device)
    if tau1 == 0:
        return eye.expand(*probs.shape[:-1], k, k)
    scores = (eye - probs.unsqueeze(-2)) / tau1
    return torch.softmax(scores, dim=-1)


def logit_contributions(per_class: torch.Tensor, probs: torch.Tensor, tau1: float) -> torch.Tensor:
    """U_{z_i^s} = sum_j c^s_{j->i} U_{g_j}: [B, K] and [S, B, K] -> [S, B, K].

    (1/S) sum_{s,i} U_{z_i^s} = sum_j U_{g_j} (the routing rows sum to 1).
    """
    if tau1 == 0:
        return per_class.unsqueeze(0).expand_as(probs)
    return torch.einsum("sbji,bj->sbi", routing(probs, tau1), per_class)


def _minmax_to(v: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`uattr.common.minmax_scale` to [0, ``scale``] in one pass: ``(v - lo) * factor`` with
    ``factor = scale / span`` (the softmax path's rescale-and-divide-by-tau2, on the hot path)."""
    flat = v.flatten(-2)
    lo, hi = torch.aminmax(flat, dim=-1, keepdim=True)
    span = hi - lo
    factor = torch.where(span > 0, scale / span.clamp_min(torch.finfo(v.dtype).tiny), 0.0)
    return ((flat - lo) * factor).view_as(v)


def pixel_distribution(v: torch.Tensor, psi: Psi, tau2: float, rescale: bool) -> torch.Tensor:
    """psi(v, tau2): each non-negative [..., H, W] map -> a distribution over its H*W pixels.

    ``rescale`` first min-max rescales each map to [0, 1] (so tau2 does not depend on the logit
    scale). ``"softmax"``: softmax(v / tau2) over pixels. ``"power"``: v^(1/tau2) normalised (v is
    divided by its max first, which cancels; an all-zero map becomes uniform).
    """
    if psi == "softmax":
        # Rescaling to [0, 1 / tau2] in one pass is rescaling to [0, 1] and dividing by tau2.
        scaled = _minmax_to(v, 1.0 / tau2) if rescale else v / tau2
        return torch.softmax(scaled.flatten(-2), dim=-1).view_as(v)
    if rescale:
        v = minmax_scale(v)
    flat = v.flatten(-2)
    peak = flat.amax(-1, keepdim=True)
    powered = (flat / peak.clamp_min(torch.finfo(v.dtype).tiny)).pow(1.0 / tau2)
    mass = powered.sum(-1, keepdim=True)
    uniform = torch.full_like(powered, 1.0 / flat.shape[-1])
    return torch.where(
        mass > 0, powered / mass.clamp_min(torch.finfo(v.dtype).tiny), uniform
    ).view_as(v)


class Contributions(NamedTuple):
    """Stages A and B of UA-Backprop for one batch.

    Attributes:
        per_class: U_{g_i} [B, K] (float64).
        per_logit: U_{z_i^s} [S, B, K] (float64); (1/S) sum_{s,i} = the explained uncertainty.
    """

    per_class: torch.Tensor
    per_logit: torch.Tensor


class UABackprop(Attribution):
    """UA-Backprop maps [B, H, W]: >= 0, summing to the explained uncertainty (completeness).

    Args:
        model: ``MCDropout``, ``DeepEnsemble`` (its member loop is used: attribution hooks each
            member's layers), an ``Evidential`` model (needs ``.backbone``) or a plain classifier
            (S = 1; its epistemic uncertainty, and map, is 0).
        tau1: routing temperature of stage B (UNCONFIRMED: the paper's value is in its supplement;
            default 0.1: 98% of each class's contribution stays on its own logit for K = 10).
            ``0`` means no routing (the tau1 -> 0 limit, U_{z_i^s} = U_{g_i}).
        tau2: psi temperature (UNCONFIRMED: the paper's value is in its supplement). Default 1.0:
            on the [0, 1]-rescaled map, tau2 around 1 localised an anomaly patch in 62/64 MNIST
            images while tau2 <= 0.1 concentrated each (s, i) map on a few stroke pixels and
            localised in only ~31/64 (measured on MNIST with an earlier small implementation
            written for this project; ``docs/choices_and_timings.md``); a map-level ratio of e
            between the strongest and weakest pixel.
        psi: ``"softmax"`` (default; the paper's temperature softmax over pixels, section 3) or
            ``"power"``.
        rescale: min-max rescale v to [0, 1] before psi (default True, so tau2 is scale-free;
            False is the literal reading of the paper's section 3, with tau2 on the raw scale of
            v).
        bias_terms: add the spatial bias-gradient terms to v (default True, the paper's main
            variant); False uses the input term alone.
        per_term_rescale: min-max rescale the input term and each bias term separately before
            summing them (FullGrad's per-layer post-processing); default False (the paper sums the
            raw terms inside psi).
        classes_per_backward: one-hot class cotangents per backward (formerly ``class_chunk``,
            which now raises a TypeError). A count of classes, not of rows, so it is not the
            gradient methods' ``internal_batch_size``: every backward runs over all S*B rows of
            the one forward (the forward cannot be split without repeating it per class).
            ``1`` (default): a loop of K plain backwards (the least memory; the fastest on CPU,
            module docstring). ``k > 1``: K / k ``is_grads_batched`` backwards of k cotangents
            (transient memory ~k x the activation gradients of the S*B rows); ``None``: all K in
            one.
        naive: run the reference path instead: one B-row forward per posterior sample and one
            backward per (s, i). Same maps, far slower; for tests and benchmarks.

    Targets: an uncertainty kind or class indices (``None``: the predicted class). A callable
    target raises a TypeError: stage A splits the explained value over the classes, which needs
    the named decomposition, not an arbitrary scalar.
    """

    label: ClassVar[str] = "UA-Backprop"

    @renamed_arguments(class_chunk="classes_per_backward")
    def __init__(
        self,
        model: nn.Module,
        tau1: float = 0.1,
        tau2: float = 1.0,
        psi: Psi = "softmax",
        rescale: bool = True,
        bias_terms: bool = True,
        per_term_rescale: bool = False,
        classes_per_backward: int | None = 1,
        naive: bool = False,
    ) -> None:
        super().__init__(model)
        if not (isinstance(tau1, int | float) and math.isfinite(tau1) and tau1 >= 0):
            raise ValueError(f"tau1 must be a finite number >= 0 (0 = no routing), got {tau1!r}.")
        if not (isinstance(tau2, int | float) and math.isfinite(tau2) and tau2 > 0):
            raise ValueError(f"tau2 must be a finite number > 0, got {tau2!r}.")
        self.tau1 = float(tau1)
        self.tau2 = float(tau2)
        self.psi = check_choice(psi, get_args(Psi), "psi")
        self.rescale = bool(rescale)
        self.bias_terms = bool(bias_terms)
        self.per_term_rescale = bool(per_term_rescale)
        self.classes_per_backward = check_optional_positive_int(
            classes_per_backward, "classes_per_backward"
        )
        self.naive = bool(naive)

    # ----------------------------------------------------------------- stages A and B (weights)
    def _contributions_from_logits(
        self, logits: torch.Tensor, x: torch.Tensor, target: Target
    ) -> Contributions:
        """Stages A and B from the forward's logits [S, B, K] (detached, float64)."""
        logits = logits.detach().double()
        if posterior_kind(self.model) == "evidential":
            kind = getattr(self.model, "evidence", None)
            if isinstance(kind, str):
                alpha = evidence(logits[0], kind) + 1.0
            else:
                with torch.no_grad():
                    alpha = self.model.alpha(x).detach().double()
            per_class = dirichlet_class_contributions(alpha, target)
            probs = (alpha / alpha.sum(-1, keepdim=True)).unsqueeze(0)
        else:
            probs = torch.softmax(logits, dim=-1)
            per_class = class_contributions(probs, target)
        return Contributions(per_class, logit_contributions(per_class, probs, self.tau1))

    def contributions(self, x: torch.Tensor, target: Target) -> Contributions:
        """U_{g_i} [B, K] and U_{z_i^s} [S, B, K] for images ``x`` (one no-grad forward, in eval
        mode)."""
        check_images(x, name=f"{self.name} inputs")
        with evaluating(self.model), torch.inference_mode(False), torch.no_grad():
            x = x.detach().clone()
            target = resolve_target(self.model, x, target)
            self.check_supported(target)
            self._check_kind(target)
            pf = posterior_forward(self.model, x)
            return self._contributions_from_logits(pf.logits, x, target)

    def _check_kind(self, target: Target) -> None:
        if isinstance(target, str):
            check_uncertainty_kind(self.model, target)

    # ----------------------------------------------------------------- stage C (maps)
    def _raw_map(
        self,
        grad_x: torch.Tensor,
        x: torch.Tensor,
        sites: list[BiasOutput],
        site_grads: list[torch.Tensor],
        rows: list[slice],
    ) -> torch.Tensor:
        """v [..., N, H, W] from the input gradient and the spatial bias-layer gradients."""
        size = (x.shape[-2], x.shape[-1])
        term = input_map(grad_x, x)
        v = minmax_scale(term) if self.per_term_rescale else term
        for site, g, r in zip(sites, site_grads, rows, strict=True):
            term = upsample(site.abs_map(g), size)
            if self.per_term_rescale:
                term = minmax_scale(term)
            v[..., r, :, :] += term
        return v

    def _distribution(self, v: torch.Tensor) -> torch.Tensor:
        return pixel_distribution(v, self.psi, self.tau2, self.rescale)

    def attribute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        self._check_kind(target)
        if self.naive:
            return self._attribute_naive(x, target)
        pf = posterior_forward(self.model, x)
        s, b, k = pf.logits.shape
        weights = self._contributions_from_logits(pf.logits, x, target).per_logit / s
        weights = weights.reshape(s * b, k).to(x.dtype)
        spatial = [i for i, site in enumerate(pf.sites) if site.spatial] if self.bias_terms else []
        sites = [pf.sites[i] for i in spatial]
        rows = [pf.rows[i] for i in spatial]

        z = pf.logits.reshape(s * b, k)
        if not z.requires_grad:
            raise RuntimeError(
                f"{type(self.model).__name__}'s logits do not depend on the input through "
                "autograd (detached inside the model?); UA-Backprop needs a differentiable model."
            )
        per_row = x.new_zeros(s * b, *x.shape[-2:])
        # Classes with zero weight in every row (a zero-uncertainty batch) need no backward.
        active = (weights != 0).any(0).nonzero().flatten().tolist()
        chunk = len(active) if self.classes_per_backward is None else self.classes_per_backward
        for start in range(0, len(active), max(chunk, 1)):
            classes = active[start : start + chunk]
            onehot = F.one_hot(torch.tensor(classes, device=z.device), k).to(z.dtype)
            batched = len(classes) > 1
            cotangent = (
                onehot[:, None, :].expand(len(classes), s * b, k)
                if batched
                else onehot.expand(s * b, k)
            )
            grad_x, site_grads = gradients(z, pf.inputs, sites, cotangent, batched=batched)
            if not batched:
                grad_x, site_grads = grad_x[None], [g[None] for g in site_grads]
            dist = self._distribution(self._raw_map(grad_x, pf.inputs, sites, site_grads, rows))
            per_row += torch.einsum("kn,knhw->nhw", weights[:, classes].T, dist)
        return per_row.view(s, b, *x.shape[-2:]).sum(0)

    def _attribute_naive(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        """Reference: per sample s a B-row forward, per (s, i) one backward of sum_b z_i^s."""
        s_total = num_posterior_samples(self.model)
        runs = [sample_forward(self.model, x, s) for s in range(s_total)]
        logits = torch.stack([logit for _, logit, _ in runs])
        b, k = logits.shape[1:]
        weights = (self._contributions_from_logits(logits, x, target).per_logit / s_total).to(
            x.dtype
        )
        maps = x.new_zeros(b, *x.shape[-2:])
        for s, (leaf, logit, all_sites) in enumerate(runs):
            sites = [site for site in all_sites if site.spatial] if self.bias_terms else []
            rows = [slice(0, b)] * len(sites)
            for i in range(k):
                if not (weights[s, :, i] != 0).any():
                    continue
                cotangent = F.one_hot(torch.full((b,), i, device=x.device), k).to(logit.dtype)
                grad_x, site_grads = gradients(logit, leaf, sites, cotangent, batched=False)
                dist = self._distribution(self._raw_map(grad_x, leaf, sites, site_grads, rows))
                maps += weights[s, :, i, None, None] * dist
        return maps
