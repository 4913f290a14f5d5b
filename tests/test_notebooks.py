"""Checks on the committed notebooks themselves (nbval, configured in pyproject.toml, runs them)."""
import base64
import re
from pathlib import Path

import nbformat
import pytest

from tools.run_notebooks import finish_progress_bars, notebooks_under

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
NOTEBOOKS = notebooks_under(CHAPTERS)
MAIN = [p for p in NOTEBOOKS if p.parent == CHAPTERS]
README = (ROOT / "README.md").read_text()
REPO = re.search(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?[)\s]", README).group(1)
# Absolute paths of this or any machine; Colab's /content/ is expected in the setup cell.
MACHINE_PATH = re.compile(r"(/(home|root|Users|work|tmp|private|var/folders)/[\w.-]+)|([A-Za-z]:\\\\Users)")
MAX_BYTES, MAX_PNG_BYTES = 1_500_000, 150_000


def test_there_are_chapters_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in MAIN]
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name) for p in MAIN), [p.name for p in MAIN]
    assert numbers == list(range(len(MAIN))), numbers


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: str(p.relative_to(CHAPTERS)))
def notebook(request):
    path = request.param
    return path, nbformat.read(path, as_version=4)


def test_valid_with_every_code_cell_executed_and_no_errors(notebook):
    path, nb = notebook
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "run `make run-all` before committing"
    assert any(c.outputs for c in code), "committed without outputs"
    errors = [c.source[:60] for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"error outputs in cells {errors}"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "cells were not run top to bottom in one fresh kernel"


def test_no_absolute_paths_and_bounded_size(notebook):
    path, nb = notebook
    text = path.read_text(encoding="utf-8")
    assert str(ROOT) not in text
    found = MACHINE_PATH.search(text)
    assert found is None, f"absolute path {found.group(0)!r}"
    assert path.stat().st_size < MAX_BYTES, f"{path.stat().st_size} bytes"
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                assert len(base64.b64decode(png)) < MAX_PNG_BYTES, "figure too large: lower dpi or size"


def test_progress_bars_show_their_final_state(notebook):
    """A widget's plain-text fallback is what viewers without widgets show: the bar as it ended, not "0%| 0/N"."""
    path, nb = notebook
    stale = [output["data"]["text/plain"] for cell in nb.cells for output in cell.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
             and re.search(r"\b0%\|", str(output["data"].get("text/plain", "")))]
    assert not stale, f"progress bars committed at 0% (make run-all rewrites them): {stale[:2]}"


def test_a_progress_bar_gets_its_final_state_as_text():
    def model(name, **state):
        return {"model_name": name, "state": state}
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "box": model("HBoxModel", children=["IPY_MODEL_left", "IPY_MODEL_bar", "IPY_MODEL_right"]),
        "left": model("HTMLModel", value="spirals:\u2007100%"), "bar": model("FloatProgressModel", value=50.0, max=50.0),
        "right": model("HTMLModel", value="\u200750/50\u2007[00:01&lt;00:00]")}}}
    bar = nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "box"},
                                                        "text/plain": "spirals:   0%|          | 0/50"})
    nb.cells.append(nbformat.v4.new_code_cell("train()", outputs=[bar]))
    assert finish_progress_bars(nb) == 1
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == "spirals: 100%|██████████| 50/50 [00:01<00:00]"


def test_title_colab_badge_and_guarded_setup_cell(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "first cell must be a # title"
    relative = path.relative_to(ROOT).as_posix()
    assert f"https://colab.research.google.com/github/{REPO}/blob/main/{relative}" in first.source
    setup = nb.cells[1]
    assert setup.cell_type == "code" and 'if "google.colab" in sys.modules:' in setup.source
    assert f"https://github.com/{REPO}.git" in setup.source


def test_main_chapters_state_a_budget_and_end_with_what_we_measured():
    for path in MAIN:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.get("from_zero", {}).get("budget_minutes", 0) > 0, path.name
        assert nb.metadata.kernelspec.name == "python3", f"{path.name}: Colab expects the python3 kernel"
        headings = [c.source for c in nb.cells if c.cell_type == "markdown"]
        assert any(h.lstrip().startswith("## What we measured") for h in headings), path.name
        sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "what_we_measured(" in sources and "assert " in sources, path.name


def test_every_badge_and_setup_cell_names_the_repository_of_pyproject(tmp_path):
    from tools import set_repository
    assert set_repository.repository() == REPO
    assert set_repository.main(["--check"]) == 0
    # and the tool really rewrites: a copy of a notebook pointing elsewhere is brought back
    stray = tmp_path / "stray.ipynb"
    stray.write_text(NOTEBOOKS[0].read_text().replace(REPO, "someone/else"))
    assert set_repository.MENTION.sub(lambda m: m.group(1) + REPO, stray.read_text()) == NOTEBOOKS[0].read_text()


def test_readme_lists_every_chapter_with_a_colab_badge():
    for path in MAIN:
        relative = path.relative_to(ROOT).as_posix()
        assert f"]({relative})" in README, f"README's chapter table lacks {relative}"
        assert f"colab.research.google.com/github/{REPO}/blob/main/{relative}" in README
    assert README.index("make lab") < README.index("## ") and README.index("make test") < README.index("## ")


def jupyter_anchor(heading: str) -> str:
    """The anchor JupyterLab gives a Markdown heading: its text with spaces as hyphens."""
    return heading.lstrip("#").strip().replace(" ", "-")


def test_glossary_links_open_existing_sections_and_every_chapter_links_the_glossary():
    glossary = (ROOT / "GLOSSARY.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((chapters/[\w./]+\.ipynb)#((?:[^()\s]|\([^()]*\))+)\)", glossary)   # balanced ( )
    assert len(links) >= 30, "the glossary links fewer sections than expected: check the link pattern"
    for relative, anchor in links:
        path = ROOT / relative
        assert path.is_file(), f"GLOSSARY.md links {relative}, which does not exist"
        headings = [line for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "markdown"
                    for line in cell.source.splitlines() if line.startswith("#")]
        assert anchor in {jupyter_anchor(h) for h in headings}, f"GLOSSARY.md: {relative} has no section #{anchor}"
    for term in ("链式法则", "自动求导", "计算图", "预训练", "掩码语言模型", "微调", "迁移学习", "参数高效微调", "适配器",
                 "提示微调", "低秩适配", "知识蒸馏", "软标签", "温度", "模型压缩", "量化", "剪枝", "部署"):
        assert f"| {term} |" in glossary, term
    assert "](GLOSSARY.md)" in README
    for path in MAIN:
        assert "](../GLOSSARY.md)" in nbformat.read(path, as_version=4).cells[0].source, f"{path.name}: title cell lacks the glossary link"


def test_run_notebooks_refuses_a_conflicted_or_broken_notebook_before_running_any(tmp_path, capsys):
    from tools import run_notebooks
    good = NOTEBOOKS[0].read_text()
    conflicted = tmp_path / "conflicted.ipynb"
    conflicted.write_text(good.replace('"cells": [', '"cells": [\n<<<<<<< HEAD\n=======\n>>>>>>> theirs', 1))
    broken = tmp_path / "broken.ipynb"
    broken.write_text(good[:200])
    for path, words in ((conflicted, r"has merge-conflict markers \(<<<<<<< at line \d+\)"), (broken, "is not valid notebook JSON")):
        with pytest.raises(SystemExit):
            run_notebooks.main([str(path)])
        assert re.search(words, capsys.readouterr().err)
