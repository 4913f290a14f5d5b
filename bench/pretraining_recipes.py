"""Pretraining recipes at chapter 04's budget against chapter 05's fine-tuning: does any of them pay off?

    python -m bench.pretraining_recipes                 # ~27 min on 2 cores (the pretrained models are cached)

Each variant is BERT's recipe at chapter 04's size (`bert_style()`) with a few settings changed (`RECIPE_VARIANTS` in
chapter 05; the variant "chapter 04" is BERT's recipe itself, named before chapter 04 switched to the sine-wave
variant, and kept so that the committed record keeps its identity) and the same budget: 1,100 steps of 64
blocks of 64 tokens (4.5 M tokens). It is pretrained with chapter 04's code
(`pretrained_mini_bert`, cached under its own name) and scored at the [MASK] positions of WikiText-2 test and of the
sentiment *validation* sentences, both masked at 15% as chapter 04 scores (with the variant's tokenizer), next to
the unigram guess there. Then chapter 05's protocol at 100, 300 and 1,000 labels: its rates tried with seed 0, the
best on validation accuracy kept, seeds 0-2 at that rate, test accuracy; for the variant and for random weights with
the variant's tokenizer (random weights depend on nothing else). Last, two fine-tuning levers on the variant with
the best [MASK] accuracy on the sentiment sentences, for both arms: the encoder at a tenth of the head's rate
(ULMFiT's discriminative rates), and 300 steps instead of 80 with rates 3e-4, 1e-3 and 3e-3.
Writes bench/results/pretraining_recipes_<preset>.json.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

import utils
from course.ch04_pretraining import (corpus, fixed_masked_set, pack_blocks, pretrained_mini_bert,
                                     bert_style, unigram_baseline)
from course.ch05_fine_tuning import (BENCH_LEARNING_RATES, RECIPE_LEVERS, RECIPE_VARIANTS, SCALING_SIZES, experiment_for,
                                     fine_tune, new_classifier, predict_proba, prepare, RECIPES,
                                     recipes_settings, run_arm, scaling_identity, scores, subset)
from utils.data import load_corpus, load_sentiment
from bench.pretraining_scaling import masked_accuracy, protocol
from utils.sweeps import make_sweep, sweep_arguments


def at_mask(folder: Path, tokenizer, lines: list[str], recipe, train_blocks: torch.Tensor) -> dict[str, float]:
    """Accuracy at the [MASK] positions of `lines` (masked once as `recipe` masks, seed 1234) and the unigram
    guess there, from the token frequencies of the variant's training blocks."""
    inputs, labels = fixed_masked_set(lines, tokenizer, recipe, seed=1234)
    where = (labels != -100) & (inputs == tokenizer.mask_token_id)
    unigram = unigram_baseline(train_blocks, torch.where(where, labels, -100), len(tokenizer),
                               tokenizer.all_special_ids)["accuracy"]
    return {"accuracy": masked_accuracy(folder, folder, recipe.seed, inputs, labels, where), "unigram": unigram}


def lever_run(arm: str, prepared, size: int, settings, folder: Path, body_scale: float) -> dict:
    """Chapter 05's `run` with the encoder's learning rate `body_scale` times the head's (AdamW, no decay on
    biases and LayerNorm weights, as utils.train's default)."""
    model = new_classifier(arm, settings.seed, settings.pooling, settings.dropout, mini_bert=folder)
    groups = []
    for part, scale in ((model.encoder, body_scale), (model.classifier, 1.0)):
        named = list(part.named_parameters())
        groups += [{"params": [p for _, p in named if p.ndim > 1], "weight_decay": settings.weight_decay,
                    "lr": settings.lr * scale},
                   {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0, "lr": settings.lr * scale}]
    train_part = subset(prepared.data["train"], size, settings.seed)
    history = fine_tune(model, train_part, prepared.validation, prepared.tokenizer, settings,
                        optimizer=torch.optim.AdamW(groups, lr=settings.lr))
    return {"seed": settings.seed, "lr": settings.lr, "validation accuracy": history.best_value,
            "test accuracy": scores(prepared.data["test"]["labels"], predict_proba(model, prepared.test))["accuracy"]}


def labelled(variant: str, lever: str, masked: dict) -> dict:
    """The fields every row of a variant carries: its name, the fine-tuning, its [MASK] scores."""
    return {"variant": variant, "lever": lever, **{f"[MASK] {text}": m["accuracy"] for text, m in masked.items()},
            **{f"unigram {text}": m["unigram"] for text, m in masked.items()}}


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(__doc__.splitlines()[0], argv, reuse=False)   # its pretrained models are cached already
    preset = args.preset or utils.preset()
    recipe, experiment = bert_style(preset), experiment_for(preset)
    data = load_sentiment()
    texts = {"WikiText-2 test": load_corpus("test"), "sentiment validation": list(data["validation"]["text"])}
    print(f"{utils.describe()} · preset {preset}", flush=True)

    def runs(earlier: list[dict]) -> list[dict]:
        rows, scored = [], {}
        rates = dict(BENCH_LEARNING_RATES)
        random_done: set[tuple] = set()                  # random weights depend only on the tokenizer
        for name, changes in RECIPE_VARIANTS:
            variant = replace(recipe, **changes)
            folder = pretrained_mini_bert(variant)
            prepared = prepare(data, "mini-bert", mini_bert=folder)
            blocks = pack_blocks(corpus(variant), prepared.tokenizer, variant.block_size)     # once per variant
            masked = {text: at_mask(folder, prepared.tokenizer, lines, recipe, blocks) for text, lines in texts.items()}
            scored[name] = (folder, prepared, masked)
            print(f"{name}: " + ", ".join(f"[MASK] {text} {100 * m['accuracy']:.1f}% (unigram {100 * m['unigram']:.1f}%)"
                                          for text, m in masked.items()), flush=True)
            label = labelled(name, "chapter 05's protocol", masked)

            def runner(arm, size, seed, lr, folder=folder, prepared=prepared):
                return run_arm(arm, prepared, size, experiment.budget(size, seed, lr), mini_bert=folder)
            tokenizer_key = (variant.wikitext, variant.in_domain, variant.vocab_size, variant.block_size)
            arms = ["mini-bert"] + (["random"] if tokenizer_key not in random_done else [])
            random_done.add(tokenizer_key)
            for arm in arms:
                rows += protocol({**label, "arm": arm}, SCALING_SIZES, rates[arm], experiment.seeds,
                                 lambda size, seed, lr, arm=arm, runner=runner: runner(arm, size, seed, lr), f"{arm:9s} ")
        best = max(scored, key=lambda name: scored[name][2]["sentiment validation"]["accuracy"])
        folder, prepared, masked = scored[best]
        print(f"fine-tuning levers on {best!r}", flush=True)
        for lever, spec in RECIPE_LEVERS:
            label = labelled(best, lever, masked)

            def runner(arm, size, seed, lr, spec=spec, folder=folder, prepared=prepared):
                settings = replace(experiment.budget(size, seed, lr), steps=spec.get("steps", experiment.small.steps))
                return lever_run(arm, prepared, size, settings, folder, spec.get("body_scale", 1.0))
            for arm in ("mini-bert", "random"):
                rows += protocol({**label, "arm": arm}, SCALING_SIZES, spec["rates"], experiment.seeds,
                                 lambda size, seed, lr, arm=arm, runner=runner: runner(arm, size, seed, lr), f"{arm:9s} ")
        return rows
    make_sweep(RECIPES, preset, args, settings=recipes_settings(preset), inputs=scaling_identity(data, preset), sweep=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
