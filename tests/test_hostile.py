"""The hostile caller (hostile_caller.py) against the compiled core, in a
child process: every class built every wrong way, every method and
attribute used with wrong types.  The child must end by itself: a signal
(signal 11 from an object whose __init__ never ran, say) fails the test."""

import json
import os
import signal
import subprocess
import sys

import pytest

import dogpile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(dogpile.__file__))


@pytest.mark.c_extension
def test_no_wrong_use_of_the_compiled_core_crashes_the_interpreter():
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "hostile_caller.py"), "dogpile._core"],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode < 0:
        pytest.fail(
            f"the hostile caller was killed by {signal.Signals(-proc.returncode).name}:\n"
            + proc.stderr[-5000:]
        )
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # It reached every class, the private ones that methods hand out too.
    assert set(report["classes"]) >= {
        "Dogpile",
        "SyncReaderDogpile",
        "Lock",
        "NameRegistry",
        "ReadWriteMutex",
        "_Acquisition",
        "_WriteLock",
        "_Handoff",
        "_Attempt",
        "_Options",
    }
    assert report["calls"] > 100_000
    # Every object is fresh for each call, so nothing waits on a lock an
    # earlier call left held: a blocked call is a lock that never frees.
    assert report["blocked"] == 0, report["blocked_examples"]
