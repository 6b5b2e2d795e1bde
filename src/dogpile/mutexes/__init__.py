"""Mutexes that work across processes, for ``Dogpile(..., lock=m)`` and
``Lock(m, ...)``.

A dogpile lock inside one process stops a stampede of its threads; a site
that runs many processes needs the creation lock shared between them too.

- ``FileMutex(path)``: the processes of one host, through an OS advisory
  lock on a file (``flock`` on POSIX, ``msvcrt.locking`` on Windows).
- ``RedisMutex(client, name)``: processes on any number of hosts, through a
  Redis key with a lease.
- ``AsyncRedisMutex(client, name, lease=30.0, auto_renew=True)``: RedisMutex
  for asyncio (``redis.asyncio``), for ``dogpile.aio``.

Both have the interface of ``threading.Lock``: ``acquire(blocking=True,
timeout=-1) -> bool``, ``release()``, ``locked()`` and ``with``.  Both may be
released by another thread than the one that acquired them (a background
creator releases the lock its caller took), so neither keeps anything
thread-local.  Inside one process they behave as one lock: a second thread
waits on an in-process lock, not on the file or the server.  Each also has
``acquire_or_wait(timeout=-1) -> bool`` (awaited on AsyncRedisMutex), for a
caller that wants a first value rather than the lock: it takes a free lock
(True), or waits for the holder's release without taking it (False); one
release wakes every such waiter.

The ``redis`` package is an optional extra (``pip install
"dogpile[redis]"``), imported only when a RedisMutex is made.

The modules: ``_common`` (what every mutex shares: argument checks, the
back-off schedule, fork safety, LeaseLost), ``_protocol`` (the Redis key
protocol, written once: scripts, keys, lease and client checks, waiting
decisions, error messages), and the drivers over them, which only lock,
wait and send: ``_file`` (FileMutex), ``_redis`` (RedisMutex) and
``_aio_redis`` (AsyncRedisMutex, with ``dogpile._aio_locks``).
"""

from typing import TYPE_CHECKING, Any

from .._errors import LockError  # noqa: F401 - importable from here, as before
from ._common import LeaseLost
from ._file import FileMutex
from ._redis import RedisMutex

__all__ = ["FileMutex", "RedisMutex", "AsyncRedisMutex", "LeaseLost"]

# AsyncRedisMutex is loaded on first use, so that the threading mutexes do
# not import asyncio.  (No cycle: _aio_redis imports this package's
# modules and dogpile._aio_locks, never dogpile.aio.)
if TYPE_CHECKING:
    from ._aio_redis import AsyncRedisMutex as AsyncRedisMutex


def __getattr__(name: str) -> Any:
    if name == "AsyncRedisMutex":
        from ._aio_redis import AsyncRedisMutex

        return AsyncRedisMutex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
