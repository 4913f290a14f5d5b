"""Chapter 07's learning-rate sweep: every student at three rates, the best on validation at two more seeds.

    python -m bench.distill_sweep                 # this machine's preset (cpu without a GPU): ~25 min on 2 cores
    python -m bench.distill_sweep --preset gpu
    python -m bench.distill_sweep --reuse         # keep the committed runs, train only what the settings add
                                                  # (e.g. a learning rate added to an arm's grid)

Writes bench/results/distill_sweep_<preset>.json (settings; the identity of the sentiment data, the teacher
and chapter 04's mini-BERT; versions, machine, one row per run), which chapter 07 reads: it refuses results
made with other settings or inputs. The code is chapter 07's own (course/ch07_distillation.py, exported
from the notebook); the teacher's logits come from the same cache the notebook uses.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict

import utils
from course.ch05_fine_tuning import prepare
from course.ch07_distillation import ARMS, DISTILL_SWEEP, distill_settings, inputs_identity, sweep, transfer_set
from utils.data import load_sentiment
from utils.sweeps import make_sweep, sweep_arguments


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(__doc__.splitlines()[0], argv)
    preset = args.preset or utils.preset()
    settings = distill_settings(preset)
    data = load_sentiment()
    wordpiece, minilm = prepare(data, "random"), prepare(data, "MiniLM")
    started = time.perf_counter()
    transfer = transfer_set(data, settings)
    print(f"{utils.describe()} · preset {preset} · {settings.steps} steps of {settings.batch_size} · transfer set "
          f"{len(transfer.texts):,} sentences ({time.perf_counter() - started:.0f} s)", flush=True)

    def show(row):
        print(f"{row['arm']:36s} lr {row['lr']:<7g} seed {row['seed']}: validation {100 * row['validation accuracy']:.1f}%"
              f"  test {100 * row['test accuracy']:.1f}%  {row['seconds']:.0f} s", flush=True)
    make_sweep(DISTILL_SWEEP, preset, args, settings=asdict(settings), inputs=inputs_identity(data), by="arm",
               sweep=lambda earlier: sweep(settings, wordpiece, minilm, transfer, ARMS, on_row=show, reuse=earlier),
               started=started)                  # the transfer set's time counts too
    return 0


if __name__ == "__main__":
    sys.exit(main())
