"""Child scripts of tests/test_acquire_or_wait_in_process.py (monkey-patching
cannot be undone, so it never happens in the pytest process).

    python in_process_workers.py IMPLEMENTATION SCENARIO

Prints one JSON line and exits 0."""

import json
import sys

IMPL, SCENARIO = sys.argv[1:3]


def gevent_file_spin():
    # A greenlet sits in FileMutex m's plain blocking acquire() (it holds
    # m's in-process lock and polls the file with back-off under gevent)
    # while another FileMutex object on the path holds the file, as another
    # process would.  A Dogpile over m has no value and waits in
    # acquire_or_wait().  The holder ends without a value (its creator
    # failed).  The file is then free while m's in-process lock is held:
    # acquire_or_wait() returns False at once, the Dogpile reads the value
    # (missing) and asks again, in a loop that never yields to the hub, until
    # the acquire() greenlet's back-off timer happens to run: what this
    # guards against.
    from gevent import monkey

    monkey.patch_all()
    import os
    import tempfile
    import time

    import gevent

    import dogpile

    core = dogpile._load_core(IMPL)
    from dogpile.mutexes import FileMutex

    path = os.path.join(tempfile.mkdtemp(), "lock")
    m, other = FileMutex(path), FileMutex(path)
    reads = [0]
    released = [False]
    reads_after = [0]

    def value_and_created():
        reads[0] += 1
        if released[0]:
            reads_after[0] += 1
        raise dogpile.NeedRegenerationException()

    other.acquire()

    def plain_acquirer():
        m.acquire()
        m.release()

    a = gevent.spawn(plain_acquirer)
    gevent.sleep(0.4)  # its back-off (2 ms doubling) is at its 0.1 s cap by now
    d = core.Dogpile(60, lock=m)

    def reader():
        with d.acquire(lambda: ("v", time.time()), value_and_created_fn=value_and_created) as v:
            return v

    b = gevent.spawn(reader)
    gevent.sleep(0.01)  # b waits, polling the file with a short back-off
    released[0] = True
    other.release()  # the holder's creator failed: no value stored
    value = b.get(timeout=10)
    a.join(timeout=10)
    print(json.dumps({"value": value, "reads_after_release": reads_after[0]}))


{"gevent_file_spin": gevent_file_spin}[SCENARIO]()
