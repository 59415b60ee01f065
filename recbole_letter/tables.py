"""One markdown table writer for every table this package prints (results, tuning trials).

Cells are rendered one way everywhere: ``None`` -> empty, floats with ``float_format``, anything
else as text with ``|`` and line breaks neutralised so a long error message cannot break the
table's columns.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence


def format_cell(value: Any, float_format: str = ".4f", max_chars: int | None = None) -> str:
    """One table cell: ``None`` -> ``""``, float -> ``format(value, float_format)``, else safe text."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, float_format)
    text = str(value).replace("|", "/").replace("\n", " ")
    return text if max_chars is None else text[:max_chars]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], float_format: str = ".4f") -> str:
    """A markdown table; every cell goes through :func:`format_cell` (strings pass unchanged
    unless they contain ``|`` or line breaks)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(cell, float_format) for cell in row) + " |")
    return "\n".join(lines)
