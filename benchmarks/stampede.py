"""Stampede: 32 threads on one value that expires every 0.2 s, behind a
creator that takes 50 ms.

What is measured:

* creator calls per expiry.  Creator calls are grouped into expiries: a
  call that starts at least ``EXPIRE`` after the previous expiry's first
  creation ended is a new expiry (the value it replaces had expired); any
  other call is a second creation for the same expiry.  Exactly one per
  expiry is the target.
* the latency of every non-creating call that began while a creation was
  running, against the median latency of the calls that began outside one
  (fresh hits), both timed the same way in the same run.  A caller that
  waited for the creator would show tens of milliseconds.

Each reader pauses ``THINK`` between reads, as a request handler would
between cache lookups.  Readers spinning without a pause would keep 32
threads queued on the GIL, and every latency would then include waits of
one switch interval (5 ms) per queued thread: the run would measure the
GIL's round robin rather than the lock (``python -m dogpile`` pauses
between reads for the same reason).  With the pause the GIL is mostly
free, and a latency is the call's own.  What is left in the maximum is
the operating system descheduling a thread mid-call (32 threads, 2 cores
here), which no lock can prevent: the median and p99 say what a caller
pays, the maximum says what the machine added once.
"""

import bisect
import itertools
import threading
import time
from array import array
from types import ModuleType
from typing import Any, Dict, List, Tuple

import harness

THREADS = 32
EXPIRE = 0.2  # seconds a created value stays fresh
BACKEND = 0.05  # seconds one creator call takes
THINK = 0.001  # seconds a reader pauses between reads
# perf_counter_ns and the Dogpile's wall clock may drift apart by this much
# over a run; a creation that starts this close to its expiry still counts
# as a new expiry.
CLOCK_SLACK_NS = 1_000_000


def run(
    mod: ModuleType, duration: float, threads: int = THREADS, **options: Any
) -> Dict[str, Any]:
    """``options`` go to the Dogpile (early_refresh=1.0, say)."""
    d = mod.Dogpile(EXPIRE, **options)
    abort = threading.Event()  # set when a reader fails: the others stop too
    generations = itertools.count()
    creations: List[Tuple[int, int]] = []  # (start, end), perf_counter_ns
    mine = threading.local()

    def creator() -> int:
        mine.created = True
        start = time.perf_counter_ns()
        # The backend call being modelled: it releases the GIL, as I/O
        # would, and returns early only when the run is aborted.
        abort.wait(BACKEND)
        creations.append((start, time.perf_counter_ns()))
        return next(generations)

    with d.acquire(creator):  # the first value: every later creation replaces one
        pass

    samples: List[Tuple[array, array]] = []  # per reader: when each read began, how long it took
    creating_ns = array("q")
    end_ns = [0]

    def set_deadline() -> None:
        # Runs once, when every reader has arrived: thread start-up is not
        # part of the run.
        end_ns[0] = time.perf_counter_ns() + int(duration * 1e9)

    begin = threading.Barrier(threads, action=set_deadline)

    def reader(_: int) -> None:
        starts, took = array("q"), array("q")
        samples.append((starts, took))
        mine.created = False
        begin.wait(harness.DEADLINE)
        try:
            while not abort.is_set():
                t0 = time.perf_counter_ns()
                if t0 >= end_ns[0]:
                    break
                with d.acquire(creator):
                    pass
                t1 = time.perf_counter_ns()
                if mine.created:
                    mine.created = False
                    creating_ns.append(t1 - t0)
                else:
                    starts.append(t0)
                    took.append(t1 - t0)
                abort.wait(THINK)  # the rest of the request
        except BaseException:
            abort.set()
            raise

    harness.run_threads(reader, threads, "stampede")

    # creations[0] is the first value, made before the readers started.
    per_expiry = _calls_per_expiry(creations)
    starts, took = array("q"), array("q")
    for s, t in samples:
        starts.extend(s)
        took.extend(t)
    regen, fresh = _split(starts, took, creations[1:])
    fresh.sort()
    regen.sort()
    fresh_median = harness.percentile(fresh, 50)
    result: Dict[str, Any] = {
        "threads": threads,
        "duration_s": duration,
        "expire_s": EXPIRE,
        "backend_s": BACKEND,
        "think_s": THINK,
        "creator_calls": len(creations) - 1,
        "expiries": len(per_expiry) - 1,
        # Calls beyond the one per expiry, the first value included.
        "extra_creations": sum(n - 1 for n in per_expiry),
        "calls_per_expiry_min": min(per_expiry[1:], default=0),
        "calls_per_expiry_max": max(per_expiry, default=0),
        "reads": len(took) + len(creating_ns),
        "fresh_reads": len(fresh),
        "fresh_median_ns": fresh_median,
        "fresh_p99_ns": harness.percentile(fresh, 99),
        "fresh_max_ns": fresh[-1],
        "creating_median_ns": harness.percentile(sorted(creating_ns), 50) if creating_ns else 0,
        "regen_reads": len(regen),
        "stats": d.stats(),
        # Reads that found the value expired: the stale ones served while
        # another reader created, and the creations an expired value caused
        # (not the first value, not early refreshes of a fresh one).
        "expired_reads": d.stats()["stale"] + d.stats()["created"] - 1 - d.stats()["early"],
    }
    if regen:
        result.update(
            regen_median_ns=harness.percentile(regen, 50),
            regen_p99_ns=harness.percentile(regen, 99),
            regen_max_ns=regen[-1],
        )
    return result


def _calls_per_expiry(creations: List[Tuple[int, int]]) -> List[int]:
    """Creator calls per expiry (see the module docstring); the first entry
    is the first value's, made before the readers started."""
    calls = sorted(creations)
    counts = [1]
    fresh_until = calls[0][1] + int(EXPIRE * 1e9)
    for start, end in calls[1:]:
        if start >= fresh_until - CLOCK_SLACK_NS:
            counts.append(1)
            fresh_until = end + int(EXPIRE * 1e9)
        else:
            counts[-1] += 1
    return counts


def _split(
    starts: array, took: array, creations: List[Tuple[int, int]]
) -> Tuple[List[int], List[int]]:
    """Latencies of the reads that began during a creation, and of the
    others."""
    intervals = sorted(creations)
    begins = [s for s, _ in intervals]
    regen: List[int] = []
    fresh: List[int] = []
    for t0, dt in zip(starts, took):
        i = bisect.bisect_right(begins, t0) - 1
        (regen if i >= 0 and t0 < intervals[i][1] else fresh).append(dt)
    return regen, fresh
