"""The defects of issue 12, one test (or more) each, on both cores and, where
it applies, on dogpile.aio.  Each docstring names the failure it guards
against.  Anything that crashed the interpreter runs in a child process, so
that the old behaviour fails the test instead of killing the session.
"""

import copy
import gc
import json
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from conftest import DEADLINE, CountingLock, run_threads

import dogpile
from dogpile import NeedRegenerationException, aio

SRC = os.path.dirname(os.path.dirname(dogpile.__file__))


class Boom(Exception):
    pass


def wait_until(predicate, what):
    end = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < end, f"still waiting for {what} after {DEADLINE}s"
        time.sleep(0.001)


def run_child(impl, body):
    """Run ``body`` in a fresh interpreter with ``m`` bound to the
    implementation module; return the JSON object it prints last.  A child
    killed by a signal (a segfault) fails the test with the signal's name."""
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
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- 1. objects built without __init__ -------------------------------------------------------


def test_a_dogpile_built_without_init_raises_instead_of_crashing(impl):
    """Guards against signal 11 from plain Python: a SyncReaderDogpile
    subclass that skips super().__init__(), a Dogpile.__new__() never
    initialised, and an acquisition made with type(acq)(), each used; each
    gives a Python exception, the same in both cores."""
    result = run_child(
        impl,
        """
        import json

        class Skips(m.SyncReaderDogpile):
            def __init__(self):
                pass

        class PlainSkips(m.Dogpile):
            def __init__(self):
                pass

        out = {}

        def attempt(name, fn):
            try:
                fn()
            except Exception as exc:
                out[name] = [type(exc).__name__, str(exc)]
            else:
                out[name] = "no error"

        def write_lock():
            with Skips().acquire_write_lock():
                pass

        def read(d):
            with d.acquire(lambda: "v") as value:
                return value

        def acquisition_by_hand():
            with type(m.Dogpile(1).acquire(len))():
                pass

        attempt("write_lock", write_lock)
        attempt("sync_reader_acquire", lambda: read(Skips()))
        attempt("plain_acquire", lambda: read(PlainSkips()))
        attempt("new_acquire", lambda: read(m.Dogpile.__new__(m.Dogpile)))
        attempt("acquisition_by_hand", acquisition_by_hand)
        print(json.dumps(out))
        """,
    )
    message = (
        "was never initialised: Dogpile.__init__() did not run (a subclass's __init__ "
        "must call super().__init__(expiretime, ...))"
    )
    for name in ("write_lock", "sync_reader_acquire", "plain_acquire", "new_acquire"):
        kind, text = result[name]
        assert kind == "RuntimeError" and text.endswith(message), (name, result[name])
    assert result["acquisition_by_hand"][0] == "TypeError"


def test_a_dogpile_given_its_expiretime_later_works(impl):
    """The state of a Dogpile is whole before __init__ runs: a subclass that
    skips __init__ but sets an expiretime has a working Dogpile (in a
    child: the compiled core used to crash on the write lock)."""
    result = run_child(
        impl,
        """
        import json

        class Late(m.SyncReaderDogpile):
            def __init__(self):
                self.expiretime = 60

        d = Late()
        before = d.stats()["created"]
        with d.acquire(lambda: "v") as value:
            pass
        with d.acquire_write_lock():
            pass
        print(json.dumps([before, value, d.stats()["created"]]))
        """,
    )
    assert result == [0, "v", 1]


def test_the_twin_still_shows_each_constructors_signature():
    """The base class that gives the twin's instances their state before
    __init__ must not hide the signature of __init__ from inspect."""
    import inspect

    from dogpile import _core_py

    for cls in (_core_py.Dogpile, _core_py.SyncReaderDogpile, _core_py.NameRegistry):
        assert inspect.signature(cls) == inspect.signature(cls.__init__).replace(
            parameters=list(inspect.signature(cls.__init__).parameters.values())[1:]
        )
    assert "expiretime" in inspect.signature(_core_py.Dogpile).parameters


@pytest.mark.c_extension
def test_typed_arguments_of_the_compiled_core_refuse_none():
    """Guards against a typed cdef argument that accepts None and is then
    dereferenced: _WriteLock(None), _create_in_background(None, ...) and a
    _Handoff made by hand."""
    result = run_child(
        __import__("dogpile._core", fromlist=["_core"]),
        """
        import json
        out = []
        for make in (
            lambda: m._WriteLock(None),
            lambda: m._create_in_background(None, len, None, None),
            lambda: m._Handoff().release_logged(),
            lambda: m._create_in_background(m._Handoff(), len, None, None),
        ):
            try:
                make()
                out.append("no error")
            except Exception as exc:
                out.append(type(exc).__name__)
        print(json.dumps(out))
        """,
    )
    # release_logged() logs its error (it runs as a future's callback);
    # _create_in_background() with no Dogpile has nothing to do.
    assert result == ["TypeError", "TypeError", "no error", "no error"]


# -- 3. cycles through a kept acquisition ----------------------------------------------------


def test_a_kept_acquisition_in_a_cycle_is_collected(impl):
    """Guards against a no_gc acquisition: an object keeping
    ``self.read = self.dogpile.acquire(self.load)`` (a context manager
    holding a bound method of the object) was never collected."""

    class Report:
        def __init__(self):
            self.dogpile = impl.Dogpile(60)
            self.read = self.dogpile.acquire(self.load)

        def load(self):
            return "report"

    report = Report()
    with report.read as value:
        assert value == "report"
    gone = weakref.ref(report)
    del report
    gc.collect()
    assert gone() is None, "a cycle through a kept acquisition was not collected"


# -- 4. fork -------------------------------------------------------------------------------


def test_a_forked_child_forgets_the_parents_pending_creation(impl):
    """Guards against a dead thread's creation attempt surviving fork: a
    parent thread was inside a creator at fork time (holding a custom lock
    that stays held in the child); in the child a new thread with the same
    ident waited for the value and got LockError "called again from inside
    its own creator" instead of waiting (here: LockTimeout).  glibc often
    gives the new thread the dead thread's stack and so its ident, but not
    always (Debian sid's did not): the child takes that ident by replacing
    get_ident, which both cores look up at every call."""
    result = run_child(
        impl,
        """
        import json, os, threading, warnings
        from dogpile import LockError, LockTimeout

        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        d = m.Dogpile(3600, lock=threading.Lock(), wait_timeout=0.2)
        inside, finish = threading.Event(), threading.Event()
        owner = {}

        def creator():
            owner["ident"] = threading.get_ident()
            inside.set()
            finish.wait(5)
            return "parent's value"

        def parent_reader():
            with d.acquire(creator):
                pass

        t = threading.Thread(target=parent_reader)
        t.start()
        assert inside.wait(5)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            import _thread
            got = {}
            # The dead creator's ident, as a reused stack would give it to a
            # new thread; restored before anything else asks who is running.
            real = _thread.get_ident
            _thread.get_ident = threading.get_ident = lambda: owner["ident"]
            try:
                got["same_ident"] = threading.get_ident() == owner["ident"]
                with d.acquire(lambda: "child's value"):
                    got["outcome"] = "value"
            except Exception as exc:
                got["outcome"] = type(exc).__name__
            finally:
                _thread.get_ident = threading.get_ident = real
            os.write(w, json.dumps(got).encode())
            os._exit(0)
        os.close(w)
        child = json.loads(os.read(r, 4096))
        os.waitpid(pid, 0)
        finish.set()
        t.join(5)
        print(json.dumps(child))
        """,
    )
    assert result["same_ident"], "the child thread did not take the dead thread's ident"
    assert result["outcome"] == "LockTimeout"


# -- 5. one exception object raised in every waiter ------------------------------------------


def _frames(tb):
    names = []
    while tb is not None:
        names.append((tb.tb_frame.f_code.co_name, tb.tb_frame.f_locals.get("me")))
        tb = tb.tb_next
    return names


def test_each_waiter_sees_only_the_creators_traceback_and_its_own(impl):
    """Guards against one exception object raised in 20 threads: its
    traceback grew by every waiter's frames (over 100), kept their locals
    alive, and showed other threads' stacks.  Each waiter's traceback is
    its own frames, then the creator's."""
    d = impl.Dogpile(3600)
    n = 20

    def creator():
        wait_until(lambda: d.stats()["waited"] == n - 1, "waiters")
        raise Boom("backend down")

    seen = {}

    def waiter(me):
        try:
            with d.acquire(creator):
                pass
        except Boom as exc:
            seen[me] = (exc, _frames(exc.__traceback__))

    run_threads(waiter, n)
    assert len(seen) == n
    assert d.stats()["created"] == 1 and d.stats()["failed"] == 1
    for me, (exc, frames) in seen.items():
        assert str(exc) == "backend down"
        own = [owner for name, owner in frames if name == "waiter"]
        assert own == [me], f"waiter {me} sees the frames of waiters {own}"
        assert frames[-1][0] == "creator"
        assert len(frames) < 30, f"a traceback of {len(frames)} frames"


def test_a_waiters_copy_keeps_cause_context_and_attributes(impl):
    """The copy each waiter raises is the creator's exception in all but
    identity: type, args, attributes, cause and context."""
    d = impl.Dogpile(3600)

    class Detailed(Exception):
        pass

    def creator():
        wait_until(lambda: d.stats()["waited"] == 1, "the waiter")
        try:
            raise KeyError("inner")
        except KeyError as inner:
            exc = Detailed("outer", 42)
            exc.detail = "kept"
            raise exc from inner

    got = {}

    def reader(i):
        try:
            with d.acquire(creator):
                pass
        except Detailed as exc:
            got[i] = exc

    run_threads(reader, 2)
    a, b = got.values()
    for exc in (a, b):
        assert exc.args == ("outer", 42) and exc.detail == "kept"
        assert isinstance(exc.__cause__, KeyError) and exc.__suppress_context__


# -- 6. waiters that arrive before the creator starts ----------------------------------------


def test_a_waiter_arriving_during_the_recheck_shares_the_outcome(impl):
    """Guards against an attempt published only when the creator starts: a
    caller that arrived while the holder re-read value_and_created_fn under
    the lock waited, then ran the failing creator a second time."""
    d = impl.Dogpile(3600)
    rereading, go_on = threading.Event(), threading.Event()
    reads = []
    calls = []

    def value_and_created():
        reads.append(1)
        if len(reads) == 2:  # the holder's re-read, under the lock
            rereading.set()
            assert go_on.wait(DEADLINE)
        raise NeedRegenerationException()

    def creator():
        calls.append(1)
        raise Boom("no value")

    errors = []

    def reader(i):
        if i == 1:
            assert rereading.wait(DEADLINE)
        try:
            with d.acquire(creator, value_and_created_fn=value_and_created):
                pass
        except Boom as exc:
            errors.append(exc)

    def release():
        assert rereading.wait(DEADLINE)
        wait_until(lambda: d.stats()["waited"] == 1, "the second caller waiting")
        go_on.set()

    t = threading.Thread(target=release, daemon=True)
    t.start()
    run_threads(reader, 2)
    t.join(DEADLINE)
    assert calls == [1], "the second caller ran the creator again"
    assert len(errors) == 2


class _PausingLock:
    """A lock whose first successful acquire() pauses after taking it,
    before returning: the holder has the lock but has not yet published its
    attempt (a thread switch there in the twin; Python code in a custom
    lock's acquire in either core)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.taken, self.go_on, self.blocking = (threading.Event() for _ in range(3))
        self._paused = False

    def acquire(self, blocking=True, timeout=-1):
        if blocking:
            self.blocking.set()
            got = self._lock.acquire(True, DEADLINE if timeout == -1 else timeout)
            assert got, "blocking acquire() still waiting: lock leaked?"
            return got
        got = self._lock.acquire(False)
        if got and not self._paused:
            self._paused = True
            self.taken.set()
            assert self.go_on.wait(DEADLINE)
        return got

    def release(self):
        self._lock.release()


def test_a_waiter_arriving_before_the_attempt_is_published_shares_the_failure(impl):
    """Guards against a caller that came between the holder's taking the
    lock and its publishing the attempt: it waited with no attempt recorded,
    then ran the failing creator a second time."""
    lock = _PausingLock()
    d = impl.Dogpile(3600, lock=lock)
    calls, errors = [], []

    def creator():
        calls.append(1)
        raise Boom("no value", len(calls))

    def caller(i):
        if i == 1:
            assert lock.taken.wait(DEADLINE)
        try:
            d.get(creator)
        except Boom as exc:
            errors.append(exc)

    def release():
        assert lock.blocking.wait(DEADLINE)  # the second caller waits
        lock.go_on.set()

    t = threading.Thread(target=release, daemon=True)
    t.start()
    run_threads(caller, 2)
    t.join(DEADLINE)
    assert calls == [1], "the waiter ran the failing creator again"
    assert [e.args for e in errors] == [("no value", 1)] * 2
    assert d.stats()["failed"] == 1 and d.stats()["waited"] == 1
    assert not lock._lock.locked()
    # A caller that comes after the failure tries again.
    with pytest.raises(Boom):
        d.get(creator)
    assert calls == [1, 1]


def test_aio_a_waiter_arriving_during_the_recheck_shares_the_outcome(classes):
    """The same on dogpile.aio (which got it right already)."""
    import asyncio

    async def main():
        d = classes.AsyncDogpile(3600)
        rereading, go_on = asyncio.Event(), asyncio.Event()
        reads, calls = [], []

        async def value_and_created():
            reads.append(1)
            if len(reads) == 2:
                rereading.set()
                await go_on.wait()
            raise NeedRegenerationException()

        async def creator():
            calls.append(1)
            raise Boom("no value")

        async def read():
            async with d.acquire(creator, value_and_created_fn=value_and_created):
                pass

        first = asyncio.ensure_future(read())
        await rereading.wait()
        second = asyncio.ensure_future(read())
        while d.stats()["waited"] < 1:
            await asyncio.sleep(0)
        go_on.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert [type(r) for r in results] == [Boom, Boom]
        assert calls == [1]

    asyncio.run(asyncio.wait_for(main(), DEADLINE))


@pytest.fixture
def classes(impl):
    return aio._build(impl)


# -- 7. a background job that can never run --------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []
        self.event = threading.Event()

    def emit(self, record):
        self.records.append(record)
        self.event.set()


@pytest.fixture
def warnings_logged():
    handler = _Records()
    log = logging.getLogger("dogpile")
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def test_a_background_job_that_cannot_run_is_logged_and_the_value_refreshes(
    impl, warnings_logged
):
    """Guards against a job dropped silently: with a ProcessPoolExecutor the
    job cannot be pickled, so it never runs; the failure was not logged and
    the value never refreshed (only stale reads).  Now a WARNING says so and
    the next caller that finds the value expired creates it in place."""
    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        d = impl.Dogpile(3600, background=executor)
        made = []

        def creator():
            made.append(1)
            return f"value {len(made)}"

        with d.acquire(creator) as value:  # no value yet: made here
            assert value == "value 1"
        d.createdtime = time.time() - 7200
        with d.acquire(creator) as value:  # expired: the job goes to the pool
            assert value == "value 1"
        assert warnings_logged.event.wait(DEADLINE), "the lost job was not logged"
        record = warnings_logged.records[0]
        assert "background creation could not run" in record.getMessage()
        assert record.exc_info is not None
        with d.acquire(creator) as value:
            assert value == "value 2", "the value did not refresh"
        assert d.stats()["created"] == 2 and made == [1, 1]
    finally:
        executor.shutdown(wait=True)


class NeverRuns(Executor):
    """An executor whose jobs are all cancelled before they start (one
    whose queue was dropped at shutdown)."""

    def __init__(self):
        self.submitted = 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        future = Future()
        future.cancel()
        return future


def test_a_cancelled_background_job_is_logged_and_the_value_refreshes(impl, warnings_logged):
    """The same for a job whose future was cancelled before it ran."""
    executor = NeverRuns()
    d = impl.Dogpile(3600, background=executor)
    with d.acquire(lambda: "first"):
        pass
    d.createdtime = time.time() - 7200
    with d.acquire(lambda: "second") as value:
        assert value == "first"
    assert "cancelled before it ran" in warnings_logged.records[0].getMessage()
    with d.acquire(lambda: "third") as value:
        assert value == "third"
    # And the one after goes to the executor again.
    d.createdtime = time.time() - 7200
    with d.acquire(lambda: "fourth") as value:
        assert value == "third"
    assert executor.submitted == 2


# -- 8. KeyboardInterrupt or SystemExit in a creator -----------------------------------------


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_creation_is_taken_over_by_one_waiter(impl, interrupt):
    """Guards against every waiter failing with LockError "abandoned" when
    the creator raised KeyboardInterrupt or SystemExit: one waiter creates,
    and the others share its value (as in dogpile.aio)."""
    lock = CountingLock()
    d = impl.Dogpile(3600, lock=lock)
    calls = []
    outcomes = {}

    def creator():
        calls.append(1)
        if len(calls) == 1:
            assert lock.wait_for_blocking_attempts(3), "not every thread reached the lock"
            raise interrupt()
        return "made"

    def reader(i):
        try:
            with d.acquire(creator) as value:
                outcomes[i] = value
        except BaseException as exc:
            outcomes[i] = type(exc).__name__

    run_threads(reader, 4)
    assert sorted(outcomes.values()) == sorted(["made"] * 3 + [interrupt.__name__])
    assert len(calls) == 2
    assert not lock.locked() and lock.acquired == lock.released


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_a_failure_after_an_interruption_is_shared_too(impl, interrupt):
    """The waiter that took over fails: the others share its failure rather
    than each running the creator once more."""
    lock = CountingLock()
    d = impl.Dogpile(3600, lock=lock)
    calls = []
    outcomes = {}

    def creator():
        calls.append(1)
        if len(calls) == 1:
            assert lock.wait_for_blocking_attempts(3), "not every thread reached the lock"
            raise interrupt()
        raise Boom("second try")

    def reader(i):
        try:
            with d.acquire(creator):
                pass
        except BaseException as exc:
            outcomes[i] = type(exc).__name__

    run_threads(reader, 4)
    assert sorted(outcomes.values()) == sorted(["Boom"] * 3 + [interrupt.__name__])
    assert len(calls) == 2


# -- 9. the two cores agree ------------------------------------------------------------------


BIG = 10**400


def test_an_int_beyond_any_float_is_a_checked_error(impl):
    """Guards against a bare OverflowError (and the twin's Lock accepting
    what the compiled one refused): an int beyond the largest float is a
    ValueError naming the argument, from every constructor and setter."""
    expected = r"must be .*got an int of 1329 bits, beyond the largest float"
    with pytest.raises(ValueError, match="expiretime " + expected):
        impl.Lock(threading.Lock(), len, len, BIG)
    with pytest.raises(ValueError, match="expiretime " + expected):
        impl.Dogpile(BIG)
    d = impl.Dogpile(1)
    with pytest.raises(ValueError, match="expiretime " + expected):
        d.expiretime = BIG
    with pytest.raises(ValueError, match="createdtime " + expected):
        d.createdtime = BIG
    with pytest.raises(ValueError, match="wait_timeout " + expected):
        impl.Dogpile(1, wait_timeout=BIG)
    with pytest.raises(ValueError, match="early_refresh " + expected):
        impl.Dogpile(1, early_refresh=BIG)
    with pytest.raises(ValueError, match="returned by value_and_created_fn " + expected):
        with d.acquire(len, value_and_created_fn=lambda: ("v", BIG)):
            pass
    # The largest int a float holds is still fine.
    assert impl.Lock(threading.Lock(), len, len, 2**1000).expiretime == float(2**1000)


def test_aio_an_int_beyond_any_float_is_a_checked_error(classes):
    with pytest.raises(ValueError, match="expiretime must be"):
        classes.AsyncDogpile(BIG)


@pytest.mark.parametrize("cls", ["Dogpile", "SyncReaderDogpile", "ReadWriteMutex", "NameRegistry"])
@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps])
def test_a_lock_cannot_be_copied_or_pickled(impl, cls, how):
    """Guards against copy.copy(Dogpile) sharing the lock in the twin and
    failing with a Cython message in the compiled core: both refuse."""
    args = {"Dogpile": (1,), "SyncReaderDogpile": (1,), "NameRegistry": (len,)}.get(cls, ())
    with pytest.raises(TypeError, match=f"a {cls} cannot be copied or pickled"):
        how(getattr(impl, cls)(*args))


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_a_dogpile_core_lock_copies_the_same_in_both(impl, how):
    """Lock holds only what it was given: both cores copy and pickle it
    (the compiled one no longer through Cython's generated state code,
    which read past a short state tuple)."""
    lock = impl.Lock(threading.Lock, len, len, 5, None)
    again = how(lock)
    assert type(again) is type(lock) and again.expiretime == 5.0
    assert again.creator is len and again.async_creator is None


@pytest.mark.c_extension
def test_no_generated_pickle_state_code_is_left():
    """Guards against Lock().__setstate_cython__(()) reading past the
    tuple (signal 11): no class of the compiled core has it."""
    from dogpile import _core

    for name in dir(_core):
        assert not name.startswith("__pyx_unpickle"), name
        cls = getattr(_core, name)
        if isinstance(cls, type):
            assert not hasattr(cls, "__setstate_cython__"), name


def test_a_subclass_skipping_init_is_refused_the_same_way(impl):
    """Guards against expiretime 0.0 (compiled) against AttributeError
    (twin) for a Dogpile subclass that skips __init__: the same
    RuntimeError in both, with the properties readable."""

    class Skips(impl.Dogpile):
        def __init__(self):
            pass

    d = Skips()
    assert d.stats() == dict.fromkeys(
        ["fresh", "stale", "created", "waited", "failed", "early", "timeouts"], 0
    )
    assert not d.has_value and d.is_expired and d.createdtime == -1.0
    with pytest.raises(RuntimeError, match="this Skips was never initialised"):
        with d.acquire(len):
            pass
    d.createdtime = time.time()  # a value time does not make it usable
    with pytest.raises(RuntimeError, match="never initialised"):
        with d.acquire(len):
            pass
    assert d.is_expired


@pytest.mark.parametrize("executor", [ThreadPoolExecutor, ProcessPoolExecutor])
def test_an_executor_class_is_refused(impl, executor):
    """Guards against check_executor accepting ThreadPoolExecutor where
    ThreadPoolExecutor() is meant (its submit is a plain function)."""
    with pytest.raises(TypeError, match="not the class .* itself"):
        impl.Dogpile(1, background=executor)
