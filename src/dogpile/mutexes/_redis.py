"""RedisMutex: processes on any number of hosts, through a Redis key with a
lease (the protocol is ``_protocol``'s); threads queue on an in-process
lock and a thread renews the lease."""

import _thread
import secrets
import threading
import time
import weakref
from typing import Any, List, Optional, Tuple, Union

from ._common import _BACKOFF_FIRST, _backoff, _deadline, _instances, _MutexBase, _remaining
from ._protocol import (
    _join_the_leader,
    _key_free,
    _RedisKey,
    _renew_command,
    _RenewalState,
    _wake_wait,
)


class _Renewal(_RenewalState):
    """What one acquisition's renewer thread shares with release()."""

    __slots__ = ("stop", "thread")

    def __init__(self) -> None:
        super().__init__()
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None


def _renew(
    client: Any, name: Any, token: str, lease_ms: int, interval: float, state: _Renewal
) -> None:
    # Holds the client, the key and the token, never the mutex: a mutex
    # dropped while held is collected, its finalizer sets ``stop``, and this
    # thread ends.
    command = _renew_command(name, token, lease_ms)
    while not state.stop.wait(interval):
        try:
            renewed = client.eval(*command)
        except Exception as exc:
            state.failed(exc)
            continue
        if not state.go_on(renewed):
            return


def _stop_renewal_in(cell: List[Optional[_Renewal]]) -> None:
    renewal = cell[0]
    if renewal is not None:
        renewal.stop.set()


class RedisMutex(_MutexBase, _RedisKey):
    """A lock shared by processes on any number of hosts through one Redis key.

    :param client: a synchronous redis-py client (``redis.Redis``,
        ``redis.cluster.RedisCluster``, or valkey's) that the caller already
        has; its connection pool is used
        as it is (a ``single_connection_client``'s connection is left to
        its owner: the mutex takes others from its pool).
    :param name: the key that holds the lock (str or bytes).
    :param lease: seconds the lock lasts if its holder goes away without
        releasing it (killed, frozen, cut off); a dead holder blocks others
        for at most this long.
    :param auto_renew: while the lock is held, a background thread extends
        the lease every ``lease / 3`` seconds, so a creator slower than the
        lease keeps it.  It stops at ``release()``, and when the mutex is
        garbage-collected.

    Acquiring sets the key to a random token, only if it does not exist
    (``SET NX PX``, in a script that also knows the key for its own when
    the client resends the command after a lost reply); releasing deletes
    it only if it still holds that token (one atomic script, which leaves
    a short-lived note so that a release the client resends after a lost
    reply finds it done), so a holder whose lease ran out never deletes a
    lock that someone else has taken since: ``release()`` raises
    ``LeaseLost`` instead.  A blocking ``acquire()`` waits on the server,
    not by polling: a BLPOP on a list that each release pushes to, until a
    release wakes it or the holder's lease runs out (at most 1 s per wait,
    the safety net for a wake-up that was lost; before Redis 6, which has
    no sub-second BLPOP, it polls with exponential back-off capped at
    0.1 s), and gives up after ``timeout``.  ``acquire_or_wait()`` takes a
    free lock or waits for the release without taking it, woken with every
    other such waiter by one entry the release adds to a stream.  If the
    server cannot be reached, the client's ConnectionError (or
    TimeoutError) is raised with the server's address in its message, and
    nothing is left locked.
    """

    __slots__ = ("_local", "_guard", "_made_with", "_server_wait")

    def __init__(
        self,
        client: Any,
        name: Union[str, bytes],
        lease: float = 30.0,
        auto_renew: bool = True,
    ) -> None:
        self._set_key(client, name, lease, auto_renew, asynchronous=False)
        self._local = threading.Lock()
        self._guard = threading.Lock()
        self._made_with = _thread.allocate_lock
        # Set when the one XREAD that threads of this process share ends
        # (see _wait_for_release), and the stream id it started from; None
        # while none is blocked.
        self._server_wait: Optional[Tuple[threading.Event, bytes]] = None
        # The current acquisition's renewal, in a list so that the finalizer
        # can stop it without keeping the mutex alive.
        self._renewal: List[Optional[_Renewal]] = [None]
        weakref.finalize(self, _stop_renewal_in, self._renewal)
        _instances.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock, waiting if ``blocking`` (at most ``timeout``
        seconds unless it is -1); return whether it was taken."""
        deadline = _deadline(blocking, timeout)
        self._locks_for_now()
        # Threads of this process queue here, without touching the server,
        # and only one of them at a time polls the key.
        if not self._local.acquire(bool(blocking), _remaining(deadline)):
            return False
        try:
            taken = self._acquire_key(bool(blocking), deadline)
        except BaseException:
            self._local.release()
            raise
        if not taken:
            self._local.release()
        return taken

    def acquire_or_wait(self, timeout: float = -1) -> bool:
        """Take the lock if it is free and return True, held as after
        ``acquire()``; otherwise wait, at most ``timeout`` seconds unless it
        is -1, for its holder to release it, and return False without
        taking it.

        For a caller that wants what the holder is making (a first value),
        not the lock: after a False it reads the value once, and calls
        again only if the value is still missing.  A False also comes when
        a wait ends without a release: the holder's lease ran out (it
        died), the 1 s safety net (less with a short ``socket_timeout``)
        for a wake-up that was missed or a lease renewed meanwhile, the
        ``timeout``, or the key was free but another thread of this
        process is taking it.  It never returns False for a lock it found
        free and could take.

        A take costs one command; a wait woken by the release costs two
        (one script that tries the key and reads the wake-up stream's last
        id, then an XREAD that blocks until the release adds past that id).
        Threads of this process waiting on this mutex share one XREAD, and
        so one connection of the client's pool (a bounded pool stays free
        for the holder's commands); the others send only the script.
        One release wakes every waiter in acquire_or_wait(), in any
        process, thread or task (``acquire()``'s waiters are woken one at
        a time).  Another thread of this process that holds or is taking
        the mutex is never overtaken: this one only looks at the key and
        waits for that thread's release, without the in-process lock (on
        the server while the key is held; on the in-process lock, with no
        command, while it is free).  Before
        Redis 5 (no streams; untested) the wait is a back-off sleep.
        Failures and Ctrl-C leave nothing held; an unreachable server
        raises as ``acquire()`` does.
        """
        deadline = _deadline(True, timeout)
        self._locks_for_now()
        token = secrets.token_hex(16)
        # Holding the in-process lock is what allows taking the key; it is
        # never held while this waits on the server.
        mine = self._local.acquire(False)
        if not mine:
            reply = self._take_or_look(token, False)
            if not _key_free(reply):
                return self._wait_for_release(reply, deadline)
            # The key is free, yet a thread of this process holds the mutex
            # (its lease ran out) or is taking it: its release is the one to
            # wait for, here, without a command.  (Returning at once would
            # have the caller read and ask again in a busy loop; taking the
            # key after it would have the caller miss what that thread made,
            # or its failure, and create again.)
            wait = _wake_wait(0, deadline, self._wake_cap)
            if wait is not None and self._local.acquire(True, wait):
                self._local.release()
            return False
        try:
            reply = self._take_or_look(token, True)
            if self._taken(reply):
                try:
                    self._start_holding(token)
                except BaseException:
                    self._delete_if_ours(token)
                    raise
                mine = False  # held: release() lets it go
                return True
        finally:
            if mine:
                self._local.release()
        return self._wait_for_release(reply, deadline)

    def _wait_for_release(self, reply: Any, deadline: Optional[float]) -> bool:
        """acquire_or_wait() after a try that did not take the key.

        One thread of this process blocks in XREAD; the others that come
        meanwhile wait for it to return, here.  A blocking command holds a
        connection of the client's pool until it returns: with one per
        waiting thread, a pool with ``max_connections`` fewer than the
        waiters would refuse (or, blocking, queue) the creator's own
        commands, the write of the value and the release that would end
        the wait."""
        plan = self._wake_plan(reply, deadline)
        if plan is None:
            return False
        streams, block, sleep = plan
        if streams is not None:
            since = streams[self._wake_stream]
            with self._guard:
                shared = self._server_wait
                lead = shared is None
                if lead:
                    event = threading.Event()
                    self._server_wait = (event, since)
            if shared is not None:
                join = _join_the_leader(since, shared[1])
                if join is False:
                    return False
                if join:
                    shared[0].wait(block / 1000)
                    return False
            # Leading, or not sure that the leader's XREAD wakes this one:
            # this one's own, from its own id.
            try:
                if self._may_block():
                    try:
                        # Returns when a release adds to the stream (at once
                        # if one already has since the script), or after
                        # ``block`` ms.
                        self._client.xread(streams, count=1, block=block)
                        return False
                    finally:
                        self._blocked_done()
                # Half the pool's connections are blocked in waits already:
                # one back-off step, the followers waiting for it.
                time.sleep(sleep)
                return False
            except Exception as exc:
                self._stream_failed(exc)
            finally:
                if lead:
                    with self._guard:
                        if self._server_wait is not None and self._server_wait[0] is event:
                            self._server_wait = None
                    event.set()
        time.sleep(sleep)
        return False

    def _take_or_look(self, token: str, take: bool) -> Any:
        try:
            return self._client.eval(*self._take_or_look_command(token, take))
        except BaseException as exc:
            # As in _acquire_key: a SET that may have reached the server is
            # taken back.
            if take and self._take_back_after(exc):
                self._delete_if_ours(token)
            failure = self._failure(exc, "acquire_or_wait()")
            if failure is not None:
                raise failure from exc
            raise

    def _acquire_key(self, blocking: bool, deadline: Optional[float]) -> bool:
        # A new token each time: a renewer or a release left over from an
        # earlier acquisition can never match this one's key.
        token = secrets.token_hex(16)
        delay: Optional[float] = _BACKOFF_FIRST
        while True:
            try:
                taken = self._client.eval(*self._acquire_command(token))
            except BaseException as exc:
                # The SET may have reached the server before the failure (a
                # timed-out reply, Ctrl-C): take back what is ours, if it is.
                if self._take_back_after(exc):
                    self._delete_if_ours(token)
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
                    self._client.blpop([self._wake_list], timeout=wait)
                    continue
                except Exception as exc:
                    self._wake_failed(exc)
                finally:
                    self._blocked_done()
            delay = _backoff(delay, deadline)  # type: ignore[arg-type]
            if delay is None:
                return False
        try:
            self._start_holding(token)
        except BaseException:
            self._delete_if_ours(token)
            raise
        return True

    def _start_holding(self, token: str) -> None:
        renewal = None
        if self._auto_renew:
            renewal = _Renewal()
            renewal.thread = threading.Thread(
                target=_renew,
                args=(self._client, self._name, token, self._lease_ms, self._lease / 3, renewal),
                name=f"dogpile RedisMutex renewer {self._name!r}",
                daemon=True,
            )
        with self._guard:
            self._token = token
            self._renewal[0] = renewal
        if renewal is not None:
            try:
                renewal.thread.start()  # type: ignore[union-attr]
            except BaseException:
                with self._guard:
                    self._token = None
                    self._renewal[0] = None
                raise

    def _delete_if_ours(self, token: str) -> None:
        try:
            self._client.eval(*self._delete_command(token))
        except Exception:
            pass  # unreachable: the lease ends it

    def release(self) -> None:
        """Release the lock; any thread may release it.

        Raises ``LeaseLost`` if the lock was no longer this mutex's (its
        lease ran out or the key was overwritten); the mutex is released
        either way, and a lock someone else holds now is left alone.
        """
        with self._guard:
            token = self._token
            if token is None:
                raise self._not_held()
            self._token = None
            renewal = self._renewal[0]
            self._renewal[0] = None
        if renewal is not None:
            # Not joined: a renewal in flight is a compare-and-expire on
            # this token, which cannot touch a lock taken after the delete.
            renewal.stop.set()
        try:
            try:
                deleted = self._client.eval(*self._release_command(token))
            except Exception as exc:
                failure = self._failure(exc, "release()")
                if failure is not None:
                    raise failure from exc
                raise
        finally:
            # After the delete, so that a thread of this process waiting
            # here finds the key gone instead of backing off.
            self._local.release()
        if not deleted:
            raise self._lease_lost(renewal)

    def locked(self) -> bool:
        """Whether anyone (this process or another) holds the lock now."""
        try:
            return bool(self._client.exists(self._name))
        except Exception as exc:
            failure = self._failure(exc, "locked()")
            if failure is not None:
                raise failure from exc
            raise

    def _forget_after_fork(self) -> None:
        # The parent's renewer did not come along; the parent still holds
        # the key and renews it.  The child must not release it.
        self._token = None
        self._renewal[0] = None
        self._local = threading.Lock()
        self._guard = threading.Lock()
        self._server_wait = None  # the parent's waiting thread did not come along
