"""Saving and loading without pickle, written atomically.

Weights go to safetensors files. Training state (optimizer, scheduler, random generators,
history) is a tree of dicts, lists and tensors: its tensors go into a safetensors file and the
tree around them into that file's JSON metadata. A crash mid-write leaves the old file, never a
half-written one; nothing here ever calls `torch.load` or unpickles.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_STATE_KEY = "from_zero_state"


class CheckpointError(RuntimeError):
    """A checkpoint or cached artifact is missing, corrupt, or does not fit the model."""


def short_value(value: Any) -> str:
    """A setting or digest shortened for a one-line message about what changed: 'c930a1eaee4b…'."""
    text = "(none)" if value is None else str(value)
    return text if len(text) <= 14 else text[:12] + "…"


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds.

    Works for a file or a directory written at the yielded path. On error the temporary is
    removed and whatever was at `path` before is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise CheckpointError(f"nothing was written to {target}")
        _fsync_tree(target)
        if path.is_dir() and not path.is_symlink():
            old = tmp / ".old"
            os.replace(path, old)  # a directory can't be replaced in one step: swap, then delete
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


# ---------------------------------------------------------------- model weights
def save_module(module: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save a module's weights to a safetensors file, atomically (tied weights stored once)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_model(module, str(tmp))
    return path


def load_module(module: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load weights saved by `save_module` into `module`, with a clear error if they don't fit."""
    path = _readable(path)
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{path} does not fit {type(module).__name__} ({first}); was it saved from a "
            f"model with another configuration?") from None
    except Exception as exc:
        raise _corrupt(path, exc) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {type(module).__name__}: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}; was it saved from another architecture?")
    return module


# ---------------------------------------------------------------- nested state
def save_state(state: Any, path: str | os.PathLike) -> Path:
    """Save a tree of dicts/lists/tuples/numbers/strings/tensors/arrays as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(state, tensors, "state"))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_STATE_KEY: skeleton})
    return path


def load_state(path: str | os.PathLike) -> Any:
    """Load a tree written by `save_state`."""
    path = _readable(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        raise _corrupt(path, exc) from None
    if _STATE_KEY not in metadata:
        raise CheckpointError(f"{path} holds tensors but no training state; it was not written "
                              f"by utils.save_state")
    return _decode(json.loads(metadata[_STATE_KEY]), tensors)


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind == "u" else obj.copy())
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
    raise TypeError(f"cannot save {where} of type {type(obj).__name__}: only dicts, lists, "
                    f"tuples, numbers, strings, tensors and numpy arrays are saved (no pickle)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}


def _readable(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"refusing to load {path}: {path.suffix} files are pickles, which can "
                              f"run code; convert it to .safetensors with a trusted script")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: check the path, or train/build it first")
    return path


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is corrupt or incomplete ({type(exc).__name__}: "
                           f"{str(exc)[:120]}); delete it and build it again")
