"""Chapter 03's formulas, counts, strategies and LoRA (course.ch03_model_anatomy) with utils.models' sizes:
every formula equals the count, on every model size."""
import pytest
import torch
from transformers import BertForMaskedLM, BertForSequenceClassification, BertModel

from course.ch03_model_anatomy import (STRATEGIES, LoRALinear, add_lora, apply_strategy, component_of,
                                       count_by_component, count_by_layer, count_parameters, layer_formula,
                                       merge_lora, parameter_formulas, trainable_formula)
from utils.models import MODEL_SIZES, bert_config, build_on_meta


@pytest.mark.parametrize("size", MODEL_SIZES)
def test_formulas_equal_counts_for_every_model_class(size):
    config = bert_config(size)
    for model_class, options in [(BertModel, {}), (BertForMaskedLM, dict(pooler=False, mlm_head=True)),
                                 (BertForSequenceClassification, dict(num_labels=2))]:
        model = build_on_meta(config, model_class)
        assert count_by_component(model) == parameter_formulas(config, **options)
    assert count_by_layer(build_on_meta(config)) == [layer_formula(config)] * config.num_hidden_layers


@pytest.mark.parametrize("size", MODEL_SIZES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trainable_counts_equal_formulas(size, strategy):
    config = bert_config(size)
    model = apply_strategy(build_on_meta(config, BertForSequenceClassification), strategy, k=2, r=8)
    assert count_parameters(model, trainable_only=True) == trainable_formula(config, strategy, k=2, r=8)


def test_published_sizes():
    assert abs(count_parameters(build_on_meta(bert_config("bert-base"))) / 110e6 - 1) < 0.01
    assert abs(count_parameters(build_on_meta(bert_config("bert-large"))) / 340e6 - 1) < 0.02
    assert abs(count_parameters(build_on_meta(bert_config("minilm-l6"))) / 22.7e6 - 1) < 0.005


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        bert_config("huge")
    with pytest.raises(ValueError, match="not divisible"):
        bert_config("tiny", num_attention_heads=3)
    with pytest.raises(ValueError, match="unknown strategy"):
        apply_strategy(torch.nn.Linear(2, 2), "prefix tuning")
    with pytest.raises(ValueError, match="does not belong"):
        component_of("decoder.weight")
    with pytest.raises(ValueError, match="no nn.Linear named"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), targets=("query",))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(torch.nn.Linear(2, 2), r=0)


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
