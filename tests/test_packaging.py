"""Packaging: the warning when dogpile.cache's files share our directory.

dogpile.cache also installs a top-level ``dogpile``; pip merges the two
into one folder.  These tests fake that with a copy of the imported
package plus a ``cache/`` (or ``core/``) subpackage beside it, and import
the copy in a child process, where warnings are recorded rather than
turned into errors by this suite's ``filterwarnings = error``.
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
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dogpile  # line 5: where the warning must point
    import dogpile.dogpile, dogpile.nameregistry, dogpile.readwrite_lock
print(json.dumps({
    "file": dogpile.__file__,
    "warnings": [
        {"category": w.category.__name__, "bases": [c.__name__ for c in w.category.__mro__],
         "message": str(w.message), "filename": w.filename, "lineno": w.lineno}
        for w in caught
    ],
}))
"""


def _import_copy(tmp_path, *others):
    """Copy the imported dogpile package into tmp_path/site, add the other
    distributions' subpackages, import it in a child; its report."""
    site = tmp_path / "site"
    package = site / "dogpile"
    shutil.copytree(
        os.path.dirname(os.path.abspath(dogpile.__file__)),
        package,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for sub in others:
        (package / sub).mkdir()
        (package / sub / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-s", "-c", CHILD],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=3 * DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert os.path.realpath(report["file"]) == os.path.realpath(package / "__init__.py")
    return report["warnings"], str(package)


def test_no_warning_alone(tmp_path):
    caught, _ = _import_copy(tmp_path)
    assert caught == []


@pytest.mark.parametrize(
    "sub, distribution", [("cache", "dogpile.cache"), ("core", "dogpile.core")]
)
def test_one_warning_when_merged(tmp_path, sub, distribution):
    caught, package = _import_copy(tmp_path, sub)
    assert len(caught) == 1, caught
    (warning,) = caught
    assert warning["category"] == "DogpileCacheConflictWarning"
    assert "UserWarning" in warning["bases"]
    message = warning["message"]
    assert message.startswith(f"dogpile and {distribution} are installed into the same directory")
    assert package in message
    assert "separate virtual environments" in message
    assert f"pip uninstall dogpile {distribution}" in message
    # It points at the importing line, not into dogpile.
    assert (warning["filename"], warning["lineno"]) == ("<string>", 5)


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
    # Every range the README states outside its measurements (the Speed
    # section says where each number was taken) is the supported one.
    claims = readme.split("\n## Speed\n")[0] + readme.split("\n## Speed\n")[1].split("\n## ", 1)[1]
    ranges = set(re.findall(r"CPython (3\.\d+) to (3\.\d+)", claims))
    assert ranges == {(oldest, newest)}, ranges
    assert not re.search(r"CPython 3\.\d+ and (newer|later)", readme)
