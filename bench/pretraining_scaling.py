"""BERT's pretraining recipe at chapter 04's model size against chapter 05's fine-tuning: how much pretraining
compute before it pays off?

    python -m bench.pretraining_scaling                 # this machine's preset (cpu without a GPU): ~18 min on 2 cores
    python -m bench.pretraining_scaling --preset gpu    # budgets up to 4 x the GPU recipe's 20,000 steps

For a geometric series of pretraining budgets (0 = random weights, then 1/4, 1/2, 1, 2 and 4 times the chapter's
steps, each a full run with its own warmup and decay), it pretrains chapter 04's model with BERT's own recipe
(`bert_style()`: learned positions, 15% hidden, dropout 0.1) and chapter 04's code (`pretrained_mini_bert`, only
`steps` changed), scores masked-token
accuracy at the [MASK] positions of WikiText-2 test (and the unigram guess there), then fine-tunes at 100, 300 and
1,000 labels with chapter 05's protocol: its budget per size, its learning rates tried with seed 0 and the best on
validation accuracy kept, seeds 0-2 at that rate, accuracy on the test split. Writes
bench/results/pretraining_scaling_<preset>.json: per budget the tokens seen, FLOPs ~ 6·N·tokens (N: the parameters
outside the embeddings), the masked accuracies, and per size every seed's test accuracy, with mean and sd.
"""
from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

import utils
from course.ch04_pretraining import (corpus, fixed_masked_set, pack_blocks, pretrained_mini_bert,
                                     bert_style, unigram_baseline)
from course.ch05_fine_tuning import (BENCH_LEARNING_RATES, SCALING, SCALING_MULTIPLES, SCALING_SIZES, experiment_for, prepare, run_arm,
                                     scaling_identity, scaling_settings)
from utils.data import load_corpus, load_sentiment
from utils.models import build_on_meta
from utils.sweeps import make_sweep, sweep_arguments, tune_then_repeat


def masked_accuracy(folder: Path | None, reference: Path, seed: int, inputs: torch.Tensor, labels: torch.Tensor,
                    at_mask: torch.Tensor) -> float:
    """Accuracy at the [MASK] positions `at_mask` of the fixed WikiText-2 test set; folder None: random weights."""
    from transformers import BertConfig, BertForMaskedLM
    if folder is None:
        utils.seed_everything(seed)
        model = BertForMaskedLM(BertConfig.from_pretrained(reference))
    else:
        model = BertForMaskedLM.from_pretrained(folder)
    with torch.no_grad():
        model.eval()
        predicted = torch.cat([model(inputs[i:i + 256]).logits.argmax(-1) for i in range(0, len(inputs), 256)])
    return (predicted[at_mask] == labels[at_mask]).float().mean().item()


def non_embedding_parameters(reference: Path) -> int:
    from transformers import BertConfig, BertModel
    model = build_on_meta(BertConfig.from_pretrained(reference), BertModel)
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name and "pooler" not in name)


def fine_tune_rows(arm: str, folder: Path, prepared, experiment, budget: dict) -> list[dict]:
    """Chapter 05's protocol for `arm` (the weights in `folder`) at each size, rows labelled with `budget`."""
    def runner(size, seed, lr):
        row = run_arm(arm, prepared, size, experiment.budget(size, seed, lr), mini_bert=folder)
        return {**row, "sentences": row["size"]}
    return protocol(budget, SCALING_SIZES, dict(BENCH_LEARNING_RATES)[arm], experiment.seeds, runner)


def protocol(label: dict, sizes, rates, seeds, runner, show: str = "") -> list[dict]:
    """Chapter 05's protocol (utils.sweeps.tune_then_repeat) at each size. runner(size, seed, lr) returns a row
    with "seed", "lr", "validation accuracy", "test accuracy" (and "sentences", kept when given). Returns one row
    per run, labelled with `label`; "chosen": run at the kept rate."""
    rows = []
    for size in sizes:
        runs = tune_then_repeat(rates, seeds, lambda lr, seed: runner(size, seed, lr))
        rows += [{**label, "size": size, **{k: row[k] for k in ("sentences",) if k in row},
                  **{k: row[k] for k in ("seed", "lr", "validation accuracy", "test accuracy", "chosen")}}
                 for row in runs]
        kept = [row for row in runs if row["chosen"]]
        accuracies = [row["test accuracy"] for row in kept]
        print(f"  {show}{size:5d} labels: lr {kept[0]['lr']:g}, test {100 * statistics.mean(accuracies):.1f} "
              f"± {100 * statistics.pstdev(accuracies):.1f}%", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(__doc__.splitlines()[0], argv, reuse=False)   # its pretrained models are cached already
    preset = args.preset or utils.preset()
    recipe, experiment = bert_style(preset), experiment_for(preset)
    data = load_sentiment()
    prepared = prepare(data, "mini-bert")                  # the course's WordPiece: the same for every budget
    reference = pretrained_mini_bert(recipe)               # the chapter's own artifact (built if missing)
    tokenizer = prepared.tokenizer
    inputs, labels = fixed_masked_set(load_corpus("test"), tokenizer, recipe, seed=1234)   # as chapter 04 scores it
    at_mask = (labels != -100) & (inputs == tokenizer.mask_token_id)
    baseline = unigram_baseline(pack_blocks(corpus(recipe), tokenizer, recipe.block_size),
                                torch.where(at_mask, labels, -100), len(tokenizer), tokenizer.all_special_ids)["accuracy"]
    n = non_embedding_parameters(reference)
    print(f"{utils.describe()} · preset {preset} · {n:,} parameters outside the embeddings", flush=True)

    def runs(earlier: list[dict]) -> list[dict]:
        rows = []
        for multiple in SCALING_MULTIPLES:
            steps = round(multiple * recipe.steps)
            folder = None if steps == 0 else pretrained_mini_bert(replace(recipe, steps=steps))
            tokens = steps * recipe.batch_size * recipe.block_size
            budget = {"pretraining steps": steps, "tokens": tokens, "flops": 6 * n * tokens,
                      "masked accuracy at [MASK]": masked_accuracy(folder, reference, recipe.seed, inputs, labels, at_mask),
                      "unigram at [MASK]": baseline}
            print(f"{steps:6d} steps ({tokens / 1e6:.1f} M tokens): masked accuracy at [MASK] "
                  f"{100 * budget['masked accuracy at [MASK]']:.1f}% (unigram {100 * baseline:.1f}%)", flush=True)
            rows += fine_tune_rows("random" if steps == 0 else "mini-bert", folder or reference, prepared, experiment,
                                   budget)
        return rows
    make_sweep(SCALING, preset, args, settings=scaling_settings(preset), inputs=scaling_identity(data, preset), sweep=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
