"""dogpile's PEP 517 build backend: setuptools' own, asking for Cython only
when the compiled core will be built.

pyproject.toml's ``[build-system] requires`` is the same for every build,
so Cython cannot be listed there without every install fetching it: the
pure one (``DOGPILE_NO_EXTENSIONS=1``) and any install on PyPy or GraalPy
included, where it would go unused.  A backend may add requirements per
build (``get_requires_for_build_wheel``); this one adds Cython exactly when
setup.py's ``extensions()`` builds the extension.  Everything else is
``setuptools.build_meta`` unchanged; an sdist never needs Cython (setup.py
cythonizes inside build_ext), and the wheel built from it asks again.
"""

import os
import sys
from typing import Dict, List, Optional, Union

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (the hooks this backend passes through)
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

CYTHON = "Cython>=3.0.10"

_ConfigSettings = Optional[Dict[str, Union[str, List[str], None]]]


def _builds_extension() -> bool:
    # The same test as setup.py's extensions(): keep the two in step
    # (scripts/check_wheel.sh checks both ways).
    return not os.environ.get("DOGPILE_NO_EXTENSIONS") and sys.implementation.name == "cpython"


def _with_cython(requires: List[str]) -> List[str]:
    return [*requires, CYTHON] if _builds_extension() else list(requires)


def get_requires_for_build_wheel(config_settings: _ConfigSettings = None) -> List[str]:
    return _with_cython(_setuptools.get_requires_for_build_wheel(config_settings))


def get_requires_for_build_editable(config_settings: _ConfigSettings = None) -> List[str]:
    return _with_cython(_setuptools.get_requires_for_build_editable(config_settings))
