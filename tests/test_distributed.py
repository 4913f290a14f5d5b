"""utils.train on several processes: chapter 04's pretraining command (tools/pretrain.py), short, on one process
and under `accelerate launch` on two (distributed data parallel, gloo on the CPU), compared step by step.
The full-size comparison is bench/distributed_pretraining.py."""
import json
import os
import subprocess
import types

import pytest
import torch

from tools.pretrain import command
from utils.data import load_corpus
from utils.distributed import shard

TINY = ["--steps", "10", "--batch-size", "8", "--vocab-size", "400", "--block-size", "32", "--validation-blocks", "16",
        "--evaluations", "2", "--no-in-domain", "--dropout", "0", "--log-every", "1", "--quiet"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(load_corpus("train")[:400]) + "\n")
    env = {**os.environ, "FROM_ZERO_CORPUS": str(corpus), "FROM_ZERO_CACHE": str(folder / "cache"),
           "FROM_ZERO_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}

    def pretrain(name: str, processes: int, *extra: str, check: bool = True) -> dict | str:
        """Run the command; `name`'s part before a "-" names the checkpoint folder (shared to resume)."""
        out = folder / f"{name}.json"
        done = subprocess.run(command([*TINY, "--checkpoint-dir", str(folder / name.split("-")[0]), "--out", str(out),
                                       *extra], processes), env=env, capture_output=True, text=True, timeout=300)
        if not check:
            return done.stderr
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(out.read_text())
    return pretrain


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_exactly(workspace):
    one = workspace("one", 1)
    two = workspace("two", 2)
    assert (one["processes"], two["processes"]) == (1, 2)
    gaps = [abs(a["loss"] - b["loss"]) for a, b in zip(one["train"], two["train"])]
    assert len(gaps) == 10
    # Same batches and masked positions; the only difference is that each process averages the loss over its
    # own half's masked tokens (about 19 of 38 here), so the two means are weighted equally: a few 0.001.
    assert max(gaps) < 0.05 and sum(gaps) / len(gaps) < 0.02, gaps
    assert abs(one["test"]["loss"] - two["test"]["loss"]) < 0.02
    assert [row["step"] for row in two["eval"]] == [5, 10]

    stopped = workspace("resume-a", 2, "--stop-at", "4")
    resumed = workspace("resume-b", 2)
    assert stopped["steps_done"] == 4 and resumed["resumed_from"] == 4
    assert resumed["train"] == two["train"] and resumed["test"] == two["test"]     # bit for bit


@pytest.mark.slow
def test_a_checkpoint_written_by_two_processes_is_refused_by_one(workspace):
    workspace("other", 2, "--stop-at", "3")
    message = workspace("other-again", 1, check=False)
    assert "was written by 2 process(es), this run has 1" in message and "--num_processes 2" in message


def test_a_global_batch_that_does_not_divide_between_the_processes_fails_before_training():
    two = types.SimpleNamespace(num_processes=2, is_main_process=True, process_index=0)
    loader = torch.utils.data.DataLoader(range(20), batch_size=7, drop_last=True)
    with pytest.raises(ValueError, match="global batch of 7 does not divide between 2 processes"):
        shard(loader, two)
    ragged = torch.utils.data.DataLoader(range(21), batch_size=8)
    with pytest.raises(ValueError, match="last batch, of 5, does not divide between 2 processes"):
        shard(ragged, two)
    with pytest.raises(TypeError, match="must be a torch DataLoader"):
        shard([torch.zeros(2)], two)
    assert shard(loader, types.SimpleNamespace(num_processes=1)) is loader
