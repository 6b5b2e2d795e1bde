"""A Dogpile with no value, over a lock that can wait for its holder's
release without taking it (``acquire_or_wait``, which the mutexes of
dogpile.mutexes offer): a waiter reads the value the holder made, once,
instead of queueing for the lock just to find it there; only a value still
missing (the creator failed) sends it back to the lock, so a failure costs
one more creation, not one per waiter.

The lock here is an in-process one that keeps that protocol (a Condition),
so that the cores' side is tested on its own, with counts; the same paths
over a real redis-server and real processes are in
test_acquire_or_wait.py and test_cross_process.py.  Each Dogpile of its
own over one lock stands for a process of its own; one Dogpile shared by
threads is one process.
"""

import asyncio
import threading
import time
from collections import Counter

import pytest
from conftest import DEADLINE, run_threads

from dogpile import LockError, LockTimeout, NeedRegenerationException, aio

WAITERS = 8


class ReleaseWaitLock:
    """A threading lock with ``acquire_or_wait``, counting what its callers
    did: ``taken`` acquisitions, ``plain`` calls of acquire() (the queueing
    this protocol avoids), ``waiting`` callers blocked for a release now."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._releases = 0
        self.taken = 0
        self.plain = 0
        self.waiting = 0

    def acquire(self, blocking=True, timeout=-1):
        with self._cond:
            self.plain += 1
            deadline = None if timeout < 0 else time.monotonic() + timeout
            while self._held:
                if not blocking:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            self._held = True
            self.taken += 1
            return True

    def acquire_or_wait(self, timeout=-1):
        with self._cond:
            if not self._held:
                self._held = True
                self.taken += 1
                return True
            seen = self._releases
            self.waiting += 1
            try:
                self._cond.wait_for(
                    lambda: self._releases != seen, None if timeout < 0 else timeout
                )
            finally:
                self.waiting -= 1
            return False

    def release(self):
        with self._cond:
            assert self._held, "released a lock that was not held"
            self._held = False
            self._releases += 1
            self._cond.notify_all()

    def locked(self):
        return self._held


def until(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.001)


class Store:
    """Where every "process" reads the value: ``reads`` per reader."""

    def __init__(self):
        self.pair = None
        self.reads = Counter()

    def value_and_created(self):
        self.reads[threading.get_ident()] += 1
        if self.pair is None:
            raise NeedRegenerationException()
        return self.pair


class Creator:
    """Blocks on ``go`` (once ``entered`` is set); raises for the first
    ``failures`` calls, then stores and returns the pair."""

    def __init__(self, store, failures=0, created=None):
        self.store = store
        self.failures = failures
        self.created = created
        self.calls = 0
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self):
        self.calls += 1
        self.entered.set()
        assert self.go.wait(DEADLINE)
        if self.calls <= self.failures:
            raise RuntimeError(f"creation {self.calls} failed")
        pair = ("value", time.time() if self.created is None else self.created)
        self.store.pair = pair
        return pair


def _holder_and_waiters(impl, lock, store, creator, per_process=True, **options):
    """The holder starts creating; WAITERS callers then wait for it, each on
    a Dogpile of its own (per_process) or all on the holder's; returns
    (holder outcome, waiter outcomes) once ``creator.go`` is set."""
    shared = impl.Dogpile(60, lock=lock, **options)
    outcomes = {}

    def call(i):
        d = impl.Dogpile(60, lock=lock, **options) if per_process and i else shared
        try:
            with d.acquire(creator, value_and_created_fn=store.value_and_created) as v:
                outcomes[i] = v
        except Exception as exc:
            outcomes[i] = exc

    holder = threading.Thread(target=call, args=(0,), daemon=True)
    holder.start()
    assert creator.entered.wait(DEADLINE)
    waiters = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(1, WAITERS + 1)]
    for t in waiters:
        t.start()
    until(lambda: lock.waiting == WAITERS, "every waiter to wait for the release")
    creator.go.set()
    for t in [holder] + waiters:
        t.join(DEADLINE)
        assert not t.is_alive()
    return outcomes[0], [outcomes[i] for i in range(1, WAITERS + 1)]


def test_waiters_of_other_processes_read_the_value_once_and_never_take_the_lock(impl):
    lock, store = ReleaseWaitLock(), Store()
    creator = Creator(store)
    first, others = _holder_and_waiters(impl, lock, store, creator)
    assert first == "value" and others == ["value"] * WAITERS
    assert creator.calls == 1
    assert lock.taken == 1, "a waiter took the lock just to read the value"
    assert lock.plain == 0
    # Each waiter read before the wait and once after the release; the
    # holder read before taking the lock and once holding it.
    assert sorted(store.reads.values()) == [2] * (WAITERS + 1)
    assert not lock.locked()


def test_a_failed_creation_is_retried_once_not_once_per_waiter(impl):
    lock, store = ReleaseWaitLock(), Store()
    creator = Creator(store, failures=1)
    first, others = _holder_and_waiters(impl, lock, store, creator)
    assert isinstance(first, RuntimeError)
    assert others == ["value"] * WAITERS
    assert creator.calls == 2, "one retry after the failure"
    # A waiter whose read came before the retry stored its value may find
    # the lock free after it, and take it to find the value there.
    assert lock.taken >= 2
    assert lock.plain == 0
    assert not lock.locked()


def test_every_creation_failing_is_one_attempt_per_failure(impl):
    """Each failure is seen by the caller whose creator raised it; the
    waiters take turns, one attempt per release, and none is lost."""
    lock, store = ReleaseWaitLock(), Store()
    creator = Creator(store, failures=WAITERS + 1)
    first, others = _holder_and_waiters(impl, lock, store, creator)
    assert isinstance(first, RuntimeError)
    assert all(isinstance(o, RuntimeError) for o in others)
    assert creator.calls == WAITERS + 1
    assert lock.taken == WAITERS + 1
    assert not lock.locked()


def test_threads_of_one_process_share_the_outcome_without_reading(impl):
    lock, store = ReleaseWaitLock(), Store()
    creator = Creator(store)
    first, others = _holder_and_waiters(impl, lock, store, creator, per_process=False)
    assert first == "value" and others == ["value"] * WAITERS
    assert creator.calls == 1 and lock.taken == 1 and lock.plain == 0
    # The holder's outcome is shared: no second read after the release.
    assert sorted(store.reads.values()) == [1] * WAITERS + [2]


def test_threads_of_one_process_share_a_failure(impl):
    lock, store = ReleaseWaitLock(), Store()
    creator = Creator(store, failures=1)
    first, others = _holder_and_waiters(impl, lock, store, creator, per_process=False)
    assert isinstance(first, RuntimeError)
    assert all(isinstance(o, RuntimeError) and o is not first for o in others)
    assert creator.calls == 1 and lock.taken == 1
    assert not lock.locked()


def test_a_value_already_expired_after_the_release_is_served_stale(impl):
    """What the holder made is already expired here: a waiter that finds it
    serves it, or recreates it if the lock is free, and never waits again."""
    lock, store = ReleaseWaitLock(), Store()
    creator = Creator(store, created=time.time() - 3600)
    first, others = _holder_and_waiters(impl, lock, store, creator)
    assert first == "value" and others == ["value"] * WAITERS
    # Each waiter either served the stale value or, finding the lock free,
    # recreated it (the creator stores an expired value again, so more
    # than one may); none of them waited for a second release.
    assert lock.plain == creator.calls - 1
    assert lock.waiting == 0 and not lock.locked()


def test_wait_timeout_bounds_the_wait_and_leaves_nothing_held(impl):
    lock, store = ReleaseWaitLock(), Store()
    assert lock.acquire_or_wait()  # another process holds it, and never creates
    d = impl.Dogpile(60, lock=lock, wait_timeout=0.05)
    with pytest.raises(LockTimeout, match="wait_timeout"):
        d.get(lambda: pytest.fail("created"), value_and_created_fn=store.value_and_created)
    assert d.stats()["timeouts"] == 1 and d.stats()["waited"] == 1
    assert lock.taken == 1 and lock.waiting == 0
    lock.release()
    assert not lock.locked()


def test_a_creator_calling_its_own_dogpile_again_is_refused(impl):
    lock = ReleaseWaitLock()
    d = impl.Dogpile(60, lock=lock)

    def create():
        with d.acquire(create):
            pass

    with pytest.raises(LockError, match="inside its own creator"):
        with d.acquire(create):
            pass
    assert not lock.locked() and lock.waiting == 0


def test_dogpile_cache_lock_reads_once_after_the_release(impl):
    lock, store = ReleaseWaitLock(), Store()
    creator = Creator(store)
    got = []

    def call(i):
        with impl.Lock(lock, creator, store.value_and_created, 60) as v:
            got.append(v)

    holder = threading.Thread(target=call, args=(0,), daemon=True)
    holder.start()
    assert creator.entered.wait(DEADLINE)
    waiters = threading.Thread(target=run_threads, args=(call, WAITERS), daemon=True)
    waiters.start()
    until(lambda: lock.waiting == WAITERS, "every Lock to wait for the release")
    creator.go.set()
    for t in (holder, waiters):
        t.join(DEADLINE)
        assert not t.is_alive()
    assert got == ["value"] * (WAITERS + 1)
    assert creator.calls == 1 and lock.taken == 1 and lock.plain == 0
    assert not lock.locked()


class NotCallable(ReleaseWaitLock):
    acquire_or_wait = 3


class ReturnsAwaitable(ReleaseWaitLock):
    def acquire_or_wait(self, timeout=-1):
        return asyncio.sleep(0)


class CoroutineWaiter(ReleaseWaitLock):
    async def acquire_or_wait(self, timeout=-1):
        return True


def test_an_acquire_or_wait_that_is_not_a_method_is_refused(impl):
    with pytest.raises(TypeError, match="acquire_or_wait must be a method"):
        impl.Dogpile(60, lock=NotCallable())
    with pytest.raises(TypeError, match="coroutine function.*AsyncDogpile"):
        impl.Dogpile(60, lock=CoroutineWaiter())


@pytest.mark.filterwarnings("error")
def test_an_acquire_or_wait_returning_an_awaitable_is_refused_unrun(impl):
    lock = ReturnsAwaitable()
    d = impl.Dogpile(60, lock=lock)
    with pytest.raises(TypeError, match="returned an awaitable"):
        d.get(lambda: pytest.fail("created unlocked"))
    with pytest.raises(TypeError, match="returned an awaitable"):
        with impl.Lock(lock, lambda: pytest.fail("created"), Store().value_and_created, 60):
            pass
    assert not lock.locked()


# -- asyncio -----------------------------------------------------------------------------


class AsyncReleaseWaitLock:
    """ReleaseWaitLock for tasks."""

    def __init__(self):
        self._held = False
        self._released = None
        self.taken = 0
        self.plain = 0
        self.waiting = 0

    async def acquire(self, blocking=True, timeout=-1):
        self.plain += 1
        while self._held:
            if not blocking:
                return False
            await self._release_event().wait()
        self._held = True
        self.taken += 1
        return True

    def _release_event(self):
        if self._released is None:
            self._released = asyncio.Event()
        return self._released

    async def acquire_or_wait(self, timeout=-1):
        if not self._held:
            self._held = True
            self.taken += 1
            return True
        event = self._release_event()
        self.waiting += 1
        try:
            await asyncio.wait_for(event.wait(), None if timeout < 0 else timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self.waiting -= 1
        return False

    async def release(self):
        assert self._held
        self._held = False
        event, self._released = self._released, None
        if event is not None:
            event.set()

    def locked(self):
        return self._held


def _run(coroutine_function, *args):
    async def bounded():
        return await asyncio.wait_for(coroutine_function(*args), DEADLINE)

    return asyncio.run(bounded())


async def _until(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0)


@pytest.mark.parametrize("failures", [0, 1])
def test_async_waiters_read_once_and_a_failure_is_retried_once(impl, failures):
    AsyncDogpile = aio._build(impl).AsyncDogpile
    lock = AsyncReleaseWaitLock()
    pair = []
    reads = Counter()
    calls = []

    async def main():
        go = asyncio.Event()

        async def create():
            calls.append(1)
            await go.wait()
            if len(calls) <= failures:
                raise RuntimeError("failed")
            pair.append(("value", time.time()))
            return pair[0]

        async def value_and_created():
            reads[asyncio.current_task()] += 1
            await asyncio.sleep(0)
            if not pair:
                raise NeedRegenerationException()
            return pair[0]

        async def call():
            d = AsyncDogpile(60, lock=lock)  # a process of its own
            async with d.acquire(create, value_and_created_fn=value_and_created) as v:
                return v

        holder = asyncio.ensure_future(call())
        await _until(lambda: calls, "the creator")
        waiters = [asyncio.ensure_future(call()) for _ in range(WAITERS)]
        await _until(lambda: lock.waiting == WAITERS, "every task to wait for the release")
        go.set()
        return await asyncio.gather(holder, *waiters, return_exceptions=True)

    results = _run(main)
    if failures:
        assert isinstance(results[0], RuntimeError)
        results = results[1:]
    assert results == ["value"] * (len(results))
    assert len(calls) == 1 + failures
    assert lock.taken == 1 + failures and lock.plain == 0
    if not failures:
        assert sorted(reads.values()) == [2] * (WAITERS + 1)
    assert not lock.locked()


def test_async_wait_timeout_bounds_the_wait(impl):
    AsyncDogpile = aio._build(impl).AsyncDogpile
    lock = AsyncReleaseWaitLock()

    async def main():
        assert await lock.acquire_or_wait()
        d = AsyncDogpile(60, lock=lock, wait_timeout=0.05)
        with pytest.raises(LockTimeout, match="wait_timeout"):
            await d.get(lambda: pytest.fail("created"))
        assert d.stats()["timeouts"] == 1
        assert lock.waiting == 0 and lock.taken == 1
        await lock.release()

    _run(main)
    assert not lock.locked()


def test_async_lock_reads_once_after_the_release(impl):
    AsyncLock = aio._build(impl).AsyncLock
    lock = AsyncReleaseWaitLock()
    calls = []

    async def main():
        go = asyncio.Event()
        pair = []

        async def create():
            calls.append(1)
            await go.wait()
            pair.append(("value", time.time()))
            return pair[0]

        def value_and_created():
            if not pair:
                raise NeedRegenerationException()
            return pair[0]

        async def call():
            async with AsyncLock(lock, create, value_and_created, 60) as v:
                return v

        holder = asyncio.ensure_future(call())
        await _until(lambda: calls, "the creator")
        waiters = [asyncio.ensure_future(call()) for _ in range(WAITERS)]
        await _until(lambda: lock.waiting == WAITERS, "every AsyncLock to wait")
        go.set()
        return await asyncio.gather(holder, *waiters)

    assert _run(main) == ["value"] * (WAITERS + 1)
    assert calls == [1] and lock.taken == 1 and lock.plain == 0
    assert not lock.locked()
