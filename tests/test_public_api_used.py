"""Every public function and method of our packages is used by our own code, not only by
the tests: a helper that only tests call lives in tests/ (issue 11.5).

"Used" means its name is referenced (a name, an attribute, an import, a string that is a
name or a dotted path such as a `pyproject.toml` entry point; prose in docstrings does not
count) somewhere in the code that ships: the packages, benchmarks,
examples and deploy files. A method that a framework calls because it overrides a base
class of the framework (a gRPC servicer's RPCs, an interceptor, `nn.Module.forward`) is
used by that framework. The checker itself is shown to catch a test-only function.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling", "training", "adapters_registry", "serving", "demo")
SHIPPED = (*PACKAGES, "benchmarks", "examples", "deploy")
GENERATED = "proto_gen"
# Called by a framework by name, with no base class to see it through.
BY_CONVENTION = {"check_health": "Ray Serve calls a deployment's check_health"}


def referenced_names(files: list[Path], extra_text: str = "") -> Counter:
    """How often each identifier is referenced in `files` (definitions not counted)."""
    counts: Counter = Counter(re.findall(r"\w+", extra_text))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Name):
                counts[node.id] += 1
            elif isinstance(node, ast.Attribute):
                counts[node.attr] += 1
            elif isinstance(node, ast.alias):
                counts[node.name.rsplit(".", 1)[-1]] += 1
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"[\w.:]+", node.value):  # getattr, "module:function"
                counts.update(re.findall(r"\w+", node.value))
    return counts


def public_definitions(path: Path, module: str) -> list[tuple[str, str | None, str]]:
    """(module, enclosing class or None, name) of every public top-level function, class
    and method of a public class in `path`."""
    found = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) \
                and not node.name.startswith("_"):
            found.append((module, None, node.name))
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            found += [(module, node.name, item.name) for item in node.body
                      if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                      and not item.name.startswith("_")]
    return found


def overrides_a_framework(module: str, owner: str, name: str) -> bool:
    """Whether class `owner` of `module` inherits `name` from a class not of ours."""
    cls = getattr(importlib.import_module(module), owner)
    return any(name in vars(base) for base in cls.__mro__[1:]
               if base.__module__.split(".")[0] not in PACKAGES)


def shipped_files(root: Path) -> list[Path]:
    return [p for top in SHIPPED for p in sorted((root / top).rglob("*.py"))
            if GENERATED not in p.parts]


def used_only_by_tests(root: Path, packages=PACKAGES) -> list[str]:
    """Qualified names of public definitions whose name the shipped code never uses."""
    pyproject = root / "pyproject.toml"
    used = referenced_names(shipped_files(root),
                            pyproject.read_text() if pyproject.is_file() else "")
    unused = []
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            if GENERATED in path.parts:
                continue
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            for module_name, owner, name in public_definitions(path, module):
                qualified = ".".join(filter(None, (module_name, owner, name)))
                if used[name] or name in BY_CONVENTION:
                    continue
                if owner is not None and root == ROOT \
                        and overrides_a_framework(module_name, owner, name):
                    continue
                unused.append(qualified)
    return unused


def test_no_public_function_is_used_only_by_tests():
    assert used_only_by_tests(ROOT) == []


def test_the_checker_catches_a_function_only_tests_call(tmp_path):
    package = tmp_path / "modeling"
    package.mkdir()
    (package / "sizes.py").write_text(
        "def used(x):\n    return helper_of_used(x)\n\n"
        "def helper_of_used(x):\n    return x\n\n"
        "def only_tests_call_me():\n    return 1\n\n"
        "class Table:\n    def rows(self):\n        return used(2)\n")
    (package / "cli.py").write_text("from modeling.sizes import Table\n\n"
                                    "def main():\n    return Table().rows()\n")
    (tmp_path / "pyproject.toml").write_text('[project.scripts]\nx = "modeling.cli:main"\n')
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_sizes.py").write_text("from modeling.sizes import only_tests_call_me\n")
    (package / "notes.py").write_text('"""only_tests_call_me is named here, in prose."""\n')
    assert used_only_by_tests(tmp_path, ("modeling",)) == ["modeling.sizes.only_tests_call_me"]
