"""What a forward pass keeps alive for backward (chapters 02 and 03).

Autograd saves some inputs or outputs of each operation (a Linear layer its input, a ReLU its output)
until backward runs. `saved_for_backward` adds up their sizes with `torch.autograd.graph.saved_tensors_hooks`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def saved_for_backward(forward: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, Any]:
    """Run `forward()` and return (bytes of the tensors saved for backward, forward's result).

    Tensors sharing storage with `exclude` (pass the model's parameters: they exist anyway) are not counted.
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if tensor.untyped_storage().data_ptr() not in excluded:
            saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    return saved, result
