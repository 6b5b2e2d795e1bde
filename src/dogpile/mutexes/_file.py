"""FileMutex: the processes of one host, through an OS advisory lock on a
file (``flock`` on POSIX, ``msvcrt.locking`` on Windows)."""

import _thread
import os
import sys
import threading
import time
import weakref
from typing import Any, List, Optional, Union

from .._errors import LockError
from ._common import (
    _BACKOFF_FIRST,
    _backoff,
    _cooperative,
    _deadline,
    _instances,
    _MutexBase,
    _remaining,
)

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

    def _look_unlocked(fd: int, block: bool) -> bool:
        # No shared lock: take the byte for an instant.  Never blocks.
        if not _try_lock_file(fd):
            return False
        _unlock_file(fd)
        return True

    # No blocking lock with the GIL released to wait on in a thread: poll.
    _FileWaiter = None
    _ReleaseWatcher = None

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

    def _look_unlocked(fd: int, block: bool) -> bool:
        """Is the file free of an exclusive lock (waiting for one to end, if
        ``block``)?  Holds a shared lock on ``fd`` for an instant: every
        shared waiter is granted at the holder's unlock, together, and none
        keeps it.  ``fd`` must be an open file of its own, never a holder's
        (or a dup of it): flock on the same open file would turn the
        holder's exclusive lock into this shared one."""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if block else fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True

    class _ReleaseWatcher:
        """A thread blocked in a shared flock on an open file of its own, for
        an acquire_or_wait() with a timeout: ``done`` is set when the
        holder's lock ends (or the flock failed: ``error``).  It outlives a
        caller that gave up, holding nothing while it waits and a shared
        lock for an instant after the release; the mutex's next waiters
        wait on it instead of starting another."""

        __slots__ = ("fd", "done", "error")

        def __init__(self, fd: int, path: str) -> None:
            self.fd: Optional[int] = fd
            self.done = threading.Event()
            self.error: Optional[BaseException] = None
            try:
                threading.Thread(
                    target=self._run, name=f"dogpile FileMutex watcher {path!r}", daemon=True
                ).start()
            except BaseException:
                self.fd = None
                os.close(fd)
                raise

        def _run(self) -> None:
            try:
                _look_unlocked(self.fd, True)  # type: ignore[arg-type]
            except BaseException as exc:
                self.error = exc
            finally:
                # Forgotten before it is closed: a child forked in between
                # leaks its copy instead of closing a number reused since.
                fd, self.fd = self.fd, None
                if fd is not None:
                    os.close(fd)
                self.done.set()

        def wait(self, deadline: float) -> None:
            self.done.wait(max(0.0, deadline - time.monotonic()))
            if self.done.is_set() and self.error is not None:
                raise self.error

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

    __slots__ = (
        "_path", "_local", "_guard", "_made_with", "_fd", "_waiter", "_watcher", "__weakref__",
    )

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
        # A thread blocked in a shared flock for acquire_or_wait() with a
        # timeout (see _wait_released).
        self._watcher: Optional[Any] = None
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
        self._locks_for_now()
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

    def acquire_or_wait(self, timeout: float = -1) -> bool:
        """Take the lock if it is free and return True, held as after
        ``acquire()``; otherwise wait, at most ``timeout`` seconds unless it
        is -1, for its holder to release it, and return False without
        taking it.

        For a caller that wants what the holder is making (a first value),
        not the lock: after a False it reads the value once, and calls
        again only if it is still missing.  A False also comes at the
        ``timeout``.  Another thread of this process that holds or is
        taking the mutex is waited for: its release ends the wait.

        On POSIX the wait is a shared ``flock`` on an open file of its own
        (never the holder's), blocking without the GIL: the kernel grants
        every shared waiter, in any process, when the exclusive holder
        unlocks, and each lets go at once.  With a timeout a thread blocks
        in it instead (one per mutex at a time, left to finish after a
        caller that gave up: it holds nothing while it waits, and a shared
        lock for an instant after the release, when an ``acquire(False)``
        elsewhere may find the file busy).  Under gevent or eventlet, and
        on Windows, it polls with back-off instead.
        """
        deadline = _deadline(True, timeout)
        self._locks_for_now()
        # Another thread of this process holds or is taking the mutex: wait
        # for the file like another process, without the in-process lock.
        if self._local.acquire(False):
            held = False
            try:
                fd = self._open()
                try:
                    held = _try_lock_file(fd)
                finally:
                    if not held:
                        os.close(fd)
                if held:
                    self._fd[0] = fd
            finally:
                if not held:
                    self._local.release()
            if held:
                return True
            self._wait_released(deadline)
            return False
        # Another thread of this process holds the mutex or is taking it:
        # wait for the file like another process would, then for that
        # thread's in-process lock, which a thread that is taking the file
        # (or polling for it under gevent) holds while the file looks free;
        # returning then would have the caller read and ask again in a busy
        # loop.
        self._wait_released(deadline)
        if self._local.acquire(True, _remaining(deadline)):
            self._local.release()
        return False

    def _wait_released(self, deadline: Optional[float]) -> None:
        """Wait until no one holds the file (or the deadline); hold nothing."""
        if _ReleaseWatcher is None or _cooperative():
            # Never block the OS thread under gevent or eventlet (time.sleep
            # is then the hub's); Windows has no shared lock to wait on.
            fd = self._open()
            try:
                delay: Optional[float] = _BACKOFF_FIRST
                while not _look_unlocked(fd, False):
                    delay = _backoff(delay, deadline)  # type: ignore[arg-type]
                    if delay is None:
                        return
            finally:
                os.close(fd)
            return
        if deadline is None:
            fd = self._open()
            try:
                # A signal interrupts it and Python runs the handler (Ctrl-C
                # raises); the descriptor's close lets go of anything.
                _look_unlocked(fd, True)
            finally:
                os.close(fd)
            return
        with self._guard:
            watcher = self._watcher
            if watcher is None or watcher.done.is_set():
                if deadline - time.monotonic() <= 0:
                    return
                watcher = self._watcher = _ReleaseWatcher(self._open(), self._path)
        watcher.wait(deadline)

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
        if _FileWaiter is not None and deadline is not None and not _cooperative():
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
        watcher = self._watcher
        self._watcher = None
        if watcher is not None:
            _close_fd_in([watcher.fd])
        self._local = threading.Lock()
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        state = "held" if self._fd[0] is not None else "free"
        return f"<FileMutex {self._path!r} {state} here>"
