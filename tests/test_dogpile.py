"""Dogpile: construction, the three value modes, stale serving, first
creation under contention, creator failure, custom locks and bad input.

Every test takes ``impl`` and so runs against both implementations."""

import math
import threading
import time

import pytest
from conftest import DEADLINE, CountingLock, run_threads

from dogpile import NeedRegenerationException

LONG_AGO = 7200.0  # seconds; far past any expiretime used here


def start_threads(target, count):
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    return threads


def join_all(threads):
    """Join with one overall deadline, so a hang fails in DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} threads still running after {DEADLINE}s"


# -- the three ways of storing a value --------------------------------------

MODES = ["plain", "value_fn", "value_and_created_fn"]


class Source:
    """Drives a Dogpile in one of its three modes with the same ``make()``
    (which returns a new value): no value function (the Dogpile keeps the
    value), ``value_fn`` (a dict keeps it, the Dogpile keeps the time), or
    ``value_and_created_fn`` (a dict keeps both)."""

    def __init__(self, mode):
        self.mode = mode
        self.store = {}

    def acquire(self, d, make):
        if self.mode == "plain":
            return d.acquire(make)
        if self.mode == "value_fn":

            def creator():
                value = make()
                self.store["value"] = value
                return value

            def value_fn():
                if "value" not in self.store:
                    raise NeedRegenerationException()
                return self.store["value"]

            return d.acquire(creator, value_fn=value_fn)

        def creator_pair():
            pair = (make(), time.time())
            self.store["pair"] = pair
            return pair

        def value_and_created_fn():
            if "pair" not in self.store:
                raise NeedRegenerationException()
            return self.store["pair"]

        return d.acquire(creator_pair, value_and_created_fn=value_and_created_fn)

    def expire(self, d):
        """Make the current value stale (it stays available)."""
        if self.mode == "value_and_created_fn":
            value, _ = self.store["pair"]
            self.store["pair"] = (value, time.time() - LONG_AGO)
        else:
            d.createdtime = time.time() - LONG_AGO


# -- construction and properties ----------------------------------------------


@pytest.mark.parametrize("expiretime, expected", [(5, 5.0), (1.5, 1.5), (0, 0.0)])
def test_expiretime_numbers_come_back_as_float(impl, expiretime, expected):
    """Guards against the getter leaking an internal representation."""
    d = impl.Dogpile(expiretime)
    assert d.expiretime == expected
    assert type(d.expiretime) is float


def test_expiretime_none_means_never(impl):
    """None must round-trip as None (not inf) and never expire a value."""
    d = impl.Dogpile(None)
    assert d.expiretime is None
    d.createdtime = 1.0  # created in 1970
    assert d.has_value
    assert not d.is_expired


def test_expiretime_zero_expires_any_past_value(impl):
    d = impl.Dogpile(0)
    d.createdtime = time.time() - 1
    assert d.is_expired


def test_expiretime_setter_validates(impl):
    d = impl.Dogpile(10)
    d.expiretime = 20
    assert d.expiretime == 20.0
    d.expiretime = None
    assert d.expiretime is None
    with pytest.raises(ValueError):
        d.expiretime = -5
    with pytest.raises(TypeError):
        d.expiretime = "soon"


def test_default_has_no_value(impl):
    d = impl.Dogpile(10)
    assert d.createdtime == -1
    assert not d.has_value
    assert d.is_expired


def test_init_true_counts_as_created_now(impl):
    before = time.time()
    d = impl.Dogpile(10, init=True)
    after = time.time()
    assert before <= d.createdtime <= after
    assert d.has_value
    assert not d.is_expired


def test_createdtime_setter(impl):
    d = impl.Dogpile(10)
    d.createdtime = 5
    assert d.createdtime == 5.0
    assert type(d.createdtime) is float
    now = time.time()
    d.createdtime = now
    assert d.createdtime == now
    assert d.has_value and not d.is_expired
    d.createdtime = now - 20
    assert d.has_value and d.is_expired


@pytest.mark.parametrize(
    "bad, exc", [("x", TypeError), (None, TypeError), (True, TypeError), (math.nan, ValueError)]
)
def test_createdtime_setter_rejects_bad_values(impl, bad, exc):
    d = impl.Dogpile(10, init=True)
    before = d.createdtime
    with pytest.raises(exc, match="createdtime"):
        d.createdtime = bad
    assert d.createdtime == before


def test_future_createdtime_beyond_expiretime_is_expired(impl):
    """A clock stepped back must not pin a value as fresh until the clock
    catches up: one regeneration repairs it."""
    d = impl.Dogpile(10)
    d.createdtime = time.time() + 100
    assert d.is_expired
    calls = []
    with d.acquire(lambda: calls.append(1) or "fixed") as value:
        assert value == "fixed"
    assert calls == [1]
    assert abs(d.createdtime - time.time()) < 5


def test_future_createdtime_within_expiretime_is_fresh(impl):
    d = impl.Dogpile(10)
    d.createdtime = time.time() + 5
    assert not d.is_expired


# -- bad input ----------------------------------------------------------------


def test_expiretime_string_is_type_error(impl):
    with pytest.raises(TypeError, match="expiretime must be a number"):
        impl.Dogpile("x")


def test_expiretime_bool_is_type_error(impl):
    """True is an int to Python, but Dogpile(True) is surely a mistake."""
    with pytest.raises(TypeError, match="expiretime"):
        impl.Dogpile(True)


def test_expiretime_negative_is_value_error(impl):
    with pytest.raises(ValueError, match=">= 0"):
        impl.Dogpile(-1)


def test_expiretime_nan_is_value_error(impl):
    """NaN compares false with everything: it would never expire."""
    with pytest.raises(ValueError, match="expiretime"):
        impl.Dogpile(float("nan"))


class NoRelease:
    def acquire(self, blocking=True):
        return True


class ReleaseNotCallable:
    release = 5

    def acquire(self, blocking=True):
        return True


@pytest.mark.parametrize("lock", [object(), NoRelease(), ReleaseNotCallable()])
def test_lock_without_acquire_release_is_type_error(impl, lock):
    with pytest.raises(TypeError, match=r"acquire\(\) and release\(\)"):
        impl.Dogpile(10, lock=lock)


def ok():
    return "v"


def ok_pair():
    return ("v", time.time())


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((5,), {}, "creator must be callable"),
        ((None,), {}, "creator must be callable"),
        ((ok,), {"value_fn": "x"}, "value_fn must be callable"),
        ((ok,), {"value_and_created_fn": 3}, "value_and_created_fn must be callable"),
        ((ok,), {"value_fn": ok, "value_and_created_fn": ok_pair}, "not both"),
    ],
)
@pytest.mark.parametrize("stale", [False, True], ids=["empty", "stale"])
def test_bad_callables_fail_in_acquire_before_locking(impl, args, kwargs, message, stale):
    """acquire() itself raises, before its context manager is entered and
    before the lock is touched, whatever state the Dogpile is in."""
    lock = CountingLock()
    d = impl.Dogpile(10, lock=lock)
    if stale:
        d.createdtime = time.time() - LONG_AGO
    with pytest.raises(TypeError, match=message):
        d.acquire(*args, **kwargs)
    assert lock.attempts == 0
    assert not lock.locked()


def test_value_and_created_fn_non_pair_is_type_error(impl):
    """The message names the function and what it returned; nothing stays
    locked."""
    lock = CountingLock()
    d = impl.Dogpile(10, lock=lock)
    with pytest.raises(TypeError) as info:
        with d.acquire(ok_pair, value_and_created_fn=lambda: "just a value"):
            pass
    message = str(info.value)
    assert "value_and_created_fn" in message
    assert "(value, createdtime) pair" in message
    assert "just a value" in message
    assert not lock.locked()
    assert lock.acquired == lock.released


def test_value_and_created_fn_non_pair_under_lock_releases_it(impl):
    """The second call, made while holding the lock, returns garbage: the
    TypeError must still release the lock."""
    lock = CountingLock()
    d = impl.Dogpile(10, lock=lock)
    results = iter([("stale", time.time() - LONG_AGO), ("a", "b", "c")])
    with pytest.raises(TypeError, match="value_and_created_fn must return a"):
        with d.acquire(ok_pair, value_and_created_fn=lambda: next(results)):
            pass
    assert lock.acquired == 1
    assert lock.released == 1
    assert not lock.locked()


@pytest.mark.parametrize("bad", ["value", ("only one",), ["a", "b", "c"], None])
def test_creator_non_pair_is_type_error_and_releases_lock(impl, bad):
    lock = CountingLock()
    d = impl.Dogpile(10, lock=lock)

    def value_and_created_fn():
        raise NeedRegenerationException()

    with pytest.raises(TypeError) as info:
        with d.acquire(lambda: bad, value_and_created_fn=value_and_created_fn):
            pass
    message = str(info.value)
    assert "creator" in message
    assert "value_and_created_fn" not in message
    assert "(value, createdtime) pair" in message
    assert lock.acquired == lock.released == 1
    assert not lock.locked()
    # Nothing half-stored: the next call creates again.
    with d.acquire(ok_pair, value_and_created_fn=value_and_created_fn) as value:
        assert value == "v"


def test_creator_pair_with_bad_createdtime_is_type_error(impl):
    lock = CountingLock()
    d = impl.Dogpile(10, lock=lock)

    def value_and_created_fn():
        raise NeedRegenerationException()

    with pytest.raises(TypeError, match="createdtime returned by creator"):
        with d.acquire(lambda: ("v", "yesterday"), value_and_created_fn=value_and_created_fn):
            pass
    assert not lock.locked()


# -- no value function: the Dogpile keeps the value ----------------------------


def test_plain_as_target_is_none_before_any_creation(impl):
    """init=True counts as created: no creator call, and the as target is None."""
    d = impl.Dogpile(10, init=True)
    calls = []
    with d.acquire(lambda: calls.append(1) or "made") as value:
        assert value is None
    assert calls == []


def test_plain_creator_called_once_then_again_after_expiry(impl):
    d = impl.Dogpile(3600)
    made = []

    def creator():
        made.append(len(made) + 1)
        return f"value {len(made)}"

    for _ in range(3):
        with d.acquire(creator) as value:
            assert value == "value 1"
    assert made == [1]
    assert d.has_value and not d.is_expired

    d.createdtime = time.time() - LONG_AGO
    with d.acquire(creator) as value:
        assert value == "value 2"
    with d.acquire(creator) as value:
        assert value == "value 2"
    assert made == [1, 2]


def test_plain_value_is_per_dogpile(impl):
    """The value lives on the Dogpile, not in some shared slot."""
    a, b = impl.Dogpile(3600), impl.Dogpile(3600)
    with a.acquire(lambda: "a") as value:
        assert value == "a"
    with b.acquire(lambda: "b") as value:
        assert value == "b"
    with a.acquire(lambda: "not again") as value:
        assert value == "a"


def test_plain_none_is_a_real_value(impl):
    """A creator that returns None (the 0.2.2 README style) still counts as
    having created: it is not called again while fresh."""
    d = impl.Dogpile(3600)
    calls = []
    with d.acquire(lambda: calls.append(1)) as value:
        assert value is None
    with d.acquire(lambda: calls.append(1)) as value:
        assert value is None
    assert calls == [1]


# -- value_fn -----------------------------------------------------------------


def test_value_fn_result_is_the_as_target(impl):
    d = impl.Dogpile(3600)
    calls = []

    def creator():
        calls.append(1)
        return "created"

    # First call: the Dogpile has never created, so it creates, and the as
    # target is what the creator returned.
    with d.acquire(creator, value_fn=lambda: "stored") as value:
        assert value == "created"
    assert calls == [1]
    # Fresh: the as target is value_fn's result; no creation.
    with d.acquire(creator, value_fn=lambda: "stored") as value:
        assert value == "stored"
    assert calls == [1]


def test_value_fn_need_regeneration_creates(impl):
    """Fresh by the Dogpile's clock, but the stored value is gone (evicted,
    say): NeedRegenerationException means create now."""
    d = impl.Dogpile(3600, init=True)
    calls = []

    def value_fn():
        raise NeedRegenerationException()

    def creator():
        calls.append(1)
        return "recreated"

    before = time.time()
    with d.acquire(creator, value_fn=value_fn) as value:
        assert value == "recreated"
    assert calls == [1]
    assert d.createdtime >= before
    assert not d.is_expired


def test_value_fn_expired_creates(impl):
    d = impl.Dogpile(3600)
    d.createdtime = time.time() - LONG_AGO
    with d.acquire(lambda: "new", value_fn=lambda: "old") as value:
        assert value == "new"
    assert not d.is_expired
    with d.acquire(lambda: "newer", value_fn=lambda: "old") as value:
        assert value == "old"


# -- value_and_created_fn -----------------------------------------------------


def test_value_and_created_fn_createdtime_replaces_the_dogpiles(impl):
    d = impl.Dogpile(3600)
    stored_at = time.time() - 5
    calls = []
    with d.acquire(
        lambda: calls.append(1) or ("new", time.time()),
        value_and_created_fn=lambda: ("stored", stored_at),
    ) as value:
        assert value == "stored"
    assert calls == []
    assert d.createdtime == stored_at
    assert d.has_value and not d.is_expired


def test_value_and_created_fn_creator_pair_gives_value_alone(impl):
    d = impl.Dogpile(3600)
    store = {}
    created_at = time.time() - 1  # distinct from anything the Dogpile computes

    def creator():
        store["pair"] = ("made", created_at)
        return store["pair"]

    def value_and_created_fn():
        if "pair" not in store:
            raise NeedRegenerationException()
        return store["pair"]

    with d.acquire(creator, value_and_created_fn=value_and_created_fn) as value:
        assert value == "made"
    assert d.createdtime == created_at


def test_value_and_created_fn_expired_pair_creates(impl):
    d = impl.Dogpile(3600)
    old = ("old", time.time() - LONG_AGO)
    new_time = time.time()
    with d.acquire(lambda: ("new", new_time), value_and_created_fn=lambda: old) as value:
        assert value == "new"
    assert d.createdtime == new_time


def test_new_dogpile_picks_up_existing_fresh_value(impl):
    """A second Dogpile over the same store (another process, a restart)
    must not regenerate a value that is still fresh."""
    store = {}
    calls = []

    def creator():
        calls.append(1)
        store["pair"] = (f"value {len(calls)}", time.time())
        return store["pair"]

    def value_and_created_fn():
        if "pair" not in store:
            raise NeedRegenerationException()
        return store["pair"]

    first = impl.Dogpile(3600)
    with first.acquire(creator, value_and_created_fn=value_and_created_fn) as value:
        assert value == "value 1"

    second = impl.Dogpile(3600)
    assert not second.has_value
    with second.acquire(creator, value_and_created_fn=value_and_created_fn) as value:
        assert value == "value 1"
    assert calls == [1]
    assert second.createdtime == store["pair"][1]
    assert second.has_value


# -- concurrency --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_stale_value_served_while_another_thread_creates(impl, mode):
    """The core promise: while one thread regenerates an expired value,
    every other caller gets the stale value at once.  The creator stays
    blocked on an event until the readers have all finished, so a reader
    that waited for the lock would never finish."""
    d = impl.Dogpile(3600)
    source = Source(mode)
    with source.acquire(d, lambda: "old") as value:
        assert value == "old"
    source.expire(d)

    creating = threading.Event()
    finish = threading.Event()

    def slow_make():
        creating.set()
        assert finish.wait(DEADLINE), "test never let the creator finish"
        return "new"

    regenerated = []

    def regenerate(_):
        with source.acquire(d, slow_make) as value:
            regenerated.append(value)

    unexpected = []

    def must_not_make():
        unexpected.append(threading.get_ident())
        return "wrong"

    served = []

    def reader(_):
        with source.acquire(d, must_not_make) as value:
            served.append(value)

    creator_thread = start_threads(regenerate, 1)
    try:
        assert creating.wait(DEADLINE), "regenerating thread never called the creator"
        readers = start_threads(reader, 8)
        join_all(readers)
        assert creator_thread[0].is_alive(), "creator finished before the readers did"
    finally:
        finish.set()
        join_all(creator_thread)
    assert served == ["old"] * 8
    assert unexpected == []
    assert regenerated == ["new"]
    with source.acquire(d, must_not_make) as value:
        assert value == "new"
    assert unexpected == []


@pytest.mark.parametrize("mode", MODES)
def test_first_creation_many_threads_creates_once(impl, mode):
    """16 threads race for a value that does not exist yet: one creates,
    the others wait for it and must not create again."""
    d = impl.Dogpile(3600)
    source = Source(mode)
    calls = []
    barrier = threading.Barrier(16)
    results = []

    def make():
        calls.append(1)
        return object()

    def worker(_):
        barrier.wait(DEADLINE)
        with source.acquire(d, make) as value:
            results.append(value)

    run_threads(worker, 16)
    assert len(calls) == 1
    assert len(results) == 16
    assert all(r is results[0] for r in results)


@pytest.mark.parametrize("mode", MODES)
def test_first_creation_all_threads_wait_on_the_lock(impl, mode):
    """Same race, but the creator holds on until the 15 other threads are
    inside a blocking acquire(), so they really are waiting while it runs:
    each must take the creation's outcome instead of creating again."""
    lock = CountingLock()
    d = impl.Dogpile(3600, lock=lock)
    source = Source(mode)
    calls = []
    results = []
    barrier = threading.Barrier(16)

    def make():
        calls.append(1)
        assert lock.wait_for_blocking_attempts(15), "not every thread reached the lock"
        return "the value"

    def worker(_):
        barrier.wait(DEADLINE)
        with source.acquire(d, make) as value:
            results.append(value)

    run_threads(worker, 16)
    assert calls == [1]
    assert results == ["the value"] * 16
    assert lock.acquired == lock.released == 16
    assert not lock.locked()


# -- creator failure ----------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("mode", MODES)
def test_creator_failure_reaches_caller_and_releases_lock(impl, mode):
    lock = CountingLock()
    d = impl.Dogpile(3600, lock=lock)
    source = Source(mode)

    def fail():
        raise Boom("backend down")

    with pytest.raises(Boom, match="backend down"):
        with source.acquire(d, fail):
            pass
    assert not lock.locked()
    assert lock.acquired == lock.released == 1
    assert not d.has_value

    calls = []
    with source.acquire(d, lambda: calls.append(1) or "second try") as value:
        assert value == "second try"
    assert calls == [1]


@pytest.mark.parametrize("mode", MODES)
def test_creator_failure_with_stale_value_keeps_stale_value(impl, mode):
    """A failed regeneration leaves the old value in place, still expired,
    so the next caller tries again."""
    lock = CountingLock()
    d = impl.Dogpile(3600, lock=lock)
    source = Source(mode)
    with source.acquire(d, lambda: "old"):
        pass
    source.expire(d)

    def fail():
        raise Boom()

    with pytest.raises(Boom):
        with source.acquire(d, fail):
            pass
    assert not lock.locked()
    assert lock.acquired == lock.released
    with source.acquire(d, lambda: "new") as value:
        assert value == "new"


@pytest.mark.parametrize("mode", MODES)
def test_creator_failure_with_waiters_leaves_nobody_waiting(impl, mode):
    """8 threads wait for a first value; the creator fails while the 7
    others sit in acquire().  The creator ran once for all of them, so each
    of the 8 gets its exception (the shared outcome), nobody is left
    waiting, and the next caller creates again."""
    lock = CountingLock()
    d = impl.Dogpile(3600, lock=lock)
    source = Source(mode)
    calls = []
    failures = []
    barrier = threading.Barrier(8)

    def make():
        calls.append(threading.get_ident())
        if len(calls) == 1:
            assert lock.wait_for_blocking_attempts(7), "not every thread reached the lock"
            raise Boom("first try fails")
        return "the value"

    results = []

    def worker(_):
        barrier.wait(DEADLINE)
        try:
            with source.acquire(d, make) as value:
                results.append(value)
        except Boom as exc:
            failures.append(exc)

    run_threads(worker, 8)
    assert len(calls) == 1
    assert len(failures) == 8 and results == []
    # Each its own copy of the one exception (see test_reliability's
    # traceback test for why not the same object).
    assert {(type(exc), str(exc)) for exc in failures} == {(Boom, "first try fails")}
    assert not lock.locked()
    assert lock.acquired == lock.released
    with source.acquire(d, make) as value:
        assert value == "the value"
    assert len(calls) == 2


# -- custom locks -------------------------------------------------------------


def test_custom_lock_counts_balance_and_fresh_hits_take_no_lock(impl):
    lock = CountingLock()
    d = impl.Dogpile(3600, lock=lock)
    with d.acquire(lambda: "v1") as value:
        assert value == "v1"
    assert (lock.acquired, lock.released) == (1, 1)

    # A fresh hit must not touch the lock at all.
    for _ in range(5):
        with d.acquire(lambda: "unused") as value:
            assert value == "v1"
    assert lock.attempts == 1

    d.createdtime = time.time() - LONG_AGO
    with d.acquire(lambda: "v2") as value:
        assert value == "v2"
    assert (lock.acquired, lock.released) == (2, 2)
    assert not lock.locked()


def test_custom_lock_held_elsewhere_serves_stale_without_blocking(impl):
    """Another process holds the lock (here: the test thread holds it while
    the caller runs in another thread): the stale value comes back at once
    through acquire(False), and nothing is released that was not taken."""
    lock = CountingLock()
    d = impl.Dogpile(3600, lock=lock)
    with d.acquire(lambda: "old"):
        pass
    d.createdtime = time.time() - LONG_AGO
    assert lock.acquire()
    got = []

    def caller(_):
        with d.acquire(lambda: "new") as value:
            got.append(value)

    try:
        run_threads(caller, 1)
    finally:
        lock.release()
    assert got == ["old"]
    assert lock.acquired == lock.released == 2


@pytest.mark.parametrize("mode", ["value_fn", "value_and_created_fn"])
def test_late_miss_does_not_undo_a_fresh_creation(impl, mode):
    """A caller whose lookup missed just before another thread stored the
    first value (a slow cache round trip, say) must, once it gets the
    lock, see that value as fresh and not create a second time.

    Interleaving, forced with events: B's lookup finds nothing and stalls;
    A creates and finishes; B's lookup then reports the miss."""
    d = impl.Dogpile(3600)
    store = {}
    calls = []
    b_missed = threading.Event()
    a_done = threading.Event()
    b_ident = []

    def lookup():
        found = "value" in store
        if threading.get_ident() in b_ident and not found:
            b_missed.set()
            assert a_done.wait(DEADLINE), "thread A never finished"
        if not found:
            raise NeedRegenerationException()
        return store["value"], store["createdtime"]

    def creator():
        calls.append(threading.get_ident())
        store["value"], store["createdtime"] = f"value {len(calls)}", time.time()
        return store["value"], store["createdtime"]

    def acquire():
        if mode == "value_fn":
            return d.acquire(lambda: creator()[0], value_fn=lambda: lookup()[0])
        return d.acquire(creator, value_and_created_fn=lookup)

    got_b = []

    def thread_b(_):
        b_ident.append(threading.get_ident())
        with acquire() as value:
            got_b.append(value)

    b = threading.Thread(target=thread_b, args=(0,), daemon=True)
    b.start()
    try:
        assert b_missed.wait(DEADLINE), "thread B never looked up the value"
        with acquire() as value:  # thread A: the test thread
            assert value == "value 1"
    finally:
        a_done.set()
        join_all([b])
    assert len(calls) == 1, f"creator ran {len(calls)} times for one missing value"
    assert got_b == ["value 1"]
