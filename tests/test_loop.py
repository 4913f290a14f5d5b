import math
import shutil

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import utils
from utils import History, TrainConfig, evaluate_loss, evaluating, lr_multiplier, seed_everything, train
from utils.checkpoint import CheckpointError
from utils.distributed import accelerator
from utils.loop import adamw_param_groups, batch_size, checkpoint_steps, forward, loss_of, to_device

QUIET = {"progress": False}


class Classifier(nn.Module):
    """A small MLP whose forward returns the loss, with dropout so that randomness matters."""

    def __init__(self, dropout=0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 2))

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.body(x), y)


def xor_data(n=256, seed=0, batch=16, shuffle=True):
    generator = seed_everything(seed)
    x = torch.randn(n, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=shuffle, generator=generator)


def accuracy(model, loader):
    correct = sum((model.body(x).argmax(1) == y).sum().item() for x, y in loader)
    return correct / len(loader.dataset)


def test_converges_on_a_toy_task():
    loader, held_out = xor_data(512, seed=0), xor_data(256, seed=1, shuffle=False)
    seed_everything(0)
    model = Classifier()
    history = train(model, loader, steps=300, lr=1e-2, warmup=0.05, eval_data=held_out,
                    metrics=lambda m: {"accuracy": accuracy(m, held_out)}, **QUIET)
    assert len(history.train) == 300 and [r["step"] for r in history.train] == list(range(1, 301))
    assert sum(history.losses[-20:]) / 20 < 0.5 * sum(history.losses[:20]) / 20
    assert history.eval[-1]["accuracy"] >= 0.9
    assert history.elapsed_s > 0


def test_accumulating_4x8_equals_one_batch_of_32():
    torch.manual_seed(0)
    x, y = torch.randn(96, 2), torch.randint(0, 2, (96,))
    results = []
    for batch, accum in ((32, 1), (8, 4)):
        torch.manual_seed(1)
        model = Classifier(dropout=0.0)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        history = train(model, loader, steps=3, lr=1e-2, grad_accum=accum, **QUIET)
        results.append((history.losses, [p.detach().clone() for p in model.parameters()]))
    (losses_a, params_a), (losses_b, params_b) = results
    assert losses_a == pytest.approx(losses_b, abs=1e-6)
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


class Crash(Exception):
    pass


def crash_at(step):
    def callback(now, history):
        if now == step:
            raise Crash
    return callback


def run(checkpoint_dir=None, callbacks=(), perturb=False, train_size=200, **extra):
    loader, held_out = xor_data(train_size, seed=0), xor_data(64, seed=1, shuffle=False)
    if perturb:  # a resumed run starts from other random states and other weights
        seed_everything(999)
        loader.generator.manual_seed(5)
    model = Classifier()
    config = dict(steps=30, lr=5e-3, warmup=0.2, grad_accum=2, eval_every=5, patience=50,
                  checkpoint_dir=checkpoint_dir, checkpoint_every=4, **QUIET)
    config.update(extra)
    history = train(model, loader, eval_data=held_out, callbacks=callbacks, **config)
    return history, model


def test_two_runs_into_one_checkpoint_folder_take_turns_and_the_second_resumes_the_first(tmp_path):
    """Two notebooks (or two test workers) training the same recipe into the same folder: the second waits for
    the first, then finds its finished run instead of writing checkpoints beside it."""
    import threading
    from filelock import FileLock
    folder = tmp_path / "run"
    held = FileLock(str(tmp_path / ".run.lock"))
    held.acquire()
    results = []
    waiting = threading.Thread(target=lambda: results.append(run(folder)[0]))
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive() and checkpoint_steps(folder) == []     # it waits for the lock's holder
    held.release()
    waiting.join(timeout=60)
    assert results[0].steps_done == 30 and results[0].resumed_from is None
    again, _ = run(folder)
    assert again.resumed_from == 30 and again.train == results[0].train


def test_exact_resume_after_a_crash(tmp_path):
    reference, reference_model = run()
    with pytest.raises(Crash):
        run(tmp_path, callbacks=[crash_at(22)])  # the work after step 20 is lost
    assert checkpoint_steps(tmp_path) == [16, 20]  # keep=2
    resumed, resumed_model = run(tmp_path, perturb=True)
    assert resumed.resumed_from == 20
    assert resumed.losses == reference.losses  # bit for bit, dropout and shuffling included
    assert resumed.eval == reference.eval and resumed.best_step == reference.best_step
    for a, b in zip(resumed_model.parameters(), reference_model.parameters()):
        assert torch.equal(a, b)


def test_a_corrupt_checkpoint_is_named_and_the_one_before_still_resumes_exactly(tmp_path):
    reference, _ = run()
    with pytest.raises(Crash):
        run(tmp_path, callbacks=[crash_at(22)])
    state = tmp_path / "step-000020" / "trainer_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])  # a disk that filled up, say
    with pytest.raises(CheckpointError, match="cannot resume: .*corrupt.*Delete the folder step-000020 .*resume=False"):
        run(tmp_path, perturb=True)
    shutil.rmtree(tmp_path / "step-000020")
    weights = tmp_path / "step-000016" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-8])
    with pytest.raises(CheckpointError, match="cannot resume: .*model.safetensors is corrupt.*step-000016"):
        run(tmp_path, perturb=True)
    weights.write_bytes(intact)
    resumed, _ = run(tmp_path, perturb=True)
    assert resumed.resumed_from == 16 and resumed.losses == reference.losses


def test_resuming_on_smaller_data_is_a_clear_error(tmp_path):
    with pytest.raises(Crash):
        run(tmp_path, callbacks=[crash_at(6)])  # checkpoint at step 4: 8 batches into the epoch
    with pytest.raises(CheckpointError, match=r"step-000004 was trained on other data .* resume=False"):
        run(tmp_path, train_size=64)  # other data: its epoch starts with another batch
    # the same data cut short, in a re-iterable without len(): the same first batch, and the replay runs out
    x, y = torch.randn(200, 2), torch.randint(0, 2, (200,))

    class Batches:
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            return iter([(x[i:i + 16], y[i:i + 16]) for i in range(0, self.n, 16)])
    short = tmp_path / "short"
    with pytest.raises(Crash):
        train(Classifier(), Batches(200), steps=30, lr=1e-3, checkpoint_dir=short, checkpoint_every=4,
              callbacks=[crash_at(6)], **QUIET)
    with pytest.raises(CheckpointError, match="train_data has fewer batches than when the checkpoint"):
        train(Classifier(), Batches(48), steps=30, lr=1e-3, checkpoint_dir=short, checkpoint_every=4, **QUIET)


def test_a_finished_run_is_not_reused_for_other_data_even_unnamed(tmp_path):
    """No inputs= given: the loop still tells the data apart, by the first batch of the epoch it stopped in."""
    first, _ = run(tmp_path)
    model = Classifier()
    before = [p.detach().clone() for p in model.parameters()]
    other = DataLoader(TensorDataset(torch.randn(200, 2), torch.randint(0, 2, (200,))), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    with pytest.raises(CheckpointError, match="was trained on other data"):
        train(model, other, steps=30, lr=5e-3, warmup=0.2, grad_accum=2, checkpoint_dir=tmp_path, **QUIET)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))   # the model is left as it was
    again, _ = run(tmp_path)                                                    # the same data: reused at once
    assert again.resumed_from == 30 and again.losses == first.losses


def test_a_finished_run_is_not_trained_again(tmp_path):
    first, _ = run(tmp_path)
    calls = []
    again, model = run(tmp_path, callbacks=[lambda step, h: calls.append(step)])
    assert calls == [] and again.losses == first.losses and again.resumed_from == 30


def test_resume_with_other_settings_is_refused(tmp_path):
    run(tmp_path, steps=8)
    with pytest.raises(CheckpointError, match=r"steps=8.*this run has steps=30.*resume=False"):
        run(tmp_path)
    history, _ = run(tmp_path, resume=False)
    assert history.resumed_from is None and checkpoint_steps(tmp_path)[-1] == 30


def test_a_checkpoint_trained_from_other_inputs_is_refused_not_resumed(tmp_path):
    """Same settings, other data: the finished checkpoint must not come back as if it were this run's."""
    run(tmp_path, inputs={"data sha256": "aaaa1111", "model": "tiny"})
    again, _ = run(tmp_path, inputs={"data sha256": "aaaa1111", "model": "tiny"})
    assert again.resumed_from == 30
    with pytest.raises(CheckpointError, match=r"step-000030 was trained from other inputs \(data sha256 aaaa1111 -> "
                                              r"bbbb2222\).*resume=False to start over, or use another checkpoint_dir"):
        run(tmp_path, inputs={"data sha256": "bbbb2222", "model": "tiny"})
    run(tmp_path / "plain", steps=2)                           # written without saying what its inputs were
    with pytest.raises(CheckpointError, match=r"other inputs \(data sha256 \(none\) -> aaaa1111, model \(none\) -> tiny"):
        run(tmp_path / "plain", steps=2, inputs={"data sha256": "aaaa1111", "model": "tiny"})
    with pytest.raises(ValueError, match="inputs must map names to strings"):
        train(Classifier(), xor_data(8), steps=1, inputs=["data.csv"], **QUIET)


def test_a_callback_can_pause_training_and_a_rerun_continues(tmp_path):
    reference, _ = run()
    paused, _ = run(tmp_path, callbacks=[lambda step, h: step == 14])
    assert paused.steps_done == 14 and not paused.stopped_early
    resumed, _ = run(tmp_path, perturb=True)
    assert resumed.losses == reference.losses


def test_keyboard_interrupt_says_where_to_resume(tmp_path, capsys):
    def interrupt(step, history):
        if step == 10:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, callbacks=[interrupt])
    assert "interrupted at step 10; run again to resume from step 8" in capsys.readouterr().out


def counting_metric(values):
    it = iter(values)
    return lambda model: {"score": next(it)}


def test_early_stopping_and_restore_best():
    snapshots = {}
    loader = xor_data(64)
    model = Classifier()
    remember = lambda step, h: snapshots.__setitem__(step, [p.detach().clone() for p in model.parameters()])
    history = train(model, loader, steps=100, eval_every=5, metrics=counting_metric([3, 1, 2, 2, 2, 9]),
                    monitor="score", patience=3, restore_best=True, callbacks=[remember], **QUIET)
    assert history.stopped_early and history.steps_done == 25  # best at 10; 15, 20, 25 no better
    assert (history.best_step, history.best_value) == (10, 1)
    for now, best in zip(model.parameters(), snapshots[10]):
        assert torch.equal(now, best)


def test_mode_max_and_min_delta():
    history = train(Classifier(), xor_data(64), steps=20, eval_every=5, monitor="score", mode="max",
                    min_delta=0.05, patience=2, metrics=counting_metric([0.5, 0.52, 0.53, 0.9]), **QUIET)
    assert history.stopped_early and history.best_value == 0.5 and history.steps_done == 15


def test_schedules_match_transformers():
    from transformers import get_scheduler
    for name, theirs in (("linear", "linear"), ("cosine", "cosine"), ("constant", "constant_with_warmup")):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = get_scheduler(theirs, optimizer, num_warmup_steps=10, num_training_steps=100)
        for step in range(100):
            ours = lr_multiplier(step, steps=100, warmup_steps=10, schedule=name)
            assert ours == pytest.approx(scheduler.get_last_lr()[0], abs=1e-12), (name, step)
            optimizer.step()
            scheduler.step()


def test_history_records_the_learning_rate_used():
    history = train(Classifier(), xor_data(64), steps=10, lr=0.1, warmup=4, schedule="linear", **QUIET)
    expected = [0.1 * lr_multiplier(s, steps=10, warmup_steps=4, schedule="linear") for s in range(10)]
    assert [r["lr"] for r in history.train] == pytest.approx(expected)
    assert all(r["grad_norm"] >= 0 for r in history.train)


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    decay, no_decay = adamw_param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="no trainable parameters"):
        adamw_param_groups(model.requires_grad_(False), 0.1)


def test_mixed_precision_is_accelerates_and_a_t4_gets_float16_with_its_scaler():
    """train() hands the AMP dtype to accelerate: the device's own (bf16, or a T4's fp16 with its GradScaler),
    or the one asked for. accelerate runs neither on a CPU, so here the run only checks that the request
    reaches it and trains."""
    history = train(Classifier(), xor_data(128), steps=20, lr=1e-2, amp="fp16", **QUIET)
    assert len(history.train) == 20 and all(math.isfinite(r["loss"]) for r in history.train)
    assert history.precision == "fp16"
    assert train(Classifier(), xor_data(64), steps=2, amp=False, **QUIET).precision == "no"
    assert accelerator(TrainConfig(steps=1), torch.device("cpu"), torch.bfloat16).mixed_precision == "bf16"
    assert TrainConfig(steps=1, amp="bf16").precision(torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="amp must be True, False or one of"):
        TrainConfig(steps=1, amp="float16")


def test_one_kernel_can_train_with_other_precisions_and_accumulation_in_turn():
    """accelerate keeps one process-wide state; train() starts a fresh one per call in a single process."""
    first = train(Classifier(), xor_data(64), steps=4, grad_accum=2, **QUIET)
    second = train(Classifier(), xor_data(64), steps=4, amp=False, **QUIET)
    assert len(first.train) == len(second.train) == 4


def test_a_transformers_model_trains_through_its_loss():
    from transformers import BertConfig, BertForSequenceClassification
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    seed_everything(0)
    model = BertForSequenceClassification(config)
    batches = [{"input_ids": torch.randint(0, 30, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}] * 3
    history = train(model, batches, steps=6, lr=1e-3, **QUIET)
    assert len(history.train) == 6
    expected = loss_of(model.eval()(**batches[0])).item()
    assert evaluate_loss(model.train(), batches) == pytest.approx(expected, rel=1e-6)
    assert model.training  # evaluate_loss puts the mode back


# ------------------------------------------------------------------ clear errors
def test_output_without_a_loss():
    with pytest.raises(TypeError, match="returned a Tensor with no loss|loss must be a scalar"):
        train(nn.Linear(2, 2), [torch.randn(4, 2)], steps=1, **QUIET)
    with pytest.raises(TypeError, match="returned a dict with no loss"):
        loss_of({"logits": torch.zeros(2)})
    with pytest.raises(TypeError, match="scalar tensor, got \\(4, 2\\)"):
        loss_of(torch.zeros(4, 2))


def test_empty_and_exhausted_data():
    with pytest.raises(ValueError, match="train_data has no batches.*drop_last"):
        train(Classifier(), DataLoader(TensorDataset(torch.zeros(3, 2), torch.zeros(3).long()),
                                       batch_size=4, drop_last=True), steps=1, **QUIET)
    once = iter([(torch.zeros(2, 2), torch.zeros(2).long())])
    with pytest.raises(ValueError, match="yielded no batches.*only once"):
        train(Classifier(), once, steps=3, **QUIET)
    with pytest.raises(ValueError, match="eval_data yielded no batches"):
        evaluate_loss(Classifier(), [])


@pytest.mark.parametrize("bad, message", [({"steps": 0}, "steps must be a positive int"),
                                          ({"schedule": "exp"}, "schedule 'exp' is not one of"),
                                          ({"grad_accum": 0}, "grad_accum must be"),
                                          ({"mode": "up"}, "mode must be"),
                                          ({"eval_every": 0}, "eval_every must be an int >= 1"),
                                          ({"lr": "1e-3"}, "lr must be a number, got '1e-3' \\(str\\)"),
                                          ({"clip": "1"}, "clip must be a number"),
                                          ({"warmup": True}, "warmup must be a number"),
                                          ({"betas": (0.9, 1.0)}, "betas must be two numbers in \\[0, 1\\)"),
                                          ({"betas": 0.9}, "betas must be two numbers")])
def test_bad_config_fails_before_any_work(bad, message):
    with pytest.raises(ValueError, match=f"bad training config: {message}"):
        TrainConfig(**{"steps": 10, **bad})
    with pytest.raises(ValueError, match="bad training config"):
        train(Classifier(), xor_data(32), **{"steps": 10, **bad})


def test_a_checkpoint_dir_that_is_a_file_fails_before_any_work(tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train(Classifier(), xor_data(32), steps=5, checkpoint_dir=tmp_path / "notes.txt", **QUIET)


def test_a_misspelt_monitor_fails_before_training_when_only_the_loss_is_evaluated():
    model = Classifier()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(KeyError, match="monitor='eval_los' is not among the evaluated values \\['eval_loss'\\]"):
        train(model, xor_data(32), steps=5, eval_data=xor_data(32), monitor="eval_los", **QUIET)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


class NanAt(nn.Module):
    """(w - 2)², except NaN on the `bad`-th call."""

    def __init__(self, bad: int):
        super().__init__()
        self.w, self.calls, self.bad = nn.Parameter(torch.ones(())), 0, bad

    def forward(self, x):
        self.calls += 1
        return (self.w - 2) ** 2 * (float("nan") if self.calls == self.bad else 1.0)


def test_a_nan_in_the_middle_of_an_accumulation_leaves_no_gradient_behind():
    model = NanAt(5)                                           # step 2's second of three batches
    with pytest.raises(FloatingPointError, match="loss became nan at step 2"):
        train(model, [torch.zeros(1)], steps=4, grad_accum=3, **QUIET)
    assert model.w.grad is None and torch.isfinite(model.w).all()


def test_a_nan_loss_stops_at_its_step_with_the_weights_still_finite():
    model = NanAt(3)
    with pytest.raises(FloatingPointError, match="loss became nan at step 3: .*weights are those before this step"):
        train(model, [torch.zeros(1)], steps=10, **QUIET)
    assert torch.isfinite(model.w).all() and model.w.grad is None


def test_on_a_gpu_a_nan_step_is_skipped_on_the_device_and_reported_with_its_step(monkeypatch):
    """The GPU path, run on the CPU: no .item() per step; the fused AdamW skips the bad step and every
    later one (found_inf on the device), and the read-back at log_every names the step."""
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("no per-step sync on the guarded path"))
    reference = NanAt(0)
    train(reference, [torch.zeros(1)], steps=2, schedule="constant", loss_check="on device", **QUIET)  # 2 good steps
    model = NanAt(3)
    with pytest.raises(FloatingPointError, match="loss became nan at step 3: .*weights are those before this step"):
        train(model, [torch.zeros(1)], steps=10, log_every=10, schedule="constant", loss_check="on device", **QUIET)
    assert model.calls == 10                                   # it ran on to the read-back, without updates
    assert torch.equal(model.w, reference.w)


def test_a_cpu_checkpoint_resumes_on_the_guarded_gpu_path(tmp_path):
    reference, _ = run()
    run(tmp_path, callbacks=[lambda step, h: step == 14])       # written with the plain AdamW
    resumed, _ = run(tmp_path, loss_check="on device")          # resumed with the fused one
    assert resumed.resumed_from == 14 and resumed.losses == pytest.approx(reference.losses, abs=1e-6)


def test_on_a_gpu_an_infinite_gradient_with_a_finite_loss_is_reported_too():

    class InfGrad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return torch.sqrt(self.w - 1)                      # 0 at w = 1, with an infinite slope
    model = InfGrad()
    with pytest.raises(FloatingPointError, match="gradient norm became (inf|nan) at step 1"):
        train(model, [torch.zeros(1)], steps=4, loss_check="on device", **QUIET)
    assert model.w.item() == 1.0


def test_early_stopping_needs_something_to_watch():
    with pytest.raises(ValueError, match="patience .* needs eval_data or metrics"):
        train(Classifier(), xor_data(32), steps=5, patience=2, **QUIET)
    with pytest.raises(KeyError, match="monitor='accuracy' is not among"):
        train(Classifier(), xor_data(32), steps=5, eval_data=xor_data(32), monitor="accuracy", **QUIET)


def test_a_diverging_loss_is_reported():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.w * float("inf")
    with pytest.raises(FloatingPointError, match="loss became (inf|nan) at step 1: lower lr"):
        train(Exploding(), [torch.zeros(1)], steps=3, clip=None, **QUIET)


# ------------------------------------------------------------------ small pieces
def test_batch_helpers():
    batch = {"ids": torch.zeros(5, 3), "mask": [torch.ones(5)]}
    assert batch_size(batch) == 5 and batch_size((torch.zeros(2, 1),)) == 2 and batch_size(torch.tensor(1.0)) == 1
    moved = to_device(batch, torch.device("cpu"))
    assert moved["ids"].device.type == "cpu" and isinstance(moved["mask"], list)
    f = lambda *args, **kwargs: (args, kwargs)
    assert forward(f, {"a": 1}) == ((), {"a": 1}) and forward(f, (1, 2)) == ((1, 2), {}) and forward(f, 3) == ((3,), {})


def test_evaluate_loss_is_weighted_by_batch_size():
    class Mean(nn.Module):
        def forward(self, x):
            return x.mean()
    assert evaluate_loss(Mean(), [torch.full((3,), 1.0), torch.full((1,), 5.0)]) == pytest.approx(2.0)


def test_history_round_trip_and_series():
    history = train(Classifier(), xor_data(64), steps=4, eval_data=xor_data(32), eval_every=2, **QUIET)
    assert History.from_dict(history.to_dict()) == history
    assert history.series("eval_loss")[0] == [2, 4] and history.series("loss")[0] == [1, 2, 3, 4]


def test_live_plot_and_progress_bar_outside_a_notebook(capsys):
    history = train(Classifier(), xor_data(64), steps=3, live_plot=True, progress=True, desc="demo")
    assert len(history.train) == 3
    assert "demo" in capsys.readouterr().err  # tqdm writes its text bar to stderr


def test_evaluating_restores_the_previous_mode_even_when_the_block_fails():
    model = nn.Dropout(0.5)
    with evaluating(model):
        assert not model.training
    assert model.training
    model.eval()
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("a failing batch")
    assert not model.training
    model.train()
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("a failing batch")
    assert model.training


def test_a_nan_loss_names_the_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="at step 7: .*the last good checkpoint is step 5 in"):
        train(NanAt(7), [torch.zeros(1)], steps=10, checkpoint_dir=tmp_path, checkpoint_every=5, **QUIET)


def test_the_data_check_resumes_exactly_with_shuffling_in_a_batch_sampler_and_leaves_one_shot_iterators_whole(tmp_path):
    """A batch sampler's own generator is saved and put back (length-grouped batches keep theirs there), and a
    generator, which cannot be replayed, is not checked (checking would eat a batch)."""
    from torch.utils.data import BatchSampler, RandomSampler

    class Shuffled(BatchSampler):
        def __init__(self, n, seed):
            self.generator = torch.Generator().manual_seed(seed)
            super().__init__(RandomSampler(range(n), generator=self.generator), batch_size=16, drop_last=False)
    x, y = torch.randn(96, 2), torch.randint(0, 2, (96,))

    def loader():
        return DataLoader(TensorDataset(x, y), batch_sampler=Shuffled(96, 0))
    seed_everything(0)
    reference = train(Classifier(dropout=0.0), loader(), steps=20, lr=1e-2, **QUIET)
    with pytest.raises(Crash):
        seed_everything(0)
        train(Classifier(dropout=0.0), loader(), steps=20, lr=1e-2, checkpoint_dir=tmp_path / "a", checkpoint_every=4,
              callbacks=[crash_at(15)], **QUIET)       # the checkpoint at step 12 is in the third epoch (6 batches)
    resumed = train(Classifier(dropout=0.0), loader(), steps=20, lr=1e-2, checkpoint_dir=tmp_path / "a", **QUIET)
    assert resumed.resumed_from == 12 and resumed.losses == reference.losses

    def stream():
        for i in range(0, 96, 16):
            yield x[i:i + 16], y[i:i + 16]
    seen = []
    with pytest.raises(Crash):
        train(Classifier(), stream(), steps=6, lr=1e-2, checkpoint_dir=tmp_path / "b", checkpoint_every=2,
              callbacks=[crash_at(3)], **QUIET)
    rest = stream()
    train(Classifier(), rest, steps=6, lr=1e-2, checkpoint_dir=tmp_path / "b",
          callbacks=[lambda step, h: seen.append(step)], **QUIET)
    assert seen == [3, 4, 5, 6]


def test_a_finished_run_resumed_with_a_live_plot_still_draws_its_curves(tmp_path, monkeypatch):
    drawn = []

    class Plot:
        def __init__(self, title):
            pass

        def update(self, history, force=False):
            drawn.append((history.steps_done, force))
    run(tmp_path)
    monkeypatch.setattr("utils.plots.LivePlot", Plot)
    again, _ = run(tmp_path, live_plot=True)
    assert again.resumed_from == 30 and drawn == [(30, True)]


def test_kept_at_steps_keeps_what_the_run_made_for_a_resumed_run(tmp_path):
    from utils import KeptAtSteps
    kept = KeptAtSteps(lambda step: f"made at {step}", steps=(2, 4), folder=tmp_path / "run", name="samples.json")
    kept.keep(0)
    for step in range(1, 5):
        kept(step)
    assert kept.kept == {"0": "made at 0", "2": "made at 2", "4": "made at 4"}
    again = KeptAtSteps(lambda step: "final weights", steps=(2, 4), folder=tmp_path / "run", name="samples.json")
    assert again.kept == kept.kept                        # read back, not made again
    assert KeptAtSteps(str, steps=(1,), folder=None).path is None
