"""Chapter 12's lesson code (course.ch12_preference_tuning) on tiny inputs: openings are distinct and come from
the asked label; the judge's higher score is chosen; a continuation's log-probability is the sum over its own
tokens; the DPO loss is log 2 when the policy is the reference, falls as the chosen answer gains, and equals
trl's DPOTrainer loss; a short DPO run teaches a tiny model the judge's order; the KL estimate is 0 for the
reference itself; VADER judges plain words as expected."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from course.ch09_gpt import train_byte_bpe
from course.ch11_instruction_tuning import with_chat_tokens
from course.ch12_preference_tuning import (DPOLoss, completion_batch, distance_and_fluency, dpo, dpo_loss, dpo_settings,
                                           openings, pair_batch, pair_logps, preference_pairs, repeats_a_token,
                                           sequence_logp, trl_dpo_loss, vader_positive, with_lora, word_counts)

from test_gpt import random_gpt, tiny      # random weights far from the initialisation (tests/test_gpt.py)

TEXT = "The film is a fine one. The plot is dull and the acting is worse. A moving, funny film. " * 20


@pytest.fixture(scope="module")
def tiny_gpt():
    tokenizer = train_byte_bpe(TEXT, 300)
    return with_chat_tokens(random_gpt(tiny(vocab_size=tokenizer.get_vocab_size(), context=64)), tokenizer)


def fake_reviews():
    texts = ["a dull , plodding film", "a fine and moving film", "a dull , plodding film again", "the worst film",
             "a funny film", "the worst film of the year"]
    return {"train": [{"text": t, "label": int("fine" in t or "funny" in t)} for t in texts]}


def test_openings_are_distinct_first_words_of_the_asked_label():
    assert openings(fake_reviews(), "train", 2) == ["a dull , plodding", "the worst film"]
    assert openings(fake_reviews(), "train", 2, label=1) == ["a fine and moving", "a funny film"]
    with pytest.raises(ValueError, match="only 3 distinct openings .* ask for fewer"):
        openings(fake_reviews(), "train", 4)


def test_the_best_and_the_worst_try_make_the_pair():
    pairs = preference_pairs([[1], [1], [2], [2]], [[5], [6], [7], [8]], torch.tensor([0.2, 0.9, 0.7, 0.1]), tries=2)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [([6], [5]), ([7], [8])]
    assert [round(p["margin"], 6) for p in pairs] == [0.7, 0.6]
    three = preference_pairs([[1]] * 3, [[5], [6], [7]], torch.tensor([0.5, 0.1, 0.8]), tries=3)
    assert [(p["chosen"], p["rejected"], p["prompt"]) for p in three] == [([7], [6], [1])]


def test_sequence_logp_sums_the_completion_tokens_only(tiny_gpt):
    model, _ = tiny_gpt
    prompts, completions = [[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]]
    batch = completion_batch(prompts, completions)
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
    with torch.no_grad():
        ours = sequence_logp(model, **batch)
        for row, (p, c) in enumerate(zip(prompts, completions)):     # each row alone, no padding, by hand
            ids = torch.tensor([p + c])
            logp = F.log_softmax(model(ids)[0].float(), -1)
            by_hand = sum(logp[len(p) - 1 + i, t] for i, t in enumerate(c))
            assert ours[row].item() == pytest.approx(by_hand.item(), abs=1e-4)


def test_the_dpo_loss_starts_at_log_2_and_falls_as_the_chosen_answer_gains():
    ref = torch.tensor([-10.0, -12.0])
    loss, chosen, rejected = dpo_loss(ref[:1], ref[1:], ref[:1], ref[1:], beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and chosen.item() == rejected.item() == 0
    better, _, _ = dpo_loss(ref[:1] + 1, ref[1:], ref[:1], ref[1:], beta=0.1)
    worse, _, _ = dpo_loss(ref[:1], ref[1:] + 1, ref[:1], ref[1:], beta=0.1)
    assert better < loss < worse
    assert better.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.1))))     # −log σ(β·1)


@pytest.mark.slow
def test_the_dpo_loss_equals_trls(tiny_gpt, tmp_path):
    reference, tokenizer = tiny_gpt
    policy = random_gpt(reference.config, seed=1)
    rows = [{"prompt": "The film is", "chosen": " a fine one.", "rejected": " dull."},
            {"prompt": "A moving,", "chosen": " funny film.", "rejected": " worse acting and a dull plot."}]
    theirs, batch = trl_dpo_loss(policy, reference, tokenizer, rows, beta=0.3, folder=str(tmp_path))
    ids = {k: batch[k] for k in ("input_ids", "completion_mask")}
    with torch.no_grad():
        chosen, rejected = sequence_logp(copy.deepcopy(policy).double(), **ids).chunk(2)
        ref_chosen, ref_rejected = sequence_logp(copy.deepcopy(reference).double(), **ids).chunk(2)
    ours = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3)[0].item()
    assert ours == pytest.approx(theirs, abs=1e-6) and abs(ours - math.log(2)) > 1e-3


@pytest.mark.slow
def test_a_short_dpo_run_learns_the_judges_order(tiny_gpt):
    reference, tokenizer = tiny_gpt
    good, bad = tokenizer.encode(" fine").ids, tokenizer.encode(" dull").ids
    pairs = [{"prompt": tokenizer.encode(p).ids, "chosen": good, "rejected": bad, "margin": 1.0}
             for p in ("The film is", "The plot is", "A film", "The acting is") * 4]
    ref_logps = pair_logps(reference, pairs)
    settings = dpo_settings("cpu", batch_size=4, epochs=3, lora_rank=4)
    policy, history = dpo(reference, pairs, ref_logps, settings, beta=0.5, lr=1e-2)
    assert history.steps_done == 12 and history.losses[-1] < math.log(2)
    logps = pair_logps(policy, pairs)
    assert ((logps[:, 0] - ref_logps[:, 0]) > (logps[:, 1] - ref_logps[:, 1])).all()
    assert torch.equal(pair_logps(reference, pairs), ref_logps)                   # the reference did not move
    with torch.no_grad():                                                         # a fresh LoRA policy is the reference
        fresh = DPOLoss(with_lora(reference, 4), 0.5)(**pair_batch(pairs[:4]), ref_logps=ref_logps[:4])
    assert fresh.item() == pytest.approx(math.log(2), abs=1e-6)
    assert isinstance(DPOLoss(policy, 0.5)(**{**completion_batch([pairs[0]["prompt"]] * 2, [good, bad]),
                                               "ref_logps": ref_logps[:1]}).item(), float)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        dpo(reference, pairs[:3], ref_logps[:3], settings, beta=0.5, lr=1e-2)


def test_the_reference_is_at_kl_zero_from_itself(tiny_gpt):
    model, tokenizer = tiny_gpt
    prompts, new = [tokenizer.encode("The film").ids] * 2, [tokenizer.encode(" is fine.").ids, tokenizer.encode(" is dull").ids]
    measured = distance_and_fluency(model, model, prompts, new)
    assert measured["kl"] == 0 and measured["perplexity"] > 1


def test_word_counts_see_punctuation_and_repetition():
    assert word_counts(["A fine, fine film."]) == {"a": 1, "fine": 2, ",": 1, "film": 1, ".": 1}
    assert repeats_a_token(",,,, and") and repeats_a_token("good good good good") and not repeats_a_token("a fine film, truly")


def test_vader_reads_plain_words():
    assert vader_positive(["A wonderful, moving film.", "Dull, boring and far too long.", "The film is 90 minutes."]) == [1.0, 0.0, 0.0]
