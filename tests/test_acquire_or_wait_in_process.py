"""acquire_or_wait() when another thread or greenlet of the same process
holds the mutex's in-process lock while the key or file looks free (it is
taking it, or polling for it): the waiter waits for that release, neither
spinning nor taking the lock after it to create again.  Found by review."""

import json
import os
import subprocess
import sys

from conftest import DEADLINE

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "in_process_workers.py")


def run_child(impl, scenario):
    name = "cython" if impl.__name__ == "dogpile._core" else "python"
    proc = subprocess.run(
        [sys.executable, WORKER, name, scenario],
        capture_output=True, text=True, timeout=4 * DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_file_mutex_under_gevent_does_not_spin_when_its_local_lock_is_held(impl):
    """Under gevent, with a greenlet in a plain FileMutex.acquire() holding
    its in-process lock while the file is free, a Dogpile with no value
    waits for that greenlet instead of reading the value in a loop that
    does not yield (thousands of reads per release, each a backend GET in
    production, before the fix)."""
    report = run_child(impl, "gevent_file_spin")
    assert report["value"] == "v"
    assert report["reads_after_release"] <= 5, report


# -- threads of one process share a failure (RedisMutex's F1 path) ------------

import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import redis_server  # noqa: E402

redis_url = redis_server.redis_url


def test_threads_waiting_behind_the_in_process_lock_share_the_failure(impl, redis_url):
    """Threads of one process that arrive while the first one is taking the
    key (it holds the mutex's in-process lock, its SET still on the way)
    find the key free and wait for that thread's release; its creator's
    failure is then shared, as it is without acquire_or_wait: one creation,
    not one per thread taking the lock in turn.  The first take is made
    slow by a client that waits before sending it (a real server, a slow
    network)."""
    import redis

    import dogpile
    from dogpile.mutexes import RedisMutex

    waiters = 5
    looked = threading.Semaphore(0)
    in_take = threading.Event()

    class SlowFirstTake(redis.Redis):
        slow = [True]

        def execute_command(self, *args, **options):
            if args[0] == "EVAL" and len(args) > 6 and args[-1] in ("1", "0"):
                if args[-1] == "1" and self.slow[0]:
                    self.slow[0] = False
                    in_take.set()
                    # Until every other thread has looked at the key.
                    for _ in range(waiters):
                        assert looked.acquire(timeout=DEADLINE)
                    time.sleep(0.05)  # they are now waiting for the in-process lock
                elif args[-1] == "0":
                    result = super().execute_command(*args, **options)
                    looked.release()
                    return result
            return super().execute_command(*args, **options)

    client = SlowFirstTake.from_url(redis_url)
    d = impl.Dogpile(60, lock=RedisMutex(client, "dogpile-test:in-process:" + uuid.uuid4().hex))
    calls = []

    def creator():
        calls.append(1)
        time.sleep(0.05)
        raise ValueError("the creator failed")

    def stored():
        raise dogpile.NeedRegenerationException()

    outcomes = []

    def caller():
        try:
            with d.acquire(creator, value_and_created_fn=stored):
                outcomes.append("value")
        except ValueError:
            outcomes.append("failed")

    first = threading.Thread(target=caller)
    first.start()
    assert in_take.wait(DEADLINE)
    others = [threading.Thread(target=caller) for _ in range(waiters)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(DEADLINE)
        assert not t.is_alive()
    client.close()
    assert outcomes == ["failed"] * (waiters + 1)
    assert len(calls) == 1, f"{len(calls)} creations for one failure; {d.stats()}"
