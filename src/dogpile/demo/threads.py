"""The thread load: ``config.threads`` reader threads read one cached value
in front of a slow backend, unprotected or through one shared Dogpile.

``read_for`` is also what each process of a ``--redis`` run does
(``processes``), over a cache and backend kept in Redis.
"""

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import NeedRegenerationException
from .model import (
    JOIN_GRACE_SECONDS,
    KEY,
    THINK_SECONDS,
    Config,
    DemoError,
    Record,
    RunResult,
    core,
    summarize,
)


class Backend:
    """The slow thing behind the cache: every call takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._lock = threading.Lock()
        self.calls = 0

    def fetch(self) -> int:
        with self._lock:
            self.calls += 1
            answer = self.calls
        time.sleep(self._delay)
        return answer


# -- the two ways of reading the cache ----------------------------------------


def unprotected_reader(
    cache: Dict[str, Record], backend: Backend, expire: float
) -> Callable[[], Record]:
    """Every caller that finds the value missing or expired refreshes it."""

    def read() -> Record:
        record = cache.get(KEY)
        if record is None or time.time() - record.created > expire:
            record = Record(backend.fetch(), time.time())
            cache[KEY] = record
        return record

    return read


def dogpile_reader(
    cache: Dict[str, Record], backend: Backend, expire: float, dogpile_class: Any, mutex: Any = None
) -> Callable[[], Record]:
    """The same cache behind one shared Dogpile: one caller refreshes an
    expired value while the others get the previous one.  ``mutex`` (a
    RedisMutex) extends "one caller" to every process that shares it."""
    lock = dogpile_class(expire) if mutex is None else dogpile_class(expire, lock=mutex)

    def value_and_created() -> Tuple[Record, float]:
        record = cache.get(KEY)
        if record is None:
            raise NeedRegenerationException()
        return record, record.created

    def create() -> Tuple[Record, float]:
        record = Record(backend.fetch(), time.time())
        cache[KEY] = record
        return record, record.created

    def read() -> Record:
        with lock.acquire(create, value_and_created_fn=value_and_created) as record:
            return record  # type: ignore[no-any-return]

    return read


# -- running a load -------------------------------------------------------------


def read_for(
    name: str,
    read: Callable[[], Record],
    config: Config,
    before_go: Optional[Callable[[], None]] = None,
) -> Tuple[List[float], int, float]:
    """Run ``config.threads`` readers calling ``read()`` for
    ``config.duration`` seconds; return every read's latency, the number of
    stale reads, and the seconds from the start until every reader was
    done.  ``before_go`` runs once the threads are ready, just before they
    start (a process waits there for the others)."""
    go = threading.Event()
    stop = threading.Event()
    deadline = [0.0]  # set just before ``go``
    samples: List[Optional[Tuple[List[float], int]]] = [None] * config.threads
    errors: List[BaseException] = []

    def reader(index: int) -> None:
        latencies: List[float] = []
        stale = 0
        go.wait()
        end = deadline[0]
        try:
            while not stop.is_set():
                started = time.perf_counter()
                if started >= end:
                    break
                started_wall = time.time()
                record = read()
                latencies.append(time.perf_counter() - started)
                if started_wall - record.created > config.expire:
                    stale += 1
                time.sleep(THINK_SECONDS)
        except BaseException as exc:  # handed to the main thread below
            errors.append(exc)
        samples[index] = (latencies, stale)

    threads = [
        threading.Thread(target=reader, args=(i,), name=f"{name}-reader-{i}", daemon=True)
        for i in range(config.threads)
    ]
    try:
        for thread in threads:
            thread.start()
        if before_go is not None:
            before_go()
        start = time.perf_counter()
        deadline[0] = start + config.duration
        go.set()
        join_by = deadline[0] + JOIN_GRACE_SECONDS + 2 * config.backend_ms / 1000.0
        for thread in threads:
            thread.join(max(0.0, join_by - time.perf_counter()))
    finally:
        # Also on Ctrl-C or a failed thread start: no reader is left waiting
        # for ``go`` or reading on.
        stop.set()
        go.set()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    alive = sum(thread.is_alive() for thread in threads)
    if alive:
        raise DemoError(
            f"{alive} of {config.threads} reader threads of the {name} run were still "
            f"running {elapsed - config.duration:.1f} s after the run should have ended"
        )

    latencies = [lat for sample in samples if sample for lat in sample[0]]
    return latencies, sum(sample[1] for sample in samples if sample), elapsed


def run_load(name: str, read: Callable[[], Record], backend: Backend, config: Config) -> RunResult:
    """Run ``config.threads`` readers calling ``read()`` for
    ``config.duration`` seconds and measure what they saw."""
    latencies, stale, elapsed = read_for(name, read, config)
    return summarize(name, latencies, stale, backend.calls, elapsed, config)


def run_unprotected(config: Config) -> RunResult:
    backend = Backend(config.backend_ms / 1000.0)
    read = unprotected_reader({}, backend, config.expire)
    return run_load("unprotected", read, backend, config)


def run_dogpile(config: Config) -> RunResult:
    backend = Backend(config.backend_ms / 1000.0)
    read = dogpile_reader({}, backend, config.expire, dogpile_class(config.pure))
    return run_load("dogpile", read, backend, config)


def dogpile_class(pure: bool) -> Any:
    """The Dogpile class to demonstrate (see model.core)."""
    return core(pure)[0].Dogpile


def run_threads(config: Config) -> List[RunResult]:
    """Both runs, one after the other, in this process."""
    return [run_unprotected(config), run_dogpile(config)]
