"""utils.identity: what a result is made from, the same on every machine; and the cache folders' settings."""
import json
from dataclasses import dataclass

import pytest
import torch

import utils
from utils import digest, made_from
from utils.artifacts import cache_root


@dataclass(frozen=True)
class Recipe:
    steps: int = 10
    lr: float = 1e-3
    sizes: tuple = (1, 2)


def test_made_from_keeps_settings_readable_and_reduces_inputs_to_digests():
    texts = ["a good film", "a bad film"]
    identity = made_from("toy (chapter 99)", Recipe(), texts=texts, weights=torch.arange(4.0))
    assert identity["recipe"] == "toy (chapter 99)" and identity["steps"] == 10 and identity["sizes"] == [1, 2]
    assert identity["texts"] == digest(texts) and len(identity["weights"]) == 64
    assert made_from(texts=texts) == {"texts": digest(texts)}
    assert made_from(texts=digest(texts)) == {"texts": digest(texts)}          # a digest is kept as it is
    assert digest(["a", "b"]) != digest(["a b"]) and digest((1, 2)) == digest([1, 2])
    assert digest(torch.zeros(2)) != digest(torch.zeros(2, dtype=torch.float64)) != digest(torch.zeros(1, 2))


def test_the_same_digests_as_any_machine_computes():
    """Fixed values: a change of encoding would orphan every committed record, so it must be deliberate."""
    assert digest({"b": 1, "a": [1.5, "x"]}) == digest({"a": [1.5, "x"], "b": 1})
    assert digest(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"   # sha256("abc")
    assert digest("abc") == digest(b"abc") and digest({"a": 1}) == digest('{"a":1}')
    assert digest({"settings": [1, 2.5, "x"], "n": None}) == "3b3602900dfd2293cfc7ab056851cac075745347c5749ab8f9cc472b67a772a9"
    assert digest(torch.arange(3)) == "b38d681145c318bb5d1d6347c3a4cf1b23051dc1613fa9f094ff9968eeef6ed5"   # int64 bytes


def test_an_artifact_is_identified_by_its_recipe_a_plain_folder_by_its_bytes(cache_dir, tmp_path):
    recipe = made_from("toy (chapter 99)", Recipe(), texts=["x"])

    def build(bits):
        return lambda folder: (folder / "model.bin.json").write_text(json.dumps(bits))
    first = utils.get_or_build("toy", build([1, 2]), version=recipe)
    before = digest(first)
    assert before == digest(recipe)
    utils.get_or_build("toy", build([1, 3]), version=recipe, rebuild=True)   # other bits, same recipe
    assert digest(first) == before
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "weights.json").write_text("[1, 2]")
    a = digest(plain)
    (plain / "weights.json").write_text("[1, 3]")
    assert digest(plain) != a


def test_what_has_no_digest_is_named():
    with pytest.raises(TypeError, match="cannot identify a object"):
        digest([object()])
    with pytest.raises(FileNotFoundError, match="cannot identify .*missing"):
        from pathlib import Path
        digest(Path("/definitely/missing"))


@pytest.mark.parametrize("env", ["FROM_ZERO_CACHE", "FROM_ZERO_DATA_CACHE"])
def test_a_cache_setting_that_names_a_file_is_one_clear_line(env, tmp_path, monkeypatch):
    from utils.data import data_cache
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv(env, str(a_file))
    folder_of = cache_root if env == "FROM_ZERO_CACHE" else data_cache
    with pytest.raises(NotADirectoryError, match=rf"^{env}=.*notes.txt is a file, not a folder: point {env} at a "
                                                 r"folder \(it is created if missing\), or unset it$"):
        folder_of()
    monkeypatch.setenv(env, str(tmp_path / "new"))
    assert folder_of() == tmp_path / "new"
