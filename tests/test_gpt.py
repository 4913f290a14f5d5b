"""Chapter 09's lesson code (course.ch09_gpt), on tiny inputs: the decoder equals transformers' Llama, byte-level
BPE round-trips any text, the sampling filters equal transformers' warpers, the scores count every character,
and pretraining resumes with the same samples; its command on one process and on two."""
import json
import math
import subprocess

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from course.ch09_gpt import (END_OF_TEXT, GPT, GPTConfig, decode, encode, filter_logits, from_llama, generate,
                             gpt_settings, ngram_nats_per_char, nats_per_char, parameter_formula, pretrain_gpt, rope_angles,
                             rotate, to_llama, train_bpe, token_bytes, train_byte_bpe)
from tools.pretrain_gpt import command

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 20
HARD = ["", "学而时习之，不亦说乎？", "👩\u200d👩\u200d👧 🇨🇳", "naïve e\u0301", "tab\tCR\r\nNUL\x00\ufeff\U0010ffff"]


def tiny(**overrides) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 300, "context": 32, "width": 48, "layers": 2, "heads": 6, "kv_heads": 2,
                        "ffn": 96, **overrides})


def random_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """Weights far from the initialisation (norms included), so a mistake anywhere shows in the logits."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 0.1) + (1.0 if p.dim() == 1 else 0.0))
    return model


@pytest.mark.parametrize("kv_heads", [1, 2, 6])
def test_the_gpt_computes_what_llama_computes_and_loads_its_weights(kv_heads):
    ours = random_gpt(tiny(kv_heads=kv_heads))
    llama = to_llama(ours)
    ids = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        assert (ours(ids) - llama(ids).logits).abs().max() < 1e-5
        assert (from_llama(llama)(ids) - ours(ids)).abs().max() < 1e-5


def test_rope_scores_depend_only_on_the_distance():
    cos, sin = rope_angles(50, 8)
    q, k = torch.randn(8), torch.randn(8)
    def score(m, n):
        return rotate(q, cos[m], sin[m]) @ rotate(k, cos[n], sin[n])
    assert abs(score(7, 3) - score(40, 36)) < 1e-5 and abs(score(7, 3) - score(7, 4)) > 1e-3


@pytest.mark.parametrize("overrides", [{}, {"kv_heads": 6}, {"vocab_size": 2048, "width": 192, "heads": 4, "ffn": 512}])
def test_the_parameter_formula_counts_every_weight_once(overrides):
    config = tiny(**overrides)
    assert sum(p.numel() for p in GPT(config).parameters()) == parameter_formula(config)


def test_bad_sizes_and_too_long_inputs_are_refused_in_one_line():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(width=50, heads=4)
    with pytest.raises(ValueError, match="crop the input"):
        GPT(tiny())(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size must be an int >= 257"):
        train_byte_bpe(TEXT, 256)


def test_untrained_model_guesses_about_uniformly():
    model = GPT(tiny()).eval()
    ids, targets = torch.randint(0, 300, (2, 4, 32))     # next tokens unlike the inputs (tied weights favour a copy)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    assert abs(loss.item() - math.log(300)) < 0.05


def test_bpe_by_hand_and_the_library_round_trip_any_text():
    merges, _ = train_bpe(TEXT, 60)
    vocab = token_bytes(merges)
    tokenizer = train_byte_bpe(TEXT, 320)
    assert tokenizer.token_to_id(END_OF_TEXT) == tokenizer.get_vocab_size() - 1
    for text in HARD + [TEXT[:200]]:
        assert decode(encode(text, merges), vocab) == text
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert len(encode(TEXT, merges)) < len(TEXT.encode()) / 2


@pytest.mark.parametrize("knobs", [{"temperature": 0.7}, {"top_k": 1}, {"top_k": 5, "top_p": 0.9},
                                   {"temperature": 1.5, "top_p": 1e-6}, {"top_p": 0.5}])
def test_the_sampling_filters_equal_transformers_warpers(knobs):
    logits = 3 * torch.randn(16, 200, generator=torch.Generator().manual_seed(0))
    warpers = LogitsProcessorList()
    if "temperature" in knobs:
        warpers.append(TemperatureLogitsWarper(knobs["temperature"]))
    if "top_k" in knobs:
        warpers.append(TopKLogitsWarper(knobs["top_k"]))
    if "top_p" in knobs:
        warpers.append(TopPLogitsWarper(knobs["top_p"]))
    ours, theirs = filter_logits(logits, **knobs), warpers(None, logits)
    assert torch.equal(ours.isneginf(), theirs.isneginf())
    assert (ours.softmax(-1) - theirs.softmax(-1)).abs().max() < 1e-6


def test_greedy_generation_equals_llama_generate_and_sampling_is_seeded():
    ours = random_gpt(tiny())
    llama = to_llama(ours)
    prompt = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(1))
    config = GenerationConfig(do_sample=False, max_new_tokens=12, eos_token_id=[], pad_token_id=0)
    theirs = llama.generate(prompt, generation_config=config, attention_mask=torch.ones_like(prompt))
    assert torch.equal(generate(ours, prompt, 12, greedy=True), theirs)
    def sample(seed):
        return generate(ours, prompt, 40, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(sample(0), sample(0)) and not torch.equal(sample(0), sample(1))
    assert sample(0).shape == (2, 45)                     # the window slid past the context of 32


def test_nats_per_char_is_the_whole_texts_cross_entropy_per_character():
    tokenizer = train_byte_bpe(TEXT, 320)
    uniform = GPT(tiny(vocab_size=320))
    with torch.no_grad():
        for p in uniform.parameters():
            p.zero_()                                     # every logit 0: each token costs ln V
    text = TEXT[:300]
    tokens = len(tokenizer.encode(text).ids)
    assert nats_per_char(uniform, tokenizer, text, batch_size=3) == pytest.approx(tokens * math.log(320) / len(text))


def test_ngram_baselines_reward_a_text_they_have_counted():
    ids = torch.tensor([0, 1, 2, 3] * 50)              # add-one: 4 tokens seen 50 times, 6 never (total 4·51 + 6)
    unigram = ngram_nats_per_char(ids, ids, 200, 10)
    bigram = ngram_nats_per_char(ids, ids, 200, 10, k=0.01)
    assert unigram == pytest.approx(199 * math.log(210 / 51) / 200, rel=1e-9) and bigram < 0.05


@pytest.mark.slow
def test_pretraining_resumes_and_shows_the_same_samples(tmp_path):
    splits = {"train": TEXT * 5, "validation": TEXT[:600], "test": TEXT[:600]}
    settings = gpt_settings("cpu", vocab_size=300, context=32, width=48, layers=2, heads=6, kv_heads=2, ffn=96,
                            steps=9, batch_size=4, evaluations=3, eval_chars=300, sample_prompt="To")
    stopped = pretrain_gpt(settings, splits, checkpoint_dir=tmp_path, progress=False,
                           callbacks=[lambda step, history: step >= 4])
    assert stopped["history"].steps_done <= 6 and "3" in stopped["samples"]
    finished = pretrain_gpt(settings, splits, checkpoint_dir=tmp_path, progress=False)
    again = pretrain_gpt(settings, splits, checkpoint_dir=tmp_path, progress=False)
    fresh = pretrain_gpt(settings, splits, checkpoint_dir=tmp_path / "fresh", progress=False)
    assert finished["history"].resumed_from is not None and again["history"].steps_done == 9
    assert again["samples"] == finished["samples"] == fresh["samples"] and set(fresh["samples"]) == {"0", "3", "9"}
    assert finished["history"].eval == fresh["history"].eval


@pytest.mark.slow
def test_the_command_trains_on_two_processes_like_on_one(tmp_path):
    options = ["--steps", "6", "--vocab-size", "300", "--width", "48", "--layers", "2", "--heads", "6", "--ffn", "96",
               "--batch-size", "8", "--evaluations", "2", "--eval-chars", "2000", "--log-every", "1", "--quiet"]
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "FROM_ZERO_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    reports = {}
    for processes in (1, 2):
        out = tmp_path / f"{processes}.json"
        done = subprocess.run(command([*options, "--checkpoint-dir", str(tmp_path / str(processes)), "--out", str(out)],
                                      processes), capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, **env})
        assert done.returncode == 0, done.stderr[-2000:]
        reports[processes] = json.loads(out.read_text())
    one, two = reports[1], reports[2]
    assert two["processes"] == 2 and len(two["train"]) == 6
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one["train"], two["train"])) < 1e-3
