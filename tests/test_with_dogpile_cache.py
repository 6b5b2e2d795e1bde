"""dogpile.cache's region and decorator APIs, running on this project's Lock.

dogpile.cache's ``region.py`` takes ``Lock`` and ``NeedRegenerationException``
from the top-level ``dogpile`` package; with this project installed over
dogpile.cache, that is our ``dogpile/__init__.py``, which picks the compiled
core or, with ``DOGPILE_NO_EXTENSIONS`` set, the pure-Python twin.  The
implementation is fixed when dogpile.cache's region module is imported, so
this module tests the one ``import dogpile`` chose: ``nox -s dogpile_cache``
runs it twice, once each way, in a venv where the real dogpile.cache from
PyPI was installed first and this project over it.  Every test checks that
the region's ``Lock`` is ours.

Without dogpile.cache (the main suite's venvs) the module is skipped;
``DOGPILE_REQUIRE_DOGPILE_CACHE=1`` (set by the lane) makes that a failure.
"""

import importlib
import importlib.util
import os
import threading
import time
import uuid

import pytest
from conftest import DEADLINE, CountingLock, run_threads

if importlib.util.find_spec("dogpile.cache") is None:
    if os.environ.get("DOGPILE_REQUIRE_DOGPILE_CACHE") == "1":
        pytest.fail(
            "dogpile.cache is not installed (DOGPILE_REQUIRE_DOGPILE_CACHE=1)",
            pytrace=False,
        )
    pytest.skip(
        "dogpile.cache is not installed: these tests run in `nox -s dogpile_cache`",
        allow_module_level=True,
    )

import redis_server

import dogpile
from dogpile.cache import make_region
from dogpile.cache import region as region_module
from dogpile.cache.api import NO_VALUE
from dogpile.cache.proxy import ProxyBackend

# Long enough never to run out during a test; "expired" values are made by
# soft invalidation or a per-call expiration_time, never by waiting.
LONG = 3600

redis_url = redis_server.redis_url

# The Lock of the implementation ``import dogpile`` chose (an AttributeError
# here if dogpile/__init__.py is dogpile.cache's).
OUR_LOCK = importlib.import_module(
    "dogpile._core" if dogpile.IMPLEMENTATION == "cython" else "dogpile._core_py"
).Lock


def test_dogpile_cache_runs_on_our_lock():
    expected = os.environ.get("DOGPILE_EXPECT_IMPLEMENTATION")
    if expected:
        assert dogpile.IMPLEMENTATION == expected
    assert region_module.Lock is OUR_LOCK
    assert region_module.NeedRegenerationException is dogpile.NeedRegenerationException


class Counting(ProxyBackend):
    """Counts backend reads and writes, and puts a CountingLock (around the
    backend's own mutex, if it has one) under each key, so a test can wait
    until callers are blocked on it."""

    def __init__(self):
        super().__init__()
        self.gets = 0
        self.sets = 0
        self.mutexes = {}

    def get(self, key):
        self.gets += 1
        return self.proxied.get(key)

    def get_serialized(self, key):
        self.gets += 1
        return self.proxied.get_serialized(key)

    def get_multi(self, keys):
        self.gets += 1
        return self.proxied.get_multi(keys)

    def get_serialized_multi(self, keys):
        self.gets += 1
        return self.proxied.get_serialized_multi(keys)

    def set(self, key, value):
        self.sets += 1
        self.proxied.set(key, value)

    def set_serialized(self, key, value):
        self.sets += 1
        self.proxied.set_serialized(key, value)

    def get_mutex(self, key):
        if key not in self.mutexes:
            self.mutexes[key] = _Mutex(self.proxied.get_mutex(key))
        return self.mutexes[key]


class _Mutex(CountingLock):
    """CountingLock's counts around a backend's mutex (redis: a lock on the
    server) or, where the backend has none, a threading.Lock (what the
    region would make)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def acquire(self, wait=True):
        if self.inner is None:
            return super().acquire(wait)
        with self._cond:
            self.attempts += 1
            self.blocking_attempts += bool(wait)
            self._cond.notify_all()
        got = self.inner.acquire(wait)
        if got:
            with self._cond:
                self.acquired += 1
        return got

    def release(self):
        if self.inner is None:
            return super().release()
        with self._cond:
            self.released += 1
        self.inner.release()

    def locked(self):
        return super().locked() if self.inner is None else self.inner.locked()


def _backend(kind, request, tmp_path):
    """(name, arguments) of a dogpile.cache backend: in memory, a dbm file,
    or the real redis-server with distributed_lock=True."""
    if kind == "memory":
        return "dogpile.cache.memory", {}
    if kind == "dbm":
        return "dogpile.cache.dbm", {"filename": str(tmp_path / "cache.dbm")}
    url = request.getfixturevalue("redis_url")
    return "dogpile.cache.redis", {
        "url": url,
        "distributed_lock": True,
        "lock_timeout": int(DEADLINE) * 3,
        # The async_creation_runner releases the mutex from its own thread.
        "thread_local_lock": False,
        "lock_sleep": 0.01,
    }


def _maker(backend):
    """make(**region_options) -> (region, Counting proxy): a region on the
    backend, under a key prefix no other test uses (the redis keys are
    deleted afterwards)."""
    name, arguments = backend
    prefix = f"dogpile-test:{uuid.uuid4().hex}:"
    regions = []

    def make_one(**options):
        proxy = Counting()
        region = make_region(key_mangler=lambda key: prefix + str(key), **options)
        region.configure(name, expiration_time=LONG, arguments=dict(arguments), wrap=[proxy])
        assert region_module.Lock is OUR_LOCK
        regions.append(region)
        return region, proxy

    yield make_one
    if name == "dogpile.cache.redis" and regions:
        client = regions[0].actual_backend.writer_client
        keys = list(client.scan_iter(match="*" + prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        # Closed here, not when collected: an unclosed socket is a
        # ResourceWarning, an error in this suite.
        for region in regions:
            backend = region.actual_backend
            for client in {backend.writer_client, backend.reader_client}:
                client.connection_pool.disconnect()


@pytest.fixture(params=["memory", "dbm", "redis"])
def make(request, tmp_path):
    yield from _maker(_backend(request.param, request, tmp_path))


# dbm's mutex is a file lock that only the thread that took it may release,
# so an async_creation_runner (which releases from its own thread) cannot
# work there, with dogpile.cache's Lock or ours.
@pytest.fixture(params=["memory", "redis"])
def make_threaded(request, tmp_path):
    yield from _maker(_backend(request.param, request, tmp_path))


class Creator:
    def __init__(self, prefix="v"):
        self.prefix = prefix
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        return f"{self.prefix}{len(self.calls)}"

    def multi(self, *keys):
        self.calls.append(keys)
        return [f"{self.prefix}{len(self.calls)}-{k}" for k in keys]


def _tick():
    """Until time.time() moves on: invalidation compares creation times
    with ``<``, so a value created in the same tick would escape it."""
    now = time.time()
    while time.time() <= now:
        pass


def test_get_or_create_miss_hit_and_expiry(make):
    region, proxy = make()
    creator = Creator()
    assert region.get_or_create("k", creator) == "v1"
    assert region.get_or_create("k", creator) == "v1"
    assert len(creator.calls) == 1
    _tick()
    # Expired for this call: regenerated with one backend read, not two
    # (dogpile.cache's own Lock dropped the second read in 0.6.6).
    gets = proxy.gets
    assert region.get_or_create("k", creator, expiration_time=1e-6) == "v2"
    assert proxy.gets - gets == 1
    assert region.get("k") == "v2"
    assert len(creator.calls) == 2


def test_get_or_create_multi(make):
    region, proxy = make()
    creator = Creator()
    assert region.get_or_create_multi(["a", "b"], creator.multi) == ["v1-a", "v1-b"]
    assert region.get_or_create_multi(["b", "c", "a"], creator.multi) == [
        "v1-b",
        "v2-c",
        "v1-a",
    ]
    assert creator.calls == [("a", "b"), ("c",)]
    assert region.get_or_create_multi(["a", "b", "c"], creator.multi) == [
        "v1-a",
        "v1-b",
        "v2-c",
    ]
    assert len(creator.calls) == 2
    assert all(not m.locked() for m in proxy.mutexes.values())
    _tick()
    assert region.get_or_create_multi(["a", "c"], creator.multi, expiration_time=1e-6) == [
        "v3-a",
        "v3-c",
    ]
    assert creator.calls[-1] == ("a", "c")
    assert all(m.acquired == m.released for m in proxy.mutexes.values())


def test_get_or_create_multi_creator_raising_releases_every_mutex(make):
    region, proxy = make()

    def fail(*keys):
        raise KeyError("backend down")

    with pytest.raises(KeyError, match="backend down"):
        region.get_or_create_multi(["a", "b"], fail)
    assert len(proxy.mutexes) == 2
    assert all(m.acquired == m.released == 1 for m in proxy.mutexes.values())
    assert region.get_or_create_multi(["a", "b"], Creator().multi) == ["v1-a", "v1-b"]


def test_cache_on_arguments(make):
    region, _ = make()
    calls = []

    @region.cache_on_arguments()
    def square(x):
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert calls == [3, 4]
    square.invalidate(3)
    assert square(3) == 9
    assert calls == [3, 4, 3]
    square.set(100, 3)
    assert square(3) == 100
    assert square.get(3) == 100
    assert square.refresh(3) == 9
    assert calls == [3, 4, 3, 3]


def test_cache_multi_on_arguments(make):
    region, _ = make()
    calls = []

    @region.cache_multi_on_arguments()
    def double(*xs):
        calls.append(xs)
        return [x * 2 for x in xs]

    assert double(1, 2) == [2, 4]
    assert double(2, 3) == [4, 6]
    assert calls == [(1, 2), (3,)]
    double.invalidate(2)
    assert double(1, 2, 3) == [2, 4, 6]
    assert calls == [(1, 2), (3,), (2,)]
    assert double.get(1, 2) == [2, 4]
    double.set({1: "one"})
    assert double(1) == ["one"]


def test_get_multi_set_multi_delete_multi(make):
    region, _ = make()
    region.set_multi({"a": 1, "b": 2})
    assert region.get_multi(["a", "b", "c"]) == [1, 2, NO_VALUE]
    creator = Creator()
    assert region.get_or_create_multi(["a", "c"], creator.multi) == [1, "v1-c"]
    assert creator.calls == [("c",)]
    region.delete_multi(["a", "c"])
    assert region.get_multi(["a", "b", "c"]) == [NO_VALUE, 2, NO_VALUE]


def test_hard_invalidation_regenerates_before_returning(make):
    region, _ = make()
    creator = Creator()
    assert region.get_or_create("k", creator) == "v1"
    _tick()
    region.invalidate(hard=True)
    assert region.get("k") is NO_VALUE
    assert region.get_or_create("k", creator) == "v2"
    assert region.get_or_create("k", creator) == "v2"
    assert len(creator.calls) == 2


def test_soft_invalidation_regenerates_once(make):
    region, proxy = make()
    creator = Creator()
    assert region.get_or_create("k", creator) == "v1"
    _tick()
    region.invalidate(hard=False)
    gets = proxy.gets
    assert region.get_or_create("k", creator) == "v2"
    assert proxy.gets - gets == 1
    assert region.get_or_create("k", creator) == "v2"
    assert len(creator.calls) == 2


def test_soft_invalidation_while_regenerating_serves_the_stale_value(make):
    """The mutex held by one regeneration: every other caller gets the
    soft-invalidated value at once instead of waiting."""
    region, proxy = make()
    assert region.get_or_create("k", Creator("old")) == "old1"
    _tick()
    region.invalidate(hard=False)
    entered, release = threading.Event(), threading.Event()
    results = []

    def slow():
        entered.set()
        assert release.wait(DEADLINE)
        return "new"

    regenerating = threading.Thread(
        target=lambda: results.append(region.get_or_create("k", slow)), daemon=True
    )
    regenerating.start()
    try:
        assert entered.wait(DEADLINE)
        others = Creator("never")
        assert [region.get_or_create("k", others) for _ in range(5)] == ["old1"] * 5
        assert others.calls == []
    finally:
        release.set()
        regenerating.join(DEADLINE)
    assert not regenerating.is_alive()
    assert results == ["new"]
    assert region.get_or_create("k", Creator("never")) == "new"


def test_should_cache_fn(make):
    region, _ = make()
    creator = Creator()
    assert region.get_or_create("k", creator, should_cache_fn=lambda v: False) == "v1"
    assert region.get("k") is NO_VALUE
    assert region.get_or_create("k", creator, should_cache_fn=lambda v: True) == "v2"
    assert region.get("k") == "v2"
    values = region.get_or_create_multi(
        ["a", "b"], creator.multi, should_cache_fn=lambda v: v.endswith("a")
    )
    assert values == ["v3-a", "v3-b"]
    assert region.get_multi(["a", "b"]) == ["v3-a", NO_VALUE]


def test_expiration_time_minus_one_never_expires(make):
    region, _ = make()
    creator = Creator()
    assert region.get_or_create("k", creator) == "v1"
    _tick()
    # The value is older than this expiration_time, but -1 (never) wins.
    assert region.get_or_create("k", creator, expiration_time=-1) == "v1"
    assert region.get_or_create("k", creator, expiration_time=1e-6) == "v2"
    assert region.get_or_create_multi(["k"], creator.multi, expiration_time=-1) == ["v2"]
    assert len(creator.calls) == 2


def test_async_creation_runner(make_threaded):
    """An expired value: the caller gets it at once, the runner gets the
    mutex still held and regenerates in its own thread, then releases."""
    runs = []
    done = threading.Event()

    def runner(cache, key, creator, mutex):
        runs.append((key, mutex.locked()))

        def work():
            try:
                cache.set(key, creator())
            finally:
                mutex.release()
                done.set()

        threading.Thread(target=work, daemon=True).start()

    region, proxy = make_threaded(async_creation_runner=runner)
    creator = Creator()
    assert region.get_or_create("k", creator) == "v1"  # no value: created here
    assert runs == []
    _tick()
    region.invalidate(hard=False)
    assert region.get_or_create("k", creator) == "v1"  # stale, at once
    assert done.wait(DEADLINE)
    assert runs == [("k", True)]
    assert region.get_or_create("k", creator) == "v2"
    assert len(creator.calls) == 2
    (mutex,) = proxy.mutexes.values()
    assert mutex.acquired == mutex.released == 2


def test_async_creation_runner_that_raises_releases_the_mutex(make):
    def runner(cache, key, creator, mutex):
        raise KeyError("no thread")

    region, proxy = make(async_creation_runner=runner)
    assert region.get_or_create("k", Creator()) == "v1"
    _tick()
    region.invalidate(hard=False)
    with pytest.raises(KeyError, match="no thread"):
        region.get_or_create("k", Creator())
    (mutex,) = proxy.mutexes.values()
    assert mutex.acquired == mutex.released == 2
    assert not mutex.locked()


@pytest.mark.parametrize("threads", [8])
def test_threads_racing_on_one_key_create_once(make, threads):
    """Every thread finds no value; the creator returns only once all the
    others are blocked on the key's mutex, and they all get its value."""
    region, proxy = make()
    creator = Creator()
    barrier = threading.Barrier(threads)
    results = []

    def create():
        (mutex,) = proxy.mutexes.values()
        assert mutex.wait_for_blocking_attempts(threads), "not every thread reached the mutex"
        return creator()

    def worker(_):
        barrier.wait(DEADLINE)
        results.append(region.get_or_create("k", create))

    run_threads(worker, threads)
    assert len(creator.calls) == 1
    assert results == ["v1"] * threads
    (mutex,) = proxy.mutexes.values()
    assert mutex.acquired == mutex.released == threads
    assert not mutex.locked()
