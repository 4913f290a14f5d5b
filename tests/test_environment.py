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
