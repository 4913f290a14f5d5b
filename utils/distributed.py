"""What `utils.train` asks of accelerate, and how a batch is shared out between processes.

In one process (a notebook, `make test`) `accelerator` only places the model, runs mixed precision and
accumulates gradients. Started by `accelerate launch` or `torchrun` on N processes, the same calls wrap the
model in DistributedDataParallel, and `shard` gives each process its slice of every batch.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch

if TYPE_CHECKING:
    from .loop import TrainConfig


def accelerator(cfg: "TrainConfig", device: torch.device, dtype: torch.dtype | None) -> Any:
    """An `accelerate.Accelerator` for this run: it places the model, runs mixed precision (with the
    GradScaler for float16), accumulates gradients and, when started by `accelerate launch` or
    `torchrun` on several processes, wraps the model in DistributedDataParallel (`shard` splits the batches)."""
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


def shard(train_data: Iterable, acc: Any) -> Iterable:
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
    return Dispatched(train_data, acc)


class Dispatched:
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
        from accelerate.utils import broadcast_object_list, find_batch_size, slice_tensors
        acc = self.acc
        batches = iter(self.data) if acc.is_main_process else None
        while True:
            message = [next(batches, None) if batches is not None else None]
            batch = broadcast_object_list(message)[0]      # torch.distributed's object broadcast (pickle in
            if batch is None:                               # memory, between this job's own processes)
                return
            part = find_batch_size(batch) // acc.num_processes
            index = acc.process_index
            yield slice_tensors(batch, slice(index * part, (index + 1) * part))
