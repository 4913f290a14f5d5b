"""Committed sweep records (`bench/results/*.json`): long learning-rate sweeps run by a `bench/` script, read by a
chapter. A record carries what it was made from (settings, the identity of its inputs, versions, machine,
command), and reading it with other settings or inputs is refused with the command that makes it again."""
from __future__ import annotations

import argparse
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .checkpoint import atomic_path


def write_record(path: str | Path, *, preset: str, settings: Mapping[str, Any], inputs: Mapping[str, str],
                 rows: Sequence[Mapping[str, Any]], seconds: float, command: str,
                 libraries: Sequence[str] = ("transformers",)) -> Path:
    """Write a sweep's rows with what they were made from, atomically; returns the path."""
    from .hardware import describe
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                **{name: metadata.version(name) for name in libraries}}
    record = {"preset": preset, "settings": dict(settings), "inputs": dict(inputs), "command": command,
              "seconds": round(seconds), "machine": describe(), "versions": versions, "rows": list(rows)}
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_record(path: str | Path, *, settings: Mapping[str, Any], inputs: Mapping[str, str], rerun: str,
                made_by: str, inputs_named: str, any_rates: bool = False) -> dict[str, Any]:
    """The record at `path`, refused if it was made with other `settings` (other learning rates too, unless
    any_rates) or other `inputs`. rerun: the command that makes it again; made_by: the settings' function,
    for the message; inputs_named: what the inputs are, in words."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing: run `{rerun}`")
    record = json.loads(path.read_text())
    expected = json.loads(json.dumps(dict(settings)))            # tuples become lists, as in the file
    if any_rates:
        expected["learning_rates"] = record["settings"]["learning_rates"]
    if record["settings"] != expected:
        raise ValueError(f"{path.name} was made with other settings than {made_by}; run `{rerun}` again")
    if record["inputs"] != dict(inputs):
        raise ValueError(f"{path.name} was made with another {inputs_named} than this one; run `{rerun}` again")
    return record


def sweep_arguments(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The options every sweep script takes (--preset, --threads, --reuse); sets the threads and quiets the
    libraries before the script's work starts."""
    from .models import quiet_libraries
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=("cpu", "gpu"), default=None, help="default: this machine's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the committed runs made with the same settings apart from the learning rates")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    return args


def sweep_command(script: str, args: argparse.Namespace) -> str:
    """The command line that made a record, as stored in it."""
    return (f"python {script}" + (f" --preset {args.preset}" if args.preset else "")
            + (" --reuse" if args.reuse else ""))
