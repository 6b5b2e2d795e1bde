"""The task load (``--asyncio``): ``config.threads`` reader tasks of one
event loop read one cached value in front of a slow backend (``await
asyncio.sleep``), unprotected and through one ``AsyncDogpile``.
"""

import asyncio
import time
from typing import Any, Awaitable, Callable, Dict, List, Tuple

from .. import NeedRegenerationException
from .model import (
    JOIN_GRACE_SECONDS,
    KEY,
    RUNS,
    THINK_SECONDS,
    Config,
    DemoError,
    Record,
    RunResult,
    core,
    summarize,
)


class AsyncBackend:
    """The slow thing behind the cache: every call takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self.calls = 0

    async def fetch(self) -> int:
        self.calls += 1
        answer = self.calls
        await asyncio.sleep(self._delay)
        return answer


def unprotected_reader(
    cache: Dict[str, Record], backend: AsyncBackend, expire: float
) -> Callable[[], Awaitable[Record]]:
    """Every task that finds the value missing or expired refreshes it."""

    async def read() -> Record:
        record = cache.get(KEY)
        if record is None or time.time() - record.created > expire:
            record = Record(await backend.fetch(), time.time())
            cache[KEY] = record
        return record

    return read


def dogpile_reader(
    cache: Dict[str, Record], backend: AsyncBackend, expire: float, dogpile_class: Any
) -> Callable[[], Awaitable[Record]]:
    """The same cache behind one AsyncDogpile: one task refreshes an
    expired value while the others get the previous one."""
    lock = dogpile_class(expire)

    def value_and_created() -> Tuple[Record, float]:
        record = cache.get(KEY)
        if record is None:
            raise NeedRegenerationException()
        return record, record.created

    async def create() -> Tuple[Record, float]:
        record = Record(await backend.fetch(), time.time())
        cache[KEY] = record
        return record, record.created

    async def read() -> Record:
        async with lock.acquire(create, value_and_created_fn=value_and_created) as record:
            return record  # type: ignore[no-any-return]

    return read


async def read_for(
    name: str, read: Callable[[], Awaitable[Record]], config: Config
) -> Tuple[List[float], int, float]:
    """``config.threads`` reader tasks calling ``read()`` for
    ``config.duration`` seconds: every read's latency, the stale reads, and
    the seconds until every task was done."""
    latencies: List[float] = []
    stale = [0]
    end = time.perf_counter() + config.duration

    async def reader() -> None:
        while True:
            started = time.perf_counter()
            if started >= end:
                return
            started_wall = time.time()
            record = await read()
            latencies.append(time.perf_counter() - started)
            if started_wall - record.created > config.expire:
                stale[0] += 1
            await asyncio.sleep(THINK_SECONDS)

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(reader()) for _ in range(config.threads)]
    grace = config.duration + JOIN_GRACE_SECONDS + 2 * config.backend_ms / 1000.0
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    elapsed = time.perf_counter() - start
    for task in done:
        task.result()  # a reader's exception, raised here
    if pending:
        raise DemoError(
            f"{len(pending)} of {config.threads} reader tasks of the {name} run were still "
            f"running {elapsed - config.duration:.1f} s after the run should have ended"
        )
    return latencies, stale[0], elapsed


async def _run_both(config: Config, dogpile_class: Any) -> List[RunResult]:
    results = []
    for name in RUNS:
        backend = AsyncBackend(config.backend_ms / 1000.0)
        if name == "unprotected":
            read = unprotected_reader({}, backend, config.expire)
        else:
            read = dogpile_reader({}, backend, config.expire, dogpile_class)
        latencies, stale, elapsed = await read_for(name, read, config)
        results.append(summarize(name, latencies, stale, backend.calls, elapsed, config))
    return results


def async_dogpile_class(pure: bool) -> Any:
    """AsyncDogpile over the core to demonstrate (see model.core): over
    the one ``import dogpile`` chose, the public class itself."""
    from .. import aio

    return aio._build(core(pure)[0]).AsyncDogpile


def run_tasks(config: Config) -> List[RunResult]:
    """Run the unprotected and the AsyncDogpile load, ``config.threads``
    tasks each, in a new event loop; return their rows."""
    return asyncio.run(_run_both(config, async_dogpile_class(config.pure)))
