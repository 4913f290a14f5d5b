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


# Under `pytest -n 2` (make test) each worker and the notebook kernels it starts use one thread: two workers
# with one thread each on two cores finish ~20% sooner than one process with two (TOOLCHAIN.md).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# The notebooks that take longest start first, so that two workers finish at about the same time.
LONGEST_FIRST = ("05_", "04_", "07_", "06_", "08_", "03_", "02_", "01_", "00_")


def pytest_configure(config):
    config.addinivalue_line("markers", "after_chapters: runs after the notebooks, reusing the artifacts they built "
                                       "(alone, it builds them first)")
    config.addinivalue_line("markers", "slow: takes seconds to minutes (every notebook, trainings, other processes); "
                                       "`make test-fast` leaves these out")


def pytest_collection_modifyitems(session, config, items):
    """Every notebook cell is slow. Notebooks run first, longest first, then the unit tests; tests marked
    after_chapters go last, where `make test` has already built the chapters' artifacts."""
    for item in items:
        if _notebook(item) is not None or item.get_closest_marker("after_chapters") is not None:
            item.add_marker(pytest.mark.slow)

    def order(item):
        name = _notebook(item)
        rank = next((i for i, prefix in enumerate(LONGEST_FIRST) if name and name.startswith(prefix)), len(LONGEST_FIRST))
        return (item.get_closest_marker("after_chapters") is not None, name is None, rank)
    items.sort(key=order)                                   # stable: a notebook's cells keep their order


def _notebook(item) -> str | None:
    return item.path.name if item.path.suffix == ".ipynb" else None


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
