"""The evaluation behind ``evaluate.py``: one module per protocol, a suite that runs them.

Protocols (settings dataclass, ``run`` -> typed result, report section and figures):
:mod:`~uattr.evaluation.predictive`, :mod:`~uattr.evaluation.ood`,
:mod:`~uattr.evaluation.ablation`, :mod:`~uattr.evaluation.blurring`,
:mod:`~uattr.evaluation.anomaly`, :mod:`~uattr.evaluation.degradation`.
:mod:`~uattr.evaluation.suite` runs those the settings select. See ``docs/evaluation.md``.
"""

from uattr.evaluation.ablation import ABLATION_GRIDS, ablation_size
from uattr.evaluation.context import EvaluationContext, headline_kind, uncertainty_kinds
from uattr.evaluation.methods import UA_DEFAULT, MethodRow, default_methods, method_rows
from uattr.evaluation.protocol import EvaluationProtocol, ProtocolResult
from uattr.evaluation.result import SuiteResult
from uattr.evaluation.stats import above_median, seeded_subset
from uattr.evaluation.suite import (
    PROTOCOLS,
    EvaluationSettings,
    evaluate_checkpoint,
    input_transform_cautions,
    run_suite,
    write_outputs,
)

__all__ = [
    "ABLATION_GRIDS",
    "PROTOCOLS",
    "UA_DEFAULT",
    "EvaluationContext",
    "EvaluationProtocol",
    "EvaluationSettings",
    "MethodRow",
    "ProtocolResult",
    "SuiteResult",
    "ablation_size",
    "above_median",
    "default_methods",
    "evaluate_checkpoint",
    "headline_kind",
    "input_transform_cautions",
    "method_rows",
    "run_suite",
    "seeded_subset",
    "uncertainty_kinds",
    "write_outputs",
]
