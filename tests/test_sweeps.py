"""utils.sweeps: a committed sweep record keeps what it was made from and refuses other settings or inputs."""
import json
import math

import pytest

from utils.sweeps import (SweepRecord, at_edge, best_rate, bracketed_rate, chosen_rates, make_sweep, read_record,
                          sweep_arguments, sweep_command, tune_then_repeat, write_record)

SETTINGS = {"steps": 10, "learning_rates": [["LoRA", [1e-3, 3e-3]]], "seeds": (0, 1)}
INPUTS = {"sentiment sha256": "aaaa", "model": "bbbb"}


def read(path, settings=SETTINGS, inputs=INPUTS, **extra):
    return read_record(path, settings=settings, inputs=inputs, rerun="python bench/x.py --preset cpu",
                       made_by="x_settings('cpu')", inputs_named="sentiment set or model", **extra)


def test_a_record_is_written_with_its_provenance_and_read_back(tmp_path):
    path = write_record(tmp_path / "x.json", preset="cpu", settings=SETTINGS, inputs=INPUTS,
                        rows=[{"lr": 1e-3, "seed": 0, "validation accuracy": 0.8}], seconds=12.4, command="python bench/x.py")
    record = json.loads(path.read_text())
    assert record["seconds"] == 12 and record["versions"]["transformers"] and record["machine"]
    assert read(path)["rows"][0]["validation accuracy"] == 0.8


def test_other_settings_other_inputs_or_no_file_are_refused_with_the_command(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(FileNotFoundError, match=r"x.json is missing: run `python bench/x.py --preset cpu`"):
        read(path)
    write_record(path, preset="cpu", settings=SETTINGS, inputs=INPUTS, rows=[], seconds=1, command="c")
    with pytest.raises(ValueError, match=r"other settings than x_settings\('cpu'\); run `python bench/x.py"):
        read(path, settings={**SETTINGS, "steps": 5})
    with pytest.raises(ValueError, match="another sentiment set or model than this one"):
        read(path, inputs={**INPUTS, "model": "cccc"})
    other_rates = {**SETTINGS, "learning_rates": [["LoRA", [1e-2]]]}
    with pytest.raises(ValueError, match="other settings"):
        read(path, settings=other_rates)
    assert read(path, settings=other_rates, any_rates=True)["preset"] == "cpu"


def test_the_sweep_scripts_options_and_command_line():
    args = sweep_arguments("a sweep", ["--preset", "gpu", "--reuse"])
    assert sweep_command("bench.x", args) == "python -m bench.x --preset gpu --reuse"
    assert sweep_command("bench.x", sweep_arguments("a sweep", [])) == "python -m bench.x"


def test_a_record_made_here_must_be_matched_to_the_bit_one_made_elsewhere_within_the_noise(tmp_path, capsys):
    from utils.sweeps import compare_reruns, made_here, rerun_tolerance, where_made
    path = write_record(tmp_path / "x.json", preset="cpu", settings=SETTINGS, inputs=INPUTS, rows=[], seconds=1,
                        command="c")
    record = json.loads(path.read_text())
    assert made_here(record) and rerun_tolerance(record, [[0.70, 0.74, 0.78]]) == 0.0
    rows = compare_reruns(record, {"a, seed 0": (0.75, 0.75, [0.75, 0.7, 0.8]), "b, seed 0": (0.751, 0.75, [0.75])})
    assert [r["within"] for r in rows] == [True, False]
    assert "made on a machine like this one" in capsys.readouterr().out
    elsewhere = {**record, "processor": "Another CPU · AVX2"}
    assert not made_here(elsewhere) and not made_here({**record, "versions": {**record["versions"], "torch": "2.0"}})
    # 5 × the seeds' sd, pooled over the groups (ddof=1): sd 0.04 and 0.02 → pooled √((0.0016·2 + 0.0004·2) / 4)
    assert rerun_tolerance(elsewhere, [[0.70, 0.74, 0.78], [0.60, 0.62, 0.64]]) == pytest.approx(5 * 0.001 ** 0.5)
    assert rerun_tolerance(elsewhere, [[0.75, 0.75, 0.75]]) == 0.02                                # the floor
    rows = compare_reruns(elsewhere, {"a, seed 0": (0.85, 0.75, [0.70, 0.74, 0.78]),
                                      "b, seed 0": (0.50, 0.75, [0.70, 0.74, 0.78])})
    assert [r["within"] for r in rows] == [True, False]
    assert "made elsewhere (processor Another CPU · AVX2 there, " in capsys.readouterr().out
    assert "transformers 4.0 there" in where_made({**record, "versions": {**record["versions"], "transformers": "4.0"}})


def test_the_protocol_tries_every_rate_on_the_first_seed_and_repeats_the_best():
    scores = {1e-4: 0.70, 3e-4: 0.80, 1e-3: 0.80, 3e-3: 0.60}
    calls = []

    def train(lr, seed):
        calls.append((lr, seed))
        return {"lr": lr, "seed": seed, "validation accuracy": scores[lr] + seed / 100}
    rows = tune_then_repeat(tuple(scores), (0, 1, 2), train)
    assert calls == [(1e-4, 0), (3e-4, 0), (1e-3, 0), (3e-3, 0), (3e-4, 1), (3e-4, 2)]   # a tie: the smaller rate
    assert [row["chosen"] for row in rows] == [False, True, False, False, True, True]
    assert best_rate(rows[:4]) == 3e-4 and best_rate(list(reversed(rows[:4]))) == 3e-4
    rows.append({"arm": "x", "lr": None, "seed": 0, "validation accuracy": 0.99})      # nothing trained: no rate
    assert chosen_rates([{**row, "arm": "a"} for row in rows[:-1]] + rows[-1:], by="arm") == {"a": 3e-4}


def test_a_bracketed_rate_steps_past_an_edge_until_the_best_is_inside():
    def train(lr):
        return {"lr": lr, "validation accuracy": -abs(math.log10(lr) - math.log10(best_lr))}
    best_lr = 3e-2                                                     # beyond the grid's top: two more steps
    rate, rows = bracketed_rate((1e-3, 3e-3, 1e-2), train)
    assert rate == 3e-2 and [row["lr"] for row in rows] == [1e-3, 3e-3, 1e-2, 3e-2, 9e-2] and not at_edge(rate, rows)
    best_lr = 3e-3                                                     # inside already: nothing more
    assert [row["lr"] for row in bracketed_rate((1e-3, 3e-3, 1e-2), train)[1]] == [1e-3, 3e-3, 1e-2]
    best_lr = 1e-6                                                     # far below: stops after `extra` steps, at the edge
    rate, rows = bracketed_rate((1e-3, 3e-3, 1e-2), train, extra=1)
    assert rate == float(f"{1e-3 / 3:.3g}") and at_edge(rate, rows)
    with pytest.raises(ValueError, match="at least 3 rates"):
        bracketed_rate((1e-3, 3e-3), train)


def test_a_sweep_record_names_its_file_and_the_command_that_makes_it(tmp_path):
    record = SweepRecord("x_sweep", made_by="x_settings", inputs_named="sentiment set", folder=tmp_path)
    assert record.path("cpu") == tmp_path / "x_sweep_cpu.json"
    with pytest.raises(FileNotFoundError, match=r"run `python -m bench.x_sweep --preset cpu`"):
        record.read("cpu", settings=SETTINGS, inputs=INPUTS)
    record.write("cpu", settings=SETTINGS, inputs=INPUTS, rows=[{"lr": 1e-3}], seconds=3, command="c")
    assert record.read("cpu", settings=SETTINGS, inputs=INPUTS)["rows"] == [{"lr": 1e-3}]
    with pytest.raises(ValueError, match=r"other settings than x_settings\('cpu'\)"):
        record.read("cpu", settings={**SETTINGS, "steps": 1}, inputs=INPUTS)


def test_a_sweep_script_writes_its_record_and_reuses_the_committed_runs(tmp_path, capsys):
    record = SweepRecord("x_sweep", made_by="x_settings", inputs_named="sentiment set", folder=tmp_path)

    def sweep(earlier):
        kept = {(row["lr"], row["seed"]) for row in earlier}
        return earlier + [{"arm": "a", "lr": lr, "seed": 0, "validation accuracy": lr * 100}
                          for lr in (1e-3, 3e-3) if (lr, 0) not in kept]
    path = make_sweep(record, "cpu", sweep_arguments("x", []), settings=SETTINGS, inputs=INPUTS, sweep=sweep, by="arm")
    assert "chosen on validation: {'a': 0.003}" in capsys.readouterr().out
    first = json.loads(path.read_text())
    assert first["command"] == "python -m bench.x_sweep" and len(first["rows"]) == 2
    again = make_sweep(record, "cpu", sweep_arguments("x", ["--reuse"]), settings=SETTINGS, inputs=INPUTS,
                       sweep=lambda earlier: earlier, by="arm")
    assert json.loads(again.read_text())["rows"] == first["rows"]
    with pytest.raises(SystemExit):
        sweep_arguments("no reuse here", ["--reuse"], reuse=False)
    assert sweep_arguments("no reuse here", [], reuse=False).reuse is False


def test_a_sweep_script_can_name_the_runs_it_keeps_and_says_so_in_the_command(tmp_path):
    record = SweepRecord("x_sweep", made_by="x_settings", inputs_named="sentiment set", folder=tmp_path)
    args = sweep_arguments("x", [])
    args.more_flags = ["--new-mini-bert"]
    kept = {"rows": [{"arm": "a", "lr": 1e-3, "seed": 0, "validation accuracy": 0.5}], "seconds": 60}
    path = make_sweep(record, "cpu", args, settings=SETTINGS, inputs={**INPUTS, "new": "input"}, earlier=kept,
                      sweep=lambda earlier: earlier + [{"arm": "b", "lr": 1e-3, "seed": 0, "validation accuracy": 0.6}])
    written = json.loads(path.read_text())
    assert [row["arm"] for row in written["rows"]] == ["a", "b"] and written["seconds"] >= 60
    assert written["command"] == "python -m bench.x_sweep --new-mini-bert" and written["inputs"]["new"] == "input"
