"""The "What we measured" table that ends every chapter.

`what_we_measured({...})` shows the figures as a table and tags the output so that
`make run-all` can print each chapter's headline figures next to its run time.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METADATA_KEY = "from_zero"


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits, booleans as yes/no, the rest as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def what_we_measured(figures: Mapping[str, Any], title: str = "What we measured") -> dict[str, str]:
    """Display `figures` (name → value, name carrying its unit) as a table; return them as text."""
    if not figures:
        raise ValueError("what_we_measured needs at least one figure")
    rows = {str(name): format_value(value) for name, value in figures.items()}
    table = "\n".join([f"**{title}**", "", "| figure | value |", "| --- | --- |",
                       *(f"| {name} | {value} |" for name, value in rows.items())])
    try:
        from IPython.display import Markdown, display
    except ImportError:
        print(table)
    else:
        display(Markdown(table), metadata={METADATA_KEY: {"measured": rows}})
    return rows
