"""Chapter 09's learning rate, chosen on validation: the preset's recipe at each rate of GPT_RATES, seed 0.

    python -m bench.gpt_rates [--preset cpu|gpu] [--threads N]

Writes bench/results/gpt_rates_{preset}.json: one row per rate with the nats per character of all of the
validation plays and the seconds. Chapter 09 reads it, prints it and checks that its preset's rate is the one
chosen, inside the grid. About 3 × 4 minutes on a 2-core CPU.
"""
from __future__ import annotations

import time

import utils
from course.ch09_gpt import (GPT_RATES, RATES_SWEEP, corpus_identity, gpt_settings, rate_row, rates_settings,
                             train_byte_bpe)
from utils.data import load_gpt_corpus
from utils.sweeps import make_sweep, sweep_arguments


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(__doc__.splitlines()[0], argv, reuse=False)
    preset = args.preset or utils.preset()
    settings = gpt_settings(preset)
    splits = load_gpt_corpus()
    tokenizer = train_byte_bpe(splits["train"], settings.vocab_size)

    def sweep(earlier):
        rows = []
        for lr in GPT_RATES:
            rows.append(rate_row(settings, lr, splits, tokenizer))
            print(f"lr {lr:g}: validation {rows[-1]['validation nats/char']:.4f} nats/char, {rows[-1]['seconds']:.0f} s",
                  flush=True)
        return rows
    make_sweep(RATES_SWEEP, preset, args, settings=rates_settings(settings), inputs=corpus_identity(splits),
               sweep=sweep, started=time.perf_counter())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
