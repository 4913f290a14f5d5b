# generated from chapters/08_deployment.ipynb: edit the notebook, then run make export
"""08 · Deployment (模型部署): from the notebook to a served, measured model"""


import asyncio
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from datasets import DatasetDict
from torch import nn

import utils
from course.ch05_fine_tuning import (LABELS, MAX_LENGTH, NEUTRAL_CONFIDENCE, batches, behaviour_table, load_classifier, predict_proba, scores,
                                     teacher, tokenize)
from course.ch03_model_anatomy import count_parameters
from course.ch07_distillation import student
from utils.data import load_sentiment, sources
from utils.models import quiet_loggers
from utils.serving import call_elsewhere


SERVABLE_MODELS = {"student": ("07", student, "a mini-BERT (chapter 04's architecture and tokenizer) distilled from the "
                                      "teacher on an augmented transfer set (chapter 07)"),
           "teacher": ("05", teacher, "all-MiniLM-L6-v2 with a mean-pooling head, fine-tuned on the training "
                                      "sentences (chapter 05)")}
CARD_FORMAT = "5"     # bumped when the card's text changes: cached folders are remade


def source_folder(name: str) -> Path:
    """The chapter artifact behind a served model: "student" (chapter 07) or "teacher" (chapter 05)."""
    if name not in SERVABLE_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(SERVABLE_MODELS)} (or give a model folder)")
    return SERVABLE_MODELS[name][1]()


def test_loader(tokenizer, data=None, max_length: int = MAX_LENGTH, batch_size: int = 128):
    """The test split in chapter 05's evaluation batches (the loader its accuracy was computed with)."""
    data = data if data is not None else load_sentiment()
    tokens = tokenize(DatasetDict(test=data["test"]), tokenizer, max_length)
    return batches(tokens["test"], tokenizer, batch_size, shuffle=False)


def measure(model: nn.Module, tokenizer, data=None, max_length: int = MAX_LENGTH) -> dict[str, Any]:
    """Test accuracy, F1, expected calibration error and the behavioural pass rates of a classifier."""
    data = data if data is not None else load_sentiment()
    probs = predict_proba(model, test_loader(tokenizer, data, max_length))
    score = scores(data["test"]["label"], probs)
    return {"test accuracy": score["accuracy"], "f1": score["f1"], "ece": score["ece"],
            "test sentences": len(probs), "train sentences": len(data["train"]),
            "behaviour": behaviour_table(model, tokenizer)}


def card_facts(name: str, folder: Path, model: nn.Module, measured: dict[str, Any]) -> dict[str, Any]:
    """Everything the card says, as numbers and strings read from the folder, the measurement and the manifest."""
    recorded = json.loads((folder / "classifier.json").read_text())
    config = model.config
    weights = utils.artifacts.sha256_file(folder / "model.safetensors")
    licences = {}
    for part in sources()["rt-sentences"]["licence"].split("; "):       # "ratings: …; sentences: …"
        what, _, terms = part.rpartition(": ")
        licences[f"training {what or 'data'}"] = terms
    if name == "teacher":
        licences["pretrained weights"] = sources()["all-MiniLM-L6-v2"]["licence"]
    chapter, _, description = SERVABLE_MODELS.get(name, ("?", None, "a classifier saved with chapter 05's save_classifier"))
    return {"name": f"from-zero-sentiment-{name}", "version": f"{chapter}.{weights[:12]}", "card format": CARD_FORMAT,
            "description": description, "chapter": chapter, "labels": list(LABELS),
            "parameters": count_parameters(model),
            "layers": config.num_hidden_layers, "hidden size": config.hidden_size,
            "heads": config.num_attention_heads, "vocabulary": config.vocab_size,
            "max tokens": recorded.get("settings", {}).get("max_length", MAX_LENGTH),
            "weights MB": round((folder / "model.safetensors").stat().st_size / 1e6, 1), "weights sha256": weights,
            "training": {k: recorded[k] if k in recorded else recorded["settings"][k]
                         for k in ("arm", "lr", "seed", "steps", "batch_size", "temperature", "alpha", "copies")
                         if k in recorded or k in recorded.get("settings", {})},
            "recorded test accuracy": recorded["test accuracy"],
            "recorded validation accuracy": recorded.get("validation accuracy"),
            **{k: measured[k] for k in ("test accuracy", "f1", "ece", "test sentences", "train sentences", "behaviour")},
            "licences": licences}


def card_head(facts: dict[str, Any]) -> str:
    """The card's front matter, title and model table: what the model is and how big."""
    return f"""---
language: en
license: other
tags: [text-classification, sentiment, from-zero-course]
metrics: [accuracy, f1, ece]
---
# {facts['name']} (version {facts['version']})

Sentence-level sentiment, two labels ({' / '.join(facts['labels'])}): {facts['description']}.
Made by the From Zero course, chapter {facts['chapter']}; this card was generated by chapter 08 from
measured numbers.

## Model
| | |
| --- | --- |
| parameters | {facts['parameters']:,} |
| layers, hidden size, heads | {facts['layers']}, {facts['hidden size']}, {facts['heads']} |
| vocabulary | {facts['vocabulary']:,} WordPiece tokens |
| input | at most {facts['max tokens']} tokens; longer texts are truncated |
| weights | model.safetensors, {facts['weights MB']} MB, sha256 {facts['weights sha256'][:16]}… |
"""


def card_evidence(facts: dict[str, Any]) -> str:
    """How it was trained, and what it scored on the test split and on chapter 05's behavioural checks."""
    training = ", ".join(f"{k} {v}" for k, v in facts["training"].items())
    behaviour = "\n".join(f"| {row['phenomenon']} | {row['sentences']} | {row['pass rate']:.0%} |"
                          for row in facts["behaviour"])
    return f"""
## Training
Rated Rotten Tomatoes sentences (Pang & Lee 2004, ratings by Hutto & Gilbert 2014) made binary:
{facts['train sentences']:,} training sentences; {training}. Validation accuracy
{facts['recorded validation accuracy']:.1%}.

## Evaluation (test split: {facts['test sentences']:,} sentences never used for training or choosing)
| accuracy | F1 (positive) | expected calibration error |
| --- | --- | --- |
| {facts['test accuracy']:.1%} | {facts['f1']:.3f} | {facts['ece']:.3f} |

Behavioural checks (chapter 05; for neutral facts "pass" means a top probability below {NEUTRAL_CONFIDENCE}):

| phenomenon | sentences | pass rate |
| --- | --- | --- |
{behaviour}
"""


def card_limits(facts: dict[str, Any]) -> str:
    """What the model is for and not for, its licences, and how to load it."""
    lowest = min(row["pass rate"] for row in facts["behaviour"])
    weakest = [row["phenomenon"] for row in facts["behaviour"] if row["pass rate"] == lowest]
    licences = "\n".join(f"- {k}: {v}" for k, v in facts["licences"].items())
    return f"""
## Intended use and limits
- For: teaching, and sorting short English opinions about films into negative and positive.
- Not for: decisions about people, other languages, texts longer than {facts['max tokens']} tokens
  (only the start is read), or neutral text (the model always answers one of two labels).
- Weakest behavioural check{'s' if len(weakest) > 1 else ''}: {' and '.join(weakest)}, {lowest:.0%} of {'their' if len(weakest) > 1 else 'its'} sentences passed.
- The sentences are film reviews from around 2000; words and topics outside that domain are less reliable.

## Licences
{licences}

## Use
```python
from course.ch05_fine_tuning import load_classifier, predict
model, tokenizer = load_classifier("this/folder")
predict(model, tokenizer, "A warm and funny film.")
```
Served: `FROM_ZERO_SERVE=this/folder uvicorn course.ch08_deployment:app` (see chapter 08).
"""


def model_card(facts: dict[str, Any]) -> str:
    """The README.md of a model folder, written from `card_facts` (nothing typed by hand)."""
    return card_head(facts) + card_evidence(facts) + card_limits(facts)


def model_folder(name: str, *, rebuild: bool = False) -> Path:
    """A self-contained model folder for "student" or "teacher": the chapter's files, `card.json`, `README.md`.
    Cached; rebuilt when what the source model is made from (its recipe and inputs) changes."""
    source = source_folder(name)

    def build(folder: Path) -> None:
        for path in source.iterdir():
            if path.is_file() and path.name != utils.artifacts.MANIFEST and not path.name.startswith("."):
                shutil.copy2(path, folder / path.name)
        model, tokenizer = load_classifier(folder)
        recorded = json.loads((folder / "classifier.json").read_text())
        max_length = recorded.get("settings", {}).get("max_length", MAX_LENGTH)     # what the chapter evaluated with
        facts = card_facts(name, folder, model, measure(model, tokenizer, max_length=max_length))
        (folder / "card.json").write_text(json.dumps(facts, indent=1))
        (folder / "README.md").write_text(model_card(facts))
    version = utils.made_from("model folder with its card (chapter 08)", {"card format": CARD_FORMAT}, source=source)
    return utils.get_or_build(f"served-{name}", build, version=version, rebuild=rebuild)


Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]      # (input_ids, attention_mask) int64 → logits


def torch_runner(model: nn.Module) -> Runner:
    """A runner for a PyTorch classifier (eval mode, no gradients, on the model's device)."""
    model.eval()
    device = next(model.parameters()).device

    @torch.inference_mode()
    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return model(input_ids=torch.from_numpy(input_ids).to(device),
                     attention_mask=torch.from_numpy(attention_mask).to(device)).logits.float().cpu().numpy()
    return run


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def probabilities(run: Runner, tokenizer, texts: Sequence[str], batch_size: int = 32,
                  max_length: int = MAX_LENGTH) -> np.ndarray:
    """Class probabilities for `texts` (n × 2, float32), in batches of similar length, in the texts' order."""
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = np.empty((len(texts), len(LABELS)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                            return_tensors="np")
        out[rows] = softmax(run(encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)))
    return out


def folder_probabilities(folder: str | Path, texts: Sequence[str]) -> list[list[float]]:
    """Load a model folder and return its probabilities for `texts` (what a fresh process runs)."""
    model, tokenizer = load_classifier(folder)
    return probabilities(torch_runner(model), tokenizer, texts).tolist()


class LogitsOnly(nn.Module):
    """(input_ids, attention_mask) → logits: the one-output function that is exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Write `model` to one ONNX file with dynamic batch and sequence axes (torch's dynamo exporter)."""
    path = Path(path)
    example = tokenizer(["an example", "a second, somewhat longer example sentence"], padding=True,
                        return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: sequence}
    with quiet_loggers("torch.onnx", "torch._dynamo", "onnxscript", "torch.export"):   # the exporter narrates
        torch.onnx.export(LogitsOnly(model).eval(), (example["input_ids"], example["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_shapes={"input_ids": axes, "attention_mask": axes}, dynamo=True,
                          external_data=False, verbose=False)
    return path


def quantise_onnx(source: str | Path, target: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantisation: int8 weights, activations quantised on the fly (like chapter 07)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with quiet_loggers("root"):
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return Path(target)


def onnx_runner(path: str | Path, threads: int | None = None) -> Runner:
    """A runner for an ONNX file on onnxruntime's CPU provider (`threads`: default torch's thread count)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]
    return run


def onnx_files(name: str, *, rebuild: bool = False) -> Path:
    """The served model's ONNX files (model.onnx, model-int8.onnx), exported once per model folder."""
    folder = model_folder(name)

    def build(target: Path) -> None:
        model, tokenizer = load_classifier(folder)
        quantise_onnx(export_onnx(model, tokenizer, target / "model.onnx"), target / "model-int8.onnx")
    return utils.get_or_build(f"onnx-{name}", build, version=utils.made_from("ONNX export (chapter 08)", model=folder),
                              rebuild=rebuild)


def scoring_latency_ms(run: Runner, tokenizer, text: str, repeats: int = 30) -> float:
    """Median milliseconds to score one sentence, after three warm-up calls."""
    for _ in range(3):
        probabilities(run, tokenizer, [text])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        probabilities(run, tokenizer, [text])
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def compare_runtimes(name: str, texts: Sequence[str], labels: Sequence[int],
                     runners: dict[str, Runner], tokenizer, files: dict[str, Path | None]) -> list[dict[str, Any]]:
    """One row per runtime: file size, test accuracy, agreement with the first runner, max |Δp|, latency of one
    sentence (the median over the first 20 texts, each scored alone) and sentences/s over `texts` in batches of 32."""
    rows, reference = [], None
    for runtime, run in runners.items():
        started = time.perf_counter()
        probs = probabilities(run, tokenizer, texts)
        seconds = time.perf_counter() - started
        reference = probs if reference is None else reference
        latency = float(np.median([scoring_latency_ms(run, tokenizer, text, repeats=3) for text in texts[:20]]))
        path = files.get(runtime)
        rows.append({"model": name, "runtime": runtime,
                     "file MB": round(path.stat().st_size / 1e6, 1) if path else None,
                     "test accuracy (%)": round(100 * float((probs.argmax(1) == np.asarray(labels)).mean()), 1),
                     "agreement (%)": round(100 * float((probs.argmax(1) == reference.argmax(1)).mean()), 1),
                     "max |Δp|": float(np.abs(probs - reference).max()),
                     "latency ms": round(latency, 2), "one at a time /s": round(1000 / latency),
                     "sentences/s": round(len(texts) / seconds), "probs": probs})
    return rows


from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

MAX_TEXTS, MAX_CHARACTERS = 64, 2_000      # per request; the card says how many tokens are actually read


class PredictRequest(BaseModel):
    """The body of POST /predict: an object with one field, 1 to MAX_TEXTS strings of at most MAX_CHARACTERS."""
    model_config = ConfigDict(extra="forbid")                # a misspelt field is an error, not ignored
    texts: list[Annotated[StrictStr, Field(max_length=MAX_CHARACTERS)]] = Field(min_length=1, max_length=MAX_TEXTS)

    @field_validator("texts")
    @classmethod
    def not_blank(cls, texts: list[str]) -> list[str]:     # the one check written by hand
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"item {i} is empty or only spaces")
        return texts


class BadRequest(ValueError):
    """A request the service refuses: `status` is the HTTP status, the message says what to send instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def one_line(errors: Sequence[dict[str, Any]]) -> BadRequest:
    """pydantic's (or FastAPI's) first validation error as a BadRequest: a status and one line."""
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])   # a misspelt field says so
    where = [str(part) for part in first["loc"] if part != "body"]
    where = "the body" if not where else where[0] + "".join(f"[{part}]" for part in where[1:])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "json_invalid":
        return BadRequest(400, f'the body is not JSON ({message}); send {{"texts": ["a sentence", ...]}}')
    status = 413 if first["type"] in ("too_long", "string_too_long") else 422
    return BadRequest(status, f"{where}: {message[0].lower() + message[1:]}; send "
                              f'{{"texts": [1 to {MAX_TEXTS} strings of at most {MAX_CHARACTERS:,} characters]}}')


def read_texts(body: bytes) -> list[str]:
    """The texts of a /predict request body, or BadRequest with a one-line reason (what the service checks)."""
    try:
        return PredictRequest.model_validate_json(body).texts
    except ValidationError as error:
        raise one_line(error.errors()) from None


def pipeline_rows(probs: np.ndarray) -> list[list[dict[str, float | str]]]:
    """[[{"label", "score"}, ...] per text], labels sorted by score: transformers' pipeline with top_k=None."""
    return [[{"label": LABELS[j], "score": float(p[j])} for j in np.argsort(-p, kind="stable")] for p in probs]


async def gather_requests(queue: asyncio.Queue, max_batch: int, max_wait: float) -> list[tuple]:
    """Wait for a first request, then take more until `max_batch` texts are gathered or the first has waited
    `max_wait` seconds. Each request is (texts, future, arrival time)."""
    waiting = [await queue.get()]
    count, deadline = len(waiting[0][0]), waiting[0][2] + max_wait
    while count < max_batch:
        left = deadline - time.perf_counter()
        try:
            item = queue.get_nowait() if left <= 0 else await asyncio.wait_for(queue.get(), left)
        except (asyncio.QueueEmpty, asyncio.TimeoutError):
            break
        waiting.append(item)
        count += len(item[0])
    return waiting


def hand_back(waiting: list[tuple], probs: np.ndarray | None = None, error: Exception | None = None) -> None:
    """Give each waiting caller its own rows of the batch's probabilities (or the batch's error) through its future."""
    start = 0
    for texts, future, _ in waiting:
        if not future.done():                # a caller that gave up (cancelled) gets nothing
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(probs[start:start + len(texts)])
        start += len(texts)


class MicroBatcher:
    """Gathers concurrent requests for at most `max_wait_ms` (or until `max_batch` texts) into one forward pass."""

    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch: int = 32, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be ≥ 1 and max_wait_ms ≥ 0, not {max_batch} and {max_wait_ms}")
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="forward")   # one forward pass at a time
        self.queue: asyncio.Queue = asyncio.Queue()    # (texts, future, arrival time)
        self.log: list[dict[str, float]] = []

    async def submit(self, texts: list[str]) -> np.ndarray:
        """Queue the texts; return their probabilities once the batch they joined has run."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future, time.perf_counter()))
        return await future

    async def alone(self, texts: list[str]) -> np.ndarray:
        """No batching: this request's texts in their own forward pass."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, texts)

    async def run(self) -> None:
        """The batching loop (one task per service): gather, one forward pass on the worker thread, hand back."""
        while True:
            waiting = await gather_requests(self.queue, self.max_batch, self.max_wait)
            texts = [text for item in waiting for text in item[0]]
            started = time.perf_counter()
            try:
                probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, texts)
            except Exception as error:          # the callers get the error; the loop goes on
                hand_back(waiting, error=error)
                continue
            self.log.append({"requests": len(waiting), "texts": len(texts), "waited ms": 1000 * (started - waiting[0][2]),
                             "forward ms": 1000 * (time.perf_counter() - started)})
            hand_back(waiting, probs)


@dataclass
class Predictor:
    """Texts → probabilities with one runner; `name` and `version` are what /health reports."""
    run: Runner
    tokenizer: Any
    name: str
    version: str
    max_length: int = MAX_LENGTH

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return probabilities(self.run, self.tokenizer, texts, max_length=self.max_length)


def load_predictor(spec: str | Path = "student", runtime: str = "torch") -> Predictor:
    """"student", "teacher" or a model folder (with card.json or classifier.json); runtime "torch" or "onnx"."""
    if runtime not in ("torch", "onnx"):
        raise ValueError(f"unknown runtime {runtime!r}; choose 'torch' or 'onnx'")
    if runtime == "onnx" and str(spec) not in SERVABLE_MODELS:
        raise ValueError("runtime 'onnx' serves 'student' or 'teacher'; for another folder use export_onnx + onnx_runner")
    folder = model_folder(str(spec)) if str(spec) in SERVABLE_MODELS else Path(spec)
    if not (folder / "classifier.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no classifier.json); give 'student', 'teacher' "
                                f"or a folder written by model_folder / save_classifier")
    model, tokenizer = load_classifier(folder)
    card = json.loads((folder / "card.json").read_text()) if (folder / "card.json").is_file() else {}
    run = torch_runner(model) if runtime == "torch" else onnx_runner(onnx_files(str(spec)) / "model.onnx")
    return Predictor(run, tokenizer, card.get("name", folder.name), card.get("version", "unversioned"),
                     card.get("max tokens", 64))


def serving_lifespan(predictor: Predictor | None, max_batch: int, max_wait_ms: float):
    """What the server does when it starts (load the predictor, start the batcher's loop) and when it stops."""
    @asynccontextmanager
    async def lifespan(app):
        served = predictor or load_predictor(os.environ.get("FROM_ZERO_SERVE", "student"),
                                             os.environ.get("FROM_ZERO_SERVE_RUNTIME", "torch"))
        app.state.predictor = served
        app.state.batcher = MicroBatcher(served, max_batch, max_wait_ms)
        task = asyncio.create_task(app.state.batcher.run())
        yield
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        app.state.batcher.executor.shutdown(wait=True)
    return lifespan


def answer_bad_requests(app) -> None:
    """Every bad request gets its 4xx and one line: a `BadRequest` raised in any route, and a body that fails
    `PredictRequest` (FastAPI raises `RequestValidationError`; `one_line` words it)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, error: BadRequest):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return await bad_request(request, one_line(error.errors()))


def create_app(predictor: Predictor | None = None, *, batching: bool = True, max_batch: int = 32,
               max_wait_ms: float = 5.0):
    """The FastAPI application: POST /predict, GET /health."""
    from fastapi import FastAPI, Request

    app = FastAPI(title="From Zero sentiment", lifespan=serving_lifespan(predictor, max_batch, max_wait_ms))
    app.state.batching = batching
    answer_bad_requests(app)

    @app.get("/health")
    async def health(request: Request):
        served = request.app.state.predictor
        return {"status": "ok", "model": served.name, "version": served.version,
                "batching": request.app.state.batching, "max_texts": MAX_TEXTS, "max_characters": MAX_CHARACTERS}

    @app.post("/predict")
    async def predict(body: PredictRequest, request: Request):   # FastAPI has validated the body already
        texts = body.texts
        batcher = request.app.state.batcher
        probs = await (batcher.submit(texts) if request.app.state.batching else batcher.alone(texts))
        served = request.app.state.predictor
        return {"model": served.name, "version": served.version, "predictions": pipeline_rows(probs)}

    return app


app = create_app()      # `uvicorn course.ch08_deployment:app` (or `make serve`) serves FROM_ZERO_SERVE


from utils.serving import BackgroundServer   # uvicorn on a daemon thread, on a free port of 127.0.0.1


async def load_test(url: str, texts: Sequence[str], concurrency: int, requests: int = 200, seconds: float = 10.0,
                    timeout: float = 30.0) -> dict[str, Any]:
    """`concurrency` users each POST one text at a time to `url`/predict until `requests` are sent or
    `seconds` have passed. Returns requests/s, latency percentiles and every answer (by request number)."""
    import httpx
    latencies, answers, failures, sent = [], {}, 0, 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, trust_env=False) as client:
        async def user() -> None:
            nonlocal sent, failures
            while sent < requests and time.perf_counter() < deadline:
                number, sent = sent, sent + 1
                started = time.perf_counter()
                response = await client.post("/predict", json={"texts": [texts[number % len(texts)]]})
                latencies.append(time.perf_counter() - started)
                if response.status_code == 200:
                    answers[number] = response.json()["predictions"][0]
                else:
                    failures += 1
        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = 1000 * np.asarray(latencies)
    return {"concurrency": concurrency, "requests": len(latencies), "failures": failures, "seconds": elapsed,
            "requests/s": len(latencies) / elapsed, "p50 ms": float(np.percentile(ms, 50)),
            "p95 ms": float(np.percentile(ms, 95)), "p99 ms": float(np.percentile(ms, 99)), "answers": answers}


def run_load_plan(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of `plan` ({"texts", "runs": [{"url", "concurrency", "requests", "seconds", ...}], "warmup"}) in
    order, after `warmup` requests to each URL; each result carries its run's other keys."""
    async def main() -> list[dict[str, Any]]:
        for url in dict.fromkeys(run["url"] for run in plan["runs"]):
            await load_test(url, plan["texts"], 4, requests=plan.get("warmup", 24))
        results = []
        for run in plan["runs"]:
            result = await load_test(run["url"], plan["texts"], run["concurrency"], run["requests"], run["seconds"])
            results.append({**{k: v for k, v in run.items() if k != "url"}, **result})
        return results
    return asyncio.run(main())


def load_test_elsewhere(plan: dict[str, Any], timeout: float = 600) -> list[dict[str, Any]]:
    """`run_load_plan(plan)` in a Python process of its own, so that the clients do not share the server's GIL."""
    results = call_elsewhere("course.ch08_deployment:run_load_plan", plan, timeout)
    for result in results:                  # JSON keys are strings: the request numbers come back as ints
        result["answers"] = {int(number): answer for number, answer in result["answers"].items()}
    return results


def answers_match(result: dict[str, Any], texts: Sequence[str], expected: np.ndarray, tolerance: float = 1e-4) -> bool:
    """Every answer of a load test has the in-process label and probabilities (within `tolerance`)."""
    for number, answer in result["answers"].items():
        probs = expected[number % len(texts)]
        scored = {row["label"]: row["score"] for row in answer}
        if answer[0]["label"] != LABELS[int(probs.argmax())] or \
                max(abs(scored[label] - float(p)) for label, p in zip(LABELS, probs)) > tolerance:
            return False
    return True


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'SERVABLE_MODELS', 'CARD_FORMAT', 'source_folder', 'test_loader', 'measure', 'card_facts', 'card_head',
    'card_evidence', 'card_limits', 'model_card', 'model_folder', 'Runner', 'torch_runner', 'softmax',
    'probabilities', 'folder_probabilities', 'LogitsOnly', 'export_onnx', 'quantise_onnx', 'onnx_runner',
    'onnx_files', 'scoring_latency_ms', 'compare_runtimes', 'MAX_TEXTS', 'MAX_CHARACTERS', 'PredictRequest',
    'BadRequest', 'one_line', 'read_texts', 'pipeline_rows', 'gather_requests', 'hand_back', 'MicroBatcher',
    'Predictor', 'load_predictor', 'serving_lifespan', 'answer_bad_requests', 'create_app', 'app', 'load_test',
    'run_load_plan', 'load_test_elsewhere', 'answers_match',
]
