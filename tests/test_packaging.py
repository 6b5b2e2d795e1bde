"""Packaging: the warning when dogpile.cache's files share our directory.

dogpile.cache also installs a top-level ``dogpile``; pip merges the two
into one folder.  These tests fake that with a copy of the imported
package plus a ``cache/`` (or ``core/``) subpackage beside it, and import
the copy in a child process, where warnings are recorded rather than
turned into errors by this suite's ``filterwarnings = error``.
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
