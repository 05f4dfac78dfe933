"""Markdown pieces of ``report.md``: number formatting and tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["fmt", "markdown_table", "percent", "plus_minus"]


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; None/NaN as a dash; anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)


def plus_minus(entry: dict[str, float] | None, digits: int = 3) -> str:
    """``{"mean", "se"}`` as ``mean ± se`` (just the mean when se is NaN; a dash when absent)."""
    if not entry:
        return "—"
    if math.isnan(entry.get("se", float("nan"))):
        return fmt(entry["mean"], digits)
    return f"{entry['mean']:.{digits}f} ± {entry['se']:.{digits}f}"


def percent(p: float) -> str:
    """A fraction as the percent text of metric keys: 0.02 -> ``"2%"``."""
    return f"{p * 100:g}%"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats get 3 decimals, None/NaN a dash."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
