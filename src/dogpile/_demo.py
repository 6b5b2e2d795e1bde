"""``python -m dogpile``: a cache stampede, with and without a Dogpile.

Many threads read one cached value that sits in front of a slow backend and
expires every fraction of a second.  The same load runs twice, for the same
time: once unprotected (every thread that finds the value expired calls the
backend itself) and once through one shared ``Dogpile`` (one thread calls
the backend, the others serve the previous value meanwhile).  One table
compares the two: backend calls, backend calls per expiry, stale values
served, and what the callers waited.
"""

import argparse
import math
import os
import platform
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from . import IMPLEMENTATION, Dogpile, NeedRegenerationException, __version__

PROG = "python -m dogpile"

# Each reader pauses this long between reads, as a request handler would
# between cache lookups.  Readers spinning without a pause would measure the
# GIL's switch interval rather than the cache; and at 10 ms a reader makes
# some 25 reads per 0.25 s expiry, so one backend wait per reader per expiry
# (a stampede) shows in p99, not only in max.
THINK_SECONDS = 0.01

# Enough to show a stampede; more only risks running out of threads.
MAX_THREADS = 1000

# A reader is never inside a read for more than one backend call, so the
# threads are done this long after the run ends unless something is broken.
JOIN_GRACE_SECONDS = 5.0


class DemoError(Exception):
    """The demonstration could not run to the end (reported in one line)."""


@dataclass(frozen=True)
class Config:
    threads: int = 16
    duration: float = 2.0  # seconds per run
    expire: float = 0.25  # seconds a cached value stays fresh
    backend_ms: float = 50.0  # milliseconds per backend call
    pure: bool = False


@dataclass(frozen=True)
class Record:
    """What the cache holds: the backend's answer and when it was stored."""

    data: int
    created: float  # time.time()


@dataclass(frozen=True)
class RunResult:
    name: str
    reads: int
    backend_calls: int
    elapsed: float  # seconds from the start signal until every reader is done
    expire: float
    stale: int  # reads answered with a value already expired when the read began
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def calls_per_expiry(self) -> float:
        """Backend calls divided by the number of expiry periods in the run:
        1.0 is one refresh per expiry; a stampede is about one per thread."""
        return self.backend_calls / (self.elapsed / self.expire)


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

_KEY = "value"


def unprotected_reader(
    cache: Dict[str, Record], backend: Backend, expire: float
) -> Callable[[], Record]:
    """Every caller that finds the value missing or expired refreshes it."""

    def read() -> Record:
        record = cache.get(_KEY)
        if record is None or time.time() - record.created > expire:
            record = Record(backend.fetch(), time.time())
            cache[_KEY] = record
        return record

    return read


def dogpile_reader(
    cache: Dict[str, Record], backend: Backend, expire: float, dogpile_class: Any
) -> Callable[[], Record]:
    """The same cache behind one shared Dogpile: one caller refreshes an
    expired value while the others get the previous one."""
    lock = dogpile_class(expire)

    def value_and_created() -> Tuple[Record, float]:
        record = cache.get(_KEY)
        if record is None:
            raise NeedRegenerationException()
        return record, record.created

    def create() -> Tuple[Record, float]:
        record = Record(backend.fetch(), time.time())
        cache[_KEY] = record
        return record, record.created

    def read() -> Record:
        with lock.acquire(create, value_and_created_fn=value_and_created) as record:
            return record  # type: ignore[no-any-return]

    return read


# -- running a load -------------------------------------------------------------


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_load(name: str, read: Callable[[], Record], backend: Backend, config: Config) -> RunResult:
    """Run ``config.threads`` readers calling ``read()`` for
    ``config.duration`` seconds and measure what they saw."""
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

    latencies = sorted(lat for sample in samples if sample for lat in sample[0])
    return RunResult(
        name=name,
        reads=len(latencies),
        backend_calls=backend.calls,
        elapsed=elapsed,
        expire=config.expire,
        stale=sum(sample[1] for sample in samples if sample),
        p50_ms=percentile(latencies, 50) * 1000.0,
        p99_ms=percentile(latencies, 99) * 1000.0,
        max_ms=(latencies[-1] if latencies else 0.0) * 1000.0,
    )


def run_unprotected(config: Config) -> RunResult:
    backend = Backend(config.backend_ms / 1000.0)
    read = unprotected_reader({}, backend, config.expire)
    return run_load("unprotected", read, backend, config)


def run_dogpile(config: Config, dogpile_class: Any) -> RunResult:
    backend = Backend(config.backend_ms / 1000.0)
    read = dogpile_reader({}, backend, config.expire, dogpile_class)
    return run_load("dogpile", read, backend, config)


# -- output ---------------------------------------------------------------------

_COLUMNS = (
    "run",
    "reads",
    "backend calls",
    "calls/expiry",
    "stale served",
    "p50 ms",
    "p99 ms",
    "max ms",
)


def format_table(results: Sequence[RunResult]) -> str:
    """One row per run, names left-aligned, numbers right-aligned."""
    rows = [
        (
            r.name,
            str(r.reads),
            str(r.backend_calls),
            f"{r.calls_per_expiry:.2f}",
            str(r.stale),
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.max_ms:.2f}",
        )
        for r in results
    ]
    widths = [max(len(cells[i]) for cells in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest])

    return "\n".join(line(cells) for cells in [_COLUMNS, *rows])


def header(config: Config, implementation: str) -> str:
    if config.pure and IMPLEMENTATION != "python":
        implementation += f" (--pure; the default here is {IMPLEMENTATION})"
    python = f"{platform.python_implementation()} {platform.python_version()}"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        python += " free-threaded"
    return (
        f"dogpile {__version__} stampede demo: implementation {implementation}, "
        f"{python}, {config.threads} threads, 2 runs of {config.duration:g} s, "
        f"value expires every {config.expire:g} s, backend call {config.backend_ms:g} ms"
    )


def legend(config: Config) -> str:
    return (
        f"calls/expiry: backend calls per {config.expire:g} s of run time "
        "(1 = one refresh per expiry; a stampede approaches the thread count).\n"
        "stale served: reads answered with a value already expired when the read "
        "began, while another thread refreshed it.\n"
        "latency: wall time of each whole read, from the caller's side."
    )


# -- command line -----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the option and what was wrong with it.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_THREADS} threads, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds greater than 0, got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds of 0 or more, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = _Parser(
        prog=PROG,
        description=(
            "Show a cache stampede and what a dogpile lock does to it. Many "
            "threads read one cached value in front of a slow backend, each about "
            f"every {THINK_SECONDS * 1000:g} ms; the value expires every fraction "
            "of a second. The same load runs twice, once unprotected (every thread "
            "that finds the value expired calls the backend) and once through one "
            "dogpile.Dogpile (one thread calls the backend, the others serve the "
            "previous value), and a table compares the two."
        ),
    )
    parser.add_argument(
        "--threads", type=_thread_count, default=defaults.threads, metavar="N",
        help=f"number of reader threads, 1 to {MAX_THREADS} (default: %(default)s)",
    )
    parser.add_argument(
        "--duration", type=_positive_seconds, default=defaults.duration, metavar="SECONDS",
        help="how long each of the two runs lasts (default: %(default)s)",
    )
    parser.add_argument(
        "--expire", type=_positive_seconds, default=defaults.expire, metavar="SECONDS",
        help="how long a cached value stays fresh (default: %(default)s)",
    )
    parser.add_argument(
        "--backend-ms", type=_milliseconds, default=defaults.backend_ms, metavar="MS",
        help="how long one backend call takes, in milliseconds (default: %(default)s)",
    )
    parser.add_argument(
        "--pure", action="store_true",
        help="use the pure-Python implementation even when the compiled core is installed "
        "(default: the one `import dogpile` picks)",
    )
    return parser


def dogpile_class_for(pure: bool) -> Tuple[Any, str]:
    """The Dogpile class to demonstrate, and the name of its implementation."""
    if pure:
        # ``python -m dogpile`` imports the package, and so picks an
        # implementation, before this module sees its arguments; setting
        # DOGPILE_NO_EXTENSIONS now changes nothing.  Re-executing the
        # interpreter with it set would, but costs a second start-up, drops
        # interpreter options (-I, -X, -W) unless rebuilt by hand, and on
        # Windows os.execv starts a new process whose exit status the caller
        # never sees.  The twin is the module the package's selector falls
        # back to, with the same classes and behaviour (the test suite
        # imports it the same way), so take it directly.
        from . import _core_py

        return _core_py.Dogpile, "python"
    return Dogpile, IMPLEMENTATION


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demonstration; return the process exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    config = Config(
        threads=args.threads,
        duration=args.duration,
        expire=args.expire,
        backend_ms=args.backend_ms,
        pure=args.pure,
    )
    dogpile_class, implementation = dogpile_class_for(config.pure)

    try:
        print(header(config, implementation), flush=True)
        results = [run_unprotected(config), run_dogpile(config, dogpile_class)]
        print()
        print(format_table(results))
        print()
        print(legend(config), flush=True)
    except DemoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read the output has gone (``| head -1``).  Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
