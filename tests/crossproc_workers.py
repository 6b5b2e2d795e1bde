"""Code that runs in the child processes of the cross-process tests.

Children are started with multiprocessing's "spawn" context (a fresh
interpreter, no copy of pytest's threads), which imports this module by
name; so it holds everything a child runs, and imports nothing from pytest.
Each child picks the implementation under test by importing
``dogpile._core`` or ``dogpile._core_py`` by name.
"""

import importlib
import json
import os
import threading
import time

from dogpile import NeedRegenerationException
from dogpile.mutexes import FileMutex, RedisMutex

# The bound on every wait in a child: a broken lock ends a child with an
# error instead of hanging it.
CHILD_DEADLINE = 20.0


# -- where the shared value lives ----------------------------------------------------


class RedisStore:
    """The value and its creation time in one Redis key; creations counted
    with INCR on another."""

    def __init__(self, url, prefix):
        import redis

        self.client = redis.Redis.from_url(url)
        self.value_key = prefix + "value"
        self.count_key = prefix + "creations"

    def get(self):
        raw = self.client.get(self.value_key)
        return None if raw is None else json.loads(raw)

    def put(self, data, created):
        self.client.set(self.value_key, json.dumps([data, created]))

    def count_creation(self):
        return self.client.incr(self.count_key)


class FileStore:
    """The value and its creation time in a file of the host; creations
    counted as lines appended to another (an O_APPEND write of one short
    line is atomic)."""

    def __init__(self, directory):
        self.value_path = os.path.join(directory, "value.json")
        self.count_path = os.path.join(directory, "creations.log")

    def get(self):
        try:
            with open(self.value_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def put(self, data, created):
        # Readers in other processes must never see half a file.
        tmp = f"{self.value_path}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump([data, created], f)
        os.replace(tmp, self.value_path)

    def count_creation(self):
        fd = os.open(self.count_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        with open(self.count_path) as f:
            return sum(1 for _ in f)


def make_store(spec):
    kind, *args = spec
    return RedisStore(*args) if kind == "redis" else FileStore(*args)


def make_mutex(spec):
    kind, *args = spec
    if kind == "redis":
        import redis

        url, name, lease = args
        return RedisMutex(redis.Redis.from_url(url), name, lease=lease)
    return FileMutex(*args)


class RecordingMutex:
    """Passes every call to the real mutex and counts the blocking acquires
    and the waits for a release (``acquire_or_wait``, offered only if the
    real mutex has it), separating those made during a call whose caller
    already had a value (``had_value`` is set per thread, per call, by the
    caller), and the acquisitions that took the lock."""

    def __init__(self, inner):
        self.inner = inner
        self.call = threading.local()
        self._count = threading.Lock()
        self.blocking = 0
        self.blocking_with_value = 0
        self.nonblocking = 0
        self.waits = 0
        self.taken = 0
        if hasattr(inner, "acquire_or_wait"):
            self.acquire_or_wait = self._acquire_or_wait

    def acquire(self, blocking=True, timeout=-1):
        with self._count:
            if blocking:
                self.blocking += 1
                if getattr(self.call, "had_value", False):
                    self.blocking_with_value += 1
            else:
                self.nonblocking += 1
        taken = self.inner.acquire(blocking, timeout)
        if taken:
            with self._count:
                self.taken += 1
        return taken

    def _acquire_or_wait(self, timeout=-1):
        with self._count:
            self.waits += 1
            if getattr(self.call, "had_value", False):
                self.blocking_with_value += 1
        taken = self.inner.acquire_or_wait(timeout)
        if taken:
            with self._count:
                self.taken += 1
        return taken

    def release(self):
        self.inner.release()


# -- the stampede: processes of threads sharing one value ------------------------------


def stampede(
    impl_name, store_spec, mutex_spec, threads, expire, duration, create_seconds, think_seconds,
    barrier, results,
):
    """One process of the stampede: ``threads`` readers through one Dogpile
    with the shared mutex, for ``duration`` seconds after every process is
    ready; put a summary on ``results``."""
    try:
        impl = importlib.import_module(impl_name)
        store = make_store(store_spec)
        mutex = RecordingMutex(make_mutex(mutex_spec))
        dogpile = impl.Dogpile(expire, lock=mutex)
        creations = []
        calls = [0] * threads
        errors = []

        def value_and_created():
            stored = store.get()
            if stored is None:
                raise NeedRegenerationException()
            return stored[0], stored[1]

        def create():
            started = time.time()
            number = store.count_creation()
            time.sleep(create_seconds)  # the expensive work being protected
            created = time.time()
            data = f"{os.getpid()}:{number}"
            store.put(data, created)
            creations.append((started, created, data))
            return data, created

        go = threading.Event()
        end = [0.0]

        def reader(index):
            try:
                assert go.wait(CHILD_DEADLINE)
                while time.monotonic() < end[0]:
                    # A value is never deleted, so one seen here is there
                    # when the Dogpile looks: this call must not wait.
                    mutex.call.had_value = store.get() is not None
                    with dogpile.acquire(create, value_and_created_fn=value_and_created) as data:
                        assert isinstance(data, str), data
                    calls[index] += 1
                    time.sleep(think_seconds)  # a request handler's pace
            except BaseException as exc:
                errors.append(repr(exc))

        workers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait(CHILD_DEADLINE)
        end[0] = time.monotonic() + duration
        go.set()
        for worker in workers:
            worker.join(CHILD_DEADLINE)
        if any(worker.is_alive() for worker in workers):
            errors.append("reader threads still running")
        results.put(
            {
                "pid": os.getpid(),
                "errors": errors,
                "calls": sum(calls),
                "creations": creations,
                "blocking": mutex.blocking,
                "blocking_with_value": mutex.blocking_with_value,
                "nonblocking": mutex.nonblocking,
                "waits": mutex.waits,
            }
        )
    except BaseException as exc:
        results.put({"pid": os.getpid(), "errors": [repr(exc)]})


# -- a holder that is killed while creating --------------------------------------------


def hang_while_creating(impl_name, api, store_spec, mutex_spec, expire, creating, results):
    """Take the mutex through Dogpile or Lock, then hang inside the creator
    until killed (bounded, so a missed kill ends the child anyway)."""
    try:
        impl = importlib.import_module(impl_name)
        store = make_store(store_spec)
        mutex = make_mutex(mutex_spec)

        def value_and_created():
            stored = store.get()
            if stored is None:
                raise NeedRegenerationException()
            return stored[0], stored[1]

        def create():
            creating.set()
            threading.Event().wait(CHILD_DEADLINE)
            results.put("the creator was not killed")
            return "from the killed holder", time.time()

        if api == "dogpile":
            dogpile = impl.Dogpile(expire, lock=mutex)
            with dogpile.acquire(create, value_and_created_fn=value_and_created):
                pass
        else:
            with impl.Lock(mutex, create, value_and_created, expire):
                pass
    except BaseException as exc:
        results.put(repr(exc))


# -- a cold key: every process starts with no value -----------------------------------


def cold_start(impl_name, api, store_spec, mutex_spec, failures, go, results):
    """One process on a cold key: read the value through Dogpile or Lock;
    the creator waits for ``go`` (set by the parent once every other
    process waits), and the first ``failures`` creations across all the
    processes raise.  Puts (outcome, what, locks taken) on ``results``."""
    mutex = None
    try:
        impl = importlib.import_module(impl_name)
        store = make_store(store_spec)
        mutex = RecordingMutex(make_mutex(mutex_spec))

        def value_and_created():
            stored = store.get()
            if stored is None:
                raise NeedRegenerationException()
            return stored[0], stored[1]

        def create():
            number = store.count_creation()
            if not go.wait(CHILD_DEADLINE):
                raise AssertionError("never told to go on creating")
            if number <= failures:
                raise RuntimeError(f"creation {number} failed")
            created = time.time()
            store.put(f"creation {number}", created)
            return f"creation {number}", created

        if api == "dogpile":
            dogpile = impl.Dogpile(60, lock=mutex)
            with dogpile.acquire(create, value_and_created_fn=value_and_created) as value:
                pass
        else:
            with impl.Lock(mutex, create, value_and_created, 60) as value:
                pass
        results.put(("value", value, mutex.taken))
    except BaseException as exc:
        results.put(("error", repr(exc), None if mutex is None else mutex.taken))


# -- a counter updated read-modify-write under the mutex ---------------------------------


def count_under_mutex(mutex_spec, store_spec, rounds, barrier, results):
    """Increment a counter ``rounds`` times by reading it and writing it back
    while holding the mutex; without mutual exclusion updates get lost."""
    try:
        mutex = make_mutex(mutex_spec)
        store = make_store(store_spec)
        barrier.wait(CHILD_DEADLINE)
        for _ in range(rounds):
            assert mutex.acquire(timeout=CHILD_DEADLINE)
            try:
                stored = store.get()
                count = 0 if stored is None else stored[0]
                store.put(count + 1, time.time())
            finally:
                mutex.release()
        results.put(None)
    except BaseException as exc:
        results.put(repr(exc))


# -- the parent's side ------------------------------------------------------------------


def spawn_context():
    import multiprocessing

    # A fresh interpreter per child: forking pytest would copy its threads'
    # locks in whatever state they were in.
    return multiprocessing.get_context("spawn")


def collect(queue, count, deadline):
    """``count`` results from ``queue``, waiting until ``deadline``
    (time.monotonic()) at the latest."""
    import queue as queue_module

    results = []
    while len(results) < count:
        left = deadline - time.monotonic()
        try:
            results.append(queue.get(timeout=max(0.01, left)))
        except queue_module.Empty:
            if left <= 0:
                raise AssertionError(
                    f"only {len(results)} of {count} child processes reported in time"
                ) from None
    return results


def join_all(processes, deadline):
    """Join every child by ``deadline``; kill and report any still running."""
    alive = []
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            alive.append(process.pid)
            process.kill()
            process.join(5)
    assert not alive, f"child processes {alive} still running at the deadline"
