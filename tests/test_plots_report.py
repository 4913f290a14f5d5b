import numpy as np
import pytest

import matplotlib

from utils import (History, LivePlot, bar_chart, compare_gradients, course_style, draw_graph, heatmap, markdown_table,
                   plot_history, show_table, what_we_measured)
from utils.plots import figure_png, smooth
from utils.report import format_value


def small_history():
    history = History()
    history.train = [{"step": s, "loss": 2.0 / s, "lr": 1e-3, "grad_norm": 1.0} for s in range(1, 21)]
    history.eval = [{"step": 10, "eval_loss": 0.5}, {"step": 20, "eval_loss": 0.4}]
    history.best_step, history.best_value = 20, 0.4
    return history


def test_plot_history_draws_train_eval_and_best():
    fig = plot_history(small_history(), title="toy")
    ax = fig.axes[0]
    assert ax.get_title() == "toy" and ax.get_xlabel() == "optimizer step"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train loss (smoothed)", "eval loss", "best"]
    png = figure_png(fig)
    assert png.startswith(b"\x89PNG") and len(png) < 100_000  # small enough to commit


def test_smooth_is_unbiased_at_the_start():
    assert np.allclose(smooth([3.0] * 5), 3.0)
    assert smooth([0, 10])[1] == pytest.approx(10 * 0.1 / (1 - 0.81))


def test_bar_chart_labels_every_bar():
    fig = bar_chart({"embeddings": 1.2e6, "layers": 3.4e6}, title="parameters", ylabel="count")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["1.2e+06", "3.4e+06"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["embeddings", "layers"]
    horizontal = bar_chart({"a": 1, "b": 2}, title="t", ylabel="u", horizontal=True)
    assert horizontal.axes[0].get_xlabel() == "u"


def test_heatmap_writes_values_and_checks_shape():
    fig = heatmap([[5, 1], [2, 7]], ["neg", "pos"], ["neg", "pos"], title="confusion", fmt="{:.0f}")
    assert [t.get_text() for t in fig.axes[0].texts] == ["5", "1", "2", "7"]
    with pytest.raises(ValueError, match=r"matrix is \(2, 2\) but there are 3 row"):
        heatmap(np.eye(2), ["a", "b", "c"], ["x", "y"], title="bad")


def test_live_plot_is_silent_outside_a_notebook():
    plot = LivePlot()
    assert not plot.enabled
    plot.update(small_history(), force=True)  # no error, no output


def test_what_we_measured_formats_and_returns_figures(capsys):
    rows = what_we_measured({"held-out accuracy (%)": 97.25, "steps": 300, "resume exact": True})
    assert rows == {"held-out accuracy (%)": "97.25", "steps": "300", "resume exact": "yes"}
    assert format_value(0.000123456) == "0.0001235"
    with pytest.raises(ValueError, match="at least one figure"):
        what_we_measured({})


def test_a_shown_table_is_not_echoed_again_when_a_cell_ends_with_it(capsys):
    table, rows = show_table(["a", "b"], [[1, 2]]), what_we_measured({"steps": 3})
    assert table == "| a | b |\n| --- | --- |\n| 1 | 2 |" and rows == {"steps": "3"}
    from IPython.core.formatters import DisplayFormatter
    for value in (table, rows):              # IPython shows nothing for a value with _ipython_display_
        value._ipython_display_()
        assert DisplayFormatter().format(value) == ({}, {})


def test_markdown_table_formats_cells_escapes_pipes_and_checks_row_length():
    table = markdown_table(["arm", "accuracy", "ok"], [["(a) | random", 0.8123456, True]], title="Scores")
    assert table.splitlines() == ["**Scores**", "", "| arm | accuracy | ok |", "| --- | --- | --- |",
                                  "| (a) \\| random | 0.8123 | yes |"]
    with pytest.raises(ValueError, match="every row needs 3 cells"):
        markdown_table(["arm", "accuracy", "ok"], [["(a)", 0.8]])


def test_compare_gradients_returns_the_largest_gap_and_rejects_other_shapes(monkeypatch):
    shown = []
    monkeypatch.setattr("utils.report._display_markdown", lambda text, metadata=None: shown.append(text))
    ours, reference = np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-11])
    assert compare_gradients({"w": (ours, reference)}) == pytest.approx(1e-11, rel=1e-3)
    assert "| w | (2,) | no | yes | 1.0e-11 |" in shown[0]
    with pytest.raises(ValueError, match="shape"):
        compare_gradients({"w": (ours, np.zeros(3))})


def test_course_style_restores_only_what_it_set():
    size, interactive = matplotlib.rcParams["font.size"], matplotlib.is_interactive()
    try:
        with course_style():
            assert matplotlib.rcParams["font.size"] == 13
            matplotlib.interactive(not interactive)  # what Jupyter's inline backend does on first use
        assert matplotlib.rcParams["font.size"] == size
        assert matplotlib.is_interactive() is (not interactive)
    finally:
        matplotlib.interactive(interactive)


def test_draw_graph_shows_every_node_of_an_engine_graph():
    from course.ch02_autograd import Value
    a, b = Value(2.0, label="a"), Value(-3.0, label="b")
    out = a * b + a
    out.backward()
    fig = draw_graph(out, title="a·b + a")
    texts = [t.get_text() for t in fig.axes[0].texts if t.get_text()]   # arrows are empty annotations
    assert len(texts) == 4 and any(t.startswith("a\n2\ngrad -2") for t in texts)
    assert fig.axes[0].get_title() == "a·b + a"
