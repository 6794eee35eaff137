"""The shape of the package: no import cycle, no module too long to read, no import side effects.

These hold the rooms of docs/architecture.rst in place: a cycle (even through
an import inside a function) means two modules cannot be understood, tested
or moved apart; a module past the limit holds more than one job.
"""

import ast
import json
import os
import subprocess
import sys

import pytest

import sktransfer

PACKAGE = os.path.dirname(sktransfer.__file__)
MAX_LINES = 500


def package_modules():
    """``{dotted name: path}`` of every module of sktransfer."""
    modules = {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE))
                dotted = rel[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = os.path.join(root, name)
    return modules


def imported_modules(name, path, modules):
    """The sktransfer modules ``name`` imports, anywhere in it (functions included)."""
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            # `from pkg import sub` imports the submodule pkg.sub too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph():
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    # The check itself must be able to fail: a package whose modules import
    # each other, one of them inside a function.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "c.py").write_text("import pkg.b\n")
    modules = {"pkg": str(pkg / "__init__.py"), "pkg.a": str(pkg / "a.py"),
               "pkg.b": str(pkg / "b.py"), "pkg.c": str(pkg / "c.py")}
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["pkg.c"] == {"pkg.b"}
    assert ["pkg", "pkg.a", "pkg.b"] in cycles(graph) or ["pkg.a", "pkg.b"] in cycles(graph)


def test_no_import_cycle_anywhere_in_the_package():
    assert cycles(import_graph()) == []


def test_no_module_is_longer_than_the_limit():
    long = {name: n for name, path in package_modules().items()
            if (n := sum(1 for _ in open(path, encoding="utf-8"))) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: split them by concern"


THIRD_PARTY = """
import json, sys
import sktransfer, sktransfer.distributed, sktransfer.regularizers, sktransfer.transferability
print(json.dumps(sorted(m for m in sys.modules
                        if m.partition(".")[0] != "sktransfer" and not m.startswith("_"))))
"""

IMPORT_STATE = """
import importlib, json, os, random, sys
import numpy as np, torch, sklearn

# What sktransfer's dependencies do when they are imported (scikit-learn
# draws from the random module) is theirs: import them first.
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass

def state():
    return {
        "environ": dict(os.environ),
        "threads": [torch.get_num_threads(), torch.get_num_interop_threads()],
        "torch_rng": torch.get_rng_state().tolist(),
        "numpy_rng": [int(v) for v in np.random.get_state()[1][:8]],
        "random": random.getstate()[1][:8],
        "sklearn": {k: repr(v) for k, v in sklearn.get_config().items()},
        "default_dtype": str(torch.get_default_dtype()),
        "grad": torch.is_grad_enabled(),
    }

before = state()
import sktransfer, sktransfer.distributed, sktransfer.regularizers, sktransfer.transferability
after = state()
print(json.dumps({k: before[k] == after[k] for k in before}))
"""


def in_fresh_process(script, env, *args):
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("launch", [{}, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}])
def test_importing_sktransfer_changes_no_global_state(launch):
    # In a fresh process (here the package is already imported), under a
    # torchrun-like launch too: importing a library writes no environment
    # variable, sets no thread count, draws from no global RNG.
    env = {**os.environ, **launch}
    dependencies = in_fresh_process(THIRD_PARTY, env)
    unchanged = in_fresh_process(IMPORT_STATE, env, json.dumps(dependencies))
    assert unchanged == {k: True for k in unchanged}
