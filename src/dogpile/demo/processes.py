"""The process load (``--redis URL --processes N``): the thread load in N
processes at once, as the workers of a web site would run it, sharing the
cached value, the backend call count and the Dogpile's RedisMutex through
Redis; the parent starts each run in every process together and adds up
what their readers saw.
"""

import queue
import signal
import time
from typing import Any, List, Tuple

from .model import JOIN_GRACE_SECONDS, RUNS, Config, DemoError, RunResult, summarize
from .redis_store import RedisBackend, RedisCache, redis_client
from .threads import dogpile_class, dogpile_reader, read_for, unprotected_reader

# Each process is a fresh interpreter (importing dogpile and redis), and
# a loaded machine may take a while to start many; this bounds the wait.
MAX_PROCESSES = 64
START_DEADLINE_SECONDS = 60.0


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
        from ..mutexes import RedisMutex

        client = redis_client(config.redis)  # type: ignore[arg-type]
        for name, start in zip(RUNS, go):
            keys = f"{prefix}{name}:"
            backend = RedisBackend(client, keys + "calls", config.backend_ms / 1000.0)
            cache = RedisCache(client, keys)
            if name == "unprotected":
                read = unprotected_reader(cache, backend, config.expire)  # type: ignore[arg-type]
            else:
                mutex = RedisMutex(client, keys + "lock")
                read = dogpile_reader(
                    cache,  # type: ignore[arg-type]
                    backend,  # type: ignore[arg-type]
                    config.expire,
                    dogpile_class(config.pure),
                    mutex,
                )

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
