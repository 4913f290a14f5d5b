"""Where a BERT's parameters live: closed-form formulas, counts, and what each fine-tuning strategy trains.

  parameter_formulas(config, ...)   component → count, from the configuration alone (chapter 03)
  layer_formula(config)             parameters in one encoder layer
  count_by_component(model)         the same components, counted on a real (or meta-device) model
  count_by_layer(model)             parameters per encoder layer
  count_parameters(model)           total (tied weights once); trainable_only=True for what trains
  apply_strategy(model, strategy)   freeze for "full", "frozen embeddings", "top-k layers", "BitFit", "LoRA"
  trainable_formula(config, strategy, ...)   what that strategy trains, from the configuration

Notation: V vocabulary, P positions, T token types, H hidden size, F feed-forward size, L layers, C labels.
"""
from __future__ import annotations

import re
from collections import Counter

from torch import nn

STRATEGIES = ("full", "frozen embeddings", "top-k layers", "BitFit", "LoRA")

COMPONENT_RULES = (                       # first match wins
    (r"lora_[AB]", "LoRA"),
    (r"word_embeddings", "token embeddings"),
    (r"position_embeddings", "position embeddings"),
    (r"token_type_embeddings", "token type embeddings"),
    (r"embeddings\.LayerNorm", "embedding LayerNorm"),
    (r"pooler", "pooler"),
    (r"cls\.predictions", "MLM head"),
    (r"classifier", "classification head"),
    (r"attention\.self\.(query|key|value)", "attention Q, K, V"),
    (r"attention\.output\.dense", "attention output"),
    (r"LayerNorm", "LayerNorms in layers"),
    (r"intermediate\.dense|layer\.\d+\.output\.dense", "feed-forward"),
)


def _sizes(config) -> tuple[int, ...]:
    return (config.vocab_size, config.max_position_embeddings, config.type_vocab_size, config.hidden_size,
            config.intermediate_size, config.num_hidden_layers)


def layer_formula(config) -> int:
    """One encoder layer: Q, K, V, O (4H² + 4H), FFN (2HF + F + H), two LayerNorms (4H)."""
    _, _, _, H, F, _ = _sizes(config)
    return (4 * H * H + 4 * H) + (2 * H * F + F + H) + 4 * H


def parameter_formulas(config, *, pooler: bool = True, mlm_head: bool = False,
                       num_labels: int | None = None) -> dict[str, int]:
    """Parameters per component of a BERT, from its configuration.

    pooler: BertModel and BertForSequenceClassification have one (H² + H), BertForMaskedLM does not.
    mlm_head: a dense layer (H² + H), a LayerNorm (2H) and an output bias (V); the output weights are the
    token embeddings, tied, so they add nothing. num_labels: a classification head (HC + C).
    """
    V, P, T, H, F, L = _sizes(config)
    formulas = {
        "token embeddings": V * H,
        "position embeddings": P * H,
        "token type embeddings": T * H,
        "embedding LayerNorm": 2 * H,
        "attention Q, K, V": L * 3 * (H * H + H),
        "attention output": L * (H * H + H),
        "feed-forward": L * (2 * H * F + F + H),
        "LayerNorms in layers": L * 4 * H,
    }
    if pooler:
        formulas["pooler"] = H * H + H
    if mlm_head:
        formulas["MLM head"] = H * H + H + 2 * H + V
    if num_labels:
        formulas["classification head"] = H * num_labels + num_labels
    return formulas


def component_of(name: str) -> str:
    """The component a parameter belongs to, from its name in a transformers BERT."""
    for pattern, component in COMPONENT_RULES:
        if re.search(pattern, name):
            return component
    raise ValueError(f"parameter {name!r} does not belong to any known BERT component")


def count_by_component(model: nn.Module, trainable_only: bool = False) -> dict[str, int]:
    """Parameters per component, counted (tied weights once, as model.parameters() yields them)."""
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():
        if param.requires_grad or not trainable_only:
            counts[component_of(name)] += param.numel()
    return dict(counts)


def count_by_layer(model: nn.Module) -> list[int]:
    """Parameters in each encoder layer, counted."""
    counts: Counter[int] = Counter()
    for name, param in model.named_parameters():
        match = re.search(r"encoder\.layer\.(\d+)\.", name)
        if match:
            counts[int(match.group(1))] += param.numel()
    return [counts[i] for i in range(len(counts))]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _encoder_layers(model: nn.Module):
    for module in model.modules():
        if hasattr(module, "layer") and isinstance(module.layer, nn.ModuleList):
            return module.layer
    raise ValueError(f"{type(model).__name__} has no encoder.layer list; apply_strategy expects a transformers BERT")


def apply_strategy(model: nn.Module, strategy: str, *, k: int = 2, r: int = 8, alpha: float = 16.0,
                   targets: tuple[str, ...] = ("query", "value")) -> nn.Module:
    """Set requires_grad for a fine-tuning strategy (LoRA also adds its adapters). Returns the model.

    The task head ("classifier") always trains. "top-k layers" trains the last k layers and the pooler;
    "BitFit" trains every bias (LayerNorm's too); "LoRA" trains rank-r adapters on `targets`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    model.requires_grad_(True)
    if strategy == "frozen embeddings":
        for name, param in model.named_parameters():
            if ".embeddings." in f".{name}":
                param.requires_grad_(False)
    elif strategy == "top-k layers":
        layers = _encoder_layers(model)
        if not 0 <= k <= len(layers):
            raise ValueError(f"k={k} layers, but the model has {len(layers)}")
        model.requires_grad_(False)
        for layer in list(layers)[len(layers) - k:]:
            layer.requires_grad_(True)
        for name, param in model.named_parameters():
            if "pooler" in name or "classifier" in name:
                param.requires_grad_(True)
    elif strategy == "BitFit":
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith("bias") or "classifier" in name)
    elif strategy == "LoRA":
        from .lora import add_lora
        add_lora(model, targets=targets, r=r, alpha=alpha)
    return model


def trainable_formula(config, strategy: str, *, num_labels: int = 2, k: int = 2, r: int = 8,
                      targets: tuple[str, ...] = ("query", "value")) -> int:
    """Trainable parameters of a BertForSequenceClassification under `strategy`, from the configuration."""
    V, P, T, H, F, L = _sizes(config)
    head = H * num_labels + num_labels
    total = sum(parameter_formulas(config, num_labels=num_labels).values())
    if strategy == "full":
        return total
    if strategy == "frozen embeddings":
        return total - (V + P + T) * H - 2 * H
    if strategy == "top-k layers":
        return k * layer_formula(config) + (H * H + H) + head
    if strategy == "BitFit":
        per_layer = 4 * H + (F + H) + 2 * H         # Q, K, V, O biases; FFN biases; two LayerNorm biases
        return L * per_layer + H + H + head         # + embedding LayerNorm bias + pooler bias
    if strategy == "LoRA":
        return L * len(targets) * r * (H + H) + head   # Q and V are H × H: A is r × H, B is H × r
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
