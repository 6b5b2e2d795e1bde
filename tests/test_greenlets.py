"""gevent and eventlet: under monkey-patching, both cores behave as they do
under threads.  Waits yield to the hub instead of sleeping the OS thread
(which would stop the greenlet being waited for), owners are greenlets
(not the OS thread they share), and Ctrl-C ends a wait.

Each case runs in a child interpreter (green_workers.py): monkey-patching
cannot be undone, so it must not touch the pytest process.  The child is
killed on a timeout, so a hang fails the test.  Each scenario runs twice:
with dogpile's objects built after the patching, and built before it (an
app preloaded before a gunicorn gevent worker patches).

gevent and eventlet are in the test extras; a missing one fails these
tests, unless DOGPILE_SKIP_GEVENT or DOGPILE_SKIP_EVENTLET says to skip
(for an interpreter that the library does not support, such as the
free-threaded builds gevent has no wheel for).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import redis_server
from conftest import DEADLINE

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "green_workers.py")
# The child bounds its own waits at 20 s; this bounds the child.
TIMEOUT = 4 * DEADLINE

LOCK_ERROR_REENTRY = (
    "LockError: Dogpile.acquire() called again from inside its own creator"
)


@pytest.fixture(params=["gevent", "eventlet"])
def library(request):
    name = request.param
    skip_var = f"DOGPILE_SKIP_{name.upper()}"
    if os.environ.get(skip_var):
        pytest.skip(f"{skip_var} is set")
    if importlib.util.find_spec(name) is None:
        pytest.fail(
            f"{name} is not installed: pip install '.[test]' (or set {skip_var}=1 to skip)"
        )
    return name


@pytest.fixture(params=["patch-first", "objects-first"])
def order(request):
    return request.param


# The session's Redis server (see redis_server.py), for RedisMutex.
redis_url = redis_server.redis_url


def run_child(library, impl, scenario, order, env=None):
    try:
        proc = subprocess.run(
            # -s as the parent has it: a wheel tested with `python -s`
            # must not be shadowed by user site-packages in the child.
            [sys.executable, *(["-s"] if sys.flags.no_user_site else []),
             WORKER, library, impl.__name__, scenario, order],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{scenario} under {library} hung: killed after {TIMEOUT} s\n{exc.stderr}")
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"child printed no report:\n{proc.stderr}"
    return json.loads(lines[-1])


def test_greenlets_share_one_creation(library, impl, order):
    """Waiters arriving while the first caller re-reads the store under the
    lock, and while its creator runs: one creator call, everyone gets the
    value.  (The compiled core hung here: its waiter slept the OS thread.)"""
    report = run_child(library, impl, "dogpile", order)
    value = "the value"
    assert report["results"] == [value, value, value, "done", value, value]
    assert report["creator_calls"] == 1
    assert report["waited"] == 2


def test_a_waiting_greenlet_is_not_the_creator(library, impl, order):
    """A greenlet waiting for another greenlet's creator waits (the compiled
    core raised LockError: both had the OS thread's ident); a creator that
    reads its own Dogpile still gets LockError."""
    report = run_child(library, impl, "reentry", order)
    assert report["results"] == ["value", "value"]
    assert report["creator_calls"] == 1
    (reentered,) = report["reentered"]
    assert reentered.startswith(LOCK_ERROR_REENTRY)


def test_lock_over_a_name_registry_creates_once(library, impl, order):
    """Lock (as dogpile.cache uses it) over a mutex per key from a
    NameRegistry whose creator yields: every greenlet gets the same mutex,
    so the creator runs once.  A registry made before the patching let
    every greenlet into its creator at once (its RLock belonged to the OS
    thread): three mutexes, three creator calls."""
    report = run_child(library, impl, "lock", order)
    assert report["results"] == ["locked value"] * 3
    assert report["creator_calls"] == 1


def test_readwrite_mutex_across_greenlets(library, impl, order):
    """Readers wait for a writer that yields while it holds the lock; a
    waiting writer goes before them; readers share; another greenlet may
    not release the writer's lock; a SyncReaderDogpile's writer waits for
    a reader's block."""
    report = run_child(library, impl, "readwrite", order)
    w1, stranger, *rest = report["results"]
    assert w1 == "w1"
    assert stranger.startswith("LockError: release_write_lock(): this thread does not hold")
    assert rest == ["r1", "r2", "w2"]
    assert report["log"][:2] == ["w1", "w2"]
    assert sorted(report["log"][2:]) == ["r1", "r2"]
    assert report["max_readers"] == 2
    assert report["sync_results"] == ["v", "wrote"]
    assert report["sync_order"] == ["read block ends", "writer"]


def test_ctrl_c_ends_a_greenlet_wait(library, impl, order):
    """SIGINT, sent by another greenlet (so only if the wait yields), ends
    the main greenlet's wait for a value and for a write lock with
    KeyboardInterrupt; both work afterwards."""
    report = run_child(library, impl, "interrupt", order)
    assert report == {
        "dogpile": "KeyboardInterrupt",
        "dogpile_after": "created",
        "rw": "KeyboardInterrupt",
        "rw_after": True,
    }


def test_wait_timeout_under_greenlets(library, impl, order):
    """wait_timeout holds for a greenlet: LockTimeout on time, and the
    creator's greenlet kept running meanwhile."""
    report = run_child(library, impl, "wait_timeout", order)
    assert report["results"][0] == "created"
    assert report["results"][1].startswith("LockTimeout: no value after waiting 0.05 s")
    assert report["timeouts"] == 1
    assert report["creator_ran_meanwhile"]


def test_a_reader_waits_for_a_background_refresh_greenlet(library, impl, order):
    """A background refresh in a greenlet (a greenlet-per-job Executor)
    holds the lock; a reader that finds the value evicted waits for it and
    gets the job's value, without running the creator itself."""
    report = run_child(library, impl, "background", order)
    assert report["first"] == "value 1"
    assert report["stale"] == "value 1"
    assert report["results"] == ["value 2", "done"]
    assert report["creator_calls"] == 2


def test_mutexes_between_greenlets(library, order, redis_url):
    """FileMutex and RedisMutex: a greenlet waits while another holds and
    yields (a mutex made before the patching blocked the OS thread on its
    in-process lock: a hang), and a FileMutex whose file is locked
    elsewhere lets greenlets run while it waits (a blocking flock stopped
    them all).  The mutexes are one module for both cores, so this runs
    once, under the Python twin's name."""
    import dogpile._core_py as impl

    env = dict(os.environ, DOGPILE_REDIS_URL=redis_url)
    report = run_child(library, impl, "mutexes", order, env)
    assert report["file"] == ["a in", "a out", "b in"]
    assert report["redis"] == ["a in", "a out", "b in"]
    assert report["file_held_elsewhere"] == ["got the file", "unlocked"]


def test_a_cold_key_between_greenlets_is_read_once(library, impl, order, redis_url):
    """Dogpiles over FileMutex and RedisMutex objects of their own (as other
    processes would have): while one greenlet creates, the others wait for
    its release (XREAD, or a shared flock in a waiter thread) yielding to
    the hub, then read the value once; only the creator takes the lock."""
    env = dict(os.environ, DOGPILE_REDIS_URL=redis_url)
    report = run_child(library, impl, "cold_key", order, env)
    for kind in ("file", "redis"):
        assert report[kind]["results"] == ["made"] * 4 + ["go"], (kind, report)
        assert report[kind]["creator_calls"] == 1, (kind, report)
    # On Redis the waiters are seen blocked in XREAD before the creator
    # ends, so none can find the lock free: only the creator takes it.  (A
    # FileMutex waiter, polling under greenlets, may try the lock just after
    # the release and find the value under it.)
    assert report["redis"]["taken"] == 1, report
    assert report["redis"]["reads"] == 2 * 4, report
