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


# `make test` runs in two phases. First everything but chapter 08 on two pytest workers with one torch thread each:
# on two cores that finishes ~20% sooner than one process with two threads (TOOLCHAIN.md; the whole suite on a clean
# clone: 74 minutes, against 89 with chapters 04-12 in one process). Then, alone and with
# every thread, what times a service under load (chapter 08 and its solutions, whose latency claims would measure
# the other worker) and the tests marked after_chapters.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Chapters that store an artifact a later chapter reads run as one unit of work, in order, on one worker: chapter 04
# stores the mini-BERT that 05 fine-tunes, 05 the teacher that 07 distils, 07 the student; 09 stores the GPT that 11
# tunes. A reader that started first would build the artifact itself through the cache's lock: right, but slower.
CHAINS = (("04_pretraining", "05_fine_tuning", "07_distillation"), ("09_gpt", "11_instruction_tuning"))
# The order workers take units in (`--no-loadscope-reorder`), longest first: the first chain (~43 min on one thread)
# on one worker, chapter 06 and then the second chain on the other; chapter 12 (it reads the teacher and the student)
# comes after chapter 10, so that it starts once the first chain is done; then the solutions, longest first; then
# the rest (unit tests, chapters 00-03) in collection order, to even out the end.
ORDER = (*CHAINS[0], "06_peft", *CHAINS[1], "10_llm", "12_preference_tuning",
         "12_preference_tuning_solutions", "09_gpt_solutions", "06_peft_solutions", "10_llm_solutions",
         "07_distillation_solutions", "05_fine_tuning_solutions", "04_pretraining_solutions",
         "11_instruction_tuning_solutions")
SERIAL = ("08_deployment", "08_deployment_solutions")     # load tests and latencies: run with no other work beside


def pytest_configure(config):
    config.addinivalue_line("markers", "after_chapters: runs after the notebooks, reusing the artifacts they built "
                                       "(alone, it builds them first)")
    config.addinivalue_line("markers", "slow: takes seconds to minutes (every notebook, trainings, other processes); "
                                       "`make test-fast` leaves these out")
    config.addinivalue_line("markers", f"serial: runs alone after the rest ({', '.join(SERIAL)} and the "
                                       "after_chapters tests): `make test` runs these in one process, with every thread")


def pytest_collection_modifyitems(session, config, items):
    """Every notebook cell is slow; chapter 08's notebooks and after_chapters tests are serial. Items are sorted into
    the order workers take them (ORDER, then the rest, then SERIAL, then after_chapters); cells keep their order."""
    for item in items:
        after = item.get_closest_marker("after_chapters") is not None
        if _chapter(item) is not None or after:
            item.add_marker(pytest.mark.slow)
        if after or item.path.stem in SERIAL:
            item.add_marker(pytest.mark.serial)
    items.sort(key=lambda item: (item.get_closest_marker("after_chapters") is not None, item.path.stem in SERIAL,
                                 ORDER.index(item.path.stem) if item.path.stem in ORDER else len(ORDER)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadscope, with each of CHAINS one unit of work (one notebook is one unit already)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ChainScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            stem = Path(nodeid.split("::")[0]).stem
            chain = next((chain for chain in CHAINS if stem in chain), None)
            return "+".join(chain) if chain else super()._split_scope(nodeid)

    return ChainScheduling(config, log)


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
