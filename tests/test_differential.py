"""Differential test: hypothesis-generated sequences of calls, run on the
compiled core and on the Python twin in one thread, step by step; after each
step the two must agree on the result (or the exception's type and
message) and on every observable: stats(), has_value, is_expired,
expiretime, whether a lock is left held.  A difference is a bug in one of
them.

Neither core takes an injectable clock (both read the system clock in
their own way), so freshness is made deterministic instead: creation times
sit hours away from now, and the expiry times are either far longer than
a test run or zero.

The budget is short in the unit suite; ``DOGPILE_HYPOTHESIS_EXAMPLES``
sets hypothesis's max_examples for a longer run (see docs/development.md).
"""

import math
import os
import re
import threading
import time
from concurrent.futures import Executor, Future

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dogpile._core_py as twin
from dogpile import NeedRegenerationException

pytestmark = pytest.mark.c_extension

EXAMPLES = int(os.environ.get("DOGPILE_HYPOTHESIS_EXAMPLES", "60"))
NAN = math.nan
BIG = 10**400


class Boom(Exception):
    pass


# -- the world each core runs in -------------------------------------------------------------


class InlineExecutor(Executor):
    """Runs each job at once, in the caller's thread."""

    def submit(self, fn, *args, **kwargs):
        future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class RefusingExecutor(Executor):
    """Shut down: refuses every job as ThreadPoolExecutor does then."""

    def submit(self, fn, *args, **kwargs):
        raise RuntimeError("cannot schedule new futures after shutdown")


class CancellingExecutor(Executor):
    """Drops every job before it runs."""

    def submit(self, fn, *args, **kwargs):
        future = Future()
        future.cancel()
        return future


class Weird:
    def acquire(self, *args, **kwargs):
        return "yes"

    def release(self):
        raise RuntimeError("release refused")


class World:
    """One core's objects and the state its callbacks read and write."""

    def __init__(self, core):
        self.core = core
        self.made = 0  # creator calls, for the values they return
        self.stored = None  # (value, createdtime) behind value_fn and value_and_created_fn
        self.mutex = threading.Lock()  # for Lock()
        self.dogpile = core.Dogpile(3600)
        self.rw = core.ReadWriteMutex()
        self.registry = core.NameRegistry(self.register)
        self.kept = []  # objects the registry hands out, kept alive

    def register(self, identifier, *args):
        if identifier == "boom":
            raise Boom("registry creator failed")
        if identifier == "int":
            return 5  # no weak references
        return Entry(identifier, *args)


class Entry:
    def __init__(self, *args):
        self.args = args


def _now_plus(offset):
    return time.time() + offset


def make_creator(world, kind, mode):
    """A creator of the given kind; in value_and_created_fn mode it returns
    a (value, createdtime) pair, as the API asks."""

    def creator():
        world.made += 1
        value = f"v{world.made}"
        if kind == "boom":
            raise Boom("creator failed")
        if kind == "needregen":
            raise NeedRegenerationException()
        if kind == "interrupt":
            raise KeyboardInterrupt()
        if kind == "bad_pair":
            return "not a pair" if mode == "value_and_created_fn" else value
        if kind == "nan_pair":
            return (value, NAN) if mode == "value_and_created_fn" else value
        if kind == "reenter":
            with world.dogpile.acquire(make_creator(world, "value", "plain")) as inner:
                value = f"{value}+{inner}"
        offset = {"old": -7200.0, "future": 7200.0}.get(kind, -1.0)
        createdtime = _now_plus(offset)
        world.stored = (value, createdtime)
        if mode == "value_and_created_fn":
            return (value, createdtime)
        return value

    return creator


def make_value_fn(world, kind):
    def value_fn():
        if kind == "boom":
            raise Boom("value_fn failed")
        if world.stored is None:
            raise NeedRegenerationException()
        return world.stored[0]

    return value_fn


def make_value_and_created_fn(world, kind):
    def value_and_created_fn():
        if kind == "boom":
            raise Boom("value_and_created_fn failed")
        if kind == "bad":
            return ["a", "list", "of", 4]
        if world.stored is None:
            raise NeedRegenerationException()
        return world.stored

    return value_and_created_fn


# -- arguments, by name (so that hypothesis prints readable steps) ---------------------------

EXPIRETIMES = {
    "none": None,
    "hour": 3600,
    "hour_float": 3600.0,
    "zero": 0,
    "million": 10**6,
    "inf": math.inf,
}
ODD = {
    "minus_one": -1,
    "nan": NAN,
    "text": "x",
    "true": True,
    "big": BIG,
    "minus_inf": -math.inf,
    "list": [],
    "tiny": 1e-300,
    "huge_float": 1e308,
}
CREATEDTIMES = {
    "hours_ago": lambda: _now_plus(-7200),
    "second_ago": lambda: _now_plus(-1),
    "second_ahead": lambda: _now_plus(1),
    "hours_ahead": lambda: _now_plus(7200),
    "minus_one": lambda: -1,
    "zero": lambda: 0,
    "epoch_5": lambda: 5,
    "none": lambda: None,
    "text": lambda: "x",
    "nan": lambda: NAN,
    "true": lambda: True,
    "big": lambda: BIG,
}
LOCKS = {"default": None, "lock": threading.Lock, "rlock": threading.RLock, "weird": Weird}
WAITS = {"none": None, "zero": 0, "short": 0.001, "long": 5, "nan": NAN, "text": "x", "big": BIG}
BACKGROUNDS = {
    "none": None,
    "inline": InlineExecutor,
    "refusing": RefusingExecutor,
    "cancelling": CancellingExecutor,
    "class": lambda: InlineExecutor,  # the class where an instance is meant
    "text": lambda: "x",
}
EARLY = {"none": None, "one": 1.0, "zero": 0, "nan": NAN, "inf": math.inf, "text": "x"}
CREATORS = ["value", "old", "future", "boom", "needregen", "interrupt", "bad_pair",
            "nan_pair", "reenter"]
MODES = ["plain", "value_fn", "value_and_created_fn"]
FN_KINDS = ["store", "boom", "bad"]


def _pick(table, name):
    value = table[name]
    return value() if callable(value) and table in (CREATEDTIMES, LOCKS, BACKGROUNDS) else value


# -- the steps -------------------------------------------------------------------------------


def step_new(world, cls, expiretime, init, lock, wait, background, early):
    """Replace the Dogpile under test.  Only arguments whose behaviour is
    deterministic reach here; early refresh is, as a creation takes
    microseconds and an early refresh is drawn only for a fresh value, a
    second (or hours) old with an expiry of an hour or more: far from due."""
    kwargs = {}
    if early != "none":
        kwargs["early_refresh"] = EARLY[early]
    if wait != "none":
        kwargs["wait_timeout"] = WAITS[wait]
    if background != "none":
        kwargs["background"] = _pick(BACKGROUNDS, background)
    if cls == "skips_init":

        class Skips(world.core.Dogpile):
            def __init__(self):
                pass

        world.dogpile = Skips()
        return "made"
    klass = getattr(world.core, cls)
    world.dogpile = klass(EXPIRETIMES[expiretime], init, _pick(LOCKS, lock), **kwargs)
    return "made"


def step_build(world, cls, argument, odd):
    """Build with one odd argument and look at the result, without keeping
    it (an accepted odd value may make freshness depend on timing)."""
    value = ODD[odd]
    if argument == "expiretime":
        obj = getattr(world.core, cls)(value)
    elif argument == "early_refresh":
        obj = getattr(world.core, cls)(3600, early_refresh=EARLY.get(odd, value))
    elif argument == "lock":
        obj = getattr(world.core, cls)(3600, lock=value)
    elif argument == "wait_timeout":
        obj = getattr(world.core, cls)(3600, wait_timeout=value)
    elif argument == "background":
        obj = getattr(world.core, cls)(3600, background=value)
    else:  # the dogpile.core Lock
        obj = world.core.Lock(world.mutex, len, len, value)
        return ("lock", obj.expiretime)
    return (obj.expiretime, obj.has_value, obj.is_expired, obj.stats())


def step_reinit(world, expiretime):
    """__init__ called again on the Dogpile under test."""
    world.dogpile.__init__(EXPIRETIMES.get(expiretime, ODD.get(expiretime)))
    return "reinitialised"


def step_acquire(world, mode, creator, fn_kind):
    d = world.dogpile
    make = make_creator(world, creator, mode)
    if mode == "plain":
        acquisition = d.acquire(make)
    elif mode == "value_fn":
        acquisition = d.acquire(make, value_fn=make_value_fn(world, fn_kind))
    else:
        acquisition = d.acquire(
            make, value_and_created_fn=make_value_and_created_fn(world, fn_kind)
        )
    with acquisition as value:
        return value


def step_acquire_wrong(world, which):
    d = world.dogpile
    if which == "creator_none":
        d.acquire(None)
    elif which == "creator_int":
        d.acquire(5)
    elif which == "value_fn_int":
        d.acquire(len, value_fn=5)
    elif which == "both_fns":
        d.acquire(len, value_fn=len, value_and_created_fn=len)
    elif which == "too_many":
        d.acquire(len, None, None, None)
    elif which == "keyword":
        d.acquire(len, value=len)
    return "accepted"


def step_set_createdtime(world, name):
    world.dogpile.createdtime = _pick(CREATEDTIMES, name)
    return "set"


def step_set_expiretime(world, name):
    world.dogpile.expiretime = EXPIRETIMES[name] if name in EXPIRETIMES else ODD[name]
    return "set"


def step_write_lock(world):
    with world.dogpile.acquire_write_lock():
        return "held"


def step_lock(world, creator, fn_kind, expiretime, async_creator):
    """One use of the dogpile.core Lock, with a fresh mutex (an
    async_creator that fails keeps it held, as it must)."""
    mutex = threading.Lock()
    world.mutex = mutex
    make = make_creator(world, creator, "value_and_created_fn")
    fn = make_value_and_created_fn(world, fn_kind)

    def release_later(m):
        m.release()

    def refuses(m):
        raise Boom("async_creator failed")

    chosen = {"none": None, "releases": release_later, "refuses": refuses, "text": "x"}
    value = EXPIRETIMES[expiretime] if expiretime in EXPIRETIMES else ODD[expiretime]
    with world.core.Lock(mutex, make, fn, value, chosen[async_creator]) as got:
        return got


def step_rw(world, method, wait):
    rw = world.rw
    if method.startswith("acquire"):
        return getattr(rw, method)(wait)
    return getattr(rw, method)()


def step_registry(world, identifier, extra):
    obj = world.registry.get(identifier, *extra)
    world.kept.append(obj)
    return ("got", obj.args if isinstance(obj, Entry) else obj, len(world.registry))


STEPS = st.one_of(
    st.tuples(
        st.just("new"),
        st.sampled_from(["Dogpile", "SyncReaderDogpile", "skips_init"]),
        st.sampled_from(sorted(EXPIRETIMES)),
        st.booleans(),
        st.sampled_from(sorted(LOCKS)),
        st.sampled_from(["none", "zero", "long", "nan", "text", "big"]),
        st.sampled_from(sorted(BACKGROUNDS)),
        st.sampled_from(["none", "none", "one", "nan"]),
    ),
    st.tuples(
        st.just("build"),
        st.sampled_from(["Dogpile", "SyncReaderDogpile"]),
        st.sampled_from(["expiretime", "early_refresh", "lock", "wait_timeout", "background",
                         "Lock"]),
        st.sampled_from(sorted(ODD)),
    ),
    st.tuples(st.just("reinit"), st.sampled_from(sorted(EXPIRETIMES) + sorted(ODD))),
    st.tuples(
        st.just("acquire"),
        st.sampled_from(MODES),
        st.sampled_from(CREATORS),
        st.sampled_from(FN_KINDS),
    ),
    st.tuples(
        st.just("acquire"),
        st.sampled_from(MODES),
        st.sampled_from(["value", "old", "future"]),
        st.just("store"),
    ),
    st.tuples(
        st.just("acquire_wrong"),
        st.sampled_from(["creator_none", "creator_int", "value_fn_int", "both_fns",
                         "too_many", "keyword"]),
    ),
    st.tuples(st.just("set_createdtime"), st.sampled_from(sorted(CREATEDTIMES))),
    st.tuples(st.just("set_expiretime"), st.sampled_from(sorted(EXPIRETIMES) + sorted(ODD))),
    st.tuples(st.just("write_lock")),
    st.tuples(
        st.just("lock"),
        st.sampled_from(["value", "old", "future", "boom", "needregen", "bad_pair", "nan_pair"]),
        st.sampled_from(FN_KINDS),
        st.sampled_from(["hour", "none", "zero", "minus_one", "text", "big"]),
        st.sampled_from(["none", "releases", "refuses", "text"]),
    ),
    st.tuples(
        st.just("rw"),
        st.sampled_from(["acquire_read_lock", "acquire_write_lock", "release_read_lock",
                         "release_write_lock"]),
        st.sampled_from([False, 0, None]),
    ),
    st.tuples(
        st.just("registry"),
        st.sampled_from(["a", "b", "boom", "int"]),
        st.sampled_from([(), (1,), (1, 2)]),
    ),
)


# -- running and comparing -------------------------------------------------------------------

# Messages that name a module, or that CPython and Cython word differently
# for the same wrong call (argument counts and names).
_MODULES = re.compile(r"dogpile\._core(_py)?\.")
_SIGNATURE = re.compile(
    r"positional argument|keyword argument|takes (at most|exactly|no)|required positional"
)


def _message(exc):
    text = _MODULES.sub("", str(exc))
    if isinstance(exc, TypeError) and _SIGNATURE.search(text):
        return "<a wrong signature>"
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def _plain(value):
    """nan as a string, so that == compares it."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def _observe(world, result):
    d = world.dogpile
    seen = {"result": _plain(result)}
    for name in ("expiretime", "has_value", "is_expired"):
        try:
            seen[name] = _plain(getattr(d, name))
        except Exception as exc:
            seen[name] = ("raised", type(exc).__name__, _message(exc))
    # Which time was stored, in buckets of 100 s around now (creation times
    # sit a second or two hours away, so the bucket is deterministic).
    createdtime = d.createdtime
    seen["createdtime"] = "none" if createdtime <= 0 else round((time.time() - createdtime) / 100)
    rw = getattr(d, "readwritelock", None)
    if rw is not None:
        # No read lock left held by an acquisition that failed.
        seen["rw_free"] = rw.acquire_write_lock(False)
        if seen["rw_free"]:
            rw.release_write_lock()
    seen["stats"] = d.stats()
    seen["stored"] = None if world.stored is None else world.stored[0]
    seen["made"] = world.made
    seen["mutex_held"] = world.mutex.locked()
    seen["registry"] = len(world.registry)
    return seen


def run_step(world, step):
    name, args = step[0], step[1:]
    try:
        result = ("returned", globals()["step_" + name](world, *args))
    except BaseException as exc:  # KeyboardInterrupt from a creator too
        result = ("raised", type(exc).__name__, _message(exc))
    return _observe(world, result)


def compare(steps):
    from dogpile import _core as compiled

    worlds = {"twin": World(twin), "compiled": World(compiled)}
    for number, step in enumerate(steps):
        seen = {name: run_step(world, step) for name, world in worlds.items()}
        assert seen["twin"] == seen["compiled"], (
            f"step {number} {step!r}: the cores disagree\n"
            f"  twin:     {seen['twin']}\n  compiled: {seen['compiled']}"
        )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(st.lists(STEPS, max_size=25))
def test_the_two_cores_agree_on_every_sequence(steps):
    compare(steps)

