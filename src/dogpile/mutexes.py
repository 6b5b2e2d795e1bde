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
waits on an in-process lock, not on the file or the server.

The ``redis`` package is an optional extra (``pip install
"dogpile[redis]"``), imported only when a RedisMutex is made.
"""

import _thread
import inspect
import math
import os
import random
import secrets
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Type, Union

from ._errors import LockError

__all__ = ["FileMutex", "RedisMutex", "AsyncRedisMutex", "LeaseLost"]


class LeaseLost(LockError):
    """``RedisMutex.release()`` found that the lock was no longer this
    mutex's: its lease ran out (or someone else set the key) while it was
    held.  Whatever lock is there now belongs to someone else and was left
    alone, and the mutex counts as released."""


# -- shared by both mutexes --------------------------------------------------------


def _deadline(blocking: Any, timeout: Any) -> Optional[float]:
    """Check ``acquire()``'s arguments as ``threading.Lock.acquire`` does and
    return the monotonic deadline (None: wait for ever)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__!r}")
    if not blocking:
        if timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking acquire()")
        return None
    if timeout == -1:
        return None
    if not timeout >= 0:  # also catches nan
        raise ValueError(
            f"timeout must be -1 (wait for ever) or a number of seconds >= 0, got {timeout!r}"
        )
    if math.isinf(timeout):
        return None
    return time.monotonic() + timeout


def _remaining(deadline: Optional[float]) -> float:
    """Seconds left before ``deadline`` as a ``threading.Lock`` timeout."""
    if deadline is None:
        return -1
    return max(0.0, deadline - time.monotonic())


# A waiter polls a lock it cannot wait on directly (a Redis key on a server
# before Redis 6; a file lock with a timeout, or on Windows) with
# exponential back-off from the first delay up to the cap, each sleep drawn
# from the upper half of the current delay so that waiting processes spread
# out instead of retrying in step.
# The cap bounds how late a waiter notices a release; at 0.1 s a hundred
# waiting processes cost the server a thousand cheap SETs a second.
_BACKOFF_FIRST = 0.002
_BACKOFF_CAP = 0.1


def _backoff(delay: float, deadline: Optional[float]) -> Optional[float]:
    """Sleep before the next try; return the next delay, or None when the
    deadline has passed and the caller should give up."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
    else:
        left = math.inf
    time.sleep(min(delay * (0.5 + 0.5 * random.random()), left))
    return min(delay * 2, _BACKOFF_CAP)


# A forked child has only the thread that forked.  A mutex the parent held
# (in any thread) must not count as held in the child: a release there would
# free the parent's lock (the child shares the parent's open file) or delete
# the parent's Redis key (the child has its token).  Each live mutex is
# reset to "not held" in the child; the parent's lock stays the parent's.
_instances: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for mutex in list(_instances):
        mutex._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# gevent and eventlet.  Monkey-patching replaces _thread.allocate_lock (the
# compiled core tests the same thing, see _core.pyx).  Each mutex queues this
# process's callers on an in-process lock; one made before the patching (a
# mutex built at import, before a gunicorn gevent worker patches) would block
# the OS thread, and with it the greenlet holding the mutex: acquire() makes
# new ones first (nothing holds the old ones: every acquisition since the
# patching came through here).  And a blocking flock() would stop every
# greenlet until another process unlocks: FileMutex polls instead.
_BUILTIN: Any = type(len)


def _cooperative() -> bool:
    return type(_thread.allocate_lock) is not _BUILTIN


class _MutexBase:
    __slots__ = ()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:  # pragma: no cover
        raise NotImplementedError

    def release(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def __enter__(self) -> "_MutexBase":
        self.acquire()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.release()


# -- FileMutex ----------------------------------------------------------------------

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock_file(fd: int) -> bool:
        # msvcrt locks a byte range from the current position; always byte 0
        # (a range past the end of the file is allowed), so every process
        # contends for the same byte whatever the file holds.
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _wait_lock_file(fd: int) -> None:
        # LK_LOCK gives up after ten one-second tries; poll instead.
        delay = _BACKOFF_FIRST
        while not _try_lock_file(fd):
            delay = _backoff(delay, None)  # type: ignore[assignment]

    def _unlock_file(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    # No blocking lock with the GIL released to wait on in a thread: poll.
    _FileWaiter = None

else:
    import fcntl

    def _try_lock_file(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _wait_lock_file(fd: int) -> None:
        # Blocks in the kernel with the GIL released; a signal interrupts it
        # and Python runs the handler (Ctrl-C raises) before retrying.
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock_file(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    class _FileWaiter:
        """A thread blocked in flock on its own descriptor (a dup of the
        caller's: the same open file, which a caller that gives up may
        close), for an acquire() with a timeout."""

        __slots__ = ("fd", "lock", "done", "locked", "error", "abandoned")

        def __init__(self, fd: int, path: str) -> None:
            self.fd = fd
            self.lock = threading.Lock()
            self.done = threading.Event()
            self.locked = False
            self.error: Optional[BaseException] = None
            self.abandoned = False
            try:
                threading.Thread(
                    target=self._run, name=f"dogpile FileMutex waiter {path!r}", daemon=True
                ).start()
            except BaseException:
                os.close(fd)
                raise

        def _run(self) -> None:
            try:
                _wait_lock_file(self.fd)
            except BaseException as exc:
                error: Optional[BaseException] = exc
            else:
                error = None
            with self.lock:
                self.locked = error is None
                self.error = error
                abandoned = self.abandoned
                self.done.set()
            if abandoned or error is not None:
                # Nobody waits for it: the lock must not stay with this
                # idle descriptor.
                try:
                    if error is None:
                        _unlock_file(self.fd)
                finally:
                    os.close(self.fd)

        def adopt(self) -> bool:
            """Wait on this waiter again, if it is still waiting."""
            with self.lock:
                if self.done.is_set():
                    return False
                self.abandoned = False
                return True

        def abandon(self) -> None:
            with self.lock:
                if not self.done.is_set():
                    self.abandoned = True
                    return
            if self.locked:  # taken after all, by nobody now
                try:
                    _unlock_file(self.fd)
                finally:
                    os.close(self.fd)

        def wait(self, deadline: float) -> Optional[int]:
            """The locked descriptor (now the caller's), or None at the
            deadline (the waiter goes on, abandoned)."""
            self.done.wait(max(0.0, deadline - time.monotonic()))
            with self.lock:
                if not self.done.is_set():
                    self.abandoned = True
                    return None
            if self.error is not None:
                raise self.error
            return self.fd


def _open_lock_file(path: str) -> int:
    """A descriptor of the lock file: read-write if allowed, else read-only
    (an advisory lock needs no write access, so services running as other
    users can share a file that one of them owns), created only when
    missing."""
    while True:
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            pass
        except PermissionError as exc:
            try:
                return os.open(path, os.O_RDONLY)
            except PermissionError as exc_ro:
                raise PermissionError(
                    exc_ro.errno,
                    f"FileMutex cannot open the lock file {path!r}: not for reading and "
                    f"writing ({exc.strerror}) nor read-only ({exc_ro.strerror}); it "
                    "needs read access at least",
                ) from None
            except FileNotFoundError:
                continue  # removed in between: create it
        try:
            # O_EXCL: when another process creates it first, open theirs
            # instead (the loop), so that both lock the same file.
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except PermissionError as exc:
            raise PermissionError(
                exc.errno,
                f"FileMutex cannot create the lock file {path!r}: it does not exist and "
                f"its directory does not allow creating it ({exc.strerror}); create it "
                "beforehand, readable by every user of the lock",
            ) from None


def _close_fd_in(cell: List[Optional[int]]) -> None:
    fd = cell[0]
    cell[0] = None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class FileMutex(_MutexBase):
    """A lock shared by the processes of one host through a lock file.

    :param path: the lock file (str, bytes or path-like).  It is opened
        read-write, or read-only when this user may not write it (locking
        needs only read access, so services running as different users can
        share one file); created if missing, and never deleted: deleting a
        lock file that another process has open would let a third one lock
        a new file of the same name while the second still holds the old
        one.  Every process must
        use the same path, on a local file system (advisory locks over NFS
        are not reliable).

    A process that dies loses its lock at once: the operating system
    releases it with the process's files.  Threads of one process are
    serialized by an in-process lock before they reach the file.
    """

    __slots__ = ("_path", "_local", "_guard", "_made_with", "_fd", "_waiter", "__weakref__")

    def __init__(self, path: "Union[str, bytes, os.PathLike[str], os.PathLike[bytes]]") -> None:
        try:
            # One spelling (str) for the path in repr and error messages.
            self._path: str = os.fsdecode(path)
        except TypeError:
            raise TypeError(
                f"FileMutex needs a file path (str, bytes or path-like), "
                f"not {type(path).__name__!r}"
            ) from None
        # Created (and checked) now, so a path that cannot work (no such
        # directory, no permission, a directory) fails here, not at the
        # first regeneration in production.
        os.close(self._open())
        self._local = threading.Lock()
        self._guard = threading.Lock()
        self._made_with = _thread.allocate_lock
        # The open, locked descriptor while held; in a list so that the
        # finalizer below can close it without keeping the mutex alive.
        self._fd: List[Optional[int]] = [None]
        # A thread blocked in flock for a timed acquire() (see _wait_within).
        self._waiter: Optional[Any] = None
        # A mutex dropped while held would otherwise keep the file locked
        # until the process exits; closing the descriptor unlocks it.
        weakref.finalize(self, _close_fd_in, self._fd)
        _instances.add(self)

    @property
    def path(self) -> str:
        """The lock file."""
        return self._path

    def _open(self) -> int:
        return _open_lock_file(self._path)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock, waiting if ``blocking`` (at most ``timeout``
        seconds unless it is -1); return whether it was taken."""
        deadline = _deadline(blocking, timeout)
        if _thread.allocate_lock is not self._made_with:
            self._local = threading.Lock()
            self._guard = threading.Lock()
            self._made_with = _thread.allocate_lock
        if not self._local.acquire(bool(blocking), _remaining(deadline)):
            return False
        try:
            # A descriptor per acquisition: flock belongs to the open file,
            # so a fresh one is what contends with every other holder,
            # including other FileMutex objects on the same path in this
            # process.
            fd = self._open()
            try:
                locked = self._lock_file(fd, blocking, deadline)
            except BaseException:
                os.close(fd)
                raise
            if locked != fd:
                os.close(fd)
            if locked is None:
                self._local.release()
                return False
        except BaseException:
            self._local.release()
            raise
        self._fd[0] = locked
        return True

    def _lock_file(self, fd: int, blocking: bool, deadline: Optional[float]) -> Optional[int]:
        """Lock the file; return the descriptor that holds the lock (``fd``,
        or a waiter's), or None if it was not taken."""
        if _try_lock_file(fd):
            return fd
        if not blocking:
            return None
        if deadline is None and not _cooperative():
            _wait_lock_file(fd)
            return fd
        if deadline is not None and _FileWaiter is not None and not _cooperative():
            return self._wait_within(fd, deadline)
        # flock has no timeout, and under gevent or eventlet must not block
        # the OS thread: poll (time.sleep is then the hub's).
        delay: Optional[float] = _BACKOFF_FIRST
        while True:
            delay = _backoff(delay, deadline)  # type: ignore[arg-type]
            if _try_lock_file(fd):
                return fd
            if delay is None:
                return None

    def _wait_within(self, fd: int, deadline: float) -> Optional[int]:
        # flock has no timeout: a waiter thread blocks in it (without the
        # GIL), and this thread waits for the waiter until the deadline.  A
        # waiter outlives a caller that gave up: the next acquire() takes
        # it over (so there is at most one per mutex), and one that gets
        # the lock with nobody waiting for it unlocks at once.
        assert _FileWaiter is not None
        waiter = self._waiter
        if waiter is None or not waiter.adopt():
            if deadline - time.monotonic() <= 0:
                return None
            waiter = self._waiter = _FileWaiter(os.dup(fd), self._path)
        try:
            locked = waiter.wait(deadline)
        except BaseException:
            waiter.abandon()
            raise
        if locked is not None:
            self._waiter = None
        return locked

    def release(self) -> None:
        """Release the lock; any thread may release it."""
        with self._guard:
            fd = self._fd[0]
            if fd is None:
                raise LockError(f"release(): FileMutex({self._path!r}) is not held")
            self._fd[0] = None
        try:
            # Explicitly, not only by closing: a copy of the descriptor
            # inherited by a child process would keep the lock alive.
            _unlock_file(fd)
        finally:
            os.close(fd)
            self._local.release()

    def locked(self) -> bool:
        """Whether the lock is held, by this process or another one.

        Another process's lock is detected by trying to take the file lock
        for an instant, so a concurrent ``acquire(False)`` elsewhere can
        fail because of this call: use it for diagnostics, not to decide.
        """
        if self._local.locked():
            return True
        fd = self._open()
        try:
            if _try_lock_file(fd):
                _unlock_file(fd)
                return False
            return True
        finally:
            os.close(fd)

    def _forget_after_fork(self) -> None:
        # The descriptor is the parent's open file: closing the child's copy
        # leaves the parent's lock in place.  So is a waiter's, whose thread
        # stayed in the parent.
        _close_fd_in(self._fd)
        waiter = self._waiter
        self._waiter = None
        if waiter is not None:
            _close_fd_in([waiter.fd])
        self._local = threading.Lock()
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        state = "held" if self._fd[0] is not None else "free"
        return f"<FileMutex {self._path!r} {state} here>"


# -- RedisMutex ---------------------------------------------------------------------

# SET NX PX, made idempotent: redis-py resends a command whose reply was lost
# to a connection failure (by default since 6.0), and a plain SET NX resent
# after it had worked would find the key taken, by this very token, and
# report the lock busy until its lease ran out.
#
# Taken: 1.  Not taken: -1 - the milliseconds left on the holder's lease
# (so at most -1), or 0 for a key without an expiry: how long a waiter may
# block before the lease ends by itself (see _wake_wait).
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
local left = redis.call('pttl', KEYS[1])
if left < 0 then
    return 0
end
return -1 - left
"""

# Compare-and-delete and compare-and-expire: atomic on the server, so a
# holder whose lease ran out never deletes or extends a lock that someone
# else has taken since.  _DELETE_IF_OURS takes back a key that a failed or
# cancelled acquire() may have set.
_DELETE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

# release(): compare-and-delete, made idempotent.  redis-py resends a
# command whose reply was lost (a socket timeout, a dropped connection), and
# the resent release finds the key gone, deleted by its own first run, or
# already taken by a waiter since: from the key alone that looks like a
# lease that ran out, and release() would raise LeaseLost for a lock it
# held to the end.  Neither the key nor the client's clock can tell the
# two apart (the client cannot see that its command was resent), so the
# run that deletes leaves a note: a key of its own, named after this
# token, that expires after _RELEASED_MS.  A run that finds the note
# succeeds: this token's lock was released by this very release().  One
# that finds neither its token nor the note raises LeaseLost as before:
# the key had expired, or someone else had taken it, before the release
# ran.  A minute is far longer than a client's retries take (redis-py's
# default: 3 retries, back-off capped at 0.5 s, each after a socket
# timeout); a note per release costs one small key for that minute.
#
# It also wakes a waiter: KEYS[3] is a list that waiters block on (BLPOP)
# instead of polling the key.  It holds one element after a release (any
# number of releases), and expires after a lease (ARGV[3]) so that nothing
# is left behind; a waiter that pops a stale one tries the key once more
# and waits again.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('set', KEYS[2], '1', 'PX', ARGV[2])
    redis.call('del', KEYS[3])
    redis.call('rpush', KEYS[3], '1')
    redis.call('pexpire', KEYS[3], ARGV[3])
    return redis.call('del', KEYS[1])
end
return redis.call('exists', KEYS[2])
"""
_RELEASED_MS = 60_000

# A waiter blocks on the wake-up list until a release pushes to it, or at
# most until the holder's lease ends (the holder died: nobody releases), and
# never longer than this: the safety net for a wake-up that was lost (taken
# by a waiter that then lost the key to a newcomer, or cut off with its
# connection), and for a lease that was renewed meanwhile.
_WAKE_CAP = 1.0


def _released_key(name: Union[str, bytes], token: str) -> bytes:
    """The note a release leaves for ``token`` (see _RELEASE)."""
    return _sibling_key(name, b":dogpile-released:" + token.encode())


def _wake_key(name: Union[str, bytes]) -> bytes:
    """The list that waiters for ``name`` block on (see _RELEASE)."""
    return _sibling_key(name, b":dogpile-wake")


def _sibling_key(name: Union[str, bytes], suffix: bytes) -> bytes:
    """A key of the mutex's own, in the same hash slot as the lock key
    ``name``: Redis Cluster runs a script only on keys of one slot.  A name
    with a hash tag ``{...}`` gives its slot to any key that starts with
    it; a name without one is hashed whole, which ``{name}`` reproduces
    unless the name holds a "}"."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    start = raw.find(b"{")
    if start >= 0 and raw.find(b"}", start + 1) > start + 1:
        return raw + suffix
    if b"}" not in raw:
        return b"{" + raw + b"}" + suffix
    return raw + suffix  # no key shares its slot; right on one server


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_INSTALL_HINT = 'RedisMutex needs the redis client: pip install "dogpile[redis]"'


def _client_errors(client: Any) -> Tuple[Type[BaseException], ...]:
    """The exceptions that mean "the server could not be reached", from the
    client's own package (redis-py, or its fork valkey)."""
    package = type(client).__module__.partition(".")[0]
    if package == "valkey":
        try:
            import valkey.exceptions as exceptions
        except ImportError:  # pragma: no cover - a valkey client without valkey
            raise ImportError(_INSTALL_HINT) from None
    else:
        try:
            import redis.exceptions as exceptions
        except ImportError as exc:
            raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    return (exceptions.ConnectionError, exceptions.TimeoutError)


def _wake_cap(client: Any) -> float:
    """The longest a waiter blocks in one BLPOP: _WAKE_CAP, and less than
    the client's socket timeout, which would otherwise cut the wait off."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    timeout = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
    if isinstance(timeout, (int, float)) and timeout > 0:
        return min(_WAKE_CAP, timeout / 2)
    return _WAKE_CAP


def _wake_wait(taken: int, deadline: Optional[float], cap: float) -> Optional[float]:
    """Seconds a waiter may block after ``_ACQUIRE`` returned ``taken`` (<= 0):
    until the holder's lease ends, within ``cap`` and the deadline; None
    when the deadline has passed."""
    wait = cap if taken == 0 else min(cap, (-1 - taken) / 1000)
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        wait = min(wait, left)
    # BLPOP's 0 would wait for ever; its resolution is a millisecond.
    return max(wait, 0.001)


def _single_connection(client: Any) -> bool:
    """Is ``client`` redis-py's ``single_connection_client`` (sync, where the
    connection is taken at construction, or asyncio, where redis-py 4.2
    takes it at the first command)?"""
    return (
        getattr(client, "connection", None) is not None
        or getattr(client, "single_connection_client", False) is True
        or getattr(client, "_single_connection_client", False) is True
    )


def _mutex_client(client: Any) -> Any:
    """The client the mutex sends its commands through.

    A single-connection client has one connection for all its callers.
    redis-py up to 5.2 does not guard it against two threads at once (the
    renewer's reply went to the caller's GET, and the caller's to the
    renewer), and from 5.3 a lock serializes it, so a renewal queued behind
    the caller's blocking command lets the lease run out.  The mutex
    leaves that connection to its owner: a client of the same class over
    the same pool (same server, database and options) takes connections of
    its own, one per command, as any pooled client does."""
    if not _single_connection(client):
        return client
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        raise TypeError(
            f"a single-connection {type(client).__name__!r} without a connection_pool: "
            "the mutex's renewal cannot share that connection safely; pass a pooled "
            "client (the default, single_connection_client=False)"
        )
    return type(client)(connection_pool=pool)


def _server_address(client: Any) -> str:
    """host:port/db (or the socket path) of the client's server, for errors."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, dict):
        db = kwargs.get("db", 0)
        if kwargs.get("path"):
            return f"unix:{kwargs['path']}?db={db}"
        if "host" in kwargs:
            return f"{kwargs['host']}:{kwargs.get('port', 6379)}/{db}"
    text = repr(client)
    return text if len(text) <= 80 else text[:77] + "..."


def _lease_ms(lease: Any) -> int:
    if isinstance(lease, bool) or not isinstance(lease, (int, float)):
        raise TypeError(f"lease must be a number of seconds, not {type(lease).__name__!r}")
    if not (lease > 0 and math.isfinite(lease)):
        raise ValueError(f"lease must be a finite number of seconds > 0, got {lease!r}")
    ms = int(lease * 1000)
    if ms < 1:
        # PX counts whole milliseconds; 0 would be an error from the server.
        raise ValueError(f"lease must be at least 0.001 seconds (1 ms), got {lease!r}")
    return ms


class _Renewal:
    """What one acquisition's renewer thread shares with release()."""

    __slots__ = ("stop", "lost", "error", "thread")

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lost = False  # the renewer found the key gone or someone else's
        self.error: Optional[BaseException] = None  # its last failure, if any
        self.thread: Optional[threading.Thread] = None


def _renew(
    client: Any, name: Any, token: str, lease_ms: int, interval: float, state: _Renewal
) -> None:
    # Holds the client, the key and the token, never the mutex: a mutex
    # dropped while held is collected, its finalizer sets ``stop``, and this
    # thread ends.
    while not state.stop.wait(interval):
        try:
            renewed = client.eval(_RENEW, 1, name, token, lease_ms)
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
    if renewal is not None:
        renewal.stop.set()


class _RedisKey:
    """What RedisMutex and AsyncRedisMutex (in _aio_redis) share: the key,
    its lease and their checks.  The lock protocol differs (threads and a
    renewal thread, or tasks and a renewal task), and so does ``_renewal``,
    which each sets up."""

    __slots__ = (
        "_client",
        "_name",
        "_lease",
        "_lease_ms",
        "_auto_renew",
        "_errors",
        "_token",
        "_renewal",
        "_wake_list",
        "_wake",
        "_wake_cap",
        "__weakref__",
    )

    def _set_key(
        self, client: Any, name: Union[str, bytes], lease: float, auto_renew: bool
    ) -> None:
        if not isinstance(name, (str, bytes)):
            raise TypeError(f"name must be a str or bytes key, not {type(name).__name__!r}")
        if not name:
            raise ValueError("name must be a non-empty key")
        self._lease_ms = _lease_ms(lease)
        self._lease = float(lease)
        self._client = _mutex_client(client)
        self._wake_list = _wake_key(name)
        self._wake = True  # False once the server refused a BLPOP (Redis < 6)
        self._wake_cap = _wake_cap(self._client)
        self._name = name
        self._auto_renew = bool(auto_renew)
        self._token: Optional[str] = None

    @property
    def name(self) -> Union[str, bytes]:
        """The key that holds the lock."""
        return self._name

    @property
    def lease(self) -> float:
        """Seconds the lock outlives a holder that went away."""
        return self._lease

    @property
    def auto_renew(self) -> bool:
        """Whether a held lock's lease is extended until release()."""
        return self._auto_renew


class RedisMutex(_MutexBase, _RedisKey):
    """A lock shared by processes on any number of hosts through one Redis key.

    :param client: a synchronous redis-py client (``redis.Redis``, or
        valkey's) that the caller already has; its connection pool is used
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
    0.1 s), and gives up after ``timeout``.  If the server cannot be
    reached, the client's ConnectionError (or TimeoutError) is raised with
    the server's address in its message, and nothing is left locked.
    """

    __slots__ = ("_local", "_guard", "_made_with")

    def __init__(
        self,
        client: Any,
        name: Union[str, bytes],
        lease: float = 30.0,
        auto_renew: bool = True,
    ) -> None:
        self._errors = _client_errors(client)
        # eval and exists are what the mutex calls (its SET runs inside a
        # script); set is there to tell a Redis client from other objects
        # that happen to have an eval().
        for method in ("set", "eval", "exists"):
            function = getattr(client, method, None)
            if not callable(function):
                raise TypeError(
                    "RedisMutex needs a redis client (redis.Redis or valkey.Valkey), "
                    f"not {type(client).__name__!r}, which has no {method}()"
                )
            # redis.asyncio's command methods are plain functions that return
            # the coroutine of an async execute_command.
            if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
                getattr(client, "execute_command", None)
            ):
                raise TypeError(
                    f"RedisMutex needs a synchronous redis client, not the asyncio "
                    f"{type(client).__name__!r}: its calls return coroutines that "
                    "a lock cannot wait for"
                )
        self._set_key(client, name, lease, auto_renew)
        self._local = threading.Lock()
        self._guard = threading.Lock()
        self._made_with = _thread.allocate_lock
        # The current acquisition's renewal, in a list so that the finalizer
        # can stop it without keeping the mutex alive.
        self._renewal: List[Optional[_Renewal]] = [None]
        weakref.finalize(self, _stop_renewal_in, self._renewal)
        _instances.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock, waiting if ``blocking`` (at most ``timeout``
        seconds unless it is -1); return whether it was taken."""
        deadline = _deadline(blocking, timeout)
        if _thread.allocate_lock is not self._made_with:
            self._local = threading.Lock()
            self._guard = threading.Lock()
            self._made_with = _thread.allocate_lock
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

    def _acquire_key(self, blocking: bool, deadline: Optional[float]) -> bool:
        # A new token each time: a renewer or a release left over from an
        # earlier acquisition can never match this one's key.
        token = secrets.token_hex(16)
        delay: Optional[float] = _BACKOFF_FIRST
        while True:
            try:
                taken = self._client.eval(_ACQUIRE, 1, self._name, token, self._lease_ms)
            except BaseException as exc:
                # The SET may have reached the server before the failure (a
                # timed-out reply, Ctrl-C): take back what is ours, if it is.
                # Not after a ConnectionError: the client has already retried
                # and failed to reach the server, another try would only
                # double the caller's wait, and the lease ends the key anyway.
                if not isinstance(exc, self._errors[0]):
                    self._delete_if_ours(token)
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
                    self._client.blpop([self._wake_list], timeout=wait)
                    continue
                except self._errors as exc:
                    raise self._unreachable(exc, "acquire()") from exc
                except Exception:
                    # A server before Redis 6 takes whole seconds only:
                    # poll with back-off instead, as before wake-ups.
                    self._wake = False
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
            self._client.eval(_DELETE_IF_OURS, 1, self._name, token)
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
                raise LockError(f"release(): RedisMutex {self._name!r} is not held")
            self._token = None
            renewal = self._renewal[0]
            self._renewal[0] = None
        if renewal is not None:
            # Not joined: a renewal in flight is a compare-and-expire on
            # this token, which cannot touch a lock taken after the delete.
            renewal.stop.set()
        try:
            try:
                deleted = self._client.eval(
                    _RELEASE, 3, self._name, _released_key(self._name, token),
                    self._wake_list, token, _RELEASED_MS, self._lease_ms,
                )
            except self._errors as exc:
                raise self._unreachable(exc, "release()") from exc
        finally:
            # After the delete, so that a thread of this process waiting
            # here finds the key gone instead of backing off.
            self._local.release()
        if not deleted:
            how = (
                "the lease was not renewed" if renewal is None
                else "the renewer found it gone or taken"
                if renewal.lost
                else "the key was gone or held another token at release"
            )
            if renewal is not None and renewal.error is not None:
                how += f"; the last renewal failed: {renewal.error}"
            raise LeaseLost(
                f"RedisMutex {self._name!r} lost its lock before release() "
                f"(lease {self._lease:g} s; {how}); the key was left alone"
            )

    def locked(self) -> bool:
        """Whether anyone (this process or another) holds the lock now."""
        try:
            return bool(self._client.exists(self._name))
        except self._errors as exc:
            raise self._unreachable(exc, "locked()") from exc

    def _unreachable(self, exc: BaseException, during: str) -> BaseException:
        message = (
            f"RedisMutex {self._name!r}: cannot reach the Redis server at "
            f"{_server_address(self._client)} during {during}: {exc}"
        )
        try:
            # The client's own class, so ``except redis.ConnectionError``
            # in the caller still catches it.
            return type(exc)(message)
        except Exception:  # pragma: no cover - a class with another signature
            return ConnectionError(message)

    def _forget_after_fork(self) -> None:
        # The parent's renewer did not come along; the parent still holds
        # the key and renews it.  The child must not release it.
        self._token = None
        self._renewal[0] = None
        self._local = threading.Lock()
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        state = "held" if self._token is not None else "free"
        return (
            f"<RedisMutex {self._name!r} at {_server_address(self._client)} "
            f"lease={self._lease:g} auto_renew={self._auto_renew} {state} here>"
        )


# -- AsyncRedisMutex ------------------------------------------------------------
# The same key protocol over redis.asyncio, in _aio_redis (which imports the
# scripts above); loaded on first use, so that the threading mutexes do not
# import asyncio (and so that the two modules can import each other in
# either order).
if TYPE_CHECKING:
    from ._aio_redis import AsyncRedisMutex as AsyncRedisMutex


def __getattr__(name: str) -> Any:
    if name == "AsyncRedisMutex":
        from ._aio_redis import AsyncRedisMutex

        return AsyncRedisMutex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
