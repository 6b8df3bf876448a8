"""The package metadata: pyproject.toml is the source, requirements*.txt agree with it."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _requirements(name: str) -> set[str]:
    lines = (ROOT / name).read_text().splitlines()
    return {line.replace(" ", "") for line in lines if line.strip() and not line.startswith(("#", "-r"))}


def test_requirements_files_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _requirements("requirements.txt") == {d.replace(" ", "") for d in project["dependencies"]}
    assert _requirements("requirements-dev.txt") == {
        d.replace(" ", "") for d in project["optional-dependencies"]["dev"]
    }


def test_console_script_and_packages_are_declared():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["lowrank"] == "lowrank_core.cli:main"
    packages = set(pyproject["tool"]["setuptools"]["packages"])
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "lowrank_core").rglob("__init__.py")}
    assert packages == on_disk


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = re.search(r"# 2\. set up, lint and run the tests\n(.+)\n", readme).group(1)
    assert test_command in ci
