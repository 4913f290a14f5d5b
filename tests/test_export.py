"""course/ is generated from the chapters' `#| export` cells: it must be current, importable and complete."""
import importlib
import json
from pathlib import Path

import pytest

from tools import export

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"


def test_course_matches_the_notebooks(tmp_path):
    fresh = {p.name: p for p in export.export(tmp_path)}
    committed = {p.name: p for p in COURSE.glob("ch*.py")}
    for name, path in fresh.items():
        notebook = f"chapters/{name[2:4]}_{name[5:-3]}.ipynb"
        assert name in committed, f"course/{name} is missing: {notebook} exports cells; run `make export`"
        assert committed[name].read_bytes() == path.read_bytes(), (
            f"course/{name} is stale: {notebook} was edited without `make export`; run it and commit course/")
    orphans = sorted(set(committed) - set(fresh))
    assert not orphans, f"no notebook exports {orphans}: delete them, or mark the cells '#| export' again"


@pytest.mark.parametrize("name", sorted(p.stem for p in COURSE.glob("ch*.py")))
def test_every_module_imports_and_lists_its_own_names(name):
    module = importlib.import_module(f"course.{name}")
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert module.__all__ and not missing, missing
    assert not any(n.startswith("_") for n in module.__all__)


def test_the_readme_lists_each_chapters_names():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert export.names_table() in text, "README.md's table of chapter names is stale: run `make export`"
    table = export.names_table()
    rows = table.splitlines()[3:-1]
    assert "`course.ch05_fine_tuning` | `MAX_LENGTH`" in table and not any(", `_" in row for row in rows)


def test_utils_never_imports_course():
    for path in (ROOT / "utils").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "course" not in {line.split()[1].split(".")[0] for line in text.splitlines()
                                if line.strip().startswith(("import ", "from ")) and len(line.split()) > 1}, path


def notebook_with(tmp_path, *sources: str) -> Path:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# 09 · A test chapter"}]
    cells += [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
              for s in sources]
    path = tmp_path / "09_test_chapter.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_only_marked_cells_are_written_in_order_under_the_header(tmp_path):
    nb = notebook_with(tmp_path, "#| export\nimport math\n\ndef area(r):\n    return math.pi * r * r",
                       "print(area(2))", "#| export\nUNIT = area(1)")
    [module] = export.export(tmp_path / "out", [nb])
    text = module.read_text()
    assert module.name == "ch09_test_chapter.py"
    assert text.startswith("# generated from chapters/09_test_chapter.ipynb: edit the notebook, then run make export")
    assert "print(area(2))" not in text and text.index("def area") < text.index("UNIT = area(1)")
    assert "#| export" not in text


@pytest.mark.parametrize("source, message", [
    ("#| export\n%timeit 1 + 1", "cell 1, line 2: an exported cell must be plain Python"),
    ("#| export\n!ls", "cell 1, line 2: an exported cell must be plain Python"),
    ("x = 1\n#| export", "cell 1, line 2: '#| export' must be the cell's first line"),
    ("#| export\ndef f(:\n    pass", "cell 1, line 2: invalid syntax"),
    ("#| export\nimport math\n\ndef sum(x):\n    return math.fsum(x)", "cell 1, line 4: 'sum' hides Python's builtin"),
])
def test_what_is_not_plain_python_is_refused_with_notebook_cell_and_line(tmp_path, source, message):
    with pytest.raises(export.ExportError, match="09_test_chapter.ipynb, " + message.replace("(", r"\(")):
        export.export(tmp_path / "out", [notebook_with(tmp_path, source)])


def test_a_name_defined_only_in_an_unexported_cell_is_refused(tmp_path):
    nb = notebook_with(tmp_path, "import numpy as np", "#| export\ndef mean(x):\n    return np.mean(x)")
    with pytest.raises(export.ExportError, match=r"cell 2, line 3: 'np' is defined only in a cell without"):
        export.export(tmp_path / "out", [nb])
