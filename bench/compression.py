"""Chapter 07's models side by side, outside the notebook: parameters, file size, latency and throughput.

    python -m bench.compression                # torch's default threads
    python -m bench.compression --threads 1    # one core, as a small server would give each worker

Uses chapter 07's own code (course/ch07_distillation.py): the teacher (chapter 05's, built if missing), the
best student (chapter 07's artifact, trained if missing), the DistilBERT-style student's shape (every other
teacher layer: its speed does not depend on its training), half the heads pruned by importance, half the
weights zeroed by magnitude, and the int8 kernel on the teacher, the pruned teacher and the student.
Accuracy is the notebook's business; this script only times. Each model: one sentence (median of
`--repeats` calls) and batches of 64 test sentences.
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
from pathlib import Path


import torch

import utils
from course.ch03_model_anatomy import count_parameters
from course.ch05_fine_tuning import batches, load_classifier, prepare, teacher
from course.ch07_distillation import (every_other_layer, file_bytes, head_importance, heads_to_remove,
                                      int8_kernel, int8_state, forward_latency_ms, magnitude_prune,
                                      prune_heads, student, throughput)
from utils.data import load_sentiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=50, help="calls per latency measurement")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    utils.quiet_libraries()
    import transformers
    data = load_sentiment()
    big, big_tokenizer = load_classifier(teacher())
    small, small_tokenizer = load_classifier(student())
    minilm = prepare(data, "MiniLM")
    importance = head_importance(big, batches(minilm.data["train"], big_tokenizer, 32, seed=0), max_batches=16)
    pruned = prune_heads(copy.deepcopy(big), heads_to_remove(importance, importance.numel() // 2))
    sparse, half = magnitude_prune(copy.deepcopy(big)), every_other_layer(big)
    models = [
        ("teacher (MiniLM, 6 layers)", big, big_tokenizer, big.state_dict(), count_parameters(big)),
        ("DistilBERT-style (3 layers)", half, big_tokenizer, half.state_dict(), count_parameters(half)),
        ("student", small, small_tokenizer, small.state_dict(), count_parameters(small)),
        ("teacher, half the heads pruned", pruned, big_tokenizer, pruned.state_dict(), count_parameters(pruned)),
        ("teacher, half the weights zeroed", sparse, big_tokenizer, sparse.state_dict(), count_parameters(sparse)),
        ("teacher, int8", int8_kernel(big), big_tokenizer, int8_state(big), count_parameters(big)),
        ("teacher, heads pruned + int8", int8_kernel(pruned), big_tokenizer, int8_state(pruned), count_parameters(pruned)),
        ("student, int8", int8_kernel(small), small_tokenizer, int8_state(small), count_parameters(small)),
    ]
    texts, sentence = data["test"]["text"], data["test"]["text"][0]
    print(f"{utils.describe()} · {torch.get_num_threads()} threads · {platform.processor() or platform.machine()} · "
          f"python {platform.python_version()} · transformers {transformers.__version__}")
    print(f"{'model':34s} {'params (M)':>10s} {'file (MB)':>10s} {'1 sentence (ms)':>16s} {'batch 64 (sent/s)':>18s}")
    for name, model, tokenizer, state, parameters in models:
        print(f"{name:34s} {parameters / 1e6:10.2f} {file_bytes(state) / 1e6:10.1f} "
              f"{forward_latency_ms(model, tokenizer, sentence, args.repeats):16.2f} {throughput(model, tokenizer, texts):18.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
