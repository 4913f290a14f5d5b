"""Serving plumbing that is not the lesson: a uvicorn server on a background thread of the kernel, a free
port, and a function called in a Python process of its own (a load-test client that must not share the
server's GIL). Chapter 08 writes the service itself (input checks, micro-batching) and its load test.

For OpenAI-shaped services (chapter 10 writes POST /v1/chat/completions): `openai_error` and `openai_plumbing`
(OpenAI's error object for every bad request, GET /v1/models), and `load_test` (streamed requests through the
official `openai` client, `concurrency` at a time: time to first token and tokens per second).
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


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None):
    """OpenAI's error answer: {"error": {"message", "type", "param", "code"}} with HTTP `status`."""
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": code}}, status_code=status)


def openai_plumbing(app: Any, model_name: str) -> None:
    """On a FastAPI app: requests to /v1/ routes that fail validation answered with OpenAI's error object and
    status 400 (the first problem, in one line; FastAPI's default is a 422 with a list; other routes keep the
    app's own answer), and GET /v1/models naming `model_name`."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError

    other_routes = app.exception_handlers.get(RequestValidationError)    # e.g. chapter 08's /predict, its own format

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, problem: RequestValidationError):
        if other_routes is not None and not request.url.path.startswith("/v1/"):
            return await other_routes(request, problem)
        first = problem.errors()[0]
        if first["type"] == "json_invalid":
            return openai_error(400, f"the request body is not valid JSON ({first['ctx'].get('error', '?')})")
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "the request body"
        return openai_error(400, f"{where}: {first['msg']}", param=where)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "from-zero"}]}


def timed_stream(client: Any, question: str, model: str, max_tokens: int = 24) -> dict[str, float]:
    """Stream one greedy answer through an OpenAI client: seconds to the first piece, seconds in all, tokens."""
    started, first, tokens = time.perf_counter(), None, 0
    for chunk in client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens, stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": question}]):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"first": first if first is not None else float("nan"), "seconds": time.perf_counter() - started,
            "tokens": tokens}


def load_test(client: Any, questions: list[str], concurrency: int, model: str = "smollm2",
              max_tokens: int = 24) -> dict[str, Any]:
    """Stream every question, `concurrency` at a time, from a pool of threads: the median time to the first
    token, the median tokens/s of one answer, and all answers' tokens over the wall time."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        runs = list(pool.map(lambda q: timed_stream(client, q, model, max_tokens), questions))
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(runs),
            "first token, median ms": 1000 * statistics.median(r["first"] for r in runs),
            "tokens/s per request": statistics.median(r["tokens"] / r["seconds"] for r in runs),
            "tokens/s in all": sum(r["tokens"] for r in runs) / wall}


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
