"""Build-on-demand cache of what earlier chapters produce (tokenizer, pretrained model, teacher).

`get_or_build("mini-bert", build)` returns `checkpoints/mini-bert/` if it is already there and
intact; otherwise it calls `build(folder)` to write the files into an empty temporary folder,
checks them, records their checksums and moves the folder into place in one step. So a chapter
opened first still runs, a second run reuses the result, and an interrupted build leaves nothing
that looks valid. Files must be safetensors, JSON or text: pickles are refused.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from filelock import FileLock

from .checkpoint import PICKLE_SUFFIXES, CheckpointError, atomic_path, short_value
from .identity import ARTIFACT_MANIFEST as MANIFEST
from .identity import canonical, sha256_file

CACHE_ENV = "FROM_ZERO_CACHE"
T = TypeVar("T")


def folder_setting(env: str, default: Path) -> Path:
    """The folder an environment variable names (default: `default`); one clear line if it names a file."""
    path = Path(os.environ.get(env) or default).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{env}={path} is a file, not a folder: point {env} at a folder (it is created "
                                 f"if missing), or unset it")
    return path


def cache_root() -> Path:
    """`checkpoints/` at the top of the course (git-ignored), or $FROM_ZERO_CACHE."""
    return folder_setting(CACHE_ENV, Path(__file__).resolve().parents[1] / "checkpoints")


def get_or_build(name: str, build: Callable[[Path], None], *, load: Callable[[Path], T] | None = None,
                 version: str | Mapping[str, Any] = "1", rebuild: bool = False,
                 root: str | Path | None = None) -> Path | T:
    """Return the cached artifact `name` (its folder, or `load(folder)`), building it if needed.

    build(folder): writes the artifact's files into the empty `folder`, e.g. with
        `model.save_pretrained(folder)` or `utils.save_module(model, folder / "model.safetensors")`.
    version: what the artifact is made from, as `utils.made_from(...)` gives it (its recipe, settings and
        inputs): a cached copy made from anything else is rebuilt, with a warning naming what changed.
    rebuild: build again even if a valid copy exists.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"artifact name {name!r} must be a plain folder name such as 'mini-bert'")
    if isinstance(version, Mapping):
        version = json.dumps(canonical(version), sort_keys=True)
    root = Path(root) if root is not None else cache_root()
    folder = root / name
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):  # two notebooks building the same thing wait
        problem = None if rebuild else _problem(folder, version)
        if problem is not None or rebuild:
            if problem not in (None, "missing"):
                warnings.warn(f"rebuilding {folder}: {problem}", stacklevel=2)
            _build(folder, build, name, version)
    return load(folder) if load is not None else folder


def verify(folder: str | Path) -> None:
    """Raise CheckpointError if an artifact folder is missing, incomplete or altered."""
    problem = _problem(Path(folder), version=None)
    if problem is not None:
        raise CheckpointError(f"artifact {folder} is {problem}; rebuild it with get_or_build(..., rebuild=True)")


def _build(folder: Path, build: Callable[[Path], None], name: str, version: str) -> None:
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        build(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        if not files:
            raise CheckpointError(f"building artifact {name!r} wrote no files into its folder")
        pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise CheckpointError(f"building artifact {name!r} wrote pickle files {pickles}: save "
                                  f"with safetensors (save_pretrained does by default)")
        manifest = {"name": name, "version": version,
                    "files": {p.relative_to(tmp).as_posix(): sha256_file(p) for p in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _problem(folder: Path, version: str | None) -> str | None:
    """Why `folder` is not a usable artifact, or None if it is."""
    manifest_path = folder / MANIFEST
    if not folder.exists():
        return "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "incomplete (no readable artifact.json)"
    if version is not None and manifest.get("version") != version:
        return f"out of date ({_version_change(manifest.get('version'), version)})"
    for relative, digest in files.items():
        path = folder / relative
        if not path.is_file():
            return f"incomplete ({relative} is missing)"
        if sha256_file(path) != digest:
            return f"corrupt ({relative} does not match its checksum)"
    return None


def _version_change(old: Any, new: str) -> str:
    """What differs between two versions; for JSON objects (settings and inputs), only the changed keys."""
    try:
        before, after = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        before = after = None
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return f"version {old!r}, wanted {new!r}"
    changed = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    return "made from " + ", ".join(f"{k} {short_value(before.get(k))}, now {short_value(after.get(k))}"
                                    for k in changed)


def remove(name: str, root: str | Path | None = None) -> None:
    """Delete a cached artifact (the next get_or_build builds it again)."""
    shutil.rmtree((Path(root) if root is not None else cache_root()) / name, ignore_errors=True)
