"""Chapter 04's pretraining as a command: the notebook's `pretrain`, from a shell, on one process or many.

    python tools/pretrain.py [--preset cpu|gpu] [--steps N] [--batch-size B] [--lr LR] [--dropout P] …
    accelerate launch --multi_gpu --num_processes 2 tools/pretrain.py …     # N processes (GPUs, or CPU cores)
    torchrun --nproc_per_node 2 tools/pretrain.py …                          # the same, without accelerate's launcher

Every option not given keeps the preset's recipe (`course.ch04_pretraining.settings_for`). Under a launcher
`utils.train` runs distributed data parallel: each process takes 1/N of every batch, so `--batch-size` stays
the global batch and the learning rate needs no change. Checkpoints go to the artifact cache (one folder per
recipe, inputs and number of processes; `--checkpoint-dir` to choose), so running the same command again
resumes where it stopped. `--stop-at K` stops after step K, as a crash would (to try resuming). `--out F.json`
writes the logged losses, the evaluations, the WikiText-2 test scores and the time (main process only).
`--save DIR` writes the model and tokenizer as chapter 05 reads them.

On a CPU-only machine, `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.16 hands
--cpu to a launcher that needs MPI for more); `--multi_gpu` without `--cpu` starts N processes, which find no
GPU and use the CPU with the gloo backend (one thread each unless OMP_NUM_THREADS says otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def command(options: list[str], processes: int = 1, script: str | Path = __file__) -> list[str]:
    """The argv that runs `script` (this command by default) with `options` on `processes` processes
    (accelerate's launcher for more than one; its defaults named, so it prints no warning about them)."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launcher, str(Path(script).resolve()), *options]


def settings_parser(settings_class, description: str) -> argparse.ArgumentParser:
    """A parser with --preset, one option per field of the recipe dataclass `settings_class` (default: the
    preset's value), and the options every pretraining command shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=("cpu", "gpu"), default=None, help="default: utils.preset()")
    for field in fields(settings_class):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            name = field.type if isinstance(field.type, str) else field.type.__name__
            kind = {"int": int, "float": float, "str": str}[name]
            parser.add_argument(flag, type=kind, default=None)
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument("--stop-at", type=int, default=None, help="stop after this step (a checkpoint is written)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the results (main process)")
    parser.add_argument("--save", type=Path, default=None, help="a folder for the model and tokenizer")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def training_report(settings, processes: int, history, started: float) -> dict:
    """What a pretraining command reports: its recipe, processes, steps, losses, evaluations and seconds."""
    return {"settings": asdict(settings), "processes": processes, "steps_done": history.steps_done,
            "resumed_from": history.resumed_from, "seconds": round(time.perf_counter() - started, 1),
            "train": [{"step": r["step"], "loss": r["loss"]} for r in history.train], "eval": history.eval}


def finish(report: dict, args: argparse.Namespace, save) -> None:
    """On the main process: the report to --out, the model to --save (`save(folder)`)."""
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        save(args.save)


def run(main) -> None:
    """Run a pretraining command's `main`: a wrong option or checkpoint ends with its message, no traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from utils.checkpoint import CheckpointError
    try:
        main()
    except (CheckpointError, ValueError) as error:
        sys.exit(f"error: {error}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from course.ch04_pretraining import PretrainSettings
    return settings_parser(PretrainSettings, __doc__.split("\n")[0]).parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from accelerate import PartialState

    from course.ch04_pretraining import (corpus, fixed_masked_set, inputs_identity, masked_lm_scores, pretrain,
                                         save_pretrained_mlm, settings_for, train_wordpiece, training_folder)
    from utils.data import load_corpus
    args = parse(argv)
    recipe = {f.name for f in fields(settings_for("cpu"))}
    chosen = {k: v for k, v in vars(args).items() if k in recipe and v is not None}
    settings = settings_for(args.preset, **chosen)
    processes = int(os.environ.get("WORLD_SIZE", "1"))   # set by the launcher (utils.train starts the group)
    started = time.perf_counter()
    text, validation = corpus(settings), load_corpus("validation")
    tokenizer = train_wordpiece(text, vocab_size=settings.vocab_size, max_length=settings.block_size)
    folder = args.checkpoint_dir
    if folder is None:
        folder = training_folder(settings, inputs_identity(text, validation, tokenizer))
        folder = folder if processes == 1 else folder.with_name(f"{folder.name}-{processes}processes")
    stop = [] if args.stop_at is None else [lambda step, history: step >= args.stop_at]
    result = pretrain(settings, tokenizer, callbacks=stop, checkpoint_dir=folder, log_every=args.log_every,
                      progress=not args.quiet)
    history = result["history"]
    report = training_report(settings, processes, history, started)
    state = PartialState()                          # the one utils.train started
    if state.is_main_process:
        test = fixed_masked_set(load_corpus("test"), tokenizer, settings, seed=1234)   # as chapter 04 scores it
        report["test"] = masked_lm_scores(result["model"], *test)
        finish(report, args, lambda folder: save_pretrained_mlm(result, folder, settings))
        scores = ", ".join(f"{k} {v:.4f}" for k, v in report["test"].items())
        print(f"{processes} process(es), {history.steps_done} steps, last loss {history.losses[-1]:.4f}; "
              f"WikiText-2 test: {scores}; {report['seconds']} s; checkpoints in {folder}")
    state.wait_for_everyone()
    state.destroy_process_group()
    return report


if __name__ == "__main__":
    run(main)
