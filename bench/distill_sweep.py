"""Chapter 07's learning-rate sweep: every student at three rates, the best on validation at two more seeds.

    python -m bench.distill_sweep                 # this machine's preset (cpu without a GPU): ~25 min on 2 cores
    python -m bench.distill_sweep --preset gpu
    python -m bench.distill_sweep --reuse         # keep the committed runs, train only what the settings add
                                                  # (e.g. a learning rate added to an arm's grid)
    python -m bench.distill_sweep --new-mini-bert # chapter 04's recipe changed: train again only the student that
                                                  # starts from its weights (the others read its tokenizer alone,
                                                  # which depends on the text, not on the recipe)

Writes bench/results/distill_sweep_<preset>.json (settings; the identity of the sentiment data, the teacher
and chapter 04's mini-BERT; versions, machine, one row per run), which chapter 07 reads: it refuses results
made with other settings or inputs. The code is chapter 07's own (course/ch07_distillation.py, exported
from the notebook); the teacher's logits come from the same cache the notebook uses.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

import utils
from course.ch05_fine_tuning import prepare
from course.ch07_distillation import (ARMS, DISTILL_SWEEP, STUDENTS, distill_settings, inputs_identity, sweep,
                                      transfer_set)
from utils.data import load_sentiment
from utils.sweeps import make_sweep, sweep_arguments


PROVENANCE = ("machine", "processor", "versions")      # where a record's runs were made
PRETRAINED = tuple(arm for arm, (weights, _) in STUDENTS.items() if weights == "mini-bert")   # start from chapter 04


def committed_without_pretrained(preset: str, settings: dict, inputs: dict) -> dict:
    """The committed runs of every student but those that start from chapter 04's weights, refused (by the
    record's own checks) unless it was made with these settings, sentiment set and teacher. The kept students
    read chapter 04's tokenizer only, which is trained from the text alone (the same, whatever the recipe)."""
    committed_mini_bert = json.loads(DISTILL_SWEEP.path(preset).read_text())["inputs"].get("mini_bert")
    record = DISTILL_SWEEP.read(preset, settings=settings, inputs={**inputs, "mini_bert": committed_mini_bert})
    kept = [row for row in record["rows"] if row["arm"] not in PRETRAINED]
    return {"rows": kept, "seconds": sum(row["seconds"] for row in kept),     # the kept runs' own time
            "provenance": {key: record[key] for key in PROVENANCE if key in record}}


def main(argv: list[str] | None = None) -> int:
    parser_argv = list(sys.argv[1:] if argv is None else argv)
    new_mini_bert = "--new-mini-bert" in parser_argv
    args = sweep_arguments(__doc__.splitlines()[0], [a for a in parser_argv if a != "--new-mini-bert"])
    args.more_flags = ["--new-mini-bert"] if new_mini_bert else []
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
    inputs = inputs_identity(data)
    kept = committed_without_pretrained(preset, asdict(settings), inputs) if new_mini_bert else None
    reused = DISTILL_SWEEP.path(preset)           # --reuse: make_sweep reads and checks it (and says so if missing)
    committed = json.loads(reused.read_text()) if args.reuse and reused.is_file() else None
    path = make_sweep(DISTILL_SWEEP, preset, args, settings=asdict(settings), inputs=inputs, by="arm",
                      sweep=lambda earlier: sweep(settings, wordpiece, minilm, transfer, ARMS, on_row=show, reuse=earlier),
                      started=started, earlier=kept)    # the transfer set's time counts too
    if new_mini_bert:
        keep_provenance(path, kept["provenance"], {"arms": list(PRETRAINED)})
    elif committed is not None:
        before = {(row["arm"], row["lr"], row["seed"]) for row in committed["rows"]}
        runs = [f"{row['arm']}, lr {row['lr']:g}, seed {row['seed']}" for row in json.loads(path.read_text())["rows"]
                if (row["arm"], row["lr"], row["seed"]) not in before]
        keep_provenance(path, committed, {"runs": runs} if runs else None)
    return 0



def keep_provenance(path, provenance: dict, added: dict | None) -> None:
    """Most runs of a --new-mini-bert or --reuse record were made where the committed record was: it keeps that
    machine and those versions (so re-runs elsewhere are compared within the noise), and lists under "added"
    where the new runs (`added`: their arms or their runs) were made. --reuse keeps the earlier "added" entries;
    --new-mini-bert drops them, since it trains their arm again."""
    record = json.loads(path.read_text())
    earlier = provenance.get("added", []) if added is None or "runs" in added else []
    earlier = [earlier] if isinstance(earlier, dict) else list(earlier)
    new = [{**added, **{key: record[key] for key in PROVENANCE if key in record}}] if added else []
    for key in PROVENANCE:
        if key in provenance:
            record[key] = provenance[key]
        else:
            record.pop(key, None)
    record.pop("added", None)
    if earlier + new:
        record["added"] = earlier + new
    path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
