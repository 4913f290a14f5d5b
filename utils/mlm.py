"""Masked language modelling: chapter 04's pretraining, and the artifact later chapters build on demand.

  mask_tokens(ids, ...)        BERT's 15% masking with the 80/10/10 rule, written out
  pack_blocks(lines, ...)      tokenize and pack text into fixed-length blocks ([CLS] … [SEP])
  MaskedOnlyMLM(model)         BertForMaskedLM whose output layer runs only at the masked positions
  masked_lm_scores(...)        loss, masked-token accuracy and perplexity on a fixed, pre-masked set
  pretrain(settings)           the whole chapter 04 recipe: tokenizer, blocks, model, training
  pretrained_mini_bert()       the saved result (save_pretrained folder), built on demand and cached

The notebook and `pretrained_mini_bert()` call the same `pretrain`, so a chapter opened first gets
exactly the model chapter 04 trains.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .artifacts import cache_root, get_or_build
from .data import load_corpus, load_sentiment, train_wordpiece
from .hardware import preset as device_preset
from .loop import History, train
from .models import bert_config
from .seeding import seed_everything


@dataclass(frozen=True)
class PretrainSettings:
    model: str = "tiny"             # a utils.models preset
    vocab_size: int = 8_000
    block_size: int = 64            # tokens per training example, [CLS] and [SEP] included
    batch_size: int = 64
    steps: int = 1_100
    lr: float = 1e-3
    warmup: float = 0.06
    mask_probability: float = 0.15
    seed: int = 0
    in_domain: bool = True          # add the unlabelled sentiment *training* sentences to the corpus
    validation_blocks: int = 512    # of WikiText-2 validation, masked once, scored at each evaluation
    evaluations: int = 5


SETTINGS = {"cpu": PretrainSettings(),
            "gpu": PretrainSettings(model="small", block_size=128, batch_size=128, steps=20_000, lr=5e-4)}


def settings_for(preset: str | None = None, **overrides) -> PretrainSettings:
    """The pretraining recipe for the "cpu" or "gpu" preset (default: utils.preset()), with overrides."""
    preset = preset or device_preset()
    if preset not in SETTINGS:
        raise ValueError(f"unknown preset {preset!r}; choose 'cpu' or 'gpu'")
    return replace(SETTINGS[preset], **overrides)


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, vocab_size: int, mask_id: int,
                probability: float = 0.15, first_normal_id: int = 0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking. Choose `probability` of the tokens (never special ones or padding); of those,
    80% become [MASK], 10% a random token, 10% stay as they are. Returns (inputs, labels), with
    labels = -100 (ignored by the loss) everywhere except the chosen positions."""
    def coin(p):
        return torch.rand(input_ids.shape, generator=generator) < p
    chosen = coin(probability) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    to_mask = chosen & coin(0.8)
    to_random = chosen & ~to_mask & coin(0.5)                   # half of the remaining 20%
    inputs = input_ids.masked_fill(to_mask, mask_id)
    random_tokens = torch.randint(first_normal_id, vocab_size, input_ids.shape, generator=generator)
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


def pack_blocks(lines: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """Tokenize every line, join them with [SEP], and cut the stream into [CLS] + (block_size − 2) + [SEP]
    blocks, so that no position is wasted on padding. The incomplete last block is dropped."""
    ids = tokenizer(lines, add_special_tokens=False, verbose=False)["input_ids"]   # long lines are fine here
    stream = [token for line in ids for token in (*line, tokenizer.sep_token_id)]
    body = block_size - 2
    n_blocks = len(stream) // body
    if n_blocks == 0:
        raise ValueError(f"{len(stream)} tokens are not enough for one block of {block_size}")
    blocks = torch.tensor(stream[: n_blocks * body]).view(n_blocks, body)
    cls = torch.full((n_blocks, 1), tokenizer.cls_token_id)
    sep = torch.full((n_blocks, 1), tokenizer.sep_token_id)
    return torch.cat([cls, blocks, sep], dim=1)


def special_mask(blocks: torch.Tensor, tokenizer) -> torch.Tensor:
    return torch.isin(blocks, torch.tensor(tokenizer.all_special_ids))


class MaskedOnlyMLM(nn.Module):
    """A BertForMaskedLM whose vocabulary-sized output layer runs only where labels != -100.

    Only ~15% of positions are masked, and the output layer (hidden × vocabulary) is the most
    expensive part of a small model, so skipping the other 85% saves most of the compute.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None):
        hidden = self.model.bert(input_ids, attention_mask=attention_mask).last_hidden_state
        keep = labels != -100
        logits = self.model.cls(hidden[keep])                       # (masked positions, vocabulary)
        return nn.functional.cross_entropy(logits.float(), labels[keep])


@torch.no_grad()
def masked_lm_scores(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> dict[str, float]:
    """Mean loss, masked-token accuracy and perplexity (e^loss) over the masked positions of a fixed set."""
    base = model.model if isinstance(model, MaskedOnlyMLM) else model
    was_training = base.training
    base.eval()
    device = next(base.parameters()).device
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
        keep = y != -100
        logits = base.cls(base.bert(x).last_hidden_state[keep]).float()
        total_loss += nn.functional.cross_entropy(logits, y[keep], reduction="sum").item()
        correct += (logits.argmax(-1) == y[keep]).sum().item()
        count += keep.sum().item()
    base.train(was_training)
    loss = total_loss / count
    return {"loss": loss, "accuracy": correct / count, "perplexity": math.exp(loss)}


def unigram_baseline(train_blocks: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                     special_ids=()) -> dict[str, float]:
    """A model that ignores context: predicts each token's training frequency. Its accuracy is that of
    always guessing the most frequent token; its perplexity is e^(cross-entropy of the frequencies).
    Special tokens ([CLS], [SEP], …) are never masked, so they are left out of the counts."""
    counts = torch.bincount(train_blocks.flatten(), minlength=vocab_size).double() + 1     # add-one smoothing
    counts[list(special_ids)] = 0
    log_p = (counts / counts.sum()).log()
    targets = labels[labels != -100]
    return {"accuracy": (targets == counts.argmax()).double().mean().item(),
            "perplexity": math.exp(-log_p[targets].mean().item())}


def corpus(settings: PretrainSettings) -> list[str]:
    """WikiText-2 train, plus (in_domain) the sentiment training sentences without their labels."""
    lines = load_corpus("train")
    if settings.in_domain:
        lines = lines + list(load_sentiment()["train"]["text"])
    return lines


def mask_with(tokenizer, blocks: torch.Tensor, specials: torch.Tensor, probability: float,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`mask_tokens` with the vocabulary, [MASK] id and special-token range of one of our tokenizers
    (`train_wordpiece` numbers the special tokens first, so random replacements start after them)."""
    return mask_tokens(blocks, specials, len(tokenizer), tokenizer.mask_token_id, probability,
                       first_normal_id=len(tokenizer.all_special_ids), generator=generator)


def masked_batches(blocks: torch.Tensor, tokenizer, settings: PretrainSettings, generator: torch.Generator):
    """A DataLoader of freshly masked batches: each epoch masks each block anew (dynamic masking)."""
    specials = special_mask(blocks, tokenizer)

    def collate(indices):
        index = torch.tensor(indices)
        inputs, labels = mask_with(tokenizer, blocks[index], specials[index], settings.mask_probability)
        return {"input_ids": inputs, "labels": labels}
    return torch.utils.data.DataLoader(range(len(blocks)), batch_size=settings.batch_size, shuffle=True,
                                       drop_last=True, collate_fn=collate, generator=generator)


def fixed_masked_set(lines: list[str], tokenizer, settings: PretrainSettings, seed: int):
    """Blocks masked once with a fixed seed, so every evaluation scores exactly the same positions."""
    blocks = pack_blocks(lines, tokenizer, settings.block_size)
    return mask_with(tokenizer, blocks, special_mask(blocks, tokenizer), settings.mask_probability,
                     generator=torch.Generator().manual_seed(seed))


def new_model(settings: PretrainSettings, tokenizer):
    from transformers import BertForMaskedLM
    config = bert_config(settings.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=max(settings.block_size, bert_config(settings.model).max_position_embeddings))
    return BertForMaskedLM(config)


def training_folder(settings: PretrainSettings) -> Path:
    """Where `pretrain` keeps its training checkpoints: one folder per recipe, under the artifact cache."""
    import hashlib
    digest = hashlib.sha256(repr(sorted(asdict(settings).items())).encode()).hexdigest()[:10]
    return cache_root() / "training" / f"mlm-{settings.model}-{digest}"


def pretrain(settings: PretrainSettings, tokenizer=None, *, callbacks=(), **train_options: Any) -> dict[str, Any]:
    """Chapter 04 from start to end: tokenizer (unless given), blocks, a fresh mini-BERT, MLM training.

    Returns {"model" (BertForMaskedLM), "tokenizer", "history", "validation" (inputs, labels)}.
    `train_options` go to utils.train (progress, live_plot, device, …); the recipe is in `settings`.
    Checkpoints go to `training_folder(settings)` (pass checkpoint_dir=None to turn them off): an
    interrupted run continues where it stopped, a finished one is restored instead of trained again.
    """
    train_options.setdefault("checkpoint_dir", training_folder(settings))
    text = corpus(settings)
    if tokenizer is None:
        tokenizer = train_wordpiece(text, vocab_size=settings.vocab_size, max_length=settings.block_size)
    generator = seed_everything(settings.seed)
    blocks = pack_blocks(text, tokenizer, settings.block_size)
    validation = [part[:settings.validation_blocks] for part in
                  fixed_masked_set(load_corpus("validation"), tokenizer, settings, seed=settings.seed + 1)]
    model = new_model(settings, tokenizer)
    history = train(MaskedOnlyMLM(model), masked_batches(blocks, tokenizer, settings, generator),
                    steps=settings.steps, lr=settings.lr, warmup=settings.warmup, schedule="linear",
                    metrics=lambda m: {f"validation {k}": v for k, v in masked_lm_scores(m, *validation).items()},
                    monitor="validation loss", eval_every=max(1, settings.steps // settings.evaluations),
                    callbacks=callbacks, **{"desc": "MLM pretraining", **train_options})
    return {"model": model, "tokenizer": tokenizer, "history": history, "validation": validation, "blocks": blocks}


def save_pretrained_mlm(result: dict[str, Any], folder: Path, settings: PretrainSettings) -> None:
    """Write the model (safetensors), the tokenizer and the recipe into `folder`."""
    import json
    result["model"].save_pretrained(folder)
    result["tokenizer"].save_pretrained(folder)
    history: History = result["history"]
    (folder / "pretraining.json").write_text(json.dumps(
        {"settings": asdict(settings), "steps_done": history.steps_done,
         "final validation": {k: v for k, v in history.eval[-1].items() if k != "step"}}, indent=1))


def artifact_name(settings: PretrainSettings) -> str:
    return f"mini-bert-mlm-{settings.model}-{settings.steps}"


def pretrained_mini_bert(settings: PretrainSettings | None = None, *, rebuild: bool = False,
                         result: dict[str, Any] | None = None, **train_options: Any) -> Path:
    """The folder of chapter 04's pretrained mini-BERT (model + tokenizer), trained now if not cached.

    result: a `pretrain` result to store as the artifact instead of training again (chapter 04 does this).
    """
    settings = settings or settings_for()

    def build(folder: Path) -> None:
        trained = result if result is not None else pretrain(settings, **{"progress": True, **train_options})
        save_pretrained_mlm(trained, folder, settings)
    version = "1:" + ",".join(f"{k}={v}" for k, v in asdict(settings).items())
    return get_or_build(artifact_name(settings), build, version=version, rebuild=rebuild or result is not None)
