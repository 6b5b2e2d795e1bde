"""dogpile's benchmarks (see README.md here; ``python benchmarks/compare.py``).

A package only so that pytest names this directory's conftest
``benchmarks.conftest``: as a bare ``conftest`` it would replace the unit
suite's in ``sys.modules`` when both directories are collected in one run,
and the unit tests import helpers from ``conftest``.  The modules here
import each other by bare name (``import harness``), as the scripts
``compare.py`` and ``peer.py`` do, since each runs with this directory
first on ``sys.path``.
"""
