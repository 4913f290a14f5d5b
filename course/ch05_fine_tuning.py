# generated from chapters/05_fine_tuning.ipynb: edit the notebook, then run make export
"""05 · Fine-tuning, and what pretraining buys (微调)"""


import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel, DataCollatorWithPadding
from transformers.modeling_outputs import SequenceClassifierOutput

from utils import CheckpointError, History, add_to_class, evaluating, get_or_build, load_module, save_module
from utils import made_from, pick_device, seed_everything, train
from course.ch04_pretraining import pretrained_mini_bert
from utils.data import load_behaviour_set, load_sentiment, sentiment_rows
from utils.hardware import for_preset
from utils.models import load_pretrained, load_pretrained_tokenizer, model_identity, quiet_transformers
from utils.sweeps import result_row


MAX_LENGTH = 64      # tokens a sentence is cut to (the set's sentences are short: almost all fit)


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 200                # optimizer steps, the same for every arm and every labelled size
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.1             # fraction of the steps, then linear decay to 0
    weight_decay: float = 0.01      # AdamW; never on biases and LayerNorm weights
    evaluations: int = 4            # validation accuracy this many times per run; the best weights are kept
    patience: int | None = None     # stop after this many evaluations without improvement
    max_length: int = MAX_LENGTH
    pooling: str = "mean"
    dropout: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class ExperimentSettings:
    """Chapter 05's experiment for one preset. Every arm gets the same optimizer steps at each size:
    `small` (steps, batch) below the full training set, `full` with all of it (the teacher's recipe).
    Learning rates are chosen on validation accuracy (seed 0) by `utils.sweeps.bracketed_rate`: every rate of
    the arm's grid, and one step further while the best is at an edge, so the rate kept lies inside the rates
    tried. At every size for the mini-BERTs (cheap), once at `minilm_sweep_size` for MiniLM."""
    sizes: tuple[int | None, ...] = (100, 300, 1000, None)       # None: all the training sentences
    seeds: tuple[int, ...] = (0, 1, 2)
    minilm_seeds: tuple[int, ...] = (0,)                          # MiniLM costs ~12× a mini-BERT step on a CPU
    small: FinetuneSettings = FinetuneSettings(steps=80, batch_size=16, evaluations=1)
    full: FinetuneSettings = FinetuneSettings(steps=200, batch_size=32, evaluations=4, patience=2)
    minilm_sweep_size: int = 1000
    learning_rates: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("random", (3e-4, 1e-3, 3e-3)), ("mini-bert", (3e-4, 1e-3, 3e-3)), ("MiniLM", (1e-4, 2e-4, 4e-4)))

    def budget(self, size: int | None, seed: int, lr: float) -> FinetuneSettings:
        """The same for every arm at a size: that is what makes the comparison fair."""
        return replace(self.full if size is None else self.small, lr=lr, seed=seed)

    def seeds_for(self, arm: str) -> tuple[int, ...]:
        return self.minilm_seeds if arm == "MiniLM" else self.seeds

    def sweep_sizes(self, arm: str) -> tuple[int | None, ...]:
        return (self.minilm_sweep_size,) if arm == "MiniLM" else self.sizes


EXPERIMENT = {
    "cpu": ExperimentSettings(),
    "gpu": ExperimentSettings(sizes=(100, 300, 1000, 3000, None), minilm_seeds=(0, 1, 2),
                              small=FinetuneSettings(steps=200, batch_size=32, evaluations=2),
                              full=FinetuneSettings(steps=792, batch_size=32, evaluations=3, patience=2)),
}


def experiment_for(preset: str | None = None) -> ExperimentSettings:
    return for_preset(EXPERIMENT, preset)


LABELS = ("negative", "positive")     # the names of label 0 and label 1


ARMS = ("random", "mini-bert", "MiniLM")


def _check_arm(arm: str) -> None:
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")


def mini_bert_folder() -> Path:
    """Chapter 04's pretrained mini-BERT (model + tokenizer), built on demand with chapter 04's code."""
    return pretrained_mini_bert()


def load_tokenizer(arm: str, mini_bert: str | Path | None = None):
    """The tokenizer of an arm: the course's WordPiece for the mini-BERTs, MiniLM's own for MiniLM."""
    _check_arm(arm)
    if arm == "MiniLM":
        return load_pretrained_tokenizer()
    return AutoTokenizer.from_pretrained(mini_bert or mini_bert_folder())


def tokenize(data, tokenizer, max_length: int = MAX_LENGTH):
    """Token ids for every split with `.map(batched=True)`; no padding here (the collator pads each batch)."""
    def encode(rows):
        return tokenizer(rows["text"], truncation=True, max_length=max_length)
    keep = {"input_ids", "attention_mask", "label"}
    columns = next(iter(data.values())).column_names
    return data.map(encode, batched=True, remove_columns=[c for c in columns if c not in keep],
                    desc="tokenizing").rename_column("label", "labels")


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Shuffle, cut into pools of `pool` batches, sort each pool by length, shuffle the batches:
    sentences of similar length share a batch (less padding) while batches stay random."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool: int = 50):
        self.lengths, self.batch_size, self.generator, self.pool = list(lengths), batch_size, generator, pool

    def batches(self) -> list[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size * self.pool
        result = []
        for start in range(0, len(order), size):
            pool = sorted(order[start:start + size], key=lambda i: self.lengths[i])
            result += [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        shuffled = torch.randperm(len(result), generator=self.generator).tolist()
        return [result[i] for i in shuffled]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def batches(part, tokenizer, batch_size: int = 32, *, shuffle: bool = True, group_by_length: bool = True,
            seed: int = 0) -> torch.utils.data.DataLoader:
    """Batches of a tokenized split, padded only to the longest sentence of each batch
    (`DataCollatorWithPadding`). Training: shuffled, grouped by length. Evaluation (shuffle=False):
    sorted by length, with the order kept in `loader.order` to put predictions back."""
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    lengths = [len(ids) for ids in part["input_ids"]]
    columns = [c for c in ("input_ids", "attention_mask", "labels") if c in part.column_names]
    rows = part.select_columns(columns)
    if not shuffle:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        loader = torch.utils.data.DataLoader(rows.select(order), batch_size=batch_size, shuffle=False,
                                             collate_fn=collator)
        loader.order = order
        return loader
    generator = torch.Generator().manual_seed(seed)
    if group_by_length:
        return torch.utils.data.DataLoader(rows, batch_sampler=LengthGroupedSampler(lengths, batch_size, generator),
                                           collate_fn=collator)
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, generator=generator,
                                       collate_fn=collator)


def padding_share(loader: Iterable) -> float:
    """Share of the positions in a pass over `loader` that are padding."""
    real = total = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return 1 - real / total


@dataclass
class Prepared:
    """One tokenizer's view of the data: tokenized splits and the evaluation loaders (built once)."""
    tokenizer: Any
    data: Any                       # DatasetDict: train / validation / test with input_ids, attention_mask, labels
    validation: Any                 # evaluation loaders, sorted by length
    test: Any


def prepare(data, arm: str, max_length: int = MAX_LENGTH, eval_batch_size: int = 128,
            mini_bert: str | Path | None = None) -> Prepared:
    """Tokenize the sentiment DatasetDict with `arm`'s tokenizer and build its evaluation loaders.
    mini_bert: another pretrained mini-BERT folder, whose tokenizer to use (bench/pretraining_recipes.py)."""
    tokenizer = load_tokenizer(arm, mini_bert)
    tokens = tokenize(data, tokenizer, max_length)
    return Prepared(tokenizer, tokens, batches(tokens["validation"], tokenizer, eval_batch_size, shuffle=False),
                    batches(tokens["test"], tokenizer, eval_batch_size, shuffle=False))


class SentenceClassifier(nn.Module):
    """encoder → one vector per sentence (mean of the token vectors, or the [CLS] vector) → dropout → linear.
    forward(input_ids, attention_mask, labels=None) returns a SequenceClassifierOutput, like transformers'
    models, so `utils.train` and `transformers.Trainer` both take it as it is."""

    def __init__(self, encoder: nn.Module, num_labels: int = 2, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling {pooling!r} is not one of ('mean', 'cls')")
        self.encoder, self.pooling = encoder, pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        self.classifier.weight.data.normal_(0.0, 0.02)
        self.classifier.bias.data.zero_()

    @property
    def config(self):
        return self.encoder.config


@add_to_class(SentenceClassifier)
def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One vector per sentence from its token vectors: the [CLS] vector, or their mean over the real tokens."""
    if self.pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@add_to_class(SentenceClassifier)
def sentence_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return self.pool(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask)


@add_to_class(SentenceClassifier)
def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
            **ignored: Any):
    logits = self.classifier(self.dropout(self.sentence_vectors(input_ids, attention_mask)))
    loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


def new_classifier(arm: str, seed: int = 0, pooling: str = "mean", dropout: float = 0.1,
                   mini_bert: str | Path | None = None) -> SentenceClassifier:
    """A fresh classifier for one arm, its head (and for "random" its body) seeded. "random": chapter 04's
    architecture from random weights; "mini-bert": chapter 04's pretrained weights (`mini_bert`: another
    folder of it); "MiniLM": all-MiniLM-L6-v2 from the offline package. Every arm gets the same dropout."""
    _check_arm(arm)
    seed_everything(seed)
    rates = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    if arm == "random":
        encoder = BertModel(BertConfig.from_pretrained(mini_bert or mini_bert_folder(), **rates), add_pooling_layer=False)
    elif arm == "mini-bert":
        with quiet_transformers():
            encoder = BertModel.from_pretrained(mini_bert or mini_bert_folder(), add_pooling_layer=False, **rates)
    else:
        encoder = load_pretrained(BertModel, add_pooling_layer=False, **rates)
    torch.manual_seed(seed)   # the head's initialisation depends on the seed only, not on the arm
    return SentenceClassifier(encoder, pooling=pooling, dropout=dropout)


def _in_split_order(values: np.ndarray, loader) -> np.ndarray:
    """Rows computed in an evaluation loader's length-sorted order, put back in the split's order."""
    order = getattr(loader, "order", None)
    if order is None:
        return values
    restored = np.empty_like(values)
    restored[order] = values
    return restored


@torch.inference_mode()
def _over_batches(model: nn.Module, loader, compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  device: str | torch.device | None = None) -> np.ndarray:
    """`compute(input_ids, attention_mask)` on every batch in eval mode, rows back in the split's order."""
    device = pick_device(device) if device is not None else next(model.parameters()).device
    with evaluating(model):
        chunks = [compute(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
                  for batch in loader]
    return _in_split_order(torch.cat(chunks).numpy(), loader)


def predict_proba(model: nn.Module, loader, device: str | torch.device | None = None) -> np.ndarray:
    """Class probabilities for every sentence of an evaluation loader (shuffle=False), in the split's order."""
    def probabilities(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    return _over_batches(model, loader, probabilities, device)


def scores(labels: Sequence[int], probs: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """accuracy, F1 (positive class), confusion matrix [true][predicted], expected calibration error
    and the reliability table (mean confidence vs accuracy in `bins` equal-width confidence bins)."""
    labels = np.asarray(labels)
    predicted, confidence = probs.argmax(1), probs.max(1)
    correct = predicted == labels
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    confusion = np.zeros((2, 2), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            table.append({"bin": f"{edges[b]:.2f}–{edges[b + 1]:.2f}", "n": int(inside.sum()),
                          "confidence": conf, "accuracy": acc})
            ece += inside.mean() * abs(conf - acc)
    return {"accuracy": float(correct.mean()), "f1": f1, "confusion": confusion, "ece": float(ece),
            "reliability": table}


def accuracy(model: nn.Module, loader) -> float:
    labels = _in_split_order(np.asarray(loader.dataset["labels"]), loader)
    return scores(labels, predict_proba(model, loader))["accuracy"]


def fine_tune(model: nn.Module, train_part, validation_loader, tokenizer, settings: FinetuneSettings,
              **train_options: Any) -> History:
    """Fine-tune `model` on a tokenized training split with `utils.train`; evaluate accuracy on
    `validation_loader` `settings.evaluations` times, restore the weights of the best evaluation."""
    train_options = {"progress": False, "desc": "fine-tuning", **train_options}
    loader = batches(train_part, tokenizer, settings.batch_size, seed=settings.seed)
    return train(model, loader, steps=settings.steps, lr=settings.lr, warmup=settings.warmup,
                 weight_decay=settings.weight_decay, schedule="linear",
                 metrics=lambda m: {"validation accuracy": accuracy(m, validation_loader)},
                 monitor="validation accuracy", mode="max", restore_best=True, patience=settings.patience,
                 eval_every=max(1, settings.steps // settings.evaluations), **train_options)


def subset_indices(labels: Sequence[int], n: int | None, seed: int = 0) -> list[int]:
    """Positions of `n` sentences, stratified by label (the same labels, n and seed give the same ones).
    n=None or n >= len(labels): all of them."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    if n < 2:
        raise ValueError(f"need at least 2 labelled sentences, got {n}")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        chosen += rng.choice(where, size=round(n * len(where) / len(labels)), replace=False).tolist()
    return sorted(chosen)


def subset(part, n: int | None, seed: int = 0):
    """`n` sentences of a tokenized split, stratified by label (see `subset_indices`)."""
    indices = subset_indices(part["labels"], n, seed)
    return part if len(indices) == len(part) else part.select(indices)


def run_arm(arm: str, prepared: Prepared, size: int | None, settings: FinetuneSettings,
            keep_model: bool = False, mini_bert: str | Path | None = None, **train_options: Any) -> dict[str, Any]:
    """Fine-tune a fresh `arm` classifier on `size` labelled sentences (stratified with settings.seed)
    and score it on the test split. Returns one row: arm, size, seed, lr, steps, accuracies, time.
    mini_bert: another pretrained mini-BERT folder than chapter 04's (bench/pretraining_scaling.py)."""
    model = new_classifier(arm, settings.seed, settings.pooling, settings.dropout, mini_bert=mini_bert)
    part = subset(prepared.data["train"], size, settings.seed)
    started = time.perf_counter()
    history = fine_tune(model, part, prepared.validation, prepared.tokenizer, settings, **train_options)
    seconds = time.perf_counter() - started
    probs = predict_proba(model, prepared.test)
    labels = np.asarray(prepared.data["test"]["labels"])
    row = {**result_row(history, scores(labels, probs)["accuracy"], seconds, arm=arm, size=len(part),
                        seed=settings.seed, lr=settings.lr, batch=settings.batch_size),
           "history": history, "correct": probs.argmax(1) == labels}    # per test sentence, for the noise rule
    if keep_model:
        row["model"], row["probs"] = model, probs
    return row


def summarise(rows: Sequence[dict[str, Any]], key: str = "test accuracy") -> dict[tuple[str, int], dict[str, float]]:
    """{(arm, size): {"mean", "sd" (over seeds, ddof=1; 0 for one run), "min", "max", "n"}} of `key`."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        groups.setdefault((row["arm"], row["size"]), []).append(row[key])
    return {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "min": float(np.min(v)),
                "max": float(np.max(v)), "n": len(v)} for k, v in groups.items()}


def features(model: SentenceClassifier, loader) -> np.ndarray:
    """The frozen encoder's sentence vectors (the model's pooling) for an evaluation loader, in order."""
    if getattr(loader, "order", None) is None:
        raise ValueError("features needs an evaluation loader: batches(part, tokenizer, shuffle=False)")
    return _over_batches(model, loader, model.sentence_vectors)


def linear_probe(train_x: np.ndarray, train_y: Sequence[int], valid_x: np.ndarray, valid_y: Sequence[int],
                 penalties: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1)) -> Callable[[np.ndarray], np.ndarray]:
    """Logistic regression on frozen features; returns predict_proba(x) of the best penalty on validation."""
    x = torch.as_tensor(train_x, dtype=torch.float64)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    def standard(a):
        return (torch.as_tensor(a, dtype=torch.float64) - mean) / std
    x, y = standard(train_x), torch.as_tensor(np.asarray(train_y))
    vx, vy = standard(valid_x), np.asarray(valid_y)
    best = None
    for penalty in penalties:
        w = torch.zeros(x.shape[1], 2, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(x @ w + b, y) + penalty * (w ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            acc = float(((vx @ w + b).argmax(1).numpy() == vy).mean())
        if best is None or acc > best[0]:
            best = (acc, w.detach(), b.detach())
    _, w, b = best
    return lambda a: torch.softmax(standard(a) @ w + b, -1).numpy()


def nearest_words(embeddings: torch.Tensor, tokenizer, words: Sequence[str], k: int = 5) -> dict[str, list[str]]:
    """For each word (a single token of `tokenizer`), the k tokens with the most similar input embedding
    (cosine, after removing the mean embedding). Words the tokenizer splits are left out."""
    vectors = embeddings.detach().float()
    vectors = nn.functional.normalize(vectors - vectors.mean(0), dim=1)
    special = set(tokenizer.all_special_ids)
    result = {}
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            continue
        similarity = vectors @ vectors[ids[0]]
        similarity[[ids[0], *special]] = -2.0
        result[word] = tokenizer.convert_ids_to_tokens(similarity.topk(k).indices.tolist())
    return result


from course.ch04_pretraining import bert_style, settings_for, text_identity
from utils.stats import paired_difference
from utils.sweeps import SweepRecord

SCALING_MULTIPLES = (0, 0.25, 0.5, 1, 2, 4)     # of chapter 04's pretraining steps; 0: random weights
SCALING_SIZES = (100, 300, 1000)
BENCH_LEARNING_RATES = (("random", (1e-3, 3e-3)), ("mini-bert", (1e-3, 3e-3)), ("MiniLM", (1e-4, 2e-4)))
# the benches' grids: two rates per arm, the best on validation kept (section 4 tries three and steps past an edge)


SCALING = SweepRecord("pretraining_scaling", made_by="scaling_settings",
                      inputs_named="corpus or sentiment set (FROM_ZERO_CORPUS / FROM_ZERO_SENTIMENT)")
RECIPES = SweepRecord("pretraining_recipes", made_by="recipes_settings", inputs_named=SCALING.inputs_named)


def scaling_settings(preset: str) -> dict[str, Any]:
    """What the pretraining-scaling table is made with: BERT's recipe at chapter 04's size, the budgets, this chapter's protocol."""
    experiment = experiment_for(preset)
    return {"recipe": asdict(bert_style(preset)), "multiples": SCALING_MULTIPLES, "sizes": SCALING_SIZES,
            "fine-tuning": {"small": asdict(experiment.small), "seeds": experiment.seeds,
                            "learning_rates": BENCH_LEARNING_RATES}}


def scaling_identity(data, preset: str) -> dict[str, str]:
    """The text chapter 04 pretrains on and the sentiment set: another of either needs another table."""
    return made_from(sentiment=sentiment_rows(data), **text_identity(bert_style(preset)))


def load_scaling(preset: str, data, missing_ok: bool = False) -> dict[str, Any] | None:
    """bench/pretraining_scaling.py's committed table for `preset`, refused if made with other settings or data;
    missing_ok: None if none is committed for this preset."""
    return SCALING.read(preset, settings=scaling_settings(preset), inputs=scaling_identity(data, preset),
                        missing_ok=missing_ok)


def recipes_settings(preset: str) -> dict[str, Any]:
    """What the recipe search is made with: the recipe, its variants and levers, this chapter's protocol."""
    return {**{k: v for k, v in scaling_settings(preset).items() if k != "multiples"},
            "variants": RECIPE_VARIANTS, "levers": RECIPE_LEVERS}


def load_recipes(preset: str, data, missing_ok: bool = False) -> dict[str, Any] | None:
    """bench/pretraining_recipes.py's committed table for `preset`, refused if made with other settings or data;
    missing_ok: None if none is committed for this preset."""
    return RECIPES.read(preset, settings=recipes_settings(preset), inputs=scaling_identity(data, preset),
                        missing_ok=missing_ok)


RECIPE_VARIANTS = (      # BERT's recipe at chapter 04's size with these changed, at its budget (bench/pretraining_recipes.py)
    ("chapter 04", {}),
    ("no dropout", {"dropout": 0.0}),
    ("40% masking, no dropout", {"dropout": 0.0, "mask_probability": 0.4}),
    ("40%, no dropout, sinusoidal positions", {"dropout": 0.0, "mask_probability": 0.4, "positions": "sinusoidal"}),
    ("in-domain only, 40%, no dropout", {"wikitext": False, "dropout": 0.0, "mask_probability": 0.4}),
    ("in-domain only, 40%, no dropout, sinusoidal positions",
     {"wikitext": False, "dropout": 0.0, "mask_probability": 0.4, "positions": "sinusoidal"}),
)
RECIPE_LEVERS = (        # fine-tuning that tries to keep what pretraining learned, on the best variant, both arms
    ("encoder at 1/10 of the head's rate", {"body_scale": 0.1, "rates": (1e-3, 3e-3)}),
    ("300 steps instead of 80", {"steps": 300, "rates": (3e-4, 1e-3, 3e-3)}),
)


CHAPTER_04_RECIPE = "40%, no dropout, sinusoidal positions"


def recipe_gains(recipes: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(variant, fine-tuning lever, labelled size) -> the pretrained mini-BERT's test accuracy minus random
    weights' with the same tokenizer and fine-tuning, paired over seeds (utils.stats.paired_difference)."""
    kept = [r for r in recipes["rows"] if r["chosen"]]
    corpus_of = {name: changes.get("wikitext", True) for name, changes in RECIPE_VARIANTS}
    random_of = {name: next(other for other, _ in RECIPE_VARIANTS if corpus_of[other] == corpus_of[name]) for name in corpus_of}

    def accuracies(variant, lever, arm, size):
        return {r["seed"]: r["test accuracy"] for r in kept if (r["variant"], r["lever"], r["arm"], r["size"]) == (variant, lever, arm, size)}
    gains = {}
    for variant, lever in dict.fromkeys((r["variant"], r["lever"]) for r in kept if r["arm"] == "mini-bert"):
        base = random_of[variant] if lever == "chapter 05's protocol" else variant
        for size in SCALING_SIZES:
            ours, theirs = accuracies(variant, lever, "mini-bert", size), accuracies(base, lever, "random", size)
            gains[variant, lever, size] = paired_difference([ours[s] for s in sorted(ours)], [theirs[s] for s in sorted(ours)])
    return gains


def masked_ratios(recipes: dict[str, Any]) -> dict[str, float]:
    """Each variant's accuracy at [MASK] as a multiple of the unigram guess, on the text it was pretrained on."""
    rows = {r["variant"]: r for r in recipes["rows"]}
    corpus = {name: "WikiText-2 test" if changes.get("wikitext", True) else "sentiment validation" for name, changes in RECIPE_VARIANTS}
    return {name: rows[name][f"[MASK] {corpus[name]}"] / rows[name][f"unigram {corpus[name]}"] for name, _ in RECIPE_VARIANTS}


def confident_mistakes(texts: Sequence[str], labels: Sequence[int], probs: np.ndarray, k: int = 8) -> list[dict]:
    """The k misclassified sentences the model was most sure about."""
    labels = np.asarray(labels)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    worst = wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:k]
    return [{"text": texts[i], "true": LABELS[labels[i]], "predicted": LABELS[int(probs[i].argmax())],
             "confidence": float(probs[i].max())} for i in worst]


def predict(model: nn.Module, tokenizer, text: str | Sequence[str], max_length: int = MAX_LENGTH) -> dict | list[dict]:
    """{"label": "positive" | "negative", "probability": p, "text": text, "truncated": bool} for one text or a
    list. A text longer than `max_length` tokens is cut there (the model reads its beginning only)."""
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError("predict needs non-empty text")
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise ValueError(f"max_length={max_length} is more than the model's {positions} positions: use "
                         f"max_length <= {positions} (longer texts are cut there)")
    device = next(model.parameters()).device
    cut = [len(ids) > max_length for ids in tokenizer(texts)["input_ids"]]
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with evaluating(model), torch.inference_mode():
        probs = torch.softmax(model(input_ids=encoded["input_ids"].to(device),
                                    attention_mask=encoded["attention_mask"].to(device)).logits.float(), -1).cpu()
    rows = [{"text": t, "label": LABELS[int(p.argmax())], "probability": float(p.max()), "p_positive": float(p[1]),
             "truncated": c} for t, p, c in zip(texts, probs, cut)]
    return rows[0] if isinstance(text, str) else rows


NEUTRAL_CONFIDENCE = 0.75   # a neutral fact "passes" when the model's top probability stays below this


def passes(row: dict, guess: dict) -> bool:
    """Whether a prediction passes a behavioural check: the right label, or for a neutral fact (label None) a top
    probability below NEUTRAL_CONFIDENCE."""
    return (guess["probability"] < NEUTRAL_CONFIDENCE if row["label"] is None
            else guess["label"] == LABELS[row["label"]])


def behaviour_table(model: nn.Module, tokenizer, rows: Sequence[dict] | None = None) -> list[dict[str, Any]]:
    """Pass rates per phenomenon of the behavioural set: the right label for negation, intensifiers and
    contrast; for neutral facts, a top probability below NEUTRAL_CONFIDENCE."""
    rows = list(rows) if rows is not None else load_behaviour_set()
    predictions = predict(model, tokenizer, [r["text"] for r in rows])
    table: dict[str, list[bool]] = {}
    for row, guess in zip(rows, predictions):
        table.setdefault(row["phenomenon"], []).append(passes(row, guess))
    return [{"phenomenon": k, "sentences": len(v), "pass rate": float(np.mean(v))} for k, v in table.items()]


def save_classifier(model: SentenceClassifier, tokenizer, folder: str | Path, info: dict[str, Any]) -> None:
    """config.json + tokenizer + model.safetensors (the whole classifier) + classifier.json."""
    folder = Path(folder)
    model.encoder.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_module(model, folder / "model.safetensors")
    (folder / "classifier.json").write_text(json.dumps({"pooling": model.pooling, **info}, indent=1, default=str))


def load_classifier(folder: str | Path) -> tuple[SentenceClassifier, Any]:
    """(model in eval mode, tokenizer) from a `save_classifier` folder."""
    folder = Path(folder)
    if not (folder / "classifier.json").is_file():
        raise CheckpointError(f"{folder} has no classifier.json: it was not written by save_classifier")
    info = json.loads((folder / "classifier.json").read_text())
    model = SentenceClassifier(BertModel(BertConfig.from_pretrained(folder), add_pooling_layer=False),
                               pooling=info["pooling"])
    load_module(model, folder / "model.safetensors")
    return model.eval(), AutoTokenizer.from_pretrained(folder)


TEACHER_LR = 2e-4


def teacher_settings(preset: str | None = None) -> FinetuneSettings:
    """all-MiniLM-L6-v2 fine-tuned on all the training sentences: the experiment's full budget."""
    return replace(experiment_for(preset).full, lr=TEACHER_LR, seed=0)


def teacher(settings: FinetuneSettings | None = None, *, rebuild: bool = False, **train_options: Any) -> Path:
    """The folder of the fine-tuned all-MiniLM-L6-v2 ("teacher"); `load_classifier` opens it. A cached
    teacher made with the same recipe from the same data and encoder is used as it is (its classifier.json
    says how it was trained); if there is none, it is trained now with `settings` (default: this chapter's
    full-data recipe)."""
    settings = settings or teacher_settings()

    def build(folder: Path) -> None:
        row = run_arm("MiniLM", prepare(load_sentiment(), "MiniLM", settings.max_length), None, settings,
                      keep_model=True, **{"progress": True, "desc": "fine-tuning the teacher", **train_options})
        save_teacher(row, settings, folder)
    return get_or_build("teacher", build, version=teacher_identity(settings), rebuild=rebuild)


def store_teacher(row: dict[str, Any], settings: FinetuneSettings | None = None) -> Path:
    """Store a `run_arm(..., keep_model=True)` row made with `settings` as the cached teacher (this chapter
    stores its own run): `teacher()` returns it from then on."""
    settings = settings or teacher_settings()
    return get_or_build("teacher", lambda folder: save_teacher(row, settings, folder),
                        version=teacher_identity(settings), rebuild=True)


def save_teacher(row: dict[str, Any], settings: FinetuneSettings, folder: Path) -> None:
    used = {k: row[k] for k in ("lr", "seed", "steps", "batch")}
    save_classifier(row["model"], load_tokenizer("MiniLM"), folder,
                    {"settings": {**asdict(settings), **used}, "test accuracy": row["test accuracy"],
                     "validation accuracy": row["validation accuracy"]})


def teacher_identity(settings: FinetuneSettings | None = None) -> dict[str, Any]:
    """What the teacher is made from: this recipe, the sentences and labels, and the pretrained encoder's files.
    Other sentences (FROM_ZERO_SENTIMENT) or another encoder (FROM_ZERO_MODEL) rebuild the teacher, with a
    warning saying which; later chapters' results name the teacher by this, never by its trained weights."""
    return made_from("MiniLM fine-tuned on the sentiment sentences (chapter 05)", settings or teacher_settings(),
                     sentiment=sentiment_rows(load_sentiment()), encoder=model_identity())


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'MAX_LENGTH', 'FinetuneSettings', 'ExperimentSettings', 'EXPERIMENT', 'experiment_for', 'LABELS', 'ARMS',
    'mini_bert_folder', 'load_tokenizer', 'tokenize', 'LengthGroupedSampler', 'batches', 'padding_share',
    'Prepared', 'prepare', 'SentenceClassifier', 'new_classifier', 'predict_proba', 'scores', 'accuracy',
    'fine_tune', 'subset_indices', 'subset', 'run_arm', 'summarise', 'features', 'linear_probe', 'nearest_words',
    'SCALING_MULTIPLES', 'SCALING_SIZES', 'BENCH_LEARNING_RATES', 'SCALING', 'RECIPES', 'scaling_settings',
    'scaling_identity', 'load_scaling', 'recipes_settings', 'load_recipes', 'RECIPE_VARIANTS', 'RECIPE_LEVERS',
    'CHAPTER_04_RECIPE', 'recipe_gains', 'masked_ratios', 'confident_mistakes', 'predict', 'NEUTRAL_CONFIDENCE',
    'passes', 'behaviour_table', 'save_classifier', 'load_classifier', 'TEACHER_LR', 'teacher_settings', 'teacher',
    'store_teacher', 'save_teacher', 'teacher_identity',
]
