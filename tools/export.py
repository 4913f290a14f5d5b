"""Write each chapter's `#| export` cells to its generated module in course/.

    python tools/export.py                 # chapters/NN_name.ipynb -> course/chNN_name.py (make export)
    python tools/export.py --out DIR       # write the modules somewhere else (the staleness test does)

A code cell whose first line is `#| export` (nbdev's syntax) is copied, in notebook order, into the
chapter's module; nothing else is. Exported cells must be plain Python: a magic, a shell escape or a
`#|` directive below the first line is refused with the notebook, cell and line, and so is a name that
the exported code uses but only an unexported cell defines. Standard library only (json + ast), so it
runs in milliseconds and needs nothing installed.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS, COURSE = ROOT / "chapters", ROOT / "course"
MARK = "#| export"
HEADER = ('# generated from chapters/{notebook}: edit the notebook, then run make export\n'
          '"""{title}"""\n')


class ExportError(ValueError):
    """A notebook's exported cells cannot become a module; the message says where and how to fix it."""


def module_name(notebook: Path) -> str:
    """chapters/04_pretraining.ipynb -> ch04_pretraining"""
    match = re.fullmatch(r"(\d\d)_(\w+)\.ipynb", notebook.name)
    if not match:
        raise ExportError(f"{notebook.name}: chapter notebooks are named NN_name.ipynb")
    return f"ch{match.group(1)}_{match.group(2)}"


def exported_cells(notebook: Path, cells: list[dict]) -> list[tuple[int, str]]:
    """(cell number, source without the mark) of each exported cell; refuses what is not plain Python."""
    found = []
    for number, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines = source.splitlines()
        marked = bool(lines) and lines[0].strip() == MARK
        for line_no, line in enumerate(lines[1:] if marked else lines, start=2 if marked else 1):
            where = f"{notebook.name}, cell {number}, line {line_no}"
            if line.lstrip().startswith("#|"):
                raise ExportError(f"{where}: {line.strip()!r} must be the cell's first line to take effect")
            if marked and re.match(r"\s*[%!]", line):
                raise ExportError(f"{where}: an exported cell must be plain Python, not {line.strip()!r}; "
                                  "move the magic to an unexported cell")
        if marked:
            body = "\n".join(lines[1:]).strip("\n")
            try:
                ast.parse(body)
            except SyntaxError as error:
                raise ExportError(f"{notebook.name}, cell {number}, line {(error.lineno or 0) + 1}: "
                                  f"{error.msg}") from None
            found.append((number, body))
    return found


def bound_names(tree: ast.AST) -> set[str]:
    """Every name the code binds anywhere: assignments, arguments, defs, classes, imports, handlers."""
    names = set(dir(builtins)) | {"__name__", "__file__", "__doc__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
    return names


def check_names(notebook: Path, cells: list[tuple[int, str]]) -> None:
    """Refuse a name the exported code reads but never binds (it lives only in an unexported cell), and
    a top-level definition that hides a Python builtin (`def sum` breaks every later `sum(...)`)."""
    bound = bound_names(ast.parse("\n\n".join(body for _, body in cells)))
    for number, body in cells:
        tree = ast.parse(body)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in dir(builtins):
                raise ExportError(f"{notebook.name}, cell {number}, line {node.lineno + 1}: '{node.name}' hides "
                                  "Python's builtin of that name in the module and the notebook; rename it")
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
                raise ExportError(f"{notebook.name}, cell {number}, line {node.lineno + 1}: '{node.id}' is "
                                  "defined only in a cell without '#| export'; export that cell, or import it")


def lesson_names(cells: list[tuple[int, str]]) -> list[str]:
    """The chapter's own public names, in the order written: its top-level functions, classes and constants
    (not what it imports, not names starting with an underscore, not methods added to a class written earlier
    with `@add_to_class`). They become the module's `__all__`."""
    names: list[str] = []
    for _, body in cells:
        for node in ast.parse(body).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found = [] if any("add_to_class" in ast.unparse(d) for d in node.decorator_list) else [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):      # a method added to a class is not a name
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            else:
                found = []
            names += [name for name in found if not name.startswith("_") and name not in names]
    return names


def all_list(names: list[str], width: int = 116) -> str:
    """`__all__ = [...]` with the names wrapped at `width` characters."""
    rows, row = [], "   "
    for name in names:
        item = f" {name!r},"
        if len(row) + len(item) > width:
            rows.append(row)
            row = "   "
        row += item
    rows.append(row)
    body = "\n".join(rows)
    return f"\n\n__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)\n{body}\n]\n"


def module_text(notebook: Path) -> str | None:
    """The generated module's text, or None when the notebook exports nothing."""
    notebook_cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    cells = exported_cells(notebook, notebook_cells)
    if not cells:
        return None
    check_names(notebook, cells)
    title = "".join(notebook_cells[0]["source"])
    title = title.splitlines()[0].lstrip("# ").strip() if title else notebook.stem
    header = HEADER.format(notebook=notebook.name, title=title.replace('"""', "'''"))
    return header + "".join(f"\n\n{body}\n" for _, body in cells) + all_list(lesson_names(cells))


def chapter_notebooks() -> list[Path]:
    return sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))


README = ROOT / "README.md"
NAMES_START, NAMES_END = "<!-- lesson-names -->", "<!-- /lesson-names -->"


def names_table(notebooks: list[Path] | None = None) -> str:
    """The README's table of each chapter module's own names (its `__all__`), between the two markers."""
    rows = []
    for notebook in notebooks or chapter_notebooks():
        cells = exported_cells(notebook, json.loads(notebook.read_text(encoding="utf-8"))["cells"])
        if cells:
            names = ", ".join(f"`{name}`" for name in lesson_names(cells))
            rows.append(f"| `course.{module_name(notebook)}` | {names} |")
    return "\n".join([NAMES_START, "| module | the chapter's own names (`__all__`, written by `make export`) |",
                      "| --- | --- |", *rows, NAMES_END])


def update_readme(readme: Path = README) -> bool:
    """Write the names table into the README (True if it changed); a README without the markers is left alone."""
    text = readme.read_text(encoding="utf-8")
    if NAMES_START not in text or NAMES_END not in text:
        return False
    start, end = text.index(NAMES_START), text.index(NAMES_END) + len(NAMES_END)
    new = text[:start] + names_table() + text[end:]
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


def export(out: Path = COURSE, notebooks: list[Path] | None = None) -> list[Path]:
    """Write every chapter's module into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for notebook in notebooks or chapter_notebooks():
        text = module_text(notebook)
        target = out / f"{module_name(notebook)}.py"
        if text is None:
            target.unlink(missing_ok=True)
            continue
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=COURSE, help="folder for the modules (default: course/)")
    args = parser.parse_args(argv)
    try:
        written = export(args.out)
        if args.out == COURSE:
            update_readme()
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported {len(written)} chapter modules to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
