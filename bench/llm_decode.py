"""Generation speed of SmolLM2-135M-Instruct on the CPU: chapter 10's own code against transformers and llama.cpp.

    python -m bench.llm_decode [--threads N]

Each engine answers the same chat prompt greedily with `new_tokens` tokens (no stop token), best of `repeats`
runs, on `threads` torch threads (llama.cpp: n_threads). Engines:
  - "our GPT, KV cache":       course.ch10_llm.generate_ids on chapter 09's GPT holding the GGUF file's weights
  - "our GPT, no cache":       chapter 09's generate, the whole sequence again for every token (64 tokens only)
  - "transformers generate":   LlamaForCausalLM.generate on the same file, dequantized to float32
  - "llama.cpp":               llama-cpp-python on the 4-bit file itself, when it is installed (it has no wheel
                               on PyPI: `pip install llama-cpp-python` builds it from source, ~6 minutes here)
Writes bench/results/llm_decode_cpu.json, which chapter 10 reads. About 2 minutes on a 2-core CPU.
"""
from __future__ import annotations

import time

import torch

from course.ch09_gpt import generate
from course.ch10_llm import LLM_BENCH, chat_prompt, generate_ids, gpt_from_gguf, llm_bench_settings
from utils.models import llm_identity, load_llm
from utils.sweeps import make_sweep, sweep_arguments


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(__doc__.splitlines()[0], argv, reuse=False)
    settings = llm_bench_settings()
    torch.set_num_threads(args.threads or settings["threads"])
    llama, tokenizer, path = load_llm("offline")
    ours = gpt_from_gguf(path)
    prompt = tokenizer(chat_prompt([{"role": "user", "content": settings["question"]}])).input_ids
    n, repeats = settings["new_tokens"], settings["repeats"]

    def sweep(earlier):
        rows = []
        def row(engine, tokens, seconds, note=""):
            rows.append({"engine": engine, "tokens": tokens, "seconds": round(seconds, 3),
                         "tokens/s": round(tokens / seconds, 2), "note": note})
            print(f"{engine:24} {tokens / seconds:7.1f} tokens/s", flush=True)
        row("our GPT, KV cache", n, best_of(repeats, lambda: generate_ids(ours, [prompt], n)))
        row("our GPT, no cache", 64, best_of(1, lambda: generate(ours, torch.tensor([prompt]), 64, greedy=True)),
            "64 tokens")
        ids = torch.tensor([prompt])
        with torch.no_grad():
            row("transformers generate", n, best_of(repeats, lambda: llama.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)))
        try:
            from llama_cpp import Llama
        except ImportError:
            print("llama.cpp: llama-cpp-python is not installed; skipped")
        else:
            engine = Llama(model_path=str(path), n_threads=settings["threads"], n_ctx=2048, verbose=False)
            out = {}
            seconds = best_of(repeats, lambda: out.update(engine(tokenizer.decode(prompt), max_tokens=n,
                                                                 temperature=0.0, stop=[])))
            row("llama.cpp", out["usage"]["completion_tokens"], seconds, "4-bit weights as stored; may stop early")
            engine.close()          # before exit: llama-cpp-python's finaliser fails when it runs at shutdown
            engine = Llama(model_path=str(path), n_threads=settings["threads"], n_ctx=2048, verbose=False,
                           logits_all=True)
            rows[-1]["same logits?"] = same_logits(engine, ours, tokenizer)
            engine.close()
        return rows
    make_sweep(LLM_BENCH, "cpu", args, settings=settings, inputs={"model": llm_identity("offline")}, sweep=sweep)
    return 0


def same_logits(engine, ours, tokenizer) -> dict:
    """llama.cpp's and our next-token logits after the same 37 token ids (the France question): how far apart,
    and each one's two best tokens with their margin. llama.cpp quantizes activations to 8 bits in its dot
    products, so its logits are not float32's, and a near-tie between two tokens can go the other way."""
    import numpy as np
    ids = tokenizer(chat_prompt([{"role": "user", "content": "What is the capital of France?"}])).input_ids
    engine.reset()
    engine.eval(ids)
    theirs = np.asarray(engine.scores[len(ids) - 1])
    with torch.no_grad():
        mine = ours(torch.tensor([ids]))[0, -1].numpy()
    def best_two(logits):
        top = np.argsort(-logits)[:2]
        return {"tokens": [tokenizer.decode([t]) for t in top], "margin": round(float(logits[top[0]] - logits[top[1]]), 3)}
    return {"max |Δ logit|": round(float(np.abs(theirs - mine).max()), 3), "llama.cpp": best_two(theirs),
            "our GPT": best_two(mine)}


if __name__ == "__main__":
    raise SystemExit(main())
