"""The asyncio cases (dogpile.aio), for both implementations in one run.

1. Single-task cases, timed like harness.measure (statement compiled into a
   loop, chunks interleaved round-robin, medians), but inside one event
   loop: the fresh ``async with d.acquire(creator)`` and its variants,
   against an uncontended ``async with lock:`` on an asyncio.Lock made
   beforehand (the target) and ``async with asyncio.Lock():`` (a new lock
   each time, for information); and the stale fall-through, timed while
   another task sits inside its creator.
2. The stampede: 1,000 tasks released at once on an expired value, and on a
   missing one, with a 50 ms creator (``await asyncio.sleep``): creator
   calls, whether every non-creating task finished while the creator still
   ran, and the tasks' latencies.  The same 1,000 tasks through aiocache's
   ``cached_stampede`` (its stampede protection) when aiocache is installed.

``python benchmarks/aio_cases.py [--quick]`` prints this part's table;
``compare.py`` runs it as one part of the whole comparison.
"""

import argparse
import asyncio
import contextlib
import importlib
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Mapping, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from cases import FRESH_SECONDS, LONG_AGO, Case  # noqa: E402
from harness import DEADLINE, CallCounter, compile_loop, percentile  # noqa: E402

from dogpile import aio  # noqa: E402

IMPLEMENTATIONS = {
    "cython": "dogpile._core",
    "python": "dogpile._core_py",
}

TASKS = 1000
BACKEND = 0.05  # seconds per creator call in the stampede


# -- timing inside a loop ------------------------------------------------------------

def compile_async_loop(
    stmt: str, namespace: Mapping[str, Any]
) -> Callable[[int], Awaitable[float]]:
    """harness.compile_loop for statements with ``async with`` and
    ``await``: ``await loop(n)`` runs ``stmt`` n times, returns seconds."""
    return compile_loop(stmt, namespace, kind="async ")  # type: ignore[no-any-return]


async def calibrate(loop: Callable[[int], Awaitable[float]], chunk_seconds: float) -> int:
    await loop(1)
    n = 1
    while True:
        elapsed = min(await loop(n), await loop(n))
        if elapsed >= chunk_seconds / 5 or n >= 1 << 30:
            break
        n *= 10 if elapsed < chunk_seconds / 100 else 2
    return max(1, round(n * chunk_seconds / max(elapsed, 1e-9)))


async def measure(
    loops: Mapping[str, Callable[[int], Awaitable[float]]], repeats: int, chunk_seconds: float
) -> Dict[str, Dict[str, float]]:
    """harness.measure, awaited: every loop interleaved, medians."""
    counts = {name: await calibrate(loop, chunk_seconds) for name, loop in loops.items()}
    samples: Dict[str, List[float]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            samples[name].append(await loop(counts[name]) / counts[name] * 1e9)
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


# -- the single-task cases -------------------------------------------------------------

LOCK = "async with lock:\n    pass"
NEW_LOCK = "async with Lock():\n    pass"
ACQUIRE = "async with d.acquire(creator) as v:\n    pass"
ACQUIRE_VALUE_FN = "async with d.acquire(creator, value_fn) as v:\n    pass"
ACQUIRE_VALUE_AND_CREATED_FN = (
    "async with d.acquire(creator, value_and_created_fn=value_and_created) as v:\n    pass"
)
ASYNC_LOCK = (
    f"async with AsyncLock(mutex, creator, value_and_created, {FRESH_SECONDS!r}) as v:\n    pass"
)
SYNC_ACQUIRE = "with d.acquire(creator) as v:\n    pass"


def _no_calls(creator: CallCounter) -> Callable[[], None]:
    def check() -> None:
        assert creator.calls == 0, f"a fresh case called its creator {creator.calls} times"

    return check


@contextlib.asynccontextmanager
async def acquire_fresh(classes: Any, core: ModuleType) -> AsyncIterator[Case]:
    d = classes.AsyncDogpile(FRESH_SECONDS)
    async with d.acquire(lambda: "value"):
        pass
    creator = CallCounter("new")
    yield Case(ACQUIRE, {"d": d, "creator": creator}, _no_calls(creator))


@contextlib.asynccontextmanager
async def acquire_fresh_value_fn(classes: Any, core: ModuleType) -> AsyncIterator[Case]:
    cache = {"key": "value"}

    def value_fn() -> Any:
        return cache["key"]

    d = classes.AsyncDogpile(FRESH_SECONDS)
    async with d.acquire(lambda: cache["key"], value_fn):
        pass
    creator = CallCounter("new")
    yield Case(
        ACQUIRE_VALUE_FN, {"d": d, "creator": creator, "value_fn": value_fn}, _no_calls(creator)
    )


@contextlib.asynccontextmanager
async def acquire_fresh_value_and_created_fn(classes: Any, core: ModuleType) -> AsyncIterator[Case]:
    store = {"key": ("value", time.time())}

    def value_and_created() -> Any:
        return store["key"]

    d = classes.AsyncDogpile(FRESH_SECONDS)
    creator = CallCounter(("new", time.time()))
    ns = {"d": d, "creator": creator, "value_and_created": value_and_created}
    yield Case(ACQUIRE_VALUE_AND_CREATED_FN, ns, _no_calls(creator))


@contextlib.asynccontextmanager
async def async_lock_fresh(classes: Any, core: ModuleType) -> AsyncIterator[Case]:
    store = {"key": ("value", time.time())}

    def value_and_created() -> Any:
        return store["key"]

    creator = CallCounter(("new", time.time()))
    ns = {
        "AsyncLock": classes.AsyncLock,
        "mutex": asyncio.Lock(),
        "creator": creator,
        "value_and_created": value_and_created,
    }
    yield Case(ASYNC_LOCK, ns, _no_calls(creator))


@contextlib.asynccontextmanager
async def acquire_stale(classes: Any, core: ModuleType) -> AsyncIterator[Case]:
    """An expired value whose creation lock another task holds (it sits in
    its creator): every timed call falls through to the stale value."""
    d = classes.AsyncDogpile(FRESH_SECONDS)
    async with d.acquire(lambda: "stale"):
        pass
    d.createdtime = time.time() - LONG_AGO
    entered, release = asyncio.Event(), asyncio.Event()

    async def held_creator() -> str:
        entered.set()
        await release.wait()
        return "new"

    async def hold() -> None:
        async with d.acquire(held_creator):
            pass

    holder = asyncio.ensure_future(hold())
    await asyncio.wait_for(entered.wait(), DEADLINE)
    creator = CallCounter("new")

    def check() -> None:
        assert creator.calls == 0, f"the stale case called its creator {creator.calls} times"
        assert d.is_expired, "the value became fresh while the stale case was timed"

    try:
        yield Case(ACQUIRE, {"d": d, "creator": creator}, check)
    finally:
        release.set()
        await asyncio.wait_for(holder, DEADLINE)


@contextlib.asynccontextmanager
async def sync_acquire_fresh(classes: Any, core: ModuleType) -> AsyncIterator[Case]:
    """The threading Dogpile's fresh hit, for scale."""
    d = core.Dogpile(FRESH_SECONDS)
    with d.acquire(lambda: "value"):
        pass
    creator = CallCounter("new")
    yield Case(SYNC_ACQUIRE, {"d": d, "creator": creator}, _no_calls(creator))


CASES = {
    "acquire": (acquire_fresh, "asyncio fresh acquire(creator)"),
    "acquire_value_fn": (acquire_fresh_value_fn, "asyncio fresh acquire(creator, value_fn)"),
    "acquire_value_and_created_fn": (
        acquire_fresh_value_and_created_fn,
        "asyncio fresh acquire(creator, value_and_created_fn=)",
    ),
    "async_lock": (async_lock_fresh, "asyncio fresh AsyncLock"),
    "acquire_stale": (acquire_stale, "asyncio stale fall-through acquire"),
    "sync_acquire": (sync_acquire_fresh, "threading Dogpile fresh acquire, same loop"),
}


async def run_micro(repeats: int, chunk_seconds: float) -> Dict[str, Dict[str, float]]:
    async with contextlib.AsyncExitStack() as stack:
        made = {
            "asyncio_lock": Case(LOCK, {"lock": asyncio.Lock()}),
            "asyncio_lock_new": Case(NEW_LOCK, {"Lock": asyncio.Lock}),
        }
        for impl, module in IMPLEMENTATIONS.items():
            core = importlib.import_module(module)
            classes = aio._build(core)
            for name, (factory, _) in CASES.items():
                made[f"{impl}:{name}"] = await stack.enter_async_context(factory(classes, core))
        loops = {name: compile_async_loop(c.stmt, c.namespace) for name, c in made.items()}
        results = await measure(loops, repeats, chunk_seconds)
        for c in made.values():
            c.check()
    return results


# -- the stampede ----------------------------------------------------------------------


async def stampede(classes: Any, expired: bool) -> Dict[str, Any]:
    """TASKS tasks released in one loop iteration on an expired (or a
    missing) value; the creator takes BACKEND seconds."""
    d = classes.AsyncDogpile(FRESH_SECONDS)
    if expired:
        async with d.acquire(lambda: "old"):
            pass
        d.createdtime = time.time() - LONG_AGO
    calls = 0
    creation_end = [0.0]

    async def creator() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(BACKEND)
        creation_end[0] = time.perf_counter()
        return "new"

    go = asyncio.Event()
    reads: List[Any] = []

    async def reader() -> None:
        await go.wait()
        started = time.perf_counter()
        async with d.acquire(creator) as value:
            pass
        ended = time.perf_counter()
        reads.append((ended - started, ended, value))

    tasks = [asyncio.ensure_future(reader()) for _ in range(TASKS)]
    await asyncio.sleep(0)  # every task waits on ``go``
    began = time.perf_counter()
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    elapsed = time.perf_counter() - began
    return _summary(reads, calls, creation_end[0], elapsed, stale="old" if expired else None)


def _summary(
    reads: List[Any], calls: int, creation_end: float, elapsed: float, stale: Any
) -> Dict[str, Any]:
    others = sorted(lat for lat, _, value in reads if value == stale) if stale is not None else []
    during = sum(1 for _, end, value in reads if value == stale and end < creation_end)
    latencies = sorted(lat for lat, _, _ in reads)
    return {
        "tasks": len(reads),
        "creator_calls": calls,
        "stale_reads": len(others),
        "stale_done_during_creation": during,
        "stale_max_ns": (others[-1] * 1e9) if others else None,
        "p50_ns": percentile(latencies, 50) * 1e9,
        "max_ns": latencies[-1] * 1e9,
        "elapsed_ns": elapsed * 1e9,
    }


async def aiocache_stampede() -> Optional[Dict[str, Any]]:
    """The same TASKS tasks through aiocache's cached_stampede, on an
    empty cache (an expired entry is a missing one there)."""
    try:
        import aiocache
    except ImportError:
        return None
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(BACKEND)
        return "new"

    cached = aiocache.cached_stampede(lease=2, ttl=FRESH_SECONDS, noself=True)(load)
    go = asyncio.Event()
    reads: List[Any] = []

    async def reader() -> None:
        await go.wait()
        started = time.perf_counter()
        value = await cached()
        ended = time.perf_counter()
        reads.append((ended - started, ended, value))

    tasks = [asyncio.ensure_future(reader()) for _ in range(TASKS)]
    await asyncio.sleep(0)
    began = time.perf_counter()
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    elapsed = time.perf_counter() - began
    result = _summary(reads, calls, 0.0, elapsed, stale=None)
    result["version"] = aiocache.__version__
    # Its fresh hit, for information.
    loop = compile_async_loop("await cached()", {"cached": cached})
    n = await calibrate(loop, 0.02)
    result["fresh_ns"] = statistics.median([await loop(n) / n * 1e9 for _ in range(5)])
    return result


async def run_all(repeats: int, chunk_seconds: float) -> Dict[str, Any]:
    micro = await run_micro(repeats, chunk_seconds)
    herd: Dict[str, Dict[str, Any]] = {}
    for impl, module in IMPLEMENTATIONS.items():
        classes = aio._build(importlib.import_module(module))
        herd[impl] = {
            "expired": await stampede(classes, expired=True),
            "missing": await stampede(classes, expired=False),
        }
    return {"micro": micro, "stampede": herd, "aiocache": await aiocache_stampede()}


def run(repeats: int, chunk_seconds: float) -> Dict[str, Any]:
    """Every asyncio case, in a new event loop."""
    return asyncio.run(run_all(repeats, chunk_seconds))


# -- the table -----------------------------------------------------------------------------


def _ns(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f} ms"
    if value >= 1e4:
        return f"{value / 1e3:.1f} us"
    if value >= 1e3:
        return f"{value / 1e3:.2f} us"
    return f"{value:.0f} ns"


def table_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Rows for compare.py's table (its Row fields)."""
    rows: List[Dict[str, Any]] = []
    t = {name: r["median_ns"] for name, r in result["micro"].items()}
    lock, new_lock = t["asyncio_lock"], t["asyncio_lock_new"]

    def row(
        case: str, ours: float, ref_name: str, ref: float, bound: Optional[float] = None
    ) -> None:
        ratio = ours / ref
        rows.append(
            {
                "case": case,
                "ours": _ns(ours),
                "reference": f"{_ns(ref)} {ref_name}",
                "ratio": ratio,
                "target": "" if bound is None else f"<= {bound:.2f}x",
                "passed": None if bound is None else ratio <= bound,
            }
        )

    for impl in IMPLEMENTATIONS:
        c = impl == "cython"
        row(
            f"asyncio fresh acquire(creator) [{impl}]",
            t[f"{impl}:acquire"],
            "async with lock",
            lock,
            1.0 if c else None,
        )
        row(
            f"asyncio fresh acquire(creator) [{impl}]",
            t[f"{impl}:acquire"],
            "async with asyncio.Lock()",
            new_lock,
        )
    for name in ("acquire_value_fn", "acquire_value_and_created_fn", "async_lock", "sync_acquire"):
        for impl in IMPLEMENTATIONS:
            row(f"{CASES[name][1]} [{impl}]", t[f"{impl}:{name}"], "async with lock", lock)
    for impl in IMPLEMENTATIONS:
        # No target: what issue 7 asks of the stale path is that no task
        # waits, which the stampede rows check.
        row(
            f"asyncio stale fall-through [{impl}]",
            t[f"{impl}:acquire_stale"],
            "fresh acquire",
            t[f"{impl}:acquire"],
        )
    for impl, herd in result["stampede"].items():
        expired, missing = herd["expired"], herd["missing"]
        non_creators = expired["tasks"] - 1
        rows.append(
            {
                "case": f"asyncio stampede, expired: creator calls [{impl}]",
                "ours": f"{expired['creator_calls']} calls",
                "reference": f"{TASKS} tasks",
                "ratio": expired["creator_calls"],
                "target": "exactly 1",
                "passed": expired["creator_calls"] == 1,
                "unit": "",
            }
        )
        rows.append(
            {
                "case": f"asyncio stampede, expired: stale before the creator ends [{impl}]",
                "ours": f"{expired['stale_done_during_creation']} tasks",
                "reference": f"{non_creators} non-creators",
                "ratio": expired["stale_done_during_creation"] / max(1, non_creators),
                "target": "all",
                "passed": expired["stale_done_during_creation"] == non_creators,
                "unit": "",
            }
        )
        if expired["stale_max_ns"] is not None:
            row(
                f"asyncio stampede, expired: slowest stale read [{impl}]",
                expired["stale_max_ns"],
                "creator",
                BACKEND * 1e9,
            )
        rows.append(
            {
                "case": f"asyncio stampede, missing: creator calls [{impl}]",
                "ours": f"{missing['creator_calls']} calls",
                "reference": f"{TASKS} tasks",
                "ratio": missing["creator_calls"],
                "target": "exactly 1",
                "passed": missing["creator_calls"] == 1,
                "unit": "",
            }
        )
        row(
            f"asyncio stampede, missing: all {TASKS} served [{impl}]",
            missing["elapsed_ns"],
            "creator",
            BACKEND * 1e9,
        )
    theirs = result["aiocache"]
    if theirs is not None:
        name = f"aiocache {theirs['version']}"
        rows.append(
            {
                "case": f"{name} cached_stampede, expired: creator calls",
                "ours": f"{theirs['creator_calls']} calls",
                "reference": f"{TASKS} tasks",
                "ratio": theirs["creator_calls"],
                "target": "",
                "passed": None,
                "unit": "",
            }
        )
        row(
            f"{name} cached_stampede, expired: p50 read", theirs["p50_ns"], "creator", BACKEND * 1e9
        )
        row(f"{name} cached_stampede fresh hit", theirs["fresh_ns"], "async with lock", lock)
    return rows


def format_rows(rows: List[Dict[str, Any]]) -> str:
    header = ("case", "ours", "reference", "ratio", "target", "result")
    cells = [header] + [
        (
            r["case"],
            r["ours"],
            r["reference"],
            f"{r['ratio']:.2f}{r.get('unit', 'x')}",
            r["target"],
            "" if r["passed"] is None else ("PASS" if r["passed"] else "MISS"),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    align = ["<", ">", "<", ">", "<", "<"]
    return "\n".join(
        "  ".join(f"{c:{a}{w}}" for c, a, w in zip(line, align, widths)).rstrip() for line in cells
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/aio_cases.py",
        description="Time dogpile.aio against asyncio.Lock (and aiocache, if installed).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    args = parser.parse_args(argv)
    repeats, chunk = (7, 0.01) if args.quick else (25, 0.02)
    started = time.monotonic()
    result = run(repeats, chunk)
    print(
        f"dogpile.aio, {sys.implementation.name} {sys.version.split()[0]}; "
        f"medians of {repeats} interleaved rounds"
    )
    print(format_rows(table_rows(result)))
    print(f"{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
