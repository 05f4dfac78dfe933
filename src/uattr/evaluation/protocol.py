"""The contract of an evaluation protocol, and the typed result every protocol returns.

A protocol is one test of the evaluation (the blurring test, the anomaly test, ...). It reads its
settings from the run's :class:`~uattr.evaluation.suite.EvaluationSettings` (which inherits every
protocol's settings dataclass), runs on the shared
:class:`~uattr.evaluation.context.EvaluationContext`, returns a :class:`ProtocolResult`, and writes
its own report section and figures. The suite runs the protocols in the order of its list; the
report lays their sections out by ``report_rank``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from uattr.evaluation.context import EvaluationContext
    from uattr.evaluation.result import SuiteResult

__all__ = ["EvaluationProtocol", "OverviewColumn", "ProtocolResult"]


@dataclasses.dataclass
class ProtocolResult:
    """Base of the typed results: dataclass fields hold JSON values (numbers, strings, dicts).

    ``figure_data`` (tensors for the figures) is kept out of ``metrics.json``. A result whose
    ``metrics.json`` entry is one mapping keyed by data (uncertainty kinds, shifts) names the
    field that holds it in ``json_field``; the entry is then that mapping itself.
    """

    json_field: ClassVar[str | None] = None
    figure_data: dict[str, Any] = dataclasses.field(
        default_factory=dict, repr=False, compare=False, kw_only=True
    )

    def to_json(self) -> Any:
        """What ``metrics.json`` holds for this protocol."""
        if self.json_field is not None:
            return getattr(self, self.json_field)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "figure_data"}

    @classmethod
    def from_json(cls, data: Any) -> ProtocolResult:
        """The result back from its ``metrics.json`` entry (without figure data)."""
        return cls(**({cls.json_field: data} if cls.json_field is not None else data))


#: (column header, {row key: value}) of the report's overview table.
OverviewColumn = tuple[str, dict[str, Any]]


class EvaluationProtocol(ABC):
    """One protocol: ``run`` on a context, then its report section and figures.

    A subclass states its metadata in the class statement::

        class Blurring(EvaluationProtocol, name="blurring", result_type=BlurringResult,
                       report_rank=20, title="Blurring test"): ...

    Attributes:
        name: its key in ``metrics.json`` and in ``EvaluationSettings.protocols``.
        result_type: the :class:`ProtocolResult` subclass ``run`` returns.
        report_rank: position of its section in ``report.md`` (ascending).
        title: the section heading (numbered by the report; may name result fields).
        per_row: its progress counts one unit per method row (else one unit in all).
    """

    name: ClassVar[str]
    result_type: ClassVar[type[ProtocolResult]]
    report_rank: ClassVar[int]
    title: ClassVar[str]
    per_row: ClassVar[bool]

    def __init_subclass__(cls, *, name: str, result_type: type[ProtocolResult],
                          report_rank: int, title: str, per_row: bool = False,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name, cls.result_type, cls.report_rank = name, result_type, report_rank
        cls.title, cls.per_row = title, per_row

    def heading(self, result: ProtocolResult | None) -> str:
        """The section heading (``title``, which may name fields of the result)."""
        return self.title

    def steps(self, ctx: EvaluationContext) -> int:
        """Units of work ``run`` reports to the progress bar (for its total)."""
        return len(ctx.rows) if self.per_row else 1

    @abstractmethod
    def run(self, ctx: EvaluationContext) -> ProtocolResult | None:
        """Run the protocol; ``None`` when the settings switch it off."""

    @abstractmethod
    def section(self, result: ProtocolResult | None, suite: SuiteResult) -> str:
        """Its markdown section of ``report.md`` (without the heading)."""

    def figures(self, result: ProtocolResult | None, suite: SuiteResult,
                out_dir: Path) -> list[Path]:
        """Draw its PNG figures into ``out_dir``; return their paths."""
        return []

    def overview(self, result: ProtocolResult | None, suite: SuiteResult) -> list[OverviewColumn]:
        """Its columns of the report's overview table (methods x headline numbers)."""
        return []
