"""Write README.md's "Tested with" line from the environment that just ran the notebooks (`make run-all`).

    python tools/tested_with.py          # rewrite the line between the markers
    python tools/tested_with.py --print  # only print it

The line is never typed: it names the versions of this environment, which executed the committed outputs.
`make test-oldest` checks the other end of the ranges.
"""
from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- tested-with -->", "<!-- /tested-with -->"
PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "accelerate", "peft", "onnxruntime",
            "jupyterlab", "matplotlib", "numpy")


def line() -> str:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return f"Tested with Python {platform.python_version()}, " + ", ".join(versions) + "."


def rewrite(text: str, tested: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: README.md has no {START} … {END} markers to write the line between")
    return pattern.sub(lambda _: f"{START}{tested}{END}", text)


if __name__ == "__main__":
    tested = line()
    if "--print" in sys.argv[1:]:
        print(tested)
    else:
        README.write_text(rewrite(README.read_text(encoding="utf-8"), tested), encoding="utf-8")
        print(f"README.md: {tested}")
