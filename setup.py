"""The one thing pyproject.toml cannot say: the compiled core is optional.

DOGPILE_NO_EXTENSIONS=1 builds a pure-Python install.  Otherwise the
extension is compiled; if that fails (no compiler, say) the install goes on
as pure Python with one warning line, unless DOGPILE_REQUIRE_EXTENSIONS=1
makes the failure fatal (wheel builds and CI set it).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = bool(os.environ.get("DOGPILE_NO_EXTENSIONS"))
REQUIRE_EXTENSIONS = bool(os.environ.get("DOGPILE_REQUIRE_EXTENSIONS"))
if NO_EXTENSIONS and REQUIRE_EXTENSIONS:
    sys.exit("DOGPILE_NO_EXTENSIONS and DOGPILE_REQUIRE_EXTENSIONS are both set: pick one")


class optional_build_ext(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:
            self._give_up(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc):
        if REQUIRE_EXTENSIONS:
            raise
        print(
            f"WARNING: dogpile's compiled core could not be built ({exc}); "
            "installing the pure-Python implementation instead",
            file=sys.stderr,
        )


def extensions():
    if NO_EXTENSIONS or sys.implementation.name != "cpython":
        return []
    from Cython.Build import cythonize

    return cythonize(
        [
            Extension(
                "dogpile._core",
                ["src/dogpile/_core.pyx"],
                depends=["src/dogpile/_native_lock.h"],
                extra_compile_args=[] if os.name == "nt" else ["-O2"],
            )
        ],
        compiler_directives={"language_level": "3"},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": optional_build_ext})
