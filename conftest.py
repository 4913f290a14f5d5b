"""Test-wide setup: offline everywhere, in this process and in every notebook kernel.

At the top of the repository so that it covers every test, `pytest chapters/xx.ipynb` included.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
TESTS = ROOT / "tests"

# Before anything imports huggingface libraries, and inherited by notebook kernels: the same
# variables `make run-all` sets (the runner imports no huggingface library itself).
from tools.run_notebooks import OFFLINE  # noqa: E402

os.environ.update(OFFLINE)

_session_dir = Path(tempfile.mkdtemp(prefix="from-zero-tests-"))
NETWORK_LOG = _session_dir / "network.log"
NETWORK_LOG.touch()
os.environ["FROM_ZERO_NETWORK_LOG"] = str(NETWORK_LOG)

# Kernels started by nbval read IPython startup files from $IPYTHONDIR: install the guard there.
_startup = _session_dir / "ipython" / "profile_default" / "startup"
_startup.mkdir(parents=True)
(_startup / "00-offline-guard.py").write_text(
    "import importlib.util as _u\n"
    f"_s = _u.spec_from_file_location('offline_guard', {str(TESTS / 'offline_guard.py')!r})\n"
    "_m = _u.module_from_spec(_s); _s.loader.exec_module(_m); _m.install()\n"
    "del _u, _s, _m\n")
os.environ["IPYTHONDIR"] = str(_session_dir / "ipython")

sys.path.insert(0, str(TESTS))  # test helpers (offline_guard) importable here and in tests
import offline_guard  # noqa: E402

offline_guard.install()


# `make test` runs in two phases. First everything that shares nothing (the unit tests, each with a private
# cache, and the chapters that use no other chapter's artifact: 00-03 and 06) on two pytest workers with one
# thread each: on two cores that finishes ~20% sooner than one process with two threads (measured on the
# course's 2-core machines). Then, in one process with every thread, what builds or reads the chapters' shared
# artifacts (the mini-BERT, the teacher, the student), in chapter order: each is built once, by the chapter
# that makes it, before the chapters that read it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

SHARED_ARTIFACTS = {4: "builds the mini-BERT", 5: "builds the teacher", 7: "builds the student",
                    8: "serves the student and the teacher", 9: "builds the GPT that chapter 11 starts from",
                    11: "tunes chapter 09's GPT", 12: "judges with the teacher and the student"}   # chapter 06 fine-tunes the downloaded MiniLM only
FIRST = ("06_", "10_")      # the longest notebooks of the first phase start first (make test passes --no-loadscope-reorder)


def pytest_configure(config):
    config.addinivalue_line("markers", "after_chapters: runs after the notebooks, reusing the artifacts they built "
                                       "(alone, it builds them first)")
    config.addinivalue_line("markers", "slow: takes seconds to minutes (every notebook, trainings, other processes); "
                                       "`make test-fast` leaves these out")
    config.addinivalue_line("markers", "shared_artifacts: builds or reads the chapters' shared artifacts (chapters "
                                       f"{sorted(SHARED_ARTIFACTS)}, their solutions, after_chapters): `make test` "
                                       "runs these in one process, in chapter order, after the rest")


def pytest_collection_modifyitems(session, config, items):
    """Every notebook cell is slow; the chapters in SHARED_ARTIFACTS (and their solutions) and after_chapters
    tests use the shared artifacts. Chapter 06 and its solutions first, after_chapters tests last; otherwise
    the collection order (chapters in order, solutions after the chapters)."""
    for item in items:
        chapter = _chapter(item)
        after = item.get_closest_marker("after_chapters") is not None
        if chapter is not None or after:
            item.add_marker(pytest.mark.slow)
        if after or chapter in SHARED_ARTIFACTS:
            item.add_marker(pytest.mark.shared_artifacts)
    items.sort(key=lambda item: (item.get_closest_marker("after_chapters") is not None,
                                 not item.path.name.startswith(FIRST)))      # stable: cells keep their order


def _chapter(item) -> int | None:
    """The chapter number of a notebook's cell (a solutions notebook's too), None for a unit test."""
    return int(item.path.name[:2]) if item.path.suffix == ".ipynb" and item.path.name[:2].isdigit() else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fail any test, notebook cells included, during which a connection was refused."""
    before = NETWORK_LOG.stat().st_size
    result = yield
    with open(NETWORK_LOG, encoding="utf-8") as handle:
        handle.seek(before)
        attempts = handle.read().splitlines()
    if attempts:
        raise offline_guard.NetworkBlocked(f"tried to reach the network: {attempts[:3]}")
    return result


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private artifact cache for one test."""
    monkeypatch.setenv("FROM_ZERO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
