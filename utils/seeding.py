"""Seeding: the same seed on the same device gives the same numbers.

Nothing here runs on import; call `seed_everything` explicitly at the top of a notebook.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (every device); return a torch.Generator for DataLoaders.

    Pass the generator as `DataLoader(..., generator=g)` so the shuffling order depends on the
    seed alone and not on how much randomness the model used before. `deterministic=True` also
    asks torch for deterministic kernels (slower on GPU; an error where none exists).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA/MPS device
    set_deterministic(deterministic)
    return torch.Generator().manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Switch torch's deterministic algorithms (and cuDNN autotuning) on or off."""
    if enabled:
        # cuBLAS needs this before its first use to be deterministic; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """`DataLoader(worker_init_fn=seed_worker)`: seed NumPy and `random` in each worker process
    from the per-worker torch seed, which the loader's generator already made reproducible."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
