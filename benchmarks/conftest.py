"""The pytest-benchmark suite: ``python -m pytest benchmarks``.

Run by path: the unit suite's ``testpaths = ["tests"]`` keeps these out of a
plain ``python -m pytest``.  Like the unit suite, every case runs against
both implementations through the ``impl`` fixture; a bare ``with lock:``
block is the reference in the same run (``test_micro.py::test_bare_lock``),
so compare within a group, not across runs or machines.

dogpile.cache cannot be imported next to this package (both are the
top-level ``dogpile``); ``python benchmarks/compare.py`` measures it in its
own environment and prints the whole comparison.
"""

import importlib
import os
import sys
from pathlib import Path

import pytest

# The helper modules beside this file (harness, cases, ...) are imported by
# name, whatever pytest's import mode.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

IMPLEMENTATIONS = [
    pytest.param("cython", id="cython", marks=pytest.mark.c_extension),
    pytest.param("python", id="python"),
]


@pytest.fixture(params=IMPLEMENTATIONS, scope="session")
def impl(request):
    """The implementation module: ``dogpile._core`` or ``dogpile._core_py``.
    The compiled one is skipped only when a pure install was asked for
    (``DOGPILE_NO_EXTENSIONS``); otherwise a failed import is an error, not
    a quietly missing half of the results."""
    if request.param == "python":
        return importlib.import_module("dogpile._core_py")
    if os.environ.get("DOGPILE_NO_EXTENSIONS"):
        pytest.skip("DOGPILE_NO_EXTENSIONS is set: the compiled core is not benchmarked")
    return importlib.import_module("dogpile._core")
