"""Dogpiles in separate processes sharing one value and one mutex, as the
processes of a web site would: real processes (multiprocessing's "spawn"),
a real Redis server (see redis_server.py), or one lock file on this host.

- The stampede: 4 processes of 8 threads read one value stored outside them
  (in Redis, or in a file) through ``value_and_created_fn``, behind one
  RedisMutex (or FileMutex), over several expiries.  The creator runs once
  per expiry across all processes together, and no caller that has a value
  ever waits: the mutex's blocking acquire is never called by one.
- A holder killed with SIGKILL while creating: another process takes over
  (at once for a file, once the lease runs out for Redis), and nothing
  waits for ever.

Each child imports the implementation under test by name (``impl``).
"""

import os
import signal
import time

import crossproc_workers as workers
import pytest
import redis_server
from conftest import DEADLINE
from redis_server import unique_key

from dogpile import NeedRegenerationException

# The session's Redis server, as fixtures of this module (see redis_server.py).
redis_url = redis_server.redis_url
redis_client = redis_server.redis_client

PROCESSES = 4
THREADS = 8
EXPIRE = 0.2  # seconds a value stays fresh
DURATION = 1.0  # seconds of reading: about five expiries
CREATE_SECONDS = 0.03  # the creator's work
THINK_SECONDS = 0.005  # each reader's pause between reads

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@pytest.fixture(params=["redis", "file"])
def shared(request, tmp_path):
    """(mutex spec, store spec, store) for one kind of sharing; the specs
    rebuild the mutex and the store in a child (crossproc_workers)."""
    if request.param == "file":
        store_spec = ("file", str(tmp_path))
        return ("file", str(tmp_path / "dogpile.lock")), store_spec, workers.make_store(store_spec)
    url = request.getfixturevalue("redis_url")
    client = request.getfixturevalue("redis_client")
    prefix = unique_key("xproc") + ":"
    request.addfinalizer(
        lambda: client.delete(prefix + "lock", prefix + "value", prefix + "creations")
    )
    store_spec = ("redis", url, prefix)
    return ("redis", url, prefix + "lock", 2.0), store_spec, workers.make_store(store_spec)


def test_stampede_across_processes_creates_once_per_expiry_and_never_waits_with_a_value(
    impl, shared
):
    mutex_spec, store_spec, store = shared
    ctx = workers.spawn_context()
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    processes = [
        ctx.Process(
            target=workers.stampede,
            args=(impl.__name__, store_spec, mutex_spec, THREADS, EXPIRE, DURATION,
                  CREATE_SECONDS, THINK_SECONDS, barrier, results),
            daemon=True,
        )
        for _ in range(PROCESSES)
    ]
    deadline = time.monotonic() + 3 * DEADLINE
    for process in processes:
        process.start()
    try:
        reports = workers.collect(results, PROCESSES, deadline)
    finally:
        workers.join_all(processes, deadline)
    for report in reports:
        assert report["errors"] == [], report["errors"]

    creations = sorted(c for report in reports for c in report["creations"])
    # Every creation is counted once in the shared store (INCR in Redis,
    # appended lines in a file), whichever process ran it.
    assert store.count_creation() - 1 == len(creations)
    assert len(creations) >= 3, f"expected several expiries, saw {len(creations)} creations"
    for (_, previous_created, _), (started, _, _) in zip(creations, creations[1:]):
        # One creator at a time, and only once the value had expired: at
        # most one creation per expiry across all processes together.
        assert started >= previous_created
        assert started - previous_created > EXPIRE
    assert len({report["pid"] for report in reports if report["creations"]}) >= 1

    # Callers that had a value never called the mutex's blocking acquire;
    # the stale path's non-blocking one served every regeneration after
    # the first.
    assert sum(report["blocking_with_value"] for report in reports) == 0
    # Somebody waited for the first value: through acquire_or_wait where
    # the mutex has it (waiting for the release), else a blocking acquire.
    assert sum(report["blocking"] + report["waits"] for report in reports) >= 1
    assert sum(report["nonblocking"] for report in reports) >= len(creations) - 1
    assert sum(report["calls"] for report in reports) > PROCESSES * THREADS


@pytest.mark.parametrize(
    "api, has_value",
    [("lock", True), ("dogpile", False)],
    ids=["Lock-stale-value", "Dogpile-no-value"],
)
def test_a_holder_killed_while_creating_is_taken_over(impl, shared, api, has_value):
    """A holder is SIGKILLed in the middle of its creator; the lock is free
    again at once for a file (the OS frees it with the process) and when
    the lease (1 s) runs out for Redis.  Meanwhile a caller with a stale
    value gets it without waiting, and a caller with none waits; then one
    of them creates.  Nothing waits for ever."""
    mutex_spec, store_spec, store = shared
    if mutex_spec[0] == "redis":
        # Renewed every 1/3 s until the kill, and then still held while the
        # callers below start: 2/3 s of margin for a loaded machine.
        mutex_spec = mutex_spec[:3] + (1.0,)
    if has_value:
        store.put("stale", time.time() - 60)
    ctx = workers.spawn_context()
    creating, results = ctx.Event(), ctx.Queue()
    holder = ctx.Process(
        target=workers.hang_while_creating,
        args=(impl.__name__, api, store_spec, mutex_spec, 30, creating, results),
        daemon=True,
    )
    holder.start()
    try:
        assert creating.wait(DEADLINE), "the holder never started creating"
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(DEADLINE)
        assert holder.exitcode == -signal.SIGKILL
    finally:
        workers.join_all([holder], time.monotonic() + DEADLINE)
    assert results.empty(), "the killed holder's creator returned"

    mutex = workers.RecordingMutex(workers.make_mutex(mutex_spec))
    created = []

    def value_and_created():
        stored = store.get()
        if stored is None:
            raise NeedRegenerationException()
        return stored[0], stored[1]

    def create():
        created.append(1)
        now = time.time()
        store.put("new", now)
        return "new", now

    def read():
        if api == "dogpile":
            dogpile = impl.Dogpile(30, lock=mutex)
            with dogpile.acquire(create, value_and_created_fn=value_and_created) as value:
                return value
        with impl.Lock(mutex, create, value_and_created, 30) as value:
            return value

    if mutex_spec[0] == "redis":
        assert mutex.inner.locked(), "the dead holder's lease still runs"
    if has_value:
        deadline = time.monotonic() + DEADLINE
        while True:
            value = read()
            assert mutex.blocking == 0, "a caller with a value waited"
            if value == "new":
                break
            assert value == "stale"
            assert time.monotonic() < deadline, "nobody took over from the killed holder"
            time.sleep(0.01)  # polling until the lease runs out
    else:
        started = time.monotonic()
        assert read() == "new"
        if mutex_spec[0] == "redis":
            waits = mutex.blocking + mutex.waits
            assert waits >= 1, "the lease still ran: the caller had to wait"
        assert time.monotonic() - started < DEADLINE
    assert created == [1]
    assert not mutex.inner.locked()


COLD_PROCESSES = 6


def _waiting_processes(mutex_spec, request):
    """How many processes wait for the lock's release now: clients blocked
    in XREAD on the server for Redis; blocked flock requests on this host
    (/proc/locks lists them with "->") for a file."""
    if mutex_spec[0] == "redis":
        clients = request.getfixturevalue("redis_client").client_list()
        return sum(1 for c in clients if c.get("cmd") == "xread" and "b" in c["flags"])
    inode = os.stat(mutex_spec[1]).st_ino
    with open("/proc/locks") as f:
        return sum(1 for line in f if "->" in line and f":{inode} " in line)


@pytest.mark.parametrize(
    "api, failures",
    [("dogpile", 0), ("dogpile", 1), ("lock", 1)],
    ids=["Dogpile", "Dogpile-creator-fails", "Lock-creator-fails"],
)
def test_a_cold_key_waiters_read_the_value_once_and_a_failure_costs_one_retry(
    impl, shared, request, api, failures
):
    """COLD_PROCESSES processes start on a key with no value; one creates
    while every other waits for its release.  They then read the value
    once, none of them taking the lock; when the creator fails, one of them
    creates again, once, and the rest get that value: failures + 1
    creations, not one per process."""
    mutex_spec, store_spec, store = shared
    if mutex_spec[0] == "file" and not os.path.exists("/proc/locks"):
        pytest.skip("needs Linux's /proc/locks to see the waiters")
    if mutex_spec[0] == "file":
        open(mutex_spec[1], "a").close()  # for its inode, before any child
    ctx = workers.spawn_context()
    go, results = ctx.Event(), ctx.Queue()
    processes = [
        ctx.Process(
            target=workers.cold_start,
            args=(impl.__name__, api, store_spec, mutex_spec, failures, go, results),
            daemon=True,
        )
        for _ in range(COLD_PROCESSES)
    ]
    deadline = time.monotonic() + 3 * DEADLINE
    for process in processes:
        process.start()
    try:
        while _waiting_processes(mutex_spec, request) < COLD_PROCESSES - 1:
            assert time.monotonic() < deadline, "the processes never all waited"
            assert results.empty(), results.get()
            time.sleep(0.01)
        go.set()
        reports = workers.collect(results, COLD_PROCESSES, deadline)
    finally:
        workers.join_all(processes, deadline)
    errors = [r for r in reports if r[0] == "error"]
    values = [r for r in reports if r[0] == "value"]
    assert [e[1] for e in errors] == ["RuntimeError('creation 1 failed')"] * failures
    assert {v[1] for v in values} == {f"creation {failures + 1}"}
    assert len(values) == COLD_PROCESSES - failures
    assert store.count_creation() - 1 == failures + 1
    if not failures:
        assert sum(r[2] for r in reports) == 1, "waiters took the lock to read"
    # After a failure, a waiter whose read came before the retry stored its
    # value may still find the lock free after it and take it, to find the
    # value there under the lock: more takes, never more creations.
