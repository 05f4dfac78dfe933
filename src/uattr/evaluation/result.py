"""The typed result of a whole evaluation: what ``metrics.json`` holds and the report reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from uattr.evaluation.protocol import EvaluationProtocol, ProtocolResult

__all__ = ["SuiteResult"]

#: Top-level ``metrics.json`` keys that are not protocol results, in file order.
_HEAD = ("checkpoint", "cautions", "model", "data", "config", "settings", "rows")
_TAIL = ("timing", "claim", "iba_claim", "figures")


@dataclasses.dataclass
class SuiteResult:
    """Every protocol's result with the run's settings, method rows and timing.

    Attributes:
        settings: the settings as run (``EvaluationSettings`` fields, with resolved values such
            as ``blur_sigma`` and ``patch_size``, ``headline_kind``, ``uncertainty_kinds``).
        rows: the method rows of the tables (``{"key", "method", "label", "kwargs"}``).
        results: protocol name -> its result (``None`` where the protocol was switched off), in
            run order.
        timing: ``{stage: {"wall_s", "cpu_s"}}`` and ``attribution_cpu_s_by_method``.
        claim, iba_claim: the papers' claims checked on these numbers (:mod:`uattr.report`).
    """

    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    results: dict[str, ProtocolResult | None]
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None
    cautions: list[str] = dataclasses.field(default_factory=list)
    model: str | None = None
    data: str | None = None
    config: dict[str, Any] | None = None
    claim: dict[str, Any] | None = None
    iba_claim: dict[str, Any] | None = None
    figures: list[str] = dataclasses.field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        """Row key -> table label."""
        return {row["key"]: row["label"] for row in self.rows}

    @property
    def headline_kind(self) -> str:
        return self.settings["headline_kind"]

    @property
    def fractions(self) -> list[float]:
        return list(self.settings["fractions"])

    def get(self, name: str) -> ProtocolResult | None:
        """The result of protocol ``name``, or ``None`` if it did not run."""
        return self.results.get(name)

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` document."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _HEAD}
        out.update({name: None if r is None else r.to_json() for name, r in self.results.items()})
        out.update({k: getattr(self, k) for k in _TAIL})
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any],
                  protocols: list[EvaluationProtocol]) -> SuiteResult:
        """A result back from a ``metrics.json`` document written with ``protocols``."""
        results = {
            p.name: None if data.get(p.name) is None else p.result_type.from_json(data[p.name])
            for p in protocols if p.name in data
        }
        known = {f.name for f in dataclasses.fields(cls)} - {"results"}
        return cls(results=results, **{k: v for k, v in data.items() if k in known})
