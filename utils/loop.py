"""One training loop for the whole course.

`train(model, train_data, steps=...)` trains any `nn.Module` whose forward returns a loss (a
scalar tensor, or an output with `.loss` such as a `transformers` model given `labels`), and
returns a `History`. It is chapter 00's bare loop (forward, backward, clip, step, zero_grad,
schedule) plus periodic evaluation, early stopping, checkpoints with exact resume, a progress bar
and a live plot. `accelerate` does the rest: device placement, mixed precision (bf16, or fp16 with
its GradScaler), gradient accumulation, and, under `accelerate launch` / `torchrun`, distributed data
parallel on N processes.

`_loop` is the main path, on one screen: batch, forward, backward, clip, step, then log, evaluate and
checkpoint when due. Beside it: `TrainConfig` (every setting, checked before any work), `_optimizer_step`
(one step), `_FiniteCheck` (what happens when a loss or gradient stops being finite), `_evaluate` and
`_Run.record_eval` (an evaluation and the best one so far), `_Run.state`/`resume`. What resuming needs
(random state, the position in the data, checkpoint files) is in `utils.resume`; what accelerate is asked
for, and how a batch is split between processes, in `utils.distributed`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .distributed import accelerator, shard
from .hardware import amp_dtype, pick_device
from .resume import Batches, checkpoint_steps, read_checkpoint, rng_state, set_rng_state, write_checkpoint

SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_CHECKS = ("auto", "each step", "on device")


# ---------------------------------------------------------------- configuration and history
@dataclass
class TrainConfig:
    """Everything `train` needs besides the model and the data; checked before any work starts.

    Some options are set by no chapter yet, on purpose: `grad_accum` (the README's answer to "CUDA out
    of memory": a smaller batch with the same effective batch), `resume=False` (what the error about a
    checkpoint written with other settings asks for), `keep` (disk used by checkpoints), `min_delta`
    (early stopping that ignores tiny gains), `log_every` (how often losses are read back: on a GPU
    every read waits for the device), `schedule="cosine"` and `amp=False` (to compare with float32),
    `loss_check` (the GPU's way of catching a non-finite loss, tried on a CPU).
    """
    steps: int                          # optimizer steps (one step = grad_accum batches)
    lr: float = 1e-3
    weight_decay: float = 0.01          # AdamW; never applied to biases and LayerNorm weights
    betas: tuple[float, float] = (0.9, 0.999)   # AdamW's moment decays (GPT-style pretraining: (0.9, 0.95))
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
    amp: bool | str = True              # mixed precision where the device supports it; or "bf16" / "fp16"
    loss_check: str = "auto"            # when a non-finite loss is caught: "each step" (reads the loss back;
                                        # free on a CPU), "on device" (no read-back: the fused AdamW skips the
                                        # step, see _FiniteCheck), "auto": each step on a CPU, on the device elsewhere
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
        need(isinstance(self.betas, (tuple, list)) and len(self.betas) == 2 and all(number(b) and 0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), e.g. (0.9, 0.95), got {self.betas!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(self.schedule in SCHEDULES, f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        need(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup!r}")
        need(isinstance(self.grad_accum, int) and self.grad_accum >= 1, f"grad_accum must be an int >= 1, got {self.grad_accum!r}")
        need(self.clip is None or self.clip > 0, f"clip must be > 0 or None, got {self.clip!r}")
        need(self.mode in ("min", "max"), f"mode must be 'min' or 'max', got {self.mode!r}")
        need(isinstance(self.amp, bool) or self.amp in PRECISIONS,
             f"amp must be True, False or one of {sorted(PRECISIONS)}, got {self.amp!r}")
        need(self.loss_check in LOSS_CHECKS, f"loss_check {self.loss_check!r} is not one of {LOSS_CHECKS}")
        for name in ("eval_every", "patience", "checkpoint_every", "log_every", "keep"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and value >= 1), f"{name} must be an int >= 1, got {value!r}")
        need(self.inputs is None or (isinstance(self.inputs, Mapping) and
                                     all(isinstance(k, str) and isinstance(v, str) for k, v in self.inputs.items())),
             f"inputs must map names to strings (e.g. {{'corpus sha256': '…'}}), got {self.inputs!r}")
        need(self.checkpoint_dir is None or not Path(self.checkpoint_dir).exists() or Path(self.checkpoint_dir).is_dir(),
             f"checkpoint_dir {str(self.checkpoint_dir)!r} is a file, not a folder: give a folder path "
             f"(it is created if missing), or checkpoint_dir=None for no checkpoints")

    def check_watching(self, eval_data: bool, metrics: bool) -> None:
        """What early stopping and restore_best watch must be something train() evaluates."""
        if self.patience is not None and not (eval_data or metrics):
            raise ValueError("patience (early stopping) needs eval_data or metrics to watch")
        if eval_data and not metrics and self.monitor != "eval_loss":
            raise KeyError(f"monitor={self.monitor!r} is not among the evaluated values ['eval_loss']: without "
                           f"metrics= only eval_loss is evaluated")

    def monitored(self, row: Mapping[str, float]) -> float:
        """The watched value in an evaluation row (metrics= may not return it)."""
        if self.monitor not in row:
            raise KeyError(f"monitor={self.monitor!r} is not among the evaluated values {sorted(row)}")
        return row[self.monitor]

    def precision(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype: the device's own (utils.hardware.amp_dtype), the one asked for, or None."""
        return PRECISIONS[self.amp] if isinstance(self.amp, str) else amp_dtype(device) if self.amp else None

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup * self.steps) if self.warmup < 1 else int(self.warmup)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        keys = ("steps", "lr", "weight_decay", "schedule", "warmup", "grad_accum", "clip")
        found = {k: getattr(self, k) for k in keys}
        if tuple(self.betas) != (0.9, 0.999):        # named only when set, so older checkpoints still resume
            found["betas"] = list(self.betas)
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
    precision: str = "no"                                        # accelerate's mixed precision: no, bf16, fp16
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


# ---------------------------------------------------------------- the parts of a run
class _FiniteCheck:
    """Every check that training is still finite, in one place. It works one of three ways:

    - each step (the CPU's way): the loss is read back before backward, and a non-finite one stops training
      there, the weights untouched. Reading costs nothing on a CPU; on a GPU it would make the host wait for
      the device at every step.
    - on the device (a GPU with the default AdamW): nothing is read back. A flag on the device, 1 from the
      first non-finite loss or gradient norm on, makes the fused AdamW skip its update (weights, moments and
      step count untouched), as it does for a gradient scaler; the read-back at `log_every` then stops
      training and names the step where it happened.
    - read-back only: fp16's GradScaler owns that flag and skips overflowing steps itself; your own optimizer
      may not be fused.
    """

    def __init__(self, cfg: TrainConfig, acc: Any, own_optimizer: bool):
        self.cfg = cfg
        self.each_step = cfg.loss_check == "each step" or (cfg.loss_check == "auto" and acc.device.type == "cpu")
        on_device = not (self.each_step or own_optimizer or acc.scaler is not None)
        self.flag = torch.zeros((), device=acc.device) if on_device else None

    def before_backward(self, loss: torch.Tensor, step: int, optimizer: torch.optim.Optimizer) -> None:
        if self.each_step and not math.isfinite(loss.item()):
            optimizer.zero_grad(set_to_none=True)
            self.fail("loss", loss.item(), step, weights_kept=True)

    def before_update(self, total: torch.Tensor, grad_norm: torch.Tensor | None, optimizer: Any) -> None:
        if self.flag is None:                   # no .item(): the fused AdamW reads the flag on the device
            return
        bad = ~torch.isfinite(total) if grad_norm is None else ~(torch.isfinite(total) & torch.isfinite(grad_norm))
        torch.maximum(self.flag, bad.float(), out=self.flag)
        optimizer.grad_scale, optimizer.found_inf = None, self.flag

    def read_back(self, step: int, loss: float, grad_norm: float | None) -> None:
        if not math.isfinite(loss):
            self.fail("loss", loss, step, weights_kept=self.flag is not None)
        if self.flag is not None and grad_norm is not None and not math.isfinite(grad_norm):
            self.fail("gradient norm", grad_norm, step, weights_kept=True)

    def fail(self, what: str, value: float, step: int, weights_kept: bool) -> None:
        cfg = self.cfg
        saved = checkpoint_steps(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else []
        raise FloatingPointError(
            f"the {what} became {value} at step {step}: lower lr (now {cfg.lr}), add warmup, or keep clip on"
            + ("; the weights are those before this step" if weights_kept else "")
            + (f"; the last good checkpoint is step {saved[-1]} in {cfg.checkpoint_dir}" if saved else ""))


@dataclass
class _Run:
    """Everything a run carries from step to step besides the model: what a checkpoint saves."""
    cfg: TrainConfig
    acc: Any                                    # the accelerate.Accelerator
    optimizer: Any                              # accelerate's AcceleratedOptimizer around the torch one
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batches: Batches
    finite: _FiniteCheck
    history: History = field(default_factory=History)
    stale: int = 0                              # evaluations without improvement
    best_weights: dict | None = None            # weights at the best evaluation (restore_best)

    @classmethod
    def start(cls, model: nn.Module, train_data: Iterable, cfg: TrainConfig, optimizer: torch.optim.Optimizer | None,
              acc: Any) -> "_Run":
        finite = _FiniteCheck(cfg, acc, own_optimizer=optimizer is not None)
        if optimizer is None:
            optimizer = torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                          **({"fused": True} if finite.flag is not None else {}))
        wrapped = acc.prepare_optimizer(optimizer)
        warmup = cfg.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, steps=cfg.steps, warmup_steps=warmup, schedule=cfg.schedule))
        batches = Batches(shard(train_data, acc), "train_data", source=train_data)
        return cls(cfg, acc, wrapped, scheduler, batches, finite, History(precision=acc.mixed_precision))

    def process_state(self) -> dict[str, Any]:
        """What differs between processes: the random generators and the position in the data."""
        return {"data": self.batches.state(), "rng": rng_state(self.batches.source)}

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
        self.history = History.from_dict({**state["history"], "precision": self.acc.mixed_precision})
        self.history.resumed_from = self.history.steps_done
        self.stale, self.best_weights = state["stale"], state["best_weights"]
        self.batches.restore(state["data"])
        set_rng_state(state["rng"], self.batches.source)

    def record_eval(self, row: dict[str, float], model: nn.Module) -> bool:
        """Add an evaluation, keep track of the best one; True when early stopping says stop."""
        cfg, history = self.cfg, self.history
        history.eval.append(row)
        value = cfg.monitored(row)
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


def _optimizer_step(model: nn.Module, run: _Run, params: list[torch.Tensor],
                    step: int) -> tuple[torch.Tensor, float, Any]:
    """One optimizer step: `grad_accum` forward and backward passes, clipping, the update, the schedule.
    `model` is the one accelerate prepared (autocast in its forward; DistributedDataParallel with several
    processes, which averages the gradients at the last of the `grad_accum` backward passes).
    Returns (mean loss, still on the device; the step's learning rate; the gradient norm or None)."""
    cfg, acc = run.cfg, run.acc
    lr = run.scheduler.get_last_lr()[0]
    total = torch.zeros((), device=acc.device)
    for _ in range(cfg.grad_accum):
        batch = to_device(run.batches.next(), acc.device)
        with acc.accumulate(model):
            loss = loss_of(forward(model, batch))
            # torch's own optimizer: accelerate's wrapper skips zero_grad in the middle of an accumulation
            run.finite.before_backward(loss, step, run.scheduler.optimizer)
            acc.backward(loss)                  # divided by grad_accum; scaled for float16
        total += loss.detach().float()
    grad_norm = None
    if cfg.clip is not None:
        grad_norm = acc.clip_grad_norm_(params, cfg.clip)   # float16 gradients are unscaled first
    run.finite.before_update(total, grad_norm, run.scheduler.optimizer)
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

    def __init__(self, run: _Run, bar: Any):
        self.run, self.bar = run, bar
        self.pending: list[tuple[int, torch.Tensor, float, torch.Tensor | None]] = []

    def add(self, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor | None) -> None:
        self.pending.append((step, loss, lr, grad_norm))

    def flush(self) -> None:
        if not self.pending:
            return
        acc, history = self.run.acc, self.run.history
        losses = torch.stack([p[1] for p in self.pending])
        values = (acc.reduce(losses, "mean") if acc.num_processes > 1 else losses).tolist()
        norms = ([None] * len(self.pending) if self.run.cfg.clip is None
                 else torch.stack([p[3] for p in self.pending]).float().tolist())
        for (step, _, lr, _), loss, norm in zip(self.pending, values, norms):
            self.run.finite.read_back(step, loss, norm)
            history.train.append({"step": step, "loss": loss, "lr": lr, "grad_norm": norm})
        self.pending.clear()
        self.bar.set_postfix(loss=f"{history.train[-1]['loss']:.4f}", refresh=False)


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
    cfg.check_watching(eval_data=eval_data is not None, metrics=metrics is not None)
    device = pick_device(cfg.device)
    acc = accelerator(cfg, device, cfg.precision(device))
    model.train()
    wrapped = acc.prepare_model(model)         # on the device; autocast; DistributedDataParallel if N > 1
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else None
    try:
        with _only_run_in(ckpt_dir, acc):
            run = _Run.start(model, train_data, cfg, optimizer, acc)
            state = read_checkpoint(ckpt_dir, cfg, model, acc, run.batches) if ckpt_dir is not None and cfg.resume else None
            if state is not None:
                run.resume(state)
            if run.history.steps_done < cfg.steps and not run.history.stopped_early:
                _loop(wrapped, model, run, eval_data, metrics, callbacks, ckpt_dir)
            elif cfg.live_plot and acc.is_main_process:      # a finished run, resumed: its curves all the same
                _live_plot(cfg, acc).update(run.history, force=True)
    finally:
        acc.unwrap_model(wrapped, keep_fp32_wrapper=False)   # the model's own forward back, without autocast
    if cfg.restore_best and run.best_weights is not None:
        model.load_state_dict(run.best_weights)
    return run.history


def _loop(wrapped: nn.Module, model: nn.Module, run: _Run, eval_data: Iterable | None,
          metrics: Callable | None, callbacks: Sequence[Callable[[int, History], Any]], ckpt_dir: Path | None) -> None:
    """Optimizer steps until `cfg.steps`, with the evaluations, callbacks, checkpoints and plots due.
    `wrapped` is what trains (accelerate's wrapper), `model` the module itself (evaluated and saved)."""
    cfg, history, acc = run.cfg, run.history, run.acc
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    eval_every = cfg.eval_every or max(1, cfg.steps // 10)
    watching = eval_data is not None or metrics is not None
    ckpt_every = cfg.checkpoint_every or (eval_every if watching else max(1, cfg.steps // 10))
    plot = _live_plot(cfg, acc)
    step, started = history.steps_done, time.perf_counter()
    with _progress_bar(cfg, acc, step) as bar, _interrupted(lambda: step, ckpt_dir):
        log = _LossLog(run, bar)
        while step < cfg.steps:
            step += 1
            log.add(step, *_optimizer_step(wrapped, run, params, step))   # batch, forward, backward, clip, step
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
                history.elapsed_s, started = history.elapsed_s + time.perf_counter() - started, time.perf_counter()
                write_checkpoint(ckpt_dir, step, model, run)
            if plot is not None and not log.pending:
                plot.update(history)
            if stop:
                break
        log.flush()
    history.elapsed_s += time.perf_counter() - started
    if plot is not None:
        plot.update(history, force=True)


def _only_run_in(ckpt_dir: Path | None, acc: Any) -> contextlib.AbstractContextManager:
    """A file lock on `ckpt_dir` for a one-process run: two notebooks (or two test workers) training the same
    recipe into the same folder take turns, and the second resumes from the first's last checkpoint instead
    of writing beside it. The processes of one distributed run share the folder by design: no lock."""
    if ckpt_dir is None or acc.num_processes > 1:
        return contextlib.nullcontext()
    return _waiting_lock(ckpt_dir)


@contextlib.contextmanager
def _waiting_lock(ckpt_dir: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(ckpt_dir.parent / f".{ckpt_dir.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another run training into {ckpt_dir} to finish (this one then resumes it)", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _progress_bar(cfg: TrainConfig, acc: Any, step: int) -> Any:
    from tqdm.auto import tqdm
    # mininterval: a notebook bar sends a kernel message per redraw; twice a second is live enough
    return tqdm(total=cfg.steps, initial=step, desc=cfg.desc, disable=not cfg.progress or not acc.is_main_process,
                dynamic_ncols=True, unit="step", mininterval=0.5)


def _live_plot(cfg: TrainConfig, acc: Any) -> Any:
    from .plots import LivePlot
    return LivePlot(title=cfg.desc) if cfg.live_plot and acc.is_main_process else None


@contextlib.contextmanager
def _interrupted(step: Callable[[], int], ckpt_dir: Path | None) -> Iterator[None]:
    """On Ctrl-C (the notebook's stop button): say where training stopped and where a re-run resumes."""
    try:
        yield
    except KeyboardInterrupt:
        saved = checkpoint_steps(ckpt_dir) if ckpt_dir is not None else []
        where = f"; run again to resume from step {saved[-1]}" if saved else ""
        print(f"interrupted at step {step()}{where}")
        raise
