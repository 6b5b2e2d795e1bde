"""The whole comparison in one command: ``python benchmarks/compare.py``.

Runs, in this order, every case of issue 3 and prints one table of ratios
with the targets:

1. dogpile.cache's side (peer.py), in its own virtual environment, made
   here on first use (``.venv-dogpile-cache/`` in the repository root)
   with dogpile.cache pinned to ``PEER_VERSION``;
2. the single-threaded cases of cases.py, for the compiled core and the
   Python twin, interleaved with a bare ``with lock:`` block;
3. contention (contention.py), 4. the stampede (stampede.py), 5. memory
   (memory.py), 6. dogpile.aio (aio_cases.py): its fresh hit against
   ``async with`` an asyncio.Lock, and a 1,000-task stampede, against
   aiocache's ``cached_stampede`` where aiocache is installed.

Times are medians over interleaved rounds (harness.measure).  A ratio
against dogpile.cache is taken against the bare lock of each process:
(ours / our bare lock) / (theirs / their bare lock); the table shows
dogpile.cache's time scaled into this process's units (theirs x our bare
lock / their bare lock), so that ours / reference is the ratio.

``--quick`` shortens every part (15 s against 40 s here); ``--json PATH``
also writes every number measured.
"""

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The one pin of the reference: the newest dogpile.cache on PyPI that runs
# on CPython 3.11 when this was written.  Not a dependency of the package
# (nor of its ``bench`` extra): its top-level ``dogpile`` package would
# replace ours.
PEER_VERSION = "1.5.0"
# Matched by the repository's .gitignore (``.venv*/``).
PEER_VENV = REPO / ".venv-dogpile-cache"

try:
    import dogpile
except ImportError as exc:
    sys.exit(
        f"compare.py: cannot import dogpile ({exc}); install it first: "
        'python -m pip install ".[bench]"'
    )
if not hasattr(dogpile, "Dogpile"):
    sys.exit(f"compare.py: {dogpile.__file__} is not this project's dogpile (dogpile.cache's?)")
try:
    importlib.import_module("dogpile._core")
except ImportError as exc:
    sys.exit(
        f"compare.py: the compiled core does not import ({exc}); the comparison is about it. "
        "Reinstall with a compiler available (DOGPILE_REQUIRE_EXTENSIONS=1 makes a failed "
        "build an error) or build in place: python setup.py build_ext --inplace"
    )

import aio_cases  # noqa: E402  (after the checks above, which explain a failed import)
import cases  # noqa: E402
import contention  # noqa: E402
import harness  # noqa: E402
import memory  # noqa: E402
import stampede  # noqa: E402

IMPLEMENTATIONS = {
    "cython": importlib.import_module("dogpile._core"),
    "python": importlib.import_module("dogpile._core_py"),
}


@dataclass(frozen=True)
class Settings:
    repeats: int  # interleaved rounds of the single-threaded cases
    chunk_seconds: float  # one timed chunk of a single-threaded case
    contention_rounds: int
    contention_seconds: float  # one contention round
    stampede_seconds: float
    keys: int  # NameRegistry size for the memory case


FULL = Settings(25, 0.02, 9, 0.2, 2.0, memory.KEYS)
QUICK = Settings(7, 0.01, 3, 0.05, 1.0, memory.KEYS)


def log(message: str) -> None:
    print(f"compare.py: {message}", file=sys.stderr, flush=True)


# -- dogpile.cache's side --------------------------------------------------------


def _venv_python() -> Path:
    return PEER_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run_peer_python(*args: str, **kw: Any) -> "subprocess.CompletedProcess[str]":
    # -E: no PYTHONPATH (ours may be on it), -s: no user site.  The script's
    # own directory stays first on sys.path, for harness and cases.
    return subprocess.run(
        [str(_venv_python()), "-E", "-s", *args], capture_output=True, text=True, **kw
    )


def peer_environment() -> Path:
    """Make (or repair) the dogpile.cache virtual environment; return its
    interpreter."""
    python = _venv_python()
    ours = platform.python_version()
    if python.exists():
        theirs = _run_peer_python("-c", "import platform; print(platform.python_version())")
        if theirs.returncode != 0 or theirs.stdout.strip() != ours:
            log(f"{PEER_VENV.name} is not CPython {ours}: making it again")
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    else:
        log(f"making {PEER_VENV} for dogpile.cache {PEER_VERSION}")
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    version = _run_peer_python(
        "-c", "import importlib.metadata as m; print(m.version('dogpile.cache'))"
    )
    if version.returncode != 0 or version.stdout.strip() != PEER_VERSION:
        log(f"installing dogpile.cache=={PEER_VERSION} into {PEER_VENV.name}")
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"dogpile.cache=={PEER_VERSION}",
            ],
            check=True,
        )
    return python


def run_peer(settings: Settings) -> Dict[str, Any]:
    peer_environment()
    log(f"timing dogpile.cache {PEER_VERSION} in its environment")
    done = _run_peer_python(
        str(HERE / "peer.py"),
        "--repeats",
        str(settings.repeats),
        "--chunk-seconds",
        str(settings.chunk_seconds),
        "--keys",
        str(settings.keys),
        cwd=str(HERE),
    )
    if done.returncode != 0:
        raise SystemExit(f"compare.py: peer.py failed:\n{done.stderr}")
    result: Dict[str, Any] = json.loads(done.stdout)
    if result["dogpile.cache"] != PEER_VERSION:
        raise SystemExit(f"compare.py: peer.py ran dogpile.cache {result['dogpile.cache']}")
    return result


def run_region_over_ours(settings: Settings) -> Dict[str, Dict[str, Any]]:
    """dogpile.cache's region.get_or_create over our Lock, per implementation
    (region_over_ours.py, with dogpile.cache's files from PEER_VENV)."""
    where = _run_peer_python("-c", "import dogpile, os; print(os.path.dirname(dogpile.__file__))")
    if where.returncode != 0:
        raise SystemExit(f"compare.py: no dogpile.cache in {PEER_VENV}:\n{where.stderr}")
    results = {}
    for impl in IMPLEMENTATIONS:
        log(f"timing dogpile.cache's region over our Lock [{impl}]")
        env = {k: v for k, v in os.environ.items() if k != "DOGPILE_NO_EXTENSIONS"}
        if impl == "python":
            env["DOGPILE_NO_EXTENSIONS"] = "1"
        done = subprocess.run(
            [
                sys.executable,
                "-s",
                str(HERE / "region_over_ours.py"),
                where.stdout.strip(),
                "--repeats",
                str(settings.repeats),
                "--chunk-seconds",
                str(settings.chunk_seconds),
            ],
            capture_output=True,
            text=True,
            cwd=str(HERE),
            env=env,
        )
        if done.returncode != 0:
            raise SystemExit(f"compare.py: region_over_ours.py failed:\n{done.stderr}")
        result: Dict[str, Any] = json.loads(done.stdout)
        if result["implementation"] != impl:
            raise SystemExit(f"compare.py: region_over_ours.py ran {result['implementation']}")
        results[impl] = result["times"]
    return results


# -- our side ------------------------------------------------------------------------


def run_micro(settings: Settings) -> Dict[str, Dict[str, float]]:
    """Every single-threaded case for both implementations and the bare
    lock, interleaved in one measurement."""
    with contextlib.ExitStack() as stack:
        made = {"bare_lock": stack.enter_context(cases.bare_lock())}
        for name, (factory, _) in cases.FLOORS.items():
            made[name] = stack.enter_context(factory())
        for impl, mod in IMPLEMENTATIONS.items():
            for name, (factory, _) in cases.CASES.items():
                made[f"{impl}:{name}"] = stack.enter_context(factory(mod))
        loops = {name: harness.compile_loop(c.stmt, c.namespace) for name, c in made.items()}
        results = harness.measure(loops, settings.repeats, settings.chunk_seconds)
        for c in made.values():
            c.check()
    return results


LEGEND = """\
ratio: ours / reference; a dogpile.cache time is scaled into this process's
  units by the two bare locks above.  Contention: N threads / 1 thread, the
  median of per-round ratios.
stampede: {threads} threads, creator {backend:g} ms, value expires every {expire:g} s,
  {seconds:g} s, each reader pausing {think:g} ms between reads.  non-creator:
  reads that began while a creation ran, other than the creator's own;
  fresh median: reads that began outside one, same run and timer; fresh-hit
  max: the slowest of those, what the machine adds to any read.
memory: getsizeof = the object itself with its GC header; in use =
  tracemalloc per Dogpile after one acquire() (all it allocated and keeps,
  not the value); NameRegistry = tracemalloc per key of {keys} used Dogpiles
  (dogpile.cache: of CacheRegion's per-key mutexes).
asyncio: timed inside one event loop, against an uncontended `async with
  lock:` on an asyncio.Lock made beforehand; the stampede releases
  {tasks} tasks at once with a {aio_backend:g} ms creator (aio_cases.py)."""


# -- the table --------------------------------------------------------------------------


EARLY = ", early_refresh=1"  # the key suffix of the early-refresh stampede


@dataclass
class Row:
    case: str
    ours: str
    reference: str
    ratio: Optional[float]  # ours / reference, or the measured count
    target: str = ""
    passed: Optional[bool] = None  # None: no target, for information
    unit: str = "x"  # of the ratio; none for a count

    @property
    def result(self) -> str:
        return "" if self.passed is None else ("PASS" if self.passed else "MISS")


def ns(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f} ms"
    if value >= 1e4:
        return f"{value / 1e3:.1f} us"
    if value >= 1e3:
        return f"{value / 1e3:.2f} us"
    return f"{value:.0f} ns"


def at_most(bound: float) -> "tuple[str, Any]":
    return f"<= {bound:.2f}x", lambda r: r <= bound


def at_least(bound: float) -> "tuple[str, Any]":
    return f">= {bound:.2f}x", lambda r: r >= bound


def build_rows(
    micro: Dict[str, Dict[str, float]],
    peer: Optional[Dict[str, Any]],
    threads: Dict[str, Dict[int, Dict[str, float]]],
    herd: Dict[str, Dict[str, Any]],
    mem: Dict[str, Dict[str, float]],
    region: Optional[Dict[str, Dict[str, Any]]] = None,
) -> List[Row]:
    rows: List[Row] = []
    t = {name: r["median_ns"] for name, r in micro.items()}
    bare = t["bare_lock"]
    # dogpile.cache's times in this process's units (see the docstring).
    peer_times: Dict[str, Dict[str, float]] = peer["times"] if peer else {}

    def theirs(name: str) -> float:
        """dogpile.cache's time in this process's units (module docstring)."""
        return peer_times[name]["median_ns"] * bare / peer_times["bare_lock"]["median_ns"]

    def row(
        case: str,
        ours: float,
        ref_name: str,
        ref: float,
        target: Any = None,
        fmt: Any = ns,
        ratio: Optional[float] = None,
    ) -> None:
        ratio = ours / ref if ratio is None else ratio
        text, ok = target if target else ("", None)
        rows.append(
            Row(case, fmt(ours), f"{fmt(ref)} {ref_name}", ratio, text, ok(ratio) if ok else None)
        )

    peer_name = f"dogpile.cache {PEER_VERSION}"

    def single(
        name: str, ref_name: str, ref: Any, target: Any = None, python_target: Any = None
    ) -> None:
        """One row per implementation; ``ref`` maps an implementation to
        its reference time.  Targets are the compiled core's unless the
        issue names the twin."""
        for impl in IMPLEMENTATIONS:
            row(
                f"{cases.CASES[name][1]} [{impl}]",
                t[f"{impl}:{name}"],
                ref_name,
                ref(impl),
                target if impl == "cython" else python_target,
            )

    # Issue 14's targets, on every interpreter: a fresh `with
    # d.acquire(creator)` no dearer than a bare `with lock:`, a fresh
    # `d.get(creator)` at most 0.6 of it.  The floors (compiled objects that
    # do nothing, timed in the same rounds) show what the interpreter
    # itself charges for each form.
    for name, (_, description) in cases.FLOORS.items():
        row(description, t[name], "bare lock", bare)
    single("acquire", "bare lock", lambda impl: bare, at_most(1.0))
    row(
        f"{cases.CASES['acquire'][1]} [cython]",
        t["cython:acquire"],
        "floor",
        t["floor_acquire"],
    )
    single("get", "bare lock", lambda impl: bare, at_most(0.6))
    row(f"{cases.CASES['get'][1]} [cython]", t["cython:get"], "floor", t["floor_get"])
    # Issue 8: the options cost a fresh hit nothing measurable.
    single("acquire_options", "plain Dogpile", lambda impl: t[f"{impl}:acquire"], at_most(1.1))
    single("acquire_early", "plain Dogpile", lambda impl: t[f"{impl}:acquire"])
    for name in ("acquire_value_fn", "acquire_value_and_created_fn", "sync_reader"):
        single(name, "bare lock", lambda impl: bare)
    if peer:
        single("lock", peer_name, lambda impl: theirs("lock"), at_most(1 / 3), at_most(1.0))
    single("acquire_stale", "fresh acquire", lambda impl: t[f"{impl}:acquire"], at_most(2.0))
    single("lock_stale", "fresh Lock", lambda impl: t[f"{impl}:lock"], at_most(2.0))
    if peer:
        single("lock_stale", peer_name, lambda impl: theirs("lock_stale"))
        single("registry_get", peer_name, lambda impl: theirs("registry_get"), at_most(1 / 3))
    if peer and region:
        # Issue 11: no target, the Lock is a small part of a region call.
        for impl, times in region.items():
            over = times["region_hit"]["median_ns"] * bare / times["bare_lock"]["median_ns"]
            row(
                f"region.get_or_create, fresh hit, memory backend, over our Lock [{impl}]",
                over,
                f"{peer_name} alone",
                theirs("region_hit"),
            )
    single("acquire_first", "bare lock", lambda impl: bare)
    if peer:
        single("lock_first", peer_name, lambda impl: theirs("lock_first"))

    def ops(value: float) -> str:
        return f"{value / 1e6:.2f} Mop/s"

    for impl, per_count in threads.items():
        one = per_count[1]["ops_per_s"]
        for n, r in per_count.items():
            target = at_least(0.9) if impl == "cython" and n == 8 else None
            label = "thread" if n == 1 else "threads"
            # The ratio is the median of per-round ratios (contention.run),
            # steadier than the ratio of the two medians shown.
            row(
                f"contention {n} {label} [{impl}]",
                r["ops_per_s"],
                "1 thread",
                one,
                target,
                ops,
                ratio=r["ratio_to_1"],
            )

    for impl, h in herd.items():
        if impl.endswith(EARLY):
            continue
        exact = h["expiries"] > 0 and h["extra_creations"] == 0 and h["calls_per_expiry_min"] == 1
        rows.append(
            Row(
                f"stampede creator calls/expiry [{impl}]",
                f"{h['creator_calls']} calls",
                f"{h['expiries']} expiries",
                h["creator_calls"] / max(1, h["expiries"]),
                "exactly 1 each",
                exact,
                unit="",
            )
        )
        fresh = h["fresh_median_ns"]
        is_c = impl == "cython"
        if h["regen_reads"]:
            row(
                f"stampede non-creator p99 [{impl}]",
                h["regen_p99_ns"],
                "fresh median",
                fresh,
                at_most(20) if is_c else None,
            )
            row(
                f"stampede non-creator max [{impl}]",
                h["regen_max_ns"],
                "fresh median",
                fresh,
                at_most(20) if is_c else None,
            )
        row(f"stampede fresh-hit max [{impl}]", h["fresh_max_ns"], "fresh median", fresh)

    # Issue 8: the same stampede with early_refresh=1.0, against the plain
    # run: reads that found the value expired, and what it costs in creator
    # calls.
    for impl, e in herd.items():
        if not impl.endswith(EARLY):
            continue
        base = herd[impl[: -len(EARLY)]]
        count = lambda n: f"{n} reads"  # noqa: E731
        calls = lambda n: f"{n} calls"  # noqa: E731
        rows.append(
            Row(
                f"stampede expired reads [{impl}]",
                count(e["expired_reads"]),
                f"{count(base['expired_reads'])} without",
                e["expired_reads"] / max(1, base["expired_reads"]),
            )
        )
        rows.append(
            Row(
                f"stampede creator calls [{impl}]",
                calls(e["creator_calls"]),
                f"{calls(base['creator_calls'])} without",
                e["creator_calls"] / max(1, base["creator_calls"]),
            )
        )

    def size(value: float) -> str:
        return f"{value:.0f} B"

    for impl, m in mem.items():
        target = ("<= 128 B", m["object"] <= 128) if impl == "cython" else ("", None)
        rows.append(
            Row(f"Dogpile object, getsizeof [{impl}]", size(m["object"]), "", None, *target)
        )
        rows.append(Row(f"Dogpile in use, tracemalloc [{impl}]", size(m["in_use"]), "", None))
        if peer:
            theirs_mem = peer["memory"]
            row(
                f"NameRegistry of 100k, per key [{impl}]",
                m["registry_per_key"],
                peer_name,
                theirs_mem["registry_per_key"],
                fmt=size,
            )
            row(
                f"Lock object [{impl}]",
                m["lock_object"],
                peer_name,
                theirs_mem["lock_object"],
                fmt=size,
            )
    return rows


def format_table(rows: List[Row]) -> str:
    header = ("case", "ours", "reference", "ratio", "target", "result")
    cells = [header] + [
        (
            r.case,
            r.ours,
            r.reference,
            "" if r.ratio is None else f"{r.ratio:.2f}{r.unit}",
            r.target,
            r.result,
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
        prog="python benchmarks/compare.py",
        description="Time dogpile against a bare lock and dogpile.cache; print one table.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--json", metavar="PATH", help="also write every number measured here")
    parser.add_argument(
        "--no-peer", action="store_true", help="skip dogpile.cache (no network to install it, say)"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    started = time.monotonic()

    peer = None if args.no_peer else run_peer(settings)
    region = None if args.no_peer else run_region_over_ours(settings)
    log("single-threaded cases")
    micro = run_micro(settings)
    log("contention")
    fresh_ns = {impl: micro[f"{impl}:acquire"]["median_ns"] for impl in IMPLEMENTATIONS}
    threads = contention.run(
        IMPLEMENTATIONS, settings.contention_rounds, settings.contention_seconds, fresh_ns
    )
    herd = {}
    for impl, mod in IMPLEMENTATIONS.items():
        log(f"stampede [{impl}]")
        herd[impl] = stampede.run(mod, settings.stampede_seconds)
    log("stampede [cython] with early_refresh=1.0")
    herd["cython" + EARLY] = stampede.run(
        IMPLEMENTATIONS["cython"], settings.stampede_seconds, early_refresh=1.0
    )
    log("memory")
    mem = {impl: memory.run(mod, settings.keys) for impl, mod in IMPLEMENTATIONS.items()}
    log("asyncio")
    aio = aio_cases.run(settings.repeats, settings.chunk_seconds)

    rows = build_rows(micro, peer, threads, herd, mem, region)
    rows.extend(Row(**r) for r in aio_cases.table_rows(aio))
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(
        f"dogpile {dogpile.__version__} ({Path(dogpile.__file__).parent}), {python}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}; "
        f"{'--quick, ' if args.quick else ''}"
        f"medians of {settings.repeats} interleaved rounds"
    )
    bare = micro["bare_lock"]["median_ns"]
    if peer:
        peer_bare = peer["times"]["bare_lock"]["median_ns"]
        print(
            f"bare `with lock:` {ns(bare)} here, {ns(peer_bare)} in dogpile.cache's process: "
            f"its times are scaled by {bare / peer_bare:.3f}"
        )
    else:
        print(f"bare `with lock:` {ns(bare)}; dogpile.cache skipped (--no-peer)")
    print()
    print(format_table(rows))
    print()
    print(
        LEGEND.format(
            threads=stampede.THREADS,
            backend=stampede.BACKEND * 1e3,
            expire=stampede.EXPIRE,
            think=stampede.THINK * 1e3,
            seconds=settings.stampede_seconds,
            keys=settings.keys,
            tasks=aio_cases.TASKS,
            aio_backend=aio_cases.BACKEND * 1e3,
        )
    )
    missed = [r.case for r in rows if r.passed is False]
    print()
    print(
        f"{sum(r.passed is True for r in rows)} PASS, {len(missed)} MISS; "
        f"{time.monotonic() - started:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "python": python,
                    "settings": settings.__dict__,
                    "micro": micro,
                    "peer": peer,
                    "region_over_ours": region,
                    "contention": {
                        impl: {str(n): r for n, r in per.items()} for impl, per in threads.items()
                    },
                    "stampede": herd,
                    "memory": mem,
                    "asyncio": aio,
                    "rows": [r.__dict__ | {"result": r.result} for r in rows],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
