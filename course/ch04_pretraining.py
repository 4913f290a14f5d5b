# generated from chapters/04_pretraining.ipynb: edit the notebook, then run make export
"""04 · Pretraining a mini-BERT with masked language modelling (预训练 MLM)"""


import functools
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import models as tokenizer_models
from torch import nn
from transformers import BertForMaskedLM, PreTrainedTokenizerFast

from utils import History, cache_root, digest, evaluating, get_or_build, made_from, seed_everything, train
from utils.data import load_corpus, load_sentiment
from utils.hardware import for_preset
from utils.models import bert_config


POSITIONS = ("learned", "sinusoidal")     # how the position vectors start (see section 5)


@dataclass(frozen=True)
class PretrainSettings:
    model: str = "tiny"             # a model size of utils.models (chapter 03's bert_config)
    vocab_size: int = 8_000
    block_size: int = 64            # tokens per training example, [CLS] and [SEP] included
    batch_size: int = 64
    steps: int = 1_100
    lr: float = 1e-3
    warmup: float = 0.06
    mask_probability: float = 0.15
    dropout: float = 0.1            # in the encoder while pretraining (BERT: 0.1); 0 makes one process = N
    seed: int = 0
    in_domain: bool = True          # add the unlabelled sentiment *training* sentences to the corpus
    wikitext: bool = True           # False: the sentiment training sentences alone (task-adaptive pretraining)
    positions: str = "learned"      # "sinusoidal": the position vectors start as sine waves (and are trained)
    validation_blocks: int = 512    # of WikiText-2 validation, masked once, scored at each evaluation
    evaluations: int = 5

    def __post_init__(self):        # a wrong recipe fails here, not after the tokenizer has trained
        if not 0 < self.mask_probability < 1:
            raise ValueError(f"mask_probability is the share of tokens to mask: give a number between 0 and 1 "
                             f"(BERT: 0.15), got {self.mask_probability!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout is a probability: give a number in [0, 1) (BERT: 0.1), got {self.dropout!r}")
        if not (self.wikitext or self.in_domain):
            raise ValueError("the corpus would be empty: keep wikitext=True or in_domain=True")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.vocab_size <= 5 or self.steps < 1 or self.block_size < 3:
            raise ValueError(f"vocab_size must exceed the 5 special tokens, steps be >= 1 and block_size >= 3 "
                             f"([CLS] text [SEP]); got {self.vocab_size}, {self.steps}, {self.block_size}")


SETTINGS = {"cpu": PretrainSettings(),
            "gpu": PretrainSettings(model="small", block_size=128, batch_size=128, steps=20_000, lr=5e-4)}


def settings_for(preset: str | None = None, **overrides) -> PretrainSettings:
    """The pretraining recipe for the "cpu" or "gpu" preset (default: utils.preset()), with overrides."""
    return replace(for_preset(SETTINGS, preset), **overrides)


def corpus(settings: PretrainSettings) -> list[str]:
    """WikiText-2 train (unless wikitext=False), plus (in_domain) the sentiment training sentences without
    their labels."""
    lines = load_corpus("train") if settings.wikitext else []
    if settings.in_domain:
        lines = lines + list(load_sentiment()["train"]["text"])
    return lines


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = 0xF0000      # a private-use plane: "##c" is trained as the single character chr(CONTINUATION + ord(c))


def continuation_bpe(lines: list[str], vocab_size: int, min_frequency: int, normalizer, splitter) -> Tokenizer:
    """BPE trained on the words of `lines`, each non-initial character spelled as a continuation character."""
    words = [[w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line))] for line in lines]
    characters = {c for line in words for w in line for c in w}
    usable = {c for c in characters if ord(c) < 0xFFFE}                  # the rare others stay unknown
    table = {ord(c): CONTINUATION + ord(c) for c in usable}
    spelled = [" ".join(w[0] + w[1:].translate(table) for w in line if set(w) <= usable) for line in words]
    bpe = Tokenizer(tokenizer_models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.train_from_iterator(spelled, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False))
    return bpe


def readable(token: str) -> str:
    """A BPE token in WordPiece spelling: continuation characters back to plain ones, behind "##"."""
    if token in SPECIAL_TOKENS:
        return token
    plain = "".join(chr(ord(c) - CONTINUATION) if ord(c) >= CONTINUATION else c for c in token)
    return "##" + plain if ord(token[0]) >= CONTINUATION else plain


def train_wordpiece(lines: list[str], vocab_size: int = 8_000, min_frequency: int = 2, max_length: int = 128):
    """A lowercasing WordPiece tokenizer trained on `lines`, as a transformers fast tokenizer. Deterministic:
    the vocabulary comes from `continuation_bpe`, and ids are numbered canonically (specials, then sorted)."""
    if not any(isinstance(line, str) and line.strip() for line in lines):
        raise ValueError("train_wordpiece needs text to learn from: give a list of non-empty lines (got none)")
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    bpe = continuation_bpe(lines, vocab_size, min_frequency, normalizer, splitter)
    learned = sorted({readable(t) for t in bpe.get_vocab()} - set(SPECIAL_TOKENS))
    vocabulary = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *learned])}
    tokenizer = Tokenizer(tokenizer_models.WordPiece(vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, splitter
    tokenizer.decoder = decoders.WordPiece()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, vocab_size: int, mask_id: int,
                probability: float = 0.15, first_normal_id: int = 0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking. Choose `probability` of the tokens (never special ones or padding); of those,
    80% become [MASK], 10% a random token, 10% stay as they are. Returns (inputs, labels), with
    labels = -100 (ignored by the loss) everywhere except the chosen positions."""
    if not 0 <= probability <= 1:
        raise ValueError(f"probability is the share of tokens to choose: give a number between 0 and 1 "
                         f"(BERT: 0.15), got {probability!r}")

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


def special_mask(blocks: torch.Tensor, tokenizer) -> torch.Tensor:
    return torch.isin(blocks, torch.tensor(tokenizer.all_special_ids))


def mask_with(tokenizer, blocks: torch.Tensor, specials: torch.Tensor, probability: float,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return mask_tokens(blocks, specials, len(tokenizer), tokenizer.mask_token_id, probability,
                       first_normal_id=len(tokenizer.all_special_ids), generator=generator)


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


class MaskedOnlyMLM(nn.Module):
    """A BertForMaskedLM whose vocabulary-sized output layer runs only where labels != -100."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None):
        hidden = self.model.bert(input_ids, attention_mask=attention_mask).last_hidden_state
        keep = labels != -100
        logits = self.model.cls(hidden[keep])                       # (masked positions, vocabulary)
        return nn.functional.cross_entropy(logits.float(), labels[keep])


def new_model(settings: PretrainSettings, tokenizer) -> BertForMaskedLM:
    config = bert_config(settings.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=max(settings.block_size, bert_config(settings.model).max_position_embeddings),
                         hidden_dropout_prob=settings.dropout, attention_probs_dropout_prob=settings.dropout)
    model = BertForMaskedLM(config)
    if settings.positions == "sinusoidal":
        table = model.bert.embeddings.position_embeddings.weight
        with torch.no_grad():
            table.copy_(SINUSOID_SCALE * sinusoids(*table.shape))
    return model


SINUSOID_SCALE = 0.2      # the waves' amplitude; the word vectors start at about 0.02


def sinusoids(positions: int, width: int) -> torch.Tensor:
    """The Transformer's position table (Vaswani et al., 2017): sin and cos of position / 10000^(2i/width)."""
    position = torch.arange(positions).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2) * (-math.log(10_000.0) / width))
    table = torch.zeros(positions, width)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


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


@torch.no_grad()
def masked_lm_scores(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> dict[str, float]:
    """Mean loss, masked-token accuracy and perplexity (e^loss) over the masked positions of a fixed set."""
    base = model.model if isinstance(model, MaskedOnlyMLM) else model
    device = next(base.parameters()).device
    total_loss, correct, count = 0.0, 0, 0
    with evaluating(base):
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
            keep = y != -100
            logits = base.cls(base.bert(x).last_hidden_state[keep]).float()
            total_loss += nn.functional.cross_entropy(logits, y[keep], reduction="sum").item()
            correct += (logits.argmax(-1) == y[keep]).sum().item()
            count += keep.sum().item()
    loss = total_loss / count
    return {"loss": loss, "accuracy": correct / count, "perplexity": math.exp(loss)}


def inputs_identity(text: list[str], validation_lines: list[str], tokenizer) -> dict[str, str]:
    """What a run is made from besides its settings: the text it trains and validates on, the vocabulary.
    Checkpoints are keyed on it, so another corpus (FROM_ZERO_CORPUS) never resumes this one's weights."""
    return made_from(training_text=text, validation_text=validation_lines,
                     vocabulary=sorted(tokenizer.get_vocab().items()))


def training_folder(settings: PretrainSettings, inputs: dict[str, str]) -> Path:
    """Where `pretrain` keeps its training checkpoints: one folder per recipe and inputs, in the artifact cache."""
    return cache_root() / "training" / f"mlm-{settings.model}-{digest((settings, inputs))[:10]}"


def pretrain(settings: PretrainSettings, tokenizer=None, *, callbacks=(), **train_options: Any) -> dict[str, Any]:
    """Returns {"model" (BertForMaskedLM), "tokenizer", "history", "validation" (inputs, labels), "blocks"}.
    `train_options` go to utils.train (progress, live_plot, device, checkpoint_dir=None to turn checkpoints off)."""
    text, validation_lines = corpus(settings), load_corpus("validation")
    if tokenizer is None:
        tokenizer = train_wordpiece(text, vocab_size=settings.vocab_size, max_length=settings.block_size)
    inputs = inputs_identity(text, validation_lines, tokenizer)
    train_options.setdefault("checkpoint_dir", training_folder(settings, inputs))
    generator = seed_everything(settings.seed)
    blocks = pack_blocks(text, tokenizer, settings.block_size)
    validation = [part[:settings.validation_blocks] for part in
                  fixed_masked_set(validation_lines, tokenizer, settings, seed=settings.seed + 1)]
    model = new_model(settings, tokenizer)
    history = train(MaskedOnlyMLM(model), masked_batches(blocks, tokenizer, settings, generator),
                    steps=settings.steps, lr=settings.lr, warmup=settings.warmup, schedule="linear",
                    metrics=lambda m: {f"validation {k}": v for k, v in masked_lm_scores(m, *validation).items()},
                    monitor="validation loss", eval_every=max(1, settings.steps // settings.evaluations),
                    callbacks=callbacks, inputs=inputs, **{"desc": "MLM pretraining", **train_options})
    return {"model": model, "tokenizer": tokenizer, "history": history, "validation": validation, "blocks": blocks}


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


def save_pretrained_mlm(result: dict[str, Any], folder: Path, settings: PretrainSettings) -> None:
    """Write the model (safetensors), the tokenizer and the recipe into `folder`."""
    result["model"].save_pretrained(folder)
    result["tokenizer"].save_pretrained(folder)
    history: History = result["history"]
    (folder / "pretraining.json").write_text(json.dumps(
        {"settings": asdict(settings), "steps_done": history.steps_done,
         "final validation": {k: v for k, v in history.eval[-1].items() if k != "step"}}, indent=1))


def pretrained_mini_bert(settings: PretrainSettings | None = None, *, rebuild: bool = False,
                         **train_options: Any) -> Path:
    """The folder of this chapter's pretrained mini-BERT (model + tokenizer), trained now if not cached."""
    settings = settings or settings_for()

    def build(folder: Path) -> None:
        save_pretrained_mlm(pretrain(settings, **{"progress": True, **train_options}), folder, settings)
    return get_or_build(artifact_name(settings), build, version=mini_bert_identity(settings), rebuild=rebuild)


def store_mini_bert(result: dict[str, Any], settings: PretrainSettings) -> Path:
    """Store a `pretrain(settings)` result as the cached mini-BERT (this chapter stores its own run):
    `pretrained_mini_bert(settings)` returns it from then on."""
    return get_or_build(artifact_name(settings), lambda folder: save_pretrained_mlm(result, folder, settings),
                        version=mini_bert_identity(settings), rebuild=True)


def mini_bert_identity(settings: PretrainSettings | None = None) -> dict[str, str]:
    """What the pretrained mini-BERT is made from: this recipe and the text it reads (its tokenizer is trained
    from that text). A later chapter's result built on it names it by this, never by its trained weights."""
    settings = settings or settings_for()
    return made_from("mini-BERT pretrained with MLM (chapter 04)", settings, **text_identity(settings))


def artifact_name(settings: PretrainSettings) -> str:
    """A preset's recipe (at any number of steps) is "mini-bert-mlm-<model>-<steps>"; another recipe adds a
    digest of its settings, so that trying one never replaces the chapter's cached model."""
    name = f"mini-bert-mlm-{settings.model}-{settings.steps}"
    if any(replace(settings, steps=preset.steps) == preset for preset in SETTINGS.values()):
        return name
    return f"{name}-{digest(settings)[:8]}"


def text_identity(settings: PretrainSettings) -> dict[str, str]:
    """The digests of the text a recipe reads (with its tokenizer, trained from that text): the artifact
    is keyed on them, so switching FROM_ZERO_CORPUS or FROM_ZERO_SENTIMENT rebuilds it with a warning.
    Remembered per process (chapter 05 asks for the artifact once per run) until a source changes."""
    def stamp(env: str) -> tuple:
        path = Path(os.environ.get(env, "offline")).expanduser()
        return (str(path), path.stat().st_mtime_ns if path.exists() else None)
    return dict(_text_identity(settings, stamp("FROM_ZERO_CORPUS"), stamp("FROM_ZERO_SENTIMENT")))


@functools.lru_cache(maxsize=8)
def _text_identity(settings: PretrainSettings, *sources: tuple) -> tuple:
    return tuple(made_from(training_text=corpus(settings), validation_text=load_corpus("validation")).items())


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'POSITIONS', 'PretrainSettings', 'SETTINGS', 'settings_for', 'corpus', 'SPECIAL_TOKENS', 'CONTINUATION',
    'continuation_bpe', 'readable', 'train_wordpiece', 'mask_tokens', 'special_mask', 'mask_with', 'pack_blocks',
    'MaskedOnlyMLM', 'new_model', 'SINUSOID_SCALE', 'sinusoids', 'masked_batches', 'fixed_masked_set',
    'masked_lm_scores', 'inputs_identity', 'training_folder', 'pretrain', 'unigram_baseline', 'save_pretrained_mlm',
    'pretrained_mini_bert', 'store_mini_bert', 'mini_bert_identity', 'artifact_name', 'text_identity',
]
