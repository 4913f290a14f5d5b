"""One source of truth for versions: requirements files, environment.yml and constraints agree."""
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}


def requirements(*files):
    found = {}
    for name in files:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                requirement = Requirement(line)
                found[canonicalize_name(requirement.name)] = requirement
    return found


def conda_requirements():
    spec = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for entry in spec["dependencies"]:
        lines = entry["pip"] if isinstance(entry, dict) else [entry]
        for line in lines:
            if line.startswith("-e") or line.split(">")[0].split("=")[0] in ("python", "pip"):
                continue
            requirement = Requirement(line)
            name = CONDA_TO_PIP.get(requirement.name, requirement.name)
            found[canonicalize_name(name)] = requirement
    return found


def test_environment_yml_names_the_same_packages_and_ranges():
    pip = requirements("requirements.txt", "requirements-dev.txt")
    conda = conda_requirements()
    assert sorted(conda) == sorted(pip)
    for name, requirement in pip.items():
        assert conda[name].specifier == requirement.specifier, name


def test_constraints_satisfy_the_requirements_and_pin_a_cpu_friendly_torch():
    pip = requirements("requirements.txt", "requirements-dev.txt")
    pins = requirements("constraints.txt")
    assert str(pins["torch"].specifier) == "==2.13.0"
    for name, pin in pins.items():
        version = str(pin.specifier).removeprefix("==")
        assert pip[name].specifier.contains(version), f"constraints pin {name} {version} outside {pip[name]}"


def test_installed_versions_satisfy_the_requirements():
    """Catches version drift in an existing environment (rerun `make clean test` to rebuild it)."""
    for name, requirement in requirements("requirements.txt", "requirements-dev.txt").items():
        version = metadata.version(name)
        assert requirement.specifier.contains(version, prereleases=True), f"{name} {version} not in {requirement}"


def test_pyproject_installs_requirements_txt():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dependencies = { file = ["requirements.txt"] }' in text
    assert 'optional-dependencies.dev = { file = ["requirements-dev.txt"] }' in text


def test_the_libraries_the_chapters_import_are_required():
    pip = requirements("requirements.txt")
    for name in ("torch", "transformers", "datasets", "tokenizers", "accelerate", "peft", "safetensors"):
        assert name in pip, f"{name} is imported by a chapter but missing from requirements.txt"


def _tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_oldest_pins_each_hugging_face_library_to_its_lower_bound_and_keeps_the_torch_pin():
    oldest = _tool("oldest")
    text = oldest.constraints((ROOT / "requirements.txt").read_text(), (ROOT / "constraints.txt").read_text())
    pins = dict(line.split("==") for line in text.splitlines())
    reqs = requirements("requirements.txt")
    for name in oldest.OLDEST:
        assert pins[name] in reqs[name].specifier, f"{name}=={pins[name]} is outside {reqs[name]}"
    assert pins["torch"] == "2.13.0"
    import pytest
    with pytest.raises(SystemExit, match="no '>=' lower bound for peft"):
        oldest.constraints("transformers>=5.0\ndatasets>=4.0\ntokenizers>=0.22\naccelerate>=1.1\npeft\n", "")


def test_the_readme_tested_with_line_is_written_from_the_environment():
    tested = _tool("tested_with")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(tested.START) == 1 and readme.count(tested.END) == 1
    now = tested.line()
    assert f"torch {metadata.version('torch')}" in now and f"transformers {metadata.version('transformers')}" in now
    rewritten = tested.rewrite(readme, now)
    assert f"{tested.START}{now}{tested.END}" in rewritten and rewritten.count("Tested with Python") == 1
    written = readme.split(tested.START)[1].split(tested.END)[0]
    assert written.startswith("Tested with Python ") and "torch " in written, "run tools/tested_with.py"


def test_e2e_skips_with_a_message_without_a_browser_and_refuses_a_notebook_outside_chapters(monkeypatch, capsys):
    e2e = _tool("e2e_lab")
    monkeypatch.setenv("FROM_ZERO_CHROMIUM", "/nonexistent/chromium")
    assert e2e.main([]) == 0
    assert "e2e skipped: no Chromium here" in capsys.readouterr().out
    assert e2e.main(["--notebook", "README.md"]) == 2
    assert "is not a notebook in chapters/" in capsys.readouterr().err
