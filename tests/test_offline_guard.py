"""The guard itself: decisions tested on addresses, connections tested against a fake socket
method, so that no packet can leave this machine even if the guard were broken."""
import socket

import pytest

import offline_guard


@pytest.mark.parametrize("address, allowed", [
    (("127.0.0.1", 80), True), (("127.8.9.10", 1), True), (("::1", 80, 0, 0), True),
    (("localhost", 8888), True), (("::ffff:127.0.0.1", 80, 0, 0), True), ("/tmp/kernel.sock", True),
    (("192.0.2.1", 443), False), (("huggingface.co", 443), False), (("2001:db8::1", 443, 0, 0), False),
    (("10.1.2.3", 80), False),
])
def test_only_loopback_is_allowed(address, allowed):
    assert offline_guard.is_allowed(address) is allowed


def test_blocked_connections_raise_and_are_logged(monkeypatch, tmp_path):
    log = tmp_path / "net.log"
    monkeypatch.setenv(offline_guard.LOG_ENV, str(log))
    reached = []
    fake = offline_guard._guard(lambda self, address: reached.append(address))
    with pytest.raises(offline_guard.NetworkBlocked, match="blocked: the course must run offline"):
        fake(None, ("192.0.2.1", 443))
    fake(None, ("127.0.0.1", 9))
    assert reached == [("127.0.0.1", 9)] and "192.0.2.1" in log.read_text()


def test_the_guard_is_installed_in_this_process():
    assert hasattr(socket.socket.connect, "__wrapped__") and hasattr(socket.socket.connect_ex, "__wrapped__")


def test_notebook_kernels_run_offline_with_the_guard(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    log = tmp_path / "kernel-net.log"
    nb = new_notebook(cells=[new_code_cell(
        "import os, socket\n"
        "assert hasattr(socket.socket.connect, '__wrapped__'), 'guard not installed'\n"  # before any connect
        f"os.environ['{offline_guard.LOG_ENV}'] = {str(log)!r}\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(('192.0.2.1', 9))\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
        "print(os.environ['HF_HUB_OFFLINE'], os.environ['HF_DATASETS_OFFLINE'])")])
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    assert nb.cells[0].outputs[0].text.split() == ["NetworkBlocked", "1", "1"]
    assert "192.0.2.1" in log.read_text()
