"""No leaks: a million acquire cycles through every path leave memory and
reference counts flat, against both implementations.

Each implementation runs in a subprocess of its own (a clean heap, and RSS
that belongs to nothing but the cycles), importing ``dogpile._core`` or
``dogpile._core_py`` from the same tree as the tests.  The paths (36 of
them, the same number of cycles each): a fresh hit in each value mode; a
stale value with the lock held elsewhere (a custom lock held by the main
thread, and the default lock held by a creation in progress in another
thread) in each mode; creation of a stale value and of a missing one,
with the default and a custom lock; NeedRegenerationException from
value_fn and value_and_created_fn; a creator raising; a bad return shape
from value_and_created_fn and from the creator (TypeError); bad
arguments; a new Dogpile per cycle; SyncReaderDogpile and ReadWriteMutex;
the dogpile.core Lock API (fresh, mutex held, create, async_creator, no
value, creator raising, bad shapes); NameRegistry.get of a live and of a
new identifier.  Each path also checks how many values its creators made
and how many errors they raised per cycle, so that each is known to take
its branch.

The child warms every path up, measures, runs them all again, and
measures once more:

- RSS from /proc/self/statm: the whole run may grow it by less than
  RSS_BOUND (a leak of one small object per call over ~1,000,000 calls
  is tens of MB);
- per path, sys.getallocatedblocks() (the interpreter's live memory
  blocks): a leak of one object per call on one path shows there even
  where that path's share of the million calls is too small for RSS;
- sys.getrefcount() of every creator, value function, value, lock,
  Dogpile and exception class the paths use: exactly unchanged;
- the number of live Val objects (what creators return): unchanged;
- len(gc.get_objects()): grows by less than GC_OBJECTS_BOUND.

The checks were seen to fail (on a scratch copy of the library, never
this tree) for an extra float kept per stale fall-through, a kept
NeedRegenerationException, a kept Lock-API value, a kept reference to the
Dogpile on a creator error (pure twin); a Py_INCREF of the fresh value,
of the createdtime float in the pair fast path, and of the creator's
exception, and a bare malloc(48) per native lock take (compiled core:
caught by RSS alone).
"""

import json
import os
import subprocess
import sys
import time

import dogpile

TOTAL_CYCLES = 1_000_000  # at least this many acquire cycles per implementation
WARMUP_SHARE = 10  # warm-up runs each path 1/10 as often as the measured run
RSS_BOUND = 4 * 1024 * 1024
BLOCKS_BOUND = 200  # per path; a per-call leak shows as ~1 block per call
GC_OBJECTS_BOUND = 100
CHILD_TIMEOUT = 180  # seconds; the run takes a few

# The child.  argv: the module to test ("dogpile._core" or
# "dogpile._core_py"), the cycles per path to measure, the cycles per path
# to warm up with.  It prints one line of JSON.
CHILD = r'''
import gc
import importlib
import json
import os
import sys
import threading
import time

import dogpile
from dogpile import LockError, NeedRegenerationException

core = importlib.import_module(sys.argv[1])
N = int(sys.argv[2])
WARMUP = int(sys.argv[3])
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Val:
    """What creators return; counts the live ones."""

    __slots__ = ("__weakref__",)
    live = 0
    made = 0

    def __init__(self):
        Val.live += 1
        Val.made += 1

    def __del__(self):
        Val.live -= 1


class Boom(Exception):
    raised = 0


FRESH = Val()
STALE = Val()
OLD = time.time() - 7200.0
STALE_PAIR = (STALE, OLD)


def make_val():
    return Val()


def make_pair():
    return (Val(), time.time())


def make_fresh():
    return FRESH


def make_bad_pair():
    return (Val(), time.time(), "extra")


def boom():
    Boom.raised += 1
    raise Boom("creator failed")


def fresh_value():
    return FRESH


def fresh_pair():
    return (FRESH, time.time())


def stale_value():
    return STALE


def stale_pair():
    return STALE_PAIR


def stale_list_int():
    return [STALE, 1]  # a list and an int createdtime: the slow unpacking


def no_value():
    raise NeedRegenerationException()


def bad_shape():
    return ("only one",)


def async_release(mutex):
    mutex.release()


# -- Dogpiles, each in the state its paths need ---------------------------

d_fresh = core.Dogpile(None)
with d_fresh.acquire(make_fresh):
    pass
d_fresh_fn = core.Dogpile(None, init=True)
d_fresh_pair = core.Dogpile(3600)

HELD = threading.Lock()  # held by the main thread from here on
d_held = core.Dogpile(3600, lock=HELD)
with d_held.acquire(stale_value):
    pass
d_held.createdtime = OLD
HELD.acquire()

# A creation in progress in another thread holds d_busy's own lock.
d_busy = core.Dogpile(3600)
with d_busy.acquire(stale_value):
    pass
d_busy.createdtime = OLD
busy_started = threading.Event()
busy_finish = threading.Event()


def busy_creator():
    busy_started.set()
    busy_finish.wait()
    return STALE


def hold_busy():
    with d_busy.acquire(busy_creator):
        pass


busy_thread = threading.Thread(target=hold_busy, daemon=True)
busy_thread.start()
if not busy_started.wait(10):
    sys.exit("the creation holding d_busy's lock never started")

d_create = core.Dogpile(3600)
d_custom_lock = threading.Lock()
d_custom = core.Dogpile(3600, lock=d_custom_lock)
d_nre = core.Dogpile(3600, init=True)
d_fail = core.Dogpile(3600)
d_bad = core.Dogpile(3600)
d_sync = core.SyncReaderDogpile(None)
with d_sync.acquire(make_fresh):
    pass
MUTEX = threading.Lock()
rw = core.ReadWriteMutex()
registry = core.NameRegistry(lambda key, *args, **kw: Val())
KEPT = registry.get("kept")


# -- the paths: each runs n acquire cycles ---------------------------------

PATHS = []


def path(made, raised):
    """Register a path, with the Val objects its creators make and the
    Boom errors they raise per cycle: checked, so that every path is
    known to take the branch its name says."""

    def register(fn):
        fn.expected = (made, raised)
        PATHS.append(fn)
        return fn

    return register


@path(made=0, raised=0)
def fresh_plain(n):
    for _ in range(n):
        with d_fresh.acquire(make_fresh):
            pass


@path(made=0, raised=0)
def fresh_value_fn(n):
    for _ in range(n):
        with d_fresh_fn.acquire(make_val, value_fn=fresh_value):
            pass


@path(made=0, raised=0)
def fresh_value_and_created_fn(n):
    for _ in range(n):
        with d_fresh_pair.acquire(make_pair, value_and_created_fn=fresh_pair):
            pass


@path(made=0, raised=0)
def stale_lock_held_plain(n):
    for _ in range(n):
        with d_held.acquire(make_val):
            pass


@path(made=0, raised=0)
def stale_lock_held_value_fn(n):
    for _ in range(n):
        with d_held.acquire(make_val, value_fn=stale_value):
            pass


@path(made=0, raised=0)
def stale_lock_held_value_and_created_fn(n):
    for _ in range(n):
        with d_held.acquire(make_pair, value_and_created_fn=stale_pair):
            pass


@path(made=0, raised=0)
def stale_creation_in_progress_plain(n):
    for _ in range(n):
        with d_busy.acquire(make_val):
            pass


@path(made=0, raised=0)
def stale_creation_in_progress_value_fn(n):
    for _ in range(n):
        with d_busy.acquire(make_val, value_fn=stale_value):
            pass


@path(made=0, raised=0)
def stale_creation_in_progress_value_and_created_fn(n):
    for _ in range(n):
        with d_busy.acquire(make_pair, value_and_created_fn=stale_pair):
            pass


@path(made=1, raised=0)
def create_stale_plain(n):
    for _ in range(n):
        d_create.createdtime = OLD
        with d_create.acquire(make_val):
            pass


@path(made=1, raised=0)
def create_stale_value_fn(n):
    for _ in range(n):
        d_create.createdtime = OLD
        with d_create.acquire(make_val, value_fn=stale_value):
            pass


@path(made=1, raised=0)
def create_stale_value_and_created_fn(n):
    for _ in range(n):
        with d_create.acquire(make_pair, value_and_created_fn=stale_pair):
            pass


@path(made=1, raised=0)
def create_stale_slow_pair(n):
    for _ in range(n):
        with d_create.acquire(make_pair, value_and_created_fn=stale_list_int):
            pass


@path(made=1, raised=0)
def create_stale_custom_lock(n):
    for _ in range(n):
        d_custom.createdtime = OLD
        with d_custom.acquire(make_val):
            pass


@path(made=1, raised=0)
def create_no_value_plain(n):
    for _ in range(n):
        d_create.createdtime = -1
        with d_create.acquire(make_val):
            pass


@path(made=1, raised=0)
def create_no_value_custom_lock(n):
    for _ in range(n):
        d_custom.createdtime = -1
        with d_custom.acquire(make_val):
            pass


@path(made=1, raised=0)
def need_regeneration_value_fn(n):
    for _ in range(n):
        with d_nre.acquire(make_val, value_fn=no_value):
            pass


@path(made=1, raised=0)
def need_regeneration_value_and_created_fn(n):
    for _ in range(n):
        with d_nre.acquire(make_pair, value_and_created_fn=no_value):
            pass


@path(made=0, raised=1)
def creator_raises_stale(n):
    for _ in range(n):
        d_fail.createdtime = OLD
        try:
            with d_fail.acquire(boom):
                pass
        except Boom:
            pass


@path(made=0, raised=1)
def creator_raises_no_value(n):
    for _ in range(n):
        d_fail.createdtime = -1
        try:
            with d_fail.acquire(boom):
                pass
        except Boom:
            pass


@path(made=0, raised=1)
def creator_raises_value_and_created_fn(n):
    for _ in range(n):
        try:
            with d_fail.acquire(boom, value_and_created_fn=no_value):
                pass
        except Boom:
            pass


@path(made=0, raised=0)
def bad_shape_value_and_created_fn(n):
    for _ in range(n):
        try:
            with d_bad.acquire(make_pair, value_and_created_fn=bad_shape):
                pass
        except TypeError:
            pass


@path(made=1, raised=0)
def bad_shape_creator(n):
    for _ in range(n):
        try:
            with d_bad.acquire(make_bad_pair, value_and_created_fn=no_value):
                pass
        except TypeError:
            pass


@path(made=0, raised=0)
def bad_arguments(n):
    for _ in range(n):
        try:
            d_bad.acquire(None)
        except TypeError:
            pass
        try:
            d_bad.acquire(make_val, value_fn=fresh_value, value_and_created_fn=fresh_pair)
        except TypeError:
            pass


@path(made=0, raised=0)
def sync_reader(n):
    for i in range(n):
        with d_sync.acquire(make_fresh):
            pass
        if not i % 8:
            with d_sync.acquire_write_lock():
                pass


@path(made=0, raised=0)
def read_write_mutex(n):
    for _ in range(n):
        rw.acquire_read_lock()
        rw.release_read_lock()
        rw.acquire_write_lock()
        rw.release_write_lock()
        try:
            rw.release_read_lock()
        except LockError:
            pass


@path(made=0, raised=0)
def lock_api_fresh(n):
    for _ in range(n):
        with core.Lock(MUTEX, make_pair, fresh_pair, 3600):
            pass


@path(made=0, raised=0)
def lock_api_stale_mutex_held(n):
    for _ in range(n):
        with core.Lock(HELD, make_pair, stale_pair, 3600):
            pass


@path(made=1, raised=0)
def lock_api_create_stale(n):
    for _ in range(n):
        with core.Lock(MUTEX, make_pair, stale_pair, 3600):
            pass


@path(made=0, raised=0)
def lock_api_async_creator(n):
    for _ in range(n):
        with core.Lock(MUTEX, make_pair, stale_pair, 3600, async_release):
            pass


@path(made=1, raised=0)
def lock_api_no_value(n):
    for _ in range(n):
        with core.Lock(MUTEX, make_pair, no_value, None):
            pass


@path(made=0, raised=1)
def lock_api_creator_raises(n):
    for _ in range(n):
        try:
            with core.Lock(MUTEX, boom, no_value, None):
                pass
        except Boom:
            pass


@path(made=1, raised=0)
def lock_api_bad_shape(n):
    for _ in range(n):
        try:
            with core.Lock(MUTEX, make_bad_pair, no_value, None):
                pass
        except TypeError:
            pass
        try:
            with core.Lock(MUTEX, make_pair, bad_shape, None):
                pass
        except TypeError:
            pass


@path(made=1, raised=0)
def new_dogpile_each_cycle(n):
    # Every Dogpile made and acquired here must be freed again (an earlier
    # compiled core kept a context manager pointing back at its Dogpile).
    for _ in range(n):
        d = core.Dogpile(3600)
        with d.acquire(make_val):
            pass


@path(made=0, raised=0)
def registry_get_live(n):
    for _ in range(n):
        registry.get("kept")


@path(made=1, raised=0)
def registry_get_new(n):
    for i in range(n):
        registry.get(i, "arg", kw=i)


WATCHED = {name: globals()[name] for name in (
    "d_fresh", "d_fresh_fn", "d_fresh_pair", "d_held", "d_busy", "d_create", "d_custom",
    "d_nre", "d_fail", "d_bad", "d_sync", "HELD", "MUTEX", "rw", "registry", "KEPT",
    "FRESH", "STALE", "OLD", "STALE_PAIR",
    "make_val", "make_pair", "make_fresh", "make_bad_pair", "boom", "fresh_value",
    "fresh_pair", "stale_value", "stale_pair", "stale_list_int", "no_value", "bad_shape",
    "async_release", "Boom", "NeedRegenerationException", "LockError",
)}


def refcounts():
    return {name: sys.getrefcount(obj) for name, obj in WATCHED.items()}


for path in PATHS:
    path(WARMUP)
gc.collect()
rss_before = rss()
objects_before = len(gc.get_objects())
refs_before = refcounts()
live_before = Val.live
blocks = {}
wrong_branch = {}
started = time.perf_counter()
for path in PATHS:
    b0 = sys.getallocatedblocks()
    made, raised = Val.made, Boom.raised
    path(N)
    gc.collect()
    blocks[path.__name__] = sys.getallocatedblocks() - b0
    seen = ((Val.made - made) / N, (Boom.raised - raised) / N)
    if seen != path.expected:
        wrong_branch[path.__name__] = {"expected": path.expected, "per_cycle": seen}
elapsed = time.perf_counter() - started
gc.collect()
rss_after = rss()
objects_after = len(gc.get_objects())
refs_after = refcounts()
live_after = Val.live

locks_free = not MUTEX.locked() and not d_custom_lock.locked()
busy_finish.set()
busy_thread.join(10)
HELD.release()

print(json.dumps({
    "dogpile_file": dogpile.__file__,
    "core_file": core.__file__,
    "paths": len(PATHS),
    "cycles": N * len(PATHS),
    "elapsed": elapsed,
    "rss_growth": rss_after - rss_before,
    "objects_growth": objects_after - objects_before,
    "live_growth": live_after - live_before,
    "refs_changed": {
        k: [refs_before[k], refs_after[k]] for k in refs_before if refs_before[k] != refs_after[k]
    },
    "blocks": blocks,
    "wrong_branch": wrong_branch,
    "locks_free": locks_free,
    "busy_thread_done": not busy_thread.is_alive(),
}))
'''


def _run_child(module, cycles_per_path, warmup):
    src_dir = os.path.dirname(os.path.dirname(os.path.abspath(dogpile.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_dir, env.get("PYTHONPATH")) if p)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", CHILD, module, str(cycles_per_path), str(warmup)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert proc.returncode == 0, f"the child for {module} failed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["wall"] = time.monotonic() - started
    return report


def _paths_in_child():
    return CHILD.count("\n@path(")


def test_a_million_cycles_leave_memory_and_refcounts_flat(impl):
    """Guards against leaks on any acquire path, the error paths above all
    (a missing DECREF of a creator, value, pair, exception or Dogpile, a
    context manager or lock that is never freed, a NameRegistry entry that
    never goes away): after a million cycles RSS, live blocks per path,
    reference counts and the number of GC-tracked objects are flat."""
    paths = _paths_in_child()
    per_path = -(-TOTAL_CYCLES // paths)  # ceil: the total is >= TOTAL_CYCLES
    report = _run_child(impl.__name__, per_path, max(1, per_path // WARMUP_SHARE))

    # The child tested this checkout's dogpile, and the implementation asked for.
    assert os.path.realpath(report["dogpile_file"]) == os.path.realpath(dogpile.__file__)
    assert os.path.realpath(os.path.dirname(report["core_file"])) == os.path.realpath(
        os.path.dirname(dogpile.__file__)
    )
    assert report["paths"] == paths
    assert report["cycles"] >= TOTAL_CYCLES
    assert report["busy_thread_done"], "the creation that held d_busy's lock never finished"
    assert not report["wrong_branch"], (
        f"paths that did not take their branch: {report['wrong_branch']}"
    )
    assert report["locks_free"], "a lock was left held after its cycles"

    problems = []
    leaking = {p: n for p, n in report["blocks"].items() if n > BLOCKS_BOUND}
    if leaking:
        problems.append(f"live memory blocks grew on these paths: {leaking}")
    if report["refs_changed"]:
        problems.append(f"reference counts changed (before, after): {report['refs_changed']}")
    if report["live_growth"]:
        problems.append(f"{report['live_growth']} created values were never freed")
    if report["objects_growth"] >= GC_OBJECTS_BOUND:
        problems.append(f"{report['objects_growth']} more GC-tracked objects")
    if report["rss_growth"] >= RSS_BOUND:
        problems.append(f"RSS grew by {report['rss_growth'] / 1e6:.1f} MB")
    what = f"{impl.__name__}, {report['cycles']} cycles over {paths} paths"
    assert not problems, what + ":\n  " + "\n  ".join(problems)
