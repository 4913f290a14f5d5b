"""utils.sweeps: a committed sweep record keeps what it was made from and refuses other settings or inputs."""
import json

import pytest

from utils.sweeps import read_record, sweep_arguments, sweep_command, write_record

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
    assert sweep_command("bench/x.py", args) == "python bench/x.py --preset gpu --reuse"
    assert sweep_command("bench/x.py", sweep_arguments("a sweep", [])) == "python bench/x.py"
