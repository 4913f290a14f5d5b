import pytest
import torch

from utils import hardware
from utils.hardware import amp_dtype, describe, needs_grad_scaler, pick_device, preset


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine with or without CUDA / MPS."""
    monkeypatch.delenv(hardware.DEVICE_ENV, raising=False)
    monkeypatch.delenv(hardware.PRESET_ENV, raising=False)

    def set_machine(cuda=False, mps=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
        monkeypatch.setattr(hardware, "_mps_works", lambda: mps)
    return set_machine


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"),
                                                 (False, False, "cpu")])
def test_pick_device_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert pick_device().type == expected


def test_environment_variable_and_argument_override(machine, monkeypatch):
    machine(cuda=True)
    monkeypatch.setenv(hardware.DEVICE_ENV, "cpu")
    assert pick_device().type == "cpu"
    assert pick_device("cuda").type == "cuda"  # an explicit argument beats the variable
    assert pick_device(torch.device("cpu")).type == "cpu"


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "banana"])
def test_unknown_device_is_a_clear_error(machine, name):
    machine()
    with pytest.raises(ValueError, match=r"(unknown|unsupported) device .*use 'cpu', 'cuda'"):
        pick_device(name)


def test_missing_cuda_or_mps_is_an_error_not_a_silent_fallback(machine):
    machine(cuda=False, mps=False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(RuntimeError, match="MPS is not usable"):
        pick_device("mps")
    machine(cuda=True)
    with pytest.raises(RuntimeError, match="only 1 CUDA device"):
        pick_device("cuda:3")


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                               ((9, 0), torch.bfloat16)])
def test_amp_dtype_bf16_on_ampere_fp16_on_t4(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert amp_dtype("cuda") == dtype
    assert needs_grad_scaler(amp_dtype("cuda")) == (dtype == torch.float16)


def test_no_amp_on_cpu_and_mps():
    assert amp_dtype("cpu") is None and amp_dtype("mps") is None
    assert not needs_grad_scaler(None) and not needs_grad_scaler(torch.bfloat16)


def test_describe_is_one_line(machine, monkeypatch):
    machine()
    line = describe()
    assert line.startswith("CPU") and torch.__version__ in line and "\n" not in line

    class T4:
        name, total_memory, major, minor = "Tesla T4", 15 * 2**30, 7, 5
    machine(cuda=True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: T4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert describe() == f"CUDA · Tesla T4 · 15 GiB · compute 7.5 · torch {torch.__version__} · AMP float16 + GradScaler"


def test_preset_follows_device_and_can_be_forced(machine, monkeypatch):
    machine(cuda=False)
    assert preset() == "cpu"
    machine(cuda=True)
    assert preset() == "gpu"
    monkeypatch.setenv(hardware.PRESET_ENV, "cpu")
    assert preset() == "cpu"
    monkeypatch.setenv(hardware.PRESET_ENV, "huge")
    with pytest.raises(ValueError, match="not a preset"):
        preset()


def test_a_table_per_preset_gives_this_machines_entry_or_names_the_choices(monkeypatch):
    from utils.hardware import for_preset
    table = {"cpu": 1, "gpu": 2}
    monkeypatch.setenv("FROM_ZERO_PRESET", "gpu")
    assert for_preset(table) == 2 and for_preset(table, "cpu") == 1
    with pytest.raises(ValueError, match="unknown preset 'tpu'; choose one of 'cpu', 'gpu'"):
        for_preset(table, "tpu")
