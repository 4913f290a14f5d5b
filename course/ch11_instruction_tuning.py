# generated from chapters/11_instruction_tuning.ipynb: edit the notebook, then run make export
"""11 · Instruction tuning (指令微调): from a text continuer to a model that follows instructions"""


import random
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Tokenizer
from torch import nn

from course.ch09_gpt import GPT
from course.ch10_llm import chat_prompt, generate_ids
from utils.hardware import for_preset
from utils.seeding import seed_everything


WORDS = ("apple bread cat dog egg fish goat hat ink jam king lamp moon nest owl pear queen rain ship tree cup "
         "door fire gold hand horse iron milk rose salt snow star stone sword wind wolf boat bell bird book cake "
         "coat corn drum flag frog glove harp lion mask nail oak pig ring rope seed sock tent bear crow duck fox "
         "hawk lamb mouse ox rat swan bee crab deer eel mole ant cow hen").split()
ANIMALS = set("cat dog fish goat owl horse wolf bird frog lion pig bear crow duck fox hawk lamb mouse ox rat swan "
              "bee crab deer eel mole ant cow hen".split())
TASKS = {
    "first": ["What is the first word? {words}", "Say the first word of: {words}", "Which word comes first? {words}",
              "Give me the word at the start of: {words}", "Name the opening word: {words}"],
    "last": ["What is the last word? {words}", "Say the last word of: {words}", "Which word comes last? {words}",
             "Give me the word at the end of: {words}", "Name the closing word: {words}"],
    "count": ["How many words are in this line? {words}", "Count the words: {words}", "Number of words in: {words}",
              "Tell me how many words this has: {words}", "What is the word count of: {words}"],
    "animal": ["Which of these is an animal? {words}", "Find the animal: {words}", "Pick the animal in: {words}",
               "One of these words is an animal. Which? {words}", "Name the creature in this list: {words}"],
    "sentiment": ["Is this review positive or negative? {text}", "Sentiment of this review: {text}",
                  "Positive or negative? {text}", "Did the critic like the film? {text}",
                  "Classify this movie review as positive or negative: {text}"],
}
SEEN, HELD_OUT = slice(0, 3), slice(3, 5)          # phrasings 1-3 train; 4-5 only ever appear in the test


def word_task(task: str, rng: random.Random) -> tuple[dict[str, str], str]:
    """The slots of one example of a word task, and its answer."""
    if task == "animal":
        words = rng.sample([w for w in WORDS if w not in ANIMALS], rng.randint(1, 4))
        animal = rng.choice(sorted(ANIMALS))
        words.insert(rng.randrange(len(words) + 1), animal)
        return {"words": " ".join(words)}, animal
    words = rng.sample(WORDS, rng.randint(2, 6))
    return {"words": " ".join(words)}, {"first": words[0], "last": words[-1], "count": str(len(words))}[task]


def make_examples(task: str, n: int, phrasings: list[str], rng: random.Random,
                  reviews: list[tuple[str, int]]) -> list[dict[str, str]]:
    """n examples of `task`, each asked with one of `phrasings` at random."""
    rows = []
    for _ in range(n):
        if task == "sentiment":
            text, label = reviews[rng.randrange(len(reviews))]
            slots, answer = {"text": text}, "positive" if label else "negative"
        else:
            slots, answer = word_task(task, rng)
        rows.append({"task": task, "prompt": rng.choice(phrasings).format(**slots), "answer": answer})
    return rows


MAX_REVIEW_CHARS = 120


def short_reviews(data, split: str) -> list[tuple[str, int]]:
    return [(t, l) for t, l in zip(data[split]["text"], data[split]["label"]) if len(t) <= MAX_REVIEW_CHARS]


def instruction_splits(data, train_per_task: int = 2000, test_per_task: int = 60, seed: int = 0) -> dict[str, list]:
    """train; validation (seen phrasings); test (seen phrasings); held-out (phrasings 4-5) — new prompts only."""
    rng = random.Random(seed)
    reviews = {split: short_reviews(data, split) for split in ("train", "validation", "test")}
    splits = {"train": [e for task, p in TASKS.items()
                        for e in make_examples(task, train_per_task, p[SEEN], rng, reviews["train"])]}
    trained = {row["prompt"] for row in splits["train"]}
    for name, phrasings, source in (("validation", SEEN, "validation"), ("test", SEEN, "test"),
                                    ("held-out", HELD_OUT, "test")):
        rows = [e for task, p in TASKS.items()
                for e in make_examples(task, 2 * test_per_task, p[phrasings], rng, reviews[source])]
        rows = [row for row in rows if row["prompt"] not in trained]
        splits[name] = [row for task in TASKS for row in [r for r in rows if r["task"] == task][:test_per_task]]
    return splits


CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
SYSTEM = "Answer with one word."       # our own, short: SmolLM2's default system message costs 49 of our 128 positions


def with_chat_tokens(model: GPT, tokenizer: Tokenizer) -> tuple[GPT, Tokenizer]:
    """Copies of the model and tokenizer that know ChatML's two tokens (new embedding rows = the mean row)."""
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in CHAT_TOKENS])
    grown = GPT(replace(model.config, vocab_size=tokenizer.get_vocab_size()))
    old = model.state_dict()
    with torch.no_grad():
        for name, tensor in grown.state_dict().items():
            tensor[:len(old[name])] = old[name]          # every tensor; only the embeddings have more rows
        grown.embed_tokens.weight[len(old["embed_tokens.weight"]):] = old["embed_tokens.weight"].mean(0)
    return grown.eval(), tokenizer


def prompt_text(row: dict[str, str]) -> str:
    """The chat up to the assistant's turn: our system message, the instruction."""
    return chat_prompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["prompt"]}])


def encode_example(tokenizer: Tokenizer, row: dict[str, str]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the chat up to the assistant's turn; the answer and <|im_end|>."""
    return tokenizer.encode(prompt_text(row)).ids, tokenizer.encode(row["answer"] + "<|im_end|>").ids


IGNORE = -100                                           # cross_entropy's ignore_index


def sft_batch(pairs: list[tuple[list[int], list[int]]], mask_prompt: bool = True) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and labels: labels[i] is the token after position i, IGNORE where it must not count."""
    width = max(len(p) + len(a) for p, a in pairs)
    input_ids = torch.zeros(len(pairs), width, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE)
    for row, (prompt, answer) in enumerate(pairs):
        seq = prompt + answer
        input_ids[row, :len(seq)] = torch.tensor(seq)
        labels[row, :len(seq) - 1] = torch.tensor(seq[1:])
        if mask_prompt:
            labels[row, :len(prompt) - 1] = IGNORE       # position len(prompt)-1 predicts the answer's first token
    return {"input_ids": input_ids, "labels": labels}


class SFTLoss(nn.Module):
    """The mean next-token cross-entropy over the positions whose label is not IGNORE (lm_head only there)."""
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m, seq = self.model, input_ids.shape[1]
        x = m.embed_tokens(input_ids)
        for block in m.layers:                               # chapter 09's GPT.forward, without the head
            x = block(x, m.cos[:seq], m.sin[:seq])
        counted = labels != IGNORE
        return F.cross_entropy(m.lm_head(m.norm(x[counted])).float(), labels[counted])   # float32, as transformers does


def length_grouped(pairs: list[tuple[list[int], list[int]]], size: int, generator: torch.Generator):
    """Batches of `size` example indices, endlessly: shuffled, sorted by length within pools of up to 32
    batches, the batches shuffled again."""
    pool = min(32, len(pairs) // size) * size
    while True:
        order = torch.randperm(len(pairs), generator=generator).tolist()
        groups = []
        for start in range(0, len(order) - pool + 1, pool):
            by_length = sorted(order[start:start + pool], key=lambda j: len(pairs[j][0]) + len(pairs[j][1]))
            groups += [by_length[i:i + size] for i in range(0, pool, size)]
        for k in torch.randperm(len(groups), generator=generator).tolist():
            yield groups[k]


@dataclass(frozen=True)
class SFTSettings:
    steps: int = 400
    batch_size: int = 16
    warmup: int = 20
    rates: tuple[tuple[str, tuple[float, ...]], ...] = (("pretrained", (1e-3, 2e-3, 4e-3)), ("random", (5e-4, 1e-3, 2e-3, 4e-3)))
    every_token_rates: tuple[float, ...] = (2e-3, 4e-3, 8e-3)     # section 4's arm: the loss on every token
    seeds: tuple[int, ...] = (0, 1, 2)
    train_per_task: int = 2000
    test_per_task: int = 60


SFT_PRESETS = {"cpu": SFTSettings(),
               "gpu": SFTSettings(steps=1500, batch_size=32, train_per_task=8000, test_per_task=200)}


def sft_settings(preset: str | None = None, **overrides: Any) -> SFTSettings:
    return replace(for_preset(SFT_PRESETS, preset), **overrides)


def start_model(base: GPT, tokenizer: Tokenizer, init: str, seed: int) -> tuple[GPT, Tokenizer]:
    """The arm's starting point: `base` ("pretrained") or the same architecture drawn afresh ("random")."""
    if init == "random":
        seed_everything(seed)
        base = GPT(base.config)
    return with_chat_tokens(base, tokenizer)


def sft(model: GPT, pairs: list[tuple[list[int], list[int]]], settings: SFTSettings, lr: float, seed: int,
        mask_prompt: bool = True, **train_options: Any):
    """Fine-tune `model` in place on encoded (prompt, answer) pairs; returns utils.train's history."""
    from utils.loop import train
    if len(pairs) < settings.batch_size:
        raise ValueError(f"{len(pairs)} examples cannot fill one batch of {settings.batch_size}: give more examples "
                         "or a smaller batch_size")
    groups = length_grouped(pairs, settings.batch_size, seed_everything(seed))
    batches = (sft_batch([pairs[j] for j in group], mask_prompt) for group in groups)
    history = train(SFTLoss(model), batches, steps=settings.steps, lr=lr, warmup=settings.warmup,
                    schedule="cosine", weight_decay=0.0, **{"checkpoint_dir": None, "progress": False, **train_options})
    model.eval()
    return history


def answers(model: GPT, tokenizer: Tokenizer, rows: list[dict[str, str]], batch_size: int = 64,
            max_new_tokens: int = 8) -> list[str]:
    """Greedy answers to each row's prompt."""
    end = tokenizer.token_to_id("<|im_end|>")
    prompts = [encode_example(tokenizer, row)[0] for row in rows]
    out = []
    for i in range(0, len(prompts), batch_size):
        out += generate_ids(model, prompts[i:i + batch_size], max_new_tokens, stop=(end,))
    return [tokenizer.decode([t for t in ids if t != end]).strip() for ids in out]


def exact_match(model: GPT, tokenizer: Tokenizer, rows: list[dict[str, str]]) -> dict[str, float]:
    """Exact-match accuracy per task, and "all": the mean over tasks."""
    right: dict[str, list[bool]] = {}
    for row, said in zip(rows, answers(model, tokenizer, rows)):
        right.setdefault(row["task"], []).append(said == row["answer"])
    scores = {task: sum(r) / len(r) for task, r in right.items()}
    return {**scores, "all": sum(scores.values()) / len(scores)}


def trl_loss(model: GPT, tokenizer: Tokenizer, rows: list[dict[str, str]], folder: str) -> tuple[float, dict]:
    """trl's SFTTrainer loss on one batch of `rows` (float64), and the batch it built."""
    import warnings
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer
    from course.ch09_gpt import to_llama
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    dataset = Dataset.from_list([{"prompt": prompt_text(r), "completion": r["answer"] + "<|im_end|>"} for r in rows])
    llama = to_llama(model).double()
    with warnings.catch_warnings():             # transformers' deprecation notices about arguments trl passes
        warnings.simplefilter("ignore", FutureWarning)
        config = SFTConfig(output_dir=folder, per_device_train_batch_size=len(rows), report_to=[], bf16=False,
                           use_cpu=not torch.cuda.is_available(), max_length=model.config.context)
        trainer = SFTTrainer(model=llama, args=config, train_dataset=dataset, processing_class=wrapped)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])   # in order, no shuffle
    with torch.no_grad():
        return trainer.compute_loss(llama, batch).item(), batch


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'WORDS', 'ANIMALS', 'TASKS', 'SEEN', 'HELD_OUT', 'word_task', 'make_examples', 'MAX_REVIEW_CHARS',
    'short_reviews', 'instruction_splits', 'CHAT_TOKENS', 'SYSTEM', 'with_chat_tokens', 'prompt_text',
    'encode_example', 'IGNORE', 'sft_batch', 'SFTLoss', 'length_grouped', 'SFTSettings', 'SFT_PRESETS',
    'sft_settings', 'start_model', 'sft', 'answers', 'exact_match', 'trl_loss',
]
