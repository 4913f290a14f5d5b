"""Plots in one projector-readable style: training histories, bars, heatmaps, computation graphs, a live plot.

The style is applied inside each helper (`course_style()`), never globally on import.
Each helper draws on `ax` if given, else on a new figure, and returns the figure; end the
notebook line with `;` to keep Jupyter from printing the returned object.
"""
from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Mapping, Sequence
from typing import Any, Iterator

import matplotlib
import numpy as np

STYLE: dict[str, Any] = {
    "figure.figsize": (7.5, 3.8),
    "figure.dpi": 80,          # small PNGs in committed notebooks; text stays large
    "font.size": 13,
    "axes.titlesize": 15,
    "axes.labelsize": 13,
    "legend.fontsize": 12,
    "lines.linewidth": 2.2,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@contextlib.contextmanager
def course_style() -> Iterator[None]:
    """Draw the figures made inside the block in the course's style.

    Unlike `matplotlib.rc_context`, it restores only the settings it changed: rc_context also
    resets `interactive`, which Jupyter's inline backend switches on when the first figure of a
    session is drawn, so a first figure drawn inside rc_context stops every later figure from
    showing.
    """
    before = {key: matplotlib.rcParams[key] for key in STYLE}
    matplotlib.rcParams.update(STYLE)
    try:
        yield
    finally:
        matplotlib.rcParams.update(before)


def _axes(ax, figsize=None):
    import matplotlib.pyplot as plt
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def smooth(values: Sequence[float], weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard draws noisy curves)."""
    out, avg = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        avg = weight * avg + (1 - weight) * value
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def plot_history(history, ax=None, *, title: str = "Training", log_y: bool = False):
    """Training loss (raw, faint; smoothed, bold) and evaluation loss against optimizer steps."""
    with course_style():
        fig, ax = _axes(ax)
        steps, losses = history.series("loss")
        if steps:
            ax.plot(steps, losses, color=COLORS[0], alpha=0.25, linewidth=1)
            ax.plot(steps, smooth(losses), color=COLORS[0], label="train loss (smoothed)")
        eval_steps, eval_losses = history.series("eval_loss")
        if eval_steps:
            ax.plot(eval_steps, eval_losses, "o-", color=COLORS[1], label="eval loss")
        if history.best_step is not None and eval_steps and history.best_value in eval_losses:
            ax.axvline(history.best_step, color="gray", linestyle=":", linewidth=1.5, label="best")
        if log_y:
            ax.set_yscale("log")
        ax.set(title=title, xlabel="optimizer step", ylabel="loss")
        if steps or eval_steps:
            ax.legend(loc="upper right")
    return fig


def bar_chart(values: Mapping[str, float], ax=None, *, title: str, ylabel: str,
              fmt: str = "{:.3g}", horizontal: bool = False, color: str = COLORS[0]):
    """Labelled bars, one per key of `values`, each with its value written on it."""
    with course_style():
        fig, ax = _axes(ax)
        labels, heights = list(values), [float(v) for v in values.values()]
        bars = (ax.barh if horizontal else ax.bar)(labels, heights, color=color)
        ax.bar_label(bars, labels=[fmt.format(h) for h in heights], padding=3)
        ax.set_title(title)
        (ax.set_xlabel if horizontal else ax.set_ylabel)(ylabel)
        ax.grid(axis="y" if horizontal else "x", visible=False)
        if horizontal:  # first key on top, room for the value labels at the right
            ax.invert_yaxis()
            ax.margins(x=0.15)
        else:
            ax.margins(y=0.15)
    return fig


def heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], ax=None, *, title: str,
            fmt: str = "{:.2g}", cmap: str = "Blues", xlabel: str = "", ylabel: str = ""):
    """A matrix as coloured cells with each value written in it (confusion matrices, attention)."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"heatmap: matrix is {matrix.shape} but there are {len(row_labels)} row "
                         f"and {len(col_labels)} column labels")
    with course_style():
        fig, ax = _axes(ax, figsize=(1.1 * len(col_labels) + 2.5, 0.8 * len(row_labels) + 1.8))
        image = ax.imshow(matrix, cmap=cmap)
        ax.set_xticks(range(len(col_labels)), labels=col_labels)
        ax.set_yticks(range(len(row_labels)), labels=row_labels)
        ax.grid(False)
        middle = (np.nanmax(matrix) + np.nanmin(matrix)) / 2 if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, fmt.format(value), ha="center", va="center",
                    color="white" if value > middle else "black")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def _parents_first(root) -> list:
    """Every node `root` depends on, parents before children (for layout; small graphs only)."""
    seen, order = {id(root): root}, [root]
    for node in order:                                   # breadth-first collection, grows as it goes
        for parent in node.parents:
            if id(parent) not in seen:
                seen[id(parent)] = parent
                order.append(parent)
    placed: dict[int, object] = {}
    while len(placed) < len(order):                      # emit a node once all its parents are out
        for node in order:
            if id(node) not in placed and all(id(p) in placed for p in node.parents):
                placed[id(node)] = node
    return list(placed.values())


def draw_graph(root, ax=None, *, title: str = "Computation graph", show_grad: bool = True):
    """Draw the graph that produced `root` (chapter 02's `Value`): inputs on the left, output on the right.

    Any node with `parents`, `data`, `grad`, `op` and `label` attributes works. Pure matplotlib, no system
    graphviz. Each box shows the node's label or operation, its value and, after `backward()`, its
    gradient; arrows follow the forward computation.
    """
    nodes = _parents_first(root)
    column = {}
    for node in nodes:                                   # parents come first: longest path from an input
        column[id(node)] = 1 + max((column[id(p)] for p in node.parents), default=-1)
    rows: dict[int, int] = {}
    position = {}
    for node in nodes:
        c = column[id(node)]
        position[id(node)] = (c, rows.get(c, 0))
        rows[c] = rows.get(c, 0) + 1
    tallest = max(rows.values())
    with course_style():
        fig, ax = _axes(ax, figsize=(2.1 * (max(rows) + 1) + 0.5, 1.1 * tallest + 1))
        ax.set_axis_off()
        xy = {key: (c, (tallest - 1) / 2 - (r - (rows[c] - 1) / 2)) for key, (c, r) in position.items()}
        for node in nodes:
            for parent in node.parents:
                ax.annotate("", xy=xy[id(node)], xytext=xy[id(parent)],
                            arrowprops=dict(arrowstyle="-|>", color="gray", shrinkA=30, shrinkB=30, lw=1.5))
        for node in nodes:
            name = node.label or node.op or "input"
            text = f"{name}\n{node.data:.3g}" + (f"\ngrad {node.grad:.3g}" if show_grad else "")
            leaf = not node.parents
            ax.text(*xy[id(node)], text, ha="center", va="center", fontsize=11,
                    bbox=dict(boxstyle="round,pad=0.4", fc="#e8f0fb" if leaf else "#fdf2e3",
                              ec=COLORS[0] if leaf else COLORS[3]))
        ax.set_xlim(-0.6, max(rows) + 0.6)
        ax.set_ylim(-0.8, tallest - 0.2)
        ax.set_title(title)
    return fig


def figure_png(fig, dpi: int | None = None) -> bytes:
    """Render a figure to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or STYLE["figure.dpi"])
    return buffer.getvalue()


class LivePlot:
    """A training plot that redraws in place in a notebook (no flicker, no growing output).

    `update(history)` redraws at most every `every_s` seconds unless `force=True`. Outside a
    Jupyter kernel it does nothing, so scripts and tests can train with live_plot=True.
    """

    def __init__(self, title: str = "training", every_s: float = 1.0):
        self.title, self.every_s, self._last, self._handle = title, every_s, -float("inf"), None
        self.enabled = _in_notebook()

    def update(self, history, force: bool = False) -> None:
        if not self.enabled or (not force and time.monotonic() - self._last < self.every_s):
            return
        from IPython.display import Image, display
        from matplotlib.figure import Figure
        with course_style():
            fig = Figure(layout="constrained")  # not registered with pyplot: shown only here
            plot_history(history, fig.add_subplot(), title=f"{self.title}: step {history.steps_done}")
            image = Image(data=figure_png(fig))
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
        self._last = time.monotonic()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
