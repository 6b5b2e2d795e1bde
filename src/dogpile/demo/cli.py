"""``python -m dogpile``: the command line.  Parses and checks the options,
picks the load (threads, ``--asyncio`` tasks, or ``--redis`` processes),
prints the report, and turns every failure into one line and an exit status
(2 for a bad option or an unusable server, 1 for a failed run).
"""

import argparse
import math
import os
import sys
import uuid
from typing import NoReturn, Optional, Sequence

from .model import THINK_SECONDS, Config, DemoError, DemoSetupError, core
from .processes import MAX_PROCESSES, run_processes
from .redis_store import check_server, delete_run_keys
from .report import format_table, header, legend
from .threads import run_threads

PROG = "python -m dogpile"

# Enough to show a stampede; more only risks running out of threads.
MAX_THREADS = 1000


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
    implementation = core(config.pure)[1]
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
            from .tasks import run_tasks

            results = run_tasks(config)
        elif config.redis is None:
            results = run_threads(config)
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
    except BrokenPipeError:
        # Whoever read the output has gone (``| head -1``).  Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        # (Ahead of ``except Exception``, which would re-raise it.)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
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
    return 0
