"""Contention under pytest-benchmark: one round is a fixed number of fresh
hits shared by N threads, so a lower time is a higher aggregate throughput
and the rounds of one implementation compare directly across N."""

import contention
import pytest

TOTAL_OPS = 200_000


@pytest.mark.parametrize("threads", contention.THREAD_COUNTS)
def test_contention(benchmark, impl, threads):
    benchmark.group = f"contention, {TOTAL_OPS} fresh hits [{impl.__name__}]"
    ops_per_s = benchmark.pedantic(
        contention.aggregate_round, args=(impl, threads, TOTAL_OPS), rounds=5, warmup_rounds=1
    )
    benchmark.extra_info["aggregate_ops_per_s"] = ops_per_s
