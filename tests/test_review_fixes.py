"""Defects found by the review of the cores after issue 12, one test (or
more) each, on both cores.  Each docstring names the failure it guards
against."""

import copy
import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import DEADLINE, run_threads

import dogpile

SRC = os.path.dirname(os.path.dirname(dogpile.__file__))


def _shared_failure(impl, make_exc, n=2):
    """Have one creator raise ``make_exc()`` while ``n - 1`` callers wait
    for it; return what each of the ``n`` callers caught."""
    d = impl.Dogpile(3600)
    both_in = threading.Event()

    def creator():
        assert both_in.wait(DEADLINE), "the waiters never arrived"
        raise make_exc()

    def watch():
        # The waiters are counted before they block.
        end = threading.Event()
        while d.stats()["waited"] < n - 1 and not end.wait(0.001):
            pass
        both_in.set()

    caught = {}

    def caller(i):
        if i == 0:
            watch()
            return
        try:
            with d.acquire(creator):
                pass
        except BaseException as exc:  # kept for the test to inspect
            caught[i] = exc

    run_threads(caller, n + 1)
    assert d.stats()["created"] == 1 and d.stats()["failed"] == 1
    return list(caught.values())


class CodeError(Exception):
    made = 0

    def __init__(self, code=0):
        super().__init__(f"backend failed with code {code}")
        self.code = code
        CodeError.made += 1


def test_a_waiters_copy_does_not_run_the_exceptions_init_again(impl):
    """Guards against copy.copy calling __init__(*args) for each waiter: an
    __init__ formatting its own message gave the waiter "backend failed
    with code backend failed with code 503", and ran once per waiter."""
    CodeError.made = 0
    caught = _shared_failure(impl, lambda: CodeError(503), n=3)
    assert len(caught) == 3
    assert CodeError.made == 1
    assert len({id(exc) for exc in caught}) == 3, "not a copy per waiter"
    for exc in caught:
        assert type(exc) is CodeError
        assert str(exc) == "backend failed with code 503"
        assert exc.args == ("backend failed with code 503",) and exc.code == 503


@pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note() is new in Python 3.11")
def test_a_waiters_copy_keeps_notes_of_its_own(impl):
    """Each waiter's copy has the creator's notes, in a list of its own."""

    def make():
        exc = CodeError(7)
        exc.add_note("while reading the price list")
        return exc

    a, b = _shared_failure(impl, make)
    assert a.__notes__ == b.__notes__ == ["while reading the price list"]
    a.add_note("only a's")
    assert b.__notes__ == ["while reading the price list"]


class PathError(OSError):
    def __init__(self, path):
        super().__init__(errno.ENOENT, "no such file", path)


@pytest.mark.parametrize(
    "make, check",
    [
        (
            lambda: OSError(errno.EACCES, "denied"),
            lambda e: (e.errno, e.strerror) == (errno.EACCES, "denied"),
        ),
        (
            lambda: FileNotFoundError(errno.ENOENT, "gone", "/x"),
            lambda e: (e.errno, e.filename) == (errno.ENOENT, "/x"),
        ),
        (
            lambda: PathError("/etc/p"),
            lambda e: (e.errno, e.strerror, e.filename) == (errno.ENOENT, "no such file", "/etc/p"),
        ),
        (lambda: KeyError("k"), lambda e: e.args == ("k",) and str(e) == "'k'"),
        (lambda: StopIteration(5), lambda e: e.value == 5),
    ],
    ids=["OSError", "FileNotFoundError", "OSError-subclass-init", "KeyError", "StopIteration"],
)
def test_a_waiter_gets_builtin_state_intact(impl, make, check):
    """Exceptions with C-level state (an OSError's errno) reach every
    waiter intact: copied by their own built-in __init__, or, when a
    Python __init__ stands in the way, shared as they are."""
    for exc in _shared_failure(impl, make):
        assert check(exc), (exc, exc.args)


# -- __init__ run again while a creator runs --------------------------------------------------


def test_init_run_again_inside_the_creator_releases_the_lock_taken(impl):
    """Guards against the compiled core releasing whatever lock the
    options named at release time: re-initialised from inside its creator
    (a settings reload), a Dogpile with a custom lock raised LockError
    "released a creation lock it did not hold" and left the custom lock
    held for ever.  Both cores return the value and release the lock they
    took."""
    custom = threading.Lock()
    d = impl.Dogpile(60, lock=custom)

    def creator():
        d.__init__(60)
        return "v"

    with d.acquire(creator) as value:
        assert value == "v"
    assert not custom.locked()


def test_init_run_again_with_a_custom_lock_releases_the_builtin_one(impl):
    """The other way round: the built-in lock was taken, __init__ then
    named a custom one.  The built-in lock is released (a later caller
    gets it at once) and the custom one is never released unheld."""
    custom = threading.Lock()
    d = impl.Dogpile(60)

    def creator():
        d.__init__(60, lock=custom)
        return "v"

    with d.acquire(creator) as value:
        assert value == "v"
    assert not custom.locked()
    d.__init__(60, wait_timeout=DEADLINE)
    assert d.get(lambda: "again") == "again"
    assert d.stats()["waited"] == 0, "the built-in lock was still held"


# -- fork while a NameRegistry creator runs ---------------------------------------------------


def run_child(impl, body):
    """Run ``body`` in a fresh interpreter with ``m`` bound to the
    implementation module; return its last line of output."""
    script = f"import dogpile.{impl.__name__.split('.')[-1]} as m\n" + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", script],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
    )
    if proc.returncode < 0:
        pytest.fail(f"child killed by {signal.Signals(-proc.returncode).name}:\n{proc.stderr}")
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout.strip().splitlines()[-1]


def test_a_forked_child_can_use_a_registry_whose_creator_was_running(impl):
    """Guards against a forked child hanging in NameRegistry.get: a parent
    thread was inside the registry's creator at fork, holding the
    registry-wide lock, which the child inherited held for ever.  The
    child (killed by an alarm if it hangs) gets its object."""
    out = run_child(
        impl,
        """
        import os, signal, threading, warnings

        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        inside, finish = threading.Event(), threading.Event()

        class Obj:
            pass

        def creator(key):
            if key == "slow":
                inside.set()
                finish.wait(10)
            return Obj()

        reg = m.NameRegistry(creator)
        kept = []
        t = threading.Thread(target=lambda: kept.append(reg.get("slow")))
        t.start()
        assert inside.wait(10)
        pid = os.fork()
        if pid == 0:
            signal.alarm(5)
            got = reg.get("other")
            again = reg.get("other")
            os._exit(0 if isinstance(got, Obj) and got is again else 3)
        _, status = os.waitpid(pid, 0)
        finish.set()
        t.join(10)
        assert kept and not t.is_alive()
        if os.WIFSIGNALED(status):
            print("child killed by", signal.Signals(os.WTERMSIG(status)).name)
        else:
            print("child exit", os.WEXITSTATUS(status))
        """,
    )
    assert out == "child exit 0"


# -- a Lock whose __init__ never ran ----------------------------------------------------------


def _unready_locks(impl):
    class Skips(impl.Lock):
        def __init__(self):
            pass

    return [(impl.Lock.__new__(impl.Lock), "Lock"), (Skips(), "Skips")]


def test_a_lock_built_without_init_gives_the_same_clear_error(impl):
    """Guards against Lock.__new__(Lock) reading expiretime 0.0 and
    raising "value_and_created_fn must be callable" (compiled) against an
    AttributeError (twin): both read a nan expiretime and refuse to be
    used with the RuntimeError an uninitialised Dogpile gives."""
    for lock, name in _unready_locks(impl):
        assert lock.expiretime != lock.expiretime
        with pytest.raises(
            RuntimeError,
            match=rf"^this {name} was never initialised: Lock\.__init__\(\) did not run "
            r"\(a subclass's __init__ must call super\(\)\.__init__\(mutex, creator, ",
        ):
            with lock:
                pass


def test_a_lock_built_without_init_works_once_given_everything(impl):
    """As with a Dogpile, a Lock given its attributes (expiretime last) by
    hand works; one given all but the expiretime is still refused."""
    for lock, _ in _unready_locks(impl):
        lock.mutex = threading.Lock()
        lock.creator = lambda: ("made", 1e12)
        lock.value_and_created_fn = lambda: ("stale", 1.0)
        lock.async_creator = None
        with pytest.raises(RuntimeError, match="was never initialised"):
            with lock:
                pass
        assert not lock.mutex.locked()
        lock.expiretime = 10
        with lock as value:
            assert value == "made"
        assert lock.expiretime == 10.0 and not lock.mutex.locked()
        assert impl.Lock(lock.mutex, lock.creator, lock.value_and_created_fn, 10).expiretime == 10


@pytest.mark.parametrize("how", [copy.copy, lambda o: pickle.loads(pickle.dumps(o))])
def test_a_copy_of_a_lock_built_without_init_is_as_unready(impl, how):
    """Guards against the compiled core copying such a Lock into a working
    one with expiretime 0.0 (its __reduce__ called Lock(..., 0.0, ...)):
    in both cores the copy is refused use as the original is."""
    lock = impl.Lock.__new__(impl.Lock)
    lock.creator = len
    again = how(lock)
    assert type(again) is impl.Lock and again.creator is len
    assert again.expiretime != again.expiretime
    with pytest.raises(RuntimeError, match="this Lock was never initialised"):
        with again:
            pass
