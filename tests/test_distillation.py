"""Chapter 07's lesson code (course/ch07_distillation.py, exported from chapters/07_distillation.ipynb),
on tiny models: the loss, augmentation, the teacher-logit cache, students, head pruning, quantisation."""
import copy
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from course import ch07_distillation as ch07
from course.ch04_pretraining import train_wordpiece
from course.ch05_fine_tuning import SentenceClassifier, save_classifier
from course.ch07_distillation import (Distilled, Transfer, augment, augmented_sentences, best_student_arm,
                                      dequantise, distill_settings, distillation_loss, every_other_layer,
                                      fake_quantise, head_importance, heads_left, heads_to_remove, int8_kernel,
                                      int8_state, keep_slice, linear_bytes, magnitude_prune, prune_heads, quantise_rows,
                                      student_parts, transfer_batches, word_kinds, zero_share)
from utils.data import load_corpus, load_sentiment
from utils.sweeps import chosen_rates


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(load_corpus("validation")[:800], vocab_size=600)


def tiny(tokenizer, layers=2, heads=4, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    return SentenceClassifier(BertModel(config, add_pooling_layer=False)).eval()


def encoded(tokenizer, texts=("a good film", "the acting was dull and slow , and long")):
    out = tokenizer(list(texts), padding=True, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


# --- the loss -------------------------------------------------------------------------------------------------
def test_loss_equals_torch_kl_div_and_cross_entropy():
    g = torch.Generator().manual_seed(0)
    zs, zt, y = torch.randn(8, 3, generator=g), 3 * torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    for T, alpha in ((1.0, 0.5), (2.0, 0.9), (4.0, 0.0)):
        expected = (alpha * T * T * nn.functional.kl_div(torch.log_softmax(zs / T, -1), torch.log_softmax(zt / T, -1),
                                                        reduction="batchmean", log_target=True)
                    + (1 - alpha) * nn.functional.cross_entropy(zs, y))
        assert torch.allclose(distillation_loss(zs, zt, y, T, alpha), expected, atol=1e-6)


def test_unlabelled_rows_only_get_the_soft_term_and_never_nan():
    zs, zt = torch.randn(4, 2), torch.randn(4, 2)
    none = torch.full((4,), -100)
    assert torch.allclose(distillation_loss(zs, zt, none, 2.0, 0.5), distillation_loss(zs, zt, None, 2.0, 0.5))
    partly = torch.tensor([1, -100, 0, -100])
    ce = nn.functional.cross_entropy(zs[[0, 2]], partly[[0, 2]])
    assert torch.allclose(distillation_loss(zs, zt, partly, 2.0, 0.5), distillation_loss(zs, zt, None, 2.0, 0.5) + 0.5 * ce)
    assert torch.isfinite(distillation_loss(zs, zt, none, 2.0, 0.5))


def test_soft_gradient_shrinks_as_one_over_t_squared_and_tends_to_margin_mse():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(16, 2, generator=g), 3 * torch.randn(16, 2, generator=g)

    def grad_norm(T):
        z = zs.clone().requires_grad_(True)
        (distillation_loss(z, zt, temperature=T, alpha=1.0) / T ** 2).backward()
        return z.grad.norm()
    assert abs(grad_norm(20.0) / grad_norm(40.0) - 4) < 0.05
    margin = ((zt[:, 1] - zt[:, 0]) - (zs[:, 1] - zs[:, 0])) ** 2 / 8
    assert torch.allclose(distillation_loss(zs, zt, temperature=200.0, alpha=1.0), margin.mean(), rtol=1e-3)


def test_distilled_wrapper_uses_teacher_logits_when_the_batch_has_them(tokenizer):
    model = Distilled(tiny(tokenizer), temperature=2.0, alpha=0.7)
    inputs, y, zt = encoded(tokenizer), torch.tensor([1, 0]), torch.tensor([[-2.0, 2.0], [1.0, -1.0]])
    z = logits(model, inputs)
    with torch.no_grad():
        assert torch.allclose(model(**inputs, labels=y, teacher_logits=zt).loss, distillation_loss(z, zt, y, 2.0, 0.7))
        assert torch.allclose(model(**inputs, labels=y).loss, nn.functional.cross_entropy(z, y))


# --- augmentation and the transfer set --------------------------------------------------------------------------
class Vocab:
    unk_token_id = 0

    def __init__(self, words):
        self.ids = {w: i + 1 for i, w in enumerate(words)}

    def convert_tokens_to_ids(self, words):
        return [self.ids.get(w, 0) for w in words]


def test_word_kinds_are_nearest_neighbours_of_known_frequent_words():
    words = ["good", "great", "bad", "awful"]
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.1], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.1]])   # row 0: [UNK]
    texts = ["Good great bad awful", "good great bad awful zebra zebra", "x1 x1"]
    kinds = word_kinds(texts, vectors, Vocab(words), k=1)
    assert kinds == {"good": ["great"], "great": ["good"], "bad": ["awful"], "awful": ["bad"]}   # zebra: unknown


def test_augment_is_seeded_and_its_probabilities_mean_what_they_say():
    kinds = {"good": ["great"]}
    sentence = "a good film with a good cast"
    assert augment(sentence, kinds, np.random.default_rng(0), 0, 0, 0) == sentence
    assert augment(sentence, kinds, np.random.default_rng(0), 1.0, 0, 0) == " ".join(["[MASK]"] * 7)
    assert augment(sentence, kinds, np.random.default_rng(0), 0, 1.0, 0) == "a great film with a great cast"
    cut = augment(sentence, kinds, np.random.default_rng(0), 0, 0, 1.0)
    assert 1 <= len(cut.split()) <= 5 and cut in sentence
    one = [augment(sentence, kinds, np.random.default_rng(3)) for _ in range(2)]
    assert one[0] == one[1]


def test_augmented_sentences_drop_duplicates_and_training_sentences():
    texts = ["a good film", "good"]
    out = augmented_sentences(texts, {"good": ["great"]}, copies=20, seed=0)
    assert len(out) == len(set(out)) and not set(out) & set(texts) and out


def test_student_parts_and_batches_carry_labels_and_teacher_logits(tokenizer):
    transfer = Transfer(["a good film", "a bad film", "a [MASK] film"], [1, 0, -100],
                        torch.tensor([[-1.0, 1.0], [1.0, -1.0], [0.2, 0.1]]), labelled=2)
    parts = student_parts(transfer, tokenizer)
    assert len(parts["hard"]) == len(parts["soft"]) == 2 and len(parts["transfer"]) == 3
    assert "teacher_logits" not in parts["hard"].column_names
    batch = next(iter(transfer_batches(parts["transfer"], tokenizer, batch_size=3)))
    assert batch["teacher_logits"].shape == (3, 2) and sorted(batch["labels"].tolist()) == [-100, 0, 1]
    assert "teacher_logits" not in next(iter(transfer_batches(parts["hard"], tokenizer, batch_size=2)))


def test_teacher_logits_are_cached_by_teacher_and_texts(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("FROM_ZERO_CACHE", str(tmp_path / "cache"))
    model = tiny(tokenizer)
    save_classifier(model, tokenizer, tmp_path / "teacher", {"test accuracy": 0.5})
    texts = ["a good film", "a bad film , long and dull", "fine"]
    first = ch07.teacher_logits(texts, tmp_path / "teacher")
    assert torch.allclose(first, logits(model, encoded(tokenizer, texts)), atol=1e-5)
    monkeypatch.setattr(ch07, "logits_of", lambda *a: pytest.fail("cached logits must be reused"))
    assert torch.equal(ch07.teacher_logits(texts, tmp_path / "teacher"), first)
    with pytest.raises(pytest.fail.Exception):
        ch07.teacher_logits(texts + ["new"], tmp_path / "teacher")    # other texts: computed again


# --- DistilBERT-style student -------------------------------------------------------------------------------------
def test_every_other_layer_copies_the_kept_layers(tokenizer):
    teacher = tiny(tokenizer, layers=4)
    student = every_other_layer(teacher)
    assert len(student.encoder.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert torch.equal(student.encoder.encoder.layer[1].output.dense.weight, teacher.encoder.encoder.layer[2].output.dense.weight)
    assert not student.encoder.embeddings.word_embeddings.weight.requires_grad
    same = every_other_layer(teacher, keep=range(4)).eval()
    inputs = encoded(tokenizer)
    assert torch.allclose(logits(same, inputs), logits(teacher, inputs), atol=1e-6)


# --- head pruning ---------------------------------------------------------------------------------------------------
def test_pruning_heads_equals_closing_their_gates_and_shrinks_the_matrices(tokenizer):
    model, inputs = tiny(tokenizer), encoded(tokenizer)
    remove = {0: [1, 3], 1: [0]}
    gates = torch.ones(2, 4)
    gates[0, [1, 3]] = 0
    gates[1, 0] = 0
    hooks = ch07._gate_hooks(model, gates)
    gated = logits(model, inputs)
    for hook in hooks:
        hook.remove()
    pruned = prune_heads(copy.deepcopy(model), remove)
    assert torch.allclose(logits(pruned, inputs), gated, atol=1e-5)
    assert heads_left(pruned) == [2, 3]
    assert pruned.encoder.encoder.layer[0].attention.self.query.weight.shape == (8, 16)
    assert pruned.encoder.encoder.layer[0].attention.output.dense.weight.shape == (16, 8)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="pruned already"):
        prune_heads(pruned, {0: [0]})
    with pytest.raises(ValueError, match="keep no head"):
        prune_heads(copy.deepcopy(model), {0: [0, 1, 2, 3]})


def test_heads_to_remove_takes_the_lowest_and_keeps_one_per_layer():
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.05, 0.8]])
    assert heads_to_remove(scores, 2) == {0: [0], 1: [1]}
    assert heads_to_remove(scores, 4) == {0: [0, 1], 1: [1, 2]}
    with pytest.raises(ValueError, match="can remove 0 to 4 heads"):
        heads_to_remove(scores, 5)


def test_head_importance_has_one_unit_norm_row_per_layer(tokenizer):
    model = tiny(tokenizer)
    batch = {**encoded(tokenizer), "labels": torch.tensor([1, 0])}
    importance = head_importance(model, [batch, batch])
    assert importance.shape == (2, 4) and torch.allclose(importance.norm(dim=1), torch.ones(2))
    assert all(p.grad is None for p in model.parameters())          # gates only: no weight gradients


# --- magnitude pruning and quantisation --------------------------------------------------------------------------------
def test_magnitude_pruning_zeroes_weights_without_shrinking_them(tokenizer):
    model = tiny(tokenizer)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    magnitude_prune(model, 0.5)
    assert abs(zero_share(model) - 0.5) < 0.01
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    assert not any(n.endswith("_orig") or n.endswith("_mask") for n in model.state_dict())


def test_by_hand_pruning_equals_the_libraries(tokenizer):
    """keep_slice = transformers' prune_linear_layer; magnitude_prune = torch's global L1 unstructured pruning."""
    from torch.nn.utils import prune
    from transformers.pytorch_utils import prune_linear_layer
    torch.manual_seed(0)
    linear, index = nn.Linear(6, 8), torch.tensor([0, 3, 5])
    for dim in (0, 1):
        ours, theirs = keep_slice(linear, index, dim), prune_linear_layer(linear, index, dim=dim)
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    assert keep_slice(nn.Linear(6, 8, bias=False), index, 0).bias is None
    model = tiny(tokenizer)
    ours, theirs = magnitude_prune(copy.deepcopy(model), 0.3), copy.deepcopy(model)
    linears = [(m, "weight") for m in theirs.encoder.modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured(linears, pruning_method=prune.L1Unstructured, amount=0.3)
    for module, name in linears:
        prune.remove(module, name)
    expected = theirs.state_dict()           # prune.remove re-registers each weight: compare by name
    assert all(torch.equal(tensor, expected[name]) for name, tensor in ours.state_dict().items())


def test_quantise_rows_error_and_storage():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    for bits in (8, 4, 2):
        q, scale = quantise_rows(w, bits)
        levels = 2 ** (bits - 1) - 1
        assert q.dtype == torch.int8 and int(q.abs().max()) <= levels
        assert torch.all((dequantise(q, scale) - w).abs() <= scale / 2 + 1e-7)
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        quantise_rows(w, 16)


def test_int8_state_shrinks_linear_layers_almost_four_times_and_the_kernel_agrees(tokenizer):
    model, inputs = tiny(tokenizer), encoded(tokenizer)
    fp32 = dict(model.state_dict())
    ratio = linear_bytes(fp32, model) / linear_bytes(int8_state(model), model)
    assert 2.5 < ratio < 4.0          # 3.98 on MiniLM: tiny rows make scales and biases count
    assert torch.allclose(logits(fake_quantise(model, 8), inputs), logits(model, inputs), atol=2e-2)
    assert torch.allclose(logits(int8_kernel(model), inputs), logits(model, inputs), atol=5e-2)


# --- the sweep ------------------------------------------------------------------------------------------------------------
def test_chosen_rates_and_best_student():
    rows = [{"arm": "hard labels", "lr": 1e-3, "seed": 0, "validation accuracy": 0.7},
            {"arm": "hard labels", "lr": 3e-4, "seed": 0, "validation accuracy": 0.7},
            {"arm": "distilled", "lr": 1e-3, "seed": 0, "validation accuracy": 0.75},
            {"arm": "distilled", "lr": 1e-3, "seed": 1, "validation accuracy": 0.71},
            {"arm": "hard labels", "lr": 3e-4, "seed": 1, "validation accuracy": 0.74}]
    assert chosen_rates(rows, by="arm") == {"hard labels": 3e-4, "distilled": 1e-3}   # tie: the smaller rate
    assert best_student_arm(rows) == "distilled"                                  # 0.73 against 0.72


def test_committed_cpu_sweep_matches_the_chapter_settings_and_data():
    record = json.loads(ch07.DISTILL_SWEEP.path("cpu").read_text())
    settings = distill_settings("cpu")
    assert record["settings"] == json.loads(json.dumps(asdict(settings)))
    for arm in ch07.ARMS:
        tried = {row["lr"] for row in record["rows"] if row["arm"] == arm and row["seed"] == settings.noise_seeds[0]}
        assert tried == set(settings.rates(arm)), arm
        best = chosen_rates(record["rows"], by="arm")[arm]
        assert {row["seed"] for row in record["rows"] if row["arm"] == arm and row["lr"] == best} == set(settings.noise_seeds)
    assert record["inputs"] == ch07.inputs_identity(load_sentiment())      # machine-independent: loads anywhere


def test_unknown_preset_and_student_are_named(tokenizer):
    with pytest.raises(ValueError, match="unknown preset 'tpu'"):
        distill_settings("tpu")
    with pytest.raises(ValueError, match="unknown student 'teacher'"):
        ch07.run_student("teacher", {}, None, distill_settings("cpu"), 1e-3)


def test_student_stores_a_given_run_and_reuses_it(tmp_path, monkeypatch, tokenizer):
    import course.ch05_fine_tuning as finetune
    monkeypatch.setenv("FROM_ZERO_CACHE", str(tmp_path))
    monkeypatch.setattr(finetune, "load_tokenizer", lambda arm, mini_bert=None: tokenizer)
    monkeypatch.setattr(ch07, "inputs_identity", lambda data: {"sentiment": "x", "teacher": "y", "mini_bert": "z"})
    model = tiny(tokenizer)
    row = {"model": model, "arm": "distilled + augmented", "lr": 1e-3, "seed": 0, "test accuracy": 0.5,
           "validation accuracy": 0.5}
    folder = ch07.store_student(row, distill_settings("cpu"))
    again, _ = finetune.load_classifier(folder)
    inputs = encoded(tokenizer)
    assert torch.equal(logits(again, inputs), logits(model, inputs))
    assert json.loads((folder / "classifier.json").read_text())["arm"] == "distilled + augmented"
    monkeypatch.setattr(ch07, "run_student", lambda *a, **k: pytest.fail("a cached student must not be trained again"))
    assert ch07.student(distill_settings("cpu")) == folder


def test_sweep_reuses_earlier_runs_and_trains_only_the_new_rates(monkeypatch, tokenizer):
    from types import SimpleNamespace
    settings = distill_settings("cpu")
    arm = "hard labels"
    rates = settings.rates(arm)
    earlier = [{"arm": arm, "lr": lr, "seed": 0, "validation accuracy": 0.5 + 0.01 * i} for i, lr in enumerate(rates[1:])]
    trained = []

    def fake_run(arm, parts, prepared, settings, lr, seed, **options):
        trained.append((lr, seed))
        return {"arm": arm, "lr": lr, "seed": seed, "validation accuracy": 0.1}
    monkeypatch.setattr(ch07, "run_student", fake_run)
    transfer = Transfer(["a good film", "a bad film"], [1, 0], torch.zeros(2, 2), labelled=2)
    prepared = SimpleNamespace(tokenizer=tokenizer)
    rows = ch07.sweep(settings, prepared, prepared, transfer, arms=[arm], reuse=earlier)
    best = rates[-1]                                   # the highest validation accuracy among the reused runs
    assert trained == [(rates[0], 0)] + [(best, s) for s in settings.noise_seeds[1:]]
    assert len(rows) == len(rates) + len(settings.noise_seeds) - 1


def test_sweep_records_keep_where_their_runs_were_made(tmp_path):
    """bench.distill_sweep --reuse / --new-mini-bert: the committed record's machine and versions stay (its runs were
    made there), and the new runs are listed under "added" with where they were made."""
    from bench.distill_sweep import keep_provenance
    path = tmp_path / "record.json"
    committed = {"machine": "there", "versions": {"torch": "1"}, "added": {"arms": ["a"], "machine": "elsewhere"}}
    path.write_text(json.dumps({"machine": "here", "processor": "X", "versions": {"torch": "2"}, "rows": []}))
    keep_provenance(path, committed, {"runs": ["b, lr 0.1, seed 0"]})                 # --reuse
    record = json.loads(path.read_text())
    assert (record["machine"], record["versions"]) == ("there", {"torch": "1"}) and "processor" not in record
    assert record["added"] == [{"arms": ["a"], "machine": "elsewhere"},
                               {"runs": ["b, lr 0.1, seed 0"], "machine": "here", "processor": "X", "versions": {"torch": "2"}}]
    path.write_text(json.dumps({"machine": "here", "rows": []}))
    keep_provenance(path, committed, {"arms": ["a"]})                                  # --new-mini-bert: arm a again
    assert json.loads(path.read_text())["added"] == [{"arms": ["a"], "machine": "here"}]
