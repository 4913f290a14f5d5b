"""What lets `utils.train` stop and go on exactly where it was: random state, the position in the data,
and checkpoints on disk.

A checkpoint is a folder `step-NNNNNN/` with the weights (`model.safetensors`) and the trainer state
(`trainer_state.safetensors`: optimizer, schedule, history, random state and data position; with several
processes, one `process-K` file each for the others). It appears complete or not at all, and nothing in it
is loaded with pickle. A run resumes only from a checkpoint written with the same settings, inputs and data.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_path, load_module, load_state, save_module, save_state, short_value
from .identity import digest

if TYPE_CHECKING:
    from .loop import TrainConfig

_STEP_DIR = re.compile(r"^step-(\d+)$")


# ---------------------------------------------------------------- random state and data position
def _generators(data: Any) -> list[torch.Generator]:
    found = [getattr(data, "generator", None), getattr(getattr(data, "sampler", None), "generator", None),
             getattr(getattr(data, "batch_sampler", None), "generator", None)]
    unique: list[torch.Generator] = []
    for gen in found:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in unique):
            unique.append(gen)
    return unique


def rng_state(data: Any) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(),
             "loader": [g.get_state() for g in _generators(data)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], data: Any) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for gen, gen_state in zip(_generators(data), state["loader"]):
        gen.set_state(gen_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Batches:
    """Endless batches from `data`, epoch after epoch, that can be put back to any position.

    The order of an epoch is drawn when its iterator starts, from the random state at that
    moment; keeping that state and the count of batches taken is enough to replay the position.
    """

    def __init__(self, data: Iterable, name: str, source: Iterable | None = None):
        if hasattr(data, "__len__") and len(data) == 0:
            raise ValueError(f"{name} has no batches: is the dataset empty, or batch_size larger than "
                             f"the dataset with drop_last=True?")
        self.data, self.name = data, name
        self.source = data if source is None else source  # the user's loader, whose generators are saved
        self.taken, self.epoch_rng, self._it, self.first = 0, None, None, None

    def _start_epoch(self) -> None:
        self.epoch_rng = rng_state(self.source)
        self._it, self.taken, self.first = iter(self.data), 0, None

    def next(self) -> Any:
        if self._it is None:
            self._start_epoch()
        while True:
            try:
                batch = next(self._it)
            except StopIteration:
                if self.taken == 0:
                    raise ValueError(f"{self.name} yielded no batches: is it empty or already exhausted "
                                     f"(a generator can be iterated only once)?") from None
                self._start_epoch()
                continue
            if self.taken == 0:
                self.first = _batch_digest(batch)
            self.taken += 1
            return batch

    def state(self) -> dict[str, Any]:
        return {"taken": self.taken, "epoch_rng": self.epoch_rng, "first batch": self.first, "batches": self._length()}

    def _length(self) -> int | None:
        try:
            return len(self.data)
        except TypeError:
            return None

    def same_data(self, state: Mapping[str, Any]) -> bool:
        """Whether the data look like those a checkpoint trained on, when nobody named them with inputs=: as many
        batches per epoch, and the epoch it was in starting, replayed now, with the same batch (random state put
        back afterwards). A one-shot iterator cannot be replayed without losing a batch: it is not checked."""
        if state.get("epoch_rng") is None or state.get("first batch") is None:
            return True              # not started yet, or written before first batches were recorded
        if state.get("batches") is not None and self._length() is not None and state["batches"] != self._length():
            return False
        now = rng_state(self.source)
        try:
            set_rng_state(state["epoch_rng"], self.source)
            batches = iter(self.data)
            if batches is self.data:
                return True
            return _batch_digest(next(batches, None)) == state["first batch"]
        finally:
            set_rng_state(now, self.source)

    def restore(self, state: Mapping[str, Any]) -> None:
        if state["epoch_rng"] is None:
            return
        set_rng_state(state["epoch_rng"], self.source)
        self._it, self.taken, self.first = iter(self.data), 0, state.get("first batch")
        for _ in range(state["taken"]):  # replay the epoch's order up to where we were
            if next(self._it, None) is None:
                raise CheckpointError(f"{self.name} has fewer batches than when the checkpoint was "
                                      f"written: pass resume=False, or resume with the same data")
            self.taken += 1


def _batch_digest(batch: Any) -> str | None:
    """A digest of one batch (its tensors' bytes), or None for a batch of things that have no digest."""
    try:
        return digest(batch)
    except Exception:            # noqa: BLE001 - anything without a digest is simply not checked
        return None



# ---------------------------------------------------------------- checkpoints on disk
def checkpoint_steps(directory: str | Path) -> list[int]:
    """Steps of the complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = (_STEP_DIR.match(p.name) for p in directory.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def write_checkpoint(directory: Path, step: int, model: nn.Module, run: Any) -> None:
    """step-NNNNNN/: the weights, the trainer state and, with several processes, process-K files with
    each other process's random state and data position. The folder appears complete or not at all."""
    acc, final = run.acc, directory / f"step-{step:06d}"
    if acc.num_processes == 1:
        with atomic_path(final) as tmp:
            tmp.mkdir()
            save_module(model, tmp / "model.safetensors")
            save_state(run.state(), tmp / "trainer_state.safetensors")
    else:  # every process writes its part into one staging folder, which the main process then publishes
        staging = directory / f".step-{step:06d}.staging"
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_module(model, staging / "model.safetensors")
            save_state(run.state(), staging / "trainer_state.safetensors")
        else:
            save_state(run.process_state(), staging / f"process-{acc.process_index}.safetensors")
        acc.wait_for_everyone()
        if acc.is_main_process:
            with atomic_path(final) as tmp:
                os.replace(staging, tmp)
        acc.wait_for_everyone()
    if acc.is_main_process:
        for old in checkpoint_steps(directory)[:-run.cfg.keep]:
            shutil.rmtree(directory / f"step-{old:06d}", ignore_errors=True)


def read_checkpoint(directory: Path, cfg: "TrainConfig", model: nn.Module, acc: Any,
                    batches: Batches) -> dict[str, Any] | None:
    """Load the newest checkpoint's weights into `model` and return its trainer state (None if none).
    The weights are loaded last, so that a refused resume leaves the model as it was."""
    steps = checkpoint_steps(directory)
    if not steps:
        return None
    last = directory / f"step-{steps[-1]:06d}"

    def read(load: Any, *args: Any) -> Any:
        try:
            return load(*args)
        except CheckpointError as exc:
            raise CheckpointError(f"cannot resume: {exc}. Delete the folder {last.name} to resume from "
                                  f"the checkpoint before it, or pass resume=False to start over") from None
    state = read(load_state, last / "trainer_state.safetensors")
    _check_same_run(last, state, cfg, acc)
    if acc.process_index > 0:
        state.update(read(load_state, last / f"process-{acc.process_index}.safetensors"))
    _check_same_data(last, state, acc, batches)
    read(load_module, model, last / "model.safetensors")
    return state


def _check_same_run(last: Path, state: Mapping[str, Any], cfg: "TrainConfig", acc: Any) -> None:
    """Refuse a checkpoint written from other inputs, with other settings or by another number of processes."""
    saved, wanted = state["config"], cfg.fingerprint()
    if saved.get("inputs") != wanted.get("inputs"):
        old, new = saved.get("inputs") or {}, wanted.get("inputs") or {}
        changed = ", ".join(f"{k} {short_value(old.get(k))} -> {short_value(new.get(k))}"
                            for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
        raise CheckpointError(f"{last} was trained from other inputs ({changed}): its weights do not belong "
                              f"to this data; pass resume=False to start over, or use another checkpoint_dir")
    changed = [k for k in sorted(saved.keys() | wanted.keys()) if k != "inputs" and saved.get(k) != wanted.get(k)]
    if changed:
        was = ", ".join(f"{k}={saved.get(k)!r}" for k in changed)
        now = ", ".join(f"{k}={wanted.get(k)!r}" for k in changed)
        raise CheckpointError(f"{last} was written with {was}, but this run has {now}: pass "
                              f"resume=False to start over, or use another checkpoint_dir")
    processes = state.get("processes", 1)
    if processes != acc.num_processes:
        raise CheckpointError(f"{last} was written by {processes} process(es), this run has {acc.num_processes}: "
                              f"its data position and random states are per process; resume with "
                              f"--num_processes {processes}, or pass resume=False to start over")


def _check_same_data(last: Path, state: Mapping[str, Any], acc: Any, batches: Batches) -> None:
    """Refuse a checkpoint trained on other data; every process decides alike, or the others would hang."""
    other = torch.tensor([0.0 if batches.same_data(state["data"]) else 1.0], device=acc.device)
    if acc.num_processes > 1:
        other = acc.reduce(other, reduction="sum")
    if other.item() > 0:
        raise CheckpointError(f"{last} was trained on other data (train_data now begins that epoch with another batch "
                              f"or has another number of batches): pass resume=False to start over, or use another "
                              f"checkpoint_dir")


class KeptAtSteps:
    """A `utils.train` callback that keeps `make(step)` (anything JSON can hold, e.g. a text sample) at each of
    `steps`, in `folder/name`: a resumed or finished run then shows what the run made at those steps, not what
    its final weights would make. `keep(0)` before training records the start. Only the main process writes."""

    def __init__(self, make, steps: Iterable[int], folder: str | Path | None, name: str = "kept.json"):
        self.make, self.steps = make, set(steps)
        self.path = Path(folder) / name if folder is not None else None
        self.kept: dict[str, Any] = json.loads(self.path.read_text()) if self.path and self.path.is_file() else {}

    def keep(self, step: int) -> None:
        from accelerate import PartialState
        self.kept[str(step)] = self.make(step)
        if self.path is not None and PartialState().is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.kept, indent=1, ensure_ascii=False))

    def __call__(self, step: int, history: Any = None) -> None:
        if step in self.steps:
            self.keep(step)
