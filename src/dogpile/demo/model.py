"""What the demonstration measures: its settings, the cached record, one
run's result and the arithmetic over it, and which implementation it runs.

No threads, tasks, processes or I/O here: the loads (``threads``,
``tasks``, ``processes``) and the output (``report``) share these.
"""

import math
from dataclasses import dataclass
from types import ModuleType
from typing import List, Optional, Sequence, Tuple

from .. import IMPLEMENTATION, _load_core

# Each reader pauses this long between reads, as a request handler would
# between cache lookups.  Readers spinning without a pause would measure the
# GIL's switch interval rather than the cache; and at 10 ms a reader makes
# some 25 reads per 0.25 s expiry, so one backend wait per reader per expiry
# (a stampede) shows in p99, not only in max.
THINK_SECONDS = 0.01

# A reader is never inside a read for more than one backend call, so the
# readers are done this long after the run ends unless something is broken.
JOIN_GRACE_SECONDS = 5.0

# The two runs, in order: every caller for itself, then through a Dogpile.
RUNS = ("unprotected", "dogpile")

# The one cache key every reader reads.
KEY = "value"


class DemoError(Exception):
    """The demonstration could not run to the end (reported in one line)."""


class DemoSetupError(Exception):
    """A --redis URL that cannot be used (reported in one line, status 2)."""


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


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


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


def core(pure: bool) -> Tuple[ModuleType, str]:
    """The core module to demonstrate and its implementation's name: the
    one ``import dogpile`` chose, or the Python twin for ``--pure``.

    ``python -m dogpile`` imports the package, and so chooses, before the
    demo sees its arguments: setting DOGPILE_NO_EXTENSIONS now would change
    nothing.  Re-executing the interpreter with it set would, but costs a
    second start-up, drops interpreter options (-I, -X, -W) unless rebuilt
    by hand, and on Windows os.execv starts a new process whose exit status
    the caller never sees.  So the demo asks the package's own loader
    (``dogpile._load_core``) for the twin by name, as the tests do."""
    implementation = "python" if pure else IMPLEMENTATION
    return _load_core(implementation), implementation
