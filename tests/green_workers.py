"""What the gevent and eventlet tests run, in a child interpreter of their own.

    python green_workers.py LIBRARY IMPLEMENTATION SCENARIO [ORDER]

LIBRARY is ``gevent`` or ``eventlet``, IMPLEMENTATION the module under test
(``dogpile._core`` or ``dogpile._core_py``), ORDER ``patch-first`` (the
default: monkey-patch, then import dogpile and build its objects) or
``objects-first`` (dogpile's objects are built before the patching, as in a
gunicorn app preloaded before its gevent worker patches).  The child prints
one JSON line, the scenario's report, and exits 0; anything else (a hang the
parent kills on its timeout, a traceback) fails the test.

Monkey-patching cannot be undone, so it never happens in the pytest process.
"""

import importlib
import json
import os
import signal
import sys
import time
import warnings
from concurrent.futures import Executor, Future

# Every wait in a child ends by this deadline (less than the parent's
# timeout), so a broken lock fails with a message where it can.
CHILD_DEADLINE = 20.0

LIBRARY, IMPL_NAME, SCENARIO = sys.argv[1:4]
ORDER = sys.argv[4] if len(sys.argv) > 4 else "patch-first"

# eventlet warns on import that it is in maintenance mode; that is no
# business of these tests.
warnings.simplefilter("ignore", DeprecationWarning)


def patch():
    if LIBRARY == "gevent":
        from gevent import monkey

        monkey.patch_all()
    elif LIBRARY == "eventlet":
        import eventlet

        eventlet.monkey_patch()
    else:
        raise SystemExit(f"unknown library {LIBRARY!r}")


class Green:
    """The few things a scenario needs from the library, under one name."""

    def __init__(self):
        if LIBRARY == "gevent":
            import gevent

            self._spawn = gevent.spawn
            self.sleep = gevent.sleep
            self.getcurrent = gevent.getcurrent
        else:
            import eventlet
            import greenlet

            self._spawn = eventlet.spawn
            self.sleep = eventlet.sleep
            self.getcurrent = greenlet.getcurrent

    def event(self):
        # The patched threading.Event: a greenlet waiting on it yields.
        import threading

        return threading.Event()

    def run(self, *fns):
        """Run each fn in a greenlet of its own; wait (cooperatively) until
        all are done, at most CHILD_DEADLINE; return their results, an
        exception standing for its result."""
        results = [None] * len(fns)
        left = [len(fns)]
        done = self.event()

        def wrap(i, fn):
            try:
                results[i] = fn()
            except Exception as exc:  # reported as a result
                results[i] = exc
            finally:
                left[0] -= 1
                if not left[0]:
                    done.set()

        for i, fn in enumerate(fns):
            self._spawn(wrap, i, fn)
        if not done.wait(CHILD_DEADLINE):
            raise SystemExit(f"{left[0]} of {len(fns)} greenlets still running")
        return results


def show(result):
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    return result


def wait_until(green, predicate, what):
    for _ in range(int(CHILD_DEADLINE / 0.001)):
        if predicate():
            return
        green.sleep(0.001)
    raise SystemExit(f"timed out waiting for {what}")


def need_regeneration():
    # Imported here, not at the top: dogpile must not be imported before
    # the patching in the patch-first order.
    from dogpile import NeedRegenerationException

    return NeedRegenerationException()


# -- the scenarios; each returns its report (a dict) ------------------------------------


def dogpile_readers(impl, green, made):
    """Greenlets reading one Dogpile through a value_and_created_fn that
    yields (a cache read is cooperative I/O) and a creator that yields.
    The first one takes the lock; a second arrives while the first, holding
    it, is still re-reading the store (before the creator runs); a third
    arrives while the creator runs; two more after the value exists.  One
    creator call, and everyone gets its value."""
    dogpile = made["dogpile"]
    store = {}
    calls = {"creator": 0}
    first_reads = []
    rereading, go_on = green.event(), green.event()
    creating, finish = green.event(), green.event()

    def value_and_created():
        green.sleep(0)
        if green.getcurrent() is first_reads[0]:
            first_reads.append(1)
            if len(first_reads) == 3:  # its second read: under the lock
                rereading.set()
                go_on.wait(CHILD_DEADLINE)
        if "value" not in store:
            raise need_regeneration()
        return store["value"]

    def creator():
        calls["creator"] += 1
        creating.set()
        finish.wait(CHILD_DEADLINE)
        green.sleep(0.01)
        store["value"] = ("the value", time.time())
        return store["value"]

    def read():
        with dogpile.acquire(creator, value_and_created_fn=value_and_created) as value:
            green.sleep(0)
            return value

    def first():
        first_reads.append(green.getcurrent())
        return read()

    def before_creator():
        rereading.wait(CHILD_DEADLINE)
        return read()

    def while_creating():
        creating.wait(CHILD_DEADLINE)
        return read()

    def conductor():
        rereading.wait(CHILD_DEADLINE)
        wait_until(green, lambda: dogpile.stats()["waited"] >= 1, "the first waiter")
        go_on.set()
        creating.wait(CHILD_DEADLINE)
        wait_until(green, lambda: dogpile.stats()["waited"] >= 2, "the second waiter")
        finish.set()
        return "done"

    results = green.run(first, before_creator, while_creating, conductor)
    after = green.run(read, read)
    return {
        "results": [show(r) for r in results + after],
        "creator_calls": calls["creator"],
        "waited": dogpile.stats()["waited"],
    }


def reentry(impl, green, made):
    """A greenlet arriving while another one's creator runs is a waiter,
    not a re-entry: it gets the value.  A creator that reads its own
    Dogpile again still gets LockError."""
    dogpile = made["dogpile"]
    creating, finish = green.event(), green.event()
    calls = {"creator": 0}

    def creator():
        calls["creator"] += 1
        creating.set()
        finish.wait(CHILD_DEADLINE)
        return "value"

    def first():
        with dogpile.acquire(creator) as value:
            return value

    def second():
        creating.wait(CHILD_DEADLINE)
        with dogpile.acquire(creator) as value:
            return value

    def conductor():
        creating.wait(CHILD_DEADLINE)
        wait_until(green, lambda: dogpile.stats()["waited"] >= 1, "the waiter")
        finish.set()

    results = green.run(first, second, conductor)
    other = made["other"]

    def own_creator():
        with other.acquire(own_creator):
            return "never"

    def reenter():
        with other.acquire(own_creator) as value:
            return value

    reentered = green.run(reenter)
    return {
        "results": [show(r) for r in results[:2]],
        "creator_calls": calls["creator"],
        "reentered": [show(r) for r in reentered],
    }


def lock(impl, green, made):
    """Lock (the dogpile.cache lock) over mutexes from a NameRegistry, the
    way dogpile.cache's regions get theirs: one mutex per key, whose making
    yields (a distributed mutex connects first).  Two greenlets must get the
    same mutex and so run the creator once."""
    registry = made["registry"]
    store = {}
    calls = {"creator": 0, "mutexes": 0}

    def value_and_created():
        green.sleep(0)
        if "value" not in store:
            raise need_regeneration()
        return store["value"]

    def creator():
        calls["creator"] += 1
        green.sleep(0.01)
        store["value"] = ("locked value", time.time())
        return store["value"]

    def read():
        mutex = registry.get("key")
        with impl.Lock(mutex, creator, value_and_created, 60) as value:
            return value

    results = green.run(read, read, read)
    return {
        "results": [show(r) for r in results],
        "creator_calls": calls["creator"],
        "registry_size": len(registry),
    }


def readwrite(impl, green, made):
    """ReadWriteMutex across greenlets: a writer excludes readers that
    yield while they read; readers share; a waiting writer goes before new
    readers; only the greenlet holding the write lock may release it; and a
    SyncReaderDogpile's writer waits for its readers' blocks."""
    rw = made["rw"]
    log = []
    active = {"readers": 0, "writer": 0, "max_readers": 0}
    writer_in = green.event()

    def reader(name):
        def run():
            rw.acquire_read_lock()
            try:
                assert not active["writer"], "a reader inside while a writer is"
                active["readers"] += 1
                active["max_readers"] = max(active["max_readers"], active["readers"])
                log.append(name)
                green.sleep(0.005)
                active["readers"] -= 1
            finally:
                rw.release_read_lock()
            return name

        return run

    def writer(name, hold=None):
        def run():
            rw.acquire_write_lock()
            try:
                assert not active["readers"] and not active["writer"], "writer not alone"
                active["writer"] += 1
                log.append(name)
                if hold is not None:
                    hold.set()
                green.sleep(0.02)
                active["writer"] -= 1
            finally:
                rw.release_write_lock()
            return name

        return run

    def stranger():
        # Not the holder: may not release the write lock.
        writer_in.wait(CHILD_DEADLINE)
        try:
            rw.release_write_lock()
        except Exception as exc:
            return exc
        return "released another greenlet's write lock"

    def late(fn, after):
        def run():
            after.wait(CHILD_DEADLINE)
            green.sleep(0)
            return fn()

        return run

    results = green.run(
        writer("w1", writer_in),
        stranger,
        late(reader("r1"), writer_in),
        late(reader("r2"), writer_in),
        late(writer("w2"), writer_in),
    )

    sync = made["sync"]
    in_block = green.event()
    order = []

    def sync_reader():
        with sync.acquire(lambda: "v") as value:
            in_block.set()
            green.sleep(0.02)
            order.append("read block ends")
            return value

    def sync_writer():
        in_block.wait(CHILD_DEADLINE)
        with sync.acquire_write_lock():
            order.append("writer")
        return "wrote"

    sync_results = green.run(sync_reader, sync_writer)
    return {
        "results": [show(r) for r in results],
        "log": log,
        "max_readers": active["max_readers"],
        "sync_results": [show(r) for r in sync_results],
        "sync_order": order,
    }


def interrupt(impl, green, made):
    """The main greenlet waits for a value another greenlet is creating;
    SIGINT arrives (sent by a third greenlet, so it can only be sent if
    the wait lets other greenlets run).  The wait must end with
    KeyboardInterrupt, and the Dogpile must work afterwards."""
    dogpile = made["dogpile"]
    rw = made["rw"]
    creating, finish = green.event(), green.event()

    def creator():
        creating.set()
        finish.wait(CHILD_DEADLINE)
        return "created"

    def holder():
        with dogpile.acquire(creator) as value:
            return value

    def interrupter(predicate):
        def run():
            wait_until(green, predicate, "the main greenlet to wait")
            green.sleep(0.01)
            # raise_signal, not os.kill: on Windows os.kill terminates.
            signal.raise_signal(signal.SIGINT)

        return run

    spawn = green._spawn
    report = {}
    # The Dogpile.
    spawn(holder)
    creating.wait(CHILD_DEADLINE)
    spawn(interrupter(lambda: dogpile.stats()["waited"] >= 1))
    try:
        with dogpile.acquire(creator) as value:
            report["dogpile"] = f"returned {value!r}"
    except KeyboardInterrupt:
        report["dogpile"] = "KeyboardInterrupt"
    finish.set()
    with dogpile.acquire(creator) as value:
        report["dogpile_after"] = value
    # The ReadWriteMutex: a writer waiting for a reader.
    held, let_go = green.event(), green.event()
    waiting = {"writer": False}

    def reader():
        rw.acquire_read_lock()
        held.set()
        let_go.wait(CHILD_DEADLINE)
        rw.release_read_lock()

    spawn(reader)
    held.wait(CHILD_DEADLINE)
    spawn(interrupter(lambda: waiting["writer"]))
    waiting["writer"] = True
    try:
        rw.acquire_write_lock()
        report["rw"] = "acquired"
    except KeyboardInterrupt:
        report["rw"] = "KeyboardInterrupt"
    let_go.set()
    green.sleep(0.01)
    report["rw_after"] = rw.acquire_write_lock(wait=False)
    return report


def wait_timeout(impl, green, made):
    """A greenlet waiting with wait_timeout for another one's creator gets
    LockTimeout on time, while the creator's greenlet goes on running."""
    dogpile = made["timed"]
    creating, finish = green.event(), green.event()
    progress = []

    def creator():
        creating.set()
        while not finish.is_set():
            progress.append(1)
            green.sleep(0.001)
        return "created"

    def holder():
        with dogpile.acquire(creator) as value:
            return value

    def waiter():
        creating.wait(CHILD_DEADLINE)
        try:
            with dogpile.acquire(creator) as value:
                return value
        except Exception as exc:
            return exc
        finally:
            finish.set()

    results = green.run(holder, waiter)
    return {
        "results": [show(r) for r in results],
        "timeouts": dogpile.stats()["timeouts"],
        "creator_ran_meanwhile": len(progress) > 1,
    }


def background(impl, green, made):
    """A background refresh running in a greenlet holds the lock; the
    value is evicted meanwhile, so the next reader must wait for that
    greenlet: it gets the background creation's value once the job ends."""
    dogpile = made["background"]
    store = {}
    calls = {"creator": 0}
    in_job, finish = green.event(), green.event()

    def value_and_created():
        green.sleep(0)
        if "value" not in store:
            raise need_regeneration()
        return store["value"]

    def creator():
        calls["creator"] += 1
        if calls["creator"] == 2:  # the background job
            in_job.set()
            finish.wait(CHILD_DEADLINE)
        store["value"] = (f"value {calls['creator']}", time.time())
        return store["value"]

    def read():
        with dogpile.acquire(creator, value_and_created_fn=value_and_created) as value:
            return value

    first = read()
    green.sleep(0.06)  # expired
    stale = read()  # hands the refresh to a background greenlet
    in_job.wait(CHILD_DEADLINE)
    del store["value"]  # evicted while the job runs

    def evicted_reader():
        return read()

    def conductor():
        wait_until(green, lambda: dogpile.stats()["waited"] >= 1, "the reader to wait")
        finish.set()
        return "done"

    results = green.run(evicted_reader, conductor)
    return {
        "first": first,
        "stale": stale,
        "results": [show(r) for r in results],
        "creator_calls": calls["creator"],
    }


def mutexes(impl, green, made):
    """FileMutex and RedisMutex (the same module under both cores) between
    greenlets: one greenlet holds, yielding, while another waits; and a
    FileMutex whose file another holder has locked (another open file
    description, as another process would have) lets other greenlets run
    while it waits, here the one that unlocks it."""
    report = {}
    for name in ("file", "redis"):
        mutex = made[name + "_mutex"]
        log = []

        def holder(mutex=mutex, log=log):
            with mutex:
                log.append("a in")
                green.sleep(0.02)
                log.append("a out")

        def other(mutex=mutex, log=log):
            green.sleep(0.005)
            with mutex:
                log.append("b in")

        green.run(holder, other)
        report[name] = log
    mutex = made["file_mutex"]
    fd = os.open(mutex.path, os.O_RDWR)
    if sys.platform == "win32":
        import msvcrt

        # FileMutex locks byte 0 there.
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

        def unlock():
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)

        def unlock():
            fcntl.flock(fd, fcntl.LOCK_UN)

    ticks = []

    def waiter():
        with mutex:
            return "got the file"

    def unlocker():
        for _ in range(5):
            ticks.append(1)
            green.sleep(0.005)
        unlock()
        os.close(fd)
        return "unlocked"

    report["file_held_elsewhere"] = [show(r) for r in green.run(waiter, unlocker)]
    return report


class CountingTakes:
    """A mutex that counts the calls of acquire_or_wait() that took it."""

    def __init__(self, inner):
        self.inner = inner
        self.taken = 0
        self.inside = 0

    def acquire(self, blocking=True, timeout=-1):
        return self.inner.acquire(blocking, timeout)

    def acquire_or_wait(self, timeout=-1):
        self.inside += 1
        try:
            taken = self.inner.acquire_or_wait(timeout)
        finally:
            self.inside -= 1
        self.taken += bool(taken)
        return taken

    def release(self):
        self.inner.release()


def cold_key(impl, green, made):
    """A Dogpile per greenlet, each over a mutex object of its own (as
    processes would have), on a key with no value: one greenlet creates
    while the others wait for its release (in XREAD, or in a shared flock,
    both yielding to the hub), then read the value once without taking the
    lock."""
    report = {}
    for name in ("file", "redis"):
        dogpiles, mutexes, waiting = made["cold_" + name]
        store, calls, reads = {}, [], []
        go = green.event()

        def value_and_created(store=store, reads=reads):
            reads.append(1)
            if "v" not in store:
                raise need_regeneration()
            return store["v"]

        def creator(store=store, calls=calls, go=go):
            calls.append(1)
            if not go.wait(CHILD_DEADLINE):
                raise SystemExit("never told to finish creating")
            store["v"] = ("made", time.time())
            return store["v"]

        def reader(d, vcf=value_and_created, creator=creator):
            with d.acquire(creator, value_and_created_fn=vcf) as value:
                return value

        def conductor(calls=calls, go=go, waiting=waiting):
            wait_until(green, lambda: calls, "the creator")
            wait_until(green, lambda: waiting() >= COLD_READERS - 1, "the waiters to wait")
            go.set()
            return "go"

        first = green.run(lambda d=dogpiles[0]: reader(d), *[
            (lambda d=d: reader(d)) for d in dogpiles[1:]
        ], conductor)
        report[name] = {
            "results": [show(r) for r in first],
            "creator_calls": len(calls),
            "taken": sum(m.taken for m in mutexes),
            "reads": len(reads),
        }
    return report


SCENARIOS = {
    "cold_key": cold_key,
    "dogpile": dogpile_readers,
    "reentry": reentry,
    "lock": lock,
    "readwrite": readwrite,
    "interrupt": interrupt,
    "wait_timeout": wait_timeout,
    "background": background,
    "mutexes": mutexes,
}


class GreenExecutor(Executor):
    """The executor a gevent or eventlet app would use: a greenlet per job."""

    def submit(self, fn, *args, **kwargs):
        future = Future()

        def run():
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        GREEN._spawn(run)
        return future


def make(impl):
    return {
        "dogpile": impl.Dogpile(60),
        "other": impl.Dogpile(60),
        "rw": impl.ReadWriteMutex(),
        "sync": impl.SyncReaderDogpile(60),
        "registry": impl.NameRegistry(registry_creator),
        "timed": impl.Dogpile(60, wait_timeout=0.05),
        "background": impl.Dogpile(0.05, background=GreenExecutor()),
        **(make_mutexes() if SCENARIO == "mutexes" else {}),
        **(make_cold(impl) if SCENARIO == "cold_key" else {}),
    }


COLD_READERS = 4


def make_cold(impl):
    """For cold_key: per kind, COLD_READERS Dogpiles each over a mutex of
    its own, the mutexes (counting their takes), and how many of them wait
    on the server or the kernel now."""
    import tempfile

    import redis

    from dogpile.mutexes import FileMutex, RedisMutex

    url = os.environ["DOGPILE_REDIS_URL"]
    key = f"dogpile-test:greenlets-cold:{os.getpid()}:{time.time()}"
    path = os.path.join(tempfile.mkdtemp(), "cold.lock")
    watcher = redis.Redis.from_url(url)

    def in_xread():
        return sum(1 for c in watcher.client_list() if c.get("cmd") == "xread")

    made = {}
    for name, mutex in (
        ("file", lambda: FileMutex(path)),
        ("redis", lambda: RedisMutex(redis.Redis.from_url(url), key, lease=10)),
    ):
        mutexes = [CountingTakes(mutex()) for _ in range(COLD_READERS)]
        # A FileMutex waits by polling under greenlets, which nothing
        # outside shows: its waiters are counted inside acquire_or_wait().
        waiting = in_xread if name == "redis" else (
            lambda mutexes=mutexes: sum(m.inside for m in mutexes)
        )
        made["cold_" + name] = ([impl.Dogpile(60, lock=m) for m in mutexes], mutexes, waiting)
    return made


def make_mutexes():
    import tempfile

    import redis

    from dogpile.mutexes import FileMutex, RedisMutex

    client = redis.Redis.from_url(os.environ["DOGPILE_REDIS_URL"])
    key = f"dogpile-test:greenlets:{os.getpid()}:{time.time()}"
    return {
        "file_mutex": FileMutex(os.path.join(tempfile.mkdtemp(), "green.lock")),
        "redis_mutex": RedisMutex(client, key, lease=10),
    }


def registry_creator(key):
    # Making a mutex may be cooperative I/O (a distributed lock connects).
    import threading

    GREEN.sleep(0.005)
    return threading.Lock()


def main():
    global GREEN
    if ORDER == "objects-first":
        impl = importlib.import_module(IMPL_NAME)
        made = make(impl)
        patch()
    elif ORDER == "patch-first":
        patch()
        impl = importlib.import_module(IMPL_NAME)
        made = make(impl)
    else:
        raise SystemExit(f"unknown order {ORDER!r}")
    GREEN = Green()
    report = SCENARIOS[SCENARIO](impl, GREEN, made)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
