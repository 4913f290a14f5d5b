"""Chapter 03's formulas (course.ch03_model_anatomy) against utils.models' counts and sizes: every formula equals
the count, on every model size. (LoRA and the fine-tuning methods are chapter 06's: tests/test_peft.py.)"""
import pytest
from transformers import BertForMaskedLM, BertForSequenceClassification, BertModel

from course.ch03_model_anatomy import count_parameters, layer_formula, parameter_formulas
from utils.models import MODEL_SIZES, bert_config, build_on_meta, component_of, count_by_component, count_by_layer


@pytest.mark.parametrize("size", MODEL_SIZES)
def test_formulas_equal_counts_for_every_model_class(size):
    config = bert_config(size)
    for model_class, options in [(BertModel, {}), (BertForMaskedLM, dict(pooler=False, mlm_head=True)),
                                 (BertForSequenceClassification, dict(num_labels=2))]:
        model = build_on_meta(config, model_class)
        assert count_by_component(model) == parameter_formulas(config, **options)
    assert count_by_layer(build_on_meta(config)) == [layer_formula(config)] * config.num_hidden_layers


def test_published_sizes():
    assert abs(count_parameters(build_on_meta(bert_config("bert-base"))) / 110e6 - 1) < 0.01
    assert abs(count_parameters(build_on_meta(bert_config("bert-large"))) / 340e6 - 1) < 0.02
    assert abs(count_parameters(build_on_meta(bert_config("minilm-l6"))) / 22.7e6 - 1) < 0.005


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        bert_config("huge")
    with pytest.raises(ValueError, match="not divisible"):
        bert_config("tiny", num_attention_heads=3)
    with pytest.raises(ValueError, match="does not belong"):
        component_of("decoder.weight")


def test_quiet_loggers_silences_a_block_and_restores_the_levels():
    import logging
    import warnings
    from utils.models import quiet_loggers
    logger = logging.getLogger("from_zero_test_exporter")
    logger.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_loggers("from_zero_test_exporter"):
            assert logger.level == logging.ERROR
            warnings.warn("the exporter narrates")
        warnings.warn("after the block")
    assert logger.level == logging.INFO
    assert [str(w.message) for w in caught] == ["after the block"]
