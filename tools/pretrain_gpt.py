"""Chapter 09's pretraining as a command: the notebook's `pretrain_gpt`, from a shell, on one process or many.

    python tools/pretrain_gpt.py [--preset cpu|gpu] [--steps N] [--batch-size B] [--lr LR] [--context T] …
    accelerate launch --multi_gpu --num_processes 2 tools/pretrain_gpt.py …   # N processes (GPUs, or CPU cores)
    torchrun --nproc_per_node 2 tools/pretrain_gpt.py …                       # the same, without accelerate

Every option not given keeps the preset's recipe (`course.ch09_gpt.gpt_settings`); the text is
`utils.data.load_gpt_corpus()` (Shakespeare, or FROM_ZERO_GPT_CORPUS). Under a launcher each process takes 1/N
of every batch (distributed data parallel), so `--batch-size` stays the global batch. Checkpoints go to the
artifact cache (one folder per recipe, text and number of processes; `--checkpoint-dir` to choose), so the same
command run again resumes. `--stop-at K` stops after step K, as a crash would. `--out F.json` writes the losses,
the evaluations, the test plays' nats per character and the time; `--save DIR` the model as `load_gpt` reads it.
The launchers on a CPU-only machine: see tools/pretrain.py.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.pretrain import command as _command, finish, run, settings_parser, training_report  # noqa: E402


def command(options: list[str], processes: int = 1) -> list[str]:
    """The argv that runs this command with `options` on `processes` processes."""
    return _command(options, processes, script=__file__)


def main(argv: list[str] | None = None) -> dict:
    from accelerate import PartialState

    from course.ch09_gpt import (GPTSettings, gpt_settings, nats_per_char, pretrain_gpt, save_gpt, train_byte_bpe,
                                 training_folder, training_inputs)
    from utils.data import load_gpt_corpus
    args = settings_parser(GPTSettings, __doc__.split("\n")[0]).parse_args(argv)
    recipe = {f.name for f in fields(GPTSettings)}
    settings = gpt_settings(args.preset, **{k: v for k, v in vars(args).items() if k in recipe and v is not None})
    processes = int(os.environ.get("WORLD_SIZE", "1"))   # set by the launcher (utils.train starts the group)
    started = time.perf_counter()
    splits = load_gpt_corpus()
    tokenizer = train_byte_bpe(splits["train"], settings.vocab_size)
    folder = args.checkpoint_dir
    if folder is None:                                  # N processes round differently from one: a folder of their own
        folder = training_folder(settings, training_inputs(splits, tokenizer))
        folder = folder if processes == 1 else folder.with_name(f"{folder.name}-{processes}processes")
    stop = [] if args.stop_at is None else [lambda step, history: step >= args.stop_at]
    result = pretrain_gpt(settings, splits, tokenizer, callbacks=stop, checkpoint_dir=folder, log_every=args.log_every,
                          progress=not args.quiet)
    history = result["history"]
    report = training_report(settings, processes, history, started)
    state = PartialState()                              # the one utils.train started
    if state.is_main_process:
        report["test nats/char"] = nats_per_char(result["model"], tokenizer, splits["test"])
        finish(report, args, lambda folder: save_gpt(result, folder, settings))
        print(f"{processes} process(es), {history.steps_done} steps, last loss {history.losses[-1]:.4f}; test plays: "
              f"{report['test nats/char']:.4f} nats/char; {report['seconds']} s")
    state.wait_for_everyone()
    state.destroy_process_group()
    return report


if __name__ == "__main__":
    run(main)
