"""Every behaviour test runs against both implementations through the
``impl`` fixture: the compiled core and its pure-Python twin.

The compiled run is never skipped silently.  If ``dogpile._core`` does not
import, the compiled tests fail, unless the pure install was asked for
(``DOGPILE_NO_EXTENSIONS`` set, or ``--no-c-extensions``), in which case
they are deselected and the summary says so.
"""

import gc
import os
import threading
import warnings

import pytest

# Every wait in the suite has this deadline: a broken lock fails a test
# instead of hanging the run.
DEADLINE = 10.0


def pytest_addoption(parser):
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="run only the pure-Python implementation",
    )


def _pure_only(config):
    return bool(config.getoption("--no-c-extensions") or os.environ.get("DOGPILE_NO_EXTENSIONS"))


def pytest_collection_modifyitems(config, items):
    if not _pure_only(config):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("c_extension") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True, scope="module")
def _collect_the_modules_garbage():
    """Collect what a test module left for the garbage collector at its end.

    Tests make redis clients of their own and drop them; a connection in a
    reference cycle is freed only by the collector, and Python 3.14's
    collector runs later than earlier ones: its socket's ResourceWarning
    then surfaced in the first test of another module that collects (an
    error under filterwarnings=error), blamed on a test that made no
    client.  Collected here, where a dropped client of the tests is not an
    error of the code under test."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


IMPLEMENTATIONS = [
    pytest.param("python", id="python"),
    pytest.param("cython", id="cython", marks=pytest.mark.c_extension),
]


@pytest.fixture(params=IMPLEMENTATIONS, scope="session")
def impl(request):
    """The implementation module under test: ``dogpile._core_py`` or
    ``dogpile._core``.  Both expose Dogpile, SyncReaderDogpile, Lock,
    NameRegistry and ReadWriteMutex; the exceptions are shared and live on
    ``dogpile`` itself.  Loaded by name through the package's own loader,
    the one ``import dogpile`` and the demo's ``--pure`` use."""
    import dogpile

    return dogpile._load_core(request.param)


def run_threads(target, count, *args):
    """Start ``count`` threads running ``target(i, *args)``, join each with
    a deadline, and re-raise the first exception any of them raised."""
    errors = []

    def wrap(i):
        try:
            target(i, *args)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    alive = [t for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} of {count} threads still running after {DEADLINE}s"
    if errors:
        raise errors[0]


class CountingLock:
    """A threading.Lock that counts its calls, and lets a test wait until a
    number of callers have entered a blocking ``acquire()``.  Like
    threading.Lock, any thread may release it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self.attempts = 0  # every acquire() call
        self.blocking_attempts = 0  # acquire() calls that may block
        self.acquired = 0  # acquire() calls that got the lock
        self.released = 0

    def acquire(self, blocking=True, timeout=-1):
        with self._cond:
            self.attempts += 1
            if blocking:
                self.blocking_attempts += 1
            self._cond.notify_all()
        if blocking and timeout == -1:
            # A lock leaked by the code under test fails the test on the
            # deadline instead of hanging the run.
            got = self._lock.acquire(True, DEADLINE)
            assert got, f"blocking acquire() still waiting after {DEADLINE}s: lock leaked?"
        else:
            got = self._lock.acquire(blocking, timeout)
        if got:
            with self._cond:
                self.acquired += 1
        return got

    def release(self):
        with self._cond:
            self.released += 1
        self._lock.release()

    def locked(self):
        return self._lock.locked()

    def wait_for_blocking_attempts(self, n):
        with self._cond:
            return self._cond.wait_for(lambda: self.blocking_attempts >= n, DEADLINE)
