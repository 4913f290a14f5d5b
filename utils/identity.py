"""What a result is made from: one function for every cache key, artifact version and committed record.

    made_from("teacher (chapter 05)", settings, sentiment=rows, encoder=folder)
        {"recipe": "teacher (chapter 05)", <each setting>: <its value>, "sentiment": "3f1c…", "encoder": "9ab2…"}

A result (a cached artifact, a run's checkpoints, a committed bench/results record) is identified by its
recipe (a name and its settings) and by its inputs, each reduced to a sha256 that every machine computes alike:

- texts, rows of data, settings: their canonical JSON;
- a data file, or a model folder that was *downloaded* (all-MiniLM-L6-v2): its bytes;
- an artifact that an earlier chapter's code builds (a folder with artifact.json, or that chapter's identity
  dict): its own `made_from`, that is, its recipe and inputs, never the bytes of the weights it holds.

Why never trained bits: another CPU, thread count or BLAS build rounds differently, so a training run gives
other float bits from the same code and seed. A record identified by trained weights would belong to the one
machine that made it; one identified by its recipe holds on any machine that runs the same recipe.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

ARTIFACT_MANIFEST = "artifact.json"     # written by utils.artifacts.get_or_build


def made_from(recipe: str | None = None, settings: Any = None, **inputs: Any) -> dict[str, Any]:
    """The identity of a result: {"recipe": name, each setting: its value, each input: digest(input)}.

    settings: a dataclass or a mapping, kept as readable values (a changed setting is named in messages).
    inputs: anything `digest` takes; a value that already is a digest (64 hex characters) is kept as it is.
    """
    identity: dict[str, Any] = {} if recipe is None else {"recipe": recipe}
    if settings is not None:
        identity.update(canonical(settings))
    for name, value in inputs.items():
        if name in identity:
            raise ValueError(f"input {name!r} has the name of a setting or of the recipe: rename one of them")
        identity[name] = value if _is_digest(value) else digest(value)
    return identity


def digest(value: Any) -> str:
    """sha256 (hex) of `value`, the same on every machine.

    bytes and str: as they are; a file (Path): its bytes; an artifact folder (Path with artifact.json): the
    identity it was built with; another folder: its files' names and bytes; a tensor: dtype, shape and bytes;
    a mapping, list, tuple, dataclass or number: its canonical JSON (tensors inside it by their digest).
    """
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, str):
        return hashlib.sha256(value.encode("utf-8")).hexdigest()
    if isinstance(value, Path):
        return _path_digest(value)
    return digest(json.dumps(canonical(value), sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def canonical(value: Any) -> Any:
    """`value` as plain JSON values: dataclasses as dicts, tuples as lists, tensors and paths as digests."""
    import torch
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        raw = tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        return digest(f"{tensor.dtype} {tuple(tensor.shape)} ".encode() + raw)
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        if array.dtype == object:
            return canonical(array.tolist())
        return digest(f"{array.dtype.str} {array.shape} ".encode() + array.tobytes())
    if isinstance(value, Path):
        return _path_digest(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):                       # numpy scalars
        return value.item()
    raise TypeError(f"cannot identify a {type(value).__name__}: give text, bytes, a Path, a tensor, numbers, "
                    f"or lists / dicts / dataclasses of them")


def _path_digest(path: Path) -> str:
    path = path.expanduser().resolve()
    if path.is_file():
        stat = path.stat()
        return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)
    if not path.is_dir():
        raise FileNotFoundError(f"cannot identify {path}: no such file or folder")
    manifest = path / ARTIFACT_MANIFEST
    if manifest.is_file():       # an artifact: what it was made from, not the bits its build produced
        recorded = json.loads(manifest.read_text())
        try:
            made = json.loads(recorded["version"])
        except (TypeError, ValueError):
            made = None
        if isinstance(made, dict):
            return digest(made)
        return digest({"artifact": recorded.get("name"), "version": recorded["version"]})  # a plain version: named
    files = sorted(p for p in path.rglob("*")                # hidden files and folders (caches, locks) aside
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return digest({p.relative_to(path).as_posix(): _path_digest(p) for p in files})


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (read afresh: checksums that verify a file use this)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256 as an identity, remembered while its size and modification time stay the same."""
    return sha256_file(path)


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
