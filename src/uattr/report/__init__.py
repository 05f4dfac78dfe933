"""The evaluation report: ``report.md`` (markdown tables laid out like the UA-Backprop paper's),
PNG figures, and the papers' claims checked on the measured numbers.

The report reads the typed results of :mod:`uattr.evaluation`; each protocol writes its own
section and figures with the helpers here.
"""

from uattr.report.claims import CLAIM_COMPETITORS, PAPER_MNIST, iba_claim, paper_claim
from uattr.report.document import write_figures, write_report
from uattr.report.markdown import fmt, markdown_table, percent, plus_minus

__all__ = ["CLAIM_COMPETITORS", "PAPER_MNIST", "fmt", "iba_claim", "markdown_table",
           "paper_claim", "percent", "plus_minus", "write_figures", "write_report"]
