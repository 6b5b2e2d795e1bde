"""The output: the header line that says what ran, the table with one row
per run, and the legend under it.
"""

import platform
import sysconfig
from typing import Sequence

from .. import IMPLEMENTATION, __version__
from .model import Config, RunResult

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


