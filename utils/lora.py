"""LoRA, low-rank adaptation, written from scratch (chapter 06 explains it; chapter 03 counts it).

A frozen linear layer y = W x + b gets a trainable low-rank update: y = W x + b + (α/r)·B A x, with
A (r × in) random and B (out × r) zero, so at initialisation the model is unchanged. Only A and B
train: r·(in + out) parameters instead of in·out. `merged()` folds B A back into W for inference.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class LoRALinear(nn.Module):
    """`base` (frozen) plus a rank-`r` update scaled by `alpha / r`."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps nn.Linear layers, not {type(base).__name__}")
        if r < 1:
            raise ValueError(f"LoRA rank r must be at least 1, got {r}")
        self.base = base.requires_grad_(False)
        self.r, self.scaling = r, alpha / r
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))        # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with W + (α/r)·B A: the same outputs, no extra cost at inference."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def add_lora(model: nn.Module, targets: Iterable[str] = ("query", "value"), r: int = 8, alpha: float = 16.0,
             dropout: float = 0.0, trainable: Iterable[str] = ("classifier",)) -> nn.Module:
    """Wrap every nn.Linear whose name ends with one of `targets` in a LoRALinear; freeze everything else
    except modules whose name contains one of `trainable` (the new task head). Returns the model."""
    targets, trainable = tuple(targets), tuple(trainable)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.split(".")[-1] in targets]
    if not found:
        raise ValueError(f"no nn.Linear named {targets} in {type(model).__name__}; "
                         "look at [name for name, _ in model.named_modules()] for the right names")
    model.requires_grad_(False)
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                LoRALinear(module, r=r, alpha=alpha, dropout=dropout))
    for name, param in model.named_parameters():
        if any(t in name for t in trainable):
            param.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged nn.Linear, in place. Returns the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.merged())
    return model
