"""dogpile.mutexes: what FileMutex and RedisMutex share (the threading.Lock
interface, release from any thread, mutual exclusion between threads and
between processes, use as the lock of Dogpile and Lock) and what is
FileMutex's own.

The shared tests run on both mutexes through ``mutex_kind``; the Redis runs
use a real server (see redis_server.py) and skip without one.  Another
mutex object on the same file or key stands for another process where a
real one is not needed; the tests named ``..._processes`` use real ones.
Tests that go through Dogpile or Lock take ``impl`` and run on both
implementations.
"""

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import crossproc_workers as workers
import pytest
import redis_server
from conftest import DEADLINE, run_threads
from redis_server import unique_key

import dogpile
from dogpile import LockError, NeedRegenerationException
from dogpile.mutexes import FileMutex, RedisMutex

# The session's Redis server, as fixtures of this module (see redis_server.py).
redis_url = redis_server.redis_url
redis_client = redis_server.redis_client

SRC = os.path.dirname(os.path.dirname(dogpile.__file__))


class Kind:
    """One mutex kind under test: ``new()`` makes another mutex object on
    the same lock, as another process would; ``spec`` rebuilds it in a
    child process (crossproc_workers.make_mutex) and ``store`` is a place
    for shared values there."""

    def __init__(self, name, new, spec, store):
        self.name, self.new, self.spec, self.store = name, new, spec, store


@pytest.fixture(params=["file", "redis"])
def mutex_kind(request, tmp_path):
    if request.param == "file":
        path = str(tmp_path / "dogpile.lock")
        return Kind("file", lambda: FileMutex(path), ("file", path), ("file", str(tmp_path)))
    url = request.getfixturevalue("redis_url")
    client = request.getfixturevalue("redis_client")
    key = unique_key("mutex")
    request.addfinalizer(lambda: client.delete(key, key + ":value", key + ":creations"))
    # A long lease: these tests are about exclusion, not about leases.
    return Kind(
        "redis",
        lambda: RedisMutex(client, key, lease=10),
        ("redis", url, key, 10),
        ("redis", url, key + ":"),
    )


# -- the threading.Lock interface -------------------------------------------------


def test_acquire_release_locked(mutex_kind):
    mutex, other = mutex_kind.new(), mutex_kind.new()
    assert not mutex.locked()
    assert mutex.acquire() is True
    assert mutex.locked() and other.locked()
    assert other.acquire(False) is False
    mutex.release()
    assert not mutex.locked()
    assert other.acquire(False) is True
    other.release()


def test_context_manager(mutex_kind):
    mutex, other = mutex_kind.new(), mutex_kind.new()
    with mutex as entered:
        assert entered is mutex
        assert not other.acquire(False)
    assert other.acquire(False)
    other.release()


def test_context_manager_releases_on_error(mutex_kind):
    mutex = mutex_kind.new()
    with pytest.raises(ZeroDivisionError):
        with mutex:
            raise ZeroDivisionError
    assert not mutex.locked()


def test_threads_of_one_process_share_one_mutex_object(mutex_kind):
    mutex = mutex_kind.new()
    assert mutex.acquire()
    got = []
    run_threads(lambda i: got.append(mutex.acquire(False)), 4)
    assert got == [False] * 4
    mutex.release()


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        ((False, 1), {}, ValueError),
        ((), {"blocking": False, "timeout": 0}, ValueError),
        ((), {"timeout": -2}, ValueError),
        ((), {"timeout": float("nan")}, ValueError),
        ((), {"timeout": "1"}, TypeError),
    ],
    ids=["nonblocking-with-timeout", "nonblocking-with-zero", "negative", "nan", "str"],
)
def test_acquire_arguments_follow_threading_lock(mutex_kind, args, kwargs, error):
    with pytest.raises(error) as raised:
        threading.Lock().acquire(*args, **kwargs)
    mutex = mutex_kind.new()
    with pytest.raises(error):
        mutex.acquire(*args, **kwargs)
    assert not mutex.locked(), "a rejected acquire() must take nothing"
    del raised


def test_release_when_not_held_is_a_lock_error(mutex_kind):
    mutex = mutex_kind.new()
    with pytest.raises(LockError, match="not held"):
        mutex.release()
    mutex.acquire()
    mutex.release()
    with pytest.raises(LockError):
        mutex.release()


@pytest.mark.parametrize("holder", ["same object", "other object"])
def test_timeout_gives_up(mutex_kind, holder):
    mutex = mutex_kind.new()
    other = mutex if holder == "same object" else mutex_kind.new()
    assert other.acquire()
    started = time.monotonic()
    assert mutex.acquire(timeout=0.1) is False
    assert time.monotonic() - started >= 0.1
    assert mutex.acquire(True, 0) is False
    other.release()
    assert mutex.acquire(timeout=DEADLINE) is True
    mutex.release()


def test_a_waiter_gets_the_lock_when_it_is_released(mutex_kind):
    holder, waiter = mutex_kind.new(), mutex_kind.new()
    holder.acquire()
    waiting, got = threading.Event(), []

    def wait(i):
        waiting.set()
        got.append(waiter.acquire(timeout=DEADLINE))

    thread = threading.Thread(target=wait, args=(0,), daemon=True)
    thread.start()
    assert waiting.wait(DEADLINE)
    holder.release()
    thread.join(DEADLINE)
    assert got == [True]
    waiter.release()


def test_release_from_another_thread(mutex_kind):
    """A background creator releases what its caller took: nothing about
    the holder may be thread-local (redis-py's own lock gets this wrong)."""
    mutex, other = mutex_kind.new(), mutex_kind.new()
    assert mutex.acquire()
    run_threads(lambda i: mutex.release(), 1)
    assert other.acquire(False)
    other.release()


@pytest.mark.parametrize("sharing", ["one object", "object per thread"])
def test_threads_are_serialized(mutex_kind, sharing):
    shared = mutex_kind.new()
    state = {"inside": 0, "most": 0, "count": 0}
    rounds = 30 if mutex_kind.name == "redis" else 100

    def work(i):
        mutex = shared if sharing == "one object" else mutex_kind.new()
        for _ in range(rounds):
            assert mutex.acquire(timeout=DEADLINE)
            try:
                state["inside"] += 1
                state["most"] = max(state["most"], state["inside"])
                count = state["count"]
                time.sleep(0)  # invite a switch between read and write
                state["count"] = count + 1
                state["inside"] -= 1
            finally:
                mutex.release()

    run_threads(work, 6)
    assert state["most"] == 1
    assert state["count"] == 6 * rounds


def test_processes_are_serialized(mutex_kind):
    """Four processes increment a counter in the shared store by reading it
    and writing it back under the mutex: no update is lost."""
    ctx = workers.spawn_context()
    processes_count, rounds = 4, 25
    barrier, results = ctx.Barrier(processes_count), ctx.Queue()
    processes = [
        ctx.Process(
            target=workers.count_under_mutex,
            args=(mutex_kind.spec, mutex_kind.store, rounds, barrier, results),
            daemon=True,
        )
        for _ in range(processes_count)
    ]
    deadline = time.monotonic() + 3 * DEADLINE
    for process in processes:
        process.start()
    try:
        outcomes = workers.collect(results, processes_count, deadline)
    finally:
        workers.join_all(processes, deadline)
    assert outcomes == [None] * processes_count
    assert workers.make_store(mutex_kind.store).get()[0] == processes_count * rounds


# -- as the lock of Dogpile and Lock --------------------------------------------------


class Store:
    """A value with its creation time, shared by the Dogpiles of a test as
    a cache would be by processes."""

    def __init__(self, value=None, created=-1.0):
        self.value, self.created = value, created
        self.creations = 0

    def value_and_created(self):
        if self.created <= 0:
            raise NeedRegenerationException()
        return self.value, self.created

    def creator(self, value="new", before=None):
        def create():
            if before is not None:
                before()
            self.creations += 1
            self.value, self.created = value, time.time()
            return self.value, self.created

        return create


def test_dogpiles_with_their_own_mutex_objects_create_once(impl, mutex_kind):
    """Eight Dogpiles, each with its own mutex object on the same lock (as
    eight processes would have), and no value: one creates, the others
    wait and then find its value."""
    store = Store()
    inside = threading.Barrier(8, timeout=DEADLINE)
    got = []

    def call(i):
        dogpile_ = impl.Dogpile(60, lock=mutex_kind.new())
        inside.wait()
        acquisition = dogpile_.acquire(
            store.creator(), value_and_created_fn=store.value_and_created
        )
        with acquisition as value:
            got.append(value)

    run_threads(call, 8)
    assert store.creations == 1
    assert got == ["new"] * 8


@pytest.mark.parametrize("api", ["Dogpile", "Lock"])
def test_stale_value_is_served_while_another_holder_creates(impl, mutex_kind, api):
    """The stale path's acquire(False) fails on a lock held elsewhere: the
    caller gets the stale value at once and does not create."""
    store = Store("stale", time.time() - 120)
    elsewhere = mutex_kind.new()
    assert elsewhere.acquire()
    mutex = mutex_kind.new()

    def read():
        if api == "Dogpile":
            with impl.Dogpile(60, lock=mutex).acquire(
                store.creator(), value_and_created_fn=store.value_and_created
            ) as value:
                return value
        with impl.Lock(mutex, store.creator(), store.value_and_created, 60) as value:
            return value

    assert read() == "stale"
    assert store.creations == 0
    elsewhere.release()
    assert read() == "new"
    assert store.creations == 1
    assert not mutex.locked()


def test_lock_async_creator_releases_from_another_thread(impl, mutex_kind):
    store = Store("stale", time.time() - 120)
    mutex, other = mutex_kind.new(), mutex_kind.new()
    done = threading.Event()
    threads = []

    def async_creator(held):
        assert held is mutex

        def create():
            try:
                store.creator()()
            finally:
                held.release()
                done.set()

        thread = threading.Thread(target=create, daemon=True)
        threads.append(thread)
        thread.start()

    with impl.Lock(mutex, store.creator(), store.value_and_created, 60, async_creator) as value:
        assert value == "stale"
    assert done.wait(DEADLINE)
    threads[0].join(DEADLINE)
    assert store.value == "new"
    assert other.acquire(False), "the background creator's release freed the lock"
    other.release()


def test_wait_timeout_bounds_the_wait_on_a_cross_process_mutex(impl, mutex_kind):
    """Dogpile(wait_timeout=...) passes its timeout to the mutex's
    acquire(True, timeout=...): a holder elsewhere makes it give up with
    LockTimeout, holding nothing."""
    elsewhere = mutex_kind.new()
    assert elsewhere.acquire()
    mutex = mutex_kind.new()
    store = Store()
    dogpile_ = impl.Dogpile(60, lock=mutex, wait_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(dogpile.LockTimeout):
        with dogpile_.acquire(store.creator(), value_and_created_fn=store.value_and_created):
            pass
    assert time.monotonic() - started >= 0.1
    assert store.creations == 0
    elsewhere.release()
    # A FileMutex's timed-out wait leaves its flock waiter thread for the
    # next acquire() to adopt; finding the lock free and nobody waiting, it
    # takes the lock and drops it at once, so locked() may read True for
    # that instant (seen under load), never for longer.
    deadline = time.monotonic() + DEADLINE
    while mutex.locked():
        assert time.monotonic() < deadline, "the mutex stayed locked after LockTimeout"
        time.sleep(0.005)
    with dogpile_.acquire(store.creator(), value_and_created_fn=store.value_and_created) as value:
        assert value == "new"


def test_background_creation_releases_the_mutex_from_the_executor(impl, mutex_kind):
    """Dogpile(background=executor): the caller takes the mutex, the
    executor's thread creates and releases it."""
    from concurrent.futures import ThreadPoolExecutor

    store = Store("stale", time.time() - 120)
    mutex, other = mutex_kind.new(), mutex_kind.new()
    with ThreadPoolExecutor(1) as executor:
        dogpile_ = impl.Dogpile(60, lock=mutex, background=executor)
        acquisition = dogpile_.acquire(
            store.creator(), value_and_created_fn=store.value_and_created
        )
        with acquisition as value:
            assert value == "stale"
    # Leaving the with block waited for the executor's job.
    assert store.creations == 1 and store.value == "new"
    assert other.acquire(False), "the executor's thread released the mutex"
    other.release()


def test_creator_failure_releases_the_mutex(impl, mutex_kind):
    mutex, other = mutex_kind.new(), mutex_kind.new()
    store = Store()

    def fail():
        raise RuntimeError("backend down")

    dogpile_ = impl.Dogpile(60, lock=mutex)
    with pytest.raises(RuntimeError, match="backend down"):
        with dogpile_.acquire(fail, value_and_created_fn=store.value_and_created):
            pass
    assert other.acquire(False)
    other.release()
    with dogpile_.acquire(store.creator(), value_and_created_fn=store.value_and_created) as value:
        assert value == "new"


# -- FileMutex's own ----------------------------------------------------------------------


def test_file_is_created_if_missing_and_never_deleted(tmp_path):
    path = tmp_path / "sub.lock"
    assert not path.exists()
    mutex = FileMutex(path)
    assert path.exists(), "created at construction, so a bad path fails early"
    assert mutex.path == str(path)
    with mutex:
        pass
    assert path.exists()
    del mutex
    gc.collect()
    assert path.exists()


def test_file_contents_are_left_alone(tmp_path):
    path = tmp_path / "data.lock"
    path.write_text("keep me")
    with FileMutex(path):
        pass
    assert path.read_text() == "keep me"


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda tmp: FileMutex(tmp), IsADirectoryError),
        (lambda tmp: FileMutex(tmp / "no-such-dir" / "x.lock"), FileNotFoundError),
        (lambda tmp: FileMutex(5), TypeError),
        (lambda tmp: FileMutex(None), TypeError),
    ],
    ids=["directory", "missing-directory", "int", "None"],
)
def test_bad_paths_fail_at_construction(tmp_path, make, error):
    with pytest.raises(error) as raised:
        make(tmp_path)
    if error is not TypeError:
        assert str(tmp_path) in str(raised.value), "the message names the path"


def test_bytes_path(tmp_path):
    mutex = FileMutex(os.fsencode(tmp_path / "b.lock"))
    assert mutex.path == str(tmp_path / "b.lock")
    with mutex:
        assert FileMutex(tmp_path / "b.lock").locked()


def test_a_dropped_held_file_mutex_unlocks_the_file(tmp_path):
    path = tmp_path / "x.lock"
    mutex = FileMutex(path)
    mutex.acquire()
    del mutex
    gc.collect()
    other = FileMutex(path)
    assert other.acquire(False)
    other.release()


def run_child(body):
    """Run ``body`` in a fresh interpreter (forking pytest itself would copy
    its threads); return its stdout's last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_a_forked_child_does_not_hold_or_release_the_parents_lock(tmp_path):
    """The child shares the parent's open file: a release there would free
    the parent's lock.  In the child the mutex is not held; the parent's
    lock stays the parent's."""
    path = str(tmp_path / "x.lock")
    assert (
        run_child(
            f"""
            import os
            from dogpile import LockError
            from dogpile.mutexes import FileMutex
            mutex = FileMutex({path!r})
            mutex.acquire()
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    mutex.release()
                    code = 3
                except LockError:
                    pass
                if mutex.acquire(False):
                    code = 4
                if not mutex.locked():
                    code = 5
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
            # Still the parent's: another open of the file cannot take it.
            assert not FileMutex({path!r}).acquire(False)
            mutex.release()
            assert FileMutex({path!r}).acquire(False)
            print("ok")
            """
        )
        == "ok"
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() and flock are POSIX-only here")
def test_a_file_another_user_owns_is_locked_read_only(tmp_path):
    """Services running as different users share one lock file that one of
    them owns (0644): the others may only read it, and flock needs no more.
    The other user is real: as root (CI), a forked child drops to uid/gid
    65534; otherwise the file is made read-only for its owner, which
    refuses a read-write open the same way.  Where neither a read-write nor
    a read-only open (or the creation) works, the error says what was tried."""
    script = f"""
        import os, select, shutil, sys, tempfile
        from dogpile.mutexes import FileMutex
        DEADLINE = {DEADLINE}
        root = os.getuid() == 0
        d = tempfile.mkdtemp(dir={str(tmp_path)!r} if not root else None)
        shared, secret = os.path.join(d, "shared.lock"), os.path.join(d, "secret.lock")
        for path, mode in ((shared, 0o644 if root else 0o444), (secret, 0o600 if root else 0o200)):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(path, mode)
        os.chmod(d, 0o755 if root else 0o555)
        owner = FileMutex(shared) if root else None
        if owner is not None:
            owner.acquire()
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()

        def say(fd, word):
            os.write(fd, word.encode() + b"\\n")

        def hear(fd):
            ready, _, _ = select.select([fd], [], [], DEADLINE)
            assert ready, "no word from the other process"
            return os.read(fd, 64).decode().strip()

        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(from_child)
                os.close(to_child)
                if root:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    os.close(os.open(shared, os.O_RDWR))
                    raise SystemExit("the shared file opened read-write: no test")
                except PermissionError:
                    pass
                mutex = FileMutex(shared)
                if root:
                    assert not mutex.acquire(False), "took the lock the owner holds"
                    say(to_parent, "waiting")
                    assert mutex.acquire(timeout=DEADLINE), "never got the lock"
                else:
                    assert mutex.acquire(False)
                say(to_parent, "holding")
                assert hear(from_parent) == "release"
                mutex.release()
                for path, words in (
                    (secret, ["not for reading and writing", "nor read-only"]),
                    (os.path.join(d, "missing.lock"), ["cannot create", "does not exist"]),
                ):
                    try:
                        FileMutex(path)
                    except PermissionError as exc:
                        assert path in str(exc) and all(w in str(exc) for w in words), exc
                    else:
                        raise AssertionError(f"opened {{path}}")
                code = 0
            except BaseException as exc:
                print("child:", repr(exc), file=sys.stderr)
            finally:
                os._exit(code)
        os.close(to_parent)
        os.close(from_parent)
        if root:
            assert hear(from_child) == "waiting"
            owner.release()
        assert hear(from_child) == "holding"
        # The read-only descriptor's lock excludes a read-write one.
        assert not FileMutex(shared).acquire(False), "the other user's lock did not hold"
        say(to_child, "release")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        again = FileMutex(shared)
        assert again.acquire(False)
        again.release()
        os.chmod(d, 0o700)
        shutil.rmtree(d)
        print("ok")
        """
    assert run_child(script) == "ok"


def _file_waiters(path):
    name = f"dogpile FileMutex waiter {str(path)!r}"
    return [t for t in threading.enumerate() if t.name == name]


def _poll(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {DEADLINE}s"
        time.sleep(0.005)


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no blocking lock to wait on")
def test_a_timed_file_wait_blocks_in_the_kernel_instead_of_polling(tmp_path, monkeypatch):
    """acquire(timeout=...) tries the file once, then a waiter thread
    blocks in flock (without the GIL) while the caller waits for it until
    its deadline.  A caller that gives up leaves the waiter to the next
    acquire(), so there is one per mutex; once the lock is free, a waiter
    that nobody waits for any more lets it go at once."""
    from dogpile.mutexes import _file as mutexes

    path = tmp_path / "w.lock"
    tries = []
    real_try = mutexes._try_lock_file
    monkeypatch.setattr(mutexes, "_try_lock_file", lambda fd: tries.append(fd) or real_try(fd))
    holder = FileMutex(path)  # its own open file: contends as another process would
    holder.acquire()
    tries.clear()
    waiter = FileMutex(path)
    result = []
    thread = threading.Thread(target=lambda: result.append(waiter.acquire(timeout=DEADLINE)))
    thread.start()
    _poll(lambda: _file_waiters(path), "the waiter thread")
    holder.release()
    thread.join(DEADLINE)
    assert result == [True]
    assert len(tries) == 1, "polled the file"
    assert not FileMutex(path).acquire(False), "the waiter's lock did not hold"
    waiter.release()

    holder.acquire()
    for _ in range(5):
        assert waiter.acquire(timeout=0.02) is False
    assert len(_file_waiters(path)) == 1, "a waiter per call, not per mutex"
    holder.release()
    _poll(lambda: not _file_waiters(path), "the abandoned waiter to end")
    again = FileMutex(path)
    assert again.acquire(False), "the abandoned waiter kept the lock"
    again.release()
    assert waiter.acquire(timeout=DEADLINE)
    waiter.release()
