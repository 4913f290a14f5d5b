"""course.ch05_fine_tuning (chapter 05's cells): pooling, subsets, batching, scores, probes, the saved classifier and teacher."""
import datasets
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

import course.ch05_fine_tuning as finetune
from utils.checkpoint import CheckpointError
from course.ch04_pretraining import train_wordpiece
from utils.data import load_corpus
from course.ch05_fine_tuning import (ExperimentSettings, FinetuneSettings, LengthGroupedSampler, SentenceClassifier,
                                     batches, behaviour_table, confident_mistakes, experiment_for, features, fine_tune,
                                     linear_probe, load_classifier, nearest_words, predict, predict_proba,
                                     save_classifier, scores, subset, subset_indices, tokenize)


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(load_corpus("validation")[:800], vocab_size=600)


def tiny_classifier(tokenizer, pooling="mean", seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    return SentenceClassifier(BertModel(config, add_pooling_layer=False), pooling=pooling)


@pytest.fixture(scope="module")
def sentiment(tokenizer):
    good = ["a good film", "great acting and a fine story", "good", "a great , great cast", "fine work"] * 8
    bad = ["a bad film", "dull acting and a poor story", "bad", "a poor , dull cast", "boring work"] * 8
    part = datasets.Dataset.from_dict({"text": good + bad, "label": [1] * len(good) + [0] * len(bad)})
    return tokenize(datasets.DatasetDict({"train": part, "validation": part, "test": part}), tokenizer)


def test_mean_pooling_ignores_padding_and_cls_pooling_takes_the_first_token(tokenizer):
    model = tiny_classifier(tokenizer).eval()
    alone = tokenizer(["a good film"], return_tensors="pt")
    padded = tokenizer(["a good film", "a much longer sentence about the film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        one = model.sentence_vectors(alone["input_ids"], alone["attention_mask"])
        two = model.sentence_vectors(padded["input_ids"], padded["attention_mask"])
        assert torch.allclose(one[0], two[0], atol=1e-5)
        model.pooling = "cls"
        hidden = model.encoder(**alone).last_hidden_state
        assert torch.equal(model.sentence_vectors(alone["input_ids"], alone["attention_mask"]), hidden[:, 0])
    out = model(**alone, labels=torch.tensor([1]))
    assert out.logits.shape == (1, 2) and out.loss.ndim == 0
    with pytest.raises(ValueError, match="pooling"):
        tiny_classifier(tokenizer, pooling="max")


def test_subsets_are_stratified_deterministic_and_whole_when_asked():
    labels = [0] * 70 + [1] * 30
    chosen = subset_indices(labels, 20, seed=3)
    assert len(chosen) == 20 and sum(labels[i] for i in chosen) == 6 and chosen == sorted(set(chosen))
    assert chosen == subset_indices(labels, 20, seed=3) != subset_indices(labels, 20, seed=4)
    assert subset_indices(labels, None) == subset_indices(labels, 500) == list(range(100))
    with pytest.raises(ValueError, match="at least 2"):
        subset_indices(labels, 1)


def test_length_grouped_batches_cover_everything_once_with_less_padding(sentiment, tokenizer):
    lengths = [len(ids) for ids in sentiment["train"]["input_ids"]]
    sampler = LengthGroupedSampler(lengths, 4, torch.Generator().manual_seed(0), pool=3)
    flat = [i for batch in sampler for i in batch]
    assert sorted(flat) == list(range(len(lengths))) and len(list(sampler)) == len(sampler)
    grouped = finetune.padding_share(batches(sentiment["train"], tokenizer, 4, group_by_length=True))
    shuffled = finetune.padding_share(batches(sentiment["train"], tokenizer, 4, group_by_length=False))
    assert grouped < shuffled


def test_evaluation_batches_are_sorted_and_predictions_come_back_in_order(sentiment, tokenizer):
    model = tiny_classifier(tokenizer).eval()
    loader = batches(sentiment["test"], tokenizer, 7, shuffle=False)
    sizes = [b["input_ids"].shape[1] for b in loader]
    assert sizes == sorted(sizes)
    probs = predict_proba(model, loader)
    one_by_one = np.concatenate([predict_proba(model, batches(sentiment["test"].select([i]), tokenizer, 1, shuffle=False))
                                 for i in range(len(sentiment["test"]))])
    assert np.allclose(probs, one_by_one, atol=1e-5) and np.allclose(probs.sum(1), 1)
    vectors = features(model, loader)
    assert vectors.shape == (len(sentiment["test"]), 16)
    with pytest.raises(ValueError, match="evaluation loader"):
        features(model, batches(sentiment["test"], tokenizer, 7))


def test_scores_by_hand():
    labels = [1, 1, 0, 0, 1]
    probs = np.array([[0.1, 0.9], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.05, 0.95]])
    s = scores(labels, probs, bins=5)
    assert s["accuracy"] == 0.6 and s["confusion"].tolist() == [[1, 1], [1, 2]]
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    confidence, correct = probs.max(1), np.array([1, 0, 1, 0, 1])
    bins = np.clip(np.digitize(confidence, np.linspace(0.5, 1, 6)[1:-1]), 0, 4)
    expected = sum((bins == b).mean() * abs(confidence[bins == b].mean() - correct[bins == b].mean())
                   for b in set(bins))
    assert s["ece"] == pytest.approx(expected)
    assert sum(r["n"] for r in s["reliability"]) == 5


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    probe = linear_probe(x[:150], y[:150], x[150:], y[150:])
    assert (probe(x[150:]).argmax(1) == y[150:]).mean() > 0.9


def test_fine_tune_learns_a_toy_task_and_keeps_the_best_validation(sentiment, tokenizer):
    model = tiny_classifier(tokenizer)
    settings = FinetuneSettings(steps=60, batch_size=8, lr=3e-3, evaluations=3)
    validation = batches(sentiment["validation"], tokenizer, 16, shuffle=False)
    history = fine_tune(model, subset(sentiment["train"], 40, seed=0), validation, tokenizer, settings)
    assert history.steps_done == 60 and len(history.eval) == 3
    assert history.best_value == max(row["validation accuracy"] for row in history.eval) > 0.9
    assert finetune.accuracy(model, validation) == history.best_value


def test_predict_mistakes_and_behaviour(tokenizer):
    model = tiny_classifier(tokenizer)
    guess = predict(model, tokenizer, "a good film")
    assert guess["label"] in ("negative", "positive") and 0.5 <= guess["probability"] <= 1
    assert len(predict(model, tokenizer, ["a", "b c"])) == 2
    with pytest.raises(ValueError, match="non-empty"):
        predict(model, tokenizer, "  ")


def test_predict_cuts_long_texts_at_max_length_and_refuses_more_than_the_positions(tokenizer):
    model = tiny_classifier(tokenizer)                       # 64 positions
    long = " ".join(["a good film"] * 130)                   # about 400 tokens
    rows = predict(model, tokenizer, [long, "a good film"])
    assert [r["truncated"] for r in rows] == [True, False]
    with pytest.raises(ValueError, match=r"max_length=400 is more than the model's 64 positions: use max_length <= 64"):
        predict(model, tokenizer, long, max_length=400)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.99, 0.01]])
    worst = confident_mistakes(["a", "b", "c", "d"], [1, 1, 0, 1], probs, k=2)
    assert [m["text"] for m in worst] == ["d", "a"] and worst[0]["predicted"] == "negative"
    rows = [{"phenomenon": "negation", "text": "not good", "label": 0},
            {"phenomenon": "neutral", "text": "it is a film", "label": None}]
    table = behaviour_table(model, tokenizer, rows)
    assert [r["phenomenon"] for r in table] == ["negation", "neutral"] and all(0 <= r["pass rate"] <= 1 for r in table)


def test_nearest_words_finds_the_closest_embedding(tokenizer):
    vocab = tokenizer.get_vocab()
    embeddings = torch.randn(len(tokenizer), 8, generator=torch.Generator().manual_seed(0))
    embeddings[vocab["film"]] = embeddings[vocab["the"]] * 2
    found = nearest_words(embeddings, tokenizer, ["film", "zzzzqqq"], k=3)
    assert found["film"][0] == "the" and "zzzzqqq" not in found


def test_saved_classifier_reloads_exactly_and_a_foreign_folder_is_refused(tmp_path, tokenizer):
    model = tiny_classifier(tokenizer, pooling="cls").eval()
    save_classifier(model, tokenizer, tmp_path / "clf", {"note": "test"})
    again, again_tokenizer = load_classifier(tmp_path / "clf")
    ids = tokenizer(["a good film"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, again(**ids).logits)
    assert again.pooling == "cls" and again_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "clf").iterdir())
    with pytest.raises(CheckpointError, match="classifier.json"):
        load_classifier(tmp_path)


@pytest.fixture
def stored_teacher(tmp_path, monkeypatch, tokenizer):
    """A tiny classifier stored as the teacher in a fresh cache: (its folder, the run row it came from)."""
    monkeypatch.setenv("FROM_ZERO_CACHE", str(tmp_path))
    monkeypatch.setattr(finetune, "load_tokenizer", lambda arm, mini_bert=None: tokenizer)
    row = {"model": tiny_classifier(tokenizer), "lr": 1e-4, "seed": 0, "steps": 5, "batch": 4,
           "test accuracy": 0.5, "validation accuracy": 0.5}
    return finetune.store_teacher(row), row


def test_teacher_stores_a_given_run_and_reuses_it(stored_teacher, monkeypatch):
    folder, _ = stored_teacher
    assert (folder / "classifier.json").is_file()
    monkeypatch.setattr(finetune, "run_arm", lambda *a, **k: pytest.fail("a cached teacher must not be trained again"))
    assert finetune.teacher() == folder


def test_other_sentences_rebuild_the_teacher_with_a_warning_never_reuse_it(stored_teacher, tmp_path, monkeypatch):
    folder, row = stored_teacher
    mine = tmp_path / "mine.csv"
    mine.write_text("text,label\n" + "".join(f"film number {i} was {'good' if i % 2 else 'bad'},{i % 2}\n"
                                             for i in range(40)))
    monkeypatch.setenv("FROM_ZERO_SENTIMENT", str(mine))
    trained = []
    monkeypatch.setattr(finetune, "run_arm", lambda *a, **k: trained.append(1) or row)
    with pytest.warns(UserWarning, match=r"rebuilding .*teacher: out of date \(made from sentiment .*, now .*"):
        assert finetune.teacher() == folder
    assert trained == [1]
    assert finetune.teacher() == folder and trained == [1]   # and then reused


def test_experiment_settings_and_bad_names():
    cpu = experiment_for("cpu")
    assert cpu.budget(100, 1, 1e-3) == FinetuneSettings(steps=cpu.small.steps, batch_size=cpu.small.batch_size,
                                                                  evaluations=cpu.small.evaluations, lr=1e-3, seed=1)
    assert cpu.budget(None, 0, 1e-4).steps == cpu.full.steps
    assert cpu.seeds_for("MiniLM") == cpu.minilm_seeds and len(cpu.seeds_for("random")) >= 3
    assert len(experiment_for("gpu").seeds_for("MiniLM")) >= 3 and len(cpu.sizes) >= 3
    assert isinstance(cpu, ExperimentSettings)
    with pytest.raises(ValueError, match="preset"):
        experiment_for("tpu")
    with pytest.raises(ValueError, match="unknown arm"):
        finetune.new_classifier("bert-huge")
    assert finetune.TEACHER_LR in dict(cpu.learning_rates)["MiniLM"]


def test_the_committed_pretraining_tables_match_the_code_that_reads_them():
    """Chapter 05 reads bench/results/pretraining_{scaling,recipes}_cpu.json: a change to chapter 04's recipe,
    its variants or this chapter's protocol makes them stale, and this fails before the notebook does."""
    from utils.data import load_sentiment
    data = load_sentiment()
    scaling, recipes = finetune.load_scaling("cpu", data), finetune.load_recipes("cpu", data)
    assert {row["pretraining steps"] for row in scaling["rows"]} == {round(m * 1100) for m in finetune.SCALING_MULTIPLES}
    assert [name for name, _ in finetune.RECIPE_VARIANTS] == list(dict.fromkeys(row["variant"] for row in recipes["rows"]))
    with pytest.raises(FileNotFoundError, match=r"pretraining_recipes_gpu.json is missing: run `python -m bench.pretraining_recipes --preset gpu`"):
        finetune.load_recipes("gpu", data)
