"""Chapter 08's lesson code (course/ch08_deployment.py, exported from chapters/08_deployment.ipynb), on a tiny
model: request checks, the pipeline shape, batching by length, the micro-batcher, the app, ONNX, the card."""
import asyncio
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import BertConfig, BertModel

from course import ch08_deployment as ch08
from course.ch04_pretraining import train_wordpiece
from course.ch05_fine_tuning import LABELS, SentenceClassifier, save_classifier
from course.ch08_deployment import (BadRequest, MicroBatcher, Predictor, answers_match,
                                    create_app, export_onnx, load_predictor, load_test, load_test_elsewhere, model_card, onnx_runner,
                                    pipeline_rows, probabilities, quantise_onnx, read_texts, torch_runner)
from utils.serving import BackgroundServer, call_elsewhere, free_port
from utils.data import load_corpus

TEXTS = ["a good film", "the acting was dull and slow , and long", "fine", "not bad at all , really quite good"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(load_corpus("validation")[:800], vocab_size=600)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    classifier = SentenceClassifier(BertModel(config, add_pooling_layer=False)).eval()
    classifier.classifier.weight.data.normal_(0, 1.0)       # not all near 0.5, so labels differ between texts
    return classifier


@pytest.fixture(scope="module")
def predictor(model, tokenizer):
    return Predictor(torch_runner(model), tokenizer, "tiny", "0.test")


# --- request checks ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, words", [
    (b'{"texts": ["x"', 400, "not JSON"), (b"\xff\xfe", 400, "not JSON"), (b'["a"]', 422, "the body: input should be an object"),
    (b'{"text": ["a"]}', 422, "text: extra inputs are not permitted"), (b'{"texts": ["a"], "top_k": 2}', 422, "top_k: extra inputs"),
    (b'{"texts": "a"}', 422, "texts: input should be a valid array"), (b'{"texts": []}', 422, "at least 1 item"),
    (b'{"texts": ["a", 5]}', 422, "texts[1]: input should be a valid string"), (b'{"texts": [null]}', 422, "texts[0]"),
    (b'{"texts": ["  "]}', 422, "texts: item 0 is empty or only spaces"),
    (json.dumps({"texts": ["a"] * (ch08.MAX_TEXTS + 1)}).encode(), 413, f"at most {ch08.MAX_TEXTS} items"),
    (json.dumps({"texts": ["a" * (ch08.MAX_CHARACTERS + 1)]}).encode(), 413, f"at most {ch08.MAX_CHARACTERS} characters")])
def test_bad_requests_get_a_status_and_a_one_line_reason(body, status, words):
    with pytest.raises(BadRequest, match=words.replace("[", r"\[").replace("]", r"\]")) as error:
        read_texts(body)
    assert error.value.status == status and "\n" not in str(error.value)


def test_good_requests_pass_unchanged():
    assert read_texts(json.dumps({"texts": TEXTS}).encode()) == TEXTS


def test_pipeline_rows_have_every_label_highest_first():
    rows = pipeline_rows(np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32))
    assert [[r["label"] for r in row] for row in rows] == [["positive", "negative"], ["negative", "positive"]]
    assert rows[0][0]["score"] == pytest.approx(0.8) and isinstance(rows[0][0]["score"], float)


# --- inference --------------------------------------------------------------------------------------------------
def test_probabilities_sorted_by_length_come_back_in_the_callers_order(model, tokenizer):
    run = torch_runner(model)
    together = probabilities(run, tokenizer, TEXTS, batch_size=2)
    alone = np.concatenate([probabilities(run, tokenizer, [t]) for t in TEXTS])
    assert together.shape == (len(TEXTS), len(LABELS)) and np.allclose(together.sum(1), 1, atol=1e-6)
    assert np.allclose(together, alone, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_has_dynamic_axes_and_matches_torch(model, tokenizer, tmp_path):
    path = export_onnx(model, tokenizer, tmp_path / "model.onnx")
    run = onnx_runner(path, threads=1)
    for texts in (TEXTS[:1], TEXTS, TEXTS * 5):            # other batch sizes and lengths than the example
        assert np.abs(probabilities(run, tokenizer, texts) - probabilities(torch_runner(model), tokenizer, texts)).max() < 1e-5
    int8 = quantise_onnx(path, tmp_path / "model-int8.onnx")
    assert int8.stat().st_size < path.stat().st_size
    assert probabilities(onnx_runner(int8, threads=1), tokenizer, TEXTS).shape == (len(TEXTS), 2)


def test_load_predictor_refuses_what_it_cannot_serve(tmp_path):
    with pytest.raises(ValueError, match="runtime"):
        load_predictor("student", runtime="tensorrt")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_predictor(tmp_path)
    with pytest.raises(ValueError, match="'onnx' serves"):
        load_predictor(tmp_path, runtime="onnx")


def test_load_predictor_reads_a_saved_classifier(model, tokenizer, tmp_path):
    save_classifier(model, tokenizer, tmp_path, {"test accuracy": 0.5})
    loaded = load_predictor(tmp_path)
    assert loaded.version == "unversioned" and np.allclose(loaded(TEXTS), probabilities(torch_runner(model), tokenizer, TEXTS))


# --- the micro-batcher and the app ------------------------------------------------------------------------------
def test_micro_batcher_gathers_concurrent_requests_into_one_forward_pass(predictor):
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return predictor(texts)

    async def scenario():
        batcher = MicroBatcher(counting, max_batch=32, max_wait_ms=50)
        task = asyncio.create_task(batcher.run())
        answers = await asyncio.gather(*(batcher.submit([t]) for t in TEXTS))
        task.cancel()
        return batcher, answers

    batcher, answers = asyncio.run(scenario())
    assert calls == [len(TEXTS)] and batcher.log[0]["requests"] == len(TEXTS)
    assert np.allclose(np.concatenate(answers), predictor(TEXTS), atol=1e-5)


def test_micro_batcher_stops_at_max_batch_and_passes_errors_on(predictor):
    def failing(texts):
        raise RuntimeError("boom")

    async def scenario():
        batcher = MicroBatcher(predictor, max_batch=2, max_wait_ms=50)
        task = asyncio.create_task(batcher.run())
        await asyncio.gather(*(batcher.submit([t]) for t in TEXTS))
        broken = MicroBatcher(failing, max_wait_ms=0)
        broken_task = asyncio.create_task(broken.run())
        with pytest.raises(RuntimeError, match="boom"):
            await broken.submit(["x"])
        task.cancel(), broken_task.cancel()
        return batcher

    assert max(row["texts"] for row in asyncio.run(scenario()).log) == 2
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(predictor, max_batch=0)


@pytest.mark.parametrize("batching", [True, False])
def test_app_answers_refuses_and_keeps_serving(predictor, batching):
    with TestClient(create_app(predictor, batching=batching)) as client:
        health = client.get("/health").json()
        assert health["model"] == "tiny" and health["version"] == "0.test" and health["batching"] is batching
        good = client.post("/predict", json={"texts": TEXTS})
        assert good.status_code == 200
        rows = good.json()["predictions"]
        expected = predictor(TEXTS)
        assert [row[0]["label"] for row in rows] == [LABELS[i] for i in expected.argmax(1)]
        bad = client.post("/predict", content=b"not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
        assert client.post("/predict", json={"texts": []}).status_code == 422
        assert client.post("/predict", json={"texts": ["still fine"]}).status_code == 200


def test_background_server_and_load_test_on_loopback(predictor):
    with BackgroundServer(create_app(predictor)) as server:
        assert server.url.startswith("http://127.0.0.1:")
        result = asyncio.run(load_test(server.url, TEXTS, concurrency=4, requests=20, seconds=30))
        log = server.app.state.batcher.log
    assert not server.thread.is_alive()
    assert result["requests"] == 20 and result["failures"] == 0 and len(result["answers"]) == 20
    assert result["p50 ms"] <= result["p95 ms"] <= result["p99 ms"]
    assert answers_match(result, TEXTS, predictor(TEXTS))
    assert sum(row["requests"] for row in log) == 20


def test_answers_match_notices_a_wrong_answer(predictor):
    expected = predictor(TEXTS)
    wrong = {"answers": {0: pipeline_rows(expected[:1][:, ::-1].copy())[0]}}
    assert not answers_match(wrong, TEXTS, expected)


# --- the card ---------------------------------------------------------------------------------------------------
def test_model_card_is_written_from_the_facts():
    facts = {"name": "from-zero-sentiment-x", "version": "07.abc", "description": "a test model", "chapter": "07",
             "labels": list(LABELS), "parameters": 1234567, "layers": 2, "hidden size": 128, "heads": 2,
             "vocabulary": 8000, "max tokens": 64, "weights MB": 5.6, "weights sha256": "f" * 64,
             "training": {"lr": 0.001, "steps": 1000}, "test accuracy": 0.7803, "f1": 0.781, "ece": 0.052,
             "test sentences": 1057, "train sentences": 8453,
             "recorded validation accuracy": 0.79, "behaviour": [{"phenomenon": "negation", "sentences": 12, "pass rate": 0.5},
                                                   {"phenomenon": "contrast", "sentences": 12, "pass rate": 0.75}],
             "licences": {"sentences": "for research use"}}
    card = model_card(facts)
    for text in ("78.0%", "1,234,567", "0.052", "negation, 50%", "lr 0.001", "for research use", "at most 64 tokens", "8,453",
                 "79.0%"):
        assert text in card, text
    assert card.startswith("---\n")


@pytest.mark.slow
def test_load_test_in_a_process_of_its_own(predictor):
    with BackgroundServer(create_app(predictor, batching=False)) as server:
        plan = {"texts": TEXTS, "warmup": 2, "runs": [{"url": server.url, "concurrency": 2, "requests": 6, "seconds": 30,
                                                       "label": "x"}]}
        [result] = load_test_elsewhere(plan)
    assert result["label"] == "x" and result["requests"] == 6 and sorted(result["answers"]) == list(range(6))
    assert answers_match(result, TEXTS, predictor(TEXTS))


def test_a_function_called_in_its_own_process_returns_its_json_or_one_line():
    assert call_elsewhere("json:loads", '{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(RuntimeError, match=r"json:loads failed in its own process: .*JSONDecodeError"):
        call_elsewhere("json:loads", "not json")
    with pytest.raises(ValueError, match="package.module:function"):
        call_elsewhere("json.loads", "{}")
    assert isinstance(free_port(), int)
