"""Which device to train on, with which precision, and a one-line description of it.

Order of preference: CUDA, then Apple MPS (only if a tiny op really runs there), then CPU.
`FROM_ZERO_DEVICE=cpu` (or cuda, cuda:1, mps) forces a device; `FROM_ZERO_PRESET=cpu|gpu`
forces the size preset that chapters choose with `preset()`.
"""
from __future__ import annotations

import os
import platform
from typing import Mapping, TypeVar

import torch

T = TypeVar("T")

DEVICE_ENV = "FROM_ZERO_DEVICE"
PRESET_ENV = "FROM_ZERO_PRESET"
PRESETS = ("cpu", "gpu")


def _mps_works() -> bool:
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        return False
    try:  # some macOS/torch combinations report MPS but fail on first use
        (torch.ones(2, device="mps") * 2).sum().item()
    except Exception:
        return False
    return True


def _parse(name: str) -> torch.device:
    hint = "use 'cpu', 'cuda', 'cuda:N' or 'mps', or None to pick automatically"
    try:
        device = torch.device(name.strip().lower())
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}: {hint}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}: {hint}")
    return device


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """Return the device to use: `name` if given, else $FROM_ZERO_DEVICE, else cuda → mps → cpu.

    Asking for a device that is not there is an error, not a silent fallback to the CPU.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = name or os.environ.get(DEVICE_ENV) or None
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_works() else torch.device("cpu")
    device = _parse(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r} requested but CUDA is not available (torch {torch.__version__}); "
                f"use 'cpu', or on Colab choose Runtime → Change runtime type → GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not _mps_works():
        raise RuntimeError(f"device {name!r} requested but Apple MPS is not usable here; use 'cpu'")
    return device


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for mixed precision on `device`, or None for plain float32.

    CUDA: bfloat16 on Ampere and newer (compute capability 8+), else float16 (T4 is 7.5, V100
    7.0), which needs a GradScaler. CPU and MPS: None; CPU autocast is slower than float32 for these models.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16  # bf16 arrived with Ampere (8.0)


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 and float32 do not need it."""
    return dtype == torch.float16


def describe(device: torch.device | str | None = None) -> str:
    """One line saying what we run on, e.g. 'CPU · 2 threads · torch 2.13.0+cpu · float32 (no AMP)'."""
    device = pick_device(device)
    dtype = amp_dtype(device)
    precision = "float32 (no AMP)" if dtype is None else f"AMP {str(dtype).removeprefix('torch.')}"
    if needs_grad_scaler(dtype):
        precision += " + GradScaler"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = (f"CUDA · {props.name} · {props.total_memory / 2**30:.0f} GiB · "
                f"compute {props.major}.{props.minor}")
    elif device.type == "mps":
        what = "Apple MPS"
    else:
        what = f"CPU · {torch.get_num_threads()} threads"
    return f"{what} · torch {torch.__version__} · {precision}"


def processor() -> str:
    """The CPU's model and the vector kernels torch runs on it, e.g. 'AMD EPYC · AVX512': with the thread count
    and the library versions, what decides the float bits a CPU training run gives."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} · {torch.backends.cpu.get_cpu_capability()}"


def for_preset(table: Mapping[str, T], preset_name: str | None = None) -> T:
    """`table[preset_name]`, this machine's preset (see `preset`) when None; a one-line error for an unknown one."""
    name = preset_name or preset()
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(map(repr, table))}")
    return table[name]


def preset(device: torch.device | str | None = None) -> str:
    """The size preset chapters use: 'gpu' on CUDA, else 'cpu'; $FROM_ZERO_PRESET forces either."""
    forced = os.environ.get(PRESET_ENV)
    if forced:
        if forced not in PRESETS:
            raise ValueError(f"{PRESET_ENV}={forced!r} is not a preset: use one of {PRESETS}")
        return forced
    return "gpu" if pick_device(device).type == "cuda" else "cpu"
