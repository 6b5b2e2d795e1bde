"""``python -m dogpile``: a cache stampede, with and without a Dogpile.

Many threads read one cached value that sits in front of a slow backend and
expires every fraction of a second.  The same load runs twice, for the same
time: once unprotected (every thread that finds the value expired calls the
backend itself) and once through one shared ``Dogpile`` (one thread calls
the backend, the others serve the previous value meanwhile).  One table
compares the two: backend calls, backend calls per expiry, stale values
served, and what the callers waited.

With ``--redis URL --processes N`` the same load runs in N processes of
``--threads`` threads each, as the workers of a web site would: the cached
value and the count of backend calls live in Redis, and the Dogpile of
each process takes one shared ``dogpile.mutexes.RedisMutex``, so one caller
among all the processes refreshes an expired value.
"""

import argparse
import math
import os
import platform
import queue
import signal
import sys
import sysconfig
import threading
import time
import uuid
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

# Each process is a fresh interpreter (importing dogpile and redis), and
# a loaded machine may take a while to start many; this bounds the wait.
MAX_PROCESSES = 64
START_DEADLINE_SECONDS = 60.0

# Keys of a --redis run live under a prefix of their own, are deleted at the
# end, and expire by themselves if the demo is killed before that.
REDIS_KEY_TTL_SECONDS = 3600


class DemoError(Exception):
    """The demonstration could not run to the end (reported in one line)."""


@dataclass(frozen=True)
class Config:
    threads: int = 16
    duration: float = 2.0  # seconds per run
    expire: float = 0.25  # seconds a cached value stays fresh
    backend_ms: float = 50.0  # milliseconds per backend call
    pure: bool = False
    redis: Optional[str] = None  # URL: run across processes, sharing through Redis
    processes: int = 1  # with redis: reader processes, each of ``threads`` threads
    asyncio: bool = False  # readers are tasks of one event loop (AsyncDogpile)


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


class RedisBackend:
    """The same slow backend, its calls counted in Redis so that every
    process's calls add up in one place."""

    def __init__(self, client: Any, key: str, delay: float) -> None:
        self._client = client
        self._key = key
        self._delay = delay

    def fetch(self) -> int:
        pipe = self._client.pipeline()
        pipe.incr(self._key)
        pipe.expire(self._key, REDIS_KEY_TTL_SECONDS)
        answer = int(pipe.execute()[0])
        time.sleep(self._delay)
        return answer

    @property
    def calls(self) -> int:
        return int(self._client.get(self._key) or 0)


class RedisCache:
    """The cache as ``dict``-like ``get``/``[]=`` of Records over Redis keys,
    so the readers below work unchanged on either."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def get(self, key: str) -> Optional[Record]:
        raw = self._client.get(self._prefix + key)
        if raw is None:
            return None
        data, created = raw.split()
        return Record(int(data), float(created))

    def __setitem__(self, key: str, record: Record) -> None:
        self._client.set(
            self._prefix + key, f"{record.data} {record.created!r}", ex=REDIS_KEY_TTL_SECONDS
        )


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
    cache: Dict[str, Record], backend: Backend, expire: float, dogpile_class: Any, mutex: Any = None
) -> Callable[[], Record]:
    """The same cache behind one shared Dogpile: one caller refreshes an
    expired value while the others get the previous one.  ``mutex`` (a
    RedisMutex) extends "one caller" to every process that shares it."""
    lock = dogpile_class(expire) if mutex is None else dogpile_class(expire, lock=mutex)

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
    latencies, stale, elapsed = read_for(name, read, config)
    return summarize(name, latencies, stale, backend.calls, elapsed, config)


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


def summarize(
    name: str,
    latencies: List[float],
    stale: int,
    backend_calls: int,
    elapsed: float,
    config: Config,
) -> RunResult:
    latencies = sorted(latencies)
    return RunResult(
        name=name,
        reads=len(latencies),
        backend_calls=backend_calls,
        elapsed=elapsed,
        expire=config.expire,
        stale=stale,
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


# -- across processes, through Redis ----------------------------------------------


class DemoSetupError(Exception):
    """A --redis URL that cannot be used (reported in one line, status 2)."""


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise DemoSetupError(
            '--redis needs the redis client: pip install "dogpile[redis]"'
        ) from None
    return redis


def redis_client(url: str, **options: Any) -> Any:
    """A redis-py client for ``url``, or DemoSetupError saying why not."""
    redis = _import_redis()
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:  # not a redis://, rediss:// or unix:// URL
        raise DemoSetupError(f"--redis {_without_password(url)!r}: {exc}") from None


def _without_password(url: str) -> str:
    """``url`` fit to print: any password replaced by ``***``."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparsable URL>"


def check_server(url: str) -> str:
    """PING the server at ``url`` once, without the client's retries (a
    wrong address should fail in a moment); return its address."""
    _import_redis()
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry

    from .mutexes import _server_address

    client = redis_client(
        url, socket_connect_timeout=5, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    address = _server_address(client)
    try:
        client.ping()
    except RedisError as exc:
        raise DemoSetupError(f"--redis: cannot use the Redis server at {address}: {exc}") from None
    finally:
        client.close()
    return address


RUNS = ("unprotected", "dogpile")


def _process_main(config: Config, prefix: str, index: int, messages: Any, go: Any) -> None:
    """One reader process of a --redis run.  For each run in turn:
    ``config.threads`` readers, through this process's own Dogpile (or
    none, unprotected), with the cache, the backend's call count and the
    mutex in Redis under ``prefix + run name``.  Each run starts when the
    parent sets its event in ``go``, so all processes read at once."""
    # Ctrl-C reaches the whole process group; the parent handles it and
    # stops the children, which should not print tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from .mutexes import RedisMutex

        client = redis_client(config.redis)  # type: ignore[arg-type]
        for name, start in zip(RUNS, go):
            keys = f"{prefix}{name}:"
            backend = RedisBackend(client, keys + "calls", config.backend_ms / 1000.0)
            cache = RedisCache(client, keys)
            if name == "unprotected":
                read = unprotected_reader(cache, backend, config.expire)  # type: ignore[arg-type]
            else:
                dogpile_class, _ = dogpile_class_for(config.pure)
                mutex = RedisMutex(client, keys + "lock")
                read = dogpile_reader(cache, backend, config.expire, dogpile_class, mutex)  # type: ignore[arg-type]

            def ready(name: str = name, start: Any = start) -> None:
                messages.put(("ready", name, index, None))
                if not start.wait(START_DEADLINE_SECONDS):
                    raise DemoError(f"the {name} run never started")

            latencies, stale, elapsed = read_for(name, read, config, ready)
            messages.put(("done", name, index, (latencies, stale, elapsed)))
    except BaseException as exc:  # reported by the parent, in one line
        messages.put(("error", "", index, f"{type(exc).__name__}: {exc}"))


def run_processes(config: Config, prefix: str) -> List[RunResult]:
    """Run each load in ``config.processes`` processes at once (the same
    processes for both) and combine what their readers saw."""
    import multiprocessing

    # A fresh interpreter per process on every platform: forking this one
    # would copy whatever its other threads were holding.
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    go = [ctx.Event() for _ in RUNS]
    processes = [
        ctx.Process(
            target=_process_main,
            args=(config, prefix, index, messages, go),
            name=f"dogpile-demo-{index}",
            daemon=True,
        )
        for index in range(config.processes)
    ]

    # A fast process may report ready for the next run before a slow one
    # reports done with this one: messages for later are kept until then.
    early: List[Tuple[str, str, int, Any]] = []

    def receive(kind: str, name: str, deadline: float) -> List[Any]:
        got: List[Any] = [None] * config.processes
        waiting = config.processes
        while waiting:
            kept = [m for m in early if m[:2] == (kind, name)]
            try:
                if kept:
                    message = kept[0]
                    early.remove(message)
                else:
                    message = messages.get(timeout=0.1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"{waiting} of {config.processes} processes did not report "
                        f"{kind!r} for the {name} run in time"
                    ) from None
                dead = [p.name for p in processes if p.exitcode is not None]
                if dead:
                    raise DemoError(f"process {dead[0]} ended unexpectedly") from None
                continue
            what, run, index, payload = message
            if what == "error":
                raise DemoError(f"process {index} failed in the {name} run: {payload}")
            if (what, run) != (kind, name):
                early.append(message)
                continue
            got[index] = payload
            waiting -= 1
        return got

    results = []
    try:
        for process in processes:
            process.start()
        for name, start in zip(RUNS, go):
            receive("ready", name, time.monotonic() + START_DEADLINE_SECONDS)
            start.set()
            done_by = time.monotonic() + config.duration + JOIN_GRACE_SECONDS
            done_by += 2 * config.backend_ms / 1000.0
            reports = receive("done", name, done_by)
            client = redis_client(config.redis)  # type: ignore[arg-type]
            try:
                calls = RedisBackend(client, f"{prefix}{name}:calls", 0).calls
            finally:
                client.close()
            results.append(
                summarize(
                    name,
                    [lat for report in reports for lat in report[0]],
                    sum(report[1] for report in reports),
                    calls,
                    # Side by side: the run lasted as long as its longest process.
                    max(report[2] for report in reports),
                    config,
                )
            )
        for process in processes:
            process.join(JOIN_GRACE_SECONDS)
    finally:
        for event in go:
            event.set()
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(JOIN_GRACE_SECONDS)
    return results


def delete_run_keys(url: str, prefix: str) -> None:
    client = redis_client(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


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


def header(config: Config, implementation: str, server: str = "") -> str:
    if config.pure and IMPLEMENTATION != "python":
        implementation += f" (--pure; the default here is {IMPLEMENTATION})"
    python = f"{platform.python_implementation()} {platform.python_version()}"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        python += " free-threaded"
    if config.asyncio:
        readers = f"{config.threads} asyncio tasks"
    elif config.redis is None:
        readers = f"{config.threads} threads"
    else:
        readers = f"{config.processes} processes of {config.threads} threads"
    text = (
        f"dogpile {__version__} stampede demo: implementation {implementation}, "
        f"{python}, {readers}, 2 runs of {config.duration:g} s, "
        f"value expires every {config.expire:g} s, backend call {config.backend_ms:g} ms"
    )
    if config.redis is not None:
        text += (
            f"\nshared through Redis at {server}: the cached value, the backend call "
            "count and the dogpile run's RedisMutex"
        )
    return text


def legend(config: Config) -> str:
    return (
        f"calls/expiry: backend calls per {config.expire:g} s of run time "
        "(1 = one refresh per expiry; a stampede approaches the thread count).\n"
        "stale served: reads answered with a value already expired when the read "
        "began, while another caller refreshed it.\n"
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


def _process_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_PROCESSES} processes, got {value}")
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
        help=f"number of reader threads (in each process, with --processes), 1 to {MAX_THREADS} "
        "(default: %(default)s)",
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
        "--redis", metavar="URL",
        help="run across processes, sharing the cached value, the backend call count and "
        "the dogpile run's lock (a RedisMutex) through this Redis server, e.g. "
        "redis://127.0.0.1:6379/0; the demo's keys get a prefix of their own and are "
        "deleted at the end (default: threads in one process, no server)",
    )
    parser.add_argument(
        "--processes", type=_process_count, default=defaults.processes, metavar="N",
        help=f"with --redis: reader processes, 1 to {MAX_PROCESSES}, each running "
        "--threads threads (default: %(default)s)",
    )
    parser.add_argument(
        "--asyncio", action="store_true",
        help="run the readers as tasks of one asyncio event loop, through "
        "dogpile.aio.AsyncDogpile (--threads then counts tasks; not with --redis)",
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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.processes != 1 and args.redis is None:
            parser.error("--processes needs --redis: processes share the value through Redis")
        if args.asyncio and args.redis is not None:
            parser.error("--asyncio runs one process: it does not combine with --redis")
    except SystemExit as exc:  # --help (0) or a bad option (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    config = Config(
        threads=args.threads,
        duration=args.duration,
        expire=args.expire,
        backend_ms=args.backend_ms,
        pure=args.pure,
        redis=args.redis,
        processes=args.processes,
        asyncio=args.asyncio,
    )
    dogpile_class, implementation = dogpile_class_for(config.pure)
    server = ""
    if config.redis is not None:
        try:
            server = check_server(config.redis)
        except DemoSetupError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2

    prefix = f"dogpile-demo:{uuid.uuid4().hex}:"
    try:
        print(header(config, implementation, server), flush=True)
        if config.asyncio:
            from ._demo_aio import run_asyncio

            results = run_asyncio(config)
        elif config.redis is None:
            results = [run_unprotected(config), run_dogpile(config, dogpile_class)]
        else:
            try:
                results = run_processes(config, prefix)
            finally:
                delete_run_keys(config.redis, prefix)
        print()
        print(format_table(results))
        print()
        print(legend(config), flush=True)
    except DemoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # The server went away in the middle of a --redis run, say.
        if config.redis is None or type(exc).__module__.partition(".")[0] != "redis":
            raise
        print(f"{PROG}: error: Redis at {server}: {exc}", file=sys.stderr)
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
