"""Deep ensemble posterior (Lakshminarayanan et al. 2017): M independently initialised members."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, vmap

from uattr.common import check_images

__all__ = ["DeepEnsemble"]


class DeepEnsemble(nn.Module):
    """M members of one architecture; member m is posterior sample theta^m.

    :meth:`member_logits` runs the members in their current train/eval modes (training).
    :meth:`sample_logits` runs them all in eval mode (the posterior predictive samples;
    deterministic) and restores every submodule's flag exactly.

    Both run the members as one vectorised call when they can: ``torch.func.functional_call`` of
    member 0's module under ``vmap`` over parameters and buffers stacked with ``torch.stack`` (so
    gradients reach every member's own parameters; ``randomness="different"`` gives each member its
    own dropout draws). They fall back to a Python loop over the members, with the same values, when

    - ``vectorize=False`` or there is one member;
    - a normalisation layer with running statistics (BatchNorm) is in training mode: its in-place
      running-stat update cannot write batched values into the members' buffers under ``vmap``;
    - the members' train/eval patterns differ (``functional_call`` runs member 0's modules);
    - any member submodule, or the global module registry, has forward/backward hooks: under
      ``vmap`` only member 0's hooks would fire, and on batched tensors; attribution methods hook
      layers, and the loop gives every member's hooks its own activations.

    Args:
        members: M >= 1 modules with identical architectures (same class, parameter and buffer
            names and shapes), each mapping images [B, C, H, W] to logits [B, K].
        vectorize: allow the vectorised path.

    Raises:
        ValueError: no members, or members that differ in architecture.
    """

    def __init__(self, members: Sequence[nn.Module], vectorize: bool = True) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("DeepEnsemble needs at least one member; got an empty sequence.")
        for i, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise TypeError(f"member {i} must be an nn.Module, got {type(member).__name__}.")
        for i, member in enumerate(members[1:], start=1):
            _check_same_architecture(members[0], member, i)
        self.members = nn.ModuleList(members)
        self.vectorize = bool(vectorize)

    @classmethod
    def from_backbone(
        cls, backbone: nn.Module, num_members: int = 5, seed: int = 0, vectorize: bool = True
    ) -> DeepEnsemble:
        """M deep copies of ``backbone``, member m re-initialised with seed ``seed + m``.

        Every submodule with a ``reset_parameters()`` method is reset (BatchNorm also resets its
        running statistics). The reset runs on a CPU copy under ``torch.random.fork_rng`` with the
        CPU generator seeded, so the global RNG state is untouched and the initial weights are the
        same whatever device the backbone lives on; each member then moves back to that device.
        Parameters held by a module without ``reset_parameters()`` are not re-initialised and
        would be identical in all members: that raises, because the ensemble would carry no
        epistemic uncertainty.

        Raises:
            ValueError: ``num_members < 1``, a backbone spread over several devices, or
                parameters that no ``reset_parameters()`` covers.
        """
        if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
            raise ValueError(f"num_members must be an int >= 1, got {num_members!r}.")
        not_reset = [
            f"{mod_name}.{p_name}" if mod_name else p_name
            for mod_name, module in backbone.named_modules()
            if not callable(getattr(module, "reset_parameters", None))
            for p_name, _ in module.named_parameters(recurse=False)
        ]
        if not_reset:
            raise ValueError(
                "DeepEnsemble.from_backbone re-initialises members through reset_parameters(), "
                f"but these parameters belong to modules without one: {not_reset[:5]}"
                f"{'...' if len(not_reset) > 5 else ''}. Give those modules a reset_parameters() "
                "method, or build the members yourself and pass them to DeepEnsemble(members)."
            )
        devices = {t.device for t in (*backbone.parameters(), *backbone.buffers())}
        if len(devices) > 1:
            raise ValueError(
                f"the backbone's tensors are on several devices ({sorted(map(str, devices))}); "
                "move it to one device before building the ensemble."
            )
        device = devices.pop() if devices else torch.device("cpu")
        members = []
        for m in range(num_members):
            member = copy.deepcopy(backbone).to("cpu")
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(seed + m)
                for module in member.modules():
                    reset = getattr(module, "reset_parameters", None)
                    if callable(reset):
                        reset()
            members.append(member.to(device))
        return cls(members, vectorize=vectorize)

    @property
    def num_samples(self) -> int:
        """M, the number of members (posterior samples)."""
        return len(self.members)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every member in its current train/eval mode: [B, C, H, W] -> [M, B, K].

        Used for training (each member's loss on the same batch); gradients reach every member.
        """
        self._check_inputs(x)
        m = self.num_samples
        return self._run(x.unsqueeze(0).expand(m, *x.shape), expanded=False)

    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior predictive samples: every member in eval mode, [B, C, H, W] -> [M, B, K].

        Deterministic; every submodule's ``training`` flag is restored exactly afterwards.
        """
        self._check_inputs(x)
        m = self.num_samples
        with _all_eval(self.members):
            return self._run(x.unsqueeze(0).expand(m, *x.shape), expanded=False)

    def sample_logits_expanded(self, xs: torch.Tensor) -> torch.Tensor:
        """Like :meth:`sample_logits` for an already expanded batch (useful as a gradient leaf).

        Args:
            xs: [M*B, C, H, W], member-major: row ``m*B + b`` goes through member m.

        Returns:
            logits [M, B, K].
        """
        self._check_inputs(xs)
        m = self.num_samples
        if xs.shape[0] % m:
            raise ValueError(
                f"expanded inputs have {xs.shape[0]} rows, not a multiple of M = {m}; expected "
                "[M*B, C, H, W] in member-major order."
            )
        with _all_eval(self.members):
            return self._run(xs.reshape(m, xs.shape[0] // m, *xs.shape[1:]), expanded=True)

    forward = sample_logits

    def can_vectorize(self) -> bool:
        """Whether the next call in the members' current modes would take the vmap path."""
        if not self.vectorize or self.num_samples == 1:
            return False
        patterns = {tuple(mod.training for mod in member.modules()) for member in self.members}
        if len(patterns) > 1:
            return False
        for member in self.members:
            for mod in member.modules():
                if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.training:
                    return False
                if _has_hooks(mod):
                    return False
        return not _global_hooks()

    def _check_inputs(self, x: torch.Tensor) -> None:
        check_images(x, getattr(self.members[0], "in_channels", None), name="DeepEnsemble inputs")

    def _run(self, xs: torch.Tensor, expanded: bool) -> torch.Tensor:
        """``xs`` [M, B, ...]; member m sees ``xs[m]``. Returns [M, B, K]."""
        if self.can_vectorize():
            template = self.members[0]
            names = [n for n, _ in template.named_parameters()]
            buffer_names = [n for n, _ in template.named_buffers()]
            member_params = [dict(member.named_parameters()) for member in self.members]
            member_buffers = [dict(member.named_buffers()) for member in self.members]
            params = {n: torch.stack([p[n] for p in member_params]) for n in names}
            buffers = {n: torch.stack([b[n] for b in member_buffers]) for n in buffer_names}

            def call(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
                return functional_call(template, (p, b), (x,))

            if expanded:
                logits = vmap(call, in_dims=(0, 0, 0), randomness="different")(params, buffers, xs)
            else:
                # All members see the same x: in_dims=None keeps one leaf with summed gradients.
                logits = vmap(call, in_dims=(0, 0, None), randomness="different")(
                    params, buffers, xs[0]
                )
        else:
            logits = torch.stack([member(xs[i]) for i, member in enumerate(self.members)])
        # A member may return a multiple of B rows when a hook adds copies (the IBA bottleneck).
        if logits.dim() != 3 or logits.shape[0] != xs.shape[0] or logits.shape[1] % xs.shape[1]:
            raise RuntimeError(
                f"each member must return logits [B, K]; the stacked output has shape "
                f"{tuple(logits.shape)} for inputs of shape {tuple(xs.shape[1:])}."
            )
        return logits

    def extra_repr(self) -> str:
        return f"num_members={self.num_samples}, vectorize={self.vectorize}"


@contextmanager
def _all_eval(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block; each flag restored exactly (also on errors)."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _has_hooks(module: nn.Module) -> bool:
    return any(
        bool(getattr(module, attr, None))
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    )


def _global_hooks() -> bool:
    registry = nn.modules.module
    return any(
        bool(getattr(registry, attr, None))
        for attr in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )


def _check_same_architecture(first: nn.Module, other: nn.Module, index: int) -> None:
    if type(other) is not type(first):
        raise ValueError(
            f"DeepEnsemble members must share one architecture: member 0 is "
            f"{type(first).__name__} but member {index} is {type(other).__name__}."
        )
    for kind, a, b in (
        ("parameter", first.named_parameters(), other.named_parameters()),
        ("buffer", first.named_buffers(), other.named_buffers()),
    ):
        shapes_a = {n: (tuple(t.shape), t.dtype) for n, t in a}
        shapes_b = {n: (tuple(t.shape), t.dtype) for n, t in b}
        if shapes_a.keys() != shapes_b.keys():
            missing = sorted(shapes_a.keys() - shapes_b.keys())[:5]
            extra = sorted(shapes_b.keys() - shapes_a.keys())[:5]
            raise ValueError(
                f"DeepEnsemble member {index} has different {kind}s from member 0 (missing "
                f"{missing}, extra {extra}); all members must share one architecture."
            )
        for name, spec in shapes_a.items():
            if shapes_b[name] != spec:
                raise ValueError(
                    f"DeepEnsemble member {index}'s {kind} {name!r} has shape/dtype "
                    f"{shapes_b[name]} but member 0's has {spec}; all members must share one "
                    "architecture (e.g. the same num_classes and widths)."
                )
