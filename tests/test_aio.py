"""dogpile.aio: AsyncDogpile and AsyncLock, over both cores (the ``impl``
fixture: ``aio._build(impl)``).

Every coroutine test runs in ``asyncio.run()`` under ``DEADLINE`` (pytest-
asyncio is not a dependency), and the concurrency is synchronized with
asyncio Events, never with sleeps that a slow machine could outrun.
"""

import asyncio
import functools
import gc
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
import traceback
import weakref

import pytest
import redis_server
from conftest import DEADLINE
from redis_server import aclose

import dogpile
from dogpile import LockError, LockTimeout, NeedRegenerationException, _aio_locks, aio
from dogpile.mutexes import AsyncRedisMutex, LeaseLost


@pytest.fixture
def classes(impl):
    return aio._build(impl)


@pytest.fixture(params=["ready", "coroutine"])
def AsyncDogpile(request, classes, monkeypatch):
    """Each fresh path of ``acquire(creator)`` on every Python: the done
    Future (chosen up to 3.11) and the coroutine (from 3.12)."""
    chosen = {"ready": aio._ReadyAcquisition, "coroutine": aio._PlainAcquisition}
    monkeypatch.setattr(aio, "_Plain", chosen[request.param])
    return classes.AsyncDogpile


@pytest.fixture
def AsyncLock(classes):
    return classes.AsyncLock


def run(coroutine_function, *args):
    """Run ``coroutine_function(*args)`` in a new event loop, under DEADLINE."""

    async def bounded():
        return await asyncio.wait_for(coroutine_function(*args), DEADLINE)

    return asyncio.run(bounded())


async def wait_until(condition, what):
    """Yield to the loop until ``condition()`` holds, at most DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0)


class Creator:
    """A creator that counts its calls and, if ``gate`` is set, waits for
    it (an asyncio.Event made in the running loop) before it returns.
    ``entered`` is set when a call begins."""

    def __init__(self, result="value", gate=False, error=None, coroutine=True):
        self.result = result
        self.calls = 0
        self.error = error
        self.coroutine = coroutine
        self.gated = gate
        self.gate = None
        self.entered = None

    def arm(self):
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        if not self.gated:
            self.gate.set()

    async def _run(self):
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result if not callable(self.result) else self.result(self.calls)

    def __call__(self):
        if self.gate is None:
            self.arm()
        if self.coroutine:
            return self._run()
        self.calls += 1
        self.entered.set()
        if self.error is not None:
            raise self.error
        return self.result if not callable(self.result) else self.result(self.calls)


def lock_of(d):
    return d._state.lock


# -- which core ----------------------------------------------------------------------------


def test_the_public_classes_use_the_core_dogpile_chose():
    chosen = "dogpile._core" if dogpile.IMPLEMENTATION == "cython" else "dogpile._core_py"
    core = __import__(chosen, fromlist=["_is_expired"])
    assert aio.AsyncDogpile._is_expired is core._is_expired
    assert aio.AsyncLock._is_expired is core._is_expired
    assert aio._build(core) == (aio.AsyncDogpile, aio.AsyncLock)


def test_build_binds_the_given_core(impl, classes):
    assert classes.AsyncDogpile._is_expired is impl._is_expired
    assert classes.AsyncLock._is_expired is impl._is_expired
    assert issubclass(classes.AsyncDogpile, aio.AsyncDogpile)
    d = classes.AsyncDogpile(10)
    assert d._state.expired is impl._is_expired


# -- first creation ------------------------------------------------------------------------


@pytest.mark.parametrize("coroutine", [True, False], ids=["coroutine", "plain"])
def test_a_thousand_tasks_on_a_missing_value_make_one_creation(AsyncDogpile, coroutine):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator("made", gate=coroutine, coroutine=coroutine)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(1000)]
        if coroutine:
            await creator.entered.wait()
            await asyncio.sleep(0)  # the others reach the lock
            creator.gate.set()
        results = await asyncio.gather(*tasks)
        assert results == ["made"] * 1000
        assert creator.calls == 1
        stats = d.stats()
        assert stats["created"] == 1
        if coroutine:
            assert stats["waited"] == 999
        assert not lock_of(d).locked()
        assert d.has_value and not d.is_expired

    run(main)


def test_waiters_get_the_value_the_creator_returned_without_fresh_reads(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator(lambda n: f"v{n}", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(10)]
        await creator.entered.wait()
        creator.gate.set()
        assert await asyncio.gather(*tasks) == ["v1"] * 10
        async with d.acquire(creator) as value:
            assert value == "v1"
        assert d.stats()["fresh"] == 1

    run(main)


def test_a_fresh_hit_after_a_new_creation_gets_the_new_value(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator(lambda n: f"v{n}", coroutine=False)
        for _ in range(3):  # the first creates, the others are fresh hits
            async with d.acquire(creator) as value:
                assert value == "v1"
        d.createdtime = time.time() - 3600
        async with d.acquire(creator) as value:
            assert value == "v2"
        for _ in range(3):
            async with d.acquire(creator) as value:
                assert value == "v2"
        assert d.stats()["fresh"] == 5
        return d

    d = run(main)

    async def in_a_second_loop():
        async with d.acquire(lambda: "unused") as value:
            return value

    assert run(in_a_second_loop) == "v2"


# -- an expired value ----------------------------------------------------------------------


def test_a_thousand_tasks_on_an_expired_value_one_creation_and_no_task_waits(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        async with d.acquire(lambda: "old") as value:
            assert value == "old"
        d.createdtime = time.time() - 3600
        creator = Creator("new", gate=True)
        creator.arm()
        finished = []

        async def read():
            async with d.acquire(creator) as value:
                finished.append(value)
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(1000)]
        await creator.entered.wait()
        # Every task but the creating one ends while the creator is still
        # blocked on its gate.
        await wait_until(lambda: len(finished) == 999, "the 999 stale reads")
        assert not creator.gate.is_set()
        assert finished == ["old"] * 999
        assert sum(not t.done() for t in tasks) == 1
        assert d.stats()["stale"] == 999
        creator.gate.set()
        results = await asyncio.gather(*tasks)
        assert sorted(results) == ["new"] + ["old"] * 999
        assert creator.calls == 1
        assert d.stats()["created"] == 2 and d.stats()["waited"] == 0  # "old", then "new"
        async with d.acquire(creator) as value:
            assert value == "new"
        assert not lock_of(d).locked()

    run(main)


def test_stale_readers_do_not_touch_a_custom_lock_beyond_one_try(AsyncDogpile):
    class Counting(asyncio.Lock):
        acquires = 0

        async def acquire(self):
            Counting.acquires += 1
            return await super().acquire()

    async def main():
        lock = Counting()
        d = AsyncDogpile(60, lock=lock)
        async with d.acquire(lambda: "old"):
            pass
        before = Counting.acquires
        for _ in range(100):  # fresh hits take no lock at all
            async with d.acquire(lambda: "x") as value:
                assert value == "old"
        assert Counting.acquires == before
        d.createdtime = time.time() - 3600
        creator = Creator("new", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        first = asyncio.ensure_future(read())
        await creator.entered.wait()
        assert [await read() for _ in range(5)] == ["old"] * 5
        creator.gate.set()
        assert await first == "new"
        assert not lock.locked()

    run(main)


# -- plain and coroutine functions ---------------------------------------------------------


async def _async_value(value):
    return value


class _AsyncCallable:
    def __init__(self, value):
        self.value = value

    async def __call__(self):
        return self.value


class _FutureReturning:
    def __init__(self, value):
        self.value = value

    def __call__(self):
        future = asyncio.get_running_loop().create_future()
        future.set_result(self.value)
        return future


def _function_kinds(value):
    return {
        "plain": lambda: value,
        "coroutine": functools.partial(_async_value, value),
        "callable-object": _AsyncCallable(value),
        "future": _FutureReturning(value),
    }


@pytest.mark.parametrize("kind", ["plain", "coroutine", "callable-object", "future"])
def test_creator_kinds(AsyncDogpile, kind):
    async def main():
        d = AsyncDogpile(60)
        async with d.acquire(_function_kinds("made")[kind]) as value:
            assert value == "made"
        async with d.acquire(_function_kinds("other")[kind]) as value:
            assert value == "made"

    run(main)


@pytest.mark.parametrize("creator_kind", ["plain", "coroutine"])
@pytest.mark.parametrize("value_kind", ["plain", "coroutine", "callable-object", "future"])
def test_value_fn_kinds_mixed(AsyncDogpile, creator_kind, value_kind):
    async def main():
        cache = {}

        def store(value):
            cache["k"] = value
            return value

        creators = {
            "plain": lambda: store("created"),
            "coroutine": functools.partial(_async_value, None),
        }

        async def async_create():
            return store("created")

        creator = creators[creator_kind] if creator_kind == "plain" else async_create

        def read_cache():
            if "k" not in cache:
                raise NeedRegenerationException()
            return cache["k"]

        async def read_cache_async():
            return read_cache()

        value_fn = {
            "plain": read_cache,
            "coroutine": read_cache_async,
            "callable-object": read_cache,
            "future": read_cache,
        }[value_kind]
        d = AsyncDogpile(60)
        async with d.acquire(creator, value_fn) as value:
            assert value == "created"  # the creator's, as this call created
        cache["k"] = "changed"
        async with d.acquire(creator, value_fn) as value:
            assert value == "changed"  # value_fn's, as the value is fresh
        cache.clear()  # value_fn: no value, though createdtime says fresh
        async with d.acquire(creator, value_fn) as value:
            assert value == "created"
        assert d.stats()["created"] == 2

    run(main)


@pytest.mark.parametrize("kind", ["plain", "coroutine"])
def test_value_and_created_fn(AsyncDogpile, kind):
    async def main():
        store = {}
        creations = []

        def create():
            creations.append(1)
            store["k"] = ("made", time.time())
            return store["k"]

        def stored():
            if "k" not in store:
                raise NeedRegenerationException()
            return store["k"]

        async def create_async():
            return create()

        async def stored_async():
            return stored()

        c, v = (create, stored) if kind == "plain" else (create_async, stored_async)
        d = AsyncDogpile(60)
        async with d.acquire(c, value_and_created_fn=v) as value:
            assert value == "made"
        # Another AsyncDogpile picks up where the first left off.
        d2 = AsyncDogpile(60)
        async with d2.acquire(c, value_and_created_fn=v) as value:
            assert value == "made"
        assert len(creations) == 1
        assert d2.createdtime == store["k"][1]
        store["k"] = ("old", time.time() - 3600)
        async with d2.acquire(c, value_and_created_fn=v) as value:
            assert value == "made"  # the lock was free: this call created
        assert len(creations) == 2

    run(main)


def test_a_bad_pair_names_the_function_and_releases_the_lock(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)

        async def bad_creator():
            return "not a pair"

        def missing():
            raise NeedRegenerationException()

        with pytest.raises(TypeError, match=r"creator must return a \(value, createdtime\) pair"):
            async with d.acquire(bad_creator, value_and_created_fn=missing):
                pass
        assert not lock_of(d).locked()

        async def bad_stored():
            return ["a", "b", "c"]

        with pytest.raises(TypeError, match="value_and_created_fn must return"):
            async with d.acquire(bad_creator, value_and_created_fn=bad_stored):
                pass

    run(main)


# -- failure -------------------------------------------------------------------------------


def test_a_failing_coroutine_creator_is_shared_by_its_waiters_and_retried_after(AsyncDogpile):
    class Boom(Exception):
        pass

    async def main():
        d = AsyncDogpile(60)
        creator = Creator(gate=True, error=Boom("backend down"))
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(32)]
        await creator.entered.wait()
        await asyncio.sleep(0)
        creator.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert creator.calls == 1
        # The creating task raises the creator's exception itself, each
        # waiting task its own copy of it (see the traceback tests below).
        assert all(type(r) is Boom and r.args == ("backend down",) for r in results)
        assert [r is creator.error for r in results].count(True) == 1
        assert len({id(r) for r in results}) == len(results), "a copy in each waiter"
        assert not lock_of(d).locked()
        assert d.stats()["failed"] == 1 and d.stats()["created"] == 1
        # The next caller tries again.
        creator.error = None
        creator.result = "recovered"
        assert await read() == "recovered"
        assert creator.calls == 2

    run(main)


def test_the_shared_exception_keeps_a_bounded_traceback(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator(gate=True, error=ValueError("x"))
        creator.arm()

        async def read():
            async with d.acquire(creator):
                pass

        tasks = [asyncio.ensure_future(read()) for _ in range(200)]
        await creator.entered.wait()
        creator.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        depth = 0
        tb = results[0].__traceback__
        while tb is not None:
            depth += 1
            tb = tb.tb_next
        assert depth < 30, f"traceback of {depth} frames: it grew with each waiter"

    run(main)


def _frame_names(exc):
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def test_each_waiting_task_raises_its_own_copy_with_its_own_traceback(AsyncDogpile):
    """Guards against the one exception object raised in every waiting
    task: a task still handling it (awaiting, say, an async log call) saw
    its traceback replaced by the next waiter's frames.  Each waiting task
    raises a copy: the creator's exception in all but identity (type, args,
    attributes, cause, context), with the creator's frames and its own."""

    class Detailed(Exception):
        pass

    async def main():
        d = AsyncDogpile(60)
        entered, gate, handled = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def creator():
            entered.set()
            await gate.wait()
            try:
                raise KeyError("inner")
            except KeyError as inner:
                exc = Detailed("backend down", 42)
                exc.detail = "kept"
                raise exc from inner

        async def first():
            try:
                await d.get(creator)
            except Detailed as exc:
                return exc

        async def waiter_a():
            try:
                await d.get(creator)
            except Detailed as exc:
                before = _frame_names(exc)
                await handled.wait()  # still handling it while waiter_b raises
                return exc, before, _frame_names(exc)

        async def deep_in_b():
            await d.get(creator)

        async def waiter_b():
            try:
                await deep_in_b()
            except Detailed as exc:
                handled.set()
                return exc

        making = asyncio.ensure_future(first())
        await entered.wait()
        a = asyncio.ensure_future(waiter_a())
        await wait_until(lambda: d.stats()["waited"] == 1, "waiter_a waiting")
        b = asyncio.ensure_future(waiter_b())
        await wait_until(lambda: d.stats()["waited"] == 2, "waiter_b waiting")
        gate.set()
        original, (exc_a, before, after), exc_b = await asyncio.gather(making, a, b)
        assert d.stats()["created"] == 1 and d.stats()["failed"] == 1

        assert after == before, "waiter_a's traceback changed while it handled it"
        creators = _frame_names(original)
        assert creators[-1] == "creator" and "waiter_a" not in creators
        assert before[0] == "waiter_a" and "deep_in_b" not in before
        assert before[-1] == "creator"
        names_b = _frame_names(exc_b)
        assert names_b[:2] == ["waiter_b", "deep_in_b"] and "waiter_a" not in names_b
        assert names_b[-1] == "creator"
        # Bounded: the creator's frames, the driver's and the task's own.
        assert len(before) < 30 and len(names_b) < 30
        # Distinct objects, equal in all but identity.
        assert len({id(original), id(exc_a), id(exc_b)}) == 3
        for exc in (exc_a, exc_b):
            assert type(exc) is Detailed
            assert exc.args == original.args == ("backend down", 42)
            assert str(exc) == str(original)
            assert exc.detail == "kept"
            assert exc.__cause__ is original.__cause__
            assert isinstance(exc.__cause__, KeyError)
            assert exc.__context__ is original.__context__
            assert exc.__suppress_context__ is True

    run(main)


# -- cancellation --------------------------------------------------------------------------


def test_a_waiter_cancelled_while_waiting_leaves_the_others_waiting(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator("made", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(20)]
        await creator.entered.wait()
        await asyncio.sleep(0)
        for task in tasks[5:10]:
            task.cancel()
        await asyncio.sleep(0)
        creator.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results[5:10])
        assert results[:5] + results[10:] == ["made"] * 15
        assert creator.calls == 1
        assert not lock_of(d).locked()

    run(main)


def test_a_creator_cancelled_mid_creation_releases_the_lock_and_a_waiter_creates(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator(lambda n: f"v{n}", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        first = asyncio.ensure_future(read())
        await creator.entered.wait()
        waiters = [asyncio.ensure_future(read()) for _ in range(20)]
        await asyncio.sleep(0)
        creator.entered.clear()
        first.cancel()
        # The next waiter creates: no CancelledError handed to the others.
        await creator.entered.wait()
        assert creator.calls == 2
        creator.gate.set()
        results = await asyncio.gather(*waiters)
        assert results == ["v2"] * 20
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not lock_of(d).locked()
        assert d.stats()["created"] == 2 and d.stats()["failed"] == 0

    run(main)


def test_a_creator_cancelled_with_nobody_waiting_leaves_nothing_locked(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator("v", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        task = asyncio.ensure_future(read())
        await creator.entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not lock_of(d).locked()
        assert d._state.attempt is None
        creator.gate.set()
        assert await read() == "v"

    run(main)


def test_a_cancelled_creator_of_an_expired_value_leaves_it_stale_and_unlocked(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        async with d.acquire(lambda: "old"):
            pass
        d.createdtime = time.time() - 3600
        creator = Creator("new", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        task = asyncio.ensure_future(read())
        await creator.entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not lock_of(d).locked() and d.is_expired
        creator.gate.set()
        assert await read() == "new"

    run(main)


# -- re-entry ------------------------------------------------------------------------------


def test_a_creator_that_acquires_its_own_dogpile_gets_lock_error(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)

        async def creator():
            async with d.acquire(creator):
                pass

        with pytest.raises(LockError, match="from inside its own creator"):
            async with d.acquire(creator):
                pass
        assert not lock_of(d).locked()

    run(main)


# -- event loops ---------------------------------------------------------------------------


def test_a_second_event_loop_after_the_first_is_closed(AsyncDogpile):
    d = AsyncDogpile(60)

    async def stampede(expected):
        creator = Creator(expected, gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(50)]
        await creator.entered.wait()
        await asyncio.sleep(0)  # contended: asyncio.Lock binds to this loop
        creator.gate.set()
        assert await asyncio.gather(*tasks) == [expected] * 50
        return creator.calls

    assert run(stampede, "first") == 1
    first_lock = lock_of(d)

    async def fresh():
        async with d.acquire(lambda: "unused") as value:
            return value

    assert run(fresh) == "first"  # a fresh hit needs no lock
    d.createdtime = -1  # no value again: the second loop waits on a lock
    assert run(stampede, "second") == 1
    assert lock_of(d) is not first_lock
    d.createdtime = time.time() - 3600  # expired: the stale path in a third loop

    async def stale_while_creating():
        creator = Creator("third", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        first = asyncio.ensure_future(read())
        await creator.entered.wait()
        assert await read() == "second"
        creator.gate.set()
        return await first

    assert run(stale_while_creating) == "third"


def test_a_lock_held_by_a_closed_loop_does_not_block_the_next_loop(AsyncDogpile):
    d = AsyncDogpile(60)
    loop = asyncio.new_event_loop()
    entered = []

    async def creator():
        entered.append(1)
        await asyncio.sleep(3600)

    async def read():
        async with d.acquire(creator) as value:
            return value

    task = loop.create_task(read())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert entered and lock_of(d).locked()
    task.cancel()  # a clean close: the task's own ``finally`` would run
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    assert not lock_of(d).locked()

    # Now one that is abandoned: the loop closed with the creation pending.
    d2 = AsyncDogpile(60)
    loop2 = asyncio.new_event_loop()

    async def read2():
        async with d2.acquire(creator):
            pass

    held = loop2.create_task(read2())
    # Abandoned on purpose: asyncio need not log it when it is collected.
    held._log_destroy_pending = False
    loop2.run_until_complete(asyncio.sleep(0.01))
    assert lock_of(d2).locked()
    loop2.close()
    loop.close()

    async def again():
        async with d2.acquire(lambda: "made in the new loop") as value:
            return value

    assert run(again) == "made in the new loop"
    assert not held.done()  # it belongs to the closed loop, and stays as it was
    del held


def test_use_from_a_second_loop_while_the_first_runs_is_a_clear_error(AsyncDogpile):
    d = AsyncDogpile(60)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:

        async def use():
            async with d.acquire(lambda: "v") as value:
                return value

        assert asyncio.run_coroutine_threadsafe(use(), loop).result(DEADLINE) == "v"
        d.createdtime = -1
        with pytest.raises(RuntimeError, match="in use by another event loop that is still open"):
            run(use)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()


# -- wait_timeout --------------------------------------------------------------------------


def test_wait_timeout_gives_up_on_a_hung_creator(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60, wait_timeout=0.05)
        creator = Creator("late", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        hung = asyncio.ensure_future(read())
        await creator.entered.wait()
        waiters = [asyncio.ensure_future(read()) for _ in range(5)]
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, LockTimeout) for r in results)
        assert "wait_timeout" in str(results[0])
        assert isinstance(results[0], LockError)
        assert d.stats()["timeouts"] == 5 and d.stats()["waited"] == 5
        creator.gate.set()
        assert await hung == "late"
        await asyncio.sleep(0)
        assert not lock_of(d).locked()
        assert creator.calls == 1

    run(main)


def test_wait_timeout_is_met_when_the_creator_is_quick_enough(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60, wait_timeout=DEADLINE)
        creator = Creator("made", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(10)]
        await creator.entered.wait()
        await asyncio.sleep(0)
        creator.gate.set()
        assert await asyncio.gather(*tasks) == ["made"] * 10
        assert d.stats()["timeouts"] == 0
        assert not lock_of(d).locked()

    run(main)


def test_an_acquire_that_succeeds_after_the_timeout_is_released(classes):
    class Stubborn:
        """A lock whose acquire() ignores cancellation and succeeds late."""

        def __init__(self):
            self.held = False
            self.release_calls = 0
            self.proceed = asyncio.Event()

        async def acquire(self):
            while True:
                try:
                    await self.proceed.wait()
                    break
                except asyncio.CancelledError:
                    continue
            self.held = True
            return True

        def release(self):
            self.release_calls += 1
            self.held = False

        def locked(self):
            return self.held

    async def main():
        lock = Stubborn()
        assert await aio._acquire_within(lock, 0.01) is False
        lock.proceed.set()
        await wait_until(lambda: lock.release_calls == 1, "the late acquire to be released")
        assert not lock.held

    run(main)


def test_a_waiter_with_a_timeout_cancelled_leaves_nothing_locked(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60, wait_timeout=DEADLINE)
        creator = Creator("v", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        first = asyncio.ensure_future(read())
        await creator.entered.wait()
        waiter = asyncio.ensure_future(read())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        creator.gate.set()
        assert await first == "v"
        await wait_until(lambda: not lock_of(d).locked(), "the lock to be free")

    run(main)


# -- background ----------------------------------------------------------------------------


def test_background_returns_the_stale_value_at_once_and_creates_in_a_task(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60, background=True)
        async with d.acquire(lambda: "old") as value:  # no value: created inline
            assert value == "old"
        d.createdtime = time.time() - 3600
        creator = Creator("new", gate=True)
        creator.arm()
        async with d.acquire(creator) as value:
            assert value == "old"  # the caller that won does not wait either
        assert len(d._state.tasks) == 1, "the background task is kept referenced"
        await creator.entered.wait()
        assert lock_of(d).locked()
        async with d.acquire(creator) as value:
            assert value == "old"
        creator.gate.set()
        await wait_until(lambda: not d._state.tasks, "the background task to end")
        assert not lock_of(d).locked()
        async with d.acquire(creator) as value:
            assert value == "new"
        assert creator.calls == 1
        assert d.stats()["stale"] == 2

    run(main)


def test_background_failure_is_logged_and_the_next_caller_retries(AsyncDogpile, caplog):
    async def main():
        d = AsyncDogpile(60, background=True)
        async with d.acquire(lambda: "old"):
            pass
        d.createdtime = time.time() - 3600
        failing = Creator(error=RuntimeError("backend down"))
        async with d.acquire(failing) as value:
            assert value == "old"
        await wait_until(lambda: not d._state.tasks, "the background task to end")
        assert not lock_of(d).locked()
        assert d.is_expired
        good = Creator("new")
        async with d.acquire(good) as value:
            assert value == "old"
        await wait_until(lambda: not d._state.tasks, "the second background task")
        async with d.acquire(good) as value:
            assert value == "new"
        assert (failing.calls, good.calls) == (1, 1)
        assert d.stats()["failed"] == 1

    with caplog.at_level(logging.WARNING, logger="dogpile"):
        run(main)
    failures = [r for r in caplog.records if "background creation failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.WARNING
    assert "backend down" in str(failures[0].exc_info[1])


def test_a_background_task_cancelled_before_it_ran_releases_the_lock(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60, background=True)
        async with d.acquire(lambda: "old"):
            pass
        d.createdtime = time.time() - 3600
        creator = Creator("new")
        async with d.acquire(creator) as value:
            assert value == "old"
        (task,) = d._state.tasks
        task.cancel()
        await wait_until(lambda: not d._state.tasks, "the cancelled task")
        assert not lock_of(d).locked()
        assert creator.calls == 0

    run(main)


def test_a_background_task_cancelled_mid_creation_releases_the_lock(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60, background=True)
        async with d.acquire(lambda: "old"):
            pass
        d.createdtime = time.time() - 3600
        creator = Creator("new", gate=True)
        creator.arm()
        async with d.acquire(creator):
            pass
        await creator.entered.wait()
        (task,) = d._state.tasks
        task.cancel()
        await wait_until(lambda: not d._state.tasks, "the cancelled task")
        assert not lock_of(d).locked()

    run(main)


# -- early refresh -------------------------------------------------------------------------


def test_early_refresh_recreates_a_fresh_value_when_due(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60, early_refresh=1.0)
        creator = Creator(lambda n: f"v{n}")
        async with d.acquire(creator) as value:
            assert value == "v1"
        # A creation that took far longer than the expiry: XFetch is certain
        # to refresh now.
        d._state.delta = 1e9
        async with d.acquire(creator) as value:
            assert value == "v2"
        assert d.stats()["early"] == 1
        d._state.delta = 0.0  # never due
        async with d.acquire(creator) as value:
            assert value == "v2"
        assert d.stats()["fresh"] == 1

    run(main)


# -- stats ---------------------------------------------------------------------------------


def test_stats_after_a_scripted_sequence(AsyncDogpile):
    async def main():
        # A timeout only where one is wanted (below): a short one here
        # could run out in a GC pause while waiters take turns.
        d = AsyncDogpile(60, wait_timeout=DEADLINE)
        assert d.stats() == dict.fromkeys(
            ("fresh", "stale", "created", "waited", "failed", "early", "timeouts"), 0
        )
        # 1 creation with 3 waiters.
        creator = Creator("a", gate=True)
        creator.arm()

        async def read(c):
            async with d.acquire(c) as value:
                return value

        tasks = [asyncio.ensure_future(read(creator)) for _ in range(4)]
        await creator.entered.wait()
        await asyncio.sleep(0)
        creator.gate.set()
        await asyncio.gather(*tasks)
        # 5 fresh hits.
        for _ in range(5):
            await read(creator)
        # Expired: 1 creation, 2 stale reads during it.
        d.createdtime = time.time() - 3600
        slow = Creator("b", gate=True)
        slow.arm()
        first = asyncio.ensure_future(read(slow))
        await slow.entered.wait()
        await read(slow)
        await read(slow)
        slow.gate.set()
        await first
        # A failure, then a timeout.
        d.createdtime = -1
        with pytest.raises(KeyError):
            await read(Creator(error=KeyError("x"), coroutine=False))
        hung = Creator("c", gate=True)
        hung.arm()
        pending = asyncio.ensure_future(read(hung))
        await hung.entered.wait()
        d._state.wait_timeout = 0.01
        with pytest.raises(LockTimeout):
            await read(hung)
        hung.gate.set()
        await pending
        assert d.stats() == {
            "fresh": 5,
            "stale": 2,
            "created": 4,
            "waited": 4,
            "failed": 1,
            "early": 0,
            "timeouts": 1,
        }

    run(main)


# -- attributes and bad input --------------------------------------------------------------


def test_attributes(AsyncDogpile):
    d = AsyncDogpile(30)
    assert d.createdtime == -1 and not d.has_value and d.is_expired
    assert d.expiretime == 30.0
    d.createdtime = time.time()
    assert d.has_value and not d.is_expired
    d.expiretime = None
    assert d.expiretime is None
    d.createdtime = 1.0
    assert not d.is_expired  # never expires
    assert AsyncDogpile(None).expiretime is None
    before = time.time()
    assert AsyncDogpile(5, init=True).createdtime >= before
    assert "AsyncDogpile" in repr(d) and "expiretime=None" in repr(d)


def test_bad_input_gets_the_messages_of_dogpile(AsyncDogpile, impl):
    for args, kw in [(("x",), {}), ((-1,), {}), ((math.nan,), {}), ((1,), {"wait_timeout": -1})]:
        with pytest.raises((TypeError, ValueError)) as theirs:
            impl.Dogpile(*args, **kw)
        with pytest.raises(type(theirs.value)) as ours:
            AsyncDogpile(*args, **kw)
        assert str(ours.value) == str(theirs.value)
    d, sync = AsyncDogpile(1), impl.Dogpile(1)
    for args in [(None,), ("not callable",), (len, "x"), (len, None, 3), (len, len, len)]:
        with pytest.raises(TypeError) as theirs:
            sync.acquire(*args)
        with pytest.raises(TypeError) as ours:
            d.acquire(*args)
        assert str(ours.value) == str(theirs.value)
    for bad in ["x", math.nan]:
        with pytest.raises((TypeError, ValueError)) as theirs:
            sync.createdtime = bad
        with pytest.raises(type(theirs.value)) as ours:
            d.createdtime = bad
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError):
        d.expiretime = -5


def test_bad_locks_and_options(AsyncDogpile):
    with pytest.raises(TypeError, match=r"lock must have acquire\(\) \(a coroutine\), release"):
        AsyncDogpile(1, lock=object())
    with pytest.raises(TypeError, match="has no locked"):

        class NoLocked:
            async def acquire(self):
                return True

            def release(self):
                pass

        AsyncDogpile(1, lock=NoLocked())
    for sync in [threading.Lock(), threading.RLock(), threading.Semaphore()]:
        with pytest.raises(TypeError, match="is a threading lock"):
            AsyncDogpile(1, lock=sync)
    with pytest.raises(TypeError, match="background must be True or False"):
        AsyncDogpile(1, background=object())
    with pytest.raises(ValueError, match="early_refresh"):
        AsyncDogpile(1, early_refresh=-1)


def test_the_threading_mutexes_are_refused(AsyncDogpile, tmp_path, redis_client):
    """FileMutex and RedisMutex are threading locks: refused by name, before
    their acquire() could block the event loop (the check finds their
    classes without importing dogpile.mutexes, see _aio_locks)."""
    from dogpile.mutexes import FileMutex, RedisMutex

    for mutex in [FileMutex(tmp_path / "a.lock"), RedisMutex(redis_client, "refused")]:
        with pytest.raises(TypeError, match=f"{type(mutex).__name__!r} is a threading lock"):
            AsyncDogpile(1, lock=mutex)
        assert not mutex.locked()


def test_a_lock_whose_acquire_is_not_a_coroutine_is_refused_and_left_free(AsyncDogpile):
    class LooksAsync:
        """Not recognisably a threading lock, but its acquire() blocks."""

        def __init__(self):
            self.inner = threading.Lock()

        def acquire(self):
            return self.inner.acquire()

        def release(self):
            self.inner.release()

        def locked(self):
            return self.inner.locked()

    async def main():
        lock = LooksAsync()
        d = AsyncDogpile(1, lock=lock)
        refused = r"LooksAsync.acquire\(\) returned 'bool', not an awaitable"
        with pytest.raises(TypeError, match=refused):
            async with d.acquire(lambda: 1):
                pass
        assert not lock.locked()

    run(main)


def test_a_used_async_dogpile_dies_with_its_last_reference(AsyncDogpile):
    async def main():
        d = AsyncDogpile(60)
        for _ in range(3):
            async with d.acquire(lambda: 1):
                pass
        return weakref.ref(d)

    gc.disable()
    try:
        ref = run(main)
        assert ref() is None
    finally:
        gc.enable()


def test_the_fresh_hit_logs_nothing_and_the_slow_paths_log_at_debug(AsyncDogpile, caplog):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator("v", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(2)]
        await creator.entered.wait()
        creator.gate.set()
        await asyncio.gather(*tasks)
        caplog.clear()
        for _ in range(10):
            await read()

    with caplog.at_level(logging.DEBUG, logger="dogpile"):
        run(main)
    assert caplog.records == []


def test_the_slow_paths_log_at_debug(AsyncDogpile, caplog):
    async def main():
        d = AsyncDogpile(60)
        creator = Creator("v", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(2)]
        await creator.entered.wait()
        creator.gate.set()
        await asyncio.gather(*tasks)

    with caplog.at_level(logging.DEBUG, logger="dogpile"):
        run(main)
    messages = [r.getMessage() for r in caplog.records if r.name == "dogpile"]
    assert any("calling the creator" in m for m in messages)
    assert any("waiting for the creator" in m for m in messages)


# -- custom locks --------------------------------------------------------------------------


class AsyncReleaseLock:
    """An asyncio lock whose release() and locked() are coroutines, and
    whose acquire() takes ``blocking`` (as AsyncRedisMutex's does)."""

    def __init__(self):
        self._lock = asyncio.Lock()
        self.nonblocking_tries = 0
        self.releases = 0

    async def acquire(self, blocking=True):
        if not blocking:
            self.nonblocking_tries += 1
            if self._lock.locked():
                return False
        await self._lock.acquire()
        return True

    async def release(self):
        await asyncio.sleep(0)
        self.releases += 1
        self._lock.release()

    async def locked(self):
        return self._lock.locked()


def test_a_custom_lock_with_coroutine_release(AsyncDogpile):
    async def main():
        lock = AsyncReleaseLock()
        d = AsyncDogpile(60, lock=lock)
        creator = Creator("v", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(10)]
        await creator.entered.wait()
        await asyncio.sleep(0)
        creator.gate.set()
        assert await asyncio.gather(*tasks) == ["v"] * 10
        assert not await lock.locked()
        assert lock.releases == 10  # the creator's, then each waiter's
        d.createdtime = time.time() - 3600
        slow = Creator("new", gate=True)
        slow.arm()
        first = asyncio.ensure_future(_read(d, slow))
        await slow.entered.wait()
        assert await _read(d, slow) == "v"
        assert lock.nonblocking_tries >= 2
        slow.gate.set()
        assert await first == "new"

    run(main)


async def _read(d, creator):
    async with d.acquire(creator) as value:
        return value


def test_a_shared_asyncio_lock_and_semaphore(AsyncDogpile):
    async def main():
        for lock in (asyncio.Lock(), asyncio.Semaphore(1)):
            d = AsyncDogpile(60, lock=lock)
            assert await _read(d, Creator("v")) == "v"
            d.createdtime = time.time() - 3600
            slow = Creator("new", gate=True)
            slow.arm()
            first = asyncio.ensure_future(_read(d, slow))
            await slow.entered.wait()
            assert await _read(d, slow) == "v"
            slow.gate.set()
            assert await first == "new"
            assert not lock.locked()

    run(main)


# -- AsyncLock -----------------------------------------------------------------------------


def _store(initial=None):
    store = {} if initial is None else {"k": initial}

    def value_and_created():
        if "k" not in store:
            raise NeedRegenerationException()
        return store["k"]

    return store, value_and_created


def test_async_lock_fresh_missing_and_expired(AsyncLock):
    async def main():
        mutex = asyncio.Lock()
        store, stored = _store()
        calls = []

        async def creator():
            calls.append(1)
            store["k"] = (f"v{len(calls)}", time.time())
            return store["k"]

        async with AsyncLock(mutex, creator, stored, 60) as value:
            assert value == "v1"
        async with AsyncLock(mutex, creator, stored, 60) as value:
            assert value == "v1"
        store["k"] = ("old", time.time() - 3600)
        async with AsyncLock(mutex, creator, stored, 60) as value:
            assert value == "v2"
        assert len(calls) == 2 and not mutex.locked()
        assert AsyncLock(mutex, creator, stored, None).expiretime is None

    run(main)


def test_async_lock_a_thousand_tasks_on_a_missing_value_one_creation(AsyncLock):
    async def main():
        mutex = asyncio.Lock()
        store, stored = _store()
        creator = Creator(gate=True)
        creator.arm()

        async def create():
            await creator()
            store["k"] = ("made", time.time())
            return store["k"]

        async def stored_async():
            return stored()

        async def read(i):
            fn = stored if i % 2 else stored_async
            async with AsyncLock(mutex, create, fn, 60) as value:
                return value

        tasks = [asyncio.ensure_future(read(i)) for i in range(1000)]
        await creator.entered.wait()
        await asyncio.sleep(0)
        creator.gate.set()
        assert await asyncio.gather(*tasks) == ["made"] * 1000
        assert creator.calls == 1 and not mutex.locked()

    run(main)


def test_async_lock_stale_while_another_task_creates(AsyncLock):
    async def main():
        mutex = asyncio.Lock()
        store, stored = _store(("old", time.time() - 3600))
        creator = Creator(gate=True)
        creator.arm()

        async def create():
            await creator()
            store["k"] = ("new", time.time())
            return store["k"]

        async def read():
            async with AsyncLock(mutex, create, stored, 60) as value:
                return value

        first = asyncio.ensure_future(read())
        await creator.entered.wait()
        assert [await read() for _ in range(10)] == ["old"] * 10
        creator.gate.set()
        assert await first == "new"
        assert creator.calls == 1

    run(main)


@pytest.mark.parametrize("kind", ["plain", "coroutine"])
def test_async_lock_async_creator_gets_the_mutex_and_releases_it(AsyncLock, kind):
    async def main():
        mutex = asyncio.Lock()
        store, stored = _store(("old", time.time() - 3600))
        done = asyncio.Event()
        handed = []

        async def regenerate(m):
            try:
                store["k"] = ("new", time.time())
            finally:
                m.release()
                done.set()

        def plain_async_creator(m):
            handed.append(m)
            asyncio.ensure_future(regenerate(m))

        async def coroutine_async_creator(m):
            handed.append(m)
            asyncio.ensure_future(regenerate(m))

        async_creator = plain_async_creator if kind == "plain" else coroutine_async_creator
        async with AsyncLock(mutex, Creator(), stored, 60, async_creator) as value:
            assert value == "old"
        assert handed == [mutex]
        await done.wait()
        assert not mutex.locked()
        async with AsyncLock(mutex, Creator(), stored, 60, async_creator) as value:
            assert value == "new"

    run(main)


def test_async_lock_bad_input(AsyncLock, impl):
    async def main():
        _, stored = _store()
        with pytest.raises(TypeError, match="creator must be callable"):
            async with AsyncLock(asyncio.Lock(), "nope", stored, 60):
                pass
        with pytest.raises(TypeError, match="value_and_created_fn must be callable"):
            async with AsyncLock(asyncio.Lock(), len, None, 60):
                pass
        with pytest.raises(TypeError, match=r"mutex must have acquire\(\)"):
            async with AsyncLock(object(), lambda: ("v", time.time()), stored, 60):
                pass
        sync = threading.Lock()
        with pytest.raises(TypeError, match="not an awaitable"):
            async with AsyncLock(sync, lambda: ("v", time.time()), stored, 60):
                pass
        assert not sync.locked()
        mutex = asyncio.Lock()
        with pytest.raises(TypeError, match=r"creator must return a \(value, createdtime\)"):
            async with AsyncLock(mutex, lambda: "v", stored, 60):
                pass
        assert not mutex.locked()

    run(main)
    for bad in ["x", -1, math.nan]:
        with pytest.raises((TypeError, ValueError)) as theirs:
            impl.Lock(None, len, len, bad)
        with pytest.raises(type(theirs.value)) as ours:
            AsyncLock(None, len, len, bad)
        assert str(ours.value) == str(theirs.value)


def test_async_lock_creator_cancelled_releases_the_mutex(AsyncLock):
    async def main():
        mutex = asyncio.Lock()
        store, stored = _store()
        creator = Creator(gate=True)
        creator.arm()

        async def create():
            await creator()
            store["k"] = ("made", time.time())
            return store["k"]

        async def read():
            async with AsyncLock(mutex, create, stored, 60) as value:
                return value

        first = asyncio.ensure_future(read())
        await creator.entered.wait()
        waiter = asyncio.ensure_future(read())
        await asyncio.sleep(0)
        creator.entered.clear()
        first.cancel()
        await creator.entered.wait()
        creator.gate.set()
        assert await waiter == "made"
        assert creator.calls == 2 and not mutex.locked()

    run(main)


# -- AsyncRedisMutex, on a real server (redis_server.py) ----------------------------------

# The session's Redis server, as fixtures of this module (see redis_server.py).
redis_url = redis_server.redis_url
redis_client = redis_server.redis_client

SRC = os.path.dirname(os.path.dirname(dogpile.__file__))


def test_dogpile_mutexes_exports_async_redis_mutex():
    import dogpile.mutexes
    import dogpile.mutexes._aio_redis

    assert dogpile.mutexes.AsyncRedisMutex is dogpile.mutexes._aio_redis.AsyncRedisMutex


@pytest.fixture
def key(redis_client):
    name = redis_server.unique_key("aio")
    yield name
    redis_server.delete_keys(redis_client, name)


def run_with_client(url, body, *args):
    """Run ``body(client, *args)`` with a redis.asyncio client of ``url``."""
    import redis.asyncio

    async def main():
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await body(client, *args)
        finally:
            await aclose(client)

    return run(main)


def test_async_redis_mutex_holds_a_token_with_the_lease(redis_url, redis_client, key):
    async def body(client):
        mutex = AsyncRedisMutex(client, key, lease=5)
        assert not await mutex.locked()
        assert await mutex.acquire()
        token = redis_client.get(key)
        assert token and len(token) >= 16
        assert 0 < redis_client.pttl(key) <= 5000
        assert await mutex.locked()
        assert await mutex.acquire(False) is False  # one holder in a process too
        await mutex.release()
        assert redis_client.exists(key) == 0
        with pytest.raises(LockError, match="not held"):
            await mutex.release()
        async with mutex:
            assert redis_client.get(key) != token, "a new token for each acquisition"
        assert "free here" in repr(mutex)

    run_with_client(redis_url, body)


def test_async_redis_mutex_waits_for_another_holder_and_times_out(redis_url, redis_client, key):
    async def body(client):
        redis_client.set(key, "another process", px=60000)
        mutex = AsyncRedisMutex(client, key, lease=5)
        assert await mutex.acquire(False) is False
        started = time.monotonic()
        assert await mutex.acquire(timeout=0.1) is False
        assert 0.05 <= time.monotonic() - started < DEADLINE
        waiter = asyncio.ensure_future(mutex.acquire())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        redis_client.delete(key)
        assert await asyncio.wait_for(waiter, DEADLINE)
        await mutex.release()

    run_with_client(redis_url, body)


def test_async_a_socket_timeout_too_short_to_block_on_the_server_polls_instead(
    redis_url, redis_client, key
):
    """As RedisMutex's: a 0.2 s socket_timeout, which the server's late
    reply to a 0.1 s BLPOP or XREAD (up to 0.1 s after it) overran, makes
    the waiter poll instead of having its waits cut off."""
    import redis.asyncio
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    async def main():
        client = redis.asyncio.Redis.from_url(
            redis_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
        )
        try:
            redis_client.set(key, "another process", px=60000)
            mutex = AsyncRedisMutex(client, key, lease=30)
            for _ in range(2):
                assert await mutex.acquire(timeout=0.3) is False
                assert await mutex.acquire_or_wait(timeout=0.3) is False
            waiter = asyncio.ensure_future(mutex.acquire(timeout=DEADLINE))
            await asyncio.sleep(0)
            redis_client.delete(key)
            assert await asyncio.wait_for(waiter, DEADLINE)
            await mutex.release()
        finally:
            await aclose(client)

    run(main)


def test_async_redis_mutex_cancelled_while_waiting_leaves_nothing_locked(
    redis_url, redis_client, key
):
    async def body(client):
        redis_client.set(key, "another process", px=60000)
        mutex = AsyncRedisMutex(client, key, lease=5)
        waiters = [asyncio.ensure_future(mutex.acquire()) for _ in range(3)]
        await asyncio.sleep(0.05)
        for waiter in waiters:
            waiter.cancel()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert redis_client.get(key) == b"another process"
        redis_client.delete(key)
        assert await mutex.acquire(False), "the local queue was left free"
        await mutex.release()

    run_with_client(redis_url, body)


def test_async_redis_mutex_cancelled_at_any_point_leaves_no_key(redis_url, redis_client, key):
    """Cancel acquire() after 0, 1, 2, ... turns of the loop: it either
    got the lock (and releases it here) or leaves no key behind, even when
    the cancellation lands while its SET is on the wire."""

    async def body(client):
        mutex = AsyncRedisMutex(client, key, lease=30)
        for turns in range(12):
            task = asyncio.ensure_future(mutex.acquire())
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            try:
                assert await task
            except asyncio.CancelledError:
                # Its SET may still be on the wire: wait for the take-back.
                await wait_until_async(lambda: not _aio_locks._cleanups, "the take-back")
            else:
                await mutex.release()
            assert redis_client.exists(key) == 0
            assert mutex._local is None or not mutex._local.locked()

    run_with_client(redis_url, body)


def test_async_redis_mutex_lease_lost_and_renewed(redis_url, redis_client, key):
    async def body(client):
        lapsing = AsyncRedisMutex(client, key, lease=0.2, auto_renew=False)
        await lapsing.acquire()
        await wait_until_async(lambda: redis_client.exists(key) == 0, "the lease to end")
        redis_client.set(key, "someone else", px=60000)
        with pytest.raises(LeaseLost, match="was not renewed"):
            await lapsing.release()
        assert redis_client.get(key) == b"someone else", "another holder's lock left alone"
        redis_client.delete(key)
        # 1.5 s: a renewal (every 0.5 s) 1 s late on a loaded machine still
        # lands in time (0.5 s leases lapsed under heavy load in 3 of 60
        # runs of test_redis_cluster's asyncio renewal test).
        renewed = AsyncRedisMutex(client, key, lease=1.5)
        await renewed.acquire()
        await asyncio.sleep(1.7)  # more than a lease: only renewal keeps it
        assert redis_client.exists(key) == 1
        await renewed.release()
        assert redis_client.exists(key) == 0

    run_with_client(redis_url, body)


async def wait_until_async(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.01)


def test_async_redis_mutex_bad_input(redis_url, redis_client, key):
    with pytest.raises(TypeError, match="synchronous 'Redis': use dogpile.mutexes.RedisMutex"):
        AsyncRedisMutex(redis_client, key)
    with pytest.raises(TypeError, match="has no set"):
        AsyncRedisMutex(object(), key)

    async def body(client):
        with pytest.raises(TypeError, match="str or bytes"):
            AsyncRedisMutex(client, 5)
        with pytest.raises(ValueError, match="non-empty"):
            AsyncRedisMutex(client, "")
        with pytest.raises(ValueError, match="lease"):
            AsyncRedisMutex(client, key, lease=0)
        mutex = AsyncRedisMutex(client, key)
        with pytest.raises(ValueError):
            await mutex.acquire(False, 1)
        assert not await mutex.locked()

    run_with_client(redis_url, body)


def test_async_redis_mutex_unreachable_server_is_named(key):
    import redis.asyncio

    port = redis_server.free_port()

    async def main():
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries: redis-py 6+ retries a refused connection three times
        # with a back-off, seconds that prove nothing here.
        client = redis.asyncio.Redis(
            host="127.0.0.1", port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            mutex = AsyncRedisMutex(client, key)
            with pytest.raises(redis.ConnectionError, match=f"127.0.0.1:{port}"):
                await mutex.acquire()
            assert not mutex._local.locked(), "the local queue was left free"
        finally:
            await aclose(client)

    pytest.importorskip("redis")
    run(main)


def test_async_dogpile_over_async_redis_mutex_in_one_process(AsyncDogpile, redis_url, key):
    async def body(client):
        mutex = AsyncRedisMutex(client, key + ":lock", lease=5)
        d = AsyncDogpile(60, lock=mutex)
        creator = Creator("made", gate=True)
        creator.arm()

        async def read():
            async with d.acquire(creator) as value:
                return value

        tasks = [asyncio.ensure_future(read()) for _ in range(100)]
        await creator.entered.wait()
        await asyncio.sleep(0.05)
        creator.gate.set()
        assert await asyncio.gather(*tasks) == ["made"] * 100
        assert creator.calls == 1
        # Expired: one creates, the others fall through to the stale value.
        d.createdtime = time.time() - 3600
        slow = Creator("new", gate=True)
        slow.arm()
        first = asyncio.ensure_future(_read(d, slow))
        await slow.entered.wait()
        assert [await _read(d, slow) for _ in range(5)] == ["made"] * 5
        slow.gate.set()
        assert await first == "new"
        assert not await mutex.locked()

    run_with_client(redis_url, body)


_CHILD = r"""
import asyncio, importlib, json, sys, time
import redis.asyncio
from dogpile import NeedRegenerationException, aio
from dogpile.mutexes._aio_redis import AsyncRedisMutex

url, prefix, core, tasks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
classes = aio._build(importlib.import_module(core))

async def main():
    client = redis.asyncio.Redis.from_url(url)
    try:
        d = classes.AsyncDogpile(60, lock=AsyncRedisMutex(client, prefix + "lock", lease=5))

        async def stored():
            raw = await client.get(prefix + "value")
            if raw is None:
                raise NeedRegenerationException()
            return tuple(json.loads(raw))

        async def create():
            n = await client.incr(prefix + "creations")
            await asyncio.sleep(0.2)
            pair = [f"made-{n}", time.time()]
            await client.set(prefix + "value", json.dumps(pair))
            return tuple(pair)

        async def read():
            async with d.acquire(create, value_and_created_fn=stored) as value:
                return value

        await client.incr(prefix + "ready")
        deadline = time.monotonic() + 20
        while not await client.exists(prefix + "go"):
            assert time.monotonic() < deadline, "never told to go"
            await asyncio.sleep(0.005)
        values = await asyncio.gather(*[read() for _ in range(tasks)])
        print(json.dumps({"values": sorted(set(values)), "stats": d.stats()}))
    finally:
        await (getattr(client, "aclose", None) or client.close)()

asyncio.run(asyncio.wait_for(main(), 30))
"""


def test_async_redis_mutex_across_processes_one_creation(impl, redis_url, redis_client, key):
    """Three processes, each with its own event loop and 50 tasks, on a
    missing value kept in Redis: one creation among them all."""
    prefix = key + ":"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, redis_url, prefix, impl.__name__, "50"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        deadline = time.monotonic() + 3 * DEADLINE
        while int(redis_client.get(prefix + "ready") or 0) < len(children):
            assert all(c.poll() is None for c in children), [c.communicate() for c in children]
            assert time.monotonic() < deadline, "the children never got ready"
            time.sleep(0.01)
        redis_client.set(prefix + "go", 1)
        outputs = [c.communicate(timeout=3 * DEADLINE) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err
    results = [json.loads(out) for out, _ in outputs]
    assert int(redis_client.get(prefix + "creations")) == 1
    assert all(r["values"] == ["made-1"] for r in results), results
    assert sum(r["stats"]["created"] for r in results) == 1
    assert redis_client.exists(prefix + "lock") == 0, "the lock was left held"


# -- AsyncLock: dogpile.cache's contract (its dogpile/lock.py), point by point ------------------


class _Calls:
    """value_and_created_fn answering from a list (a coroutine), creator
    and async_creator counting their calls."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.reads = 0
        self.created = 0
        self.handed = []

    async def read(self):
        self.reads += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            raise NeedRegenerationException()
        return answer

    async def creator(self):
        self.created += 1
        return ("new", time.time())

    def async_creator(self, mutex):
        self.handed.append((mutex, mutex.locked()))
        mutex.release()


def test_async_lock_expired_value_taken_without_waiting_is_not_read_again(AsyncLock):
    """Point 1: one value_and_created_fn call per regeneration."""

    async def main():
        for with_async_creator in (False, True):
            calls = _Calls(("old", time.time() - 3600))
            mutex = asyncio.Lock()
            extra = [calls.async_creator] if with_async_creator else []
            async with AsyncLock(mutex, calls.creator, calls.read, 60, *extra) as value:
                assert value == ("old" if with_async_creator else "new")
            assert calls.reads == 1
            assert calls.created == (0 if with_async_creator else 1)
            assert calls.handed == ([(mutex, True)] if with_async_creator else [])
            assert not mutex.locked()

    run(main)


def test_async_lock_pair_after_waiting_counts_as_a_value(AsyncLock):
    """Point 2: after waiting, any pair is a value: (payload, 0) (what
    get_or_create_multi answers for a miss) or an expired one goes to
    async_creator, or to creator without one."""

    async def never():
        raise NotImplementedError("not to be called")

    async def main():
        for answers in [(("NO_VALUE", 0),), (None, ("old", time.time() - 3600))]:
            calls = _Calls(*answers)
            mutex = asyncio.Lock()
            async with AsyncLock(mutex, never, calls.read, 60, calls.async_creator) as value:
                assert value == answers[-1][0]
            assert calls.reads == 2
            assert calls.handed == [(mutex, True)]
            assert not mutex.locked()
        calls = _Calls(("NO_VALUE", 0))
        async with AsyncLock(asyncio.Lock(), calls.creator, calls.read, 60) as value:
            assert value == "new"
        assert (calls.reads, calls.created) == (2, 1)

    run(main)


def test_async_lock_async_creator_raising_releases_the_mutex(AsyncLock):
    """Point 3: not handed off, so released; the caller sees the error."""

    async def main():
        for kind in ("plain", "coroutine"):
            calls = _Calls(("old", time.time() - 3600))
            mutex = asyncio.Lock()

            def plain(m):
                raise KeyError("no worker")

            async def coroutine(m):
                raise KeyError("no worker")

            async_creator = plain if kind == "plain" else coroutine
            with pytest.raises(KeyError, match="no worker"):
                async with AsyncLock(mutex, calls.creator, calls.read, 60, async_creator):
                    pass
            assert not mutex.locked(), kind
            assert calls.created == 0

    run(main)


def test_async_lock_attributes_read_and_write_as_in_dogpile_cache(AsyncLock):
    """Point 4: the five attributes of dogpile.cache's Lock, changed after
    construction, are the ones used."""

    async def main():
        calls = _Calls(("old", time.time() - 60))
        lock = AsyncLock(None, None, None, 3600)
        for name in ("mutex", "creator", "value_and_created_fn", "async_creator"):
            assert getattr(lock, name) is None
        assert lock.expiretime == 3600
        mutex = asyncio.Lock()
        lock.mutex, lock.creator, lock.value_and_created_fn = mutex, calls.creator, calls.read
        async with lock as value:
            assert value == "old"
        lock.expiretime = 30
        assert lock.expiretime == 30
        lock.async_creator = calls.async_creator
        async with lock as value:
            assert value == "old"
        assert calls.handed == [(mutex, True)]
        lock.expiretime = None
        assert lock.expiretime is None
        lock.async_creator = None
        async with lock as value:
            assert value == "old"
        assert calls.created == 0
        with pytest.raises(ValueError, match=">= 0"):
            lock.expiretime = -5

    run(main)


# -- a child forked while the event loop runs -----------------------------------------------

_FORKED = r"""
import asyncio, importlib, json, multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
import redis.asyncio
from dogpile import aio
from dogpile.mutexes._aio_redis import AsyncRedisMutex

url, key, core = sys.argv[1], sys.argv[2], sys.argv[3]
classes = aio._build(importlib.import_module(core))
client = redis.asyncio.Redis.from_url(url)
# Module-level, as a service would have them: used in the parent's loop,
# then in a child forked from inside that loop.
plain = classes.AsyncDogpile(60)
mutex = AsyncRedisMutex(client, key, lease=5)
shared = classes.AsyncDogpile(60, lock=mutex)


async def use(tag):
    async def make():
        return f"{tag}-{os.getpid()}"

    for d in (plain, shared):
        d.createdtime = -1  # no value: the next acquire() takes the lock
    async with plain.acquire(make) as a:
        pass
    async with shared.acquire(make) as b:
        pass
    async with mutex:
        held = await mutex.locked()
    return [a, b, held]


def in_child():
    async def main():
        try:
            return await use("child")
        finally:
            await client.connection_pool.disconnect()

    return asyncio.run(asyncio.wait_for(main(), 20))


async def parent():
    first = await use("parent")
    # The child opens connections of its own.
    await client.connection_pool.disconnect()
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=fork) as pool:
        second = await asyncio.get_running_loop().run_in_executor(pool, in_child)
    third = await use("parent")
    await client.connection_pool.disconnect()
    print(json.dumps([first, second, third]))


asyncio.run(asyncio.wait_for(parent(), 30))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_a_child_forked_from_a_running_loop_starts_clean(impl, redis_url, redis_client, key):
    """The child's copy of the parent's loop still reads as running; the
    AsyncDogpile's default lock and the AsyncRedisMutex's local queue must
    not take that for a loop in use."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _FORKED, redis_url, key, impl.__name__],
        capture_output=True,
        text=True,
        env=env,
        timeout=3 * DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    first, second, third = json.loads(proc.stdout.strip().splitlines()[-1])
    parent_pid = first[0].split("-")[1]
    assert first == [f"parent-{parent_pid}"] * 2 + [True]
    assert second[0].startswith("child-") and second[0] != f"child-{parent_pid}"
    assert second == [second[0]] * 2 + [True]
    assert third == first
    assert redis_client.exists(key) == 0, "the lock was left held"


def test_async_redis_mutex_with_a_single_connection_client(redis_url, redis_client, key):
    """redis.asyncio's single-connection client: the caller's blocking
    command holds its one connection for a lease and a half; the renewal
    task must not wait behind it (nor share it) and let the lease run
    out."""
    import redis.asyncio

    side = key + ":side"

    async def main():
        pool = redis.asyncio.ConnectionPool.from_url(redis_url, socket_timeout=DEADLINE)
        client = redis.asyncio.Redis(connection_pool=pool, single_connection_client=True)
        try:
            mutex = AsyncRedisMutex(client, key, lease=1.0)  # renewed every 1/3 s
            assert await mutex.acquire()
            token = redis_client.get(key)
            assert await client.blpop([side], timeout=1.5) is None
            assert redis_client.get(key) == token, "the lease ran out behind the caller"
            for i in range(200):
                await client.set(side, i)
                assert await client.get(side) == str(i).encode()
            await mutex.release()
            assert not redis_client.exists(key)
        finally:
            await aclose(client)

    run(main)


# -- a release whose reply was lost, or that is cancelled ------------------------------------


@pytest.fixture
def proxy(redis_url):
    import redis_proxy

    p = redis_proxy.proxy_for(redis_url)
    yield p
    p.close()


def test_async_release_whose_reply_was_lost_is_resent_and_succeeds(
    AsyncDogpile, redis_client, key, proxy
):
    """As for RedisMutex: the first run of the release deleted the key, its
    reply was lost, the resent one must not report a lost lease; through an
    AsyncDogpile the caller gets its value.  A lock taken by another holder
    before the release ran is still LeaseLost, and left alone."""
    import redis.asyncio
    from redis_proxy import Rule, is_eval_of, resending

    async def main():
        client = redis.asyncio.Redis(
            host="127.0.0.1", port=proxy.port, **resending(socket_timeout=0.5)
        )
        try:
            rule = proxy.add(Rule(is_eval_of(b"'del'"), "drop-reply"))
            mutex = AsyncRedisMutex(client, key, lease=5)
            async with AsyncDogpile(60, lock=mutex).acquire(lambda: "made") as value:
                assert value == "made"
            assert rule.seen == 2, "the release was not resent: no test"
            assert redis_client.exists(key) == 0
            proxy.rules.remove(rule)
            stolen = proxy.add(Rule(is_eval_of(b"'del'"), "drop-reply"))
            assert await mutex.acquire()
            redis_client.set(key, "thief", px=60_000)
            with pytest.raises(LeaseLost):
                await mutex.release()
            assert stolen.seen == 2
            assert redis_client.get(key) == b"thief"
            assert "free here" in repr(mutex)
        finally:
            await aclose(client)

    run(main)


@pytest.mark.parametrize("how", ["release", "async with"])
def test_async_release_cancelled_while_waiting_for_a_connection(redis_url, redis_client, key, how):
    """The pool's only connection is busy; release() waits for it and is
    cancelled.  The key must then be gone, or still locked and the mutex
    still held (never locked while the mutex says free), and once the
    connection is back the key goes and the mutex is free."""
    import redis.asyncio

    side = key + ":side"

    async def main():
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            redis_url, max_connections=1, timeout=DEADLINE
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        try:
            mutex = AsyncRedisMutex(client, key, lease=30, auto_renew=False)
            entered = asyncio.Event()
            leave = asyncio.Event()

            async def hold():
                if how == "release":
                    await mutex.acquire()
                    entered.set()
                    await leave.wait()
                    await mutex.release()
                else:
                    async with mutex:
                        entered.set()
                        await leave.wait()

            holder = asyncio.ensure_future(hold())
            await entered.wait()
            # Another task takes the pool's only connection.
            blocker = asyncio.ensure_future(client.blpop([side], timeout=DEADLINE))
            await wait_until_async(
                lambda: any(c.get("cmd") == "blpop" for c in redis_client.client_list()),
                "the blocking command",
            )
            leave.set()
            for _ in range(20):  # the release starts and waits for the connection
                await asyncio.sleep(0)
            assert not holder.done()
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
            if redis_client.exists(key):
                assert "held here" in repr(mutex), "the key is locked and the mutex says free"
                with pytest.raises(LockError, match="being released"):
                    await mutex.release()
            redis_client.rpush(side, "done")
            assert await blocker == (side.encode(), b"done")
            await wait_until_async(lambda: redis_client.exists(key) == 0, "the delete")
            await wait_until_async(lambda: "free here" in repr(mutex), "the mutex freed")
            assert await mutex.acquire(False)
            await mutex.release()
        finally:
            await aclose(client)
            redis_client.delete(side)

    run(main)


# -- nothing stays locked after asyncio.run() ------------------------------------------------

_SHUTDOWN = r"""
import asyncio, importlib, sys, time
import redis.asyncio
from dogpile import aio
from dogpile.mutexes._aio_redis import AsyncRedisMutex

port, key, flag, core, case = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
classes = aio._build(importlib.import_module(core))


async def until_flag(client):
    # The proxy sets the flag when it holds back the command under test.
    deadline = time.monotonic() + 20
    while not await client.exists(flag):
        assert time.monotonic() < deadline, "the proxy never saw the command"
        await asyncio.sleep(0.005)


async def background_release():
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    d = classes.AsyncDogpile(60, lock=AsyncRedisMutex(client, key, lease=30), background=True)
    async with d.acquire(lambda: "first") as value:
        assert value == "first"
    d.createdtime = time.time() - 3600
    async with d.acquire(lambda: "second") as value:
        assert value == "first"  # stale: the creation runs in the background
    await until_flag(client)  # its release is on its way


async def cancelled_acquire():
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    mutex = AsyncRedisMutex(client, key, lease=30)
    task = asyncio.ensure_future(mutex.acquire())
    await until_flag(client)  # its SET ran; the reply is on its way
    task.cancel()


# main() returns with the clean-up under way: asyncio.run() cancels every
# task of the loop and closes it.  (The client is left open on purpose: a
# client closed here would cut off the clean-up for its own reasons.)
asyncio.run({"background": background_release, "acquire": cancelled_acquire}[case]())
print("ok")
"""


@pytest.mark.parametrize("case", ["background", "acquire"])
def test_nothing_stays_locked_after_asyncio_run_ends(impl, redis_client, key, proxy, case):
    """A background creation's release in flight when main() returns (the
    proxy holds the command back until the client hangs up), and the
    take-back of a cancelled acquire() whose SET ran (the proxy drops its
    reply): the loop's shutdown cancels both, and neither may leave the
    key locked for its 30 s lease."""
    from redis_proxy import Rule, is_eval_of

    flag = key + ":flag"
    if case == "background":
        # The first release (of the first creation) passes.
        rule = Rule(is_eval_of(b"'del'"), "hold-command", skip=1)
    else:
        rule = Rule(is_eval_of(b"'NX'"), "drop-reply")
    rule.on_act = lambda: redis_client.set(flag, 1)
    proxy.add(rule)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _SHUTDOWN, str(proxy.port), key, flag, impl.__name__, case],
        capture_output=True,
        text=True,
        env=env,
        timeout=3 * DEADLINE,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert rule.acted.is_set()
    assert redis_client.exists(key) == 0, "the key stayed locked after the loop ended"


def test_async_waiter_is_woken_by_the_release_not_by_polling(redis_url, redis_client, key):
    """AsyncRedisMutex: the waiting task tries the key once and blocks on
    the server (BLPOP) until the release of another process's holder wakes
    it: two tries and one BLPOP, however long the lock was held."""

    def counts():
        stats = redis_client.info("commandstats")
        return [stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("eval", "blpop")]

    async def body(client):
        from dogpile.mutexes import RedisMutex

        holder = RedisMutex(redis_client, key, lease=30)
        holder.acquire()
        mutex = AsyncRedisMutex(client, key, lease=30)
        before = counts()
        waiter = asyncio.ensure_future(mutex.acquire())
        await wait_until_async(
            lambda: any(c.get("cmd") == "blpop" for c in redis_client.client_list()),
            "the waiter blocked on the server",
        )
        holder.release()
        assert await asyncio.wait_for(waiter, DEADLINE)
        evals, blpops = (a - b for a, b in zip(counts(), before))
        # Its two tries and the holder's release; a BLPOP that reached its
        # 1 s cap on a slow machine before the release would add one try.
        assert 1 <= blpops <= 2
        assert evals == 2 + blpops
        await mutex.release()

    run_with_client(redis_url, body)


class Counted:
    """An AsyncRedisMutex that records what each acquire_or_wait() gave."""

    def __init__(self, inner, takes):
        self.inner = inner
        self.takes = takes

    async def acquire(self, blocking=True, timeout=-1):
        return await self.inner.acquire(blocking, timeout)

    async def acquire_or_wait(self, timeout=-1):
        taken = await self.inner.acquire_or_wait(timeout)
        self.takes.append(taken)
        return taken

    def release(self):
        return self.inner.release()

    def locked(self):
        return self.inner.locked()


@pytest.mark.parametrize("failures", [0, 1])
def test_async_cold_key_waiters_read_once_over_a_real_server(
    classes, redis_url, redis_client, key, failures, monkeypatch
):
    """AsyncDogpile over AsyncRedisMutex on a key with no value: tasks that
    each have their own client, mutex and AsyncDogpile (processes, as the
    server sees them) wait in XREAD while one creates, then read the value
    once without taking the key; a failed creation is retried once."""
    import redis.asyncio

    from dogpile.mutexes import _protocol

    # The 1 s safety net off (DEADLINE instead): a waiter lined up first
    # must not return at its cap, and read and wait again, while a loaded
    # machine lines up the others.
    monkeypatch.setattr(_protocol, "_WAKE_CAP", DEADLINE)

    value_key = key + ":value"
    waiters = 5
    calls, takes, reads = [], [], []

    def counts():
        stats = redis_client.info("commandstats")
        return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("eval", "xread")}

    async def main():
        go = asyncio.Event()

        async def one():
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                mutex = Counted(AsyncRedisMutex(client, key, lease=30), takes)

                async def stored():
                    reads.append(1)
                    raw = await client.get(value_key)
                    if raw is None:
                        raise NeedRegenerationException()
                    return raw.decode(), time.time()

                async def create():
                    calls.append(1)
                    await go.wait()
                    if len(calls) <= failures:
                        raise RuntimeError("creation failed")
                    await client.set(value_key, "made")
                    return "made", time.time()

                d = classes.AsyncDogpile(60, lock=mutex)
                return await d.get(create, value_and_created_fn=stored)
            finally:
                await aclose(client)

        holder = asyncio.ensure_future(one())
        await wait_until_async(lambda: calls, "the creator")
        others = [asyncio.ensure_future(one()) for _ in range(waiters)]
        await wait_until_async(
            lambda: sum(c.get("cmd") == "xread" for c in redis_client.client_list()) == waiters,
            "every task blocked in XREAD",
        )
        go.set()
        return await asyncio.gather(holder, *others, return_exceptions=True)

    before = counts()
    try:
        results = run(main)
    finally:
        redis_client.delete(value_key)
    after = counts()
    if failures:
        assert isinstance(results[0], RuntimeError)
        results = results[1:]
    assert results == ["made"] * len(results)
    assert len(calls) == 1 + failures
    if not failures:
        # One take; each waiter: one try, one XREAD, a read before and after.
        assert takes.count(True) == 1
        assert after["xread"] - before["xread"] == waiters
        assert len(reads) == 2 * waiters + 2
    assert not redis_client.exists(key)
