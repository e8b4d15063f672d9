"""What installs hubbub agrees with pyproject.toml: the constraints every install uses pin
each dependency inside its declared range (Hypercorn's internals above all), and the
Heroku files (Procfile, app.json, .python-version) name what the project has."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from app.configuration import describe
from hubbub import Settings

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if "==" in line and not line.startswith("#")]
    return {name.lower().replace("_", "-"): version for name, version in pairs}


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in ("client", "test"):
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pinned = pins()
    for requirement in requirements:
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"{name}=={pinned[name]} is outside {requirement.specifier}"


def test_hypercorn_and_its_protocols_have_an_upper_bound() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounded = {Requirement(r).name.lower(): Requirement(r).specifier for r in project["dependencies"]}
    for name in ("hypercorn", "h11", "wsproto", "h2"):
        assert any(spec.operator == "<" for spec in bounded[name]), f"{name} needs an upper bound"


def test_requirements_install_the_project_within_the_constraints() -> None:
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == ["-c constraints.txt", "."]


def test_heroku_files_agree_with_the_project() -> None:
    app_json = json.loads((ROOT / "app.json").read_text())
    known = set(describe(Settings(jwt_secret="x" * 32)))
    known = {line.split("=", 1)[0] for line in known} | {"WEB_CONCURRENCY"}
    assert set(app_json["env"]) <= known, set(app_json["env"]) - known
    assert app_json["env"]["JWT_SECRET"]["generator"] == "secret"
    assert (ROOT / "Procfile").read_text().strip() == "web: python -m app serve"
    python = (ROOT / ".python-version").read_text().strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert SpecifierSet(project["requires-python"]).contains(f"{python}.0")
