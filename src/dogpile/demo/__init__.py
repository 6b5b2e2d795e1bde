"""The stampede demonstration behind ``python -m dogpile``.

Many readers read one cached value that sits in front of a slow backend and
expires every fraction of a second.  The same load runs twice, for the same
time: once unprotected (every reader that finds the value expired calls the
backend itself) and once through one shared Dogpile (one reader calls the
backend, the others serve the previous value meanwhile).  One table compares
the two: backend calls, backend calls per expiry, stale values served, and
what the callers waited.

One module, one job:

- ``model``: the settings, the cached record, a run's result and its
  arithmetic, and which implementation runs (``--pure``);
- ``threads``: the load as threads of this process (the default);
- ``tasks``: the load as tasks of one event loop (``--asyncio``);
- ``processes``: the thread load in N processes at once (``--redis URL
  --processes N``), the parent starting and adding up the runs;
- ``redis_store``: the Redis client, the server check, and the cache and
  call count kept in Redis for those processes;
- ``report``: the header, the table and the legend;
- ``cli``: the options, the choice of load, and the exit status.
"""

from .cli import main

__all__ = ["main"]
