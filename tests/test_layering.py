"""Dependencies point one way: `modeling` imports nothing of ours; `adapters_registry`
imports neither training nor serving; `training` and `serving` never import each other.

Checked twice per package: statically (every import statement of every .py file, those
inside functions included, and `import_module("...")` calls with a literal name), and
in a fresh interpreter that imports the package's every module alone and then lists which
of our other packages ended up in `sys.modules`. The checker itself is shown to catch a
forbidden import planted in a throw-away project of the same layout.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every top-level package of ours; `demo` and `benchmarks` sit above all the others.
OURS = ("modeling", "adapters_registry", "training", "serving", "demo", "benchmarks")
# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "modeling": (),
    "adapters_registry": ("modeling",),
    "training": ("modeling", "adapters_registry"),
    "serving": ("modeling", "adapters_registry"),
}


def forbidden(package: str) -> set[str]:
    """Our top-level packages `package` must not import."""
    return set(OURS) - {package, *ALLOWED[package]}


def package_files(root: Path, package: str) -> list[Path]:
    """Every .py file of `package` under `root`, generated ones and sub-folders included."""
    return sorted((root / package).rglob("*.py"))


def _imported_names(tree: ast.AST, module: str) -> set[str]:
    """Dotted names that the statements of `tree` (module `module`) import, anywhere."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = module.rsplit(".", node.level)[0]
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in
              ("import_module", "__import__")):
            names.add(node.args[0].value)
    return names


def static_violations(root: Path, package: str) -> list[str]:
    """'file: imports name' for each import of a forbidden package in `package`'s files."""
    found = []
    for path in package_files(root, package):
        relative = path.relative_to(root)
        module = ".".join(relative.with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in sorted(_imported_names(tree, module)):
            if name.split(".")[0] in forbidden(package):
                found.append(f"{relative}: imports {name}")
    return found


def importable_modules(root: Path, package: str) -> list[str]:
    """Dotted names of the package's modules that `import` can reach (every folder on the
    way has an __init__.py); `__main__` modules are left out: importing one runs it."""
    modules = []
    for path in package_files(root, package):
        relative = path.relative_to(root).with_suffix("")
        folders = [root.joinpath(*relative.parts[:depth])
                   for depth in range(1, len(relative.parts))]
        if relative.name == "__main__" or not all((f / "__init__.py").is_file() for f in folders):
            continue
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        modules.append(".".join(parts))
    return modules


PROBE = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def start_probe(root: Path, package: str) -> subprocess.Popen:
    """A fresh interpreter that imports every module of `package` from `root` (and nothing
    else of ours) and prints the top-level names in its sys.modules."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, json.dumps(importable_modules(root, package))],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def probe_violations(probe: subprocess.Popen, package: str) -> list[str]:
    """The forbidden packages the probe of `package` found loaded."""
    out, err = probe.communicate(timeout=300)
    assert probe.returncode == 0, err[-3000:]
    return sorted(set(json.loads(out.strip().splitlines()[-1])) & forbidden(package))


def runtime_violations(root: Path, package: str) -> list[str]:
    return probe_violations(start_probe(root, package), package)


@pytest.fixture(scope="module")
def probes() -> dict[str, subprocess.Popen]:
    """The four probes of this checkout, started together (each waits on imports)."""
    started = {package: start_probe(ROOT, package) for package in ALLOWED}
    yield started
    for probe in started.values():
        if probe.poll() is None:
            probe.kill()
            probe.communicate()


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_file_of_a_package_imports_a_forbidden_package(package):
    assert package_files(ROOT, package)
    assert static_violations(ROOT, package) == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_importing_every_module_of_a_package_alone_loads_no_forbidden_package(package, probes):
    assert probe_violations(probes[package], package) == []


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_catch_a_planted_forbidden_import(tmp_path):
    """A throw-away project of our layout: modeling imports serving at the top of one
    module and inside a function of another (only the static check can see that one),
    serving imports training from a sub-package, training imports serving through
    importlib; a relative import inside a package is no violation."""
    root = _plant(tmp_path, {
        "modeling/__init__.py": "",
        "modeling/clean.py": "import json\n",
        "modeling/top.py": "import serving.engine\n",
        "modeling/inner.py": "def later():\n    from serving import engine\n    return engine\n",
        "serving/__init__.py": "",
        "serving/engine.py": "",
        "serving/sub/__init__.py": "",
        "serving/sub/uses.py": "from training.data import x\nfrom .. import engine\n",
        "training/__init__.py": "",
        "training/data.py": "x = 1\n",
        "training/dynamic.py": "import importlib\nimportlib.import_module('serving.engine')\n",
        "adapters_registry/__init__.py": "from modeling import clean\n",
    })
    assert static_violations(root, "modeling") == [
        "modeling/inner.py: imports serving", "modeling/top.py: imports serving.engine"]
    assert static_violations(root, "serving") == ["serving/sub/uses.py: imports training.data"]
    assert static_violations(root, "training") == ["training/dynamic.py: imports serving.engine"]
    assert static_violations(root, "adapters_registry") == []
    assert runtime_violations(root, "modeling") == ["serving"]
    assert runtime_violations(root, "serving") == ["training"]
    assert runtime_violations(root, "training") == ["serving"]
    assert runtime_violations(root, "adapters_registry") == []
