"""Reliability: interruptible waits, fork, custom locks that fail, creator
failure under load, clocks.  Each test names the failure it guards against.

Signals and fork run in a child interpreter: a KeyboardInterrupt that
arrived at the wrong moment, or a fork of pytest's threads, must not take
the test session down with it.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import DEADLINE, run_threads

import dogpile
from dogpile import NeedRegenerationException

SRC = os.path.dirname(os.path.dirname(dogpile.__file__))


def run_child(impl, body):
    """Run ``body`` in a fresh interpreter with ``m`` bound to the
    implementation module; return the JSON object it prints last."""
    script = f"import dogpile.{impl.__name__.split('.')[-1]} as m\n" + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ctrl_c_interrupts_a_caller_waiting_for_the_first_value(impl):
    """Guards against a wait that signals cannot reach: a native mutex wait
    with the GIL released never returns to run the SIGINT handler, so
    Ctrl-C would hang until the creator finished.  The main thread must get
    KeyboardInterrupt within 100 ms, as in threading.Lock.acquire()."""
    result = run_child(
        impl,
        """
        import json, os, signal, sys, threading, time
        d = m.Dogpile(3600)
        creating, finish = threading.Event(), threading.Event()

        def slow_creator():
            creating.set()
            # Bounded, so an uninterruptible wait shows as a late interrupt
            # (a failed latency check) rather than a hung child.
            finish.wait(3)
            return "value"

        def create():
            with d.acquire(slow_creator):
                pass

        creator_thread = threading.Thread(target=create)
        creator_thread.start()
        assert creating.wait(10)
        main = threading.main_thread()
        sent = []

        def interrupt():
            # Wait until the main thread is inside waiter() (it does nothing
            # there but wait), then a moment more so it is asleep.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                frame = sys._current_frames().get(main.ident)
                while frame is not None and frame.f_code.co_name != "waiter":
                    frame = frame.f_back
                if frame is not None:
                    break
                time.sleep(0.001)
            time.sleep(0.05)
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

        def waiter():
            with d.acquire(lambda: "second creator"):
                return "got a value"

        killer = threading.Thread(target=interrupt)
        killer.start()
        outcome = None
        try:
            outcome = waiter()
        except KeyboardInterrupt:
            latency = time.monotonic() - sent[0]
            outcome = "interrupted"
        killer.join(10)
        finish.set()
        creator_thread.join(10)
        # The interrupted waiter left nothing held: a later caller gets the value.
        with d.acquire(lambda: "unexpected") as value:
            pass
        print(json.dumps({"outcome": outcome,
                          "latency": latency if outcome == "interrupted" else None,
                          "value": value, "creator_alive": creator_thread.is_alive()}))
        """,
    )
    assert result["outcome"] == "interrupted", result
    assert result["value"] == "value"
    assert not result["creator_alive"]
    # The design wakes every 20 ms; allow scheduling noise on a busy machine
    # without letting an uninterruptible wait (which would take 30 s) pass.
    assert result["latency"] < 0.1 * 5, result


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_forked_child_creates_instead_of_waiting_for_a_parent_thread(impl):
    """Guards against a child that hangs forever: a thread of the parent
    holds the creation lock when the parent forks; that thread does not
    exist in the child, so nothing would ever release the lock there."""
    result = run_child(
        impl,
        """
        import json, os, threading, time, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        d = m.Dogpile(3600)
        creating, finish = threading.Event(), threading.Event()

        def slow_creator():
            creating.set()
            finish.wait(30)
            return "parent's value"

        def create():
            with d.acquire(slow_creator):
                pass

        t = threading.Thread(target=create)
        t.start()
        assert creating.wait(10)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with d.acquire(lambda: "child's value") as value:
                    code = 0 if value == "child's value" else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = "hung"
        finish.set()
        t.join(10)
        with d.acquire(lambda: "unexpected") as value:
            pass
        child = status if status == "hung" else os.waitstatus_to_exitcode(status)
        print(json.dumps({"child": child, "parent_value": value}))
        """,
    )
    assert result["child"] == 0, result
    assert result["parent_value"] == "parent's value"


class FlakyLock:
    """A lock whose acquire or release raises once when told to."""

    def __init__(self):
        self.inner = threading.Lock()
        self.fail_acquire = False
        self.fail_release = False

    def acquire(self, blocking=True):
        if self.fail_acquire:
            self.fail_acquire = False
            raise ConnectionError("lock server unreachable")
        return self.inner.acquire(blocking)

    def release(self):
        self.inner.release()
        if self.fail_release:
            self.fail_release = False
            raise ConnectionError("lock server went away during release")


def test_a_lock_whose_acquire_raises_reports_its_own_error(impl):
    """Guards against a secondary error hiding the real one (releasing a
    lock that was never taken raises RuntimeError) and against a Dogpile
    left unusable by the failure."""
    lock = FlakyLock()
    d = impl.Dogpile(3600, lock=lock)
    lock.fail_acquire = True
    with pytest.raises(ConnectionError, match="unreachable"):
        with d.acquire(lambda: "v"):
            pass
    assert not lock.inner.locked()
    with d.acquire(lambda: "v") as value:
        assert value == "v"
    assert not lock.inner.locked()


def test_a_lock_whose_release_raises_reports_its_own_error(impl):
    """Guards against the release error being swallowed or replaced, and
    against the value being lost with it."""
    lock = FlakyLock()
    d = impl.Dogpile(3600, lock=lock)
    lock.fail_release = True
    with pytest.raises(ConnectionError, match="during release"):
        with d.acquire(lambda: "v"):
            pass
    assert not lock.inner.locked()
    calls = []
    with d.acquire(lambda: calls.append(1) or "again") as value:
        # The creation finished before the release failed: its value stands.
        assert value == "v"
    assert calls == []


def test_creator_failing_under_load_releases_everyone(impl):
    """Guards against waiters left hanging on a lock that nobody will
    release when the creator raises: 32 threads wait for a first value
    whose creator fails; each gets an exception or a value, and the lock
    ends free."""
    d = impl.Dogpile(3600)
    barrier = threading.Barrier(32, timeout=DEADLINE)
    outcomes = []

    def creator():
        raise RuntimeError("backend down")

    def caller(_):
        barrier.wait()
        try:
            with d.acquire(creator) as value:
                outcomes.append(("value", value))
        except RuntimeError as exc:
            outcomes.append(("error", str(exc)))

    run_threads(caller, 32)
    assert len(outcomes) == 32
    assert all(o == ("error", "backend down") for o in outcomes), outcomes
    # The lock is free: the next caller creates.
    with d.acquire(lambda: "recovered") as value:
        assert value == "recovered"


def test_createdtime_from_another_process_is_compared_on_the_epoch_clock(impl):
    """Guards against comparing another process's time.time() with a
    per-process clock (monotonic or perf_counter), which would make every
    stored value look expired or fresh forever."""
    child_time = float(
        subprocess.run(
            [sys.executable, "-c", "import time; print(repr(time.time()))"],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=True,
        ).stdout
    )
    d = impl.Dogpile(3600)
    calls = []

    def creator():
        calls.append(1)
        return "new", time.time()

    with d.acquire(creator, value_and_created_fn=lambda: ("stored", child_time)) as value:
        assert value == "stored"
    assert calls == []
    old = child_time - 7200
    with d.acquire(creator, value_and_created_fn=lambda: ("stored", old)) as value:
        assert value == "new"
    assert calls == [1]


@pytest.mark.parametrize("ahead", [2.0, 1000.0])
def test_createdtime_far_in_the_future_counts_as_expired(impl, ahead):
    """Guards against a value stuck live until the clock catches up: a
    creation time further ahead than the expiry time (a clock stepped
    back, a host whose clock runs ahead) counts as expired."""
    d = impl.Dogpile(1.0)
    d.createdtime = time.time() + ahead
    assert d.is_expired
    calls = []
    with d.acquire(lambda: calls.append(1) or "repaired") as value:
        assert value == "repaired"
    assert calls == [1]
    assert not d.is_expired


def test_createdtime_slightly_in_the_future_is_fresh(impl):
    """Guards against the opposite mistake: clocks that differ by less than
    the expiry time (ordinary skew between hosts) keep a value fresh."""
    d = impl.Dogpile(60)
    d.createdtime = time.time() + 5
    assert not d.is_expired
    with d.acquire(lambda: pytest.fail("must not create")):
        pass


def test_need_regeneration_under_the_lock_creates(impl):
    """Guards against returning nothing when value_fn reports the value
    gone while the Dogpile's own time still says fresh."""
    d = impl.Dogpile(3600, init=True)
    store = {}

    def value_fn():
        if "v" not in store:
            raise NeedRegenerationException()
        return store["v"]

    def creator():
        store["v"] = "made"
        return "made"

    with d.acquire(creator, value_fn=value_fn) as value:
        assert value == "made"


def test_a_dogpile_is_freed_with_its_last_reference(impl):
    """Guards against a Dogpile that lives on in a reference cycle after
    use (an earlier compiled core kept a context manager pointing back at
    it): a NameRegistry entry would then outlive its last user until the
    cyclic collector happened to run."""
    import gc
    import weakref

    gc.disable()
    try:
        d = impl.Dogpile(3600)
        with d.acquire(lambda: "v") as value:
            assert value == "v"
        d.createdtime = 1.0  # through the creation path once more
        with d.acquire(lambda: "w"):
            pass
        ref = weakref.ref(d)
        del d
        assert ref() is None
    finally:
        gc.enable()
