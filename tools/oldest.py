"""The oldest releases requirements.txt admits, as a pip constraints file (what `make test-oldest` installs).

    python tools/oldest.py > build/constraints-oldest.txt

For the Hugging Face libraries, whose releases change behaviour most often (transformers, datasets,
tokenizers, accelerate, peft), it pins each to its range's lower bound; torch stays at the CPU pin of
constraints.txt; everything else resolves as usual. `make test-oldest` then runs the unit tests and one
chapter in a separate environment (.venv-oldest): a failure there means a lower bound must be raised.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLDEST = ("transformers", "datasets", "tokenizers", "accelerate", "peft")


def lower_bounds(requirements: str) -> dict[str, str]:
    """{name: version} of each `name>=version` line."""
    found = {}
    for line in requirements.splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def constraints(requirements: str, pins: str) -> str:
    bounds = lower_bounds(requirements)
    missing = [name for name in OLDEST if name not in bounds]
    if missing:
        raise SystemExit(f"error: requirements.txt has no '>=' lower bound for {', '.join(missing)}")
    lines = [f"{name}=={bounds[name]}" for name in OLDEST]
    lines += [line for line in pins.splitlines() if line.strip() and not line.startswith("#")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(constraints((ROOT / "requirements.txt").read_text(), (ROOT / "constraints.txt").read_text()))
