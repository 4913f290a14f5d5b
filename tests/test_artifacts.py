import json
import threading
import time

import pytest
import torch
from torch import nn

from utils import artifacts, get_or_build, load_module, save_module
from utils.artifacts import cache_root, remove, verify
from utils.checkpoint import CheckpointError


def counting_build(calls, value=1.0):
    def build(folder):
        calls.append(folder.name)
        model = nn.Linear(2, 2)
        nn.init.constant_(model.weight, value)
        save_module(model, folder / "model.safetensors")
    return build


def test_builds_once_then_reuses(cache_dir):
    calls = []
    first = get_or_build("toy", counting_build(calls))
    second = get_or_build("toy", counting_build(calls))
    assert first == second == cache_dir / "toy" and len(calls) == 1
    assert sorted(p.name for p in first.iterdir()) == ["artifact.json", "model.safetensors"]


def test_load_returns_the_object(cache_dir):
    model = get_or_build("toy", counting_build([], 0.5),
                         load=lambda folder: load_module(nn.Linear(2, 2), folder / "model.safetensors"))
    assert torch.all(model.weight == 0.5)


def test_a_corrupt_artifact_is_rebuilt_with_a_warning(cache_dir):
    calls = []
    folder = get_or_build("toy", counting_build(calls))
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        verify(folder)
    with pytest.warns(UserWarning, match="rebuilding .*corrupt"):
        get_or_build("toy", counting_build(calls))
    assert len(calls) == 2
    verify(folder)


def test_a_new_version_or_rebuild_builds_again(cache_dir):
    calls = []
    get_or_build("toy", counting_build(calls))
    with pytest.warns(UserWarning, match="out of date"):
        get_or_build("toy", counting_build(calls), version="2")
    get_or_build("toy", counting_build(calls), version="2", rebuild=True)
    assert len(calls) == 3


def test_an_artifact_made_from_other_inputs_is_rebuilt_and_the_warning_names_what_changed(cache_dir):
    calls = []
    made = {"steps": 10, "corpus sha256": "6707892fa3788b5ab9ed"}
    get_or_build("toy", counting_build(calls), version=json.dumps(made))
    get_or_build("toy", counting_build(calls), version=json.dumps(made))
    assert len(calls) == 1
    with pytest.warns(UserWarning, match=r"rebuilding .*toy: out of date \(made from corpus sha256 6707892fa378…, "
                                         r"now 1234\)$"):
        get_or_build("toy", counting_build(calls), version=json.dumps({**made, "corpus sha256": "1234"}))
    assert len(calls) == 2


def test_a_failed_build_leaves_nothing_that_looks_valid(cache_dir):
    def broken(folder):
        (folder / "half.safetensors").write_bytes(b"x")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        get_or_build("toy", broken)
    assert not (cache_dir / "toy").exists()
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_pickles_and_empty_builds_are_refused(cache_dir):
    with pytest.raises(CheckpointError, match="pickle files \\['pytorch_model.bin'\\]"):
        get_or_build("toy", lambda folder: (folder / "pytorch_model.bin").write_bytes(b"\x80"))
    with pytest.raises(CheckpointError, match="wrote no files"):
        get_or_build("toy", lambda folder: None)
    assert not (cache_dir / "toy").exists()


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_bad_names(cache_dir, name):
    with pytest.raises(ValueError, match="plain folder name"):
        get_or_build(name, lambda folder: None)


def test_two_builders_at_once_build_once(cache_dir):
    calls = []

    def slow(folder):
        calls.append(1)
        time.sleep(0.3)
        (folder / "tokens.txt").write_text("hello")
    threads = [threading.Thread(target=get_or_build, args=("slow", slow)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and (cache_dir / "slow" / "tokens.txt").read_text() == "hello"


def test_save_pretrained_models_work_and_are_safetensors(cache_dir):
    from transformers import BertConfig, BertModel
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    folder = get_or_build("tiny-bert", lambda folder: BertModel(config).save_pretrained(folder))
    assert (folder / "model.safetensors").is_file()
    ids = torch.tensor([[1, 2, 3]])
    torch.manual_seed(0)
    expected = BertModel(config).eval()(ids).last_hidden_state
    assert torch.allclose(BertModel.from_pretrained(folder).eval()(ids).last_hidden_state, expected)


def test_cache_root_and_remove(cache_dir, monkeypatch):
    assert cache_root() == cache_dir
    get_or_build("toy", counting_build([]))
    remove("toy")
    assert not (cache_dir / "toy").exists()
    monkeypatch.delenv(artifacts.CACHE_ENV)
    assert cache_root().name == "checkpoints" and (cache_root().parent / "utils").is_dir()
