# generated from chapters/09_gpt.ipynb: edit the notebook, then run make export
"""09 · A GPT of your own (从零实现GPT)"""


import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import utils
from utils import add_to_class, evaluating, get_or_build, made_from, seed_everything, train
from utils.data import load_gpt_corpus
from utils.hardware import for_preset
from utils.sweeps import SweepRecord


import re
from collections import Counter

from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tokenizer_models


CHUNK_PATTERN = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def word_counts(text: str) -> dict[tuple[int, ...], int]:
    """Each distinct chunk of `text` (CHUNK_PATTERN) as a tuple of its UTF-8 byte values, with its count."""
    return dict(Counter(tuple(chunk.encode("utf-8")) for chunk in CHUNK_PATTERN.findall(text)))


def pair_counts(words: dict[tuple[int, ...], int]) -> Counter:
    """How often each pair of adjacent ids occurs, each chunk weighted by its count."""
    counts = Counter()
    for ids, n in words.items():
        for pair in zip(ids, ids[1:]):
            counts[pair] += n
    return counts


def merge(ids: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    """`ids` with every occurrence of `pair` (left to right, not overlapping) replaced by `new_id`."""
    merged, i = [], 0
    while i < len(ids):
        if ids[i:i + 2] == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return tuple(merged)


def merge_everywhere(words: dict[tuple[int, ...], int], counts: Counter, pair: tuple[int, int], new_id: int) -> None:
    """Apply one merge to every chunk of `words` that contains `pair`, updating `counts` for those chunks only."""
    for word in [w for w in words if pair[0] in w and pair in zip(w, w[1:])]:
        n = words.pop(word)
        merged = merge(word, pair, new_id)
        for old in zip(word, word[1:]):
            counts[old] -= n
        for new in zip(merged, merged[1:]):
            counts[new] += n
        words[merged] = words.get(merged, 0) + n
    for gone in [p for p, n in counts.items() if n == 0]:
        del counts[gone]


def learn_merges(words: dict[tuple[int, ...], int], num_merges: int) -> tuple[dict[tuple[int, int], int], list[int]]:
    """BPE on chunks of byte ids: returns {pair: new id} in the order learned (ids 256, 257, ...) and the count
    of each merged pair. Most frequent pair first; ties go to the smaller pair of ids."""
    words, counts = dict(words), pair_counts(words)
    merges, merged_counts = {}, []
    for new_id in range(256, 256 + num_merges):
        if not counts:
            break                                   # every chunk is a single token: nothing left to merge
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges[best] = new_id
        merged_counts.append(counts[best])
        merge_everywhere(words, counts, best, new_id)
    return merges, merged_counts


def require_text(text: str, caller: str) -> None:
    """A one-line ValueError unless `text` is a non-empty str."""
    if not isinstance(text, str) or not text:
        got = "an empty string" if isinstance(text, str) else type(text).__name__
        raise ValueError(f"{caller} needs a non-empty string of text, got {got}")


def train_bpe(text: str, num_merges: int) -> tuple[dict[tuple[int, int], int], list[int]]:
    """Byte-level BPE by hand: `num_merges` merges learned on the chunks of `text` (see learn_merges)."""
    require_text(text, "train_bpe")
    if not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges must be a whole number >= 0, got {num_merges!r}")
    return learn_merges(word_counts(text), num_merges)


def token_bytes(merges: dict[tuple[int, int], int]) -> dict[int, bytes]:
    """The vocabulary: each id's bytes. Ids 0-255 are the bytes themselves; a merge joins its pair's bytes."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def encode_chunk(ids: tuple[int, ...], merges: dict[tuple[int, int], int]) -> tuple[int, ...]:
    """One chunk's byte ids after applying `merges`, earliest learned first."""
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            return ids                              # no adjacent pair was ever merged
        ids = merge(ids, pair, merges[pair])
    return ids


def encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Byte-level BPE ids of `text`: chunks (CHUNK_PATTERN), each encoded once however often it occurs."""
    done: dict[str, tuple[int, ...]] = {}
    ids = []
    for chunk in CHUNK_PATTERN.findall(text):
        if chunk not in done:
            done[chunk] = encode_chunk(tuple(chunk.encode("utf-8")), merges)
        ids.extend(done[chunk])
    return ids


def decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    """The text of `ids`: their bytes joined, read as UTF-8 (an incomplete character shows as U+FFFD, �)."""
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


END_OF_TEXT = "<|endoftext|>"
PIECE_BOUNDARY = re.compile(r"(?<=\S)(?=\n)")        # before a newline that follows a non-space character


def text_pieces(text: str) -> list[str]:
    """`text` cut where no chunk can be cut (PIECE_BOUNDARY): the same chunks, which the library counts in parallel."""
    return PIECE_BOUNDARY.split(text)


def train_byte_bpe(text: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2's recipe) trained on `text`: ids 0-255 are the bytes (in the order of
    their printable characters), then vocab_size - 257 merges, then END_OF_TEXT (fewer merges if the text runs
    out of pairs). Deterministic: the same text and size give the same ids."""
    require_text(text, "train_byte_bpe")
    if not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"vocab_size must be an int >= 257 (256 bytes + {END_OF_TEXT}), got {vocab_size!r}")
    tokenizer = Tokenizer(tokenizer_models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)   # keep the text as it is
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(text_pieces(text), trainers.BpeTrainer(
        vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.add_special_tokens([END_OF_TEXT])
    return tokenizer


def chars_per_token(tokenizer: Tokenizer, text: str) -> float:
    """Characters of `text` per token of `tokenizer` (no special tokens added)."""
    require_text(text, "chars_per_token")
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(text_pieces(text), add_special_tokens=False))
    return len(text) / tokens


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention where position i attends to positions 0..i only. q, k, v: (..., seq, d)."""
    seq = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=q.device), diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(width)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rope_angles(positions: int, head_size: int, theta: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of m·θᵢ for m < positions, each (positions, head_size), in the rotate-half layout."""
    frequencies = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), frequencies)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + d/2]) of x (..., seq, d) by its position's angle."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 2048
    context: int = 128            # the longest sequence the model reads
    width: int = 128              # H
    layers: int = 4               # L
    heads: int = 4
    kv_heads: int = 2             # key-value heads (GQA); = heads for plain multi-head attention
    ffn: int = 344                # SwiGLU's hidden size, ~8/3·H
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self):
        if self.width % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}, and heads by "
                             f"kv_heads {self.kv_heads}")

    @property
    def head_size(self) -> int:
        return self.width // self.heads


class Attention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_size = c.heads, c.kv_heads, c.head_size
        self.q_proj = nn.Linear(c.width, c.heads * c.head_size, bias=False)
        self.k_proj = nn.Linear(c.width, c.kv_heads * c.head_size, bias=False)
        self.v_proj = nn.Linear(c.width, c.kv_heads * c.head_size, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_size, c.width, bias=False)


@add_to_class(Attention)
def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    batch, seq, _ = x.shape
    def heads(t, n):                  # (batch, seq, n·d) -> (batch, n, seq, d)
        return t.view(batch, seq, n, self.head_size).transpose(1, 2)
    q = rotate(heads(self.q_proj(x), self.heads), cos, sin)
    k = rotate(heads(self.k_proj(x), self.kv_heads), cos, sin)
    v = heads(self.v_proj(x), self.kv_heads)
    group = self.heads // self.kv_heads           # query heads per key-value head
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.width, c.norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.width, c.norm_eps)
        self.mlp = SwiGLU(c.width, c.ffn)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.width)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.width, c.norm_eps)
        self.lm_head = nn.Linear(c.width, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight                 # tied
        cos, sin = rope_angles(c.context, c.head_size, c.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()


@add_to_class(GPT)
def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids (batch, seq ≤ context) → logits (batch, seq, vocab): at each position, the next token's scores."""
    seq = input_ids.shape[1]
    if seq > self.config.context:
        raise ValueError(f"{seq} tokens in, but the model reads at most {self.config.context}: crop the input")
    x = self.embed_tokens(input_ids)
    for block in self.layers:
        x = block(x, self.cos[:seq], self.sin[:seq])
    return self.lm_head(self.norm(x))


@add_to_class(GPT)
@torch.no_grad()
def reset_parameters(self) -> None:
    """GPT-2's initialisation: N(0, 0.02²) everywhere, residual output projections divided by √(2L); norms 1."""
    std = self.config.init_std
    for name, p in self.named_parameters():
        if name.endswith("layernorm.weight") or name == "norm.weight":
            p.fill_(1.0)
        else:
            scale = math.sqrt(2 * self.config.layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1
            p.normal_(0.0, std / scale)


def parameter_formula(c: GPTConfig) -> int:
    """V·H + L·(2·H·h·d + 2·H·g·d + 3·H·F + 2·H) + H, with the output layer tied to the embeddings."""
    d = c.head_size
    attention = 2 * c.width * c.heads * d + 2 * c.width * c.kv_heads * d
    per_layer = attention + 3 * c.width * c.ffn + 2 * c.width
    return c.vocab_size * c.width + c.layers * per_layer + c.width


def llama_config(c: GPTConfig):
    """The transformers LlamaConfig with the same sizes as `c`."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.width, intermediate_size=c.ffn,
                       num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
                       max_position_embeddings=c.context, rope_theta=c.rope_theta, rms_norm_eps=c.norm_eps,
                       tie_word_embeddings=True, attention_bias=False, mlp_bias=False)


def gpt_config_from_llama(config) -> GPTConfig:
    """Our GPTConfig for a transformers LlamaConfig (e.g. SmolLM2's, in chapter 10)."""
    if not config.tie_word_embeddings or config.hidden_size // config.num_attention_heads != getattr(
            config, "head_dim", config.hidden_size // config.num_attention_heads):
        raise ValueError("this GPT needs tied embeddings and head_dim = hidden_size / num_attention_heads")
    return GPTConfig(vocab_size=config.vocab_size, context=config.max_position_embeddings, width=config.hidden_size,
                     layers=config.num_hidden_layers, heads=config.num_attention_heads,
                     kv_heads=config.num_key_value_heads, ffn=config.intermediate_size,
                     rope_theta=config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None)
                     else config.rope_theta, norm_eps=config.rms_norm_eps)


@torch.no_grad()
def to_llama(model: GPT):
    """A transformers LlamaForCausalLM holding `model`'s weights (same names, under `model.`)."""
    from transformers import LlamaForCausalLM
    llama = LlamaForCausalLM(llama_config(model.config))
    llama.model.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("lm_head")})
    return llama.to(next(model.parameters()).device).eval()


@torch.no_grad()
def from_llama(llama) -> GPT:
    """Our GPT holding the weights of a transformers LlamaForCausalLM (chapter 10 loads SmolLM2 this way)."""
    ours = GPT(gpt_config_from_llama(llama.config))
    ours.load_state_dict({k.removeprefix("model."): v for k, v in llama.state_dict().items()}, strict=False)
    return ours.to(next(llama.parameters()).device).eval()


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by the temperature: below 1 sharpens the distribution, above 1 flattens it."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (its limit 0 is greedy decoding: use greedy=True), "
                         f"got {temperature!r}")
    return logits / temperature


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k largest logits; the others set to -inf. Ties with the k-th largest are all kept."""
    if k < 1:
        raise ValueError(f"top_k is how many tokens to keep: give a whole number >= 1, got {k!r}")
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep each row's most probable tokens until their probabilities add up to p
    (the token that reaches p is kept, and always the most probable one); the others set to -inf."""
    if not 0 <= p <= 1:
        raise ValueError(f"top_p is a probability mass: give a number between 0 and 1, got {p!r}")
    if p == 1:
        return logits                                    # all of the probability: nothing to remove
    sorted_logits, order = torch.sort(logits, dim=-1)    # least probable first
    mass_up_to = sorted_logits.softmax(dim=-1).cumsum(dim=-1)   # each token and all less probable ones
    remove_sorted = mass_up_to <= 1 - p                  # ... hold at most 1 - p: the tokens above hold >= p
    remove_sorted[..., -1] = False                       # the most probable token always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)    # back from sorted order to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Next-token logits (..., vocab) reshaped for sampling: temperature, then top-k, then top-p.
    Removed tokens get -inf, so softmax gives them probability 0."""
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = keep_top_k(logits, top_k)
    if top_p is not None:
        logits = keep_top_p(logits, top_p)
    return logits


def next_token(logits: torch.Tensor, *, greedy: bool = False, generator: torch.Generator | None = None,
               **knobs) -> torch.Tensor:
    """One token id per row of next-token logits (batch, vocab) -> (batch, 1): the most probable one
    (greedy), or a draw from `filter_logits(logits, **knobs)` (temperature, top_k, top_p)."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filter_logits(logits, **knobs).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """`ids` (batch, seq) followed by `max_new_tokens` new tokens per row (on the CPU)."""
    device = next(model.parameters()).device
    with evaluating(model):
        for _ in range(max_new_tokens):
            window = ids[:, -model.config.context:].to(device)     # the model sees at most its context
            logits = model(window)[:, -1, :].float().cpu()          # scores for the next token only
            next_ids = next_token(logits, greedy=greedy, generator=generator,
                                  temperature=temperature, top_k=top_k, top_p=top_p)
            ids = torch.cat([ids.cpu(), next_ids], dim=1)
    return ids


def window_batches(ids: torch.Tensor, context: int, batch_size: int, generator: torch.Generator):
    """Batches of random windows of `ids`: {"input_ids": w[:, :-1], "labels": w[:, 1:]}, (batch, context) each."""
    if len(ids) <= context + 1:
        raise ValueError(f"{len(ids)} tokens cannot fill one window of {context + 1}: use more text or a shorter context")

    def collate(starts):
        windows = torch.stack([ids[s:s + context + 1] for s in starts])
        return {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}
    return torch.utils.data.DataLoader(range(len(ids) - context), batch_size=batch_size, shuffle=True,
                                       drop_last=True, collate_fn=collate, generator=generator)


class NextTokenLoss(nn.Module):
    """The training objective around a GPT: mean cross-entropy of each position's next token."""
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(input_ids).flatten(0, 1), labels.flatten())


@torch.no_grad()
def nats_per_char(model: GPT, tokenizer, text: str, batch_size: int = 16) -> float:
    """Total cross-entropy of `text` under `model` (next token from the ones before, in windows of the model's
    context, starting after <|endoftext|>), divided by len(text)."""
    ids = torch.tensor([tokenizer.token_to_id(END_OF_TEXT)] + tokenizer.encode(text).ids)
    T, device = model.config.context, next(model.parameters()).device
    inputs, targets = ids[:-1], ids[1:]
    cut = len(targets) // T * T
    pieces = [(inputs[:cut].view(-1, T)[i:i + batch_size], targets[:cut].view(-1, T)[i:i + batch_size])
              for i in range(0, cut // T, batch_size)] + [(inputs[cut:][None], targets[cut:][None])]
    with evaluating(model):
        total = sum(nn.functional.cross_entropy(model(x.to(device)).flatten(0, 1).float(), y.to(device).flatten(),
                                                reduction="sum").item() for x, y in pieces if y.numel())
    return total / len(text)


def ngram_nats_per_char(train_ids: torch.Tensor, ids: torch.Tensor, chars: int, vocab_size: int,
                        k: float | None = None) -> float:
    """Nats per character of `ids` (one text's tokens, `chars` characters) under a unigram (k=None) or an
    add-k bigram model counted on `train_ids`."""
    if k is None:
        p = (torch.bincount(train_ids, minlength=vocab_size).double() + 1)
        return -(p / p.sum()).log()[ids[1:]].sum().item() / chars
    pairs = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    pairs.index_put_((train_ids[:-1], train_ids[1:]), torch.ones(len(train_ids) - 1, dtype=torch.float64), accumulate=True)
    p = (pairs + k) / (pairs.sum(1, keepdim=True) + k * vocab_size)
    return -p.log()[ids[:-1], ids[1:]].sum().item() / chars


@dataclass(frozen=True)
class GPTSettings:
    vocab_size: int = 2048          # byte-level BPE: 256 bytes + merges + <|endoftext|>
    context: int = 128
    width: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 344                  # ~8/3 · width, a multiple of 8
    steps: int = 700
    batch_size: int = 32
    lr: float = 6e-3                # chosen on validation (bench/gpt_rates.py, shown below)
    warmup: int = 40
    weight_decay: float = 0.1
    beta2: float = 0.95             # AdamW's second-moment decay: GPT-3 and Llama use 0.95 (PyTorch's default 0.999)
    seed: int = 0
    evaluations: int = 8
    eval_chars: int = 60_000        # of the validation plays, scored at each evaluation (all of them at the end)
    sample_prompt: str = "ACT I.\n\nSCENE I. "   # what the samples during training continue

    def model_config(self) -> GPTConfig:
        return GPTConfig(vocab_size=self.vocab_size, context=self.context, width=self.width, layers=self.layers,
                         heads=self.heads, kv_heads=self.kv_heads, ffn=self.ffn)


GPT_PRESETS = {"cpu": GPTSettings(),
               "gpu": GPTSettings(vocab_size=4096, context=256, width=384, layers=6, heads=6, kv_heads=2, ffn=1024,
                                  steps=4000, batch_size=64, lr=3e-3, warmup=200)}


def gpt_settings(preset: str | None = None, **overrides: Any) -> GPTSettings:
    return replace(for_preset(GPT_PRESETS, preset), **overrides)


def sample_text(model: GPT, tokenizer, prompt: str, new_tokens: int = 60, seed: int = 0) -> str:
    """The model's continuation of `prompt`: `new_tokens` tokens drawn at temperature 0.8 from the top 40, seeded."""
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    out = generate(model, ids, new_tokens, temperature=0.8, top_k=40, generator=torch.Generator().manual_seed(seed))
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


def corpus_identity(splits: dict[str, str]) -> dict[str, str]:
    """The digest of each split's text."""
    return made_from(**{f"{name} text": text for name, text in splits.items()})


def training_inputs(splits: dict[str, str], tokenizer) -> dict[str, str]:
    """What a pretraining run is made from besides its settings: the text of each split, and the tokenizer."""
    return corpus_identity(splits) | {"tokenizer": utils.digest(tokenizer.to_str())}


def training_folder(settings: GPTSettings, inputs: dict[str, str]) -> Path:
    """Where `pretrain_gpt` keeps its checkpoints: one folder per recipe and inputs, in the artifact cache."""
    return utils.cache_root() / "training" / f"gpt-{utils.digest((asdict(settings), inputs))[:10]}"


def pretrain_gpt(settings: GPTSettings, splits: dict[str, str] | None = None, tokenizer=None, *,
                 callbacks=(), **train_options: Any) -> dict[str, Any]:
    """Pretrain a GPT on `splits` (default: load_gpt_corpus()). Returns {"model", "tokenizer", "history", "samples"}.
    `train_options` go to utils.train (progress, live_plot, device, checkpoint_dir=None for no checkpoints)."""
    splits = splits or load_gpt_corpus()
    tokenizer = tokenizer or train_byte_bpe(splits["train"], settings.vocab_size)
    inputs = training_inputs(splits, tokenizer)
    folder = train_options.setdefault("checkpoint_dir", training_folder(settings, inputs))
    generator = seed_everything(settings.seed)
    model = GPT(settings.model_config())
    ids = torch.tensor([tokenizer.token_to_id(END_OF_TEXT)] + tokenizer.encode(splits["train"]).ids)
    probe = splits["validation"][:settings.eval_chars]
    every = max(1, settings.steps // settings.evaluations)
    samples = utils.KeptAtSteps(lambda step: sample_text(model, tokenizer, settings.sample_prompt), steps=(every, settings.steps // 3,
                                settings.steps), folder=folder, name="samples.json")   # kept beside the checkpoints
    if "0" not in samples.kept:
        samples.keep(0)
    history = train(NextTokenLoss(model), window_batches(ids, settings.context, settings.batch_size, generator),
                    steps=settings.steps, lr=settings.lr, warmup=settings.warmup, schedule="cosine",
                    weight_decay=settings.weight_decay, betas=(0.9, settings.beta2), eval_every=every,
                    monitor="validation nats/char", inputs=inputs, callbacks=(samples, *callbacks),
                    metrics=lambda objective: {"validation nats/char": nats_per_char(objective.model, tokenizer, probe)},
                    **{"desc": "GPT pretraining", **train_options})
    return {"model": model.eval(), "tokenizer": tokenizer, "history": history, "samples": samples.kept}


GPT_RATES = (3e-3, 6e-3, 1.2e-2)
RATES_SWEEP = SweepRecord("gpt_rates", made_by="gpt_settings", inputs_named="GPT corpus (FROM_ZERO_GPT_CORPUS)",
                          libraries=("tokenizers",))


def rates_settings(settings: GPTSettings) -> dict[str, Any]:
    """A rate sweep's settings: the recipe without its rate, and the grid."""
    return {**{k: v for k, v in asdict(settings).items() if k != "lr"}, "learning_rates": list(GPT_RATES)}


def rate_row(settings: GPTSettings, lr: float, splits: dict[str, str], tokenizer) -> dict[str, Any]:
    """One run of the recipe at `lr` (no checkpoints), scored on all of the validation text."""
    started = time.perf_counter()
    result = pretrain_gpt(replace(settings, lr=lr), splits, tokenizer, checkpoint_dir=None, progress=False)
    return {"lr": lr, "seed": settings.seed, "validation nats/char": nats_per_char(result["model"], tokenizer,
            splits["validation"]), "seconds": round(time.perf_counter() - started, 1)}


NANOGPT_BENCH = SweepRecord("nanogpt_shakespeare", made_by="gpt_settings", libraries=("tokenizers",),
                            inputs_named="GPT corpus (FROM_ZERO_GPT_CORPUS)")


def nanogpt_bench_settings(preset: str | None = None, split: str = "test") -> dict[str, Any]:
    """What the nanoGPT comparison is made from: the chapter's recipe and the held-out split."""
    return {"chapter": asdict(gpt_settings(preset)), "split": split}


def gpt_identity(settings: GPTSettings, splits: dict[str, str] | None = None) -> dict[str, Any]:
    """What the pretrained GPT is made from: its recipe and the text of each split (its tokenizer is trained
    from that text)."""
    return made_from("GPT pretrained on the next token (chapter 09)", settings,
                     **corpus_identity(splits or load_gpt_corpus()))


def save_gpt(result: dict[str, Any], folder: Path, settings: GPTSettings) -> None:
    """Write the model (safetensors), the tokenizer and the recipe with its results into `folder`."""
    utils.save_module(result["model"], folder / "model.safetensors")
    result["tokenizer"].save(str(folder / "tokenizer.json"))
    history = result["history"]
    (folder / "gpt.json").write_text(json.dumps(
        {"settings": asdict(settings), "config": asdict(result["model"].config), "steps_done": history.steps_done,
         "final validation": {k: v for k, v in history.eval[-1].items() if k != "step"},
         "samples": result["samples"]}, indent=1, ensure_ascii=False))


def load_gpt(folder: str | Path) -> tuple[GPT, Tokenizer]:
    """The model (eval mode) and tokenizer saved by `save_gpt`."""
    folder = Path(folder)
    config = GPTConfig(**json.loads((folder / "gpt.json").read_text())["config"])
    model = utils.load_module(GPT(config), folder / "model.safetensors")
    return model.eval(), Tokenizer.from_file(str(folder / "tokenizer.json"))


def pretrained_gpt(settings: GPTSettings | None = None, *, rebuild: bool = False, **train_options: Any) -> Path:
    """The folder of this chapter's pretrained GPT, trained now (this chapter's recipe) if not cached."""
    settings = settings or gpt_settings()

    def build(folder: Path) -> None:
        save_gpt(pretrain_gpt(settings, **{"progress": True, **train_options}), folder, settings)
    return get_or_build(f"gpt-{digest_name(settings)}", build, version=gpt_identity(settings), rebuild=rebuild)


def store_gpt(result: dict[str, Any], settings: GPTSettings) -> Path:
    """Store a `pretrain_gpt(settings)` result as the cached model: `pretrained_gpt(settings)` returns it from then on."""
    return get_or_build(f"gpt-{digest_name(settings)}", lambda folder: save_gpt(result, folder, settings),
                        version=gpt_identity(settings), rebuild=True)


def digest_name(settings: GPTSettings) -> str:
    """A preset's recipe is named by its preset ("cpu", "gpu"); any other recipe by a digest of its settings."""
    return next((name for name, preset in GPT_PRESETS.items() if preset == settings), utils.digest(settings)[:8])


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'CHUNK_PATTERN', 'word_counts', 'pair_counts', 'merge', 'merge_everywhere', 'learn_merges', 'require_text',
    'train_bpe', 'token_bytes', 'encode_chunk', 'encode', 'decode', 'END_OF_TEXT', 'PIECE_BOUNDARY', 'text_pieces',
    'train_byte_bpe', 'chars_per_token', 'causal_attention', 'RMSNorm', 'rope_angles', 'rotate', 'SwiGLU',
    'GPTConfig', 'Attention', 'Block', 'GPT', 'parameter_formula', 'llama_config', 'gpt_config_from_llama',
    'to_llama', 'from_llama', 'apply_temperature', 'keep_top_k', 'keep_top_p', 'filter_logits', 'next_token',
    'generate', 'window_batches', 'NextTokenLoss', 'nats_per_char', 'ngram_nats_per_char', 'GPTSettings',
    'GPT_PRESETS', 'gpt_settings', 'sample_text', 'corpus_identity', 'training_inputs', 'training_folder',
    'pretrain_gpt', 'GPT_RATES', 'RATES_SWEEP', 'rates_settings', 'rate_row', 'NANOGPT_BENCH',
    'nanogpt_bench_settings', 'gpt_identity', 'save_gpt', 'load_gpt', 'pretrained_gpt', 'store_gpt', 'digest_name',
]
