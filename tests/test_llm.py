"""Chapter 10's lesson code (course.ch10_llm) on tiny inputs: a GGUF file written with llama.cpp's own writer is
read back by hand into chapter 09's GPT (types F32, Q8_0, Q4_1, the rotary row order undone), the KV cache gives
the logits of a plain forward pass (in pieces, and with left padding), the repetition penalty is transformers',
streaming never splits a character, the chat template is the tokenizer's, and the OpenAI-shaped service answers
the official openai client, streams, refuses bad requests with a 4xx and keeps serving. One slow test reads
the real SmolLM2 file."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize
from transformers import PreTrainedTokenizerFast, RepetitionPenaltyLogitsProcessor

from course.ch09_gpt import GPT, GPTConfig, train_byte_bpe
from course.ch10_llm import (ChatModel, KVCache, TextStream, chat_prompt, create_chat_app, dequantize, forward_cached,
                             generate_ids, gpt_from_gguf, penalize_repeats, quantize_q4_1, read_gguf,
                             repetition_penalty)
from utils.data import DataError
from utils.models import llm_source
from utils.serving import BackgroundServer

from test_gpt import random_gpt      # random weights far from the initialisation (tests/test_gpt.py)

SMOLLM2_TEMPLATE = (  # the chat template in SmolLM2-135M-Instruct's GGUF metadata
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TYPES = {"F32": GGMLQuantizationType.F32, "Q8_0": GGMLQuantizationType.Q8_0, "Q4_1": GGMLQuantizationType.Q4_1}


def tiny(**overrides) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 96, "context": 64, "width": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                        "ffn": 128, "rope_theta": 1e5, **overrides})


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute): rotate-half rows -> neighbour pairs."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model: GPT, path, kind: str = "F32") -> dict[str, np.ndarray]:
    """`model` as a Llama GGUF file, written by the gguf package as llama.cpp's converter writes one; matrices
    in `kind`. Returns what each of our weights becomes once stored (quantization included)."""
    c = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(c.layers)
    writer.add_context_length(c.context)
    writer.add_embedding_length(c.width)
    writer.add_feed_forward_length(c.ffn)
    writer.add_head_count(c.heads)
    writer.add_head_count_kv(c.kv_heads)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    names = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    stored = {}
    for name, weight in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name.startswith("layers."):
            _, layer, rest = name.split(".", 2)
            gguf_name = f"blk.{layer}.{parts[rest.removesuffix('.weight')]}.weight"
        else:
            gguf_name = names[name]
        ours = weight.numpy().astype(np.float32)
        array = ours
        if ".attn_q." in gguf_name or ".attn_k." in gguf_name:
            array = permute(ours, c.heads if ".attn_q." in gguf_name else c.kv_heads)
        qtype = TYPES[kind] if ours.ndim == 2 else GGMLQuantizationType.F32
        writer.add_tensor(gguf_name, gguf_quantize(array, qtype), raw_dtype=qtype)
        # blocks run along rows and the permutation moves whole rows: quantizing in our row order stores the same values
        stored[name] = gguf_dequantize(gguf_quantize(ours, qtype), qtype).reshape(ours.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


@pytest.mark.parametrize("kind", ["F32", "Q8_0", "Q4_1"])
def test_a_gguf_file_written_by_llama_cpps_writer_loads_into_the_gpt(tmp_path, kind):
    model = random_gpt(tiny())
    stored = write_gguf(model, tmp_path / "tiny.gguf", kind)
    loaded = gpt_from_gguf(tmp_path / "tiny.gguf")
    assert replace(loaded.config, norm_eps=model.config.norm_eps) == model.config      # eps: stored as float32
    assert abs(loaded.config.norm_eps - model.config.norm_eps) < 1e-12
    for name, weight in loaded.state_dict().items():
        if name != "lm_head.weight":
            assert np.array_equal(weight.numpy(), stored[name]), name
    expected = GPT(model.config).eval()
    expected.load_state_dict({k: torch.from_numpy(v) for k, v in stored.items()}, strict=False)
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids), expected(ids))
        if kind == "F32":
            assert torch.allclose(loaded(ids), model(ids), atol=1e-5)


def test_the_header_reader_refuses_other_files_and_dequantizes_like_gguf():
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf(b"PK\x03\x04 a zip file")
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(8, 64)).astype(np.float32)
    for kind, code in (("Q8_0", 8), ("Q4_1", 3)):
        raw = gguf_quantize(weights, TYPES[kind]).tobytes()
        ours = dequantize(raw, {"type": code, "shape": [8, 64]})
        assert np.array_equal(ours, gguf_dequantize(np.frombuffer(raw, np.uint8).reshape(8, -1), TYPES[kind]))
    with pytest.raises(ValueError, match="GGML type 12"):
        dequantize(b"\0" * 64, {"type": 12, "shape": [1, 256]})
    q4 = quantize_q4_1(weights)
    assert np.abs(q4 - weights).max() <= (weights.max() - weights.min()) / 15     # at most one level off
    assert len(np.unique(q4.reshape(-1, 32)[0])) <= 16


def test_the_cache_gives_the_logits_of_a_plain_forward_pass_in_pieces_and_with_left_padding():
    model = random_gpt(tiny())
    ids = torch.randint(0, 96, (2, 30), generator=torch.Generator().manual_seed(1))
    real = torch.ones_like(ids, dtype=torch.bool)
    cache = KVCache(model.config.layers)
    pieces = [forward_cached(model, ids[:, :11], cache, real[:, :11])]
    pieces += [forward_cached(model, ids[:, n:n + 1], cache, real[:, :n + 1]) for n in range(11, 30)]
    with torch.no_grad():
        assert torch.allclose(torch.cat(pieces, 1), model(ids), atol=1e-4)
    assert len(cache) == 30 and cache.nbytes() == 2 * 2 * 2 * 16 * 4 * 30 * 2
    short = ids[1, :7].tolist()
    padded = torch.tensor([[0] * 23 + short, ids[0].tolist()])
    keep = torch.tensor([[False] * 23 + [True] * 7, [True] * 30])
    with torch.no_grad():
        alone = model(torch.tensor([short]))[0, -1]
    assert torch.allclose(forward_cached(model, padded, KVCache(2), keep)[0, -1], alone, atol=1e-4)


def test_batched_generation_equals_each_prompt_alone_and_stops_at_the_stop_token():
    model = random_gpt(tiny())
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [20]]
    alone = [generate_ids(model, [p], 12)[0] for p in prompts]
    assert generate_ids(model, prompts, 12) == alone
    stop = alone[0][3]
    stopped = generate_ids(model, prompts, 12, stop=(stop,))
    assert stopped[0] == alone[0][:alone[0].index(stop) + 1]
    assert generate_ids(model, prompts, 12, logits_rule=repetition_penalty(1.0)) == alone
    seen_by_rule = []
    generate_ids(model, prompts, 3, logits_rule=lambda logits, seen: seen_by_rule.append(seen.clone()) or logits)
    assert seen_by_rule[0][0].tolist() == [-1] * 4 + prompts[0] and seen_by_rule[1].shape == (3, 8)
    assert len(generate_ids(model, [list(range(60))], 10)[0]) == 5          # stops when the context is full
    with pytest.raises(ValueError, match="at most 64"):
        generate_ids(model, [list(range(70))], 10)


def test_the_repetition_penalty_is_transformers():
    seen = torch.randint(0, 40, (4, 25), generator=torch.Generator().manual_seed(2))
    scores = torch.randn(4, 40, generator=torch.Generator().manual_seed(3))
    for penalty in (1.0, 1.2, 0.8):
        assert torch.equal(penalize_repeats(scores, seen, penalty),
                           RepetitionPenaltyLogitsProcessor(penalty)(seen, scores.clone()))
    padded = torch.cat([torch.full((4, 3), -1), seen], 1)         # -1: left padding, not token 0
    assert torch.equal(penalize_repeats(scores, padded, 1.2), penalize_repeats(scores, seen, 1.2))


@pytest.fixture(scope="module")
def chat_tokenizer():
    bpe = train_byte_bpe("Hello there! Café ☕, 你好 🦀. What is the capital of France? Paris. " * 20, 300)
    bpe.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", bos_token="<|im_start|>")
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    return tokenizer


def test_streaming_never_splits_a_character_and_the_template_is_the_tokenizers(chat_tokenizer):
    text = "Café ☕, 你好 🦀!"
    ids = chat_tokenizer(text).input_ids
    stream = TextStream(chat_tokenizer)
    pieces = [stream.add(t) for t in ids]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    conversations = [[{"role": "user", "content": "Hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "你好"}]]
    for conversation in conversations:
        for generation_prompt in (True, False):
            assert chat_prompt(conversation, generation_prompt) == chat_tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=generation_prompt)


@pytest.fixture(scope="module")
def service(chat_tokenizer):
    model = random_gpt(tiny(vocab_size=len(chat_tokenizer), context=160))
    stop = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    with BackgroundServer(create_chat_app(ChatModel(model, chat_tokenizer, stop=(stop,)))) as server:
        yield server, model, chat_tokenizer


def test_the_openai_client_gets_the_same_answer_whole_and_streamed(service):
    from openai import OpenAI
    server, model, tokenizer = service
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=10)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = generate_ids(model, [tokenizer(chat_prompt(messages)).input_ids], 10, stop=(stop,))[0]
    assert whole.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert whole.usage.completion_tokens == len(expected) and whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=10,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    plain = list(client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=10,
                                                stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason is not None
    sampled = [client.chat.completions.create(model="smollm2", messages=messages, temperature=1.0, seed=seed,
                                              max_tokens=10).choices[0].message.content for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1] != sampled[2]           # a seed reproduces its draw; another seed draws again
    assert [m.id for m in client.models.list().data] == ["smollm2"]


@pytest.mark.parametrize("body, status, words", [
    ({"messages": []}, 400, "at least 1 item"),
    ({"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "role"),
    ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}, 400, "greater than 0"),
    ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1000}, 400, "context of 160"),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, 400, "longer than the model's context"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}, 404, "not served"),
    ({"messages": [{"role": "user", "content": "Hi"}], "n": 2}, 400, "less than or equal to 1"),
    ("{not json", 400, "not valid JSON"),
])
def test_bad_requests_get_a_4xx_in_one_line_and_the_service_keeps_serving(service, body, status, words):
    import httpx
    server, _, _ = service
    url = f"{server.url}/v1/chat/completions"
    answer = (httpx.post(url, content=body, headers={"content-type": "application/json"}) if isinstance(body, str)
              else httpx.post(url, json=body))
    assert answer.status_code == status
    error = answer.json()["error"]
    assert words in error["message"] and "\n" not in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert httpx.post(url, json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}).status_code == 200


def test_a_client_that_hangs_up_mid_stream_does_not_stop_the_service(service):
    import httpx
    server, _, _ = service
    url = f"{server.url}/v1/chat/completions"
    with httpx.stream("POST", url, json={"messages": [{"role": "user", "content": "Hi"}], "stream": True,
                                         "max_tokens": 60}) as stream:
        first = next(stream.iter_lines())
    assert first.startswith("data: {")
    assert httpx.post(url, json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}).status_code == 200


def test_llm_sources_are_checked(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="not a .gguf file"):
        llm_source(str(tmp_path / "model.bin"))
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    assert llm_source(str(tmp_path / "mine.gguf")) == (str(tmp_path), "mine.gguf")
    with pytest.raises(DataError, match="no config.json"):
        llm_source(str(tmp_path))
    assert llm_source("hub") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)


@pytest.mark.slow
def test_the_real_smollm2_file_in_our_gpt_gives_transformers_logits():
    from utils.models import load_llm
    llama, tokenizer, path = load_llm("offline")
    ours = gpt_from_gguf(path)
    ids = tokenizer(chat_prompt([{"role": "user", "content": "What is the capital of France?"}]),
                    return_tensors="pt").input_ids
    with torch.no_grad():
        assert (ours(ids) - llama(ids).logits).abs().max() < 1e-3


def test_chapter_08s_service_gains_the_chat_route(chat_tokenizer):
    from fastapi.testclient import TestClient

    from course.ch08_deployment import Predictor, create_app
    from course.ch10_llm import chat_routes
    app = create_app(Predictor(run=None, tokenizer=None, name="stub", version="0.test"))
    model = random_gpt(tiny(vocab_size=len(chat_tokenizer), context=160))
    chat_routes(app, ChatModel(model, chat_tokenizer, stop=(chat_tokenizer.convert_tokens_to_ids("<|im_end|>"),)))
    with TestClient(app) as client:
        assert client.get("/health").json()["model"] == "stub"
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                           "max_tokens": 4, "temperature": 0})
        assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
        assert client.post("/predict", content=b"not json", headers={"content-type": "application/json"}).status_code == 400


def test_load_llm_reads_a_folder_written_by_save_pretrained(tmp_path, chat_tokenizer):
    from course.ch09_gpt import from_llama, to_llama
    from utils.models import load_llm
    gpt = random_gpt(tiny(vocab_size=len(chat_tokenizer)))
    to_llama(gpt).save_pretrained(tmp_path)
    chat_tokenizer.save_pretrained(tmp_path)
    llama, tokenizer, gguf_file = load_llm(str(tmp_path))
    assert gguf_file is None and tokenizer.chat_template == SMOLLM2_TEMPLATE
    ids = torch.randint(0, len(chat_tokenizer), (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(from_llama(llama)(ids), gpt(ids), atol=1e-5)
