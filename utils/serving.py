"""Serving plumbing that is not the lesson: a uvicorn server on a background thread of the kernel, a free
port, and a function called in a Python process of its own (a load-test client that must not share the
server's GIL). Chapter 08 writes the service itself (input checks, micro-batching) and its load test.
"""
from __future__ import annotations

import atexit
import importlib
import json
import socket
import subprocess
import sys
import threading
import time
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at this moment, on `host`."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class BackgroundServer:
    """uvicorn serving `app` on a daemon thread (it dies with the kernel); `stop()` ends it cleanly."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn
        self.app, self.host, self.port = app, host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url} (port taken, or the model failed "
                                   f"to load: see the messages above)")
            time.sleep(0.02)
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def call_elsewhere(target: str, argument: Any, timeout: float = 600) -> Any:
    """`function(argument)` in a separate Python process, `target` naming it as "package.module:function";
    the argument and the result travel as JSON. A one-line error if that process fails."""
    module, _, name = target.partition(":")
    if not module or not name.isidentifier():
        raise ValueError(f"target {target!r} must name a function as 'package.module:function'")
    done = subprocess.run([sys.executable, "-m", "utils.serving", target], input=json.dumps(argument),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"{target} failed in its own process: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(target: str) -> None:
    module, _, name = target.partition(":")
    function = getattr(importlib.import_module(module), name)
    print(json.dumps(function(json.load(sys.stdin))))


if __name__ == "__main__":
    _main(sys.argv[1])
