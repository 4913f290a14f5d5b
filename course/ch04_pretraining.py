# generated from chapters/04_pretraining.ipynb: edit the notebook, then run make export
"""04 · Pretraining a mini-BERT with masked language modelling (预训练 MLM)"""


import functools
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import models as tokenizer_models
from torch import nn
from transformers import BertForMaskedLM, PreTrainedTokenizerFast

from course.ch03_model_anatomy import Encoder
from utils import History, cache_root, digest, evaluating, get_or_build, made_from, seed_everything, train
from utils.data import load_corpus, load_sentiment
from utils.hardware import for_preset
from utils.models import bert_config


POSITIONS = ("learned", "sinusoidal")     # how the position vectors start (section 5)


@dataclass(frozen=True)
class PretrainSettings:
    model: str = "tiny"             # a model size of utils.models (chapter 03's bert_config)
    vocab_size: int = 8_000
    block_size: int = 64            # tokens per training example, [CLS] and [SEP] included
    batch_size: int = 64
    steps: int = 1_100
    lr: float = 1e-3
    warmup: float = 0.06
    mask_probability: float = 0.4   # the share of tokens hidden (BERT: 0.15)
    dropout: float = 0.0            # in the encoder while pretraining (BERT: 0.1)
    seed: int = 0
    in_domain: bool = True          # add the unlabelled sentiment *training* sentences to the corpus
    wikitext: bool = True           # False: the sentiment training sentences alone
    positions: str = "sinusoidal"   # the position vectors start as sine waves (BERT: "learned", from random)
    validation_blocks: int = 512    # of WikiText-2 validation, masked once, scored at each evaluation
    evaluations: int = 11

    def __post_init__(self):        # a recipe that cannot work fails here, before the tokenizer trains
        refuse_impossible(self)


def refuse_impossible(s: PretrainSettings) -> None:
    """A one-line error for a recipe that cannot work."""
    checks = [
        (0 < s.mask_probability < 1, "mask_probability is the share of tokens to hide: give a number between "
                                     f"0 and 1 (BERT: 0.15), got {s.mask_probability!r}"),
        (0 <= s.dropout < 1, f"dropout is a probability: give a number in [0, 1) (BERT: 0.1), got {s.dropout!r}"),
        (s.wikitext or s.in_domain, "the corpus would be empty: keep wikitext=True or in_domain=True"),
        (s.positions in POSITIONS, f"positions must be one of {POSITIONS}, got {s.positions!r}"),
        (s.vocab_size > 5 and s.steps >= 1 and s.block_size >= 3, "vocab_size must exceed the 5 special tokens, "
         f"steps be >= 1 and block_size >= 3 ([CLS] text [SEP]); got {s.vocab_size}, {s.steps}, {s.block_size}"),
    ]
    for ok, problem in checks:
        if not ok:
            raise ValueError(problem)


SETTINGS = {"cpu": PretrainSettings(),
            "gpu": PretrainSettings(model="small", block_size=128, batch_size=128, steps=20_000, lr=5e-4)}
BERT_STYLE = {"mask_probability": 0.15, "dropout": 0.1, "positions": "learned", "evaluations": 5}


def settings_for(preset: str | None = None, **overrides) -> PretrainSettings:
    """The pretraining recipe for the "cpu" or "gpu" preset (default: utils.preset()), with overrides."""
    return replace(for_preset(SETTINGS, preset), **overrides)


def bert_style(preset: str | None = None, **overrides) -> PretrainSettings:
    """The preset's recipe with BERT's own choices (15% hidden, dropout 0.1, learned positions; scored five
    times): the recipe chapter 05's benches start from."""
    return settings_for(preset, **{**BERT_STYLE, **overrides})


def corpus(settings: PretrainSettings) -> list[str]:
    """WikiText-2 train (unless wikitext=False), plus (in_domain) the sentiment training sentences without
    their labels."""
    lines = load_corpus("train") if settings.wikitext else []
    if settings.in_domain:
        lines = lines + list(load_sentiment()["train"]["text"])
    return lines


def spell(word: str) -> list[str]:
    """A word as WordPiece's starting pieces: its first character, then "##" + each following one."""
    return [word[0], *("##" + c for c in word[1:])]


def merge_pair(pieces: list[str], a: str, b: str) -> list[str]:
    """`pieces` with every neighbouring (a, b) joined into one piece ("##" dropped inside the join)."""
    out, i = [], 0
    while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == (a, b):
            out.append(a + b.removeprefix("##"))
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return out


def pair_scores(words: Counter, spelled: dict[str, list[str]]) -> dict[tuple[str, str], tuple[int, float]]:
    """Each neighbouring pair of pieces: (count(ab), WordPiece's score count(ab) / (count(a) · count(b)))."""
    pieces, pairs = Counter(), Counter()
    for word, n in words.items():
        parts = spelled[word]
        for part in parts:
            pieces[part] += n
        for pair in zip(parts, parts[1:]):
            pairs[pair] += n
    return {(a, b): (n, n / (pieces[a] * pieces[b])) for (a, b), n in pairs.items()}


def train_by_hand(words: Counter, merges: int, rule: str = "wordpiece") -> tuple[list, dict[str, list[str]]]:
    """`merges` times, join the best pair everywhere ("wordpiece": by score; "bpe": by count). Returns the
    merges in order and each word's pieces at the end."""
    spelled, done = {word: spell(word) for word in words}, []
    for _ in range(merges):
        scores = pair_scores(words, spelled)
        best = max(scores, key=lambda pair: (scores[pair][0 if rule == "bpe" else 1], pair))
        done.append(best)
        spelled = {word: merge_pair(parts, *best) for word, parts in spelled.items()}
    return done, spelled


def wordpiece_tokenize(word: str, vocabulary, unknown: str = "[UNK]") -> list[str]:
    """WordPiece's tokenizing rule: greedily the longest vocabulary piece, from the left; [UNK] if none fits."""
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start and (word[start:end] if start == 0 else "##" + word[start:end]) not in vocabulary:
            end -= 1
        if end == start:
            return [unknown]
        pieces.append(word[start:end] if start == 0 else "##" + word[start:end])
        start = end
    return pieces


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


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense -> GELU -> LayerNorm, then scores against the (tied) word embeddings."""

    def __init__(self, hidden: int, vocab: int, eps: float = 1e-12):
        super().__init__()
        self.dense, self.norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """hidden: (..., hidden) -> scores over the vocabulary (..., vocab)."""
        h = self.norm(nn.functional.gelu(self.dense(hidden)))
        return h @ word_embeddings.T + self.bias


class MaskedLM(nn.Module):
    """Chapter 03's Encoder with an MLM head; `config` is the transformers BertConfig of the same sizes."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = Encoder.from_config(config)
        self.head = MLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids)
        words = self.encoder.embeddings.token.weight
        if labels is None:
            return self.head(hidden, words)                         # (batch, length, vocab)
        keep = labels != -100
        logits = self.head(hidden[keep], words)                     # (masked positions, vocab) only
        return nn.functional.cross_entropy(logits.float(), labels[keep])


@torch.no_grad()
def init_like_bert(model: nn.Module, std: float = 0.02) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, std)
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
            module.bias.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
    return model


def mini_bert_config(settings: PretrainSettings, tokenizer):
    return bert_config(settings.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       max_position_embeddings=max(settings.block_size, bert_config(settings.model).max_position_embeddings),
                       hidden_dropout_prob=settings.dropout, attention_probs_dropout_prob=settings.dropout)


def bert_pairs(ours: MaskedLM, bert: BertForMaskedLM) -> list[tuple[nn.Module, nn.Module]]:
    """(our module, the BertForMaskedLM module with the same weights), for every module with weights."""
    mine, theirs = ours.encoder.embeddings, bert.bert.embeddings
    pairs = [(mine.token, theirs.word_embeddings), (mine.position, theirs.position_embeddings),
             (mine.token_type, theirs.token_type_embeddings), (mine.norm, theirs.LayerNorm)]
    for layer, bert_layer in zip(ours.encoder.layers, bert.bert.encoder.layer):
        attention = bert_layer.attention
        pairs += [(layer.attention.query, attention.self.query), (layer.attention.key, attention.self.key),
                  (layer.attention.value, attention.self.value), (layer.attention.output, attention.output.dense),
                  (layer.attention_norm, attention.output.LayerNorm), (layer.ffn_up, bert_layer.intermediate.dense),
                  (layer.ffn_down, bert_layer.output.dense), (layer.ffn_norm, bert_layer.output.LayerNorm)]
    transform = bert.cls.predictions.transform
    return pairs + [(ours.head.dense, transform.dense), (ours.head.norm, transform.LayerNorm)]


@torch.no_grad()
def copy_weights(ours: MaskedLM, bert: BertForMaskedLM, to_bert: bool = True) -> None:
    """Copy every weight between our model and a BertForMaskedLM of the same sizes (the decoder is tied to the
    word embeddings in both; its bias is the head's)."""
    for mine, theirs in bert_pairs(ours, bert):
        source, target = (mine, theirs) if to_bert else (theirs, mine)
        target.load_state_dict(source.state_dict())
    source, target = (ours.head.bias, bert.cls.predictions.bias) if to_bert else (bert.cls.predictions.bias, ours.head.bias)
    target.copy_(source)


def to_bert(ours: MaskedLM) -> BertForMaskedLM:
    """Our model's weights in a transformers BertForMaskedLM (eval mode): what later chapters load."""
    bert = BertForMaskedLM(ours.config).eval()
    copy_weights(ours, bert, to_bert=True)
    return bert


SINUSOID_SCALE = 0.2      # the waves' amplitude (the recipe search's one value, not tuned); word vectors start at ~0.02


def sinusoids(positions: int, width: int) -> torch.Tensor:
    """The Transformer's position table (Vaswani et al., 2017): sin and cos of position / 10000^(2i/width)."""
    position = torch.arange(positions).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2) * (-math.log(10_000.0) / width))
    table = torch.zeros(positions, width)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


def new_model(settings: PretrainSettings, tokenizer) -> MaskedLM:
    """A freshly initialised model of the recipe's size; positions="sinusoidal" starts the position table as waves."""
    model = init_like_bert(MaskedLM(mini_bert_config(settings, tokenizer)))
    if settings.positions == "sinusoidal":
        table = model.encoder.embeddings.position.weight
        with torch.no_grad():
            table.copy_(SINUSOID_SCALE * sinusoids(*table.shape))
    return model


def masked_batches(blocks: torch.Tensor, tokenizer, settings: PretrainSettings, generator: torch.Generator):
    """A DataLoader of freshly masked batches: each epoch masks each block anew (dynamic masking)."""
    specials = special_mask(blocks, tokenizer)

    def collate(indices):
        index = torch.tensor(indices)
        inputs, labels = mask_with(tokenizer, blocks[index], specials[index], settings.mask_probability)
        return {"input_ids": inputs, "labels": labels}
    return torch.utils.data.DataLoader(range(len(blocks)), batch_size=settings.batch_size, shuffle=True,
                                       drop_last=True, collate_fn=collate, generator=generator)


EVAL_MASK_PROBABILITY = 0.15     # every evaluation hides BERT's 15%, whatever share the recipe trains with


def fixed_masked_set(lines: list[str], tokenizer, settings: PretrainSettings, seed: int):
    """Blocks masked once with a fixed seed (15% of the tokens), so every evaluation scores the same positions."""
    blocks = pack_blocks(lines, tokenizer, settings.block_size)
    return mask_with(tokenizer, blocks, special_mask(blocks, tokenizer), EVAL_MASK_PROBABILITY,
                     generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def masked_lm_scores(model: MaskedLM, inputs: torch.Tensor, labels: torch.Tensor, mask_id: int | None = None,
                     batch_size: int = 128) -> dict[str, float]:
    """Mean loss, accuracy and perplexity over the masked positions of a fixed set; with `mask_id`, also the
    accuracy where the input is [MASK]."""
    device = next(model.parameters()).device
    loss, correct, count, at_mask, masks = 0.0, 0, 0, 0, 0
    with evaluating(model):
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
            keep = y != -100
            logits = model.head(model.encoder(x)[keep], model.encoder.embeddings.token.weight).float()
            loss += nn.functional.cross_entropy(logits, y[keep], reduction="sum").item()
            right = logits.argmax(-1) == y[keep]
            correct, count = correct + right.sum().item(), count + keep.sum().item()
            hidden = x[keep] == (-1 if mask_id is None else mask_id)               # where the input is [MASK]
            at_mask, masks = at_mask + right[hidden].sum().item(), masks + hidden.sum().item()
    scores = {"loss": loss / count, "accuracy": correct / count, "perplexity": math.exp(loss / count)}
    return {**scores, "accuracy at [MASK]": at_mask / masks} if masks else scores


def inputs_identity(text: list[str], validation_lines: list[str], tokenizer) -> dict[str, str]:
    """What a run is made from besides its settings: the text it trains and validates on, the vocabulary."""
    return made_from(training_text=text, validation_text=validation_lines,
                     vocabulary=sorted(tokenizer.get_vocab().items()))


def training_folder(settings: PretrainSettings, inputs: dict[str, str]) -> Path:
    """Where `pretrain` keeps its training checkpoints: one folder per recipe and inputs, in the artifact cache."""
    return cache_root() / "training" / f"mlm-{settings.model}-{digest((settings, inputs))[:10]}"


def pretrain(settings: PretrainSettings, tokenizer=None, *, callbacks=(), **train_options: Any) -> dict[str, Any]:
    """Returns {"model" (MaskedLM), "tokenizer", "history", "validation" (inputs, labels), "blocks"}.
    `train_options` go to utils.train (progress, live_plot, device, checkpoint_dir=None to turn checkpoints off)."""
    text, validation_lines = corpus(settings), load_corpus("validation")
    tokenizer = tokenizer or train_wordpiece(text, vocab_size=settings.vocab_size, max_length=settings.block_size)
    inputs = inputs_identity(text, validation_lines, tokenizer)
    train_options.setdefault("checkpoint_dir", training_folder(settings, inputs))
    generator = seed_everything(settings.seed)
    blocks = pack_blocks(text, tokenizer, settings.block_size)
    validation = [part[:settings.validation_blocks] for part in
                  fixed_masked_set(validation_lines, tokenizer, settings, seed=settings.seed + 1)]
    model = new_model(settings, tokenizer)
    scores = lambda m: {f"validation {k}": v for k, v in masked_lm_scores(m, *validation, tokenizer.mask_token_id).items()}
    history = train(model, masked_batches(blocks, tokenizer, settings, generator), steps=settings.steps, lr=settings.lr,
                    warmup=settings.warmup, schedule="linear", metrics=scores, monitor="validation loss",
                    eval_every=max(1, settings.steps // settings.evaluations), callbacks=callbacks, inputs=inputs,
                    **{"desc": "MLM pretraining", **train_options})
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
    """Write the model as a BertForMaskedLM (safetensors), the tokenizer and the recipe into `folder`."""
    to_bert(result["model"]).save_pretrained(folder)
    result["tokenizer"].save_pretrained(folder)
    history: History = result["history"]
    (folder / "pretraining.json").write_text(json.dumps(
        {"settings": asdict(settings), "steps_done": history.steps_done,
         "final validation": {k: v for k, v in history.eval[-1].items() if k != "step"}}, indent=1))


def mini_bert_identity(settings: PretrainSettings | None = None) -> dict[str, str]:
    """What the pretrained mini-BERT is made from: this recipe and the text it reads (its tokenizer is trained
    from that text). A later chapter's result built on it names it by this, never by its trained weights."""
    settings = settings or settings_for()
    return made_from("mini-BERT pretrained with MLM (chapter 04)", settings, **text_identity(settings))


def pretrained_mini_bert(settings: PretrainSettings | None = None, *, rebuild: bool = False,
                         **train_options: Any) -> Path:
    """The folder of this chapter's pretrained mini-BERT (model + tokenizer), trained now if not cached."""
    settings = settings or settings_for()

    def build(folder: Path) -> None:
        save_pretrained_mlm(pretrain(settings, **{"progress": True, **train_options}), folder, settings)
    return get_or_build(artifact_name(settings), build, version=mini_bert_identity(settings), rebuild=rebuild)


def store_mini_bert(result: dict[str, Any], settings: PretrainSettings) -> Path:
    """Store a `pretrain(settings)` result as the cached mini-BERT: `pretrained_mini_bert(settings)` returns it."""
    return get_or_build(artifact_name(settings), lambda folder: save_pretrained_mlm(result, folder, settings),
                        version=mini_bert_identity(settings), rebuild=True)


def artifact_name(settings: PretrainSettings) -> str:
    """A preset's recipe (at any number of steps) is "mini-bert-mlm-<model>-<steps>"; another recipe adds a
    digest of its settings, so that trying one never replaces the chapter's cached model."""
    name = f"mini-bert-mlm-{settings.model}-{settings.steps}"
    if any(replace(settings, steps=preset.steps) == preset for preset in SETTINGS.values()):
        return name
    return f"{name}-{digest(settings)[:8]}"


def text_identity(settings: PretrainSettings) -> dict[str, str]:
    """The digests of the text a recipe reads (remembered per process until FROM_ZERO_CORPUS or
    FROM_ZERO_SENTIMENT changes): switching either rebuilds the artifact with a warning."""
    def stamp(env: str) -> tuple:
        path = Path(os.environ.get(env, "offline")).expanduser()
        return (str(path), path.stat().st_mtime_ns if path.exists() else None)
    return dict(_text_identity(settings, stamp("FROM_ZERO_CORPUS"), stamp("FROM_ZERO_SENTIMENT")))


@functools.lru_cache(maxsize=8)
def _text_identity(settings: PretrainSettings, *sources: tuple) -> tuple:
    return tuple(made_from(training_text=corpus(settings), validation_text=load_corpus("validation")).items())


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'POSITIONS', 'PretrainSettings', 'refuse_impossible', 'SETTINGS', 'BERT_STYLE', 'settings_for', 'bert_style',
    'corpus', 'spell', 'merge_pair', 'pair_scores', 'train_by_hand', 'wordpiece_tokenize', 'SPECIAL_TOKENS',
    'CONTINUATION', 'continuation_bpe', 'readable', 'train_wordpiece', 'mask_tokens', 'special_mask', 'mask_with',
    'pack_blocks', 'MLMHead', 'MaskedLM', 'init_like_bert', 'mini_bert_config', 'bert_pairs', 'copy_weights',
    'to_bert', 'SINUSOID_SCALE', 'sinusoids', 'new_model', 'masked_batches', 'EVAL_MASK_PROBABILITY',
    'fixed_masked_set', 'masked_lm_scores', 'inputs_identity', 'training_folder', 'pretrain', 'unigram_baseline',
    'save_pretrained_mlm', 'mini_bert_identity', 'pretrained_mini_bert', 'store_mini_bert', 'artifact_name',
    'text_identity',
]
