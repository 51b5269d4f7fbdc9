"""pyproject.toml, environment.yml and the lock file agree; the README holds the two commands."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_name(r) for r in extra}
    return names


def environment_names() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            names |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        elif _name(dep) not in {"python", "pip"}:
            names.add(_name(dep))
    return names


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    assert environment_names() == pyproject_names()


def test_lock_pins_every_dependency_but_torch():
    lock = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[_name(name)] = version
    missing = pyproject_names() - set(lock) - {"torch"}
    assert not missing, f"requirements/lock.txt lacks pins for {sorted(missing)}: run `make lock`"
    assert "torch" not in lock, "torch is installed by TORCH_SPEC (CPU) or by the user (CUDA)"
    assert all(lock.values()), "every lock line must be an exact pin NAME==VERSION"


def test_jupyter_book_is_below_2():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (jb,) = [r for r in project["optional-dependencies"]["book"] if _name(r) == "jupyter-book"]
    assert "<2" in jb


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert "make test" in commands
