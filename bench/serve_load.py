"""Chapter 08's load test outside the notebook: the served student and teacher on loopback, micro-batching
off and on, at several concurrencies; requests/s and p50/p95/p99 latency.

    python -m bench.serve_load                              # concurrency 1, 8, 32; 3 runs each at 32
    python -m bench.serve_load --models teacher --concurrency 1 64 --requests 400 --seconds 10
    python -m bench.serve_load --runtime onnx               # onnxruntime's fp32 export instead of PyTorch

Uses chapter 08's own code (course/ch08_deployment.py): `load_predictor` (the model folders, built with
chapters 05 and 07's code if missing), `create_app`, `BackgroundServer` on 127.0.0.1, and `load_test_elsewhere` (the clients in a
process of their own). Every run is bounded by --requests and --seconds; every answer is checked against in-process inference.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path


import numpy as np
import torch

import utils
from utils.serving import BackgroundServer
from course.ch08_deployment import (answers_match, create_app, load_predictor,
                                    load_test_elsewhere)
from utils.data import load_sentiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["student", "teacher"], choices=["student", "teacher"])
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=200, help="requests per run (at most)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per run (at most)")
    parser.add_argument("--repeats", type=int, default=3, help="runs at the highest concurrency")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the batching window")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests < 1 or args.seconds <= 0:
        parser.error("--concurrency and --requests must be ≥ 1 and --seconds > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    utils.quiet_libraries()
    texts = list(load_sentiment()["test"]["text"])[:256]
    print(f"{utils.describe()} · Python {platform.python_version()} · runtime {args.runtime} · "
          f"window {args.max_wait_ms} ms")
    header = f"{'model':8s} {'batching':8s} {'conc.':>5s} {'runs':>4s} {'requests/s':>14s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}"
    print(header)
    all_match = True
    for name in args.models:
        predictor = load_predictor(name, args.runtime)
        expected = predictor(texts)
        servers = {batching: BackgroundServer(create_app(predictor, batching=batching, max_wait_ms=args.max_wait_ms)).start()
                   for batching in (False, True)}
        try:
            plan = {"texts": texts, "warmup": 24, "runs": [
                {"url": server.url, "batching": batching, "concurrency": concurrency,
                 "requests": args.requests, "seconds": args.seconds}
                for batching, server in servers.items() for concurrency in args.concurrency
                for _ in range(args.repeats if concurrency == max(args.concurrency) else 1)]}
            results = load_test_elsewhere(plan)          # the clients in a process of their own
        finally:
            for server in servers.values():
                server.stop()
        for batching in (False, True):
            for concurrency in args.concurrency:
                runs = [r for r in results if (r["batching"], r["concurrency"]) == (batching, concurrency)]
                all_match &= all(answers_match(r, texts, expected) and r["failures"] == 0 for r in runs)
                rate = np.array([r["requests/s"] for r in runs])
                spread = f" ± {rate.std(ddof=1):.0f}" if len(runs) > 1 else ""
                print(f"{name:8s} {'on' if batching else 'off':8s} {concurrency:5d} {len(runs):4d} "
                      f"{f'{rate.mean():.0f}{spread}':>14s} "
                      + " ".join(f"{np.mean([r[k] for r in runs]):8.1f}" for k in ("p50 ms", "p95 ms", "p99 ms")))
    print(f"every answer equals in-process inference: {all_match}")
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
