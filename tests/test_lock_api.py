"""The dogpile.core 0.4 / dogpile.cache API:
``with Lock(mutex, creator, value_and_created_fn, expiretime, async_creator) as value``.

The value lives outside the lock (here: a dict), as in a cache backend."""

import threading
import time

import pytest
from conftest import DEADLINE, CountingLock, run_threads

from dogpile import NeedRegenerationException

LONG_AGO = 7200.0


class Backend:
    """A cache in a dict: ``get`` is the value_and_created_fn, ``creator``
    makes and stores a new value and counts its calls."""

    def __init__(self, value=None, age=None):
        self.store = {}
        self.calls = 0
        self.next_value = "new"
        if value is not None:
            self.store["pair"] = (value, time.time() - age)

    def get(self):
        if "pair" not in self.store:
            raise NeedRegenerationException()
        return self.store["pair"]

    def creator(self):
        self.calls += 1
        self.store["pair"] = (self.next_value, time.time())
        return self.store["pair"]


def test_fresh_value_returned_without_creating(impl):
    backend = Backend("stored", age=5)
    mutex = CountingLock()
    with impl.Lock(mutex, backend.creator, backend.get, 3600) as value:
        assert value == "stored"
    assert backend.calls == 0
    assert mutex.attempts == 0, "a fresh hit must not touch the mutex"


def test_expiretime_none_never_expires(impl):
    backend = Backend("stored", age=10 * LONG_AGO)
    lock = impl.Lock(CountingLock(), backend.creator, backend.get, None)
    assert lock.expiretime is None
    with lock as value:
        assert value == "stored"
    assert backend.calls == 0


def test_missing_value_creates(impl):
    backend = Backend()
    mutex = CountingLock()
    with impl.Lock(mutex, backend.creator, backend.get, 3600) as value:
        assert value == "new"
    assert backend.calls == 1
    assert mutex.acquired == mutex.released == 1
    assert not mutex.locked()
    # Now stored and fresh: no second creation.
    with impl.Lock(mutex, backend.creator, backend.get, 3600) as value:
        assert value == "new"
    assert backend.calls == 1


def test_missing_value_rechecked_under_the_mutex(impl):
    """Another process may have created while this one waited for the
    mutex: value_and_created_fn is asked again before creating."""
    backend = Backend()
    answers = iter(["miss"])

    def get():
        if next(answers, None) == "miss":
            raise NeedRegenerationException()
        return ("made elsewhere", time.time())

    with impl.Lock(CountingLock(), backend.creator, get, 3600) as value:
        assert value == "made elsewhere"
    assert backend.calls == 0


def test_expired_with_mutex_free_creates(impl):
    backend = Backend("old", age=LONG_AGO)
    mutex = CountingLock()
    with impl.Lock(mutex, backend.creator, backend.get, 3600) as value:
        assert value == "new"
    assert backend.calls == 1
    assert mutex.acquired == mutex.released == 1


def test_expired_with_mutex_held_elsewhere_returns_stale_at_once(impl):
    """The test thread holds the mutex for the whole call, so a caller that
    waited for it would never return."""
    backend = Backend("old", age=LONG_AGO)
    mutex = CountingLock()
    got = []

    def caller(_):
        with impl.Lock(mutex, backend.creator, backend.get, 3600) as value:
            got.append(value)

    assert mutex.acquire()
    try:
        run_threads(caller, 1)
    finally:
        mutex.release()
    assert got == ["old"]
    assert backend.calls == 0
    assert mutex.acquired == mutex.released == 1  # only the test's own


def test_async_creator_gets_acquired_mutex_and_releases_it(impl):
    """async_creator is handed the mutex, still held; the stale value comes
    back at once; the Lock must not release the mutex itself (the
    async_creator does, here synchronously)."""
    backend = Backend("old", age=LONG_AGO)
    mutex = threading.Lock()
    handed = []

    def async_creator(m):
        handed.append((m, m.locked()))
        backend.creator()
        m.release()

    with impl.Lock(mutex, backend.creator, backend.get, 3600, async_creator) as value:
        assert value == "old"
    assert len(handed) == 1
    assert handed[0][0] is mutex
    assert handed[0][1] is True, "async_creator got the mutex unlocked"
    assert not mutex.locked()
    assert backend.calls == 1
    with impl.Lock(mutex, backend.creator, backend.get, 3600, async_creator) as value:
        assert value == "new"
    assert len(handed) == 1


def test_async_creator_releasing_from_another_thread(impl):
    """The usual dogpile.cache pattern: async_creator starts a worker that
    regenerates and releases the mutex later.  Until then the mutex stays
    held (the Lock did not release it behind the worker's back), and other
    callers get the stale value without calling async_creator again."""
    backend = Backend("old", age=LONG_AGO)
    mutex = threading.Lock()
    go = threading.Event()
    workers = []
    handed = []

    def async_creator(m):
        handed.append(m)

        def work():
            try:
                assert go.wait(DEADLINE)
                backend.creator()
            finally:
                m.release()

        t = threading.Thread(target=work, daemon=True)
        workers.append(t)
        t.start()

    def lock():
        return impl.Lock(mutex, backend.creator, backend.get, 3600, async_creator)

    try:
        with lock() as value:
            assert value == "old"
        assert handed == [mutex]
        assert mutex.locked(), "the Lock released a mutex it had handed to async_creator"
        with lock() as value:
            assert value == "old"
        assert handed == [mutex]
    finally:
        go.set()
    workers[0].join(DEADLINE)
    assert not workers[0].is_alive()
    assert not mutex.locked()
    assert backend.calls == 1
    with lock() as value:
        assert value == "new"
    assert backend.calls == 1


def test_async_creator_not_used_without_a_value(impl):
    """With nothing stale to return, the caller must create synchronously."""
    backend = Backend()
    mutex = CountingLock()
    handed = []
    with impl.Lock(mutex, backend.creator, backend.get, 3600, handed.append) as value:
        assert value == "new"
    assert handed == []
    assert backend.calls == 1
    assert not mutex.locked()


def test_no_value_many_threads_create_once(impl):
    """16 threads find no value; all wait on the mutex while the creator
    runs (it holds on until they are all there), and each re-checks the
    shared store instead of creating again."""
    backend = Backend()
    mutex = CountingLock()
    barrier = threading.Barrier(16)
    results = []

    def creator():
        assert mutex.wait_for_blocking_attempts(16), "not every thread reached the mutex"
        return backend.creator()

    def worker(_):
        barrier.wait(DEADLINE)
        with impl.Lock(mutex, creator, backend.get, 3600) as value:
            results.append(value)

    run_threads(worker, 16)
    assert backend.calls == 1
    assert results == ["new"] * 16
    assert mutex.acquired == mutex.released == 16
    assert not mutex.locked()


class Boom(Exception):
    pass


@pytest.mark.parametrize("age", [None, LONG_AGO], ids=["missing", "expired"])
def test_creator_raising_releases_mutex(impl, age):
    backend = Backend("old", age=age) if age else Backend()
    mutex = CountingLock()

    def fail():
        raise Boom("backend down")

    with pytest.raises(Boom, match="backend down"):
        with impl.Lock(mutex, fail, backend.get, 3600):
            pass
    assert not mutex.locked()
    assert mutex.acquired == mutex.released == 1
    with impl.Lock(mutex, backend.creator, backend.get, 3600) as value:
        assert value == "new"
    assert backend.calls == 1


def test_value_and_created_fn_non_pair_is_type_error(impl):
    mutex = CountingLock()
    with pytest.raises(TypeError) as info:
        with impl.Lock(mutex, Backend().creator, lambda: "bare value", 3600):
            pass
    message = str(info.value)
    assert "value_and_created_fn" in message
    assert "(value, createdtime) pair" in message
    assert "bare value" in message
    assert not mutex.locked()


def test_value_and_created_fn_non_pair_under_mutex_releases_it(impl):
    mutex = CountingLock()
    answers = iter([("missing", 0), 42])
    with pytest.raises(TypeError, match="value_and_created_fn must return a"):
        with impl.Lock(mutex, Backend().creator, lambda: next(answers), 3600):
            pass
    assert mutex.acquired == mutex.released == 1
    assert not mutex.locked()


def test_creator_non_pair_is_type_error_naming_creator(impl):
    mutex = CountingLock()
    with pytest.raises(TypeError) as info:
        with impl.Lock(mutex, lambda: "bare value", Backend().get, 3600):
            pass
    message = str(info.value)
    assert message.startswith("creator ")
    assert "(value, createdtime) pair" in message
    assert not mutex.locked()
    assert mutex.acquired == mutex.released == 1


@pytest.mark.parametrize(
    "args, exc, message",
    [
        ((Backend().creator, Backend().get, -1), ValueError, ">= 0"),
        ((Backend().creator, Backend().get, "x"), TypeError, "expiretime"),
    ],
)
def test_bad_constructor_arguments(impl, args, exc, message):
    with pytest.raises(exc, match=message):
        impl.Lock(threading.Lock(), *args)


@pytest.mark.parametrize(
    "args, message",
    [
        ((5, Backend().get, 10), "creator must be callable"),
        ((Backend().creator, None, 10), "value_and_created_fn must be callable"),
        ((Backend().creator, Backend().get, 10, "x"), "async_creator must be callable"),
    ],
)
def test_functions_that_are_not_callable_fail_before_locking(impl, args, message):
    """A Lock is made for every use, so its functions are checked when they
    are first needed (here: no value, so every one of them), not at
    construction; the error still comes before the mutex is taken."""
    mutex = CountingLock()
    with pytest.raises(TypeError, match=message):
        with impl.Lock(mutex, *args):
            pass
    assert mutex.attempts == 0
    assert not mutex.locked()


# -- dogpile.cache's contract (its dogpile/lock.py), point by point --------------------------


class Calls:
    """value_and_created_fn answering from a list, creator and async_creator
    counting their calls."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.reads = 0
        self.created = 0
        self.handed = []

    def read(self):
        self.reads += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            raise NeedRegenerationException()
        return answer

    def creator(self):
        self.created += 1
        return ("new", time.time())

    def async_creator(self, mutex):
        self.handed.append((mutex, mutex.locked()))
        mutex.release()


def test_expired_value_taken_without_waiting_is_not_read_again(impl):
    """Point 1: one value_and_created_fn call per regeneration (dogpile.cache
    removed the second one in 0.6.6), then creator."""
    calls = Calls(("old", time.time() - LONG_AGO))
    mutex = CountingLock()
    with impl.Lock(mutex, calls.creator, calls.read, 3600) as value:
        assert value == "new"
    assert (calls.reads, calls.created) == (1, 1)
    assert mutex.acquired == mutex.released == 1


def test_expired_value_taken_without_waiting_goes_to_async_creator_unread(impl):
    calls = Calls(("old", time.time() - LONG_AGO))
    mutex = CountingLock()
    with impl.Lock(mutex, calls.creator, calls.read, 3600, calls.async_creator) as value:
        assert value == "old"
    assert (calls.reads, calls.created) == (1, 0)
    assert calls.handed == [(mutex, True)]
    assert not mutex.locked()


def _multi_creator():
    raise NotImplementedError("get_or_create_multi's creator is never called")


def test_pair_with_zero_time_after_waiting_goes_to_async_creator(impl):
    """Point 2, as dogpile.cache's get_or_create_multi uses it: a miss is
    (payload, 0); after waiting for the mutex the same answer means "a
    value, expired": the mutex goes to async_creator, creator is not run."""
    calls = Calls(("NO_VALUE", 0))
    mutex = CountingLock()
    with impl.Lock(mutex, _multi_creator, calls.read, 3600, calls.async_creator) as value:
        assert value == "NO_VALUE"
    assert calls.reads == 2
    assert calls.handed == [(mutex, True)]
    assert mutex.blocking_attempts == 1
    assert not mutex.locked()


def test_pair_with_zero_time_after_waiting_creates_without_async_creator(impl):
    calls = Calls(("NO_VALUE", 0))
    mutex = CountingLock()
    with impl.Lock(mutex, calls.creator, calls.read, 3600) as value:
        assert value == "new"
    assert (calls.reads, calls.created) == (2, 1)
    assert mutex.acquired == mutex.released == 1


def test_expired_pair_after_waiting_goes_to_async_creator(impl):
    """Point 2: missing at first, then an expired value read after waiting:
    that value is returned and the mutex handed over."""
    calls = Calls(None, ("old", time.time() - LONG_AGO))
    mutex = CountingLock()
    with impl.Lock(mutex, calls.creator, calls.read, 3600, calls.async_creator) as value:
        assert value == "old"
    assert (calls.reads, calls.created) == (2, 0)
    assert calls.handed == [(mutex, True)]


def test_async_creator_raising_releases_the_mutex(impl):
    """Point 3: the mutex was not handed off, so the Lock releases it, and
    the caller sees the exception."""
    calls = Calls(("old", time.time() - LONG_AGO))
    mutex = CountingLock()

    def async_creator(m):
        raise Boom("no worker")

    with pytest.raises(Boom, match="no worker"):
        with impl.Lock(mutex, calls.creator, calls.read, 3600, async_creator):
            pass
    assert not mutex.locked()
    assert mutex.acquired == mutex.released == 1
    assert calls.created == 0


def test_attributes_read_and_write_as_in_dogpile_cache(impl):
    """Point 4: mutex, creator, value_and_created_fn, expiretime and
    async_creator are plain attributes there; changed after construction,
    the new ones are used."""
    calls = Calls(("old", time.time() - 60))
    lock = impl.Lock(None, None, None, 3600)
    for name in ("mutex", "creator", "value_and_created_fn", "async_creator"):
        assert getattr(lock, name) is None
    assert lock.expiretime == 3600
    mutex = CountingLock()
    lock.mutex = mutex
    lock.creator = calls.creator
    lock.value_and_created_fn = calls.read
    with lock as value:
        assert value == "old"
    lock.expiretime = 30
    assert lock.expiretime == 30
    lock.async_creator = calls.async_creator
    assert lock.mutex is mutex and lock.creator == calls.creator
    assert lock.value_and_created_fn == calls.read
    assert lock.async_creator == calls.async_creator
    with lock as value:
        assert value == "old"
    assert calls.handed == [(mutex, True)]
    lock.expiretime = None
    assert lock.expiretime is None
    lock.async_creator = None
    with lock as value:
        assert value == "old"
    assert calls.created == 0
    with pytest.raises(ValueError, match=">= 0"):
        lock.expiretime = -5
    assert lock.expiretime is None


def test_the_stale_path_does_not_inspect_the_mutex(impl, monkeypatch):
    """Guards against the asyncio-lock check running inspect on every stale
    read (dogpile.cache builds a Lock per call): it made the compiled stale
    fall-through 13x the fresh hit.  A threading lock is judged by what its
    acquire() returns; check_lock runs only when something is wrong."""
    import dogpile._lock_py

    calls = []

    def counting(lock, what="lock"):
        calls.append(lock)

    owner = dogpile._lock_py if impl.__name__.endswith("_core_py") else impl
    monkeypatch.setattr(owner, "check_lock", counting)
    held = threading.Lock()
    held.acquire()
    free = threading.Lock()
    for mutex in (held, free):  # stale, served; stale, recreated
        with impl.Lock(mutex, lambda: ("new", 2.0), lambda: ("old", 1.0), 60) as value:
            assert value in ("old", "new")
    held.release()
    assert calls == []
