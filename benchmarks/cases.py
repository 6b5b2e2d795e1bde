"""The single-threaded cases, defined once for the pytest-benchmark suite
(``test_micro.py``) and for the comparison command (``compare.py``).

A case is a statement and the names it uses; ``harness`` turns it into a
timed loop (``compare.py``) or a function per call (pytest-benchmark).  Each
case factory is a context manager over an implementation module
(``dogpile._core`` or ``dogpile._core_py``): it sets the situation up, and
on exit checks that what was timed is what the case is named for (a stale
fall-through that called its creator, say, would be timing a creation).

``peer.py`` times the same statements against dogpile.cache.
"""

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Dict, Iterator

from harness import CallCounter, HeldCreation

# Ours here; dogpile.cache's in peer.py's environment, whose top-level
# ``dogpile`` package exports it too.  Either way it is the exception the
# ``Lock`` of that process recognises.
from dogpile import NeedRegenerationException

# Far from expiry: a fresh hit takes the library's fastest clock path,
# which is the one a cache lives on.
FRESH_SECONDS = 3600.0
# A creation time this far back is expired under FRESH_SECONDS.
LONG_AGO = 2 * FRESH_SECONDS


@dataclass
class Case:
    stmt: str
    namespace: Dict[str, Any]
    # Raises AssertionError when the case did not measure what it is named
    # for; called once the timing is done.
    check: Callable[[], None] = field(default=lambda: None)


def give_value(dogpile: Any, value: Any) -> Any:
    """Give a Dogpile its first value through the public API."""
    with dogpile.acquire(lambda: value) as got:
        pass
    return got


# The statements, shared with peer.py where it has the same API.
BARE_LOCK = "with lock:\n    pass"
ACQUIRE = "with d.acquire(creator) as v:\n    pass"
GET = "v = d.get(creator)"
ACQUIRE_VALUE_FN = "with d.acquire(creator, value_fn) as v:\n    pass"
ACQUIRE_VALUE_AND_CREATED_FN = (
    "with d.acquire(creator, value_and_created_fn=value_and_created) as v:\n    pass"
)
LOCK = f"with Lock(mutex, creator, value_and_created, {FRESH_SECONDS!r}) as v:\n    pass"
REGISTRY_GET = 'registry.get("key")'
FIRST_CREATION = f"with Dogpile({FRESH_SECONDS!r}).acquire(creator) as v:\n    pass"


@contextmanager
def bare_lock() -> Iterator[Case]:
    """The reference: an uncontended ``with threading.Lock()`` block (one
    lock made beforehand, as a program would hold it)."""
    yield Case(BARE_LOCK, {"lock": threading.Lock()})


@contextmanager
def acquire_fresh(mod: ModuleType) -> Iterator[Case]:
    d = mod.Dogpile(FRESH_SECONDS)
    give_value(d, "value")
    creator = CallCounter("new")
    yield Case(ACQUIRE, {"d": d, "creator": creator}, _no_calls(creator))


@contextmanager
def get_fresh(mod: ModuleType) -> Iterator[Case]:
    """The call-style fresh hit: ``value = d.get(creator)``."""
    d = mod.Dogpile(FRESH_SECONDS)
    give_value(d, "value")
    creator = CallCounter("new")
    yield Case(GET, {"d": d, "creator": creator}, _no_calls(creator))


@contextmanager
def floor_with() -> Iterator[Case]:
    """The floor of any ``with`` block on this interpreter: one over a
    compiled object (dogpile._core._NoOp) whose methods do nothing."""
    from dogpile._core import _NoOp

    yield Case("with noop:\n    pass", {"noop": _NoOp()})


@contextmanager
def floor_acquire() -> Iterator[Case]:
    """The floor of ``with d.acquire(creator)``: a one-argument method call
    that returns a ready object, and a ``with`` block over it, both compiled
    and doing nothing."""
    from dogpile._core import _NoOp

    noop = _NoOp()
    yield Case("with noop.acquire(creator) as v:\n    pass", {"noop": noop, "creator": print})


@contextmanager
def floor_get() -> Iterator[Case]:
    """The floor of ``d.get(creator)``: a compiled one-argument method that
    returns its argument."""
    from dogpile._core import _NoOp

    yield Case("v = noop.get(creator)", {"noop": _NoOp(), "creator": print})


# The floors, timed with the bare lock (compiled core only).
FLOORS = {
    "floor_with": (floor_with, "floor: `with` over a compiled no-op object"),
    "floor_acquire": (floor_acquire, "floor: with noop.acquire(creator), compiled no-ops"),
    "floor_get": (floor_get, "floor: noop.get(creator), a compiled no-op call"),
}


@contextmanager
def acquire_fresh_with_options(mod: ModuleType) -> Iterator[Case]:
    """The same fresh hit on a Dogpile with every option of issue 8 set:
    they are read only on the slow paths, so this should cost what a plain
    Dogpile's fresh hit does."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        d = mod.Dogpile(FRESH_SECONDS, wait_timeout=5.0, background=pool)
        give_value(d, "value")
        creator = CallCounter("new")
        yield Case(ACQUIRE, {"d": d, "creator": creator}, _no_calls(creator))


@contextmanager
def acquire_fresh_early_refresh(mod: ModuleType) -> Iterator[Case]:
    """A fresh hit with early_refresh on: it also reads the precise clock
    and draws a random number, to decide whether to refresh early."""
    d = mod.Dogpile(FRESH_SECONDS, early_refresh=1.0)
    with d.acquire(lambda: "value"):  # a real creation: early refresh needs its duration
        pass
    creator = CallCounter("new")
    yield Case(ACQUIRE, {"d": d, "creator": creator}, _no_calls(creator))


@contextmanager
def acquire_fresh_value_fn(mod: ModuleType) -> Iterator[Case]:
    cache = {"key": "value"}

    def value_fn() -> Any:
        return cache["key"]

    d = mod.Dogpile(FRESH_SECONDS)
    with d.acquire(lambda: cache["key"], value_fn):  # sets createdtime
        pass
    creator = CallCounter("new")
    yield Case(
        ACQUIRE_VALUE_FN, {"d": d, "creator": creator, "value_fn": value_fn}, _no_calls(creator)
    )


@contextmanager
def acquire_fresh_value_and_created_fn(mod: ModuleType) -> Iterator[Case]:
    store = {"key": ("value", time.time())}

    def value_and_created() -> Any:
        return store["key"]

    d = mod.Dogpile(FRESH_SECONDS)
    creator = CallCounter(("new", time.time()))
    yield Case(
        ACQUIRE_VALUE_AND_CREATED_FN,
        {"d": d, "creator": creator, "value_and_created": value_and_created},
        _no_calls(creator),
    )


@contextmanager
def lock_fresh(mod: ModuleType) -> Iterator[Case]:
    """dogpile.core / dogpile.cache usage: a new Lock per lookup, over a
    stored (value, createdtime)."""
    store = {"key": ("value", time.time())}

    def value_and_created() -> Any:
        return store["key"]

    creator = CallCounter(("new", time.time()))
    ns = {
        "Lock": mod.Lock,
        "mutex": threading.Lock(),
        "creator": creator,
        "value_and_created": value_and_created,
    }
    yield Case(LOCK, ns, _no_calls(creator))


@contextmanager
def sync_reader_fresh(mod: ModuleType) -> Iterator[Case]:
    d = mod.SyncReaderDogpile(FRESH_SECONDS)
    give_value(d, "value")
    creator = CallCounter("new")
    yield Case(ACQUIRE, {"d": d, "creator": creator}, _no_calls(creator))


@contextmanager
def acquire_stale(mod: ModuleType) -> Iterator[Case]:
    """An expired value whose creation lock another thread holds (it is
    inside its creator): every timed call must fall through to the stale
    value without waiting and without creating."""
    d = mod.Dogpile(FRESH_SECONDS)
    give_value(d, "stale")
    d.createdtime = time.time() - LONG_AGO

    def start(held_creator: Callable[[], Any]) -> None:
        with d.acquire(held_creator):
            pass

    creator = CallCounter("new")
    with HeldCreation(start, result="new"):

        def check() -> None:
            assert creator.calls == 0, f"the stale case called its creator {creator.calls} times"
            assert d.is_expired, "the value became fresh while the stale case was timed"
            with d.acquire(creator) as v:
                assert v == "stale", f"the stale case returned {v!r}"

        yield Case(ACQUIRE, {"d": d, "creator": creator}, check)


@contextmanager
def lock_stale(mod: Any) -> Iterator[Case]:
    """``Lock`` over an expired stored value while another thread holds the
    mutex inside its creator.  Takes any module with dogpile.cache's
    ``Lock`` API (peer.py passes dogpile.cache's ``dogpile``)."""
    store = {"key": ("stale", time.time() - LONG_AGO)}

    def value_and_created() -> Any:
        return store["key"]

    mutex = threading.Lock()

    def start(held_creator: Callable[[], Any]) -> None:
        with mod.Lock(mutex, held_creator, value_and_created, FRESH_SECONDS):
            pass

    creator = CallCounter(("new", time.time()))
    ns = {
        "Lock": mod.Lock,
        "mutex": mutex,
        "creator": creator,
        "value_and_created": value_and_created,
    }
    with HeldCreation(start, result=("new", time.time())):

        def check() -> None:
            assert creator.calls == 0, f"the stale case called its creator {creator.calls} times"
            assert mutex.locked(), "the mutex was released while the stale case was timed"
            with mod.Lock(mutex, creator, value_and_created, FRESH_SECONDS) as v:
                assert v == "stale", f"the stale case returned {v!r}"

        yield Case(LOCK, ns, check)


@contextmanager
def registry_get(mod: ModuleType) -> Iterator[Case]:
    registry = mod.NameRegistry(lambda key: mod.Dogpile(FRESH_SECONDS))
    held = registry.get("key")  # alive for the whole case: every get is a hit

    def check() -> None:
        assert registry.get("key") is held, "NameRegistry.get made a new object"

    yield Case(REGISTRY_GET, {"registry": registry, "held": held}, check)


@contextmanager
def acquire_first_creation(mod: ModuleType) -> Iterator[Case]:
    """A new Dogpile per call (construction included), whose first acquire
    runs the creator."""
    creator = CallCounter("value")

    def check() -> None:
        assert creator.calls > 0, "the first-creation case never created"

    yield Case(FIRST_CREATION, {"Dogpile": mod.Dogpile, "creator": creator}, check)


@contextmanager
def lock_first_creation(mod: Any) -> Iterator[Case]:
    """``Lock`` with nothing stored: the creator runs under the mutex on
    every call (dogpile.cache's cache-miss path).  Takes any module with
    dogpile.cache's ``Lock`` API, like ``lock_stale``."""

    def value_and_created() -> Any:
        raise NeedRegenerationException()

    creator = CallCounter(("value", time.time()))

    def check() -> None:
        assert creator.calls > 0, "the first-creation case never created"

    ns = {
        "Lock": mod.Lock,
        "mutex": threading.Lock(),
        "creator": creator,
        "value_and_created": value_and_created,
    }
    yield Case(LOCK, ns, check)


def _no_calls(creator: CallCounter) -> Callable[[], None]:
    def check() -> None:
        assert creator.calls == 0, f"a fresh-hit case called its creator {creator.calls} times"

    return check


REGION_HIT = 'region.get_or_create("key", creator)'


@contextmanager
def region_hit(make_region: Callable[[], Any]) -> Iterator[Case]:
    """dogpile.cache's ``region.get_or_create``, a fresh hit on the memory
    backend: timed by peer.py over dogpile.cache's Lock, and by
    region_over_ours.py over ours (not a CASES entry: it needs dogpile.cache)."""
    region = make_region().configure("dogpile.cache.memory", expiration_time=FRESH_SECONDS)
    region.set("key", "value")
    creator = CallCounter("new")
    assert region.get_or_create("key", creator) == "value"
    yield Case(REGION_HIT, {"region": region, "creator": creator}, _no_calls(creator))


# name -> (factory over an implementation module, the name compare.py and
# the pytest-benchmark groups show)
CASES = {
    "acquire": (acquire_fresh, "fresh acquire(creator)"),
    "get": (get_fresh, "fresh get(creator)"),
    "acquire_options": (
        acquire_fresh_with_options,
        "fresh acquire(creator), wait_timeout and background set",
    ),
    "acquire_early": (acquire_fresh_early_refresh, "fresh acquire(creator), early_refresh set"),
    "acquire_value_fn": (acquire_fresh_value_fn, "fresh acquire(creator, value_fn)"),
    "acquire_value_and_created_fn": (
        acquire_fresh_value_and_created_fn,
        "fresh acquire(creator, value_and_created_fn=)",
    ),
    "sync_reader": (sync_reader_fresh, "fresh SyncReaderDogpile.acquire"),
    "lock": (lock_fresh, "fresh Lock"),
    "acquire_stale": (acquire_stale, "stale fall-through acquire"),
    "lock_stale": (lock_stale, "stale fall-through Lock"),
    "registry_get": (registry_get, "NameRegistry.get, existing key"),
    "acquire_first": (acquire_first_creation, "first creation, new Dogpile"),
    "lock_first": (lock_first_creation, "first creation, Lock (no value)"),
}
