"""course.ch03_model_anatomy (chapter 03): the from-scratch encoder equals transformers' BertLayer and BertModel."""
import pytest
import torch
from transformers import BertModel

from course.ch03_model_anatomy import Encoder, EncoderLayer, encoder_from_bert, load_bert_layer
from utils.models import bert_config


def padding_mask(lengths, seq):
    return (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return BertModel(bert_config("tiny", vocab_size=120, max_position_embeddings=32)).eval()


@pytest.mark.parametrize("lengths", [None, [12, 7, 3]])
def test_encoder_layer_equals_bert_layer(bert, lengths):
    config = bert.config
    ours = load_bert_layer(EncoderLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size),
                           bert.encoder.layer[1]).eval()
    x = torch.randn(3, 12, config.hidden_size)
    mask = None if lengths is None else padding_mask(lengths, 12)
    additive = None if mask is None else (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        theirs, mine = bert.encoder.layer[1](x, attention_mask=additive), ours(x, mask)
    real = torch.ones(3, 12, dtype=torch.bool) if mask is None else mask.bool()
    assert (theirs - mine)[real].abs().max() < 1e-5


@pytest.mark.parametrize("lengths", [None, [12, 7, 3]])
def test_encoder_equals_bert_model(bert, lengths):
    ours = encoder_from_bert(bert).eval()
    ids = torch.randint(0, 120, (3, 12))
    mask = None if lengths is None else padding_mask(lengths, 12)
    types = torch.randint(0, 2, (3, 12))
    with torch.no_grad():
        theirs = bert(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        mine = ours(ids, mask, types)
    assert (theirs - mine).abs().max() < 1e-5


def test_padding_does_not_change_the_real_tokens(bert):
    ours = encoder_from_bert(bert).eval()
    ids = torch.randint(1, 120, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        alone, with_padding = ours(ids), ours(padded, padding_mask([5], 9))
    assert (alone - with_padding[:, :5]).abs().max() < 1e-5


def test_encoder_sizes_follow_the_config_and_errors_are_clear():
    config = bert_config("tiny")
    encoder = Encoder.from_config(config)
    assert len(encoder.layers) == config.num_hidden_layers
    with pytest.raises(ValueError, match="divisible"):
        EncoderLayer(130, 4, 512)
    with pytest.raises(ValueError, match="positions; truncate"):
        encoder(torch.zeros(1, config.max_position_embeddings + 1, dtype=torch.long))
