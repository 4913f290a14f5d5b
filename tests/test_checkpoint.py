import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import utils
from utils.checkpoint import CheckpointError, atomic_path, load_module, load_state, save_module, save_state


def test_state_round_trip_keeps_types(tmp_path):
    state = {"step": 3, 0: {"exp_avg": torch.randn(2, 3), "flag": True}, "lr": 1e-3, "nan": math.nan,
             "python_rng": random.getstate(), "numpy_rng": np.random.get_state(), "none": None,
             "bytes": torch.get_rng_state(), "nested": [(1, "a"), {"k": torch.arange(3)}],
             "half": torch.ones(2, dtype=torch.bfloat16), "np_scalar": np.float32(0.5)}
    back = load_state(save_state(state, tmp_path / "state.safetensors"))
    assert back["step"] == 3 and back["lr"] == 1e-3 and back["none"] is None and math.isnan(back["nan"])
    assert torch.equal(back[0]["exp_avg"], state[0]["exp_avg"]) and back[0]["flag"] is True
    assert back["python_rng"] == state["python_rng"]
    random.setstate(back["python_rng"])
    np.random.set_state(back["numpy_rng"])  # the uint32 key comes back with its dtype
    assert back["numpy_rng"][1].dtype == np.uint32
    assert np.array_equal(back["numpy_rng"][1], state["numpy_rng"][1])
    assert torch.equal(back["bytes"], state["bytes"]) and back["half"].dtype == torch.bfloat16
    assert back["nested"][0] == (1, "a") and torch.equal(back["nested"][1]["k"], torch.arange(3))
    assert back["np_scalar"] == 0.5


def test_optimizer_state_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    fresh = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(load_state(save_state(optimizer.state_dict(), tmp_path / "opt.safetensors")))
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_unsupported_values_are_refused_without_pickle(tmp_path):
    with pytest.raises(TypeError, match=r"cannot save state\['f'\] of type function"):
        save_state({"f": lambda: 0}, tmp_path / "s.safetensors")


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            1 / 0
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]  # no leftovers


def test_atomic_path_replaces_a_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["fresh.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


class Tied(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.embed = nn.Embedding(10, width)
        self.head = nn.Linear(width, 10, bias=False)
        self.head.weight = self.embed.weight


def test_module_round_trip_with_tied_weights(tmp_path):
    model = Tied()
    path = save_module(model, tmp_path / "model.safetensors")
    other = load_module(Tied(), path)
    assert torch.equal(other.embed.weight, model.embed.weight)
    assert other.head.weight is other.embed.weight


def test_loading_into_the_wrong_model_says_so(tmp_path):
    path = save_module(Tied(4), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not fit Tied.*another configuration"):
        load_module(Tied(8), path)
    with pytest.raises(CheckpointError, match="does not fit Linear: missing"):
        load_module(nn.Linear(4, 10), path)


def test_missing_corrupt_and_pickled_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*train/build it first"):
        load_module(nn.Linear(2, 2), tmp_path / "nothing.safetensors")
    path = save_module(nn.Linear(2, 2), tmp_path / "model.safetensors")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="corrupt or incomplete.*delete it"):
        load_module(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        load_state(path)
    (tmp_path / "model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="refusing to load .*pickles"):
        load_module(nn.Linear(2, 2), tmp_path / "model.bin")
    weights = save_module(nn.Linear(2, 2), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="no training state"):
        load_state(weights)


def test_utils_never_unpickles():
    for source in Path(utils.__file__).parent.glob("*.py"):
        text = source.read_text()
        assert "torch.load(" not in text and "import pickle" not in text, source.name
