"""Throughput of the course's training loop against a bare PyTorch loop and transformers.Trainer.

    python -m bench.train_loop [--steps 30] [--repeats 3] [--threads 2]

The same tiny BERT masked-LM task (hidden 128, 2 layers, vocab 8,000, batches of 32 × 128 tokens)
with the same pre-masked batches, AdamW, linear warmup + decay and gradient clipping at 1.0 in all
loops; utils.train runs twice, the second time with the NaN guard it uses on a GPU (no loss read back
per step; a flag on the device makes the fused AdamW skip a non-finite step), to show what it costs.
Steady-state speed is taken from per-step timestamps after a few warm-up steps, so set-up costs
(building the optimizer, Trainer's accelerate wrapping) are excluded. Runs alternate between loops and
the median of the repeats is reported. The target is utils ≥ 0.95 × bare.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Dataset

VOCAB, SEQ, BATCH, LR, WARMUP_STEPS = 8_000, 128, 32, 1e-3, 5


class MaskedTokens(Dataset):
    """Zipf-distributed token ids with 15% of positions masked once, so every loop sees the same batches."""

    def __init__(self, n: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        ranks = torch.arange(1, VOCAB - 4, dtype=torch.float)
        ids = torch.multinomial(1 / ranks, n * SEQ, replacement=True, generator=generator) + 5
        self.ids = ids.view(n, SEQ)
        masked = torch.rand(n, SEQ, generator=generator) < 0.15
        self.labels = torch.where(masked, self.ids, torch.full_like(self.ids, -100))
        self.inputs = torch.where(masked, torch.full_like(self.ids, 4), self.ids)  # 4 = [MASK]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.inputs[i], "labels": self.labels[i]}


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=SEQ)
    return BertForMaskedLM(config)


def loader(dataset: Dataset) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))


def tokens_per_second(stamps: list[float], warmup: int) -> float:
    steady = stamps[warmup:]
    return (len(steady) - 1) * BATCH * SEQ / (steady[-1] - steady[0])


def run_bare(dataset: Dataset, steps: int) -> list[float]:
    from utils.loop import adamw_param_groups, lr_multiplier
    model = tiny_bert().train()
    optimizer = torch.optim.AdamW(adamw_param_groups(model, 0.01), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, steps=steps, warmup_steps=WARMUP_STEPS, schedule="linear"))
    stamps, losses = [time.perf_counter()], []
    batches = iter(loader(dataset))
    for _ in range(steps):
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
        stamps.append(time.perf_counter())
    return stamps


def run_utils(dataset: Dataset, steps: int, **options) -> list[float]:
    import utils
    stamps = [time.perf_counter()]
    utils.train(tiny_bert(), loader(dataset), steps=steps, lr=LR, warmup=WARMUP_STEPS, clip=1.0,
                progress=False, device="cpu", callbacks=[lambda step, history: stamps.append(time.perf_counter())],
                **options)
    return stamps


def run_utils_guarded(dataset: Dataset, steps: int) -> list[float]:
    """utils.train as it runs on a GPU: no loss read back per step; a flag on the device makes the fused
    AdamW skip a non-finite step (utils.loop._FiniteCheck). Here on the CPU, to measure what the guard costs."""
    return run_utils(dataset, steps, loss_check="on device")


def run_trainer(dataset: Dataset, steps: int) -> list[float]:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH,
                                 learning_rate=LR, weight_decay=0.01, warmup_steps=WARMUP_STEPS,
                                 lr_scheduler_type="linear", max_grad_norm=1.0, logging_strategy="no",
                                 save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                                 dataloader_num_workers=0, seed=0)
        trainer = Trainer(model=tiny_bert(), args=args, train_dataset=dataset, callbacks=[Stamp()])
        trainer.remove_callback(PrinterCallback)  # it prints a metrics dict at the end
        trainer.train()
    return stamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = MaskedTokens(args.steps * BATCH)
    loops = {"bare PyTorch": run_bare, "utils.train": run_utils, "utils.train, GPU guard": run_utils_guarded,
             "transformers.Trainer": run_trainer}
    speeds: dict[str, list[float]] = {name: [] for name in loops}
    print(f"tiny BERT MLM, {BATCH}×{SEQ} tokens/step, {args.steps} steps ({args.warmup} untimed), "
          f"{args.threads} threads, torch {torch.__version__}")
    for repeat in range(args.repeats):
        for name, run in loops.items():
            speeds[name].append(tokens_per_second(run(dataset, args.steps), args.warmup))
            print(f"  run {repeat + 1}: {name:<21} {speeds[name][-1]:8,.0f} tokens/s", flush=True)
    bare = statistics.median(speeds["bare PyTorch"])
    print("\nmedian tokens/s and ratio to the bare loop:")
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"  {name:<21} {median:8,.0f} tokens/s   {median / bare:5.3f}×")
    ratio = statistics.median(speeds["utils.train"]) / bare
    print(f"\nutils.train / bare = {ratio:.3f} (target ≥ 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")


if __name__ == "__main__":
    main()
