"""Chapter 06's lesson code (course/ch06_peft.py, exported from chapters/06_peft.ipynb), on a tiny BERT."""
import copy
import json
from dataclasses import asdict, replace

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from course import ch06_peft as peft_chapter
from course.ch05_fine_tuning import SentenceClassifier
from course.ch06_peft import (METHODS, LoRALinear, PromptTuned, RatingRegressor, add_lora, build, count_trainable,
                              load_sweep, load_trainable, lora_update_norms, merge_lora, peft_settings, save_trainable,
                              trainable_by_part, trainable_formula)
from utils.models import bert_config
from utils.sweeps import chosen_rates

SETTINGS = replace(peft_settings("cpu"), k=1, bottleneck=4, prompt_length=3, rank=2)


def tiny(seed: int = 0) -> SentenceClassifier:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=1200, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40)
    return SentenceClassifier(BertModel(config, add_pooling_layer=False)).eval()


def inputs():
    ids = torch.randint(5, 1200, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model):
    with torch.no_grad():
        return model(**inputs()).logits


@pytest.mark.parametrize("method", list(METHODS))
def test_every_trainable_count_equals_its_formula(method):
    model = METHODS[method](tiny(), SETTINGS)
    assert count_trainable(model) == trainable_formula(method, model.config, SETTINGS)
    assert sum(trainable_by_part(model).values()) == count_trainable(model)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "prompt tuning"])
def test_zero_initialised_parts_leave_the_logits_exactly_unchanged(method):
    base = tiny()
    assert torch.equal(logits(METHODS[method](copy.deepcopy(base), SETTINGS)), logits(base))


def test_prompt_tuning_prepends_vectors_and_keeps_the_sentence_length():
    model = METHODS["prompt tuning"](tiny(), SETTINGS)
    assert isinstance(model.encoder, PromptTuned)
    hidden = model.encoder(**inputs()).last_hidden_state
    assert hidden.shape == (3, 7, 16)
    assert not torch.equal(logits(model), logits(tiny()))       # it cannot start as the base model
    model.train()
    model(**inputs(), labels=torch.tensor([0, 1, 1])).loss.backward()
    assert model.encoder.prompt.grad is not None and model.encoder.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_top_layers_refuses_a_k_the_model_does_not_have():
    with pytest.raises(ValueError, match="k=3, but the encoder has 2 layers"):
        METHODS["top-k layers"](tiny(), replace(SETTINGS, k=3))


def test_unknown_method_and_preset_are_named():
    with pytest.raises(ValueError, match="unknown method 'LORA'"):
        build("LORA", SETTINGS)
    with pytest.raises(ValueError, match="unknown preset 'tpu'"):
        peft_settings("tpu")


def test_task_file_round_trip_and_clear_errors(tmp_path):
    trained = METHODS["LoRA"](tiny(), SETTINGS)
    with torch.no_grad():
        for module in trained.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_()
    size = save_trainable(trained, tmp_path / "task.safetensors")
    assert size < 20_000 and not list(tmp_path.glob(".*"))          # written atomically, no leftovers
    base = tiny()                       # the same frozen base (MiniLM in the chapter), other LoRA factors
    torch.manual_seed(5)
    fresh = METHODS["LoRA"](base, SETTINGS)
    assert not torch.equal(logits(fresh), logits(trained))
    assert torch.equal(logits(load_trainable(fresh, tmp_path / "task.safetensors")), logits(trained))
    with pytest.raises(ValueError, match="which this model does not have"):
        load_trainable(METHODS["BitFit"](tiny(), SETTINGS), tmp_path / "task.safetensors")
    with pytest.raises(ValueError, match="shape"):
        load_trainable(METHODS["LoRA"](tiny(), replace(SETTINGS, rank=3)), tmp_path / "task.safetensors")


def test_lora_update_norms_start_at_zero():
    norms = lora_update_norms(METHODS["LoRA"](tiny(), SETTINGS))
    assert len(norms) == 4 and all(v == 0 for v in norms.values())


def test_our_lora_equals_peft_with_the_same_factors():
    from peft import LoraConfig, get_peft_model
    ours = METHODS["LoRA"](tiny(), SETTINGS)
    with torch.no_grad():
        for module in ours.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_()
    theirs = get_peft_model(copy.deepcopy(tiny()), LoraConfig(r=SETTINGS.rank, lora_alpha=2 * SETTINGS.rank,
                                                             target_modules=["query", "value"]))
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoRALinear):
                target = theirs.base_model.model.get_submodule(name)
                target.lora_A["default"].weight.copy_(module.lora_A)
                target.lora_B["default"].weight.copy_(module.lora_B)
    assert (logits(ours) - logits(theirs)).abs().max() < 1e-6


def test_rating_regressor_uses_the_mean_squared_error():
    model = RatingRegressor(tiny().encoder)
    out = model(**inputs(), labels=torch.tensor([1.5, -2.0, 0.5]))
    assert out.logits.shape == (3,)
    assert torch.allclose(out.loss, torch.nn.functional.mse_loss(out.logits, torch.tensor([1.5, -2.0, 0.5])))


def test_rating_splits_needs_the_rating_column():
    import datasets
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "label": [1]})})
    with pytest.raises(ValueError, match="'rating' column"):
        peft_chapter.rating_splits(data, tokenizer=None)


def test_chosen_rates_use_validation_of_the_first_seed_only():
    rows = [{"method": "LoRA", "lr": 1e-3, "seed": 0, "validation accuracy": 0.80},
            {"method": "LoRA", "lr": 3e-3, "seed": 0, "validation accuracy": 0.82},
            {"method": "LoRA", "lr": 1e-3, "seed": 1, "validation accuracy": 0.95},
            {"method": "head only", "lr": None, "seed": 0, "validation accuracy": 0.7}]
    assert chosen_rates(rows, by="method") == {"LoRA": 3e-3}


def test_a_sweep_made_with_other_settings_or_inputs_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(peft_chapter, "PEFT_SWEEP", replace(peft_chapter.PEFT_SWEEP, folder=tmp_path))
    monkeypatch.setattr(peft_chapter, "inputs_identity", lambda data: {"sentiment": "a", "model": "b"})
    settings = peft_settings("cpu")
    with pytest.raises(FileNotFoundError, match="python -m bench.peft_sweep --preset cpu"):
        load_sweep("cpu", settings, None)
    record = {"settings": json.loads(json.dumps(asdict(settings))), "inputs": {"sentiment": "a", "model": "b"}}
    (tmp_path / "peft_sweep_cpu.json").write_text(json.dumps(record))
    assert load_sweep("cpu", settings, None)["inputs"]["model"] == "b"
    with pytest.raises(ValueError, match="other settings"):
        load_sweep("cpu", replace(settings, steps=5), None)
    record["inputs"]["model"] = "c"
    (tmp_path / "peft_sweep_cpu.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="another sentiment set or model"):
        load_sweep("cpu", settings, None)


def test_the_committed_cpu_sweep_matches_the_chapter_settings_and_data():
    from utils.data import load_sentiment
    record = load_sweep("cpu", peft_settings("cpu"), load_sentiment())
    assert set(chosen_rates(record["rows"], by="method")) == set(peft_chapter.TRAINED)


def test_a_sweep_reuses_earlier_runs_and_trains_only_what_is_new(monkeypatch):
    settings = replace(peft_settings("cpu"), noise_seeds=(0, 1), learning_rates=(("LoRA", (1e-3, 3e-3)),))
    trained = []

    def fake_run(method, prepared, settings, lr, seed=0, **options):
        trained.append((method, lr, seed))
        return {"method": method, "lr": lr, "seed": seed, "validation accuracy": 0.9 if lr == 3e-3 else 0.5}
    monkeypatch.setattr(peft_chapter, "run_method", fake_run)
    monkeypatch.setattr(peft_chapter, "probe", None)
    earlier = [{"method": "head only", "lr": None, "seed": s, "validation accuracy": 0.7} for s in (0, 1)]
    earlier.append({"method": "LoRA", "lr": 1e-3, "seed": 0, "validation accuracy": 0.8})
    rows = peft_chapter.sweep(None, settings, methods=("LoRA",), reuse=earlier)
    assert trained == [("LoRA", 3e-3, 0), ("LoRA", 3e-3, 1)]
    assert [(r["method"], r["lr"], r["seed"]) for r in rows] == [
        ("head only", None, 0), ("head only", None, 1), ("LoRA", 1e-3, 0), ("LoRA", 3e-3, 0), ("LoRA", 3e-3, 1)]


def test_lora_refuses_what_it_cannot_wrap():
    with pytest.raises(ValueError, match="no nn.Linear named"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), targets=("query",))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(torch.nn.Linear(2, 2), r=0)
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(torch.nn.Conv1d(2, 2, 1))


def test_lora_starts_as_the_base_model_and_merges_exactly():
    torch.manual_seed(0)
    config = bert_config("tiny", vocab_size=50, max_position_embeddings=16)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 50, (2, 8))
    before = model(ids).logits
    add_lora(model, r=4)
    assert torch.allclose(model(ids).logits, before, atol=0, rtol=0)    # B = 0: nothing changes
    for module in model.modules():
        if isinstance(module, LoRALinear):
            torch.nn.init.normal_(module.lora_B)                         # as if trained
    adapted = model(ids).logits
    assert not torch.allclose(adapted, before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert torch.allclose(merged(ids).logits, adapted, atol=1e-5)
