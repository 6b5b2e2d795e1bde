"""The single-threaded cases of cases.py under pytest-benchmark, one group
per case with both implementations, and the bare-lock reference.

pytest-benchmark calls a function per iteration, so every time here
includes one Python call (tens of nanoseconds) that compare.py's inlined
loops do not; the reference pays it too, so compare within a group."""

import cases
import harness
import pytest


# In the fresh-hit group: the target compares those two.
@pytest.mark.benchmark(group=cases.CASES["acquire"][1])
def test_bare_lock(benchmark):
    with cases.bare_lock() as case:
        benchmark(harness.compile_call(case.stmt, case.namespace))


@pytest.mark.parametrize("name", list(cases.CASES))
def test_case(benchmark, impl, name):
    factory, description = cases.CASES[name]
    benchmark.group = description
    with factory(impl) as case:
        benchmark(harness.compile_call(case.stmt, case.namespace))
        case.check()
