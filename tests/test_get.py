"""``value = d.get(creator)``: the call-style fresh hit (issue 14).

It takes acquire()'s arguments and follows its rules; each test does the
same thing through ``get`` and through ``with acquire()`` and expects the
same value, the same creator calls and the same counts.  Both
implementations (the impl fixture), and ``await d.get(creator)`` on the
asyncio front end over either core.
"""

import asyncio
import threading
import time

import pytest
from conftest import DEADLINE

from dogpile import LockError, NeedRegenerationException, aio


def via_acquire(d, *args, **kw):
    with d.acquire(*args, **kw) as value:
        return value


def via_get(d, *args, **kw):
    return d.get(*args, **kw)


WAYS = [pytest.param(via_acquire, id="acquire"), pytest.param(via_get, id="get")]


class Counter:
    def __init__(self, make=lambda n: f"value {n}"):
        self.calls = 0
        self.make = make

    def __call__(self):
        self.calls += 1
        return self.make(self.calls)


@pytest.mark.parametrize("way", WAYS)
def test_first_call_creates_then_fresh_hits_return_the_value(impl, way):
    d = impl.Dogpile(3600)
    creator = Counter()
    assert way(d, creator) == "value 1"
    assert [way(d, creator) for _ in range(5)] == ["value 1"] * 5
    assert creator.calls == 1
    stats = d.stats()
    assert (stats["created"], stats["fresh"]) == (1, 5)


@pytest.mark.parametrize("way", WAYS)
def test_expired_value_is_created_again(impl, way):
    d = impl.Dogpile(3600)
    creator = Counter()
    way(d, creator)
    d.createdtime = time.time() - 7200
    assert way(d, creator) == "value 2"
    assert creator.calls == 2


@pytest.mark.parametrize("way", WAYS)
def test_value_fn(impl, way):
    store = {}

    def value_fn():
        if "v" not in store:
            raise NeedRegenerationException()
        return store["v"]

    def creator():
        store["v"] = "stored"
        return "created"

    d = impl.Dogpile(3600)
    assert way(d, creator, value_fn) == "created"
    assert way(d, creator, value_fn) == "stored"
    assert d.stats()["created"] == 1


@pytest.mark.parametrize("way", WAYS)
def test_value_and_created_fn(impl, way):
    now = time.time()
    store = {"pair": ("old", now - 7200)}
    creator = Counter(lambda n: (f"new {n}", now))

    def stored():
        return store["pair"]

    d = impl.Dogpile(3600)
    assert way(d, creator, value_and_created_fn=stored) == "new 1"
    store["pair"] = ("kept", now)
    assert way(d, creator, value_and_created_fn=stored) == "kept"
    assert d.createdtime == now
    assert creator.calls == 1


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((42,), {}, "creator"),
        ((lambda: 1, 42), {}, "value_fn"),
        ((lambda: 1,), {"value_and_created_fn": 42}, "value_and_created_fn"),
        ((lambda: 1, lambda: 1), {"value_and_created_fn": lambda: 1}, "value_fn"),
    ],
)
def test_bad_arguments_are_the_same_type_error_as_acquire(impl, args, kwargs, message):
    d = impl.Dogpile(3600)
    with pytest.raises(TypeError) as from_acquire:
        d.acquire(*args, **kwargs)
    with pytest.raises(TypeError) as from_get:
        d.get(*args, **kwargs)
    assert str(from_get.value) == str(from_acquire.value)
    assert message in str(from_get.value)
    assert not d.has_value


def test_no_arguments_is_a_type_error(impl):
    with pytest.raises(TypeError):
        impl.Dogpile(3600).get()


def test_a_failing_creator_raises_from_get_and_leaves_the_lock_free(impl):
    d = impl.Dogpile(3600)

    def failing():
        raise ValueError("backend down")

    with pytest.raises(ValueError, match="backend down"):
        d.get(failing)
    assert d.get(lambda: "ok") == "ok"
    assert d.stats()["failed"] == 1


def test_stale_value_while_another_creates(impl):
    """With the creation lock held by a creator in another thread, get()
    returns the stale value at once, as acquire() does."""
    d = impl.Dogpile(3600)
    d.get(lambda: "stale")
    d.createdtime = time.time() - 7200
    inside, release = threading.Event(), threading.Event()

    def slow():
        inside.set()
        assert release.wait(DEADLINE)
        return "new"

    t = threading.Thread(target=d.get, args=(slow,), daemon=True)
    t.start()
    try:
        assert inside.wait(DEADLINE)
        never = Counter()
        assert d.get(never) == "stale"
        assert never.calls == 0
        assert d.stats()["stale"] == 1
    finally:
        release.set()
        t.join(DEADLINE)
    assert not t.is_alive()
    assert d.get(Counter()) == "new"


def test_reentry_with_no_value_is_lock_error(impl):
    d = impl.Dogpile(3600)

    def creator():
        return d.get(creator)

    with pytest.raises(LockError):
        d.get(creator)
    assert d.get(lambda: "after") == "after"


def test_sync_reader_get_waits_for_the_writer(impl):
    d = impl.SyncReaderDogpile(3600)
    assert d.get(lambda: "v") == "v"
    got, started = [], threading.Event()

    def reader():
        started.set()
        got.append(d.get(lambda: "never"))

    with d.acquire_write_lock():
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        assert started.wait(DEADLINE)
        # The reader is held at the read lock while the writer holds it.
        t.join(0.05)
        assert got == []
    t.join(DEADLINE)
    assert got == ["v"]
    # get() left no read lock held: the writer can take the lock again.
    assert d.readwritelock.acquire_write_lock(False)
    d.readwritelock.release_write_lock()


@pytest.mark.parametrize("plain", ["ready", "coroutine"])
def test_async_get(impl, monkeypatch, plain):
    monkeypatch.setattr(
        aio, "_Plain", {"ready": aio._ReadyAcquisition, "coroutine": aio._PlainAcquisition}[plain]
    )
    AsyncDogpile = aio._build(impl).AsyncDogpile
    calls = []

    async def creator():
        calls.append(1)
        await asyncio.sleep(0)
        return "value"

    async def main():
        d = AsyncDogpile(3600)
        first = await asyncio.gather(*(d.get(creator) for _ in range(50)))
        again = [await d.get(creator) for _ in range(5)]
        store = {"pair": ("stored", time.time())}
        stored = await d.get(creator, value_and_created_fn=lambda: store["pair"])
        with pytest.raises(TypeError, match="creator"):
            await d.get(42)
        return first, again, stored, d.stats()

    first, again, stored, stats = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert first == ["value"] * 50 and again == ["value"] * 5
    assert stored == "stored"
    assert len(calls) == 1
    assert stats["created"] == 1 and stats["waited"] == 49
