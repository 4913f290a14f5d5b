# generated from chapters/06_peft.ipynb: edit the notebook, then run make export
"""06 · Parameter-efficient fine-tuning (参数高效微调)"""


import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput


import utils
from utils import add_to_class
from course.ch03_model_anatomy import count_parameters
from course.ch05_fine_tuning import (MAX_LENGTH, FinetuneSettings, Prepared, SentenceClassifier, batches, features, fine_tune,
                                     linear_probe, new_classifier, predict_proba, prepare, scores)
from utils.checkpoint import atomic_path
from utils.data import sentiment_rows
from utils.hardware import for_preset
from utils.models import model_identity
from utils.sweeps import SweepRecord, chosen_rates, result_row, tune_then_repeat


@dataclass(frozen=True)
class PeftSettings:
    steps: int = 100                  # optimizer steps, the same for every method
    batch_size: int = 32
    seeds: tuple[int, ...] = (0,)      # seeds trained in the notebook (the sweep adds the noise seeds)
    noise_seeds: tuple[int, ...] = (0, 1, 2)   # the sweep runs these at each method's chosen rate
    k: int = 2                         # top-k layers
    bottleneck: int = 16               # adapter width m
    prompt_length: int = 20            # prompt tuning: p vectors
    rank: int = 8                      # LoRA r (and alpha = 2r: section 2 says why)
    learning_rates: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("top-k layers", (1e-4, 3e-4, 1e-3, 3e-3)), ("BitFit", (1e-3, 3e-3, 1e-2, 3e-2)),
        ("adapters", (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)), ("prompt tuning", (3e-3, 1e-2, 3e-2, 1e-1)),
        ("LoRA", (3e-4, 1e-3, 3e-3, 1e-2)), ("full", (5e-5, 1e-4, 2e-4, 5e-4, 1e-3)))

    def finetune(self, lr: float, seed: int) -> FinetuneSettings:
        """Chapter 05's recipe at this budget: warmup + linear decay, validation accuracy once, at the end."""
        return FinetuneSettings(steps=self.steps, batch_size=self.batch_size, lr=lr, seed=seed, evaluations=1)

    def rates(self, method: str) -> tuple[float, ...]:
        return dict(self.learning_rates)[method]


PEFT = {"cpu": PeftSettings(),
        "gpu": PeftSettings(steps=400, seeds=(0, 1, 2))}


def peft_settings(preset: str | None = None) -> PeftSettings:
    return for_preset(PEFT, preset)


def freeze_all_but_head(model: SentenceClassifier) -> SentenceClassifier:
    model.requires_grad_(False)
    model.classifier.requires_grad_(True)
    return model


def count_trainable(model: nn.Module) -> int:
    """What a method trains: chapter 03's count_parameters, trainable only."""
    return count_parameters(model, trainable_only=True)


def head_only(model: SentenceClassifier, settings: PeftSettings) -> SentenceClassifier:
    return freeze_all_but_head(model)


def top_layers(model: SentenceClassifier, settings: PeftSettings) -> SentenceClassifier:
    layers = model.encoder.encoder.layer
    if not 1 <= settings.k <= len(layers):
        raise ValueError(f"k={settings.k}, but the encoder has {len(layers)} layers")
    freeze_all_but_head(model)
    for layer in layers[len(layers) - settings.k:]:
        layer.requires_grad_(True)
    return model


def bitfit(model: SentenceClassifier, settings: PeftSettings) -> SentenceClassifier:
    freeze_all_but_head(model)
    for name, param in model.encoder.named_parameters():
        if name.endswith("bias"):
            param.requires_grad_(True)
    return model


class Adapter(nn.Module):
    """h + up(gelu(down(h))): a bottleneck of m units; `up` starts at zero, so the adapter starts as the identity."""

    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(nn.functional.gelu(self.down(h)))


class WithAdapter(nn.Module):
    """A frozen output projection followed by an adapter."""

    def __init__(self, projection: nn.Linear, bottleneck: int):
        super().__init__()
        self.projection = projection
        self.adapter = Adapter(projection.out_features, bottleneck).to(projection.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.projection(x))


def adapters(model: SentenceClassifier, settings: PeftSettings) -> SentenceClassifier:
    freeze_all_but_head(model)
    for layer in model.encoder.encoder.layer:
        layer.attention.output.dense = WithAdapter(layer.attention.output.dense, settings.bottleneck)
        layer.output.dense = WithAdapter(layer.output.dense, settings.bottleneck)
    return model


class PromptTuned(nn.Module):
    """An encoder with `length` trainable input vectors prepended to every sentence. Returns the hidden
    states of the sentence's own tokens, so the head and the pooling are unchanged."""

    def __init__(self, encoder: nn.Module, length: int):
        super().__init__()
        self.encoder, self.length = encoder, length
        words = encoder.embeddings.word_embeddings.weight
        chosen = torch.randint(1000, words.shape[0], (length,))
        self.prompt = nn.Parameter(words[chosen].detach().clone())   # [unused] and special ids are below 1000

    @property
    def config(self):
        return self.encoder.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BaseModelOutput:
        n = input_ids.shape[0]
        words = self.encoder.embeddings.word_embeddings(input_ids)
        prompt = self.prompt.unsqueeze(0).expand(n, -1, -1)
        mask = torch.cat([attention_mask.new_ones(n, self.length), attention_mask], dim=1)
        hidden = self.encoder(inputs_embeds=torch.cat([prompt, words], dim=1), attention_mask=mask).last_hidden_state
        return BaseModelOutput(last_hidden_state=hidden[:, self.length:])


def prompt_tuning(model: SentenceClassifier, settings: PeftSettings) -> SentenceClassifier:
    freeze_all_but_head(model)
    model.encoder = PromptTuned(model.encoder, settings.prompt_length)
    return model


class LoRALinear(nn.Module):
    """`base` (frozen) plus a rank-`r` update B·A scaled by `alpha / r`."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps nn.Linear layers, not {type(base).__name__}")
        if r < 1:
            raise ValueError(f"LoRA rank r must be at least 1, got {r}")
        self.base = base.requires_grad_(False)
        self.r, self.scaling = r, alpha / r
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))        # as nn.Linear initialises its weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling


@add_to_class(LoRALinear)
def merged(self) -> nn.Linear:
    """A plain nn.Linear with W + (α/r)·B A: the same outputs, no extra cost at inference."""
    out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                    device=self.base.weight.device, dtype=self.base.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
    return out


def add_lora(model: nn.Module, targets: Iterable[str] = ("query", "value"), r: int = 8, alpha: float = 16.0,
             trainable: Iterable[str] = ("classifier",)) -> nn.Module:
    """Wrap every nn.Linear whose name ends with one of `targets` in a LoRALinear; freeze everything else
    except parameters whose name contains one of `trainable` (the new task head). Returns the model."""
    targets, trainable = tuple(targets), tuple(trainable)
    found = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.split(".")[-1] in targets]
    if not found:
        raise ValueError(f"no nn.Linear named {targets} in {type(model).__name__}; "
                         "look at [name for name, _ in model.named_modules()] for the right names")
    model.requires_grad_(False)
    for name in found:
        _replace_module(model, name, LoRALinear(model.get_submodule(name), r=r, alpha=alpha))
    for name, param in model.named_parameters():
        param.requires_grad_(param.requires_grad or any(t in name for t in trainable))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged nn.Linear, in place. Returns the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace_module(model, name, module.merged())
    return model


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def lora(model: SentenceClassifier, settings: PeftSettings) -> SentenceClassifier:
    return add_lora(model, targets=("query", "value"), r=settings.rank, alpha=2.0 * settings.rank,
                    trainable=("classifier",))


def full(model: SentenceClassifier, settings: PeftSettings) -> SentenceClassifier:
    return model.requires_grad_(True)


METHODS: dict[str, Callable[[SentenceClassifier, PeftSettings], SentenceClassifier]] = {
    "head only": head_only, "top-k layers": top_layers, "BitFit": bitfit, "adapters": adapters,
    "prompt tuning": prompt_tuning, "LoRA": lora, "full": full}


def build(method: str, settings: PeftSettings, seed: int = 0) -> SentenceClassifier:
    """Chapter 05's MiniLM classifier (head seeded with `seed`), set up for `method`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method](new_classifier("MiniLM", seed), settings)


def trainable_formula(method: str, config, settings: PeftSettings, num_labels: int = 2) -> int:
    V, P, T = config.vocab_size, config.max_position_embeddings, config.type_vocab_size
    H, F, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head = H * num_labels + num_labels
    layer = 4 * (H * H + H) + (2 * H * F + F + H) + 4 * H
    m, p, r = settings.bottleneck, settings.prompt_length, settings.rank
    formulas = {
        "head only": head,
        "top-k layers": settings.k * layer + head,
        "BitFit": L * (4 * H + H + F + H + H) + H + head,    # attention q,k,v,o; LayerNorm; FFN in, out; LayerNorm
        "adapters": L * 2 * (H * m + m + m * H + H) + head,  # two adapters per layer: down and up, with biases
        "prompt tuning": p * H + head,
        "LoRA": L * 2 * (r * H + H * r) + head,              # query and value: A is r × H, B is H × r
        "full": (V + P + T) * H + 2 * H + L * layer + head,
    }
    return formulas[method]


def trainable_by_part(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per part: "prompt", "embeddings", "layer 0" … "layer L-1", "head"."""
    parts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            layer = re.search(r"\.layer\.(\d+)\.", name)
            part = ("prompt" if name.endswith("prompt") else f"layer {layer.group(1)}" if layer
                    else "embeddings" if ".embeddings." in name else "head" if name.startswith("classifier") else name)
            parts[part] = parts.get(part, 0) + param.numel()
    return parts


def training_sentences(prepared: Prepared, settings: PeftSettings, seed: int) -> list[int]:
    """Positions in the training split of the sentences that `settings.steps` batches of `seed` contain:
    what every trained method sees (chapter 05's length-grouped batches, epoch after epoch)."""
    sampler = batches(prepared.data["train"], prepared.tokenizer, settings.batch_size, seed=seed).batch_sampler
    seen: list[list[int]] = []
    while len(seen) < settings.steps:
        seen += list(sampler)[:settings.steps - len(seen)]
    return sorted({i for batch in seen for i in batch})


def probe(prepared: Prepared, settings: PeftSettings, seed: int = 0) -> dict[str, Any]:
    """Head only: chapter 05's linear probe on the frozen sentence vectors of the sentences the other
    methods see (features computed once; the penalty chosen on validation)."""
    model = build("head only", settings, seed)
    part = prepared.data["train"].select(training_sentences(prepared, settings, seed))
    started = time.perf_counter()
    train_x = features(model, batches(part, prepared.tokenizer, 128, shuffle=False))
    valid_x, test_x = features(model, prepared.validation), features(model, prepared.test)
    predict = linear_probe(train_x, part["labels"], valid_x, prepared.data["validation"]["labels"])
    return {"method": "head only", "lr": None, "seed": seed, "steps": 0,
            "validation accuracy": scores(prepared.data["validation"]["labels"], predict(valid_x))["accuracy"],
            "test accuracy": scores(prepared.data["test"]["labels"], predict(test_x))["accuracy"],
            "seconds": time.perf_counter() - started, "seconds per step": None,
            "trainable": count_trainable(model), "sentences": len(part)}


def run_method(method: str, prepared: Prepared, settings: PeftSettings, lr: float | None, seed: int = 0,
               keep_model: bool = False, **train_options: Any) -> dict[str, Any]:
    """Build `method`, fine-tune it for `settings.steps` steps at `lr` (chapter 05's `fine_tune`) and score it
    on the test split. One row: method, lr, seed, steps, accuracies, seconds (+ the model and its test probabilities if keep_model)."""
    if method == "head only":
        return probe(prepared, settings, seed)
    model = build(method, settings, seed)
    stamps: list[float] = []
    options = {"desc": f"{method} lr={lr:g} seed {seed}", **train_options,
               "callbacks": [lambda step, history: stamps.append(time.perf_counter())]}
    started = time.perf_counter()
    history = fine_tune(model, prepared.data["train"], prepared.validation, prepared.tokenizer,
                        settings.finetune(lr, seed), **options)
    probs = predict_proba(model, prepared.test)
    test = scores(prepared.data["test"]["labels"], probs)["accuracy"]
    row = {**result_row(history, test, time.perf_counter() - started, method=method, lr=lr, seed=seed),
           "seconds per step": float(np.median(np.diff(stamps))), "trainable": count_trainable(model)}
    if keep_model:                     # the model, and its test probabilities (not stored in the sweep's records)
        row["model"], row["test probs"] = model, probs
    return row


TRAINED = ("top-k layers", "BitFit", "adapters", "prompt tuning", "LoRA", "full")
PEFT_SWEEP = SweepRecord("peft_sweep", made_by="peft_settings", libraries=("transformers", "peft"),
                         inputs_named="sentiment set or model (FROM_ZERO_SENTIMENT / FROM_ZERO_MODEL)")


def sweep(prepared: Prepared, settings: PeftSettings, methods: Sequence[str] = TRAINED,
          on_row: Callable[[dict[str, Any]], Any] = lambda row: None, reuse: Sequence[dict[str, Any]] = (),
          **train_options: Any) -> list[dict[str, Any]]:
    """Chapter 05's protocol (utils.sweeps.tune_then_repeat) for every method: each of its rates with the first
    noise seed, the other noise seeds at the rate best on validation; the probe at every noise seed. Rows without
    models; `on_row(row)` is called after each run. reuse: rows of an earlier sweep with the same settings apart
    from the rates (`load_sweep(..., any_rates=True)`), taken as they are instead of training again."""
    earlier = {(row["method"], row["lr"], row["seed"]): row for row in reuse}

    def record(method: str, lr: float | None, seed: int) -> dict[str, Any]:
        row = earlier.get((method, lr, seed)) or run_method(method, prepared, settings, lr, seed, **train_options)
        on_row(row)
        return row
    rows = [record("head only", None, seed) for seed in settings.noise_seeds]
    for method in methods:
        rows += tune_then_repeat(settings.rates(method), settings.noise_seeds, lambda lr, seed: record(method, lr, seed))
    return rows


def inputs_identity(data) -> dict[str, str]:
    """What a sweep's numbers depend on besides the settings: the sentences and labels, and the model."""
    return utils.made_from(sentiment=sentiment_rows(data), model=model_identity())


def load_sweep(preset: str, settings: PeftSettings, data, any_rates: bool = False) -> dict[str, Any]:
    """The committed sweep for `preset`, refused if it was made with other settings (other learning rates
    too, unless any_rates), another sentiment set or another model."""
    return PEFT_SWEEP.read(preset, settings=asdict(settings), inputs=inputs_identity(data), any_rates=any_rates)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a task needs on top of the frozen base: every trainable tensor, by name."""
    return {name: param.detach().cpu().contiguous() for name, param in model.named_parameters() if param.requires_grad}


def save_trainable(model: nn.Module, path: str | Path) -> int:
    """Write the trainable tensors as safetensors (atomically); returns the file's size in bytes."""
    with atomic_path(path) as tmp:
        save_file(trainable_state(model), str(tmp))
    return Path(path).stat().st_size


def load_trainable(model: nn.Module, path: str | Path) -> nn.Module:
    """Copy a `save_trainable` file into a model built the same way (same method and settings)."""
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name not in params:
                raise ValueError(f"{path} holds {name!r}, which this model does not have: build the model with "
                                 "the method and settings that wrote the file")
            if params[name].shape != tensor.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)} but the model's is "
                                 f"{tuple(params[name].shape)}; build it with the settings that wrote the file")
            params[name].copy_(tensor)
    return model


def lora_update_norms(model: nn.Module) -> dict[str, float]:
    """‖(α/r)·B·A‖ / ‖W‖ (Frobenius) for every LoRALinear, by module name."""
    with torch.no_grad():
        return {name: float((module.scaling * module.lora_B @ module.lora_A).norm() / module.base.weight.norm())
                for name, module in model.named_modules() if isinstance(module, LoRALinear)}


class RatingRegressor(SentenceClassifier):
    """Chapter 05's classifier with one output, the rating (−4 … +4), trained with the mean squared error."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.1):
        super().__init__(encoder, num_labels=1, dropout=dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                **ignored: Any) -> SequenceClassifierOutput:
        rating = self.classifier(self.dropout(self.sentence_vectors(input_ids, attention_mask))).squeeze(-1)
        loss = nn.functional.mse_loss(rating.float(), labels.float()) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=rating)


def rating_splits(data, tokenizer, max_length: int = MAX_LENGTH):
    """Token ids and the rating (as `labels`) of every split of the course's sentiment set."""
    if "rating" not in data["train"].column_names:
        raise ValueError("the ratings task needs the course's offline sentiment set (its 'rating' column): "
                         "use load_sentiment('offline')")
    def encode(rows):
        return tokenizer(rows["text"], truncation=True, max_length=max_length)
    columns = data["train"].column_names
    return data.map(encode, batched=True, remove_columns=[c for c in columns if c != "rating"],
                    desc="tokenizing").rename_column("rating", "labels")


@torch.inference_mode()
def predict_ratings(model: RatingRegressor, loader) -> np.ndarray:
    """Predicted ratings for an evaluation loader (shuffle=False), in the split's order."""
    device = next(model.parameters()).device
    with utils.evaluating(model):
        values = torch.cat([model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)
                                  ).logits.float().cpu() for b in loader]).numpy()
    restored = np.empty_like(values)
    restored[loader.order] = values
    return restored


def train_ratings(ratings, tokenizer, settings: PeftSettings, lr: float, seed: int = 0,
                  **train_options: Any) -> RatingRegressor:
    """A LoRA (settings.rank, query and value) and a one-output head on a fresh frozen MiniLM, trained on the ratings."""
    encoder = lora(new_classifier("MiniLM", seed), settings).encoder
    torch.manual_seed(seed)
    model = RatingRegressor(encoder)
    loader = batches(ratings["train"], tokenizer, settings.batch_size, seed=seed)
    utils.train(model, loader, steps=settings.steps, lr=lr, warmup=0.1, weight_decay=0.01, schedule="linear",
                **{"desc": "ratings", **train_options})
    return model


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'PeftSettings', 'PEFT', 'peft_settings', 'freeze_all_but_head', 'count_trainable', 'head_only', 'top_layers',
    'bitfit', 'Adapter', 'WithAdapter', 'adapters', 'PromptTuned', 'prompt_tuning', 'LoRALinear', 'add_lora',
    'merge_lora', 'lora', 'full', 'METHODS', 'build', 'trainable_formula', 'trainable_by_part',
    'training_sentences', 'probe', 'run_method', 'TRAINED', 'PEFT_SWEEP', 'sweep', 'inputs_identity', 'load_sweep',
    'trainable_state', 'save_trainable', 'load_trainable', 'lora_update_norms', 'RatingRegressor', 'rating_splits',
    'predict_ratings', 'train_ratings',
]
