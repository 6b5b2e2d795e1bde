"""The one thing pyproject.toml cannot say: the compiled core is optional.

At build time:

- ``DOGPILE_NO_EXTENSIONS=1``: build a pure-Python install, no compiler and
  no Cython needed.
- ``DOGPILE_REQUIRE_EXTENSIONS=1``: the compiled core must build; any
  failure (Cython missing, a .pyx error, no working C compiler) fails the
  build.  The wheel builds and CI set it.
- Neither: try to build the compiled core; if anything on the way fails,
  install the pure-Python twin and say so in one warning line on stderr
  (pip shows a build's output with ``pip install -v``).
- Both: an error, since they contradict each other.

Cython runs inside build_ext, not when this file is read, so making an
sdist (or the metadata) neither needs Cython nor writes ``_core.c``.
"""

import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = bool(os.environ.get("DOGPILE_NO_EXTENSIONS"))
REQUIRE_EXTENSIONS = bool(os.environ.get("DOGPILE_REQUIRE_EXTENSIONS"))
if NO_EXTENSIONS and REQUIRE_EXTENSIONS:
    sys.exit(
        "error: DOGPILE_NO_EXTENSIONS and DOGPILE_REQUIRE_EXTENSIONS are both set; "
        "unset one (NO: a pure install; REQUIRE: the compiled core or a failed build)"
    )


def _one_line(exc):
    """The reason, on one line: a failed compiler command is named by its
    program and exit status rather than its whole argument list."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    command = re.match(r"command '\['([^']+)'.*?\]' (.*)", text, re.IGNORECASE)
    if command:
        text = f"{command.group(1)} {command.group(2)}"
    return text if len(text) <= 160 else text[:157] + "..."


class optional_build_ext(build_ext):
    """build_ext that cythonizes first and, unless the compiled core is
    required, turns any failure into one warning and a pure install."""

    _gave_up = False

    def run(self):
        if not self.extensions:
            return
        try:
            self._cythonize()
            super().run()
        except Exception as exc:
            self._give_up(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._give_up(exc)

    def get_outputs(self):
        # Nothing was built: claim no output, so the install does not look
        # for a missing _core.so.
        return [] if self._gave_up else super().get_outputs()

    def _cythonize(self):
        try:
            from Cython.Build import cythonize
        except ImportError as exc:
            raise RuntimeError(f"Cython is not installed ({exc})") from exc
        # The directives sit on the first line of _core.pyx; language_level
        # is repeated here so that no Cython version warns about it.
        generated = cythonize(
            self.extensions,
            compiler_directives={"language_level": "3"},
            quiet=True,
        )
        # Keep the Extension objects that finalize_options() prepared (they
        # carry setuptools' private attributes); take only the .c sources.
        sources = {ext.name: ext.sources for ext in generated}
        for ext in self.extensions:
            ext.sources = sources[ext.name]

    def _give_up(self, exc):
        if REQUIRE_EXTENSIONS:
            raise exc
        if not self._gave_up:
            self._gave_up = True
            print(
                "WARNING: dogpile's compiled core was not built "
                f"({type(exc).__name__}: {_one_line(exc)}); installed the pure-Python "
                "implementation instead (DOGPILE_REQUIRE_EXTENSIONS=1 makes this an error)",
                file=sys.stderr,
                flush=True,
            )


def extensions():
    # build_backend/dogpile_build.py asks for Cython on the same condition.
    if NO_EXTENSIONS or sys.implementation.name != "cpython":
        return []
    return [
        Extension(
            "dogpile._core",
            ["src/dogpile/_core.pyx"],
            depends=["src/dogpile/_native_lock.h", "src/dogpile/_fastcall.h"],
            extra_compile_args=[] if os.name == "nt" else ["-O2"],
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": optional_build_ext})
