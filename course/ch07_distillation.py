# generated from chapters/07_distillation.ipynb: edit the notebook, then run make export
"""07 · Knowledge distillation and compression (知识蒸馏, 剪枝, 量化)"""


import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertModel, DataCollatorWithPadding
from transformers.modeling_outputs import SequenceClassifierOutput

import utils
from course.ch03_model_anatomy import count_parameters
from course.ch05_fine_tuning import (MAX_LENGTH, LengthGroupedSampler, Prepared, SentenceClassifier, _over_batches,
                                     accuracy, batches, load_classifier, new_classifier, predict_proba, prepare,
                                     save_classifier, scores, teacher, teacher_identity)
from utils.data import load_sentiment, sentiment_rows
from utils.hardware import for_preset, preset as device_preset
from utils.sweeps import SweepRecord, chosen_rates, result_row, tune_then_repeat


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 1000                  # optimizer steps for every mini-BERT student
    batch_size: int = 32
    temperature: float = 2.0           # T
    alpha: float = 0.9                 # weight of the soft-target term; 1 − alpha on the hard labels
    copies: int = 4                    # augmented versions of each training sentence in the transfer set
    evaluations: int = 2               # validation accuracy this often; the best weights are kept
    seeds: tuple[int, ...] = (0,)      # trained in the notebook (the sweep adds the noise seeds)
    noise_seeds: tuple[int, ...] = (0, 1, 2)
    distilbert_steps: int = 200        # the DistilBERT-style student (3 MiniLM layers): several mini-BERT steps each
    max_length: int = MAX_LENGTH
    learning_rates: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("hard labels", (1e-4, 3e-4, 1e-3, 2e-3)), ("distilled", (3e-5, 1e-4, 3e-4, 1e-3, 2e-3)),
        ("distilled + augmented", (3e-4, 1e-3, 2e-3)), ("pretrained + distilled + augmented", (3e-4, 1e-3, 2e-3, 4e-3)),
        ("DistilBERT-style", (1e-4, 2e-4, 5e-4)))

    def rates(self, arm: str) -> tuple[float, ...]:
        return dict(self.learning_rates)[arm]


DISTILL = {"cpu": DistillSettings(),
           "gpu": DistillSettings(steps=4000, copies=8, seeds=(0, 1, 2), distilbert_steps=1000)}


def distill_settings(preset: str | None = None) -> DistillSettings:
    return for_preset(DISTILL, preset)


def logits_of(model: nn.Module, loader) -> torch.Tensor:
    """The model's logits for every sentence of an evaluation loader (shuffle=False), in the split's order."""
    return torch.from_numpy(_over_batches(model, loader, lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits))


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), mean over the batch, + (1 − alpha)·cross-entropy on the
    rows whose label is not −100 (augmented sentences have none)."""
    log_p_student = torch.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()
    loss = alpha * temperature ** 2 * kl
    if labels is not None and alpha < 1 and bool((labels != -100).any()):
        loss = loss + (1 - alpha) * nn.functional.cross_entropy(student_logits, labels, ignore_index=-100)
    return loss


def word_kinds(texts: Sequence[str], embeddings: torch.Tensor, tokenizer, k: int = 5,
               min_count: int = 2) -> dict[str, list[str]]:
    """For each word of `texts` (lower-cased, letters only, seen min_count times or more, one token of
    `tokenizer`'s vocabulary) its k nearest such words by the cosine of `embeddings` (mean removed):
    our stand-in for "a word of the same kind"."""
    counts = Counter(w.lower() for t in texts for w in t.split())
    words = [w for w, c in counts.most_common() if c >= min_count and w.isalpha()]
    ids = tokenizer.convert_tokens_to_ids(words)
    known = [(w, i) for w, i in zip(words, ids) if i != tokenizer.unk_token_id]
    vectors = embeddings.detach()[[i for _, i in known]].float()
    vectors = nn.functional.normalize(vectors - vectors.mean(0), dim=1)
    similarity = vectors @ vectors.T
    similarity.fill_diagonal_(-2.0)
    nearest = similarity.topk(k, dim=1).indices.tolist()
    return {w: [known[j][0] for j in row] for (w, _), row in zip(known, nearest)}


def augment(sentence: str, kinds: dict[str, list[str]], rng: np.random.Generator, p_mask: float = 0.1,
            p_swap: float = 0.1, p_ngram: float = 0.25, max_n: int = 5, mask_token: str = "[MASK]") -> str:
    """One augmented version of `sentence` (Tang et al., 2019): masking, same-kind swaps, n-gram sampling."""
    words = []
    for word in sentence.split():
        u = rng.random()
        if u < p_mask:
            words.append(mask_token)
        elif u < p_mask + p_swap and word.lower() in kinds:
            choices = kinds[word.lower()]
            words.append(choices[int(rng.integers(len(choices)))])
        else:
            words.append(word)
    if len(words) > 1 and rng.random() < p_ngram:
        n = int(rng.integers(1, max_n + 1))
        start = int(rng.integers(0, max(1, len(words) - n + 1)))
        words = words[start:start + n]
    return " ".join(words)


def augmented_sentences(texts: Sequence[str], kinds: dict[str, list[str]], copies: int, seed: int = 0) -> list[str]:
    """`copies` augmented versions of every sentence; duplicates and copies of a training sentence dropped."""
    rng = np.random.default_rng(seed)
    seen, result = set(texts), []
    for _ in range(copies):
        for text in texts:
            new = augment(text, kinds, rng)
            if new not in seen:
                seen.add(new)
                result.append(new)
    return result


def teacher_logits(texts: Sequence[str], folder: str | Path | None = None, batch_size: int = 128,
                   max_length: int = MAX_LENGTH) -> torch.Tensor:
    """The teacher's logits for `texts` (default teacher: chapter 05's, built if missing), computed once in
    length-grouped batches and cached, keyed by the teacher (what it is made from) and the texts."""
    folder = Path(folder) if folder is not None else teacher()
    texts = list(texts)
    identity = utils.made_from("teacher logits (chapter 07)", {"max_length": max_length}, teacher=folder, texts=texts)

    def build(out: Path) -> None:
        model, tokenizer = load_classifier(folder)
        part = Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=max_length)))
        logits = logits_of(model, batches(part, tokenizer, batch_size, shuffle=False))
        save_file({"logits": logits.contiguous()}, str(out / "logits.safetensors"))

    path = utils.get_or_build(f"teacher-logits-{identity['teacher'][:8]}-{identity['texts'][:8]}", build,
                              version=identity)
    logits = load_file(str(path / "logits.safetensors"))["logits"]
    if len(logits) != len(texts):
        raise utils.CheckpointError(f"{path} holds {len(logits)} logits for {len(texts)} texts; delete it and run again")
    return logits


@dataclass
class Transfer:
    """The transfer set: the training sentences (with their labels) first, then the augmented ones
    (label −100), and the teacher's logits for all of them."""
    texts: list[str]
    labels: list[int]
    logits: torch.Tensor
    labelled: int                      # the first `labelled` rows are the training sentences


def transfer_set(data, settings: DistillSettings, folder: str | Path | None = None) -> Transfer:
    """Chapter 05's training split + `settings.copies` augmented copies, labelled by the teacher (cached)."""
    folder = Path(folder) if folder is not None else teacher()
    texts = list(data["train"]["text"])
    model, tokenizer = load_classifier(folder)
    kinds = word_kinds(texts, model.encoder.embeddings.word_embeddings.weight, tokenizer)
    everything = texts + augmented_sentences(texts, kinds, settings.copies)
    labels = list(data["train"]["label"]) + [-100] * (len(everything) - len(texts))
    return Transfer(everything, labels, teacher_logits(everything, folder, max_length=settings.max_length), len(texts))


class Distilled(nn.Module):
    """A student whose forward computes the distillation loss when the batch carries `teacher_logits`
    (and plain cross-entropy when it does not), so `utils.train` trains it like any classifier."""

    def __init__(self, student: nn.Module, temperature: float = 2.0, alpha: float = 0.9):
        super().__init__()
        self.student, self.temperature, self.alpha = student, temperature, alpha

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                teacher_logits: torch.Tensor | None = None, **ignored: Any) -> SequenceClassifierOutput:
        logits = self.student(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        loss = None
        if teacher_logits is not None:
            loss = distillation_loss(logits, teacher_logits.float(), labels, self.temperature, self.alpha)
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits, labels, ignore_index=-100)
        return SequenceClassifierOutput(loss=loss, logits=logits)


STUDENTS = {   # arm: (weights at the start, what it learns from)
    "hard labels": ("random", "hard"),
    "distilled": ("random", "soft"),
    "distilled + augmented": ("random", "transfer"),
    "pretrained + distilled + augmented": ("mini-bert", "transfer"),
}
# Trained in the notebook (the sweep trains them all); the CPU preset's budget leaves the other two to the sweep.
TRAINED_HERE = {"cpu": ("distilled", "distilled + augmented"), "gpu": tuple(STUDENTS)}


def student_parts(transfer: Transfer, tokenizer, max_length: int = MAX_LENGTH) -> dict[str, Dataset]:
    """The three things a student can learn from, tokenized with its tokenizer: "hard" (training
    sentences, labels), "soft" (the same + teacher logits), "transfer" (everything + teacher logits)."""
    encoded = tokenizer(transfer.texts, truncation=True, max_length=max_length)
    everything = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                                    "labels": transfer.labels, "teacher_logits": transfer.logits.tolist()})
    soft = everything.select(range(transfer.labelled))
    return {"hard": soft.remove_columns("teacher_logits"), "soft": soft, "transfer": everything}


def transfer_batches(part: Dataset, tokenizer, batch_size: int = 32, seed: int = 0) -> torch.utils.data.DataLoader:
    """Chapter 05's length-grouped shuffled batches, carrying the teacher's logits when the part has them."""
    pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad([{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows])
        batch["labels"] = torch.tensor([r["labels"] for r in rows])
        if "teacher_logits" in rows[0]:
            batch["teacher_logits"] = torch.tensor([r["teacher_logits"] for r in rows])
        return batch

    lengths = [len(ids) for ids in part["input_ids"]]
    sampler = LengthGroupedSampler(lengths, batch_size, torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(part, batch_sampler=sampler, collate_fn=collate)


def distil(student: nn.Module, part: Dataset, prepared: Prepared, settings: DistillSettings, lr: float, seed: int,
           steps: int | None = None, wrap: Any = None, **train_options: Any) -> utils.History:
    """Train `student` on `part` (a `student_parts` entry) for `steps` (default settings.steps), keeping
    the weights with the best validation accuracy. wrap(student): the module whose forward gives the loss
    (default: `Distilled`)."""
    steps = steps or settings.steps
    model = wrap(student) if wrap is not None else Distilled(student, settings.temperature, settings.alpha)
    loader = transfer_batches(part, prepared.tokenizer, settings.batch_size, seed)
    return utils.train(model, loader, steps=steps, lr=lr, warmup=0.1, weight_decay=0.01, schedule="linear",
                       metrics=lambda m: {"validation accuracy": accuracy(m, prepared.validation)},
                       monitor="validation accuracy", mode="max", restore_best=True,
                       eval_every=max(1, steps // settings.evaluations), **{"progress": False, **train_options})


def run_student(arm: str, parts: dict[str, Dataset], prepared: Prepared, settings: DistillSettings, lr: float,
                seed: int = 0, keep_model: bool = False, **train_options: Any) -> dict[str, Any]:
    """One student of the race, trained and scored on the test split: a row of the results table."""
    if arm not in STUDENTS:
        raise ValueError(f"unknown student {arm!r}; choose one of {', '.join(STUDENTS)}")
    start, source = STUDENTS[arm]
    student = new_classifier(start, seed)
    started = time.perf_counter()
    history = distil(student, parts[source], prepared, settings, lr, seed, **train_options)
    return race_row(arm, student, history, prepared, time.perf_counter() - started, keep_model, lr=lr, seed=seed)


def race_row(arm: str, student: SentenceClassifier, history: utils.History, prepared: Prepared, seconds: float,
             keep_model: bool, **labels: Any) -> dict[str, Any]:
    """A row of the results table: the student scored on the test split (+ the model and its probabilities)."""
    probs = predict_proba(student, prepared.test)
    row = result_row(history, scores(prepared.data["test"]["labels"], probs)["accuracy"], seconds, arm=arm, **labels)
    if keep_model:
        row["model"], row["probs"] = student, probs
    return row


ARMS = (*STUDENTS, "DistilBERT-style")


def best_student_arm(rows: Sequence[dict[str, Any]], arms: Sequence[str] = tuple(STUDENTS)) -> str:
    """Of `arms`, the mini-BERT student with the highest mean validation accuracy over the seeds at its chosen rate."""
    rates = chosen_rates(rows, by="arm")
    means = {arm: float(np.mean([r["validation accuracy"] for r in rows if r["arm"] == arm and r["lr"] == rates[arm]]))
             for arm in arms if arm in rates}
    return max(means, key=means.get)


def sweep(settings: DistillSettings, wordpiece: Prepared, minilm: Prepared, transfer: Transfer,
          arms: Sequence[str] = ARMS, on_row=lambda row: None, reuse: Sequence[dict[str, Any]] = (),
          **train_options: Any) -> list[dict[str, Any]]:
    """Chapter 05's protocol (utils.sweeps.tune_then_repeat) for every arm: each of its rates with the first
    noise seed, the other noise seeds at the rate best on validation. reuse: rows of an earlier sweep with the
    same settings apart from the rates (`load_sweep(..., any_rates=True)`), taken as they are instead of
    training again."""
    earlier = {(row["arm"], row["lr"], row["seed"]): row for row in reuse}
    parts = {"wordpiece": student_parts(transfer, wordpiece.tokenizer, settings.max_length),
             "MiniLM": student_parts(transfer, minilm.tokenizer, settings.max_length)}

    def record(arm: str, lr: float, seed: int) -> dict[str, Any]:
        if (arm, lr, seed) in earlier:
            row = earlier[(arm, lr, seed)]
        elif arm == "DistilBERT-style":
            row = run_distilbert(parts["MiniLM"], minilm, settings, lr, seed, **train_options)
        else:
            row = run_student(arm, parts["wordpiece"], wordpiece, settings, lr, seed, **train_options)
        on_row(row)
        return row
    rows: list[dict[str, Any]] = []
    for arm in arms:
        rows += tune_then_repeat(settings.rates(arm), settings.noise_seeds, lambda lr, seed: record(arm, lr, seed))
    return rows


DISTILL_SWEEP = SweepRecord("distill_sweep", made_by="distill_settings", inputs_named="sentiment set, teacher or mini-BERT")


def inputs_identity(data, teacher_folder: str | Path | None = None) -> dict[str, str]:
    """What the race's numbers depend on besides the settings: the sentences and labels, the teacher and
    chapter 04's mini-BERT (its tokenizer and, for one student, its weights), each named by what it is made
    from (its recipe and inputs), not by its trained weights, so a committed race holds on any machine."""
    from course.ch04_pretraining import mini_bert_identity
    return utils.made_from(sentiment=sentiment_rows(data),
                           teacher=Path(teacher_folder) if teacher_folder is not None else teacher_identity(),
                           mini_bert=mini_bert_identity())


def load_sweep(preset: str, settings: DistillSettings, data, any_rates: bool = False) -> dict[str, Any]:
    """The committed sweep for `preset`, refused if made with other settings (other learning rates too,
    unless any_rates), data, teacher or mini-BERT."""
    return DISTILL_SWEEP.read(preset, settings=asdict(settings), inputs=inputs_identity(data), any_rates=any_rates)


def every_other_layer(model: SentenceClassifier, keep: Sequence[int] | None = None) -> SentenceClassifier:
    """A DistilBERT-style student (Sanh et al., 2019): the teacher with only the layers `keep` (default
    every other one: 0, 2, 4 of 6), each initialised from the teacher's layer, embeddings and head copied.
    The word-embedding table (half the parameters) is frozen: updating it is half the cost of a step."""
    layers = model.encoder.encoder.layer
    keep = list(range(0, len(layers), 2)) if keep is None else list(keep)
    config = BertConfig.from_dict({**model.config.to_dict(), "num_hidden_layers": len(keep)})
    encoder = BertModel(config, add_pooling_layer=False)
    encoder.embeddings.load_state_dict(model.encoder.embeddings.state_dict())
    for new, old in zip(encoder.encoder.layer, keep):
        new.load_state_dict(layers[old].state_dict())
    student = SentenceClassifier(encoder, pooling=model.pooling, dropout=model.dropout.p)
    student.classifier.load_state_dict(model.classifier.state_dict())
    student.encoder.embeddings.word_embeddings.requires_grad_(False)
    return student


def run_distilbert(parts: dict[str, Dataset], prepared: Prepared, settings: DistillSettings, lr: float,
                   seed: int = 0, folder: str | Path | None = None, keep_model: bool = False,
                   hidden_weight: float = 0.0, **train_options: Any) -> dict[str, Any]:
    """The DistilBERT-style student distilled on the transfer set (`parts` tokenized with MiniLM's
    tokenizer) for settings.distilbert_steps; a row of the results table. hidden_weight > 0 adds
    DistilBERT's cosine loss on the last hidden states (`HiddenDistilled`) with that weight."""
    big, _ = load_classifier(folder if folder is not None else teacher())
    utils.seed_everything(seed)
    student = every_other_layer(big)
    wrap = None
    if hidden_weight:
        wrap = lambda s: HiddenDistilled(s, big.encoder, settings.temperature, settings.alpha, hidden_weight)  # noqa: E731
    started = time.perf_counter()
    history = distil(student, parts["transfer"], prepared, settings, lr, seed, steps=settings.distilbert_steps,
                     wrap=wrap, **train_options)
    arm = "DistilBERT-style" + (" + hidden states" if hidden_weight else "")
    return race_row(arm, student, history, prepared, time.perf_counter() - started, keep_model, lr=lr, seed=seed)


class HiddenDistilled(Distilled):
    """`Distilled`, plus DistilBERT's cosine loss between the student's and the teacher's last hidden states."""

    def __init__(self, student: SentenceClassifier, teacher_encoder: nn.Module, temperature: float = 2.0,
                 alpha: float = 0.9, hidden_weight: float = 1.0):
        super().__init__(student, temperature, alpha)
        self.teacher_encoder, self.hidden_weight = teacher_encoder.eval().requires_grad_(False), hidden_weight

    def forward(self, input_ids, attention_mask, labels=None, teacher_logits=None, **ignored):
        hidden = self.student.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.student.classifier(self.student.dropout(self.student.pool(hidden, attention_mask))).float()
        if teacher_logits is None:                                   # evaluation: no loss needed
            return SequenceClassifierOutput(logits=logits)
        with torch.no_grad():
            target = self.teacher_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        cosine = nn.functional.cosine_similarity(hidden, target, dim=-1)          # one per token
        mask = attention_mask.to(cosine.dtype)
        loss = distillation_loss(logits, teacher_logits.float(), labels, self.temperature, self.alpha)
        return SequenceClassifierOutput(loss=loss + self.hidden_weight * ((1 - cosine) * mask).sum() / mask.sum(),
                                        logits=logits)


class BagOfEmbeddings(nn.Module):
    """The mean of the word vectors, one hidden layer, two logits: a student without attention or word order."""

    def __init__(self, vocab_size: int, dim: int = 64, num_labels: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, num_labels)

    def forward(self, input_ids, attention_mask, labels=None, **ignored):
        weights = attention_mask.unsqueeze(-1).float()
        mean = (self.embed(input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits = self.out(torch.tanh(self.hidden(mean)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _gate_hooks(model: SentenceClassifier, gates: torch.Tensor) -> list:
    """Multiply each head's output by its gate, just before the attention's output projection."""
    hooks = []
    for i, layer in enumerate(model.encoder.encoder.layer):
        heads = layer.attention.self.num_attention_heads

        def gate(module, args, i=i, heads=heads):
            x, *rest = args
            return ((x.view(*x.shape[:-1], heads, -1) * gates[i, :heads, None]).view(x.shape), *rest)
        hooks.append(layer.attention.output.dense.register_forward_pre_hook(gate))
    return hooks


def head_importance(model: SentenceClassifier, loader, max_batches: int | None = None) -> torch.Tensor:
    """Michel et al. (2019): |∂ loss / ∂ gate| for a gate on every head, summed over the batches of `loader`
    (cross-entropy with the true labels), normalised to unit length within each layer. Shape (layers, heads)."""
    layers = model.encoder.encoder.layer
    gates = torch.ones(len(layers), model.config.num_attention_heads, requires_grad=True)
    importance = torch.zeros_like(gates)
    hooks = _gate_hooks(model, gates)
    try:
        with utils.evaluating(model):
            for n, batch in enumerate(loader):
                if max_batches is not None and n == max_batches:
                    break
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
                importance += torch.autograd.grad(loss, gates)[0].abs()
    finally:
        for hook in hooks:
            hook.remove()
    return importance / importance.norm(dim=1, keepdim=True).clamp(min=1e-12)


def heads_to_remove(scores: torch.Tensor, count: int) -> dict[int, list[int]]:
    """The `count` heads with the lowest scores, never the last head of a layer: {layer: [heads]}."""
    layers, heads = scores.shape
    if not 0 <= count <= layers * (heads - 1):
        raise ValueError(f"can remove 0 to {layers * (heads - 1)} heads (one stays in each layer), not {count}")
    left = dict.fromkeys(range(layers), heads)
    remove: dict[int, list[int]] = {layer: [] for layer in range(layers)}
    order = sorted((float(scores[layer, head]), layer, head) for layer in range(layers) for head in range(heads))
    for _, layer, head in order:
        if sum(map(len, remove.values())) == count:
            break
        if left[layer] > 1:
            remove[layer].append(head)
            left[layer] -= 1
    return remove


def keep_slice(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A smaller copy of `linear` with only the output rows (dim=0) or the input columns (dim=1) in `index`."""
    weight = linear.weight.detach().index_select(dim, index)
    bias = None if linear.bias is None else linear.bias.detach()[index] if dim == 0 else linear.bias.detach()
    smaller = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(weight)
        if bias is not None:
            smaller.bias.copy_(bias)
    return smaller.requires_grad_(linear.weight.requires_grad)


def prune_heads(model: SentenceClassifier, remove: dict[int, Sequence[int]]) -> SentenceClassifier:
    """Remove attention heads in place (numbered as in the unpruned model): slice the rows of query, key
    and value and the columns of the attention's output projection, and tell the layer its new head count."""
    for i, heads in remove.items():
        if not heads:
            continue
        attention = model.encoder.encoder.layer[i].attention
        self_attention = attention.self
        if self_attention.num_attention_heads != model.config.num_attention_heads:
            raise ValueError(f"layer {i} was pruned already: prune a fresh copy with all the heads to remove")
        size = self_attention.attention_head_size
        keep = [h for h in range(self_attention.num_attention_heads) if h not in set(heads)]
        if not keep:
            raise ValueError(f"layer {i} would keep no head; keep at least one per layer")
        index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
        for name in ("query", "key", "value"):
            setattr(self_attention, name, keep_slice(getattr(self_attention, name), index, dim=0))
        attention.output.dense = keep_slice(attention.output.dense, index, dim=1)
        self_attention.num_attention_heads, self_attention.all_head_size = len(keep), len(keep) * size
    return model


def heads_left(model: SentenceClassifier) -> list[int]:
    return [layer.attention.self.num_attention_heads for layer in model.encoder.encoder.layer]


def file_bytes(state: dict[str, torch.Tensor]) -> int:
    """The size of `state` written as one safetensors file."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file({name: t.detach().contiguous() for name, t in state.items()}, str(path))
        return path.stat().st_size


@torch.inference_mode()
def forward_latency_ms(model: nn.Module, tokenizer, text: str, repeats: int = 20) -> float:
    """Median milliseconds of one forward pass on one sentence (tokenisation excluded), after 3 warm-up calls."""
    encoded = tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    times = []
    with utils.evaluating(model):
        for n in range(repeats + 3):
            started = time.perf_counter()
            model(**inputs)
            if n >= 3:
                times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


@torch.inference_mode()
def throughput(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64, repeats: int = 2) -> float:
    """Sentences per second for batches of `batch_size` of `texts` (padded to the longest), after one warm-up."""
    encoded = tokenizer(list(texts[:batch_size]), truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with utils.evaluating(model):
        model(**inputs)
        started = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
    return repeats * len(encoded["input_ids"]) / (time.perf_counter() - started)


def magnitude_prune(model: nn.Module, amount: float = 0.5) -> nn.Module:
    """Zero the `amount` share of the encoder's linear weights with the smallest |w|, all layers together
    (one global ranking), in place: the tensors keep their shape, and the zeros are stored like any number."""
    weights = [module.weight for module in model.encoder.modules() if isinstance(module, nn.Linear)]
    every = torch.cat([w.detach().flatten() for w in weights])
    smallest = every.abs().topk(round(amount * every.numel()), largest=False).indices
    keep = torch.ones_like(every)
    keep[smallest] = 0
    with torch.no_grad():
        for w, part in zip(weights, keep.split([w.numel() for w in weights])):
            w.mul_(part.view_as(w))
    return model


def zero_share(model: nn.Module) -> float:
    weights = [m.weight for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def quantise_rows(weight: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantisation per output row: (integers in [−q, q] stored as int8, fp32 scales), q = 2^(bits−1) − 1."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, not {bits}")
    levels = 2 ** (bits - 1) - 1
    scale = weight.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / levels
    return torch.clamp(torch.round(weight.detach() / scale), -levels, levels).to(torch.int8), scale


def dequantise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def fake_quantise(model: nn.Module, bits: int = 8) -> nn.Module:
    """A copy of `model` whose linear weights are replaced by their `bits`-bit quantised-then-dequantised
    values: the accuracy of a quantised model, computed in fp32."""
    import copy
    result = copy.deepcopy(model)
    with torch.no_grad():
        for module in _linears(result).values():
            module.weight.copy_(dequantise(*quantise_rows(module.weight, bits)))
    return result


def int8_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors with every linear weight as int8 + one fp32 scale per row (what an int8 file holds)."""
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    for name, module in _linears(model).items():
        q, scale = quantise_rows(module.weight)
        state[f"{name}.weight"] = q.contiguous()
        state[f"{name}.weight_scale"] = scale.squeeze(1).contiguous()
    return state


def linear_bytes(state: dict[str, torch.Tensor], model: nn.Module) -> int:
    """Bytes of the linear layers' tensors (weights, scales, biases) in `state`."""
    prefixes = tuple(f"{name}." for name in _linears(model))
    return sum(t.numel() * t.element_size() for name, t in state.items() if name.startswith(prefixes))


def int8_kernel(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear replaced by PyTorch's dynamic int8 linear (CPU: fbgemm/qnnpack)."""
    import copy
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "torch.ao.quantization is deprecated": the dynamic int8 kernels still work
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def student(settings: DistillSettings | None = None, *, rebuild: bool = False, **train_options: Any) -> Path:
    """The folder of this chapter's best student, in chapter 05's `save_classifier` format (`load_classifier`
    opens it; chapter 05's `predict` uses it). If none is cached for these settings, data, teacher and
    mini-BERT, it is trained now: the sweep's best student at its chosen rate, seed 0."""
    preset = device_preset()
    settings = settings or distill_settings(preset)
    data = load_sentiment()

    def build(folder: Path) -> None:
        record = load_sweep(preset, settings, data)
        arm = best_student_arm(record["rows"], TRAINED_HERE[preset])
        wordpiece = prepare(data, "random")
        parts = student_parts(transfer_set(data, settings), wordpiece.tokenizer, settings.max_length)
        row = run_student(arm, parts, wordpiece, settings, chosen_rates(record["rows"], by="arm")[arm], 0,
                          keep_model=True, **{"progress": True, "desc": f"training the student ({arm})", **train_options})
        save_student(row, settings, data, folder)
    return utils.get_or_build("student", build, version=student_identity(settings, data), rebuild=rebuild)


def store_student(row: dict[str, Any], settings: DistillSettings | None = None) -> Path:
    """Store a `run_student(..., keep_model=True)` row made with `settings` as the cached student (this chapter
    stores its own): `student()` returns it from then on."""
    settings = settings or distill_settings(device_preset())
    data = load_sentiment()
    return utils.get_or_build("student", lambda folder: save_student(row, settings, data, folder),
                              version=student_identity(settings, data), rebuild=True)


def student_identity(settings: DistillSettings, data) -> dict[str, Any]:
    return utils.made_from("the race's best student (chapter 07)", settings, race=inputs_identity(data))


def save_student(row: dict[str, Any], settings: DistillSettings, data, folder: Path) -> None:
    from course.ch05_fine_tuning import load_tokenizer
    save_classifier(row["model"], load_tokenizer("random"), folder,
                    {"arm": row["arm"], "lr": row["lr"], "seed": row["seed"], "settings": asdict(settings),
                     "inputs": inputs_identity(data), "test accuracy": row["test accuracy"],
                     "validation accuracy": row["validation accuracy"]})


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'DistillSettings', 'DISTILL', 'distill_settings', 'logits_of', 'soft_targets', 'distillation_loss',
    'word_kinds', 'augment', 'augmented_sentences', 'teacher_logits', 'Transfer', 'transfer_set', 'Distilled',
    'STUDENTS', 'TRAINED_HERE', 'student_parts', 'transfer_batches', 'distil', 'run_student', 'race_row', 'ARMS',
    'best_student_arm', 'sweep', 'DISTILL_SWEEP', 'inputs_identity', 'load_sweep', 'every_other_layer',
    'run_distilbert', 'HiddenDistilled', 'BagOfEmbeddings', 'head_importance', 'heads_to_remove', 'keep_slice',
    'prune_heads', 'heads_left', 'file_bytes', 'forward_latency_ms', 'throughput', 'magnitude_prune', 'zero_share',
    'quantise_rows', 'dequantise', 'fake_quantise', 'int8_state', 'linear_bytes', 'int8_kernel', 'student',
    'store_student', 'student_identity', 'save_student',
]
