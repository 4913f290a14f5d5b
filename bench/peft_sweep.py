"""Chapter 06's learning-rate sweep: every method at 4–5 rates, the best on validation at two more seeds.

    python -m bench.peft_sweep                 # this machine's preset (cpu without a GPU): ~30 min on 2 cores
    python -m bench.peft_sweep --preset gpu
    python -m bench.peft_sweep --reuse         # keep the committed runs, train only what the settings add
                                               # (e.g. a learning rate added to a method's grid)

Writes bench/results/peft_sweep_<preset>.json (settings, data and model identity, versions, machine, one
row per run), which chapter 06 reads: it refuses results made with other settings, data or model. The
code is chapter 06's own (course/ch06_peft.py, exported from the notebook).
"""
from __future__ import annotations

import sys
from dataclasses import asdict

import utils
from course.ch05_fine_tuning import prepare
from course.ch06_peft import PEFT_SWEEP, inputs_identity, peft_settings, sweep
from utils.data import load_sentiment
from utils.sweeps import make_sweep, sweep_arguments


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(__doc__.splitlines()[0], argv)
    preset = args.preset or utils.preset()
    settings = peft_settings(preset)
    data = load_sentiment()
    prepared = prepare(data, "MiniLM")
    print(f"{utils.describe()} · preset {preset} · {settings.steps} steps of {settings.batch_size}", flush=True)

    def show(row):
        lr = "—" if row["lr"] is None else f"{row['lr']:g}"
        print(f"{row['method']:14s} lr {lr:>7s} seed {row['seed']}: validation {100 * row['validation accuracy']:.1f}%"
              f"  test {100 * row['test accuracy']:.1f}%  {row['seconds']:.0f} s", flush=True)
    make_sweep(PEFT_SWEEP, preset, args, settings=asdict(settings), inputs=inputs_identity(data), by="method",
               sweep=lambda earlier: sweep(prepared, settings, on_row=show, reuse=earlier, progress=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
