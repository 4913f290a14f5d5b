"""Chapter 09's GPT against nanoGPT's shakespeare_char CPU recipe, for the same wall time, in held-out nats/char.

    python -m bench.nanogpt_shakespeare                   # the chapter's cpu preset, then nanoGPT for as long
    python -m bench.nanogpt_shakespeare --seconds 180     # nanoGPT's time set by hand
    python -m bench.nanogpt_shakespeare --only nanogpt --seconds 60
    python -m bench.nanogpt_shakespeare --quick           # smoke test: tiny models, short texts, under a minute

The chapter's model (course.ch09_gpt: byte-level BPE, RMSNorm, RoPE, SwiGLU, GQA) trains on the CPU with its preset
recipe. Its time counts its optimizer steps only: a step that also evaluated or sampled, and the first (after the
tokenizer and model set-up), counts as the median step. nanoGPT then trains as long: karpathy/nanoGPT's model.py
written compactly here (learned positions, pre-norm LayerNorm, no biases, GELU MLP 4x, causal
scaled_dot_product_attention, tied embeddings, dropout 0, N(0, 0.02) init, residual projections at
0.02/sqrt(2 n_layer)) with its README's CPU command line on config/train_shakespeare_char.py: block 64, batch 12,
4 layers, 4 heads, width 128, AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on matrices and embeddings,
clip 1.0, 100 warmup steps then cosine to 1e-4, random windows, seed 1337; the vocabulary is the sorted set of the
training split's characters (an unseen held-out character is an error). The time budget replaces max_iters: the
speed of the first 20 steps, then of the warmup's, sets max_iters = lr_decay_iters before the cosine starts, so that
it ends at the time limit; training also stops at the limit should the machine slow down.

Both models are scored on the same held-out split (--split) as the total cross-entropy of its text, token after
token, divided by its characters, in windows of each model's context side by side (course.ch09_gpt.nats_per_char's
way, the chapter's text starting after <|endoftext|>, the characters after "\\n") and, as "sliding", at a stride of
half the context (every token past the first window sees at least half a context). nanoGPT is also scored on the
chapter's validation probe at the chapter's evaluation times (the clock paused), for a curve of both.
On a machine where another process is busy, --threads 1: torch's threads wait on each other otherwise.
Run in full (no --quick, --only or --seconds), it writes bench/results/nanogpt_shakespeare_{preset}.json, the
record chapter 09 reads (its rows, with what they were made from: the chapter's recipe and the corpus).
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.data import load_gpt_corpus
from utils.loop import adamw_param_groups


@dataclass(frozen=True)
class NanoRecipe:
    """nanoGPT's README CPU command line on config/train_shakespeare_char.py (train.py's defaults elsewhere)."""
    block_size: int = 64
    batch_size: int = 12
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)); no biases."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.attn_c_proj = nn.Linear(width, width, bias=False)
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.mlp_c_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_c_proj(y)
        return x + self.mlp_c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    """nanoGPT's GPT (bias=False, dropout 0): token + learned position embeddings, blocks, LayerNorm, tied head."""

    def __init__(self, vocab_size: int, recipe: NanoRecipe):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, recipe.n_embd), nn.Embedding(recipe.block_size, recipe.n_embd)
        self.blocks = nn.ModuleList(Block(recipe.n_embd, recipe.n_head) for _ in range(recipe.n_layer))
        self.ln_f = nn.LayerNorm(recipe.n_embd, bias=False)
        self.lm_head = nn.Linear(recipe.n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                scale = math.sqrt(2 * recipe.n_layer) if name.endswith("c_proj.weight") else 1.0
                nn.init.normal_(p, mean=0.0, std=0.02 / scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def char_vocabulary(train_text: str) -> dict[str, int]:
    """nanoGPT's data/shakespeare_char/prepare.py: the sorted set of characters, here of the training split only."""
    return {c: i for i, c in enumerate(sorted(set(train_text)))}


def encode_chars(text: str, vocab: dict[str, int]) -> torch.Tensor:
    unseen = sorted(set(text) - vocab.keys())
    if unseen:
        raise ValueError(f"characters absent from the training split, which the character model cannot score: "
                         f"{''.join(unseen)!r}")
    return torch.tensor([vocab[c] for c in text], dtype=torch.long)


def nano_lr(it: int, recipe: NanoRecipe, max_iters: int) -> float:
    """nanoGPT's get_lr with lr_decay_iters = max_iters (warmup shortened to a tenth of a run that short)."""
    warmup = min(recipe.warmup_iters, max_iters // 10)
    if it < warmup:
        return recipe.lr * (it + 1) / (warmup + 1)
    if it > max_iters:
        return recipe.min_lr
    coeff = 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / max(1, max_iters - warmup)))
    return recipe.min_lr + coeff * (recipe.lr - recipe.min_lr)


@torch.no_grad()
def windowed_nats(model: nn.Module, ids: torch.Tensor, chars: int, context: int, stride: int, batch: int = 64) -> float:
    """Cross-entropy of ids[1:] (ids[0] is the start: <|endoftext|> or "\\n") per character of the `chars`-character
    text. Windows of `context` tokens every `stride` tokens, each scoring its last `stride` targets (the first window
    all of its own): stride = context is course.ch09_gpt.nats_per_char's way (windows side by side); stride =
    context/2 gives every token past the first window at least context/2 tokens before it ("sliding")."""
    def nll(inputs, targets):
        return F.cross_entropy(model(inputs).transpose(1, 2).float(), targets, reduction="none")
    x, y, training = ids[:-1], ids[1:], model.training
    model.eval()
    if len(y) <= context:
        total = nll(x[None], y[None]).sum().item()
    else:
        xs, ys = x.unfold(0, context, stride), y.unfold(0, context, stride)
        keep = torch.zeros_like(ys, dtype=torch.bool)
        keep[0], keep[1:, -stride:] = True, True
        total = sum(nll(xs[i:i + batch], ys[i:i + batch])[keep[i:i + batch]].sum().item()
                    for i in range(0, len(xs), batch))
        covered = context + (len(xs) - 1) * stride
        if covered < len(y):                       # the tail, with as much context as the windows' scored part
            start = covered - (context - stride)
            total += nll(x[None, start:], y[None, start:])[0, covered - start:].sum().item()
    model.train(training)
    return total / chars


def train_nanogpt(text: str, vocab: dict[str, int], seconds: float, recipe: NanoRecipe, probe: str,
                  marks: list[float]) -> dict:
    """nanoGPT for `seconds` of training; max_iters from the speed of the warmup. At each of `marks` (seconds of
    training, the clock paused) `probe` is scored the chapter's way (windows side by side)."""
    torch.manual_seed(recipe.seed)
    data, model = encode_chars(text, vocab), NanoGPT(len(vocab), recipe)
    probe_ids, marks = encode_chars("\n" + probe, vocab), sorted(marks)
    optimizer = torch.optim.AdamW(adamw_param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas)
    max_iters, curve, it, spent = None, [], 0, 0.0

    def score_marks(until: float) -> None:
        while marks and marks[0] <= until:
            marks.pop(0)
            curve.append((spent, it, windowed_nats(model, probe_ids, len(probe), *[recipe.block_size] * 2)))
    while spent < seconds and (max_iters is None or it <= max_iters):   # nanoGPT: iterations 0 … max_iters
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = nano_lr(it, recipe, max_iters if max_iters is not None else 10**9)
        ix = torch.randint(len(data) - recipe.block_size, (recipe.batch_size,))
        chunk = data[ix[:, None] + torch.arange(recipe.block_size + 1)]
        loss = F.cross_entropy(model(chunk[:, :-1]).flatten(0, 1), chunk[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it, spent = it + 1, spent + time.perf_counter() - started
        if it == 20 or (max_iters and it == min(recipe.warmup_iters, max_iters // 10)):   # before the cosine
            max_iters = max(it, int(seconds / spent * it) - 1)
        score_marks(spent)
    score_marks(float("inf"))
    return {"model": model, "steps": it, "seconds": spent, "loss": loss.item(), "curve": curve, "max_iters": max_iters}


def train_chapter(splits: dict[str, str], preset: str, overrides: dict) -> dict:
    """course.ch09_gpt's recipe on the CPU. Its seconds: the optimizer steps only; a step that also evaluated or
    sampled, and the first (after the tokenizer and model set-up), is counted at the median step time."""
    from course.ch09_gpt import gpt_settings, pretrain_gpt
    settings = gpt_settings(preset, **overrides)
    stamps = [time.perf_counter()]
    result = pretrain_gpt(settings, splits, callbacks=[lambda step, history: stamps.append(time.perf_counter())],
                          progress=False, checkpoint_dir=None, device="cpu")
    history = result["history"]
    busy = {1} | {row["step"] for row in history.eval} | {int(step) for step in result["samples"]}
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]                  # gaps[i]: step i + 1
    typical = statistics.median([g for step, g in enumerate(gaps, 1) if step not in busy] or gaps)
    at = list(itertools.accumulate(typical if step in busy else g for step, g in enumerate(gaps, 1)))
    curve = [(at[row["step"] - 1], row["step"], row["validation nats/char"]) for row in history.eval]
    return {**result, "settings": settings, "steps": len(gaps), "seconds": at[-1], "wall": stamps[-1] - stamps[0],
            "curve": curve}


def baselines(tokenizer, splits: dict[str, str], held_out: str) -> list[dict]:
    """The chapter's unigram and add-k bigram over its tokens (k chosen on validation, as the chapter does)."""
    from course.ch09_gpt import END_OF_TEXT, ngram_nats_per_char
    def ids(text):
        return torch.tensor([tokenizer.token_to_id(END_OF_TEXT)] + tokenizer.encode(text).ids)
    train, validation, test = ids(splits["train"]), ids(splits["validation"]), ids(held_out)
    vocab = tokenizer.get_vocab_size()
    k = min((0.001, 0.01, 0.1, 1.0), key=lambda k: ngram_nats_per_char(train, validation, len(splits["validation"]),
                                                                        vocab, k))
    return [{"model": name, "nats/char": ngram_nats_per_char(train, test, len(held_out), vocab, kk)}
            for name, kk in (("unigram (chapter's BPE)", None), (f"bigram add-{k} (chapter's BPE)", k))]


def result_row(name: str, model: nn.Module, per_step: int, chars_per_token: float, steps: int, seconds: float,
               ids: torch.Tensor, chars: int, context: int) -> dict:
    score = functools.partial(windowed_nats, model, ids, chars, context)
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "tokens/step": per_step,
            "chars/step": round(per_step * chars_per_token), "steps": steps, "seconds": seconds,
            "tokens/s": round(per_step * steps / seconds), "nats/char": score(context), "sliding": score(context // 2)}


def print_table(rows: list[dict]) -> None:
    """Rows as aligned columns: integers with thousands separators, seconds to 0.1, nats to 0.0001."""
    def cell(key, value):
        return value if isinstance(value, str) else f"{value:,}" if isinstance(value, int) else \
            f"{value:.1f}" if key == "seconds" else f"{value:.4f}"
    keys = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[cell(k, row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    for line in [keys] + cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))


def chapter_arm(splits: dict[str, str], held_out: str, preset: str, overrides: dict) -> tuple[dict, list[dict]]:
    """The chapter's run, and its row with the chapter's n-gram baselines under it."""
    from course.ch09_gpt import END_OF_TEXT, chars_per_token, nats_per_char
    chapter = train_chapter(splits, preset, overrides)
    settings, tokenizer = chapter["settings"], chapter["tokenizer"]
    print(f"chapter 09: {chapter['steps']} steps, {chapter['seconds']:.1f} s of training "
          f"({chapter['wall']:.1f} s with its set-up, evaluations and samples)", flush=True)
    ids = torch.tensor([tokenizer.token_to_id(END_OF_TEXT)] + tokenizer.encode(held_out).ids)
    row = result_row("chapter 09 GPT (BPE)", chapter["model"], settings.batch_size * settings.context,
                     chars_per_token(tokenizer, held_out), chapter["steps"], chapter["seconds"], ids, len(held_out),
                     settings.context)
    official = nats_per_char(chapter["model"], tokenizer, held_out)
    if abs(official - row["nats/char"]) > 1e-4:
        print(f"warning: course.ch09_gpt.nats_per_char gives {official:.4f}, not {row['nats/char']:.4f}: it no longer "
              f"scores windows side by side, so the two models are not scored the same way")
    return chapter, [row, *baselines(tokenizer, splits, held_out)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu", help="the chapter's recipe (run on the CPU)")
    parser.add_argument("--seconds", type=float, default=None, help="nanoGPT's time (default: the chapter's)")
    parser.add_argument("--split", choices=("test", "validation"), default="test", help="the held-out text")
    parser.add_argument("--only", choices=("chapter", "nanogpt"), default=None)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny models, short texts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write the rows and curves to this JSON file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits, recipe, overrides, probe_chars = load_gpt_corpus(), NanoRecipe(), {}, 60_000
    vocab = char_vocabulary(splits["train"])             # of the whole training split, --quick too
    if args.quick:
        splits = {"train": splits["train"][:300_000], **{k: splits[k][:20_000] for k in ("validation", "test")}}
        recipe, overrides = NanoRecipe(n_layer=2), {"layers": 2, "steps": 30, "vocab_size": 512}
    held_out, rows, curves, seconds, marks = splits[args.split], [], {}, args.seconds, None
    print(f"held out: the {args.split} split, {len(held_out):,} characters; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if args.only != "nanogpt":
        chapter, rows = chapter_arm(splits, held_out, args.preset, overrides)
        seconds, probe_chars = seconds or chapter["seconds"], chapter["settings"].eval_chars
        curves["chapter 09 GPT"] = chapter["curve"]
        marks = [t * seconds / chapter["seconds"] for t, _, _ in chapter["curve"]]
    probe = splits["validation"][:probe_chars]
    if args.only != "chapter":
        seconds = seconds or (10.0 if args.quick else 60.0)
        marks = marks or [seconds * f for f in (0.25, 0.5, 0.75, 1)]
        nano = train_nanogpt(splits["train"], vocab, seconds, recipe, probe, marks)
        print(f"nanoGPT: {nano['steps']} steps (max_iters {nano['max_iters']}), {nano['seconds']:.1f} s, "
              f"last training loss {nano['loss']:.3f}", flush=True)
        rows.insert(min(1, len(rows)), result_row(
            "nanoGPT shakespeare_char", nano["model"], recipe.batch_size * recipe.block_size, 1.0, nano["steps"],
            nano["seconds"], encode_chars("\n" + held_out, vocab), len(held_out), recipe.block_size))
        curves["nanoGPT"] = nano["curve"]
    print(f"\nnats/char on the {args.split} split, windows of each model's context side by side; sliding: at a stride "
          f"of half the context")
    print_table(rows)
    print(f"\nduring training, nats/char on the first {len(probe):,} characters of the validation split:")
    print_table([{"model": name, "seconds": t, "step": step, "nats/char": value}
                 for name, curve in curves.items() for t, step, value in curve])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"split": args.split, "quick": args.quick, "rows": rows, "curves": curves}, handle, indent=1)
    if not (args.quick or args.only or args.seconds):       # the chapter's comparison: committed for chapter 09 to read
        from course.ch09_gpt import NANOGPT_BENCH, corpus_identity, nanogpt_bench_settings
        path = NANOGPT_BENCH.write(args.preset, settings=nanogpt_bench_settings(args.preset, args.split),
                                   inputs=corpus_identity(splits), rows=rows, seconds=time.perf_counter() - started,
                                   command=f"python -m bench.nanogpt_shakespeare --preset {args.preset}")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
