"""One command for every supported Python: ``nox`` (``pip install nox``).

    nox -s tests              # the suite on every supported CPython found
    nox -s tests-3.9 tests-3.13
    nox -s lint               # mypy --strict and ruff, as configured in pyproject.toml
    nox -s check_wheel        # scripts/check_wheel.sh: sdist, repaired wheel, pure wheel

Interpreters come from PATH and from pyenv (``~/.pyenv/versions/3.X.*``,
or ``$PYENV_ROOT``), newest patch release first; nox never downloads one.
A version that is not found is skipped, or is an error with
``--error-on-missing-interpreters`` (the default when ``CI`` is set).
Where no 3.14 or 3.15 is installed (this machine), scripts/newest_pythons.sh
runs the same suite on Debian's, in a root of their own.

Each test session builds an sdist from the working tree, a wheel from that
sdist with ``DOGPILE_REQUIRE_EXTENSIONS=1`` (in a clean directory, so no
stale ``build/`` can leak into it, and a failed compile fails the session
instead of quietly testing only the pure-Python twin), and runs the suite
against that wheel installed in the session's venv.
"""

import glob
import os
import re
import shutil
import sys
import tarfile

import nox

# The supported versions: the classifiers in pyproject.toml, its
# cibuildwheel selection and the README say the same (tests/test_packaging.py).
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"
nox.options.download_python = "never"
nox.options.reuse_existing_virtualenvs = False


def _add_pyenv_to_path() -> None:
    """Put each pyenv CPython 3.X (newest patch) on PATH as python3.X."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = {}
    for exe in glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3.*")):
        match = re.fullmatch(r"python(3\.\d+)", os.path.basename(exe))
        version = os.path.basename(os.path.dirname(os.path.dirname(exe)))
        if not match or not re.fullmatch(r"3\.\d+\.\d+", version):
            continue  # python3.X-config, a free-threaded or named build
        patch = tuple(int(part) for part in version.split("."))
        if match.group(1) not in found or patch > found[match.group(1)][0]:
            found[match.group(1)] = (patch, os.path.dirname(exe))
    dirs = [found[v][1] for v in PYTHONS if v in found]
    os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


_add_pyenv_to_path()

# The newest supported CPython on this machine: the checks' findings do not
# depend on it (mypy's target is set in pyproject.toml), so lint need not
# wait for a 3.15 on the PATH.
LINT_PYTHON = next((v for v in reversed(PYTHONS) if shutil.which(f"python{v}")), PYTHONS[-1])


def _wheel_from_sdist(session: nox.Session) -> str:
    """Build an sdist of the working tree, then a wheel from that sdist with
    the compiled core required; both into a fresh directory.  (No pip in
    between: pip would cache the wheel under the sdist's path and serve a
    stale one to the next run.)"""
    out = os.path.join(session.create_tmp(), "dist")
    shutil.rmtree(out, ignore_errors=True)
    session.install("build")
    session.run("python", "-m", "build", "--sdist", "--outdir", out, silent=True)
    (sdist,) = glob.glob(os.path.join(out, "*.tar.gz"))
    # Unpacked here: the build that installs on 3.9 cannot build from a
    # .tar.gz itself.
    unpacked = os.path.join(out, "sdist")
    with tarfile.open(sdist) as tar:
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(unpacked, **extra)
    (tree,) = glob.glob(os.path.join(unpacked, "dogpile-*"))
    session.run(
        "python",
        "-m",
        "build",
        "--wheel",
        "--outdir",
        out,
        tree,
        env={"DOGPILE_REQUIRE_EXTENSIONS": "1", "DOGPILE_NO_EXTENSIONS": None},
        silent=True,
    )
    (wheel,) = glob.glob(os.path.join(out, "*.whl"))
    return wheel


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against the compiled wheel built from an sdist."""
    wheel = _wheel_from_sdist(session)
    session.install(f"{wheel}[test]")
    session.run(
        "python",
        "-c",
        "import dogpile, sys; print(sys.version.split()[0], dogpile.__file__, "
        "dogpile.IMPLEMENTATION); sys.exit(dogpile.IMPLEMENTATION != 'cython')",
    )
    # From the repository root: src/ is not on sys.path (src layout), so the
    # installed package is the one under test.
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"DOGPILE_NO_EXTENSIONS": None},
    )


@nox.session(python=LINT_PYTHON)
def lint(session: nox.Session) -> None:
    """mypy --strict on the package and examples/, ruff check on everything."""
    pyproject = nox.project.load_toml("pyproject.toml")
    session.install(*pyproject["project"]["optional-dependencies"]["lint"])
    session.run("mypy")  # files, strictness and overrides: [tool.mypy]
    session.run("ruff", "check", ".")


@nox.session(python=False)
def check_wheel(session: nox.Session) -> None:
    """scripts/check_wheel.sh with the interpreter running nox."""
    session.run("bash", "scripts/check_wheel.sh", env={"PYTHON": sys.executable})


@nox.session(name="dogpile_cache", python=LINT_PYTHON)
def dogpile_cache(session: nox.Session) -> None:
    """dogpile.cache on this project's Lock, in a venv of its own: the real
    dogpile.cache from PyPI installed first, this project's compiled wheel
    over it (so its ``dogpile/__init__.py`` wins, and dogpile.cache's region
    takes ``Lock`` from it).  tests/test_with_dogpile_cache.py runs twice,
    since dogpile.cache's region binds the Lock at import: on the compiled
    core, then with ``DOGPILE_NO_EXTENSIONS=1`` on the Python twin; it needs
    the redis-server that ``DOGPILE_REDIS_URL`` names.  Then
    scripts/dogpile_cache_installs.py: each install order, uninstall and
    upgrade, in fresh venvs."""
    wheel = _wheel_from_sdist(session)
    session.install("dogpile.cache[redis]")
    session.install(f"{wheel}[test]")
    test = ["python", "-m", "pytest", "-p", "no:cacheprovider", "tests/test_with_dogpile_cache.py"]
    require = {"DOGPILE_REQUIRE_DOGPILE_CACHE": "1", "DOGPILE_REQUIRE_REDIS": "1"}
    session.run(
        *test,
        *session.posargs,
        env={**require, "DOGPILE_NO_EXTENSIONS": None, "DOGPILE_EXPECT_IMPLEMENTATION": "cython"},
    )
    session.run(
        *test,
        *session.posargs,
        env={**require, "DOGPILE_NO_EXTENSIONS": "1", "DOGPILE_EXPECT_IMPLEMENTATION": "python"},
    )
    session.run("python", "scripts/dogpile_cache_installs.py", wheel)
@nox.session(python="3.11")
def redis_oldest(session: nox.Session) -> None:
    """The Redis and mutex tests against the oldest redis-py the package
    accepts (the ``redis>=X.Y`` of the redis extra in pyproject.toml, pinned
    to ``X.Y.*``): its clients differ from today's in what a mutex relies
    on (a single-connection client without a lock, no retry by default, an
    asyncio close() that leaves the pool open)."""
    pyproject = nox.project.load_toml("pyproject.toml")
    (oldest,) = [
        r for r in pyproject["project"]["optional-dependencies"]["redis"] if r.startswith("redis>=")
    ]
    pin = "redis==" + oldest.split(">=", 1)[1] + ".*"
    wheel = _wheel_from_sdist(session)
    session.install(f"{wheel}[test]", pin)
    session.run(
        "python",
        "-c",
        "import dogpile, redis, sys; print('redis', redis.__version__, dogpile.IMPLEMENTATION); "
        "sys.exit(dogpile.IMPLEMENTATION != 'cython')",
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_redis_mutex.py",
        "tests/test_mutexes.py",
        "tests/test_aio.py",
        "tests/test_cross_process.py",
        "tests/test_acquire_or_wait.py",
        # Its asyncio tests skip: redis.asyncio.cluster came in redis-py 4.3.
        "tests/test_redis_cluster.py",
        "tests/test_redis_acl.py",
        "tests/test_redis_pool.py",
        "tests/test_redis_sentinel.py",
        "tests/test_redis_acl_advice.py",
        "tests/test_shared_xread.py",
        *session.posargs,
        env={"DOGPILE_NO_EXTENSIONS": None},
    )
