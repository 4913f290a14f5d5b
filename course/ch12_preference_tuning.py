# generated from chapters/12_preference_tuning.ipynb: edit the notebook, then run make export
"""12 · Preference tuning (偏好对齐): DPO, with a classifier as the judge"""


import copy
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from course.ch05_fine_tuning import predict
from course.ch09_gpt import GPT
from course.ch10_llm import generate_ids
from utils.hardware import for_preset
from utils.seeding import seed_everything


END_OF_TEXT, IM_END = 0, 2                         # SmolLM2's <|endoftext|> and <|im_end|>: either ends a continuation


@dataclass(frozen=True)
class DPOSettings:
    train_prompts: int = 192
    validation_prompts: int = 64
    test_prompts: int = 128
    tries: int = 4                      # continuations sampled per training opening; the judge's best and worst make a pair
    test_samples: int = 1               # continuations per test opening
    new_tokens: int = 16
    temperature: float = 0.9
    batch_size: int = 8                 # pairs per step
    epochs: int = 1
    runs: tuple[tuple[float, float], ...] = ((0.1, 2e-3), (0.5, 2e-3), (0.1, 8e-3))   # (β, learning rate) per run
    lora_rank: int = 8
    seed: int = 0


DPO_PRESETS = {"cpu": DPOSettings(),
               "gpu": DPOSettings(train_prompts=1024, validation_prompts=200, test_prompts=500, test_samples=2, new_tokens=32,
                                  batch_size=16, epochs=2)}


def dpo_settings(preset: str | None = None, **overrides: Any) -> DPOSettings:
    return replace(for_preset(DPO_PRESETS, preset), **overrides)


OPENING_WORDS = 4


def openings(data, split: str, n: int, label: int = 0) -> list[str]:
    """The first OPENING_WORDS words of `split`'s reviews with `label` (0 = negative), n distinct ones, in order."""
    found: list[str] = []
    for row in data[split]:
        text = " ".join(row["text"].split()[:OPENING_WORDS])
        if row["label"] == label and text not in found:
            found.append(text)
            if len(found) == n:
                return found
    raise ValueError(f"the {split} split has only {len(found)} distinct openings with label {label}, not {n}: ask for fewer")


def continuations(model: GPT, tokenizer: Tokenizer, prompts: list[str], samples: int, settings: DPOSettings,
                  seed: int, batch_size: int = 64) -> tuple[list[list[int]], list[list[int]]]:
    """`samples` sampled continuations of each prompt: (prompt ids, new ids) per continuation, prompt by prompt."""
    generator = torch.Generator().manual_seed(seed)
    ids = [tokenizer.encode(p).ids for p in prompts for _ in range(samples)]
    new: list[list[int]] = []
    for i in range(0, len(ids), batch_size):
        new += generate_ids(model, ids[i:i + batch_size], settings.new_tokens, greedy=False, generator=generator,
                            temperature=settings.temperature, stop=(END_OF_TEXT, IM_END))
    return ids, new


def positive_probability(classifier: nn.Module, classifier_tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Chapter 05's classifier's P(positive) for each text."""
    return torch.tensor([row["p_positive"] for i in range(0, len(texts), batch_size)
                         for row in predict(classifier, classifier_tokenizer, texts[i:i + batch_size])])


def preference_pairs(prompt_ids: list[list[int]], new_ids: list[list[int]], rewards: torch.Tensor,
                     tries: int) -> list[dict[str, Any]]:
    """`tries` continuations per prompt, in order: the highest reward is chosen, the lowest rejected."""
    pairs = []
    for i in range(0, len(new_ids), tries):
        scores = rewards[i:i + tries]
        win, lose = i + int(scores.argmax()), i + int(scores.argmin())
        pairs.append({"prompt": prompt_ids[i], "chosen": new_ids[win], "rejected": new_ids[lose],
                      "margin": float(rewards[win] - rewards[lose])})
    return pairs


def completion_batch(prompts: list[list[int]], completions: list[list[int]], pad: int = END_OF_TEXT) -> dict[str, torch.Tensor]:
    """Prompt + completion per row, padded on the right; completion_mask is 1 on the completion's tokens."""
    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    completion_mask = torch.tensor([[0] * len(p) + [1] * len(c) + [0] * (width - len(p) - len(c))
                                    for p, c in zip(prompts, completions)])
    return {"input_ids": input_ids, "completion_mask": completion_mask}


def pair_batch(pairs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """One row per chosen continuation, then one per rejected continuation, in the order of `pairs`."""
    return completion_batch([p["prompt"] for p in pairs] * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])


def sequence_logp(model: nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log π(completion | prompt) per row: the sum over the completion's tokens of their log-probabilities."""
    logits = model(input_ids)[:, :-1]                              # position t predicts token t + 1
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))    # half-precision logits (AMP) to float32
    token_logp = -F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
    return (token_logp * completion_mask[:, 1:]).sum(1)


def dpo_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, ref_chosen_logp: torch.Tensor,
             ref_rejected_logp: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss over a batch of pairs, and each pair's implicit rewards (chosen, rejected)."""
    chosen_reward = beta * (chosen_logp - ref_chosen_logp)
    rejected_reward = beta * (rejected_logp - ref_rejected_logp)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return loss, chosen_reward.detach(), rejected_reward.detach()


@torch.no_grad()
def pair_logps(model: nn.Module, pairs: list[dict[str, Any]], batch_size: int = 32) -> torch.Tensor:
    """(pairs, 2): log π of each pair's chosen and rejected continuation under `model`."""
    out = []
    for i in range(0, len(pairs), batch_size):
        out.append(sequence_logp(model, **pair_batch(pairs[i:i + batch_size])).view(2, -1).T)
    return torch.cat(out)


class DPOLoss(nn.Module):
    """The policy inside a module whose forward is the DPO loss of one batch (chosen rows, then rejected rows)."""
    def __init__(self, policy: nn.Module, beta: float, loss: Callable = dpo_loss):
        super().__init__()
        self.policy, self.beta, self.loss = policy, beta, loss

    def forward(self, input_ids: torch.Tensor, completion_mask: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
        chosen, rejected = sequence_logp(self.policy, input_ids, completion_mask).chunk(2)
        return self.loss(chosen, rejected, ref_logps[:, 0], ref_logps[:, 1], self.beta)[0]


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def with_lora(reference: GPT, rank: int) -> nn.Module:
    """A copy of `reference` with LoRA adapters on every linear layer (the reference itself is untouched)."""
    from peft import LoraConfig, get_peft_model
    return get_peft_model(copy.deepcopy(reference), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                               target_modules=list(LORA_TARGETS)))


def dpo_batches(pairs: list[dict[str, Any]], ref_logps: torch.Tensor, batch_size: int, epochs: int,
                generator: torch.Generator):
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            group = order[i:i + batch_size]
            yield {**pair_batch([pairs[j] for j in group]), "ref_logps": ref_logps[group]}


def dpo(reference: GPT, pairs: list[dict[str, Any]], ref_logps: torch.Tensor, settings: DPOSettings, beta: float,
        lr: float, loss: Callable = dpo_loss, **train_options: Any):
    """A LoRA policy trained on `pairs` with `loss` (DPO's by default); returns (policy, utils.train's history)."""
    from utils.loop import train
    if len(pairs) < settings.batch_size:
        raise ValueError(f"{len(pairs)} pairs cannot fill one batch of {settings.batch_size}: give more pairs or a smaller batch_size")
    generator = seed_everything(settings.seed)
    policy = with_lora(reference, settings.lora_rank)
    steps = settings.epochs * (len(pairs) // settings.batch_size)
    batches = dpo_batches(pairs, ref_logps, settings.batch_size, settings.epochs, generator)
    options = {"warmup": max(1, steps // 10), "schedule": "cosine", "checkpoint_dir": None, "progress": False, **train_options}
    history = train(DPOLoss(policy, beta, loss), batches, steps=steps, lr=lr, weight_decay=0.0, **options)
    policy.eval()
    return policy, history


FLUENT = 1.5                    # a run is fluent while the reference's perplexity on it is at most 1.5× the untuned model's


@torch.no_grad()
def distance_and_fluency(policy: nn.Module, reference: nn.Module, prompt_ids: list[list[int]], new_ids: list[list[int]],
                         batch_size: int = 32) -> dict[str, float]:
    """Mean log π − log π_ref per continuation (nats; the KL when sampled at temperature 1) and the reference's
    perplexity on the continuations."""
    policy_logp, ref_logp = [], []
    for i in range(0, len(new_ids), batch_size):
        batch = completion_batch(prompt_ids[i:i + batch_size], new_ids[i:i + batch_size])
        policy_logp.append(sequence_logp(policy, **batch))
        ref_logp.append(sequence_logp(reference, **batch))
    policy_logp, ref_logp = torch.cat(policy_logp), torch.cat(ref_logp)
    tokens = sum(len(n) for n in new_ids)
    return {"kl": (policy_logp - ref_logp).mean().item(), "perplexity": math.exp(-ref_logp.sum().item() / tokens)}


def judged_continuations(model: nn.Module, reference: GPT, tokenizer: Tokenizer, prompts: list[str], samples: int,
                         judges: dict[str, Callable[[list[str]], list[float]]], settings: DPOSettings, seed: int) -> dict[str, Any]:
    """Sample continuations of `prompts` from `model`; each judge's verdicts (1.0 = positive), KL and fluency."""
    prompt_ids, new_ids = continuations(model, tokenizer, prompts, samples, settings, seed)
    texts = [tokenizer.decode(p + n) for p, n in zip(prompt_ids, new_ids)]
    return {"texts": texts, "continuations": [tokenizer.decode(n) for n in new_ids],
            "verdicts": {name: judge(texts) for name, judge in judges.items()},
            **distance_and_fluency(model, reference, prompt_ids, new_ids)}


def vader_positive(texts: list[str], threshold: float = 0.05) -> list[float]:
    """1.0 where VADER's compound score is at least `threshold` (its authors' cut for positive), else 0.0."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    analyzer = SentimentIntensityAnalyzer()
    return [float(analyzer.polarity_scores(t)["compound"] >= threshold) for t in texts]


TOKEN = re.compile(r"[a-z']+|[^\s\w]")                  # a word, or a single punctuation mark


def word_counts(texts: list[str]) -> Counter:
    """How often each word and each punctuation mark occurs in `texts` (lower-cased)."""
    return Counter(w for t in texts for w in TOKEN.findall(t.lower()))


def repeats_a_token(text: str, times: int = 4) -> bool:
    """True when one word or punctuation mark occurs `times` times or more in `text`."""
    counts = word_counts([text])
    return bool(counts) and max(counts.values()) >= times


def trl_dpo_loss(policy: nn.Module, reference: GPT, tokenizer: Tokenizer, rows: list[dict[str, str]], beta: float,
                 folder: str) -> tuple[float, dict[str, torch.Tensor]]:
    """trl's DPOTrainer loss on one batch of text rows {"prompt", "chosen", "rejected"} (float64), and that batch."""
    import warnings
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer
    from course.ch09_gpt import to_llama
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    with warnings.catch_warnings():             # transformers' deprecation notices about arguments trl passes
        warnings.simplefilter("ignore", FutureWarning)
        config = DPOConfig(output_dir=folder, beta=beta, per_device_train_batch_size=len(rows), report_to=[], bf16=False,
                           use_cpu=not torch.cuda.is_available())
        trainer = DPOTrainer(model=to_llama(policy).double(), ref_model=to_llama(reference).double(), args=config,
                             train_dataset=Dataset.from_list(rows), processing_class=wrapped)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])   # in order, no shuffle
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch).item(), batch


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'END_OF_TEXT', 'IM_END', 'DPOSettings', 'DPO_PRESETS', 'dpo_settings', 'OPENING_WORDS', 'openings',
    'continuations', 'positive_probability', 'preference_pairs', 'completion_batch', 'pair_batch', 'sequence_logp',
    'dpo_loss', 'pair_logps', 'DPOLoss', 'LORA_TARGETS', 'with_lora', 'dpo_batches', 'dpo', 'FLUENT',
    'distance_and_fluency', 'judged_continuations', 'vader_positive', 'TOKEN', 'word_counts', 'repeats_a_token',
    'trl_dpo_loss',
]
