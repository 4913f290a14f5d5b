"""Tables in notebooks, and the "What we measured" table that ends every chapter.

`show_table(header, rows)` displays a Markdown table. `what_we_measured({...})` shows the chapter's
figures as one and tags the output so that `make run-all` can print each chapter's headline figures
next to its run time.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

METADATA_KEY = "from_zero"


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits, booleans as yes/no, the rest as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _Shown:
    """A value already shown as a table: a notebook does not echo it again when a cell ends with the call."""

    def _ipython_display_(self) -> None:
        pass


class ShownTable(_Shown, str):
    """The Markdown of a table that show_table displayed."""


class ShownFigures(_Shown, dict):
    """The figures what_we_measured displayed, as text."""


def what_we_measured(figures: Mapping[str, Any], title: str | None = None) -> dict[str, str]:
    """Display `figures` (name → value, name carrying its unit) as a table, under the chapter's own "What we
    measured" heading (so no title of its own by default); return them as text."""
    if not figures:
        raise ValueError("what_we_measured needs at least one figure")
    rows = {str(name): format_value(value) for name, value in figures.items()}
    show_table(["figure", "value"], rows.items(), title=title, metadata={METADATA_KEY: {"measured": rows}})
    return ShownFigures(rows)


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    """A Markdown table (cells through `format_value`; "|" inside a cell escaped), with an optional bold title."""
    def line(cells):
        return "| " + " | ".join(format_value(c).replace("|", "\\|") for c in cells) + " |"
    rows = [list(r) for r in rows]
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells, like the header {list(header)}")
    lines = [line(header), "|" + " --- |" * len(header), *map(line, rows)]
    return "\n".join(([f"**{title}**", ""] if title else []) + lines)


def show_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], title: str | None = None,
               metadata: dict | None = None) -> str:
    """Display `markdown_table(header, rows, title)` in a notebook (print it elsewhere); returns the Markdown."""
    table = markdown_table(header, rows, title)
    _display_markdown(table, metadata=metadata)
    return ShownTable(table)


def _display_markdown(text: str, metadata: dict | None = None) -> None:
    """Show Markdown in a notebook (with output metadata, if given); print it elsewhere."""
    try:
        from IPython.display import Markdown, display
    except ImportError:
        print(text)
    else:
        display(Markdown(text), metadata=metadata)


def compare_gradients(pairs: Mapping[str, tuple[Any, Any]], *, rtol: float = 1e-10, atol: float = 1e-12) -> float:
    """Show, per gradient, whether ours equals the reference exactly, within tolerance, and the largest gap.

    `pairs` maps a name to (ours, reference): arrays or tensors of the same shape. Returns the largest
    absolute difference over all of them, for the notebook's assert.
    """
    import numpy as np

    def as_array(x):
        return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)

    rows, worst = [], 0.0
    for name, (ours, reference) in pairs.items():
        a, b = as_array(ours), as_array(reference)
        if a.shape != b.shape:
            raise ValueError(f"{name}: our gradient has shape {a.shape}, the reference {b.shape}")
        gap = float(np.abs(a - b).max()) if a.size else 0.0
        worst = max(worst, gap)
        rows.append([name, a.shape, bool(np.array_equal(a, b)), bool(np.allclose(a, b, rtol=rtol, atol=atol)),
                     f"{gap:.1e}"])
    show_table(["gradient", "shape", "exact", "allclose", "max difference"], rows)
    return worst
