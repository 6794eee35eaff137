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


# -- rooms: the graph collapsed to top-level packages and modules ----------------

def room(module):
    """The room of a module: its top-level package or module under sktransfer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def alias_modules():
    """The code aliases (old paths that re-export a moved module): not rooms of their own."""
    from sktransfer._utils.aliases import MOVED

    return set(MOVED)


def room_graph(graph):
    """``{room: rooms it imports}``, leaving out the package's __init__ and the aliases."""
    skip = alias_modules()
    rooms = {}
    for name, deps in graph.items():
        if room(name) is None or name in skip:
            continue
        rooms.setdefault(room(name), set()).update(
            room(d) for d in deps if room(d) not in (None, room(name)) and d not in skip)
    return rooms


def test_the_room_graph_collapses_modules_and_finds_a_loop():
    graph = {"sktransfer.a.x": {"sktransfer.b"}, "sktransfer.b": {"sktransfer.a.y"},
             "sktransfer.a.y": set(), "sktransfer.c": {"sktransfer.a.y"}, "sktransfer": set()}
    rooms = room_graph(graph)
    assert rooms == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(rooms) == [["a", "b"]]


def test_no_loop_between_rooms():
    rooms = room_graph(import_graph())
    assert cycles(rooms) == [], {r: sorted(d) for r, d in sorted(rooms.items())}


def imported_names(name, path):
    """``(module imported from, name)`` for every ``from ... import name`` in ``path``."""
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield target, alias.name


def private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_imported_across_rooms():
    skip = alias_modules()
    crossing = sorted(
        f"{name} imports {target}.{what}"
        for name, path in package_modules().items() if name not in skip
        for target, what in imported_names(name, path)
        if target.partition(".")[0] == "sktransfer" and private(what)
        and room(target) != room(name))
    assert crossing == []


ESTIMATOR_ROOMS = ("features", "finetune", "selection", "study", "scorers", "saving",
                   "chaining", "inference")


def test_the_estimators_import_only_the_backbones_public_face():
    # Which source or modality a backbone has is the backbones room's business:
    # outside it, only `sktransfer.backbones` itself is imported.
    reaching = sorted(f"{name} imports {dep}" for name, deps in import_graph().items()
                      if room(name) in ESTIMATOR_ROOMS
                      for dep in deps if dep.startswith("sktransfer.backbones."))
    assert reaching == []


def estimator_private_names():
    """Private attribute and method names of the estimator classes (features, finetune)."""
    names = set()
    for name, path in package_modules().items():
        if room(name) not in ("features", "finetune"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if isinstance(item, ast.FunctionDef) and private(item.name):
                        names.add(item.name)
                    elif (isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store)
                          and isinstance(item.value, ast.Name) and item.value.id == "self"
                          and private(item.attr)):
                        names.add(item.attr)
    return names


def test_training_reads_no_private_attribute_of_an_estimator():
    # training/ is handed a plan (plain values and callables), never an
    # estimator: no name that only an estimator defines is read there.
    own = set()
    reads = []
    estimator_names = estimator_private_names()
    assert "_contrastive" in estimator_names  # the scan sees the estimators' names
    for name, path in package_modules().items():
        if room(name) != "training":
            continue
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "self"):
                own.add(node.attr)
        reads += [(name, node.attr) for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr in estimator_names
                  and not (isinstance(node.value, ast.Name) and node.value.id == "self")]
    assert [(m, a) for m, a in reads if a not in own] == []
