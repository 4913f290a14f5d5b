"""Re-execute notebooks in place and print each chapter's time and headline figures.

    python tools/run_notebooks.py                      # every notebook under chapters/
    python tools/run_notebooks.py chapters/00_welcome.ipynb

This is how committed notebooks get their outputs (`make run-all`), and an instructor's
pre-flight before class. Kernels run offline (HF_*_OFFLINE=1) with the current environment's
Python. A notebook that fails is reported and left as it was on disk. Exit status 1 if any failed.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def notebooks_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def measured_figures(nb) -> dict[str, str]:
    """The figures a notebook reported with utils.what_we_measured (in its output metadata)."""
    figures: dict[str, str] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            figures.update(output.get("metadata", {}).get("from_zero", {}).get("measured", {}))
    return figures


def budget_minutes(nb) -> float | None:
    return nb.metadata.get("from_zero", {}).get("budget_minutes")


def unreadable(path: Path) -> str | None:
    """Why `path` cannot be a notebook (merge-conflict markers, not JSON), in one line; None if it can."""
    text = path.read_text(encoding="utf-8", errors="replace")
    marker = re.search(r"^(<<<<<<<|=======|>>>>>>>)( |$)", text, re.M)
    if marker:
        line = text.count("\n", 0, marker.start()) + 1
        return (f"{path} has merge-conflict markers ({marker.group(1)} at line {line}): resolve the conflict, or "
                f"take one side with `git checkout --ours {path}` (or --theirs), then run again")
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return f"{path} is not valid notebook JSON (line {error.lineno}, column {error.colno}: {error.msg})"
    return None


def finish_progress_bars(nb) -> int:
    """Give each progress bar's plain-text fallback (what GitHub and viewers without widgets show) the bar's
    final state, read from the widget state the run saved, instead of the "0%| 0/N" it started with; an
    `interact` slider's fallback (a repr of its children) becomes one readable line. Returns how many changed."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})

    def model(reference: str) -> dict:
        return state.get(reference.removeprefix("IPY_MODEL_"), {}).get("state", {})

    def text(reference: str) -> str:
        return html.unescape(model(reference).get("value", "")).replace("\u2007", " ")
    rewritten = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view and str(output["data"].get("text/plain", "")).startswith("interactive("):
                output["data"]["text/plain"] = "(a slider: run the notebook in Jupyter to move it)"
                rewritten += 1
                continue
            children = model(view["model_id"]).get("children", []) if view else []
            if len(children) != 3 or state.get(children[1].removeprefix("IPY_MODEL_"), {}).get("model_name") != "FloatProgressModel":
                continue                             # not tqdm's [description, bar, counts] box
            bar = model(children[1])
            filled = round(10 * bar.get("value", 0) / bar["max"]) if bar.get("max") else 0
            output["data"]["text/plain"] = f"{text(children[0])}|{'█' * filled}{' ' * (10 - filled)}|{text(children[2])}"
            rewritten += 1
    return rewritten


def execute(path: Path, timeout: int) -> tuple[float, str | None, object]:
    """Run a notebook top to bottom in a fresh kernel; write it back only if it succeeded."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # drop the traceback's colour codes
        lines = [line for line in text.splitlines() if line.strip()]
        return time.perf_counter() - started, lines[-1] if lines else "cell failed", nb
    elapsed = time.perf_counter() - started
    finish_progress_bars(nb)
    nbformat.write(nb, path)
    return elapsed, None, nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in chapters/")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--bars-only", action="store_true",
                        help="run nothing: rewrite the committed progress bars' text from their saved final state")
    args = parser.parse_args(argv)
    paths = args.notebooks or notebooks_under(ROOT / "chapters")
    if args.bars_only:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if finish_progress_bars(nb):
                nbformat.write(nb, path)
        return 0
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    for path in paths:                       # before any notebook runs: a broken one would fail late
        problem = unreadable(path)
        if problem:
            parser.error(problem)
    os.environ.update(OFFLINE)

    rows, failed = [], 0
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        elapsed, error, nb = execute(path.resolve(), args.timeout)
        budget = budget_minutes(nb)
        status = "FAILED" if error else ("over budget" if budget and elapsed > 60 * budget else "ok")
        failed += error is not None
        headline = error or "; ".join(f"{k}: {v}" for k, v in list(measured_figures(nb).items())[:4])
        rows.append((path.name, f"{elapsed:6.1f} s", f"{budget:g} min" if budget else "-", status, headline))

    header = ("notebook", "time", "budget", "status", "headline figures")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    print()
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)), row[4])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
