"""The course's learning-rate protocol, and the committed sweep records (`bench/results/*.json`) that long sweeps
run by a `bench/` script leave for a chapter to read.

The protocol (`tune_then_repeat`): train at every rate of a grid with the first seed, keep the rate best on
validation (`best_rate`: ties go to the smaller rate), train the other seeds at that rate. Every comparison in
chapters 05-07 and bench/ chooses its rates this way, one arm at a time, so that no arm is favoured.

A record (`SweepRecord`) carries what it was made from (settings, the identity of its inputs, versions, machine,
command), and reading it with other settings or inputs is refused with the command that makes it again."""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .checkpoint import atomic_path


RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


# ---------------------------------------------------------------- the learning-rate protocol
def best_rate(rows: Sequence[Mapping[str, Any]], key: str = "validation accuracy") -> float:
    """The learning rate of the row that scores highest on `key`; a tie goes to the smaller rate (the cautious one)."""
    return min(rows, key=lambda row: (-row[key], row["lr"]))["lr"]


def bracketed_rate(grid: Sequence[float], train: Callable[[float], Mapping[str, Any]], extra: int = 2,
                   key: str = "validation accuracy") -> tuple[float, list[dict[str, Any]]]:
    """A rate chosen *inside* its grid: train at every rate of `grid` (at least 3, increasing), and while the best
    on validation (`best_rate`) is the smallest or the largest rate tried, try one more step beyond it (the grid's
    first ratio), at most `extra` times. Returns (rate, rows tried); the rate may still be at an edge when the
    extra steps run out (`at_edge` tells)."""
    grid = sorted(grid)
    if len(grid) < 3:
        raise ValueError(f"a rate grid needs at least 3 rates to have an inside (got {list(grid)}): add one on each side")
    ratio = grid[1] / grid[0]
    rows = [dict(train(lr)) for lr in grid]
    for _ in range(extra):
        best = best_rate(rows, key)
        tried = sorted(row["lr"] for row in rows)
        if best == tried[0]:
            rows.append(dict(train(float(f"{best / ratio:.3g}"))))
        elif best == tried[-1]:
            rows.append(dict(train(float(f"{best * ratio:.3g}"))))
        else:
            break
    return best_rate(rows, key), rows


def at_edge(rate: float, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether `rate` is the smallest or the largest rate among `rows` (then a better one may lie outside)."""
    tried = [row["lr"] for row in rows]
    return rate in (min(tried), max(tried))


def tune_then_repeat(rates: Sequence[float], seeds: Sequence[int],
                     train: Callable[[float, int], Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The protocol for one arm: `train(lr, seed)` at every rate with seeds[0], the best on validation kept
    (`best_rate`), then the other seeds at that rate. Each row gains "chosen" (run at the kept rate); every
    row is returned, in the order it was trained."""
    tried = [dict(train(lr, seeds[0])) for lr in rates]
    best = best_rate(tried)
    rows = tried + [dict(train(best, seed)) for seed in seeds[1:]]
    return [{**row, "chosen": row["lr"] == best} for row in rows]


def chosen_rates(rows: Sequence[Mapping[str, Any]], by: str) -> dict[str, float]:
    """For each arm (each value of row[by]: a method, an arm), the rate `best_rate` keeps among the rows of the
    first seed. Rows without a rate (nothing trained, e.g. a linear probe) are left out."""
    first = min(row["seed"] for row in rows)
    arms: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["seed"] == first and row["lr"] is not None:
            arms.setdefault(row[by], []).append(row)
    return {arm: best_rate(tried) for arm, tried in arms.items()}


def result_row(history: Any, test_accuracy: float, seconds: float, **labels: Any) -> dict[str, Any]:
    """One fine-tuning run as a row, with the same keys in every chapter: `labels` (arm or method, seed, lr…),
    then steps, validation accuracy (the best evaluation, as utils.train kept it), test accuracy and seconds."""
    return {**labels, "steps": history.steps_done, "validation accuracy": history.best_value,
            "test accuracy": test_accuracy, "seconds": seconds}


# ---------------------------------------------------------------- committed records
@dataclass(frozen=True)
class SweepRecord:
    """A committed sweep: `{folder}/{name}_{preset}.json`, made by `python -m bench.{name} --preset PRESET`.
    made_by: the function that gives its settings (for messages); inputs_named: its inputs, in words."""
    name: str
    made_by: str
    inputs_named: str
    libraries: tuple[str, ...] = ("transformers",)
    folder: Path = RESULTS

    def path(self, preset: str) -> Path:
        return Path(self.folder) / f"{self.name}_{preset}.json"

    def rerun(self, preset: str) -> str:
        return f"python -m bench.{self.name} --preset {preset}"

    def write(self, preset: str, *, settings: Mapping[str, Any], inputs: Mapping[str, str],
              rows: Sequence[Mapping[str, Any]], seconds: float, command: str) -> Path:
        return write_record(self.path(preset), preset=preset, settings=settings, inputs=inputs, rows=rows,
                            seconds=seconds, command=command, libraries=self.libraries)

    def read(self, preset: str, *, settings: Mapping[str, Any], inputs: Mapping[str, str],
             any_rates: bool = False, missing_ok: bool = False) -> dict[str, Any] | None:
        """The record for `preset`, checked (see read_record). missing_ok: None when none is committed for this
        preset, after a line saying which command makes one."""
        if missing_ok and not self.path(preset).is_file():
            print(f"no committed {self.name} record for the {preset} preset: `{self.rerun(preset)}` makes one")
            return None
        return read_record(self.path(preset), settings=settings, inputs=inputs, rerun=self.rerun(preset),
                           made_by=f"{self.made_by}({preset!r})", inputs_named=self.inputs_named, any_rates=any_rates)


def make_sweep(record: SweepRecord, preset: str, args: argparse.Namespace, *, settings: Mapping[str, Any],
               inputs: Mapping[str, str], sweep: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
               by: str | None = None, started: float | None = None,
               earlier: Mapping[str, Any] | None = None) -> Path:
    """What every sweep script does once its models and data are ready: `sweep(earlier)` timed (earlier: the
    committed rows when --reuse, to be taken as they are), the record written with the command that made it,
    the rates chosen per `by` (an arm, a method) printed. Returns the record's path. started: a
    time.perf_counter() to count the record's seconds from (default: now, when the sweep starts). earlier: the
    rows (and seconds) to take as they are, chosen by the script (default: none, or the committed record's
    with --reuse)."""
    if earlier is None:
        earlier = (record.read(preset, settings=settings, inputs=inputs, any_rates=True) if args.reuse
                   else {"rows": [], "seconds": 0})
    started = time.perf_counter() if started is None else started
    rows = sweep(list(earlier["rows"]))
    seconds = time.perf_counter() - started + earlier["seconds"]
    path = record.write(preset, settings=settings, inputs=inputs, rows=rows, seconds=seconds,
                        command=sweep_command(f"bench.{record.name}", args))
    if by is not None:
        print("chosen on validation:", chosen_rates(rows, by=by))
    print(f"wrote {path} in {seconds / 60:.1f} min")
    return path


def write_record(path: str | Path, *, preset: str, settings: Mapping[str, Any], inputs: Mapping[str, str],
                 rows: Sequence[Mapping[str, Any]], seconds: float, command: str,
                 libraries: Sequence[str] = ("transformers",)) -> Path:
    """Write a sweep's rows with what they were made from, atomically; returns the path. `inputs` is a
    `utils.made_from(...)`: machine-independent, so the record loads on any machine."""
    from .hardware import describe, processor
    record = {"preset": preset, "settings": dict(settings), "inputs": dict(inputs), "command": command,
              "seconds": round(seconds), "machine": describe(), "processor": processor(),
              "versions": _versions(libraries), "rows": list(rows)}
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


def _versions(libraries: Sequence[str]) -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"
    return {"python": platform.python_version(), "torch": torch.__version__, **{name: version(name) for name in libraries}}


def _differences(record: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What differs between the machine that made `record` and this one: name → (the record's, this one's)."""
    from .hardware import describe, processor
    recorded = record.get("versions", {})
    now = {"processor": processor(), "machine": describe(),
           **_versions([name for name in recorded if name not in ("python", "torch")])}
    made = {"processor": record.get("processor"), "machine": record.get("machine"), **recorded}
    return {name: (made.get(name), now[name]) for name in now if made.get(name) != now[name]}


def made_here(record: Mapping[str, Any]) -> bool:
    """Whether `record` was made on a machine like this one (the same processor and vector kernels, thread
    count, torch build and library versions), where re-running its runs gives the same bits."""
    return not _differences(record)


def rerun_tolerance(record: Mapping[str, Any], seed_groups: Sequence[Sequence[float]], floor: float = 0.02) -> float:
    """How far a training run re-run here may land from the same run in `record`.

    On a machine like the record's (`made_here`): 0, the same bits. Elsewhere, other float rounding makes the
    run another draw, which differs from the record's by about σ·√2, σ being the spread between seeds: estimated
    (ddof=1) from `seed_groups`, the record's values of each re-run setting over its seeds, pooled. We allow 5σ
    (3.5 times σ·√2: a correct setup fails about 1 run in 2,000 if accuracy is roughly normal, so a chapter that
    re-runs 7 fails less than once in 250 tries and never sends a learner to re-run a sweep for nothing), and
    at least `floor` (2 points of accuracy), since a few seeds estimate σ loosely. A changed recipe or a bug moves the
    numbers further than that; on the record's own kind of machine any change at all is caught."""
    if made_here(record):
        return 0.0
    groups = [list(g) for g in seed_groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in groups)
    pooled = math.sqrt(sum((len(g) - 1) * float(np.var(g, ddof=1)) for g in groups) / dof) if dof else 0.0
    return max(5 * pooled, floor)


def where_made(record: Mapping[str, Any]) -> str:
    """One line: where `record` was made, and whether re-runs here must match it to the bit or within the noise."""
    differences = _differences(record)
    if not differences:
        return "the record was made on a machine like this one: re-runs must give the same numbers"
    said = "; ".join(f"{name} {made or 'not recorded'} there, {now} here" for name, (made, now) in differences.items())
    return f"the record was made elsewhere ({said}): re-runs round differently, so they must agree within the seeds' noise"


def compare_reruns(record: Mapping[str, Any], reruns: Mapping[str, tuple[float, float, Sequence[float]]],
                   unit: str = "test accuracy (%)") -> list[dict[str, Any]]:
    """Runs of `record` re-run here, set beside the record's: prints where the record was made and a table,
    returns its rows, each with "within" (the difference is inside `rerun_tolerance`).
    reruns: name → (value here, the record's value, the record's values over its seeds, same setting)."""
    from .report import show_table
    rows = []
    allowed = rerun_tolerance(record, [seeds for _, _, seeds in reruns.values()])
    for name, (here, there, seeds) in reruns.items():
        rows.append({"run": name, "here": here, "record": there, "allowed": allowed,
                     "within": abs(here - there) <= allowed + 1e-12})
    print(where_made(record))
    show_table(["run", f"{unit} here", "in the record", "allowed difference (points)", "within"],
               [[r["run"], f"{100 * r['here']:.1f}", f"{100 * r['record']:.1f}", f"{100 * r['allowed']:.1f}",
                 "yes" if r["within"] else "NO"] for r in rows])
    return rows


def sweep_arguments(description: str, argv: list[str] | None = None, reuse: bool = True) -> argparse.Namespace:
    """The options every sweep script takes (--preset, --threads, and --reuse where `reuse`); sets the threads
    and quiets the libraries before the script's work starts."""
    from .models import quiet_libraries
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=("cpu", "gpu"), default=None, help="default: this machine's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    if reuse:
        parser.add_argument("--reuse", action="store_true",
                            help="reuse the committed runs made with the same settings apart from the learning rates")
    parser.set_defaults(reuse=False)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    return args


def sweep_command(module: str, args: argparse.Namespace) -> str:
    """The command line that made a record, as stored in it: `module` is the script's __name__ or its name
    under bench/ (bench.peft_sweep)."""
    return (f"python -m {module}" + (f" --preset {args.preset}" if args.preset else "")
            + (" --reuse" if args.reuse else "") + "".join(f" {flag}" for flag in getattr(args, "more_flags", ())))
