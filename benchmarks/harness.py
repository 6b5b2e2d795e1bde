"""Timing, threading and memory helpers shared by both sides of the
comparison.

Standard library only, and no ``import dogpile``: ``peer.py`` imports this
module inside the dogpile.cache virtual environment, where ``dogpile`` is
dogpile.cache's package, not ours.

How a time is taken (both processes, every case): the case's statement is
compiled into a loop the way ``timeit`` does it (names bound as fast
locals, no call per iteration), each case is calibrated to a chunk of about
``chunk_seconds``, and the chunks of all cases are interleaved round-robin
for ``repeats`` rounds.  A case's time is the median over its rounds of
(chunk time / iterations).  Interleaving puts every case and its reference
(the bare lock) into the same stretches of machine noise, which is what
makes their ratio hold when the absolute times do not.  The garbage
collector stays enabled, unlike ``timeit``'s default: a case that allocates
pays for its collections, as it would in a program.
"""

import gc
import itertools
import statistics
import threading
import time
import tracemalloc
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

# Every wait on another thread ends by this many seconds: a broken lock
# fails the benchmark instead of hanging it.
DEADLINE = 30.0
# A HeldCreation stays parked for the whole single-threaded phase of
# compare.py (every case, interleaved): about 20 s on a quiet machine, more
# on a loaded one, so its deadline is longer.
HELD_DEADLINE = 120.0

_LOOP_TEMPLATE = """\
{kind}def _loop(_n, _ns=_ns, _timer=_timer, _repeat=_repeat):
{bind}
    _t0 = _timer()
    for _ in _repeat(None, _n):
{body}
    return _timer() - _t0
"""


def compile_loop(stmt: str, namespace: Mapping[str, Any], kind: str = "") -> Any:
    """Return ``loop(n)``: run ``stmt`` n times, return the seconds taken
    (with ``kind="async "``, a coroutine function, for statements with
    ``async with`` and ``await``).

    Every name of ``namespace`` is a fast local of the loop, as ``timeit``
    binds its setup names, so what is timed is the statement and not
    global lookups."""
    bind = "".join(f"    {name} = _ns[{name!r}]\n" for name in namespace if name.isidentifier())
    body = "".join(f"        {line}\n" for line in stmt.splitlines())
    code = _LOOP_TEMPLATE.format(kind=kind, bind=bind or "    pass\n", body=body)
    scope: Dict[str, Any] = {
        "_ns": dict(namespace),
        "_timer": time.perf_counter,
        "_repeat": itertools.repeat,
    }
    exec(compile(code, f"<{kind}loop: {stmt.splitlines()[0]}>", "exec"), scope)
    return scope["_loop"]


def compile_call(stmt: str, namespace: Mapping[str, Any]) -> Callable[[], None]:
    """Return ``op()``: run ``stmt`` once.  For pytest-benchmark, which
    calls a function per iteration; the names of ``namespace`` are bound as
    default arguments, so they are fast locals here too."""
    names = [name for name in namespace if name.isidentifier()]
    params = ", ".join(f"{name}=_ns[{name!r}]" for name in names)
    body = "".join(f"    {line}\n" for line in stmt.splitlines())
    code = f"def _op({params}):\n{body}"
    scope: Dict[str, Any] = {"_ns": dict(namespace)}
    exec(compile(code, f"<op: {stmt.splitlines()[0]}>", "exec"), scope)
    return scope["_op"]  # type: ignore[no-any-return]


def calibrate(loop: Callable[[int], float], chunk_seconds: float) -> int:
    """Iterations that make one chunk of about ``chunk_seconds``."""
    # The first runs of a loop are slow (the interpreter specialises its
    # instructions, caches fill); the faster of two runs sets the count,
    # so one slow start does not shrink every chunk of the case.
    loop(1)
    n = 1
    while True:
        elapsed = min(loop(n), loop(n))
        if elapsed >= chunk_seconds / 5 or n >= 1 << 30:
            break
        n *= 10 if elapsed < chunk_seconds / 100 else 2
    return max(1, round(n * chunk_seconds / max(elapsed, 1e-9)))


def measure(
    loops: Mapping[str, Callable[[int], float]],
    repeats: int,
    chunk_seconds: float,
) -> Dict[str, Dict[str, float]]:
    """Time every loop, interleaved; return per case the median, best and
    worst nanoseconds per iteration and the iterations per chunk."""
    counts = {name: calibrate(loop, chunk_seconds) for name, loop in loops.items()}
    samples: Dict[str, List[float]] = {name: [] for name in loops}
    gc.collect()
    for _ in range(repeats):
        for name, loop in loops.items():
            samples[name].append(loop(counts[name]) / counts[name] * 1e9)
    return {
        name: {
            "median_ns": statistics.median(s),
            "best_ns": min(s),
            "worst_ns": max(s),
            "number": counts[name],
            "repeats": len(s),
        }
        for name, s in samples.items()
    }


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def run_threads(target: Callable[[int], Any], count: int, name: str = "bench") -> None:
    """Run ``target(i)`` in ``count`` threads, join each with a deadline and
    re-raise the first exception one of them raised."""
    errors: List[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # re-raised below, in the caller
            errors.append(exc)

    threads = [
        threading.Thread(target=wrap, args=(i,), name=f"{name}-{i}", daemon=True)
        for i in range(count)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLINE
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    if alive:
        raise RuntimeError(f"{alive} of {count} {name} threads still running after {DEADLINE} s")


class HeldCreation:
    """A creation in progress in another thread, parked inside its creator
    until ``close()``: the creation lock stays held meanwhile, which is
    the situation of the stale fall-through.

    ``start(creator)`` is the library call that thread makes (say
    ``with dogpile.acquire(creator): pass``); ``creator`` hands back
    ``result`` once released.  Entering waits until the creator runs, so
    the lock is known to be held before anything is timed.
    """

    def __init__(self, start: Callable[[Callable[[], Any]], Any], result: Any) -> None:
        self._start = start
        self._result = result
        self._entered = threading.Event()
        self._release = threading.Event()
        self._errors: List[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="held-creation", daemon=True)

    def _creator(self) -> Any:
        self._entered.set()
        if not self._release.wait(HELD_DEADLINE):
            raise RuntimeError("HeldCreation was never released")
        return self._result

    def _run(self) -> None:
        try:
            self._start(self._creator)
        except BaseException as exc:  # reported by close()
            self._errors.append(exc)
            self._entered.set()

    def __enter__(self) -> "HeldCreation":
        self._thread.start()
        if not self._entered.wait(DEADLINE):
            raise RuntimeError("the held creation never reached its creator")
        if self._errors:
            raise self._errors[0]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._release.set()
        self._thread.join(DEADLINE)
        if self._thread.is_alive():
            raise RuntimeError(f"the held creation did not finish within {DEADLINE} s")
        if self._errors:
            raise self._errors[0]


class CallCounter:
    """A creator that counts its calls: a stale fall-through case asserts
    that it was never called while it was timed."""

    def __init__(self, result: Any) -> None:
        self.calls = 0
        self._result = result

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        return self._result


def allocated_per_item(make: Callable[[int], Any], count: int) -> float:
    """Bytes that ``make(i)`` leaves allocated per call, averaged over
    ``count`` calls and measured with tracemalloc (the sizes requested from
    the allocator: object headers, GC headers and everything ``make``
    allocates and keeps, but not the allocator's own rounding).  The list
    that keeps the results alive is made before tracing starts, so it is
    not counted; whatever the callers pass in (keys, functions) is made
    beforehand and not counted either."""
    keep: List[Optional[Any]] = [None] * count
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            keep[i] = make(i)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return (after - before) / count
