"""Packaging: this project's dogpile beside dogpile.cache's.

dogpile.cache also installs a top-level ``dogpile``; pip merges the two
into one folder, and the last one installed owns ``__init__.py``.  These
tests fake each state with a copy of the imported package (plus a
``cache/`` subpackage, or dogpile.cache's kind of ``__init__.py``, or none)
and import it in a child process, where warnings are recorded rather than
turned into errors by this suite's ``filterwarnings = error``.  The real
installs, in each order, are in scripts/dogpile_cache_installs.py (run by
``nox -s dogpile_cache``).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import DEADLINE

import dogpile

CHILD = """
import importlib, json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name in sys.argv[1:]:
        importlib.import_module(name)
import dogpile
print(json.dumps({
    "file": dogpile.__file__,
    "warnings": [
        {"category": w.category.__name__, "bases": [c.__name__ for c in w.category.__mro__],
         "message": str(w.message)}
        for w in caught
    ],
}))
"""

# dogpile.cache's __init__.py, in short: its own Lock from dogpile/lock.py.
FOREIGN_INIT = "from .lock import Lock\n__version__ = '1.5.0'\n"
FOREIGN_LOCK = "class Lock:\n    pass\n"


def _import_copy(tmp_path, state, *modules):
    """Copy the imported dogpile package into tmp_path/site in ``state``,
    import ``modules`` in a child; its report."""
    site = tmp_path / "site"
    package = site / "dogpile"
    shutil.copytree(
        os.path.dirname(os.path.abspath(dogpile.__file__)),
        package,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    if state in ("beside", "foreign"):
        (package / "cache").mkdir()
        (package / "cache" / "__init__.py").write_text("")
    if state == "foreign":
        (package / "__init__.py").write_text(FOREIGN_INIT)
        (package / "lock.py").write_text(FOREIGN_LOCK)
    if state == "no-init":
        (package / "__init__.py").unlink()
    # -S: no site-packages, where the installed dogpile would win over a
    # copy without __init__.py (a namespace package).
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, *modules],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=3 * DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    if state != "no-init":
        assert os.path.realpath(report["file"]) == os.path.realpath(package / "__init__.py")
    return report["warnings"], str(package)


ALL = ["dogpile", "dogpile.dogpile", "dogpile.nameregistry", "dogpile.readwrite_lock",
       "dogpile.aio", "dogpile.mutexes"]


@pytest.mark.parametrize("state", ["alone", "beside"])
def test_no_warning_where_it_works(tmp_path, state):
    """Alone, or installed after dogpile.cache (its cache/ beside ours):
    every import is silent."""
    caught, _ = _import_copy(tmp_path, state, *ALL)
    assert caught == []


@pytest.mark.parametrize(
    "state, problem",
    [
        ("foreign", "has dogpile.cache's __init__.py"),
        ("no-init", "has no __init__.py"),
    ],
)
@pytest.mark.parametrize("module", ["dogpile.mutexes", "dogpile._core_py"])
def test_one_warning_where_it_is_broken(tmp_path, state, problem, module):
    """This project's modules under dogpile.cache's __init__.py, or under
    none: one warning, saying what is wrong and the way out."""
    caught, package = _import_copy(tmp_path, state, module)
    assert len(caught) == 1, caught
    (warning,) = caught
    assert warning["category"] == "DogpileCacheConflictWarning"
    assert "UserWarning" in warning["bases"]
    message = warning["message"]
    assert message.startswith(f"the dogpile package in {package} {problem}")
    assert "pip install --pre --force-reinstall --no-deps dogpile" in message


def test_warning_class_is_public():
    assert issubclass(dogpile.DogpileCacheConflictWarning, UserWarning)


# -- one list of supported CPython versions ------------------------------------------
#
# The classifiers in pyproject.toml are the list; requires-python, the
# cibuildwheel selection, noxfile.py's PYTHONS and the README must say the
# same.  pyproject.toml sits beside tests/ wherever the suite runs (the
# source tree, and the copies that scripts/check_wheel.sh, cibuildwheel and
# scripts/newest_pythons.sh test from); the README and noxfile.py only in
# the source tree.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    try:
        import tomllib
    except ImportError:  # before 3.11
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _supported():
    """The versions of the classifiers, as (3, minor) tuples, in order."""
    found = []
    for c in _pyproject()["project"]["classifiers"]:
        m = re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c)
        if m:
            found.append((3, int(m.group(1))))
    return found


def _text(version):
    return f"{version[0]}.{version[1]}"


def test_supported_versions_are_one_unbroken_range():
    versions = _supported()
    assert versions, "no 'Programming Language :: Python :: 3.X' classifier in pyproject.toml"
    assert versions == [(3, m) for m in range(versions[0][1], versions[-1][1] + 1)], (
        f"the classifiers skip or repeat a version: {[_text(v) for v in versions]}"
    )
    # The version of the current release (the newest one CI runs) is in it.
    assert (3, 15) in versions


def test_requires_python_is_the_oldest_supported():
    versions = _supported()
    assert _pyproject()["project"]["requires-python"] == f">={_text(versions[0])}"


def test_cibuildwheel_builds_exactly_the_supported_versions():
    build = _pyproject()["tool"]["cibuildwheel"]["build"]
    selectors = build.split() if isinstance(build, str) else list(build)
    assert selectors == [f"cp3{minor}-*" for _, minor in _supported()]


def _source_file(name):
    path = os.path.join(ROOT, name)
    if not os.path.exists(path):
        pytest.skip(
            f"{name} is not beside tests/ (a run from a copy of the tests against an installed "
            "wheel); the source-tree runs of .ci/run check it"
        )
    return path


def test_nox_runs_the_supported_versions():
    import ast

    with open(_source_file("noxfile.py")) as f:
        tree = ast.parse(f.read())
    (pythons,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "PYTHONS" for t in node.targets)
    ]
    assert ast.literal_eval(pythons) == [_text(v) for v in _supported()]


def test_readme_states_the_supported_versions():
    with open(_source_file("README.md"), encoding="utf-8") as f:
        readme = f.read()
    oldest, newest = _text(_supported()[0]), _text(_supported()[-1])
    assert f"Supported: CPython {oldest} to {newest}," in readme
    # The pages the README links to (docs/), the measurements among them.
    docs = os.path.join(os.path.dirname(_source_file("README.md")), "docs")
    pages = {}
    for name in sorted(os.listdir(docs)):
        if name.endswith(".md"):
            with open(os.path.join(docs, name), encoding="utf-8") as f:
                pages[name] = f.read()
    assert "speed.md" in pages, sorted(pages)
    # Every range the README and docs/ state outside the measurements
    # (docs/speed.md says where each number was taken) is the supported one.
    claims = "\n".join([readme, *(text for name, text in pages.items() if name != "speed.md")])
    ranges = set(re.findall(r"CPython (3\.\d+) to (3\.\d+)", claims))
    assert ranges == {(oldest, newest)}, ranges
    for text in [readme, *pages.values()]:
        assert not re.search(r"CPython 3\.\d+ and (newer|later)", text)
