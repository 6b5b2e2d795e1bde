"""The hostile caller: every class of a core built every wrong way, and every
method and attribute of every object it can reach used with wrong types.

Run as ``python hostile_caller.py dogpile._core`` (tests/test_hostile.py
does, in a child process): it must end by itself, never by a signal.  It
prints one JSON line: how many calls it made, how many blocked (a call on
an object that an earlier call left locked may wait; an alarm interrupts it
after a quarter of a second), and the classes it found.  Whatever a call raises is
an answer; only a crash is a failure.
"""

import faulthandler
import gc
import importlib
import json
import math
import os
import signal
import sys
import threading
from concurrent.futures import Executor, Future

faulthandler.enable()
m = importlib.import_module(sys.argv[1])
from dogpile import NeedRegenerationException  # noqa: E402


class Blocked(Exception):
    pass


def _alarm(signum, frame):
    raise Blocked("a call blocked for 0.25 s")


# No alarm on Windows: there every object is fresh for each call, so a
# call has nothing earlier to wait on.
HAS_ALARM = hasattr(signal, "setitimer")
if HAS_ALARM:
    signal.signal(signal.SIGALRM, _alarm)


def _arm(seconds):
    if HAS_ALARM:
        signal.setitimer(signal.ITIMER_REAL, seconds)


class Weird:
    """An object that is everything a little: callable, iterable, with an
    acquire() that returns a string and a release() that raises."""

    def __call__(self, *args, **kwargs):
        return ("v", "not a time")

    def acquire(self, *args, **kwargs):
        return "yes"

    def release(self):
        raise RuntimeError("release refused")

    def submit(self, *args, **kwargs):
        return "not a future"

    def __iter__(self):
        return iter((1, 2))

    def __len__(self):
        return -1


class HostileExecutor(Executor):
    def __init__(self, mode):
        self.mode = mode

    def submit(self, fn, *args, **kwargs):
        if self.mode == "raise":
            raise KeyboardInterrupt("submit interrupted")
        if self.mode == "none":
            return None
        future = Future()
        if self.mode == "run":
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
        elif self.mode == "cancel":
            future.cancel()
        return future


def raises(exc):
    def fn(*args, **kwargs):
        raise exc

    return fn


NAN = math.nan
WRONG = [
    None,
    0,
    -1,
    1.5,
    NAN,
    math.inf,
    -math.inf,
    10**400,
    True,
    "x",
    b"x",
    object(),
    [],
    (),
    {},
    ("v",),
    ("v", 1.0, 2),
    ("v", NAN),
    ("v", 10**400),
    ["v", "t"],
    len,
    Weird(),
    raises(NeedRegenerationException()),
    raises(KeyboardInterrupt()),
    raises(SystemExit(3)),
    raises(MemoryError()),
    threading.Lock(),
    HostileExecutor("raise"),
    HostileExecutor("none"),
    HostileExecutor("run"),
    HostileExecutor("cancel"),
    Executor,
    type,
]

calls = 0
blocked = []
TRACE = bool(os.environ.get("HOSTILE_TRACE"))


def attempt(fn, *args, **kwargs):
    """Call fn; any exception is an answer.  Returns the result or None."""
    global calls
    calls += 1
    if TRACE:
        shown = [repr(a)[:40] for a in args]
        print("call", repr(fn)[:100], shown, kwargs, file=sys.stderr, flush=True)
    _arm(0.25)
    try:
        return fn(*args, **kwargs)
    except Blocked:
        blocked.append(repr(fn)[:80])
        return None
    except BaseException:
        return None
    finally:
        _arm(0)


def classes_of(module):
    found = []
    for name in dir(module):
        obj = getattr(module, name)
        if isinstance(obj, type) and obj.__module__ == module.__name__:
            found.append(obj)
    return found


def valid_instances(module):
    """Objects made the right way, and those they hand out."""
    d = module.Dogpile(1)
    s = module.SyncReaderDogpile(1)
    out = [
        d,
        s,
        module.Dogpile(None, True, threading.Lock(), wait_timeout=0.01,
                       background=HostileExecutor("cancel"), early_refresh=1.0),
        module.Lock(threading.Lock(), lambda: ("v", 1.0), lambda: ("v", 1.0), 1),
        module.NameRegistry(lambda ident: module.ReadWriteMutex()),
        module.ReadWriteMutex(),
        d.acquire(lambda: "v"),
        d.acquire(lambda: ("v", 1.0), value_and_created_fn=lambda: ("v", 1.0)),
        s.acquire(lambda: "v"),
        s.acquire_write_lock(),
        s.readwritelock,
    ]
    return out


def wrong_ways(cls):
    """Ways to build cls without (or against) its __init__, each a function
    that builds a fresh one, kept if it builds anything."""
    ways = [lambda: cls(), lambda: cls.__new__(cls)]
    for bad in WRONG[:12]:
        ways.append(lambda bad=bad: cls(bad))
        ways.append(lambda bad=bad: cls.__new__(cls, bad))
    sub = attempt(type, "Skips" + cls.__name__, (cls,), {"__init__": lambda self, *a, **k: None})
    if sub is not None:
        ways.append(lambda: sub())
        ways.append(lambda: sub.__new__(sub))
    return [way for way in ways if attempt(way) is not None]


def names_of(obj):
    names = []
    for name in dir(obj):
        if name.startswith("__") and name not in (
            "__enter__", "__exit__", "__len__", "__call__", "__reduce__", "__reduce_ex__",
            "__setstate__", "__setstate_cython__", "__reduce_cython__", "__init__", "__repr__",
            "__copy__", "__deepcopy__", "__getstate__",
        ):
            continue
        names.append(name)
    return names


def use(make):
    """Every method of a fresh object from make(), with wrong arguments, and
    every attribute set to wrong values."""
    probe = attempt(make)
    if probe is None:
        return
    for name in names_of(probe):
        obj = attempt(make)
        if obj is None:
            continue
        value = attempt(getattr, obj, name)
        if callable(value):
            attempt(value)
            for bad in WRONG:
                attempt(getattr(attempt(make), name, None) or len, bad)
            for bad in WRONG[:8]:
                attempt(getattr(attempt(make), name, None) or len, bad, bad)
                attempt(getattr(attempt(make), name, None) or len, bad, bad, bad)
                attempt(getattr(attempt(make), name, None) or len, len, bad, None)
                attempt(getattr(attempt(make), name, None) or len, len, None, bad)
        for bad in WRONG:
            fresh = attempt(make)
            if fresh is not None:
                attempt(setattr, fresh, name, bad)
                attempt(repr, fresh)
    # A whole acquisition with each wrong function, on a fresh Dogpile.
    obj = attempt(make)
    if isinstance(obj, m.Dogpile):
        for bad in WRONG:
            for kw in ({}, {"value_fn": bad}, {"value_and_created_fn": bad}):
                for creator in (bad, lambda: "v"):
                    acq = attempt(lambda creator=creator, kw=kw: make().acquire(creator, **kw))
                    attempt(lambda acq=acq: acq.__enter__())
                    attempt(lambda acq=acq: acq.__exit__(None, None, None))


def main():
    classes = set(classes_of(m)) | {type(obj) for obj in valid_instances(m)}
    for cls in sorted(classes, key=lambda c: c.__name__):
        for way in wrong_ways(cls):
            use(way)
    for i in range(len(valid_instances(m))):
        # Fresh each time, so that no call waits on what an earlier one
        # left locked.
        use(lambda i=i: valid_instances(m)[i])
        attempt(lambda i=i: type(valid_instances(m)[i])())
        attempt(lambda i=i: type(valid_instances(m)[i]).__new__(type(valid_instances(m)[i])))
    # The module's own functions, with wrong arguments.
    for name in dir(m):
        fn = getattr(m, name)
        public = not name.startswith("__") or name.startswith("__pyx_unpickle")
        if callable(fn) and not isinstance(fn, type) and public:
            attempt(fn)
            for bad in WRONG:
                attempt(fn, bad)
                attempt(fn, bad, bad)
                attempt(fn, bad, bad, bad, bad)
    gc.collect()
    print(
        json.dumps(
            {
                "calls": calls,
                "blocked": len(blocked),
                "blocked_examples": blocked[:5],
                "classes": sorted(c.__name__ for c in classes),
            }
        )
    )


main()
