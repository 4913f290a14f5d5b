# generated from chapters/10_llm.ipynb: edit the notebook, then run make export
"""10 · A real LLM through your own code (推理: 权重, 对话模板, KV缓存)"""


import json
import struct
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from course.ch09_gpt import GPT, GPTConfig, next_token, rotate
from utils import add_to_class
from utils.serving import openai_error, openai_plumbing


SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class Cursor:
    """Reads GGUF's little-endian fields one after another from `data`, starting at byte `at`."""
    def __init__(self, data: bytes, at: int = 0):
        self.data, self.at = data, at

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.scalar("<Q")
        self.at += size
        return bytes(self.data[self.at - size:self.at]).decode("utf-8")

    def value(self, kind: int):
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item_kind, count = self.scalar("<I"), self.scalar("<Q")
            return [self.value(item_kind) for _ in range(count)]
        return self.scalar(SCALARS[kind])


def read_gguf(data: bytes) -> dict[str, Any]:
    """The header of a GGUF file's bytes: version, metadata, tensors (name -> shape, type, offset), data start."""
    if bytes(data[:4]) != b"GGUF":
        raise ValueError(f"not a GGUF file: it starts with {bytes(data[:4])!r}, not b'GGUF'")
    cursor = Cursor(data, at=4)
    version, n_tensors, n_metadata = cursor.scalar("<I"), cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = {}
    for _ in range(n_metadata):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<I"))
    tensors = {}
    for _ in range(n_tensors):
        name, dims = cursor.string(), cursor.scalar("<I")
        shape = [cursor.scalar("<Q") for _ in range(dims)][::-1]
        tensors[name] = {"shape": shape, "type": cursor.scalar("<I"), "offset": cursor.scalar("<Q")}
    align = metadata.get("general.alignment", 32)
    return {"version": version, "metadata": metadata, "tensors": tensors, "start": -(-cursor.at // align) * align}


def dequantize_q4_1_block(block: bytes) -> np.ndarray:
    """The 32 weights of one Q4_1 block (20 bytes): scale d and minimum m (float16), then 16 bytes of 4-bit q."""
    d, m = np.frombuffer(block[:4], dtype=np.float16).astype(np.float32)
    packed = np.frombuffer(block[4:20], dtype=np.uint8)
    q = np.concatenate([packed & 0x0F, packed >> 4])       # low nibbles: weights 0-15; high nibbles: 16-31
    return d * q.astype(np.float32) + m


BLOCK_BYTES = {3: 20, 8: 34}                    # Q4_1, Q8_0: bytes per block of 32 weights


def tensor_bytes(info: dict[str, Any]) -> int:
    count = int(np.prod(info["shape"]))
    return 4 * count if info["type"] == 0 else count // 32 * BLOCK_BYTES[info["type"]]


def dequantize(raw: bytes, info: dict[str, Any]) -> np.ndarray:
    """One tensor's bytes -> float32 array of its shape (types F32, Q4_1 and Q8_0)."""
    kind, shape = info["type"], info["shape"]
    if kind == 0:
        return np.frombuffer(raw, dtype=np.float32).reshape(shape)
    if kind not in BLOCK_BYTES:
        raise ValueError(f"GGML type {kind} is not read here; this reader knows F32 (0), Q4_1 (3) and Q8_0 (8)")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, BLOCK_BYTES[kind])
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if kind == 8:
        return (d * blocks[:, 2:].copy().view(np.int8)).reshape(shape)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([blocks[:, 4:] & 0x0F, blocks[:, 4:] >> 4], axis=1)
    return (d * q + m).reshape(shape)


def gguf_tensor(data: bytes, header: dict[str, Any], name: str) -> np.ndarray:
    info = header["tensors"][name]
    start = header["start"] + info["offset"]
    return dequantize(data[start:start + tensor_bytes(info)], info)


def gguf_config(metadata: dict[str, Any]) -> GPTConfig:
    """Chapter 09's GPTConfig for a Llama-architecture GGUF file's metadata."""
    if metadata.get("general.architecture") != "llama":
        raise ValueError(f"this reader loads Llama-architecture files, not {metadata.get('general.architecture')!r}")
    llama = {key.removeprefix("llama."): value for key, value in metadata.items() if key.startswith("llama.")}
    return GPTConfig(vocab_size=len(metadata["tokenizer.ggml.tokens"]), context=llama["context_length"],
                     width=llama["embedding_length"], layers=llama["block_count"],
                     heads=llama["attention.head_count"], kv_heads=llama["attention.head_count_kv"],
                     ffn=llama["feed_forward_length"], rope_theta=llama["rope.freq_base"],
                     norm_eps=llama["attention.layer_norm_rms_epsilon"])


GGUF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def our_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'layers.3.self_attn.q_proj.weight' (chapter 09's module names)."""
    if gguf_name.startswith("blk."):
        _, layer, part, kind = gguf_name.split(".")
        return f"layers.{layer}.{GGUF_NAMES[part]}.{kind}"
    return {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight"}[gguf_name]


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's row order for RoPE (pairs 2i, 2i+1) back to rotate-half's (pairs i, i + d/2), per head."""
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


@torch.no_grad()
def gpt_from_gguf(path: str | Path) -> GPT:
    """Chapter 09's GPT holding a Llama GGUF file's weights (dequantized to float32), in eval mode."""
    data = Path(path).read_bytes()
    header = read_gguf(data)
    config = gguf_config(header["metadata"])
    model = GPT(config)
    weights = {}
    for name in header["tensors"]:
        weight = gguf_tensor(data, header, name)
        if ".attn_q." in name or ".attn_k." in name:
            weight = unpermute(weight, config.heads if ".attn_q." in name else config.kv_heads)
        weights[our_name(name)] = torch.from_numpy(weight.copy())
    missing = set(model.state_dict()) - set(weights) - {"lm_head.weight"}     # lm_head is tied to embed_tokens
    if missing:
        raise ValueError(f"{path} has no weights for {sorted(missing)[:3]}…: not a complete Llama GGUF file")
    model.load_state_dict(weights, strict=False)
    return model.eval()


def quantize_q4_1(weight: np.ndarray) -> np.ndarray:
    """`weight` (…, n·32) through Q4_1 and back: per block of 32, d = (max − min) / 15, m = min, q = round((w − m) / d)."""
    blocks = weight.reshape(-1, 32)
    low, high = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    d = ((high - low) / 15).astype(np.float16).astype(np.float32)
    m = low.astype(np.float16).astype(np.float32)
    q = np.clip(np.round((blocks - m) / np.where(d == 0, 1, d)), 0, 15)
    return (d * q + m).reshape(weight.shape)


DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat_prompt(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """SmolLM2's chat template (ChatML) by hand: the text the model reads for a conversation."""
    if messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class KVCache:
    """For each layer, the keys and values of every position so far, each (batch, kv_heads, positions, head_size)."""
    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def add(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' k and v to `layer`'s; return all of them."""
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values if t is not None)


def cached_attention(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     cache: KVCache, layer: int, mask: torch.Tensor) -> torch.Tensor:
    """Chapter 09's Attention (module `attn`) on the new positions `x`, reading and extending the cache."""
    batch, seq, _ = x.shape
    def heads(t, n):                  # (batch, seq, n·d) -> (batch, n, seq, d)
        return t.view(batch, seq, n, attn.head_size).transpose(1, 2)
    q = rotate(heads(attn.q_proj(x), attn.heads), cos, sin)
    k = rotate(heads(attn.k_proj(x), attn.kv_heads), cos, sin)
    k, v = cache.add(layer, k, heads(attn.v_proj(x), attn.kv_heads))
    group = attn.heads // attn.kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


@torch.no_grad()
def forward_cached(model: GPT, ids: torch.Tensor, cache: KVCache, real: torch.Tensor) -> torch.Tensor:
    """ids (batch, new) after len(cache) positions; real (batch, len(cache) + new) bool -> logits (batch, new, vocab)."""
    past, new = len(cache), ids.shape[1]
    if past + new > model.config.context:
        raise ValueError(f"{past + new} positions, but the model reads at most {model.config.context}")
    positions = (real.long().cumsum(1) - 1).clamp(min=0)[:, past:]
    cos, sin = model.cos[positions].unsqueeze(1), model.sin[positions].unsqueeze(1)
    query_at = torch.arange(past, past + new, device=ids.device)[:, None]
    key_at = torch.arange(past + new, device=ids.device)[None, :]
    mask = ((key_at <= query_at) & real[:, None, :]) | (key_at == query_at)      # (batch, new, all)
    x = model.embed_tokens(ids)
    for layer, block in enumerate(model.layers):
        x = x + cached_attention(block.self_attn, block.input_layernorm(x), cos, sin, cache, layer, mask[:, None])
        x = x + block.mlp(block.post_attention_layernorm(x))
    return model.lm_head(model.norm(x))


@torch.no_grad()
def generate_stream(model: GPT, prompts: list[list[int]], max_new_tokens: int, *, stop: tuple[int, ...] = (),
                    greedy: bool = True, logits_rule=None, generator: torch.Generator | None = None,
                    cache: KVCache | None = None, **knobs: Any) -> Iterator[torch.Tensor]:
    """Yield, step by step, a (batch,) tensor of new token ids (−1 once a row has produced a stop token)."""
    device, width = model.embed_tokens.weight.device, max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])
    real = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    cache = KVCache(len(model.layers)) if cache is None else cache      # an empty cache of any kind
    done = torch.zeros(len(prompts), dtype=torch.bool)
    logits = forward_cached(model, ids.to(device), cache, real.to(device))[:, -1].float().cpu()
    seen = ids.masked_fill(~real, -1)                          # what each row holds, for a logits rule
    stop_ids = torch.tensor(stop, dtype=torch.long)
    for _ in range(max_new_tokens):
        if logits_rule is not None:
            logits = logits_rule(logits, seen)
        token = next_token(logits, greedy=greedy, generator=generator, **knobs).squeeze(1).masked_fill(done, -1)
        yield token
        done |= torch.isin(token, stop_ids) | (token < 0)
        if done.all() or len(cache) + 1 > model.config.context:
            return
        seen, real = torch.cat([seen, token[:, None]], 1), torch.cat([real, ~done[:, None]], 1)
        logits = forward_cached(model, token.clamp(min=0)[:, None].to(device), cache, real.to(device))[:, -1].float().cpu()


def generate_ids(model: GPT, prompts: list[list[int]], max_new_tokens: int, **options: Any) -> list[list[int]]:
    """Each prompt's new tokens (stop token included, nothing after it)."""
    rows = [[] for _ in prompts]
    for step in generate_stream(model, prompts, max_new_tokens, **options):
        for row, token in zip(rows, step.tolist()):
            if token >= 0:
                row.append(token)
    return rows


class TextStream:
    """Token ids in, text pieces out; a piece is released only when its bytes decode (no split characters)."""
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip, self.ids, self.sent = tokenizer, skip_special_tokens, [], 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
        if text.endswith("\ufffd"):          # an incomplete character: wait for the next token
            return ""
        piece, self.sent = text[self.sent:], len(text)
        return piece


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty: the logit of every token in `seen` (batch, n; −1 = padding) is divided by `penalty`
    where positive and multiplied by it where negative."""
    counts = torch.zeros_like(logits).scatter_add_(1, seen.clamp(min=0), (seen >= 0).to(logits.dtype))
    return torch.where(counts > 0, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def repetition_penalty(penalty: float):
    """`penalize_repeats` with θ = `penalty`, as a logits rule for generate_stream and generate_ids."""
    return lambda logits, seen: penalize_repeats(logits, seen, penalty)


from typing import Literal

from pydantic import BaseModel, Field


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):              # fields we do not implement (tools, logprobs, stop, …) are ignored
    model: str = "smollm2"
    messages: list[Message] = Field(min_length=1)
    max_tokens: int = Field(default=128, gt=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)         # 0: greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)                           # one answer per request
    stream: bool = False
    stream_options: StreamOptions | None = None


class ContextTooLong(ValueError):
    """The prompt, or the prompt and max_tokens, do not fit in the model's context."""


class ChatModel:
    """A model and its tokenizer behind a lock: `pieces(request)` yields text pieces, then the finish reason."""
    def __init__(self, model: GPT, tokenizer, name: str = "smollm2", stop: tuple[int, ...] = (2,)):
        import threading
        self.model, self.tokenizer, self.name, self.stop = model, tokenizer, name, stop
        self.lock = threading.Lock()

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        ids = self.tokenizer(chat_prompt([m.model_dump() for m in request.messages])).input_ids
        context = self.model.config.context
        if len(ids) >= context:
            raise ContextTooLong(f"the prompt is {len(ids)} tokens, longer than the model's context of {context}; "
                                 "shorten the conversation")
        if len(ids) + request.max_tokens > context:
            raise ContextTooLong(f"the prompt is {len(ids)} tokens and max_tokens is {request.max_tokens}: together "
                                 f"more than the model's context of {context}; shorten the conversation or max_tokens")
        return ids


@add_to_class(ChatModel)
def pieces(self, request: ChatRequest, ids: list[int]) -> Iterator[str | dict]:
    """The answer's text pieces, then {"finish_reason": "stop" or "length", "completion_tokens": n}."""
    generator = torch.Generator()
    generator.manual_seed(request.seed) if request.seed is not None else generator.seed()
    sampling = {"greedy": True} if request.temperature == 0 else {
        "greedy": False, "temperature": request.temperature, "top_p": request.top_p, "generator": generator}
    steps = generate_stream(self.model, [ids], request.max_tokens, stop=self.stop, **sampling)
    text, finish, count = TextStream(self.tokenizer), "length", 0
    while True:
        with self.lock:                       # one step of one request at a time
            token = next(steps, None)
        if token is None:
            break
        count += 1
        if int(token[0]) in self.stop:
            finish = "stop"
            break
        piece = text.add(int(token[0]))
        if piece:
            yield piece
    yield {"finish_reason": finish, "completion_tokens": count}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse_events(pieces: Iterator[str | dict], head: dict[str, Any], prompt_tokens: int,
               include_usage: bool = False) -> Iterator[str]:
    """Server-sent events for a stream of pieces: a role chunk, a chunk per piece, a finish chunk, [DONE]."""
    def event(choices, **extra):
        return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"
    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    for piece in pieces:
        if isinstance(piece, str):
            yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        else:
            yield event([{"index": 0, "delta": {}, "finish_reason": piece["finish_reason"]}])
            if include_usage:
                yield event([], usage=usage(prompt_tokens, piece["completion_tokens"]))
    yield "data: [DONE]\n\n"


def chat_routes(app, chat: ChatModel) -> None:
    """Add OpenAI's POST /v1/chat/completions (and GET /v1/models, OpenAI's error format) to a FastAPI app."""
    from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
    from fastapi.responses import StreamingResponse
    openai_plumbing(app, chat.name)                # utils.serving: error format, GET /v1/models

    @app.post("/v1/chat/completions")
    async def completions(request: ChatRequest):
        if request.model != chat.name:
            return openai_error(404, f"model {request.model!r} is not served here; this service serves "
                                     f"{chat.name!r}", param="model", code="model_not_found")
        try:
            ids = chat.prompt_ids(request)
        except ContextTooLong as problem:
            return openai_error(400, str(problem), param="messages", code="context_length_exceeded")
        head = {"id": f"chatcmpl-{time.time_ns():x}", "created": int(time.time()), "model": chat.name}
        if request.stream:
            usage_wanted = bool(request.stream_options and request.stream_options.include_usage)
            events = sse_events(chat.pieces(request, ids), head, len(ids), usage_wanted)
            return StreamingResponse(iterate_in_threadpool(events), media_type="text/event-stream")
        *pieces, end = await run_in_threadpool(list, chat.pieces(request, ids))
        return {**head, "object": "chat.completion", "usage": usage(len(ids), end["completion_tokens"]),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                             "finish_reason": end["finish_reason"]}]}


def create_chat_app(chat: ChatModel):
    """A FastAPI app serving `chat`: OpenAI's chat routes and GET /health."""
    from fastapi import FastAPI
    app = FastAPI(title="From Zero chat")
    chat_routes(app, chat)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": chat.name, "context": chat.model.config.context}
    return app


from utils.sweeps import SweepRecord

LLM_BENCH = SweepRecord("llm_decode", made_by="llm_bench_settings", inputs_named="SmolLM2's GGUF file",
                        libraries=("transformers", "gguf", "llama_cpp"))


def llm_bench_settings() -> dict[str, Any]:
    """What bench/llm_decode.py measures: greedy tokens after a chat prompt, on the CPU, this many threads."""
    return {"question": "Tell me a short story about a dragon.", "new_tokens": 128, "threads": 2, "repeats": 3}


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'SCALARS', 'STRING', 'ARRAY', 'Cursor', 'read_gguf', 'dequantize_q4_1_block', 'BLOCK_BYTES', 'tensor_bytes',
    'dequantize', 'gguf_tensor', 'gguf_config', 'GGUF_NAMES', 'our_name', 'unpermute', 'gpt_from_gguf',
    'quantize_q4_1', 'DEFAULT_SYSTEM', 'chat_prompt', 'KVCache', 'cached_attention', 'forward_cached',
    'generate_stream', 'generate_ids', 'TextStream', 'penalize_repeats', 'repetition_penalty', 'Message',
    'StreamOptions', 'ChatRequest', 'ContextTooLong', 'ChatModel', 'usage', 'sse_events', 'chat_routes',
    'create_chat_app', 'LLM_BENCH', 'llm_bench_settings',
]
