"""The public surface of ``import dogpile``: names, the old 0.2.2 import
paths, the README example, and the choice of implementation."""

import os
import subprocess
import sys
import threading

import pytest
from conftest import DEADLINE, run_threads

import dogpile

PUBLIC = [
    "Dogpile",
    "SyncReaderDogpile",
    "NeedRegenerationException",
    "NameRegistry",
    "ReadWriteMutex",
    "LockError",
    "Lock",
    "__version__",
    "IMPLEMENTATION",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name(name):
    assert hasattr(dogpile, name)
    assert name in dogpile.__all__


def test_version_and_implementation_are_strings():
    assert isinstance(dogpile.__version__, str) and dogpile.__version__
    assert dogpile.IMPLEMENTATION in ("python", "cython")


def test_chosen_classes_match_implementation():
    """IMPLEMENTATION must describe the classes actually exported."""
    module = {"python": "dogpile._core_py", "cython": "dogpile._core"}[dogpile.IMPLEMENTATION]
    for name in ("Dogpile", "SyncReaderDogpile", "Lock", "NameRegistry", "ReadWriteMutex"):
        assert getattr(dogpile, name).__module__ == module, name


def test_load_core_gives_the_chosen_core_and_the_twin_by_name():
    """The one loader ``import dogpile``, the demo's --pure and the tests'
    impl fixture share."""
    chosen = dogpile._load_core(dogpile.IMPLEMENTATION)
    assert chosen.Dogpile is dogpile.Dogpile
    assert dogpile._load_core("python").__name__ == "dogpile._core_py"


def test_load_core_names_a_bad_implementation_and_the_good_ones():
    with pytest.raises(ValueError) as info:
        dogpile._load_core("pypy")
    message = str(info.value)
    assert "'pypy'" in message and "'cython'" in message and "'python'" in message


def test_exceptions_are_exceptions():
    assert issubclass(dogpile.NeedRegenerationException, Exception)
    assert issubclass(dogpile.LockError, Exception)


def test_old_import_paths_give_the_same_objects():
    from dogpile.dogpile import Dogpile, NeedRegenerationException, SyncReaderDogpile
    from dogpile.nameregistry import NameRegistry
    from dogpile.readwrite_lock import LockError, ReadWriteMutex

    assert Dogpile is dogpile.Dogpile
    assert SyncReaderDogpile is dogpile.SyncReaderDogpile
    assert NeedRegenerationException is dogpile.NeedRegenerationException
    assert NameRegistry is dogpile.NameRegistry
    assert ReadWriteMutex is dogpile.ReadWriteMutex
    assert LockError is dogpile.LockError


def test_readme_0_2_2_example(impl):
    """The dogpile 0.2.2 README, nearly verbatim: the creator stores the
    resource in a list and returns nothing.  No caller may reach the
    resource before the first creation has finished."""

    class Resource:
        def __init__(self):
            self.uses = 0

        def do_something(self):
            self.uses += 1

    the_resource = [None]
    created = []

    def some_creation_function():
        created.append(1)
        the_resource[0] = Resource()

    def use_the_resource():
        the_resource[0].do_something()

    dogpile_lock = impl.Dogpile(3600)

    with dogpile_lock.acquire(some_creation_function):
        use_the_resource()
    with dogpile_lock.acquire(some_creation_function):
        use_the_resource()
    assert created == [1]
    assert the_resource[0].uses == 2


def test_readme_example_concurrent_first_use(impl):
    """Threads arriving together: one creates, the rest wait for it, and
    none sees the empty slot."""
    the_resource = [None]
    created = []
    seen = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def some_creation_function():
        created.append(1)
        the_resource[0] = object()

    d = impl.Dogpile(3600)

    def worker(_):
        barrier.wait(DEADLINE)
        with d.acquire(some_creation_function):
            with lock:
                seen.append(the_resource[0])

    run_threads(worker, 8)
    assert created == [1]
    assert len(seen) == 8
    assert all(s is not None and s is seen[0] for s in seen)


CHECK_IMPLEMENTATION = (
    "import dogpile; print(dogpile.IMPLEMENTATION, dogpile.Dogpile.__module__)"
)


def _run_child(no_extensions):
    env = dict(os.environ)
    env.pop("DOGPILE_NO_EXTENSIONS", None)
    if no_extensions is not None:
        env["DOGPILE_NO_EXTENSIONS"] = no_extensions
    # The child imports the same dogpile as this process (source tree or
    # installed), whatever the working directory.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(dogpile.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_parent, env.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_IMPLEMENTATION],
        env=env,
        capture_output=True,
        text=True,
        timeout=3 * DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_no_extensions_env_forces_python():
    assert _run_child("1") == ["python", "dogpile._core_py"]


@pytest.mark.c_extension
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_default_import_is_cython(value):
    """After a normal install the compiled core must win; an empty
    DOGPILE_NO_EXTENSIONS does not count as set."""
    assert _run_child(value) == ["cython", "dogpile._core"]
