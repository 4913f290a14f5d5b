# generated from chapters/03_model_anatomy.ipynb: edit the notebook, then run make export
"""03 · Anatomy of a model: depth and parameters (深度与参数)"""


import math

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
        # sample the next symbol: how many of the cumulative probabilities a uniform draw exceeds
        x[:, t] = (rng.random((n, 1)) > transitions[x[:, t - 1]].cumsum(1)).sum(1)
    return torch.from_numpy(x)

def mask_tokens(x, generator):
    masked = torch.rand(x.shape, generator=generator) < 0.15
    return x.masked_fill(masked, MASK_ID), x.masked_fill(~masked, -100)   # inputs, labels (-100: ignored)


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'MultiHeadSelfAttention', 'EncoderLayer', 'load_bert_layer', 'Embeddings', 'Encoder', 'encoder_from_bert',
    'layer_formula', 'parameter_formulas', 'count_parameters', 'VOCAB', 'SEQ', 'MASK_ID', 'chain_rng',
    'transitions', 'markov_sequences', 'mask_tokens',
]
