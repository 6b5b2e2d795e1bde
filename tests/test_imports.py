"""Every module of dogpile imports on its own, and no two import each other.

A module that only works when another was imported first, or that warns or
pulls in an optional library (redis, gevent, eventlet) at import time,
fails here instead of in a user's process; so does an import cycle, even
one held together by a lazy import inside a function (it breaks as soon as
the modules are imported in the other order).  The package is the
installed one, as in the rest of the suite.
"""

import ast
import os
import pkgutil
import re
import subprocess
import sys

import pytest
from conftest import DEADLINE

import dogpile

PACKAGE_DIR = os.path.dirname(os.path.abspath(dogpile.__file__))
OPTIONAL = ("redis", "valkey", "gevent", "eventlet")


def _modules():
    names = ["dogpile"]
    for info in pkgutil.walk_packages(dogpile.__path__, "dogpile."):
        names.append(info.name)
    return sorted(set(names))


MODULES = _modules()


def test_the_list_is_complete():
    # A walk that found nothing would let every other test here pass.
    for name in ("dogpile.aio", "dogpile._core_py", "dogpile.mutexes", "dogpile.demo.cli"):
        assert name in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_imports_alone(module):
    """Imported first and alone in a fresh interpreter, with every warning
    an error and the optional libraries missing: it works, and loads none
    of them."""
    code = (
        "import importlib, sys\n"
        # As if not installed: an import of one at import time fails.
        f"sys.modules.update(dict.fromkeys({OPTIONAL!r}))\n"
        f"importlib.import_module({module!r})\n"
        f"for m in {OPTIONAL!r}: del sys.modules[m]\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=os.path.dirname(PACKAGE_DIR),  # the installed package, never the source tree's
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{module} imported {proc.stdout.strip()}"


# -- the import graph ----------------------------------------------------------------


# The compiled core's source, read where the suite runs from a source tree
# (the installed package has only the built module).
CORE_PYX = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "dogpile", "_core.pyx"
)


def _source_files():
    """Module name -> path of every Python source of the installed package,
    and of the compiled core."""
    files = {}
    for root, _dirs, names in os.walk(PACKAGE_DIR):
        for filename in names:
            stem, ext = os.path.splitext(filename)
            if ext not in (".py", ".pyx"):
                continue
            rel = os.path.relpath(os.path.join(root, stem), os.path.dirname(PACKAGE_DIR))
            parts = rel.split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = os.path.join(root, filename)
    if "dogpile._core" not in files and os.path.exists(CORE_PYX):
        files["dogpile._core"] = CORE_PYX
    return files


def _under_type_checking(node, parents):
    # ``if TYPE_CHECKING:`` imports never run: the type checker's business.
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                return True
    return False


_PYX_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+(?:c?import)\s+(.+)|import\s+([\w.]+))")


def _imports(module, path, is_package):
    """(base, names) of each import statement in ``path``, any nesting
    (a lazy import in a function counts), with relative bases resolved."""
    package = module if is_package else module.rpartition(".")[0]

    def resolve(level, base):
        if not level:
            return base
        parts = package.split(".")
        parts = parts[: len(parts) - (level - 1)]
        return ".".join(parts + ([base] if base else []))

    found = []
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if path.endswith(".pyx"):
        for line in source.splitlines():
            match = _PYX_IMPORT.match(line)
            if not match:
                continue
            if match.group(3):
                found.append((match.group(3), []))
            else:
                spec = match.group(1)
                level = len(spec) - len(spec.lstrip("."))
                listed = match.group(2).strip("()\\ ").split(",")
                names = [n.split()[0] for n in listed if n.strip()]
                found.append((resolve(level, spec.lstrip(".")), names))
        return found
    tree = ast.parse(source, path)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((resolve(node.level, node.module or ""), [a.name for a in node.names]))
    return found


def _graph():
    files = _source_files()
    graph = {}
    for module, path in files.items():
        is_package = os.path.basename(path) == "__init__.py"
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        edges = set()
        for base, names in _imports(module, path, is_package):
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in files] or [base]
            if len(targets) < len(names):
                targets.append(base)  # names of the module itself besides submodules
            for target in targets:
                # Importing a.b.c runs a and a.b first, unless they are
                # this module's own packages (already being imported).
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if name in files and name not in own:
                        edges.add(name)
        graph[module] = edges
    return graph


def _find_cycle(graph):
    state = {}  # 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_lazy_imports():
    # The test below is only as good as the parser: a lazy import inside a
    # function, and one of a submodule's package, are edges.
    graph = _graph()
    assert "dogpile._errors" in graph["dogpile"]
    assert "dogpile._checks" in graph["dogpile.aio"]
    assert "dogpile.demo" in graph["dogpile.__main__"]
    if "dogpile._core" in graph:
        assert "dogpile._rules" in graph["dogpile._core"]


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
