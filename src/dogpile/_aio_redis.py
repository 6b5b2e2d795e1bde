"""``AsyncRedisMutex``: RedisMutex for asyncio (``redis.asyncio``), for
``AsyncDogpile(..., lock=m)`` and ``AsyncLock(m, ...)``.

The same key protocol as RedisMutex, with its scripts: ``SET NX PX`` of a
random token per acquisition and compare-and-delete on release (both
made idempotent for a resent command), compare-and-expire to renew; the
same guarantees: a holder whose lease ran out never deletes or extends
another holder's lock (``release()`` raises LeaseLost instead), and a
failure or a cancellation leaves nothing locked: a release or a take-back
cut off by a cancellation, or by ``asyncio.run()`` shutting its loop down,
runs to its end before the loop closes (see _aio_locks._clean_up).  What
differs is asyncio's: waiting (the same BLPOP on the list a release pushes
to, or the back-off before Redis 6) is awaited instead of blocking a
thread, the lease is renewed by a task instead of a thread, and the tasks
of one process queue on an asyncio.Lock before they reach the server.
Re-exported by ``dogpile.mutexes``.
"""

import asyncio
import inspect
import math
import os
import random
import secrets
import time
import weakref
from functools import partial
from typing import Any, List, Optional, Union

from ._aio_locks import (
    _CLEANUP_RERUNS,
    _acquire_within,
    _check_loop_switch,
    _clean_up,
    _try_acquire_now,
)
from ._errors import LockError
from .mutexes import (
    _ACQUIRE,
    _BACKOFF_CAP,
    _BACKOFF_FIRST,
    _DELETE_IF_OURS,
    _RELEASE,
    _RELEASED_MS,
    _RENEW,
    LeaseLost,
    _client_errors,
    _deadline,
    _RedisKey,
    _released_key,
    _server_address,
    _wake_wait,
)

__all__ = ["AsyncRedisMutex"]


async def _backoff(delay: float, deadline: Optional[float]) -> Optional[float]:
    """mutexes._backoff, awaited: the same capped exponential back-off with
    jitter, so that waiting processes spread out."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
    else:
        left = math.inf
    await asyncio.sleep(min(delay * (0.5 + 0.5 * random.random()), left))
    return min(delay * 2, _BACKOFF_CAP)


class _Renewal:
    """What one acquisition's renewer task shares with release()."""

    __slots__ = ("task", "lost", "error")

    def __init__(self) -> None:
        self.task: Optional[asyncio.Task[None]] = None
        self.lost = False  # the renewer found the key gone or someone else's
        self.error: Optional[BaseException] = None  # its last failure, if any


async def _renew(
    client: Any, name: Any, token: str, lease_ms: int, interval: float, state: _Renewal
) -> None:
    # Holds the client, the key and the token, never the mutex (see the
    # finalizer in AsyncRedisMutex.__init__).
    while True:
        await asyncio.sleep(interval)
        try:
            renewed = await client.eval(_RENEW, 1, name, token, lease_ms)
        except Exception as exc:
            # A passing network failure: try again next interval, while the
            # lease still runs.  If it runs out, release() reports it.
            state.error = exc
            continue
        if not renewed:
            state.lost = True
            return


def _stop_renewal_in(cell: List[Optional[_Renewal]]) -> None:
    renewal = cell[0]
    if renewal is not None and renewal.task is not None:
        try:
            renewal.task.cancel()
        except RuntimeError:  # its event loop is closed: the task is over
            pass


class AsyncRedisMutex(_RedisKey):
    """A lock shared by processes on any number of hosts through one Redis
    key, for asyncio.

    :param client: an asyncio redis client (``redis.asyncio.Redis``, or
        valkey's) that the caller already has (a
        ``single_connection_client``'s connection is left to its owner: the
        mutex takes others from its pool).
    :param name: the key that holds the lock (str or bytes).
    :param lease: seconds the lock lasts if its holder goes away without
        releasing it.
    :param auto_renew: while the lock is held, a task extends the lease
        every ``lease / 3`` seconds, so a creator slower than the lease
        keeps it; it stops at ``release()`` and when the mutex is
        garbage-collected.

    ``await acquire(blocking=True, timeout=-1) -> bool``, ``await
    release()``, ``await locked()`` and ``async with``.  Like the
    redis.asyncio client it uses, a mutex serves one event loop at a time.
    If the server cannot be reached, the client's ConnectionError (or
    TimeoutError) is raised with the server's address in its message, and
    nothing is left locked; a task cancelled while it acquires takes back a
    key it may have set.
    """

    __slots__ = ("_local", "_local_loop", "_local_pid", "_releasing")

    def __init__(
        self, client: Any, name: Union[str, bytes], lease: float = 30.0, auto_renew: bool = True
    ) -> None:
        self._errors = _client_errors(client)
        for method in ("set", "eval", "exists"):
            if not callable(getattr(client, method, None)):
                raise TypeError(
                    "AsyncRedisMutex needs an asyncio redis client (redis.asyncio.Redis or "
                    f"valkey.asyncio.Valkey), not {type(client).__name__!r}, which has no "
                    f"{method}()"
                )
        # redis.asyncio's command methods are plain functions that return
        # the coroutine of an async execute_command.
        if not inspect.iscoroutinefunction(getattr(client, "execute_command", None)):
            raise TypeError(
                "AsyncRedisMutex needs an asyncio redis client (redis.asyncio.Redis), not the "
                f"synchronous {type(client).__name__!r}: use dogpile.mutexes.RedisMutex for it"
            )
        self._set_key(client, name, lease, auto_renew)
        # The tasks of this process queue on this, made for the running
        # event loop (see _local_lock).
        self._local: Optional[asyncio.Lock] = None
        self._local_loop: Any = None
        self._local_pid = 0
        # The delete of a release() under way (see release()).
        self._releasing: Optional[asyncio.Future[Any]] = None
        self._renewal: List[Optional[_Renewal]] = [None]
        weakref.finalize(self, _stop_renewal_in, self._renewal)

    def _local_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        ref = self._local_loop
        if ref is not None and ref() is loop and self._local is not None:
            return self._local
        if self._local is not None:
            _check_loop_switch(
                ref() if ref is not None else None, self._local, self, self._local_pid
            )
            # Held in a loop that is closed now, or in the parent of this
            # forked child: its key ends with its lease (or the parent's
            # release), never with a release from here.
            self._token = None
            self._renewal[0] = None
            self._releasing = None
        self._local = asyncio.Lock()
        self._local_loop = weakref.ref(loop)
        self._local_pid = os.getpid()
        return self._local

    async def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock, waiting if ``blocking`` (at most ``timeout``
        seconds unless it is -1); return whether it was taken."""
        deadline = _deadline(blocking, timeout)
        local = self._local_lock()
        # Tasks of this process queue here, without touching the server,
        # and only one of them at a time polls the key.
        if not blocking:
            if not _try_acquire_now(local):
                return False
        elif deadline is None:
            await local.acquire()
        elif not await _acquire_within(local, max(0.0, deadline - time.monotonic())):
            return False
        try:
            taken = await self._acquire_key(bool(blocking), deadline)
        except BaseException:
            local.release()
            raise
        if not taken:
            local.release()
        return taken

    async def _acquire_key(self, blocking: bool, deadline: Optional[float]) -> bool:
        # A new token each time: a renewer or a release left over from an
        # earlier acquisition can never match this one's key.
        token = secrets.token_hex(16)
        delay: Optional[float] = _BACKOFF_FIRST
        while True:
            command = asyncio.ensure_future(
                self._client.eval(_ACQUIRE, 1, self._name, token, self._lease_ms)
            )
            try:
                # Shielded: a cancellation ends this wait at once and leaves
                # the command to finish on its connection (redis-py 8 can
                # swallow a cancellation in mid-command and return as if
                # nothing happened, and a command cut off mid-reply can
                # spoil its connection).  Whatever it took is given back.
                taken = await asyncio.shield(command)
            except asyncio.CancelledError:
                self._take_back_later(command, token)
                raise
            except BaseException as exc:
                # The SET may have reached the server before the failure (a
                # timed-out reply): take back what is ours, if it is.  Not
                # after a ConnectionError: the client could not reach the
                # server, and the lease ends the key anyway.
                if not isinstance(exc, self._errors[0]):
                    await self._delete_if_ours(token)
                if isinstance(exc, self._errors):
                    raise self._unreachable(exc, "acquire()") from exc
                raise
            if taken > 0:
                break
            if not blocking:
                return False
            wait = _wake_wait(taken, deadline, self._wake_cap)
            if wait is None:
                return False
            if self._wake:
                try:
                    # Returns when a release pushes, or after ``wait``.
                    await self._client.blpop([self._wake_list], timeout=wait)
                    continue
                except self._errors as exc:
                    raise self._unreachable(exc, "acquire()") from exc
                except Exception:
                    # A server before Redis 6 takes whole seconds only:
                    # poll with back-off instead, as before wake-ups.
                    self._wake = False
            delay = await _backoff(delay, deadline)  # type: ignore[arg-type]
            if delay is None:
                return False
        self._start_holding(token)
        return True

    def _start_holding(self, token: str) -> None:
        self._token = token
        if self._auto_renew:
            renewal = _Renewal()
            renewal.task = asyncio.ensure_future(
                _renew(self._client, self._name, token, self._lease_ms, self._lease / 3, renewal)
            )
            self._renewal[0] = renewal

    def _take_back_later(self, command: "asyncio.Future[Any]", token: str) -> None:
        """A cancelled acquire() left ``command`` running: once it ends,
        delete the key if it may have set it.  A clean-up (_aio_locks._clean_up):
        the loop's shutdown neither stops nor forgets it."""

        async def take_back() -> None:
            if not command.done():
                # Only once it is over: a delete that overtook the SET
                # would leave the key behind.
                await asyncio.wait((command,))
            if not command.cancelled():
                exc = command.exception()
                if exc is None and not command.result() > 0:
                    return  # it took nothing
                if isinstance(exc, self._errors[0]):
                    return  # it never reached the server; the lease ends it anyway
            await self._client.eval(_DELETE_IF_OURS, 1, self._name, token)

        _clean_up(take_back, reruns=_CLEANUP_RERUNS)

    async def _delete_if_ours(self, token: str) -> None:
        try:
            # A clean-up, shielded: a second cancellation must not stop it.
            await asyncio.shield(
                _clean_up(
                    partial(self._client.eval, _DELETE_IF_OURS, 1, self._name, token),
                    reruns=_CLEANUP_RERUNS,
                )
            )
        except Exception:
            pass  # unreachable: the lease ends it

    async def release(self) -> None:
        """Release the lock; any task may release it.

        Raises ``LeaseLost`` if the lock was no longer this mutex's (its
        lease ran out or the key was overwritten); the mutex is released
        either way, and a lock someone else holds now is left alone.

        The delete runs to its end even if the caller is cancelled while it
        waits (for a pool connection, for the reply), and even if the event
        loop shuts down meanwhile: until the key is gone the mutex still
        reports itself held (another task's acquire() waits, and a second
        release() is an error), never free while its key is locked.
        """
        token = self._token
        if token is None or self._local_pid != os.getpid():
            raise LockError(f"release(): AsyncRedisMutex {self._name!r} is not held")
        if self._releasing is not None:
            raise LockError(
                f"release(): AsyncRedisMutex {self._name!r} is being released already "
                "(by a release() that is still running or was cancelled)"
            )
        renewal = self._renewal[0]
        self._renewal[0] = None
        if renewal is not None and renewal.task is not None:
            # A renewal in flight is a compare-and-expire on this token,
            # which cannot touch a lock taken after the delete.
            renewal.task.cancel()
        name = self._name
        delete = _clean_up(
            partial(
                self._client.eval, _RELEASE, 3, name, _released_key(name, token),
                self._wake_list, token, _RELEASED_MS, self._lease_ms,
            ),
            reruns=_CLEANUP_RERUNS,
        )
        self._releasing = delete
        # Frees the mutex once the delete is over, whoever awaits it; done
        # callbacks run in order, so before this coroutine resumes.
        delete.add_done_callback(self._released)
        try:
            deleted = await asyncio.shield(delete)
        except self._errors as exc:
            raise self._unreachable(exc, "release()") from exc
        if not deleted:
            how = (
                "the lease was not renewed"
                if renewal is None
                else "the renewer found it gone or taken"
                if renewal.lost
                else "the key was gone or held another token at release"
            )
            if renewal is not None and renewal.error is not None:
                how += f"; the last renewal failed: {renewal.error}"
            raise LeaseLost(
                f"AsyncRedisMutex {self._name!r} lost its lock before release() "
                f"(lease {self._lease:g} s; {how}); the key was left alone"
            )

    def _released(self, delete: "asyncio.Future[Any]") -> None:
        if self._releasing is not delete:
            return  # forgotten meanwhile (a new event loop, a forked child)
        self._releasing = None
        self._token = None
        # After the delete, so that a task of this process waiting here
        # finds the key gone instead of backing off.
        local = self._local
        if local is not None and local.locked():
            local.release()

    async def locked(self) -> bool:
        """Whether anyone (this process or another) holds the lock now."""
        try:
            return bool(await self._client.exists(self._name))
        except self._errors as exc:
            raise self._unreachable(exc, "locked()") from exc

    async def __aenter__(self) -> "AsyncRedisMutex":
        await self.acquire()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.release()

    def _unreachable(self, exc: BaseException, during: str) -> BaseException:
        message = (
            f"AsyncRedisMutex {self._name!r}: cannot reach the Redis server at "
            f"{_server_address(self._client)} during {during}: {exc}"
        )
        try:
            # The client's own class, so ``except redis.ConnectionError``
            # in the caller still catches it.
            return type(exc)(message)
        except Exception:  # pragma: no cover - a class with another signature
            return ConnectionError(message)

    def __repr__(self) -> str:
        state = "held" if self._token is not None else "free"
        return (
            f"<AsyncRedisMutex {self._name!r} at {_server_address(self._client)} "
            f"lease={self._lease:g} auto_renew={self._auto_renew} {state} here>"
        )
