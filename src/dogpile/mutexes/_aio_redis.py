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
import os
import secrets
import time
import weakref
from functools import partial
from typing import Any, List, Optional, Tuple, Union

from .._aio_locks import (
    _CLEANUP_RERUNS,
    _acquire_within,
    _check_loop_switch,
    _clean_up,
    _try_acquire_now,
)
from .._errors import LockError
from ._common import _BACKOFF_FIRST, _backoff_step, _deadline
from ._protocol import (
    _join_the_leader,
    _key_free,
    _RedisKey,
    _renew_command,
    _RenewalState,
    _wake_wait,
)

__all__ = ["AsyncRedisMutex"]


async def _backoff(delay: float, deadline: Optional[float]) -> Optional[float]:
    """_common._backoff, awaited."""
    step = _backoff_step(delay, deadline)
    if step is None:
        return None
    await asyncio.sleep(step[0])
    return step[1]


class _Renewal(_RenewalState):
    """What one acquisition's renewer task shares with release()."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        super().__init__()
        self.task: Optional[asyncio.Task[None]] = None


async def _renew(
    client: Any, name: Any, token: str, lease_ms: int, interval: float, state: _Renewal
) -> None:
    # Holds the client, the key and the token, never the mutex (see the
    # finalizer in AsyncRedisMutex.__init__).
    command = _renew_command(name, token, lease_ms)
    while True:
        await asyncio.sleep(interval)
        try:
            renewed = await client.eval(*command)
        except Exception as exc:
            state.failed(exc)
            continue
        if not state.go_on(renewed):
            return


def _stop_renewal_in(cell: List[Optional[_Renewal]]) -> None:
    renewal = cell[0]
    if renewal is not None and renewal.task is not None:
        try:
            renewal.task.cancel()
        except RuntimeError:  # its event loop is closed: the task is over
            pass


def _raise_if_cancelled() -> None:
    """Raise the cancellation that redis-py swallowed, if it did.

    redis-py can swallow a cancellation that lands just as a blocking
    command's reply arrives, and return the reply; seen with redis-py 8 on
    Python 3.10 and 3.11, about once in ten.  The wait would then go on as
    if woken, and a task.cancel() or an asyncio timeout would be lost.
    From Python 3.11 the task says that a cancellation is pending
    (Task.cancelling()), and this raises it; before, nothing can tell."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError()


class AsyncRedisMutex(_RedisKey):
    """A lock shared by processes on any number of hosts through one Redis
    key, for asyncio.

    :param client: an asyncio redis client (``redis.asyncio.Redis``,
        ``redis.asyncio.cluster.RedisCluster``, or valkey's) that the caller
        already has (a
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

    __slots__ = ("_local", "_local_loop", "_local_pid", "_releasing", "_server_wait")

    def __init__(
        self, client: Any, name: Union[str, bytes], lease: float = 30.0, auto_renew: bool = True
    ) -> None:
        self._set_key(client, name, lease, auto_renew, asynchronous=True)
        # The tasks of this process queue on this, made for the running
        # event loop (see _local_lock).
        self._local: Optional[asyncio.Lock] = None
        self._local_loop: Any = None
        self._local_pid = 0
        # The delete of a release() under way (see release()).
        self._releasing: Optional[asyncio.Future[Any]] = None
        # Set when the one XREAD that tasks of this loop share ends (see
        # _wait_for_release), and the stream id its XREAD started from;
        # None while none is blocked.
        self._server_wait: Optional[Tuple[asyncio.Event, bytes]] = None
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
        self._server_wait = None  # another loop's
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

    async def acquire_or_wait(self, timeout: float = -1) -> bool:
        """Take the lock if it is free and return True, held as after
        ``acquire()``; otherwise wait, at most ``timeout`` seconds unless it
        is -1, for its holder to release it, and return False without
        taking it.

        RedisMutex.acquire_or_wait() for asyncio: the same two commands for
        a wait woken by the release (a script, then XREAD), one for a take,
        the same one XREAD shared by the tasks of this loop waiting on this
        mutex, the same broadcast to every waiter and the same reasons for a
        False (a release, the holder's lease running out, the 1 s safety
        net, the ``timeout``).  A task of this process that holds or is
        taking the mutex is never overtaken: this one waits for that task's
        release.  A cancellation leaves nothing held: a
        key its try may have set is taken back, even after the loop ends.
        """
        deadline = _deadline(True, timeout)
        local = self._local_lock()
        token = secrets.token_hex(16)
        # Holding the in-process lock is what allows taking the key; it is
        # never held while this waits on the server.
        mine = _try_acquire_now(local)
        if not mine:
            reply = await self._take_or_look(token, False)
            if not _key_free(reply):
                return await self._wait_for_release(reply, deadline)
            # The key is free, yet a task of this process holds the mutex
            # (its lease ran out) or is taking it: its release is the one to
            # wait for, here, without a command (see RedisMutex).
            wait = _wake_wait(0, deadline, self._wake_cap)
            if wait is not None and await _acquire_within(local, wait):
                local.release()
            return False
        try:
            reply = await self._take_or_look(token, True)
            if self._taken(reply):
                self._start_holding(token)
                mine = False  # held: release() lets it go
                return True
        finally:
            if mine:
                local.release()
        return await self._wait_for_release(reply, deadline)

    async def _wait_for_release(self, reply: Any, deadline: Optional[float]) -> bool:
        """acquire_or_wait() after a try that did not take the key: one
        task of this loop blocks in XREAD, and the others wait for it, so
        that the waiters hold one connection of the client's pool, not one
        each (see RedisMutex._wait_for_release)."""
        plan = self._wake_plan(reply, deadline)
        if plan is None:
            return False
        streams, block, sleep = plan
        if streams is not None:
            since = streams[self._wake_stream]
            shared = self._server_wait
            if shared is not None:
                join = _join_the_leader(since, shared[1])
                if join is False:
                    return False
                if join:
                    try:
                        await asyncio.wait_for(shared[0].wait(), block / 1000)
                    except asyncio.TimeoutError:
                        pass
                    return False
            # Leading, or not sure that the leader's XREAD wakes this one:
            # its own XREAD (see RedisMutex).
            event = None
            if shared is None:
                event = asyncio.Event()
                self._server_wait = (event, since)
            try:
                if self._may_block():
                    try:
                        # Returns when a release adds to the stream (at once
                        # if one already has since the script), or after
                        # ``block`` ms.
                        await self._client.xread(streams, count=1, block=block)
                        _raise_if_cancelled()
                        return False
                    finally:
                        self._blocked_done()
                # Half the pool's connections are blocked in waits already
                # (see RedisMutex).
                await asyncio.sleep(sleep)
                return False
            except Exception as exc:
                self._stream_failed(exc)
            finally:
                if event is not None:
                    if self._server_wait is not None and self._server_wait[0] is event:
                        self._server_wait = None
                    event.set()
        await asyncio.sleep(sleep)
        return False

    async def _take_or_look(self, token: str, take: bool) -> Any:
        command = asyncio.ensure_future(
            self._client.eval(*self._take_or_look_command(token, take))
        )
        try:
            # Shielded, and taken back if cancelled, as in _acquire_key.
            return await asyncio.shield(command)
        except asyncio.CancelledError:
            if take:
                self._take_back_later(command, token)
            raise
        except BaseException as exc:
            if take and self._take_back_after(exc):
                await self._delete_if_ours(token)
            failure = self._failure(exc, "acquire_or_wait()")
            if failure is not None:
                raise failure from exc
            raise

    async def _acquire_key(self, blocking: bool, deadline: Optional[float]) -> bool:
        # A new token each time: a renewer or a release left over from an
        # earlier acquisition can never match this one's key.
        token = secrets.token_hex(16)
        delay: Optional[float] = _BACKOFF_FIRST
        while True:
            command = asyncio.ensure_future(
                self._client.eval(*self._acquire_command(token))
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
                # timed-out reply): take back what is ours, if it is.
                if self._take_back_after(exc):
                    await self._delete_if_ours(token)
                failure = self._failure(exc, "acquire()")
                if failure is not None:
                    raise failure from exc
                raise
            if taken > 0:
                break
            wait = self._wait_after(taken, blocking, deadline)
            if wait is None:
                return False
            if self._wake and self._may_block():
                try:
                    # Returns when a release pushes, or after ``wait``.
                    await self._client.blpop([self._wake_list], timeout=wait)
                    _raise_if_cancelled()
                    continue
                except Exception as exc:
                    self._wake_failed(exc)
                finally:
                    self._blocked_done()
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
                if exc is None and not self._taken(command.result()):
                    return  # it took nothing
                if not self._take_back_after(exc):
                    return  # it never reached the server; the lease ends it anyway
            await self._client.eval(*self._delete_command(token))

        _clean_up(take_back, reruns=_CLEANUP_RERUNS)

    async def _delete_if_ours(self, token: str) -> None:
        try:
            # A clean-up, shielded: a second cancellation must not stop it.
            await asyncio.shield(
                _clean_up(
                    partial(self._client.eval, *self._delete_command(token)),
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
            raise self._not_held()
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
        delete = _clean_up(
            partial(self._client.eval, *self._release_command(token)), reruns=_CLEANUP_RERUNS
        )
        self._releasing = delete
        # Frees the mutex once the delete is over, whoever awaits it; done
        # callbacks run in order, so before this coroutine resumes.
        delete.add_done_callback(self._released)
        try:
            deleted = await asyncio.shield(delete)
        except Exception as exc:
            failure = self._failure(exc, "release()")
            if failure is not None:
                raise failure from exc
            raise
        if not deleted:
            raise self._lease_lost(renewal)

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
        except Exception as exc:
            failure = self._failure(exc, "locked()")
            if failure is not None:
                raise failure from exc
            raise

    async def __aenter__(self) -> "AsyncRedisMutex":
        await self.acquire()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.release()
