"""Chapter 11's lesson code (course.ch11_instruction_tuning) on tiny inputs: the generated tasks are graded right and
their splits keep the held-out phrasings and the test prompts out of training; the two chat tokens join the
vocabulary without changing any old token's logits; the labels mask the prompt; the masked loss is the
cross-entropy over the answer tokens and equals trl's SFTTrainer loss; a short SFT run lowers it."""
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from course.ch09_gpt import train_byte_bpe
from course.ch11_instruction_tuning import (ANIMALS, HELD_OUT, IGNORE, SEEN, TASKS, SFTLoss, answers, encode_example,
                                            exact_match, instruction_splits, make_examples, sft, sft_batch,
                                            sft_settings, start_model, trl_loss, with_chat_tokens, word_task)

from test_gpt import random_gpt, tiny      # random weights far from the initialisation (tests/test_gpt.py)

TEXT = ("What is the first word? Count the words: apple bread cat. Is this review positive or negative? "
        "A fine film, positive. A dull one, negative. ") * 20


@pytest.fixture(scope="module")
def chat_gpt():
    tokenizer = train_byte_bpe(TEXT, 300)
    return with_chat_tokens(random_gpt(tiny(vocab_size=tokenizer.get_vocab_size(), context=128)), tokenizer)


def fake_sentiment(n=40):
    """Reviews of each split its own, like the course's sentiment split."""
    return {split: {"text": [f"{split} review {i} was {'good' if i % 2 else 'bad'}" for i in range(n)],
                    "label": [i % 2 for i in range(n)]} for split in ("train", "validation", "test")}


def test_word_tasks_are_graded_right():
    rng = random.Random(0)
    for _ in range(200):
        for task in ("first", "last", "count"):
            slots, answer = word_task(task, rng)
            words = slots["words"].split()
            assert answer == {"first": words[0], "last": words[-1], "count": str(len(words))}[task]
        slots, answer = word_task("animal", rng)
        assert [w for w in slots["words"].split() if w in ANIMALS] == [answer]


def test_splits_keep_held_out_phrasings_and_test_prompts_out_of_training():
    splits = instruction_splits(fake_sentiment(), train_per_task=100, test_per_task=10)
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 500, "validation": 50, "test": 50,
                                                                   "held-out": 50}
    def opening(row):       # the phrasing a prompt was asked with, by its words before the first slot
        return next(i for i, p in enumerate(TASKS[row["task"]]) if row["prompt"].startswith(p.split("{")[0]))
    assert {opening(r) for r in splits["train"] + splits["validation"] + splits["test"]} == {0, 1, 2}
    assert {opening(r) for r in splits["held-out"]} == {3, 4}
    trained = {r["prompt"] for r in splits["train"]}
    assert not trained & {r["prompt"] for name in ("validation", "test", "held-out") for r in splits[name]}
    assert splits == instruction_splits(fake_sentiment(), train_per_task=100, test_per_task=10)   # deterministic


def test_chat_tokens_are_one_token_each_and_leave_old_logits_alone():
    tokenizer = train_byte_bpe(TEXT, 300)
    base = random_gpt(tiny(vocab_size=tokenizer.get_vocab_size(), context=128))
    model, grown = with_chat_tokens(base, tokenizer)
    ids = grown.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == grown.token_to_id("<|im_start|>") and ids[-1] == grown.token_to_id("<|im_end|>")
    x = torch.tensor([tokenizer.encode("apple bread cat").ids])
    with torch.no_grad():
        assert torch.equal(model(x)[..., :base.config.vocab_size], base(x))
    assert torch.allclose(model.embed_tokens.weight[-2:], base.embed_tokens.weight.mean(0).expand(2, -1))
    assert model.lm_head.weight is model.embed_tokens.weight                            # still tied


def test_labels_mask_the_prompt_and_the_loss_counts_only_the_answer(chat_gpt):
    model, tokenizer = chat_gpt
    rows = make_examples("count", 3, TASKS["count"][SEEN], random.Random(0), [])
    pairs = [encode_example(tokenizer, r) for r in rows]
    batch = sft_batch(pairs)
    for row, (prompt, answer) in enumerate(pairs):
        counted = (batch["labels"][row] != IGNORE).nonzero().flatten().tolist()
        assert counted == list(range(len(prompt) - 1, len(prompt) + len(answer) - 1))
        assert batch["labels"][row, counted].tolist() == answer
    every = sft_batch(pairs, mask_prompt=False)
    assert [(every["labels"][r] != IGNORE).sum().item() for r in range(3)] == [len(p) + len(a) - 1 for p, a in pairs]
    with torch.no_grad():
        logits = model(batch["input_ids"])
        by_hand = torch.cat([F.cross_entropy(logits[r, len(p) - 1:len(p) + len(a) - 1], torch.tensor(a), reduction="none")
                             for r, (p, a) in enumerate(pairs)]).mean()
        assert SFTLoss(model)(**batch).item() == pytest.approx(by_hand.item(), abs=1e-6)


@pytest.mark.slow
def test_the_masked_loss_equals_trls(chat_gpt, tmp_path):
    model, tokenizer = chat_gpt
    rows = make_examples("first", 4, TASKS["first"][SEEN], random.Random(1), [])
    theirs, _ = trl_loss(model, tokenizer, rows, str(tmp_path))
    with torch.no_grad():
        ours = SFTLoss(model.double())(**sft_batch([encode_example(tokenizer, r) for r in rows])).item()
    assert ours == pytest.approx(theirs, rel=1e-6)        # float32 logits on both sides, summed in other orders


@pytest.mark.slow
def test_a_short_sft_run_lowers_the_loss_and_answers_every_question():
    tokenizer = train_byte_bpe(TEXT, 300)
    base = random_gpt(tiny(vocab_size=tokenizer.get_vocab_size(), context=128))
    model, grown = start_model(base, tokenizer, "pretrained", seed=0)
    rows = make_examples("count", 64, TASKS["count"][SEEN], random.Random(0), [])
    pairs = [encode_example(grown, r) for r in rows]
    before = SFTLoss(model)(**sft_batch(pairs)).item()
    sft(model, pairs, sft_settings("cpu", steps=30, batch_size=8), lr=3e-3, seed=0)
    with torch.no_grad():
        assert SFTLoss(model)(**sft_batch(pairs)).item() < before
    assert len(answers(model, grown, rows[:5])) == 5
    scores = exact_match(model, grown, rows[:10])
    assert set(scores) == {"count", "all"} and 0 <= scores["all"] <= 1
    with pytest.raises(ValueError, match="cannot fill one batch"):
        sft(model, pairs[:3], sft_settings("cpu", batch_size=8), lr=3e-3, seed=0)
    fresh, _ = start_model(base, tokenizer, "random", seed=0)         # the random arm: the architecture drawn afresh
    again, _ = start_model(base, tokenizer, "random", seed=0)
    assert torch.equal(fresh.layers[0].mlp.up_proj.weight, again.layers[0].mlp.up_proj.weight)
    assert not torch.equal(fresh.layers[0].mlp.up_proj.weight, base.layers[0].mlp.up_proj.weight)
