"""The package metadata (pyproject.toml is the source, requirements*.txt agree with it) and the
core's shape: no import cycle, no function longer than a screen, the engine a facade."""

import ast
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


CORE = pathlib.Path(__file__).resolve().parents[1] / "lowrank_core"


def _module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__")


def _module_imports(path: pathlib.Path) -> set[str]:
    """The lowrank_core modules a module imports when it is imported (module level only)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lowrank_core"):
            if node.module == "lowrank_core":
                found |= {f"lowrank_core.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lowrank_core")}
    return found


def test_the_core_has_no_import_cycle():
    graph = {_module_name(p): _module_imports(p) for p in CORE.rglob("*.py")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if dep not in graph:
                continue
            assert state.get(dep) != 1, " -> ".join(path + [module, dep])
            if dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_core_function_is_longer_than_a_screen():
    long = [
        f"{p.relative_to(CORE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for p in CORE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long
    assert len((CORE / "engine.py").read_text().splitlines()) <= 250  # a facade


def _method_names() -> dict[str, str]:
    """Each method's name (``METHOD = Method(name=...)``) and the module that defines it."""
    names = {}
    for path in (CORE / "methods").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Method":
                names |= {k.value.value: path.stem for k in node.keywords if k.arg == "name"}
    return names


def test_no_method_name_outside_its_module():
    # The rest of the core asks the registry, or names a step by its config type
    # (methods.name_of). The reference's name, "baseline", is also a preset's and a label's.
    names = {name: module for name, module in _method_names().items() if name != "baseline"}
    assert {"svd", "prune", "quantize"} <= set(names)  # the scan found the methods
    spelled = [
        f"{p.relative_to(CORE.parent)}:{node.lineno} {node.value!r}"
        for p in CORE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Constant)
        and node.value in names
        and not (p.parent.name == "methods" and p.stem == names[node.value])
    ]
    assert not spelled, spelled
