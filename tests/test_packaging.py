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
