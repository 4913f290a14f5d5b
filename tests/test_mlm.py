"""course.ch04_pretraining (chapter 04's cells): WordPiece by hand, masking statistics, packing, our model against
BertForMaskedLM, the masked-only head, scores, the cached artifact."""
from collections import Counter

import pytest
import torch
from torch import nn
from transformers import BertForMaskedLM

from course.ch04_pretraining import (BERT_STYLE, SINUSOID_SCALE, SPECIAL_TOKENS, MaskedLM, PretrainSettings,
                                     artifact_name, bert_style, copy_weights, corpus, init_like_bert, mask_tokens,
                                     masked_lm_scores, merge_pair, mini_bert_config, new_model, pack_blocks,
                                     pair_scores, pretrain, pretrained_mini_bert, settings_for, sinusoids, spell,
                                     special_mask, text_identity, to_bert, train_by_hand, train_wordpiece,
                                     unigram_baseline, wordpiece_tokenize)
from utils.checkpoint import CheckpointError
from utils.data import load_corpus, load_sentiment


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(load_corpus("validation")[:800], vocab_size=600)


def test_masking_follows_the_80_10_10_rule_and_never_touches_special_tokens():
    ids = torch.randint(5, 1000, (400, 256))
    ids[:, 0], ids[:, -1], ids[::7, 100:] = 2, 3, 0            # [CLS], [SEP], padding
    special = ids < 5
    inputs, labels = mask_tokens(ids, special, 1000, 4, 0.15, first_normal_id=5,
                                 generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[special].any() and torch.equal(inputs[special], ids[special])
    assert abs(chosen.sum() / (~special).sum() - 0.15) < 0.005
    masked = (inputs == 4) & chosen
    unchanged = (inputs == ids) & chosen
    assert abs(masked.sum() / chosen.sum() - 0.8) < 0.01
    assert abs(unchanged.sum() / chosen.sum() - 0.1 - 0.1 / 995) < 0.01   # kept, or replaced by itself
    assert torch.equal(labels[chosen], ids[chosen]) and (inputs[chosen & ~masked] >= 5).all()


def test_pack_blocks_wraps_every_block_and_wastes_nothing(tokenizer):
    lines = load_corpus("validation")[:50]
    blocks = pack_blocks(lines, tokenizer, block_size=32)
    assert blocks.shape[1] == 32 and (blocks[:, 0] == tokenizer.cls_token_id).all()
    assert (blocks[:, -1] == tokenizer.sep_token_id).all() and not (blocks == tokenizer.pad_token_id).any()
    with pytest.raises(ValueError, match="not enough for one block"):
        pack_blocks(["two words"], tokenizer, block_size=64)


def test_masked_only_head_gives_the_same_loss_as_the_full_head(tokenizer):
    torch.manual_seed(0)
    settings = PretrainSettings(model="tiny", vocab_size=600, block_size=32)
    model = new_model(settings, tokenizer).eval()
    blocks = pack_blocks(load_corpus("validation")[:50], tokenizer, 32)[:8]
    inputs, labels = mask_tokens(blocks, special_mask(blocks, tokenizer), len(tokenizer), tokenizer.mask_token_id,
                                 generator=torch.Generator().manual_seed(1))
    full = nn.functional.cross_entropy(model(inputs).flatten(0, 1), labels.flatten())       # every position scored
    assert torch.allclose(model(inputs, labels), full, atol=1e-5)
    scores = masked_lm_scores(model, inputs, labels, tokenizer.mask_token_id, batch_size=3)
    assert abs(scores["loss"] - full.item()) < 1e-4 and 0 <= scores["accuracy"] <= 1
    at_mask = (labels != -100) & (inputs == tokenizer.mask_token_id)
    expected = (model(inputs).argmax(-1)[at_mask] == labels[at_mask]).float().mean().item()
    assert abs(scores["accuracy at [MASK]"] - expected) < 1e-9
    assert "accuracy at [MASK]" not in masked_lm_scores(model, inputs, labels)


def test_our_model_equals_bert_for_masked_lm_given_the_same_weights_both_ways(tokenizer):
    torch.manual_seed(0)
    config = mini_bert_config(PretrainSettings(vocab_size=600, block_size=32), tokenizer)
    theirs, ours = BertForMaskedLM(config).eval(), MaskedLM(config).eval()
    copy_weights(ours, theirs, to_bert=False)
    ids = torch.randint(5, 600, (3, 32))
    with torch.no_grad():
        assert (ours(ids) - theirs(input_ids=ids).logits).abs().max() < 1e-5
        trained = init_like_bert(MaskedLM(config)).eval()                   # and ours into theirs
        assert (to_bert(trained)(input_ids=ids).logits - trained(ids)).abs().max() < 1e-5
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_init_like_bert_draws_weights_at_0_02_and_zeroes_biases(tokenizer):
    torch.manual_seed(0)
    model = init_like_bert(MaskedLM(mini_bert_config(PretrainSettings(vocab_size=600), tokenizer)))
    assert abs(model.encoder.layers[0].ffn_up.weight.std().item() - 0.02) < 0.002
    assert abs(model.encoder.embeddings.token.weight.std().item() - 0.02) < 0.002
    assert not model.head.dense.bias.any() and not model.head.bias.any()
    assert torch.equal(model.head.norm.weight, torch.ones(128))


def test_wordpiece_by_hand_merges_by_score_bpe_by_count():
    assert spell("fun") == ["f", "##u", "##n"] and merge_pair(["f", "##u", "##n", "##u"], "##u", "##n") == ["f", "##un", "##u"]
    words = Counter({"the": 10, "then": 5, "qua": 2, "tax": 3})
    scores = pair_scores(words, {w: spell(w) for w in words})
    assert scores[("t", "##h")] == (15, 15 / (18 * 15)) and scores[("q", "##u")] == (2, 2 / (2 * 2))
    assert train_by_hand(words, 1, "bpe")[0] == [("t", "##h")]               # the most frequent pair
    merges, spelled = train_by_hand(words, 1, "wordpiece")                   # the pair that sticks: q is always before u
    assert merges == [("q", "##u")] and spelled["qua"] == ["qu", "##a"]


def test_our_wordpiece_tokenizing_rule_gives_the_library_pieces(tokenizer):
    vocabulary = tokenizer.get_vocab()
    for word in ["the", "lobster", "unbelievably", "pretraining", "zzzzqqq", "a"]:
        normal = tokenizer.backend_tokenizer.normalizer.normalize_str(word)
        assert wordpiece_tokenize(normal, vocabulary) == tokenizer.tokenize(word), word
    assert wordpiece_tokenize("ab", {"a"}) == ["[UNK]"] and wordpiece_tokenize("ab", {"a", "##b"}) == ["a", "##b"]


def test_unigram_baseline_guesses_the_most_frequent_normal_token():
    train_blocks = torch.tensor([[2, 7, 7, 7, 8, 3], [2, 7, 9, 8, 3, 3]])     # [SEP]=3 is frequent but special
    labels = torch.tensor([[-100, 7, 8, -100, 9, 7]])
    baseline = unigram_baseline(train_blocks, labels, vocab_size=10, special_ids=[0, 1, 2, 3, 4])
    assert baseline["accuracy"] == 0.5
    counts = torch.tensor([0, 0, 0, 0, 0, 1, 1, 5, 3, 2], dtype=torch.double)          # add-one smoothed
    expected = torch.exp(-(counts / counts.sum()).log()[torch.tensor([7, 8, 9, 7])].mean()).item()
    assert abs(baseline["perplexity"] - expected) < 1e-9


def test_settings_presets_and_errors():
    assert settings_for("cpu").model == "tiny" and settings_for("gpu").steps > settings_for("cpu").steps
    assert settings_for("cpu", steps=5).steps == 5
    with pytest.raises(ValueError, match="unknown preset 'tpu'"):
        settings_for("tpu")


def test_the_recipe_search_options_fail_at_the_door_and_leave_the_default_recipe_as_it_was(tokenizer):
    with pytest.raises(ValueError, match="positions must be one of .'learned', 'sinusoidal'., got 'rotary'"):
        PretrainSettings(positions="rotary")
    with pytest.raises(ValueError, match="the corpus would be empty: keep wikitext=True or in_domain=True"):
        PretrainSettings(wikitext=False, in_domain=False)
    sentences = list(load_sentiment()["train"]["text"])
    assert corpus(PretrainSettings(wikitext=False)) == sentences
    assert corpus(PretrainSettings()) == load_corpus("train") + sentences
    table = sinusoids(64, 16)
    assert table.shape == (64, 16) and torch.allclose(table[:, 0], torch.sin(torch.arange(64.0)))
    assert torch.equal(table[0, 1::2], torch.ones(8))            # cos(0) in every odd column
    settings = PretrainSettings(vocab_size=600, block_size=32)
    torch.manual_seed(0)
    learned = new_model(settings, tokenizer)
    torch.manual_seed(0)
    waves = new_model(PretrainSettings(vocab_size=600, block_size=32, positions="sinusoidal"), tokenizer)
    positions = waves.encoder.embeddings.position.weight
    assert torch.equal(positions, SINUSOID_SCALE * sinusoids(*positions.shape))
    for (name, a), b in zip(learned.named_parameters(), waves.parameters()):      # the rest starts the same
        assert "embeddings.position" in name or torch.equal(a, b), name
    assert artifact_name(settings_for("cpu", steps=275)) == "mini-bert-mlm-tiny-275"       # a preset at any steps
    assert artifact_name(settings_for("gpu")) == "mini-bert-mlm-small-20000"
    other = artifact_name(bert_style("cpu"))                     # the benches' recipe never replaces the chapter's
    assert other.startswith("mini-bert-mlm-tiny-1100-") and other != artifact_name(bert_style("cpu", positions="sinusoidal"))
    assert all(getattr(bert_style("cpu"), k) == v for k, v in BERT_STYLE.items()) and bert_style("cpu").steps == 1_100


@pytest.mark.slow
def test_pretrained_artifact_is_built_once_and_reloads_with_identical_logits(cache_dir):
    settings = PretrainSettings(model="tiny", vocab_size=500, block_size=32, batch_size=8, steps=2,
                                validation_blocks=16, evaluations=1)
    folder = pretrained_mini_bert(settings, progress=False)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.glob("*.bin"))
    again = pretrained_mini_bert(settings, progress=False)       # cached: no second training
    assert again == folder and (folder / "model.safetensors").stat().st_mtime_ns == \
        (again / "model.safetensors").stat().st_mtime_ns
    model = BertForMaskedLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 500, (2, 16))
    assert torch.equal(model(ids).logits, BertForMaskedLM.from_pretrained(folder).eval()(ids).logits)


@pytest.mark.slow
def test_pretraining_checkpoints_and_a_second_run_restores_instead_of_retraining(cache_dir, tokenizer):
    settings = PretrainSettings(model="tiny", vocab_size=600, block_size=32, batch_size=8, steps=4,
                                validation_blocks=8, evaluations=2, in_domain=False)
    first = pretrain(settings, tokenizer, progress=False)
    folders = list((cache_dir / "training").glob("mlm-tiny-*"))
    assert len(folders) == 1 and any(folders[0].glob("step-*"))
    second = pretrain(settings, tokenizer, progress=False)
    assert second["history"].resumed_from == 4 and second["history"].losses == first["history"].losses
    for a, b in zip(first["model"].state_dict().values(), second["model"].state_dict().values()):
        assert torch.equal(a, b)


def test_wordpiece_training_is_deterministic():
    lines = load_corpus("validation")[:1500]
    first, second = train_wordpiece(lines, vocab_size=1500), train_wordpiece(lines, vocab_size=1500)
    assert first.get_vocab() == second.get_vocab() and len(first) == 1500
    assert [first.convert_ids_to_tokens(i) for i in range(5)] == list(SPECIAL_TOKENS)
    encoded = first("The lobster is a species.")["input_ids"]
    assert encoded[0] == first.cls_token_id and encoded[-1] == first.sep_token_id
    assert first.decode(encoded, skip_special_tokens=True) == "the lobster is a species."


@pytest.mark.slow
def test_another_corpus_never_resumes_or_reuses_this_corpus_weights(cache_dir, tmp_path, monkeypatch, tokenizer):
    settings = PretrainSettings(model="tiny", vocab_size=600, block_size=32, batch_size=8, steps=2,
                                validation_blocks=8, evaluations=1, in_domain=False)
    first = pretrain(settings, tokenizer, progress=False)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"a different corpus, line {i}, about films and books" for i in range(400)))
    monkeypatch.setenv("FROM_ZERO_CORPUS", str(other))
    second = pretrain(settings, tokenizer, progress=False)
    assert second["history"].resumed_from is None and second["history"].steps_done == 2
    assert len(list((cache_dir / "training").glob("mlm-tiny-*"))) == 2
    assert not torch.equal(first["model"].head.bias, second["model"].head.bias) or \
        first["history"].losses != second["history"].losses
    # an explicit checkpoint_dir holding the first corpus's run is refused, with the folder and the fix
    monkeypatch.delenv("FROM_ZERO_CORPUS")
    pretrain(settings, tokenizer, progress=False, checkpoint_dir=tmp_path / "mine")
    monkeypatch.setenv("FROM_ZERO_CORPUS", str(other))
    with pytest.raises(CheckpointError, match=r"mine/step-000002 was trained from other inputs \(training_text "
                                              r".*resume=False"):
        pretrain(settings, tokenizer, progress=False, checkpoint_dir=tmp_path / "mine")


def test_the_artifact_is_rebuilt_with_a_warning_when_the_corpus_changes(cache_dir, tmp_path, monkeypatch):
    settings = PretrainSettings(model="tiny", vocab_size=300, block_size=32, batch_size=8, steps=1,
                                validation_blocks=8, evaluations=1, in_domain=False)
    monkeypatch.setenv("FROM_ZERO_CORPUS", str(tmp_path / "a.txt"))
    (tmp_path / "a.txt").write_text("\n".join(f"the first corpus says {i} things about films" for i in range(300)))
    folder = pretrained_mini_bert(settings, progress=False)
    before = text_identity(settings)
    monkeypatch.setenv("FROM_ZERO_CORPUS", str(tmp_path / "b.txt"))
    (tmp_path / "b.txt").write_text("\n".join(f"a second corpus tells {i} stories of books" for i in range(300)))
    assert text_identity(settings) != before
    with pytest.warns(UserWarning, match=r"rebuilding .*: out of date \(made from training_text .*, now "):
        assert pretrained_mini_bert(settings, progress=False) == folder


def test_bad_tokenizer_text_and_masking_rates_fail_at_the_door():
    with pytest.raises(ValueError, match="train_wordpiece needs text to learn from"):
        train_wordpiece([])
    with pytest.raises(ValueError, match="train_wordpiece needs text"):
        train_wordpiece(["", "   "])
    ids = torch.arange(10).view(1, 10)
    with pytest.raises(ValueError, match="probability is the share of tokens to choose: .*got 1.5"):
        mask_tokens(ids, torch.zeros_like(ids, dtype=torch.bool), 10, 4, probability=1.5)
    with pytest.raises(ValueError, match="mask_probability is the share of tokens to hide: .*got 1.5"):
        PretrainSettings(mask_probability=1.5)
    with pytest.raises(ValueError, match="vocab_size must exceed the 5 special tokens"):
        settings_for("cpu", vocab_size=3)
