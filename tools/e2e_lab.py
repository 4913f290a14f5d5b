"""JupyterLab in a real browser: a chapter run through the UI, checked, and photographed.

    make e2e                                   # chapter 00; installs what it needs (see below)
    python tools/e2e_lab.py [--notebook chapters/00_welcome.ipynb] [--out build/e2e] [--timeout 300]

Starts JupyterLab the way `make lab` does (the venv's kernel, chapters/ as the root), opens the notebook in
headless Chromium, clears its committed outputs and runs all cells through the UI's own commands, then
checks what a learner sees: every code cell ran, no output is an error, the progress bar is a rendered
widget (not text such as `HBox(children=...)`) and the live plot shows an image. It saves a screenshot
of the whole notebook and leaves the notebook file as it was (autosave is off, nothing is saved).

Needs Debian's `chromium` and the `playwright` package, used with that browser (never `playwright
install`, which downloads a browser). With `--install` (what `make e2e` passes) a missing browser is
installed with apt-get when running as root; where none can be had, the run is skipped with a message
and exit code 0, so a machine without a browser does not fail the suite for that.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from utils.serving import free_port

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PACKAGES = ("chromium", "fonts-wqy-microhei")      # the font makes the chapters' Chinese terms readable


def find_browser() -> str | None:
    given = os.environ.get("FROM_ZERO_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def install_browser() -> str | None:
    """apt-get install chromium (about a minute), as root only; None where that is not possible."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    print(f"installing {', '.join(PACKAGES)} with apt-get …", flush=True)
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            return None
    return find_browser()


def start_lab(home: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1 with its own config, data, runtime and settings folders: autosave off (it
    would write the run's outputs into chapters/), every cell in the DOM (windowingMode none), and the
    app exposed to the page so the test can call the same commands as the menus."""
    settings = home / "settings"
    for plugin, values in {"docmanager-extension/plugin": {"autosave": False},
                           "notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--ServerApp.token={token}", f"--ServerApp.root_dir={ROOT / 'chapters'}",
               "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = open(home / "lab.log", "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for_lab(port: int, token: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("JupyterLab exited while starting; see its log above")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer on port {port} within {timeout:.0f} s")


# Runs in the page: what a learner sees, cell by cell.
INSPECT = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell.jp-CodeCell')];
  return cells.map(cell => {
    const prompt = (cell.querySelector('.jp-InputArea-prompt') || {}).innerText || '';
    const outputs = [...cell.querySelectorAll('.jp-OutputArea-output')];
    return {
      prompt: prompt.trim(),
      error: outputs.some(o => o.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr'
                               && /Traceback|Error:/.test(o.innerText)),
      errorText: outputs.map(o => o.innerText).filter(t => /Traceback|Error:/.test(t)).join('\\n').slice(0, 400),
      widgets: cell.querySelectorAll('.widget-hprogress, .jupyter-widgets.widget-hbox').length,
      widgetAsText: outputs.some(o => /HBox\\(children=|FloatProgress\\(value=/.test(o.innerText)),
      images: cell.querySelectorAll('.jp-OutputArea-output img').length,
    };
  });
}"""


def run_in_browser(browser_path: str, url: str, out: Path, timeout: float) -> dict:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url, timeout=timeout * 1000)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=timeout * 1000)
            # the indicator says idle before a kernel exists: wait for the kernel's name as well
            page.wait_for_function("""() => {
                const app = window.jupyterapp; const panel = app && app.shell.currentWidget;
                const kernel = panel && panel.sessionContext && panel.sessionContext.session
                               && panel.sessionContext.session.kernel;
                return kernel && kernel.status === 'idle' && panel.sessionContext.kernelDisplayName !== 'No Kernel';
            }""", timeout=timeout * 1000, polling=500)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
            cleared = page.evaluate(INSPECT)
            if any(c["prompt"] not in ("[ ]:", "") or c["images"] or c["widgets"] for c in cleared):
                raise RuntimeError("clearing the committed outputs did not work: the checks would pass without running")
            started = time.monotonic()
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function("""() => {
                const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
                const panel = window.jupyterapp.shell.currentWidget;
                const idle = panel.sessionContext.session.kernel.status === 'idle';
                return idle && prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.innerText));
            }""", timeout=timeout * 1000, polling=1000)
            seconds = time.monotonic() - started
            page.wait_for_timeout(1500)                       # the last widget and image messages
            cells = page.evaluate(INSPECT)
            # a full-page screenshot holds only the viewport in JupyterLab: make the viewport the notebook's height
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
            height = page.evaluate("""() => Math.max(...['.jp-WindowedPanel-viewport', '.jp-WindowedPanel-inner',
                '.jp-WindowedPanel-outer', '.jp-Notebook'].map(s => document.querySelector(s))
                .filter(Boolean).map(e => e.scrollHeight))""")
            page.set_viewport_size({"width": 1400, "height": min(max(900, height + 150), 16000)})
            page.evaluate("() => { const o = document.querySelector('.jp-WindowedPanel-outer'); if (o) o.scrollTop = 0; }")
            page.wait_for_timeout(1000)
            out.mkdir(parents=True, exist_ok=True)
            shot = out / "screenshot.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    return {"cells": cells, "seconds": seconds, "screenshot": shot}


def run_lab(notebook: Path, browser_path: str, out: Path, timeout: float) -> dict:
    """JupyterLab on a free port of 127.0.0.1 with a throwaway home, the notebook run through its UI in the browser."""
    port, token = free_port(), hashlib.sha256(os.urandom(16)).hexdigest()[:32]
    with tempfile.TemporaryDirectory(prefix="from-zero-e2e-") as home:
        server = start_lab(Path(home), port, token)
        try:
            started = time.monotonic()
            wait_for_lab(port, token, server, timeout)
            print(f"JupyterLab answered in {time.monotonic() - started:.1f} s; running {notebook.name} "
                  f"through the UI in {Path(browser_path).name} …", flush=True)
            return run_in_browser(browser_path, f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}",
                                  out, timeout)
        except Exception:
            print((Path(home) / "lab.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def ui_problems(cells: list[dict]) -> list[str]:
    """What the browser saw that a learner would call broken: cells not run, errors, widgets shown as text,
    no progress-bar widget, no image."""
    problems = []
    not_run = [i for i, c in enumerate(cells, 1) if not re.fullmatch(r"\[\d+\]:", c["prompt"])]
    if not_run:
        problems.append(f"code cells that did not run: {not_run}")
    for i, c in enumerate(cells, 1):
        if c["error"]:
            problems.append(f"code cell {i} shows an error: {c['errorText']!r}")
        if c["widgetAsText"]:
            problems.append(f"code cell {i} shows a widget as text (the widget manager did not render it)")
    if sum(c["widgets"] for c in cells) == 0:
        problems.append("no progress-bar widget was rendered")
    if sum(c["images"] for c in cells) == 0:
        problems.append("no image (live plot, figures) was shown")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", default="chapters/00_welcome.ipynb")
    parser.add_argument("--out", default="build/e2e")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for each wait")
    parser.add_argument("--install", action="store_true", help="apt-get install Chromium if it is missing (root)")
    args = parser.parse_args(argv)
    notebook = (ROOT / args.notebook).resolve()
    if not notebook.is_file() or notebook.parent != ROOT / "chapters":
        print(f"error: {args.notebook} is not a notebook in chapters/", file=sys.stderr)
        return 2
    browser_path = find_browser() or (install_browser() if args.install else None)
    if browser_path is None:
        print("e2e skipped: no Chromium here (install it with `sudo apt-get install chromium`, or set "
              "FROM_ZERO_CHROMIUM to a Chrome/Chromium binary)")
        return 0
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("error: the playwright package is missing: `make e2e` installs it (pip install playwright)", file=sys.stderr)
        return 2
    before = hashlib.sha256(notebook.read_bytes()).hexdigest()
    checkpoints = notebook.parent / ".ipynb_checkpoints"        # JupyterLab makes one when it opens a notebook
    left = {checkpoints, checkpoints / f"{notebook.stem}-checkpoint.ipynb"}
    existed = {path for path in left if path.exists()}
    out = ROOT / args.out
    result = run_lab(notebook, browser_path, out, args.timeout)
    for path in sorted(left - existed, reverse=True):          # the file, then the folder if it is empty
        if path.is_file():
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    cells = result["cells"]
    problems = ui_problems(cells)
    if hashlib.sha256(notebook.read_bytes()).hexdigest() != before:
        problems.append(f"{args.notebook} was modified on disk by the run (autosave should be off)")
    widgets, images = sum(c["widgets"] for c in cells), sum(c["images"] for c in cells)
    print(f"{notebook.name}: {len(cells)} code cells run in {result['seconds']:.1f} s through the UI; "
          f"{widgets} rendered widgets, {images} images; screenshot {result['screenshot'].relative_to(ROOT)}")
    for problem in problems:
        print(f"FAILED: {problem}")
    if not problems:
        print("e2e passed: every cell ran, no errors, the progress bar is a widget, the plots are images")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
