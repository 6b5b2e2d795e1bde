"""Contention: N threads reading one fresh value; aggregate throughput.

Every thread runs the fresh-hit statement of ``cases.ACQUIRE`` in a
compiled loop over the same Dogpile.  Aggregate operations per second are
all the operations of a round over the time from the first thread's start
to the last thread's end, so a thread that waits (for the GIL, or for a
lock convoy on the hot path) costs throughput even when it does no work.
With the GIL only one thread runs Python at a time: the best N threads can
do is the throughput of one, and the target asks for 90 % of it.
"""

import statistics
import threading
import time
from types import ModuleType
from typing import Dict, List, Sequence, Tuple

import cases
import harness

THREAD_COUNTS = (1, 2, 8, 32)


def aggregate_round(mod: ModuleType, threads: int, total_ops: int) -> float:
    """One round: ``total_ops`` fresh hits shared by ``threads`` threads;
    returns aggregate operations per second."""
    d = mod.Dogpile(cases.FRESH_SECONDS)
    cases.give_value(d, "value")
    creator = harness.CallCounter("new")
    loop = harness.compile_loop(cases.ACQUIRE, {"d": d, "creator": creator})
    loop(1000)  # specialise the loop's instructions before the round starts
    per_thread = max(1, total_ops // threads)
    spans: List[Tuple[float, float]] = []
    # Every thread is started and waiting before any of them runs, so
    # thread start-up is not part of the round.
    start = threading.Barrier(threads)

    def work(_: int) -> None:
        start.wait(harness.DEADLINE)
        t0 = time.perf_counter()
        loop(per_thread)
        spans.append((t0, time.perf_counter()))  # list.append is atomic under the GIL

    harness.run_threads(work, threads, name=f"contention-{threads}")
    assert creator.calls == 0, "a fresh value was created again under contention"
    elapsed = max(end for _, end in spans) - min(begin for begin, _ in spans)
    return per_thread * threads / elapsed


def run(
    mods: Dict[str, ModuleType],
    rounds: int,
    round_seconds: float,
    fresh_ns: Dict[str, float],
    thread_counts: Sequence[int] = THREAD_COUNTS,
) -> Dict[str, Dict[int, Dict[str, float]]]:
    """Per implementation and thread count: the median aggregate ops/s, and
    the median over rounds of (ops/s with N threads / ops/s with one thread
    in the same round).

    ``fresh_ns`` (the single-threaded fresh-hit time per implementation)
    sizes a round to about ``round_seconds``.  Rounds go over every
    implementation and thread count in turn, and a ratio pairs counts of
    the same round, so that the machine's slower and faster stretches fall
    on both sides of it alike."""
    ops: Dict[str, Dict[int, List[float]]] = {name: {n: [] for n in thread_counts} for name in mods}
    for _ in range(rounds):
        for name, mod in mods.items():
            total_ops = max(1000, int(round_seconds / (fresh_ns[name] * 1e-9)))
            for n in thread_counts:
                ops[name][n].append(aggregate_round(mod, n, total_ops))
    base = thread_counts[0]
    return {
        name: {
            n: {
                "ops_per_s": statistics.median(s),
                f"ratio_to_{base}": statistics.median(
                    x / one for x, one in zip(s, per_count[base])
                ),
                "rounds": len(s),
            }
            for n, s in per_count.items()
        }
        for name, per_count in ops.items()
    }
