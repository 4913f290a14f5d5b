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


def pytest_configure(config):
    config.addinivalue_line("markers", "after_chapters: runs after the notebooks, reusing the artifacts they built "
                                       "(alone, it builds them first)")


def pytest_collection_modifyitems(session, config, items):
    """Tests marked after_chapters go last, where `make test` has already built the chapters' artifacts."""
    items.sort(key=lambda item: item.get_closest_marker("after_chapters") is not None)


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
