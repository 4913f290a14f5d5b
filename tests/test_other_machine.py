"""Another machine, simulated: the committed records still load there, and chapters 07 and 08 still run.

Another CPU, thread count or BLAS build rounds differently, so chapter 05's teacher and chapter 04's mini-BERT,
trained there by the same code from the same seed, hold other float bits. Here they are this machine's
artifacts with every float weight moved by a few ulps, stored under the same identity (what they are made
from) in a fresh cache. Records identified by trained weights (as at 4cd6b00) are refused there; records
identified by recipe and inputs load. Runs after the notebooks (they build the artifacts it copies).
"""
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import utils
from utils.artifacts import MANIFEST, sha256_file
from utils.data import load_sentiment

pytestmark = pytest.mark.after_chapters
ULPS = 3


def nudged(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every float tensor moved `ULPS` representable values up: what another machine's rounding looks like."""
    out = {}
    for name, tensor in weights.items():
        if tensor.is_floating_point():
            for _ in range(ULPS):
                tensor = torch.nextafter(tensor, torch.full_like(tensor, float("inf")))
        out[name] = tensor.contiguous()
    return out


def other_machines_copy(source, root):
    """Artifact `source` as another machine would have built it: same identity (artifact.json's version),
    other weight bits; stored in the cache `root`."""
    version = json.loads((source / MANIFEST).read_text())["version"]

    def build(folder):
        for path in source.iterdir():
            if path.is_file() and path.name != MANIFEST:
                shutil.copy2(path, folder / path.name)
        with safe_open(str(folder / "model.safetensors"), "pt") as handle:
            metadata, weights = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
        save_file(nudged(weights), str(folder / "model.safetensors"), metadata=metadata)
    return utils.get_or_build(source.name, build, version=version, root=root)


@pytest.fixture(scope="module")
def other_machine(tmp_path_factory):
    """FROM_ZERO_CACHE pointing at another machine's cache: its teacher and mini-BERT, and this machine's
    teacher logits (keyed by the teacher's identity, which is the same there)."""
    from course.ch04_pretraining import pretrained_mini_bert
    from course.ch05_fine_tuning import teacher
    if utils.preset() != "cpu":
        pytest.skip("the committed records are the CPU preset's")
    here = [teacher(), pretrained_mini_bert()]               # this machine's, built now if the chapters did not
    root = tmp_path_factory.mktemp("other-machine")
    there = [other_machines_copy(folder, root) for folder in here]
    for folder in utils.cache_root().glob("teacher-logits-*"):
        shutil.copytree(folder, root / folder.name)
    patch = pytest.MonkeyPatch()
    patch.setenv("FROM_ZERO_CACHE", str(root))
    yield here, there
    patch.undo()


def test_the_copies_have_other_bits_and_the_same_identity(other_machine):
    here, there = other_machine
    for a, b in zip(here, there):
        assert sha256_file(a / "model.safetensors") != sha256_file(b / "model.safetensors")
        assert utils.digest(a) == utils.digest(b)


def test_every_committed_record_loads_on_the_other_machine(other_machine):
    import course.ch05_fine_tuning as ch05
    import course.ch06_peft as ch06
    import course.ch07_distillation as ch07
    data = load_sentiment()
    ch07.load_sweep("cpu", ch07.distill_settings("cpu"), data)      # 4cd6b00: "made with another … teacher"
    ch06.load_sweep("cpu", ch06.peft_settings("cpu"), data)
    ch05.load_scaling("cpu", data)
    ch05.load_recipes("cpu", data)


def test_chapter_07s_student_and_chapter_08s_card_on_the_other_machine(other_machine):
    import course.ch07_distillation as ch07
    from course.ch08_deployment import model_folder
    # the race's best student, trained there (its teacher's logits are this machine's, copied under the teacher's
    # identity, as that cache would hold them: computing them again takes two minutes and tests nothing more)
    folder = ch07.student(progress=False)
    recorded = json.loads((folder / "classifier.json").read_text())
    assert recorded["inputs"] == json.loads(ch07.DISTILL_SWEEP.path("cpu").read_text())["inputs"]
    assert 0.6 < recorded["test accuracy"] < 1
    card = json.loads((model_folder("student") / "card.json").read_text())
    assert card["test accuracy"] == card["recorded test accuracy"]     # both measured on the same machine
