"""The method rows of the evaluation's tables: which methods run, with which settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

from uattr.attribution.registry import METHODS

__all__ = ["UA_DEFAULT", "MethodRow", "default_methods", "method_rows", "ua_setting_name"]

#: UA-Backprop's constructor defaults, the "default setting" row.
UA_DEFAULT = {"psi": "softmax", "tau2": 1.0, "tau1": 0.1, "bias_terms": True}


@dataclasses.dataclass(frozen=True)
class MethodRow:
    """One row of the result tables: a registry method with its constructor arguments."""

    key: str
    method: str
    label: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def explains_uncertainty(self) -> bool:
        return METHODS[self.method].explains_uncertainty


def ua_setting_name(kw: dict[str, Any]) -> str:
    """A UA-Backprop setting as text: ``psi=softmax, tau2=1, tau1=0.1, bias terms on``."""
    bias = "on" if kw["bias_terms"] else "off"
    return f"psi={kw['psi']}, tau2={kw['tau2']:g}, tau1={kw['tau1']:g}, bias terms {bias}"


def default_methods(posterior: nn.Module, readout: str | None = None) -> tuple[str, ...]:
    """Every registry method applicable to ``posterior``, in table order.

    Every method applies to any posterior; a method with inputs the evaluation cannot make
    itself (the readout's trained bottleneck) is listed only when one is given (``readout``).
    UA-Backprop's epistemic map of a deterministic model is zero, so it is still listed (its rows
    then explain total uncertainty, the headline kind of such a model).
    """
    given = {"readout": readout}
    return tuple(name for name, cls in METHODS.items()
                 if all(given.get(k) for k in cls.required_kwargs))


def method_rows(methods: Sequence[str], selected: dict[str, Any] | None) -> list[MethodRow]:
    """One row per method; UA-Backprop gets its default setting and, when the validation
    ablation (``selected``: its chosen kwargs) picked another one, a "val-selected" row first."""
    rows: list[MethodRow] = []
    for name in methods:
        if name != "ua_backprop":
            rows.append(MethodRow(name, name, METHODS[name].label))
        elif selected is None:
            rows.append(MethodRow("ua_backprop", name, "UA-Backprop, default setting",
                                  dict(UA_DEFAULT)))
        elif selected != UA_DEFAULT:
            rows.append(MethodRow("ua_backprop_selected", name,
                                  f"UA-Backprop, val-selected ({ua_setting_name(selected)})",
                                  dict(selected)))
            rows.append(MethodRow("ua_backprop", name, "UA-Backprop, default setting",
                                  dict(UA_DEFAULT)))
        else:
            rows.append(MethodRow("ua_backprop", name,
                                  "UA-Backprop, default setting (= val-selected)",
                                  dict(UA_DEFAULT)))
    return rows
