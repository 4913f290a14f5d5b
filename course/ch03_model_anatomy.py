# generated from chapters/03_model_anatomy.ipynb: edit the notebook, then run make export
"""03 · Anatomy of a model: depth and parameters (深度与参数)"""


import math
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from utils import add_to_class


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float = 0.1):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} must be divisible by the number of heads {heads}")
        self.heads, self.head_size = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.output = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)


@add_to_class(MultiHeadSelfAttention)
def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """x: (batch, seq, hidden). padding_mask: (batch, seq), 1 for real tokens, 0 for padding."""
    batch, seq, hidden = x.shape

    def split_heads(t):                      # (batch, seq, hidden) -> (batch, heads, seq, head_size)
        return t.view(batch, seq, self.heads, self.head_size).transpose(1, 2)
    q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
    scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)       # (batch, heads, seq, seq)
    if padding_mask is not None:             # no token may attend to padding
        blocked = padding_mask[:, None, None, :] == 0
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
    weights = self.dropout(scores.softmax(dim=-1))
    context = (weights @ v).transpose(1, 2).reshape(batch, seq, hidden)  # heads side by side again
    return self.output(context)


class EncoderLayer(nn.Module):
    """Post-LayerNorm, as in BERT: x = LN(x + Attention(x)); x = LN(x + FFN(x))."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1, eps: float = 1e-12):
        super().__init__()
        self.attention = MultiHeadSelfAttention(hidden, heads, dropout)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_up, self.ffn_down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, padding_mask)))
        ffn = self.ffn_down(nn.functional.gelu(self.ffn_up(x)))          # BERT's exact (erf) GELU
        return self.ffn_norm(x + self.dropout(ffn))


@torch.no_grad()
def load_bert_layer(ours: EncoderLayer, bert_layer) -> EncoderLayer:
    """Copy a transformers BertLayer's weights into our EncoderLayer: the names differ, the numbers do not."""
    pairs = [
        (ours.attention.query, bert_layer.attention.self.query),
        (ours.attention.key, bert_layer.attention.self.key),
        (ours.attention.value, bert_layer.attention.self.value),
        (ours.attention.output, bert_layer.attention.output.dense),
        (ours.attention_norm, bert_layer.attention.output.LayerNorm),
        (ours.ffn_up, bert_layer.intermediate.dense),
        (ours.ffn_down, bert_layer.output.dense),
        (ours.ffn_norm, bert_layer.output.LayerNorm),
    ]
    for mine, theirs in pairs:
        mine.weight.copy_(theirs.weight)
        mine.bias.copy_(theirs.bias)
    return ours


class Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_positions: int, token_types: int = 2,
                 dropout: float = 0.1, eps: float = 1e-12):
        super().__init__()
        self.token = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        self.token_type = nn.Embedding(token_types, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if input_ids.shape[1] > self.position.num_embeddings:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens, but the model has only "
                             f"{self.position.num_embeddings} positions; truncate the input")
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return self.dropout(self.norm(self.token(input_ids) + self.position(positions) + self.token_type(types)))


class Encoder(nn.Module):
    """Embeddings followed by `layers` EncoderLayers; returns the last hidden states (batch, seq, hidden)."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, ffn: int, max_positions: int,
                 token_types: int = 2, dropout: float = 0.1, eps: float = 1e-12):
        super().__init__()
        self.embeddings = Embeddings(vocab, hidden, max_positions, token_types, dropout, eps)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn, dropout, eps) for _ in range(layers))

    @classmethod
    def from_config(cls, config) -> "Encoder":
        """Same sizes as a transformers BertConfig (weights freshly initialised by PyTorch's defaults)."""
        return cls(config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                   config.intermediate_size, config.max_position_embeddings, config.type_vocab_size,
                   config.hidden_dropout_prob, config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, padding_mask)
        return x


@torch.no_grad()
def encoder_from_bert(bert_model) -> Encoder:
    """Our Encoder holding the weights of a transformers BertModel (its pooler is not part of the encoder)."""
    ours = Encoder.from_config(bert_model.config).to(bert_model.device)
    theirs = bert_model.embeddings
    ours.embeddings.token.weight.copy_(theirs.word_embeddings.weight)
    ours.embeddings.position.weight.copy_(theirs.position_embeddings.weight)
    ours.embeddings.token_type.weight.copy_(theirs.token_type_embeddings.weight)
    ours.embeddings.norm.load_state_dict(theirs.LayerNorm.state_dict())
    for mine, bert_layer in zip(ours.layers, bert_model.encoder.layer):
        load_bert_layer(mine, bert_layer)
    return ours


def _sizes(config) -> tuple[int, ...]:
    return (config.vocab_size, config.max_position_embeddings, config.type_vocab_size, config.hidden_size,
            config.intermediate_size, config.num_hidden_layers)


def layer_formula(config) -> int:
    """One encoder layer: Q, K, V, O (4H² + 4H), FFN (2HF + F + H), two LayerNorms (4H)."""
    _, _, _, H, F, _ = _sizes(config)
    return (4 * H * H + 4 * H) + (2 * H * F + F + H) + 4 * H


def parameter_formulas(config, *, pooler: bool = True, mlm_head: bool = False,
                       num_labels: int | None = None) -> dict[str, int]:
    """Parameters per component of a BERT (embeddings, attention, feed-forward, norms, pooler), from its configuration."""
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
    if pooler:                   # BertModel and BertForSequenceClassification have one; BertForMaskedLM not
        formulas["pooler"] = H * H + H
    if mlm_head:                 # dense + LayerNorm + output bias; the output weights are the embeddings
        formulas["MLM head"] = H * H + H + 2 * H + V
    if num_labels:
        formulas["classification head"] = H * num_labels + num_labels
    return formulas


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


VOCAB, SEQ, MASK_ID = 64, 16, 64
chain_rng = np.random.default_rng(0)
transitions = np.zeros((VOCAB, VOCAB))
for symbol in range(VOCAB):                               # each symbol has 3 possible successors
    transitions[symbol, chain_rng.choice(VOCAB, 3, replace=False)] = chain_rng.dirichlet(np.ones(3))

def markov_sequences(n, seed):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, SEQ), dtype=np.int64)
    x[:, 0] = rng.integers(VOCAB, size=n)
    for t in range(1, SEQ):
        x[:, t] = (rng.random((n, 1)) > transitions[x[:, t - 1]].cumsum(1)).sum(1)
    return torch.from_numpy(x)

def mask_tokens(x, generator):
    masked = torch.rand(x.shape, generator=generator) < 0.15
    return x.masked_fill(masked, MASK_ID), x.masked_fill(~masked, -100)   # inputs, labels (-100: ignored)


class LoRALinear(nn.Module):
    """`base` (frozen) plus a rank-`r` update scaled by `alpha / r`."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
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
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling


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


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def add_lora(model: nn.Module, targets: Iterable[str] = ("query", "value"), r: int = 8, alpha: float = 16.0,
             dropout: float = 0.0, trainable: Iterable[str] = ("classifier",)) -> nn.Module:
    """Wrap every nn.Linear whose name ends with one of `targets` in a LoRALinear; freeze everything else
    except modules whose name contains one of `trainable` (the new task head). Returns the model."""
    targets, trainable = tuple(targets), tuple(trainable)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.split(".")[-1] in targets]
    if not found:
        raise ValueError(f"no nn.Linear named {targets} in {type(model).__name__}; "
                         "look at [name for name, _ in model.named_modules()] for the right names")
    model.requires_grad_(False)
    for name, module in found:
        _replace_module(model, name, LoRALinear(module, r=r, alpha=alpha, dropout=dropout))
    for name, param in model.named_parameters():
        if any(t in name for t in trainable):
            param.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged nn.Linear, in place. Returns the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace_module(model, name, module.merged())
    return model


STRATEGIES = ("full", "frozen embeddings", "top-k layers", "BitFit", "LoRA")


def apply_strategy(model: nn.Module, strategy: str, *, k: int = 2, r: int = 8, alpha: float = 16.0,
                   targets: tuple[str, ...] = ("query", "value")) -> nn.Module:
    """Set requires_grad for a fine-tuning strategy (LoRA also adds its adapters). Returns the model.
    The head ("classifier") always trains; "top-k layers" trains the last k layers and the pooler."""
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
    elif strategy == "BitFit":                   # every bias, LayerNorm's too
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith("bias") or "classifier" in name)
    elif strategy == "LoRA":
        add_lora(model, targets=targets, r=r, alpha=alpha)
    return model


def _encoder_layers(model: nn.Module):
    for module in model.modules():
        if hasattr(module, "layer") and isinstance(module.layer, nn.ModuleList):
            return module.layer
    raise ValueError(f"{type(model).__name__} has no encoder.layer list; apply_strategy expects a transformers BERT")


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


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'MultiHeadSelfAttention', 'EncoderLayer', 'load_bert_layer', 'Embeddings', 'Encoder', 'encoder_from_bert',
    'layer_formula', 'parameter_formulas', 'COMPONENT_RULES', 'component_of', 'count_by_component',
    'count_by_layer', 'count_parameters', 'VOCAB', 'SEQ', 'MASK_ID', 'chain_rng', 'transitions', 'markov_sequences',
    'mask_tokens', 'LoRALinear', 'add_lora', 'merge_lora', 'STRATEGIES', 'apply_strategy', 'trainable_formula',
]
