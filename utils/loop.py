"""One training loop for the whole course.

`train(model, train_data, steps=...)` trains any `nn.Module` whose forward returns a loss (a
scalar tensor, or an output with `.loss` such as a `transformers` model given `labels`), and
returns a `History`. It is chapter 00's bare loop (forward, backward, clip, step, zero_grad,
schedule) plus periodic evaluation, early stopping, checkpoints with exact resume, a progress bar
and a live plot. `accelerate` does the rest: device placement, mixed precision (bf16, or fp16 with
its GradScaler), gradient accumulation, and, under `accelerate launch` / `torchrun`, distributed data
parallel on N processes. Read it in its parts: `_accelerator` and `_Dispatched` (what accelerate is
asked for, and how a batch is split between processes), `_optimizer_step` (one step), `_evaluate` and
`_Run.record_eval` (an evaluation and the best one so far), `_Run.state`/`resume` with
`_write_checkpoint`/`_read_checkpoint` (checkpoints: safetensors, no pickle, one random state per
process), and `_loop`, which calls them in order.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import random
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_path, load_module, load_state, save_module, save_state, short_value
from .hardware import amp_dtype, pick_device
from .identity import digest

SCHEDULES = ("constant", "linear", "cosine")
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ---------------------------------------------------------------- configuration and history
@dataclass
class TrainConfig:
    """Everything `train` needs besides the model and the data; checked before any work starts.

    Some options are set by no chapter yet, on purpose: `grad_accum` (the README's answer to "CUDA out
    of memory": a smaller batch with the same effective batch), `resume=False` (what the error about a
    checkpoint written with other settings asks for), `keep` (disk used by checkpoints), `min_delta`
    (early stopping that ignores tiny gains), `log_every` (how often losses are read back: on a GPU
    every read waits for the device), `schedule="cosine"` and `amp=False` (to compare with float32).
    """
    steps: int                          # optimizer steps (one step = grad_accum batches)
    lr: float = 1e-3
    weight_decay: float = 0.01          # AdamW; never applied to biases and LayerNorm weights
    schedule: str = "linear"            # after warmup: constant, linear or cosine decay to 0
    warmup: float = 0.0                 # fraction of steps (< 1) or a number of steps (>= 1)
    grad_accum: int = 1
    clip: float | None = 1.0            # max gradient norm; None turns clipping off
    eval_every: int | None = None       # steps between evaluations; default: 10 per run
    monitor: str = "eval_loss"          # what early stopping and restore_best watch
    mode: str = "min"                   # "min" for a loss, "max" for accuracy-like metrics
    patience: int | None = None         # evaluations without improvement before stopping
    min_delta: float = 0.0
    restore_best: bool = False          # load the best evaluated weights at the end
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int | None = None  # default: at every evaluation, else 10 per run
    keep: int = 2                       # newest checkpoints kept on disk
    resume: bool = True                 # continue from checkpoint_dir's newest checkpoint
    inputs: Mapping[str, str] | None = None  # what the data/model were made from (e.g. a corpus sha256):
                                        # a checkpoint written from other inputs is refused, not resumed
    device: str | None = None           # None: cuda → mps → cpu (see utils.hardware)
    amp: bool = True                    # mixed precision where the device supports it
    log_every: int = 10                 # steps between reading losses back from the device
    progress: bool = True
    live_plot: bool = False
    desc: str = "training"

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"bad training config: {message}")
        def number(value: Any) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)
        for name in ("lr", "weight_decay", "warmup", "min_delta") + (("clip",) if self.clip is not None else ()):
            value = getattr(self, name)
            need(number(value), f"{name} must be a number, got {value!r} ({type(value).__name__}): "
                                f"write {name}=1e-3, not {name}='1e-3'")
        need(isinstance(self.steps, int) and self.steps > 0, f"steps must be a positive int, got {self.steps!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(self.schedule in SCHEDULES, f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        need(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup!r}")
        need(isinstance(self.grad_accum, int) and self.grad_accum >= 1, f"grad_accum must be an int >= 1, got {self.grad_accum!r}")
        need(self.clip is None or self.clip > 0, f"clip must be > 0 or None, got {self.clip!r}")
        need(self.mode in ("min", "max"), f"mode must be 'min' or 'max', got {self.mode!r}")
        for name in ("eval_every", "patience", "checkpoint_every", "log_every", "keep"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and value >= 1), f"{name} must be an int >= 1, got {value!r}")
        need(self.inputs is None or (isinstance(self.inputs, Mapping) and
                                     all(isinstance(k, str) and isinstance(v, str) for k, v in self.inputs.items())),
             f"inputs must map names to strings (e.g. {{'corpus sha256': '…'}}), got {self.inputs!r}")
        need(self.checkpoint_dir is None or not Path(self.checkpoint_dir).exists() or Path(self.checkpoint_dir).is_dir(),
             f"checkpoint_dir {str(self.checkpoint_dir)!r} is a file, not a folder: give a folder path "
             f"(it is created if missing), or checkpoint_dir=None for no checkpoints")

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup * self.steps) if self.warmup < 1 else int(self.warmup)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        keys = ("steps", "lr", "weight_decay", "schedule", "warmup", "grad_accum", "clip")
        found = {k: getattr(self, k) for k in keys}
        return found if self.inputs is None else {**found, "inputs": dict(self.inputs)}


@dataclass
class History:
    """What happened during training: one row per optimizer step, one per evaluation."""
    train: list[dict[str, float]] = field(default_factory=list)  # step, loss, lr, grad_norm
    eval: list[dict[str, float]] = field(default_factory=list)   # step, eval_loss, metrics…
    best_step: int | None = None
    best_value: float | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    elapsed_s: float = 0.0

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.train]

    @property
    def steps_done(self) -> int:
        return self.train[-1]["step"] if self.train else 0

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of `key`, from the training rows or else the evaluation rows."""
        rows = self.train if self.train and key in self.train[0] else self.eval
        pairs = [(r["step"], r[key]) for r in rows if key in r]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "History":
        return cls(**data)


# ---------------------------------------------------------------- small public pieces
def lr_multiplier(step: int, *, steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate factor at `step`: linear warmup from 0, then constant, linear or cosine decay
    to 0 at `steps` (the same curves as transformers' get_scheduler)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {schedule!r}: use one of {SCHEDULES}")


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices get weight decay; biases, LayerNorm and other 1-D weights do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all frozen?)")
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def loss_of(output: Any) -> torch.Tensor:
    """The scalar loss in a model's output, or a one-line error saying why there is none."""
    loss = output
    if not isinstance(output, torch.Tensor):
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if loss is None:
        raise TypeError(f"the model returned a {type(output).__name__} with no loss: make forward "
                        f"return a scalar loss, or give a transformers model 'labels' in the batch")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"the model's loss must be a scalar tensor, got {shape}; reduce it, e.g. .mean()")
    return loss.reshape(())


def forward(model: nn.Module, batch: Any) -> Any:
    """Call the model on a batch: a dict as keyword arguments, a tuple/list as positional ones."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size(batch: Any) -> int:
    """Number of examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, Iterable) and not isinstance(values, str):
        for value in values:
            return batch_size(value)
    return 1


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) for a block; the model's previous mode comes back even if the block fails."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: Iterable, *, device: str | torch.device | None = None,
                  amp: bool = True) -> float:
    """Mean loss over `data`, weighted by batch size, in eval mode and without gradients."""
    device = pick_device(device)
    total, count = _loss_sum(model, data, device, _autocast(device, amp_dtype(device) if amp else None))
    if count == 0:
        raise ValueError("eval_data yielded no batches: is the evaluation set empty?")
    return total.item() / count


@torch.no_grad()
def _loss_sum(model: nn.Module, data: Iterable, device: torch.device,
              autocast: Callable[[], contextlib.AbstractContextManager], *, part: int = 0,
              parts: int = 1) -> tuple[torch.Tensor, int]:
    """(sum of loss × batch size, number of examples) over batches part, part + parts, … of `data`:
    with several processes each takes its share of the batches and the sums are added up."""
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    with evaluating(model):
        for index, batch in enumerate(data):
            if index % parts != part:
                continue
            n = batch_size(batch)
            with autocast():
                loss = loss_of(forward(model, to_device(batch, device)))
            total += loss.double() * n
            count += n
    return total, count


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Callable[[], contextlib.AbstractContextManager]:
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------- random state and data position
def _generators(data: Any) -> list[torch.Generator]:
    found = [getattr(data, "generator", None), getattr(getattr(data, "sampler", None), "generator", None),
             getattr(getattr(data, "batch_sampler", None), "generator", None)]
    unique: list[torch.Generator] = []
    for gen in found:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in unique):
            unique.append(gen)
    return unique


def _rng_state(data: Any) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(),
             "loader": [g.get_state() for g in _generators(data)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], data: Any) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for gen, gen_state in zip(_generators(data), state["loader"]):
        gen.set_state(gen_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Batches:
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
        self.epoch_rng = _rng_state(self.source)
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
        now = _rng_state(self.source)
        try:
            _set_rng_state(state["epoch_rng"], self.source)
            batches = iter(self.data)
            if batches is self.data:
                return True
            return _batch_digest(next(batches, None)) == state["first batch"]
        finally:
            _set_rng_state(now, self.source)

    def restore(self, state: Mapping[str, Any]) -> None:
        if state["epoch_rng"] is None:
            return
        _set_rng_state(state["epoch_rng"], self.source)
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


# ---------------------------------------------------------------- the accelerator
def _accelerator(cfg: TrainConfig, device: torch.device, dtype: torch.dtype | None) -> Any:
    """An `accelerate.Accelerator` for this run: it places the model, runs mixed precision (with the
    GradScaler for float16), accumulates gradients and, when started by `accelerate launch` or
    `torchrun` on several processes, wraps the model in DistributedDataParallel (`_shard` splits the batches)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import GradientAccumulationPlugin
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one process-wide state; in a notebook each train() may ask for another device
        # or precision (amp=False, device="cpu"), so a single process starts from a fresh one each time
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
    precision = {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision=precision, step_scheduler_with_optimizer=False,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.grad_accum, sync_with_dataloader=False))


def _shard(train_data: Iterable, acc: Any) -> Iterable:
    """The batches this process trains on: all of `train_data`'s in one process, else its slice of each."""
    if acc.num_processes == 1:
        return train_data
    from torch.utils.data import DataLoader
    if not isinstance(train_data, DataLoader):
        raise TypeError(f"train_data must be a torch DataLoader to be split between {acc.num_processes} "
                        f"processes, got {type(train_data).__name__}")
    size, n = train_data.batch_size, acc.num_processes
    sized = size and not train_data.drop_last and hasattr(train_data.dataset, "__len__")
    last = len(train_data.dataset) % size if sized else 0
    if size is not None and (size % n or last % n):
        what = f"the global batch of {size}" if size % n else f"the last batch, of {last},"
        raise ValueError(f"{what} does not divide between {n} processes: use a batch size that is a multiple of "
                         f"{n} (and drop_last=True if the dataset's size is not), or --num_processes that divides it")
    return _Dispatched(train_data, acc)


class _Dispatched:
    """Each global batch drawn by the main process from `data`, exactly as one process would draw it (order,
    masking and all), sent to the others, and split: process k trains on the k-th of N equal slices.

    accelerate's own dispatcher (`dispatch_batches=True`) does the same, but on a copy of the DataLoader
    rebuilt without its `generator`, which changes the order of the batches and the random numbers that
    the collate function draws; this keeps the user's loader, so one process and N see the same batches."""

    def __init__(self, data: Any, acc: Any):
        self.data, self.acc = data, acc

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[Any]:
        from accelerate.utils import broadcast_object_list, slice_tensors
        acc = self.acc
        batches = iter(self.data) if acc.is_main_process else None
        while True:
            message = [next(batches, None) if batches is not None else None]
            batch = broadcast_object_list(message)[0]      # torch.distributed's object broadcast (pickle in
            if batch is None:                               # memory, between this job's own processes)
                return
            part = batch_size(batch) // acc.num_processes
            index = acc.process_index
            yield slice_tensors(batch, slice(index * part, (index + 1) * part))


# ---------------------------------------------------------------- checkpoints on disk
def checkpoint_steps(directory: str | Path) -> list[int]:
    """Steps of the complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = (_STEP_DIR.match(p.name) for p in directory.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def _write_checkpoint(directory: Path, step: int, model: nn.Module, run: "_Run") -> None:
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


def _read_checkpoint(directory: Path, cfg: TrainConfig, model: nn.Module, acc: Any,
                     batches: "_Batches") -> dict[str, Any] | None:
    """Load the newest checkpoint's weights into `model` and return its trainer state (None if none)."""
    steps = checkpoint_steps(directory)
    if not steps:
        return None
    last = directory / f"step-{steps[-1]:06d}"

    def unreadable(exc: CheckpointError) -> CheckpointError:
        return CheckpointError(f"cannot resume: {exc}. Delete the folder {last.name} to resume from "
                               f"the checkpoint before it, or pass resume=False to start over")
    try:
        state = load_state(last / "trainer_state.safetensors")
    except CheckpointError as exc:
        raise unreadable(exc) from None
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
    if acc.process_index > 0:
        try:
            state.update(load_state(last / f"process-{acc.process_index}.safetensors"))
        except CheckpointError as exc:
            raise unreadable(exc) from None
    other = torch.tensor([0.0 if batches.same_data(state["data"]) else 1.0], device=acc.device)
    if acc.num_processes > 1:
        other = acc.reduce(other, reduction="sum")      # every process decides alike, or the others would hang
    if other.item() > 0:
        raise CheckpointError(f"{last} was trained on other data (train_data now begins that epoch with another batch "
                              f"or has another number of batches): pass resume=False to start over, or use another "
                              f"checkpoint_dir")
    try:  # only now, so that a refused resume leaves the model as it was
        load_module(model, last / "model.safetensors")
    except CheckpointError as exc:
        raise unreadable(exc) from None
    return state


# ---------------------------------------------------------------- the parts of a run
@dataclass
class _Run:
    """Everything a run carries from step to step besides the model: what a checkpoint saves."""
    cfg: TrainConfig
    acc: Any                                    # the accelerate.Accelerator
    optimizer: Any                              # accelerate's AcceleratedOptimizer around the torch one
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batches: _Batches
    history: History = field(default_factory=History)
    stale: int = 0                              # evaluations without improvement
    best_weights: dict | None = None            # weights at the best evaluation (restore_best)
    skip: torch.Tensor | None = None            # on the device: 1 once a step was not finite (see _guarded)

    @classmethod
    def start(cls, model: nn.Module, train_data: Iterable, cfg: TrainConfig, optimizer: torch.optim.Optimizer | None,
              acc: Any) -> "_Run":
        guarded = optimizer is None and _guarded(acc.device, acc.scaler is not None)
        if optimizer is None:
            optimizer = torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                          **({"fused": True} if guarded else {}))
        wrapped = acc.prepare_optimizer(optimizer)
        warmup = cfg.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, steps=cfg.steps, warmup_steps=warmup, schedule=cfg.schedule))
        return cls(cfg, acc, wrapped, scheduler, _Batches(_shard(train_data, acc), "train_data", source=train_data),
                   skip=torch.zeros((), device=acc.device) if guarded else None)

    def process_state(self) -> dict[str, Any]:
        """What differs between processes: the random generators and the position in the data."""
        return {"data": self.batches.state(), "rng": _rng_state(self.batches.source)}

    def state(self) -> dict[str, Any]:
        scaler = self.acc.scaler.state_dict() if self.acc.scaler is not None else {}
        return {"config": self.cfg.fingerprint(), "history": self.history.to_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": scaler, "stale": self.stale, "best_weights": self.best_weights,
                "processes": self.acc.num_processes, **self.process_state()}

    def resume(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's state (the model's weights are already loaded)."""
        fused = [group.get("fused") for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, flag in zip(self.optimizer.param_groups, fused):  # this device's choice, not the checkpoint's
            group["fused"] = flag
        self.scheduler.load_state_dict(state["scheduler"])
        if self.acc.scaler is not None and state["scaler"]:
            self.acc.scaler.load_state_dict(state["scaler"])
        self.history = History.from_dict(state["history"])
        self.history.resumed_from = self.history.steps_done
        self.stale, self.best_weights = state["stale"], state["best_weights"]
        self.batches.restore(state["data"])
        _set_rng_state(state["rng"], self.batches.source)

    def record_eval(self, row: dict[str, float], model: nn.Module) -> bool:
        """Add an evaluation, keep track of the best one; True when early stopping says stop."""
        cfg, history = self.cfg, self.history
        history.eval.append(row)
        if cfg.monitor not in row:
            raise KeyError(f"monitor={cfg.monitor!r} is not among the evaluated values {sorted(row)}")
        value = row[cfg.monitor]
        sign = 1.0 if cfg.mode == "min" else -1.0
        if history.best_value is None or sign * (history.best_value - value) > cfg.min_delta:
            history.best_step, history.best_value, self.stale = row["step"], value, 0
            if cfg.restore_best:
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.stale += 1
        return cfg.patience is not None and self.stale >= cfg.patience

    def shared(self, stop: bool) -> bool:
        """True on every process if it is True on any (a callback's or early stopping's decision)."""
        if self.acc.num_processes == 1:
            return stop
        if stop:
            self.acc.set_trigger()
        return self.acc.check_trigger()


# Device types where the loss is read back at every step (free on the CPU). Elsewhere reading it would make
# the host wait for the device at every step, so a flag on the device gates the update instead (_guarded).
READ_LOSS_EACH_STEP = ("cpu",)


def _guarded(device: torch.device, scaled: bool) -> bool:
    """Whether a non-finite step is caught on the device without a sync: the default AdamW, fused, skips
    its update (weights, moments and step count untouched) while `found_inf` is 1, as it does for a
    gradient scaler. With fp16 the GradScaler owns that flag and skips overflowing steps itself."""
    return device.type not in READ_LOSS_EACH_STEP and device.type in ("cuda", "cpu", "mps") and not scaled


def _optimizer_step(model: nn.Module, run: _Run, params: list[torch.Tensor],
                    step: int) -> tuple[torch.Tensor, float, Any]:
    """One optimizer step: `grad_accum` forward and backward passes, clipping, the update, the schedule.
    `model` is the one accelerate prepared (autocast in its forward; DistributedDataParallel with several
    processes, which averages the gradients at the last of the `grad_accum` backward passes).
    Returns (mean loss, still on the device; the step's learning rate; the gradient norm or None).
    On the CPU a loss that is not finite stops training here, before it reaches the weights (reading it
    costs nothing there). On a GPU the step is skipped on the device, and so is every later one, until
    the losses are read back (`log_every`), which stops training with the step where it happened."""
    cfg, acc = run.cfg, run.acc
    lr = run.scheduler.get_last_lr()[0]
    total = torch.zeros((), device=acc.device)
    for _ in range(cfg.grad_accum):
        batch = to_device(run.batches.next(), acc.device)
        with acc.accumulate(model):
            loss = loss_of(forward(model, batch))
            if run.skip is None and acc.device.type == "cpu" and not math.isfinite(loss.item()):
                run.scheduler.optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(f"the loss became {loss.item()} at step {step}: lower lr (now {cfg.lr}), "
                                         f"add warmup, or keep clip on; the weights are those before this step")
            acc.backward(loss)                  # divided by grad_accum; scaled for float16
        total += loss.detach().float()
    grad_norm = None
    if cfg.clip is not None:
        grad_norm = acc.clip_grad_norm_(params, cfg.clip)   # float16 gradients are unscaled first
    if run.skip is not None:                    # no .item(): the fused AdamW reads the flag on the device
        bad = ~torch.isfinite(total) if grad_norm is None else ~(torch.isfinite(total) & torch.isfinite(grad_norm))
        torch.maximum(run.skip, bad.float(), out=run.skip)
        run.scheduler.optimizer.grad_scale, run.scheduler.optimizer.found_inf = None, run.skip
    run.optimizer.step()                        # with float16, the GradScaler's step and update
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return total / cfg.grad_accum, lr, grad_norm


def _evaluate(model: nn.Module, step: int, eval_data: Iterable | None, metrics: Callable | None,
              acc: Any) -> dict[str, float]:
    """One evaluation row: the loss on `eval_data` and the `metrics`, in eval mode. With several processes
    each scores its share of the eval batches and the sums are added; the metrics are the main process's."""
    row: dict[str, float] = {"step": step}
    if eval_data is not None:
        total, count = _loss_sum(model, eval_data, acc.device, acc.autocast, part=acc.process_index,
                                 parts=acc.num_processes)
        if acc.num_processes > 1:
            total, count = acc.reduce(torch.stack([total, torch.tensor(float(count), dtype=total.dtype,
                                                                      device=total.device)]), "sum").tolist()
        if count == 0:
            raise ValueError("eval_data yielded no batches: is the evaluation set empty?")
        row["eval_loss"] = float(total) / count
    if metrics is not None:
        with evaluating(model), torch.no_grad(), acc.autocast():
            found = {k: float(v) for k, v in metrics(model).items()}
        if acc.num_processes > 1:
            from accelerate.utils import broadcast
            values = broadcast(torch.tensor(list(found.values()), dtype=torch.float64, device=acc.device))
            found = dict(zip(found, values.tolist()))
        row.update(found)
    return row


class _LossLog:
    """Losses stay on the device until `flush` reads them back in one go: reading every step would
    make the CPU wait for the GPU at every step. With several processes the logged loss is their mean."""

    def __init__(self, history: History, bar: Any, cfg: TrainConfig, acc: Any, guarded: bool = False):
        self.history, self.bar, self.cfg, self.acc, self.guarded = history, bar, cfg, acc, guarded
        self.pending: list[tuple[int, torch.Tensor, float, torch.Tensor | None]] = []

    def add(self, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor | None) -> None:
        self.pending.append((step, loss, lr, grad_norm))

    def flush(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([p[1] for p in self.pending])
        values = (self.acc.reduce(losses, "mean") if self.acc.num_processes > 1 else losses).tolist()
        norms = ([None] * len(self.pending) if self.cfg.clip is None
                 else torch.stack([p[3] for p in self.pending]).float().tolist())
        for (step, _, lr, _), loss, norm in zip(self.pending, values, norms):
            what = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm) \
                if self.guarded and norm is not None and not math.isfinite(norm) else None
            if what is not None:
                kept = "; the weights are those before this step" if self.guarded else ""
                raise FloatingPointError(f"the {what[0]} became {what[1]} at step {step}: lower lr (now "
                                         f"{self.cfg.lr}), add warmup, or keep clip on{kept}")
            self.history.train.append({"step": step, "loss": loss, "lr": lr, "grad_norm": norm})
        self.pending.clear()
        self.bar.set_postfix(loss=f"{self.history.train[-1]['loss']:.4f}", refresh=False)


# ---------------------------------------------------------------- the loop
def train(model: nn.Module, train_data: Iterable, *, eval_data: Iterable | None = None,
          metrics: Callable[[nn.Module], Mapping[str, float]] | None = None,
          optimizer: torch.optim.Optimizer | None = None,
          callbacks: Sequence[Callable[[int, History], Any]] = (), **config: Any) -> History:
    """Train `model` for `steps` optimizer steps on `train_data` and return the `History`.

    train_data / eval_data: DataLoaders (or any re-iterable) of batches; a dict batch is passed
        as keyword arguments, a tuple as positional ones. The model's forward returns the loss.
    metrics: `metrics(model) -> {"name": value}`, called at each evaluation (e.g. accuracy).
    optimizer: default AdamW(lr, weight_decay) without decay on biases and LayerNorm.
    callbacks: `callback(step, history)` after every optimizer step; returning True stops.
    **config: the fields of `TrainConfig` (steps, lr, warmup, schedule, grad_accum, clip,
        eval_every, patience, checkpoint_dir, live_plot, …), all checked before training starts.

    Started with `accelerate launch` (or `torchrun`) on N processes, the same call trains one copy of
    the model per process with distributed data parallel: each process takes 1/N of every batch of
    train_data (so its batch size is the global batch), evaluations are shared out and added up,
    and only the main process draws the progress bar and plot and writes checkpoints.
    """
    cfg = TrainConfig(**config)
    if cfg.patience is not None and eval_data is None and metrics is None:
        raise ValueError("patience (early stopping) needs eval_data or metrics to watch")
    if eval_data is not None and metrics is None and cfg.monitor != "eval_loss":
        raise KeyError(f"monitor={cfg.monitor!r} is not among the evaluated values ['eval_loss']: without "
                       f"metrics= only eval_loss is evaluated")
    device = pick_device(cfg.device)
    acc = _accelerator(cfg, device, amp_dtype(device) if cfg.amp else None)
    model.train()
    prepared = acc.prepare_model(model)         # on the device; autocast; DistributedDataParallel if N > 1
    try:
        run = _Run.start(model, train_data, cfg, optimizer, acc)
        ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else None
        state = _read_checkpoint(ckpt_dir, cfg, model, acc, run.batches) if ckpt_dir is not None and cfg.resume else None
        if state is not None:
            run.resume(state)
        if run.history.steps_done < cfg.steps and not run.history.stopped_early:
            _loop(prepared, model, run, eval_data, metrics, callbacks, ckpt_dir)
    finally:
        acc.unwrap_model(prepared, keep_fp32_wrapper=False)   # the model's own forward back, without autocast
    if cfg.restore_best and run.best_weights is not None:
        model.load_state_dict(run.best_weights)
    return run.history


def _loop(prepared: nn.Module, model: nn.Module, run: _Run, eval_data: Iterable | None,
          metrics: Callable | None, callbacks: Sequence[Callable[[int, History], Any]], ckpt_dir: Path | None) -> None:
    """Optimizer steps until `cfg.steps`, with the evaluations, callbacks, checkpoints and plots due.
    `prepared` is what trains (accelerate's wrapper), `model` the module itself (evaluated and saved)."""
    from tqdm.auto import tqdm
    from .plots import LivePlot
    cfg, history, acc = run.cfg, run.history, run.acc
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    eval_every = cfg.eval_every or max(1, cfg.steps // 10)
    watching = eval_data is not None or metrics is not None
    ckpt_every = cfg.checkpoint_every or (eval_every if watching else max(1, cfg.steps // 10))
    plot = LivePlot(title=cfg.desc) if cfg.live_plot and acc.is_main_process else None
    step, started = history.steps_done, time.perf_counter()
    # mininterval: a notebook bar sends a kernel message per redraw; twice a second is live enough
    with tqdm(total=cfg.steps, initial=step, desc=cfg.desc, disable=not cfg.progress or not acc.is_main_process,
              dynamic_ncols=True, unit="step", mininterval=0.5) as bar:
        log = _LossLog(history, bar, cfg, acc, guarded=run.skip is not None)
        try:
            while step < cfg.steps:
                step += 1
                log.add(step, *_optimizer_step(prepared, run, params, step))
                bar.update(1)
                evaluate = watching and (step % eval_every == 0 or step == cfg.steps)
                if step % cfg.log_every == 0 or step == cfg.steps or evaluate:
                    log.flush()
                stop = evaluate and run.shared(run.record_eval(_evaluate(model, step, eval_data, metrics, acc), model))
                history.stopped_early = stop
                if callbacks and run.shared(any(cb(step, history) for cb in callbacks)):
                    log.flush()
                    stop = True
                if ckpt_dir is not None and (step % ckpt_every == 0 or step == cfg.steps or stop):
                    log.flush()
                    history.elapsed_s += time.perf_counter() - started
                    started = time.perf_counter()
                    _write_checkpoint(ckpt_dir, step, model, run)
                if plot is not None and not log.pending:
                    plot.update(history)
                if stop:
                    break
            log.flush()
        except FloatingPointError as error:
            saved = checkpoint_steps(ckpt_dir) if ckpt_dir is not None else []
            last = f"; the last good checkpoint is step {saved[-1]} in {ckpt_dir}" if saved else ""
            raise FloatingPointError(f"{error}{last}") from None
        except KeyboardInterrupt:
            saved = checkpoint_steps(ckpt_dir) if ckpt_dir is not None else []
            where = f"; run again to resume from step {saved[-1]}" if saved else ""
            print(f"interrupted at step {step}{where}")
            raise
    history.elapsed_s += time.perf_counter() - started
    if plot is not None:
        plot.update(history, force=True)
