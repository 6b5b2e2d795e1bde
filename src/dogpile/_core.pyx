# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=False
#
# Not declared freethreading_compatible: the fresh-hit path reads a
# Dogpile's value and creation time without a lock, relying on the GIL to
# make that pair of reads (and the INCREF of the value) atomic with respect
# to a creator that replaces them.  On a free-threaded build the
# interpreter therefore turns the GIL back on when it imports this module.
"""The dogpile lock, compiled.

The twin of ``_core_py.py`` (the readable specification): same classes,
signatures, docstrings and behaviour.  What is different is underneath: a
fresh hit is a few C comparisons and one clock read, and the creation lock
is a 64-bit word over the native mutex in ``_native_lock.h``, waited on
with the GIL released.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.math cimport INFINITY, isnan, log
from libc.stdint cimport uint64_t

import logging as _logging
import os as _os
import threading as _threading
from weakref import ref as _weakref_ref

from ._checks import (
    check_acquire_args,
    check_callable,
    check_executor,
    check_lock,
    check_lock_timeout,
    createdtime_seconds,
    early_refresh_beta,
    expiretime_public,
    expiretime_seconds,
    unpack_pair,
    wait_timeout_seconds,
)
from ._errors import LockError, LockTimeout, NeedRegenerationException
# The weakref callback of NameRegistry runs once per dead entry, never on a
# lookup: one definition of it serves both implementations.
from ._core_py import _Forget

__all__ = [
    "Dogpile",
    "SyncReaderDogpile",
    "Lock",
    "NameRegistry",
    "ReadWriteMutex",
]


cdef extern from "_native_lock.h" nogil:
    ctypedef uint64_t dp_word
    ctypedef struct dp_rwstate:
        long readers
        long writers_waiting
        int writer
        unsigned long writer_ident
    int dp_module_init()
    double dp_now()
    double dp_monotonic()
    double dp_random()
    void dp_random_seed(uint64_t seed)
    int dp_expired(double createdtime, double expiretime)
    dp_word dp_try_acquire(dp_word *w)
    dp_word dp_acquire_slice(dp_word *w, double seconds)
    int dp_release(dp_word *w, dp_word tag)
    int dp_word_held(dp_word *w)
    int dp_rw_read_slice(dp_rwstate *rw, double seconds)
    int dp_rw_write_slice(dp_rwstate *rw, unsigned long ident, double seconds)
    int dp_rw_read_release(dp_rwstate *rw)
    int dp_rw_write_release(dp_rwstate *rw, unsigned long ident)

cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident()


if dp_module_init() != 0:
    raise OSError("dogpile: could not initialise the native mutexes")
dp_random_seed(int.from_bytes(_os.urandom(8), "little"))

cdef object _NO_VALUE = object()
cdef object _log = _logging.getLogger("dogpile")
cdef int _DEBUG = _logging.DEBUG

# How long a blocked main thread sleeps before it looks for a signal (its
# KeyboardInterrupt arrives within this).  Other threads never receive
# signals in CPython, so they sleep until woken.
cdef double _SIGNAL_SLICE = 0.02
cdef double _FOREVER = 1e9


cdef inline bint _expired(double createdtime, double expiretime) noexcept nogil:
    return dp_expired(createdtime, expiretime)


def _is_expired(double createdtime, double expiretime):
    """The expiry rule, for front ends written in Python (dogpile.aio):
    no value (createdtime <= 0), older than expiretime, or further ahead
    than expiretime."""
    return _expired(createdtime, expiretime)


cdef inline object _pair(object result, str source, double *createdtime):
    """Split a (value, createdtime) pair; the common exact-tuple-of-float
    case inline, everything else (and every error) through _checks."""
    cdef object t
    if type(result) is tuple and PyTuple_GET_SIZE(result) == 2:
        t = (<tuple>result)[1]
        if type(t) is float and not isnan(PyFloat_AS_DOUBLE(t)):
            createdtime[0] = PyFloat_AS_DOUBLE(t)
            return (<tuple>result)[0]
    value, ct = unpack_pair(result, source)
    createdtime[0] = ct
    return value


cdef inline double _seconds(object expiretime) except? -1:
    if type(expiretime) is float:
        if expiretime >= 0:  # false for nan
            return PyFloat_AS_DOUBLE(expiretime)
    elif expiretime is None:
        return INFINITY
    elif type(expiretime) is int:
        if expiretime >= 0:
            return <double>expiretime
    return expiretime_seconds(expiretime)


cdef bint _in_main_thread():
    return PyThread_get_thread_ident() == _threading.main_thread().ident


cdef dp_word _wait_word(dp_word *word, double timeout) except? 0:
    """Block until the lock word is ours and return its tag, or 0 once
    ``timeout`` seconds (< 0: no limit) have passed.  The wait happens
    without the GIL; the main thread wakes every _SIGNAL_SLICE to run signal
    handlers, so Ctrl-C interrupts it as it would a threading.Lock.acquire()."""
    cdef dp_word tag = dp_try_acquire(word)
    cdef double slice, left
    cdef double deadline = -1.0
    if tag:
        return tag
    cdef double longest = _SIGNAL_SLICE if _in_main_thread() else _FOREVER
    if timeout >= 0:
        deadline = dp_monotonic() + timeout
    while True:
        slice = longest
        if deadline >= 0:
            left = deadline - dp_monotonic()
            if left <= 0:
                return 0
            if left < slice:
                slice = left
        with nogil:
            tag = dp_acquire_slice(word, slice)
        if tag:
            return tag
        PyErr_CheckSignals()


# States of a creation attempt.
cdef enum:
    _PENDING = 0
    _CREATED = 1
    _FAILED = 2
    _ABANDONED = 3


@cython.final
cdef class _Attempt:
    """One run of a creator, as seen by the callers waiting for it."""

    cdef unsigned long owner
    cdef int state
    cdef object result

    cdef object outcome(self):
        """The creator's value, or its exception raised again."""
        if self.state == _FAILED:
            raise self.result
        if self.state == _CREATED:
            return self.result
        raise LockError("the creation this caller waited for was abandoned")


@cython.final
cdef class _Options:
    """What a Dogpile was built with beyond the defaults, kept apart so that
    a plain Dogpile stays small (a NameRegistry may hold 100,000)."""

    cdef object lock          # a custom lock, or None for the native word
    cdef double wait_timeout  # < 0: wait as long as it takes
    cdef object background    # an Executor, or None
    cdef double beta          # early_refresh; 0: off
    cdef double delta         # seconds the last creation took


cdef class Dogpile:
    """A lock that lets one caller create a value while every other caller
    keeps using the previous one.

    :param expiretime: seconds a created value stays fresh (int or float,
        >= 0), or None for never.
    :param init: if true, the value counts as created now.
    :param lock: an object with ``acquire()``, ``acquire(False)`` and
        ``release()`` (a cross-process mutex, say); default: a native mutex
        of the compiled core, or a ``threading.Lock``.
    :param wait_timeout: seconds a caller waits for a first value that
        another caller is creating before it gives up with LockTimeout;
        None waits as long as it takes.
    :param background: a ``concurrent.futures.Executor``: an expired value
        is recreated there while the caller that noticed it gets the stale
        value at once.
    :param early_refresh: beta of probabilistic early recomputation
        (XFetch); a caller may recreate a value shortly before it expires,
        more eagerly the longer creation takes (1.0 is the usual choice).
    """

    # 128 bytes with the GC header, the budget of a plain Dogpile: hence
    # no cdef methods (no vtable pointer), the options in a side object,
    # and 32-bit counters for the rare events.
    cdef double _createdtime
    cdef double _expiretime
    cdef object _value
    cdef dp_word _word         # the native lock: 0, or its holder's fork generation
    cdef _Options _opts        # None when every option is the default
    cdef _Attempt _attempt     # the creation in progress, if any
    cdef object __weakref__
    cdef unsigned long long _fresh
    cdef unsigned long long _stale
    cdef unsigned int _created
    cdef unsigned int _waited
    cdef unsigned int _failed
    cdef unsigned int _early
    cdef unsigned int _timeouts

    def __cinit__(self):
        self._createdtime = -1.0
        self._word = 0

    def __init__(self, expiretime, init=False, lock=None, *,
                 wait_timeout=None, background=None, early_refresh=None):
        cdef _Options opts
        self._expiretime = _seconds(expiretime)
        wait = wait_timeout_seconds(wait_timeout)
        if lock is not None:
            check_lock(lock)
            if wait is not None:
                check_lock_timeout(lock)
        check_executor(background)
        beta = early_refresh_beta(early_refresh)
        if lock is not None or wait is not None or background is not None or beta:
            opts = _Options.__new__(_Options)
            opts.lock = lock
            opts.wait_timeout = -1.0 if wait is None else wait
            opts.background = background
            opts.beta = beta
            opts.delta = 0.0
            self._opts = opts
        else:
            self._opts = None
        self._value = None
        self._createdtime = dp_now() if init else -1.0

    @property
    def createdtime(self):
        """Epoch seconds at which the value was created; -1 when none."""
        return self._createdtime

    @createdtime.setter
    def createdtime(self, value):
        self._createdtime = createdtime_seconds(value)

    @property
    def expiretime(self):
        """Seconds a value stays fresh, or None for never."""
        return expiretime_public(self._expiretime)

    @expiretime.setter
    def expiretime(self, value):
        self._expiretime = expiretime_seconds(value)

    @property
    def is_expired(self):
        """True when there is no value, or it is older than expiretime."""
        return _expired(self._createdtime, self._expiretime)

    @property
    def has_value(self):
        """True once a value has been created."""
        return self._createdtime > 0

    def stats(self):
        """Counts since construction: ``fresh`` hits, ``stale`` values
        served while another caller created, ``created`` (creator calls),
        ``waited`` (callers that blocked for a first value), ``failed``
        (creator exceptions), ``early`` refreshes and wait ``timeouts``."""
        return {
            "fresh": self._fresh,
            "stale": self._stale,
            "created": self._created,
            "waited": self._waited,
            "failed": self._failed,
            "early": self._early,
            "timeouts": self._timeouts,
        }

    def acquire(self, creator, value_fn=None, value_and_created_fn=None):
        """Return a context manager whose ``as`` target is the current value.

        With no value, callers wait for the one that runs ``creator()`` and
        share its outcome: its value, or its exception raised in each.
        With an expired value, one caller runs ``creator()`` and every other
        one gets the stale value at once.

        ``value_fn()`` returns the stored value (or raises
        NeedRegenerationException when there is none).
        ``value_and_created_fn()`` returns ``(value, createdtime)`` and sets
        this Dogpile's createdtime; ``creator()`` then returns such a pair
        too.  With neither, the value is the one the last ``creator()``
        call through this Dogpile returned.
        """
        if not callable(creator) or (
            (value_fn is not None or value_and_created_fn is not None)
            and not _optional_fns_ok(value_fn, value_and_created_fn)
        ):
            check_acquire_args(creator, value_fn, value_and_created_fn)
        cdef _Acquisition acq = _Acquisition.__new__(_Acquisition)
        acq.dogpile = self
        acq.creator = creator
        acq.value_fn = value_fn
        acq.value_and_created_fn = value_and_created_fn
        return acq

    def __repr__(self):
        return (
            f"<{type(self).__name__} expiretime={self.expiretime!r} "
            f"createdtime={self._createdtime!r}>"
        )


# -- the algorithm: module functions rather than cdef methods, see above ---


cdef object _enter(Dogpile self, object creator, object value_fn, object value_and_created_fn):
    cdef double createdtime
    cdef object value
    if value_and_created_fn is not None:
        try:
            value = _pair(value_and_created_fn(), "value_and_created_fn", &createdtime)
        except NeedRegenerationException:
            value = _NO_VALUE
            createdtime = -1.0
        self._createdtime = createdtime
    elif value_fn is not None:
        # The time before the value, as for the plain path below: a
        # value newer than its time is harmless, the reverse is not.
        createdtime = self._createdtime
        try:
            value = value_fn()
        except NeedRegenerationException:
            # Not stored in self: a creation may have finished since
            # value_fn looked, and its time must stand (the check under
            # the lock asks value_fn again).
            value = _NO_VALUE
            createdtime = -1.0
    else:
        # Both reads happen under the GIL with no Python code between
        # them, so the pair is consistent.
        createdtime = self._createdtime
        value = self._value
    if not _expired(createdtime, self._expiretime):
        if self._opts is not None and self._opts.beta > 0 and _early_due(self, createdtime):
            return _refresh_early(self, creator, value_fn, value_and_created_fn, value, createdtime)
        self._fresh += 1
        return value
    return _create(self, creator, value_fn, value_and_created_fn, value, createdtime)


cdef bint _early_due(Dogpile self, double createdtime):
    # XFetch: refresh when now - delta * beta * ln(U) >= created + expiry,
    # U uniform in (0, 1]; delta is how long the last creation took.
    cdef double delta = self._opts.delta
    if delta <= 0 or self._expiretime == INFINITY:
        return False
    return (dp_now() - createdtime - delta * self._opts.beta * log(dp_random())
            >= self._expiretime)


cdef dp_word _try_take(Dogpile self) except? 0:
    """Take the creation lock if it is free: a tag for _give, or 0."""
    if self._opts is None or self._opts.lock is None:
        return dp_try_acquire(&self._word)
    return 1 if self._opts.lock.acquire(False) else 0


cdef dp_word _wait_take(Dogpile self) except? 0:
    """Take the creation lock, waiting at most wait_timeout: a tag, or 0."""
    cdef _Options opts = self._opts
    if opts is None:
        return _wait_word(&self._word, -1.0)
    if opts.lock is None:
        return _wait_word(&self._word, opts.wait_timeout)
    if opts.wait_timeout < 0:
        opts.lock.acquire()
        return 1
    return 1 if opts.lock.acquire(True, timeout=opts.wait_timeout) else 0


cdef int _give(Dogpile self, dp_word tag) except -1:
    if self._opts is not None and self._opts.lock is not None:
        self._opts.lock.release()
    elif dp_release(&self._word, tag) < 0:
        raise LockError("Dogpile released a creation lock it did not hold")
    return 0


cdef object _create(Dogpile self, object creator, object value_fn,
                    object value_and_created_fn, object value, double createdtime):
    cdef dp_word tag
    cdef _Attempt attempt
    if createdtime > 0 and value is not _NO_VALUE:
        # A stale value exists: whoever holds the lock is already
        # creating, so serve the stale value rather than wait.
        tag = _try_take(self)
        if not tag:
            self._stale += 1
            return value
    else:
        tag = _try_take(self)
        if not tag:
            attempt = self._attempt
            if attempt is not None and attempt.owner == PyThread_get_thread_ident():
                raise LockError(
                    "Dogpile.acquire() called again from inside its own creator: "
                    "waiting for the value would wait for this very call"
                )
            self._waited += 1
            if _log.isEnabledFor(_DEBUG):
                _log.debug("%r: no value, waiting for the creator", self)
            tag = _wait_take(self)
            if not tag:
                self._timeouts += 1
                raise LockTimeout(
                    f"no value after waiting {self._opts.wait_timeout} s (wait_timeout) "
                    "for another caller's creator"
                )
            if attempt is not None and attempt.state != _PENDING:
                # The creation we waited for is over: share its outcome
                # rather than run the creator again for each waiter.
                _give(self, tag)
                return attempt.outcome()
    return _locked(self, tag, creator, value_fn, value_and_created_fn, value, False, 0.0)


cdef object _refresh_early(Dogpile self, object creator, object value_fn,
                           object value_and_created_fn, object value, double createdtime):
    cdef dp_word tag = _try_take(self)
    if not tag:
        self._fresh += 1
        return value
    self._early += 1
    return _locked(self, tag, creator, value_fn, value_and_created_fn, value, True, createdtime)


cdef inline bint _done_by_another(double createdtime, bint early, double seen,
                                  double expiretime) noexcept:
    """Under the lock: does the value no longer need creating?  An early
    refresh saw a fresh value, so only a newer one means someone else
    refreshed."""
    if _expired(createdtime, expiretime):
        return False
    return not early or createdtime != seen


cdef object _locked(Dogpile self, dp_word tag, object creator, object value_fn,
                    object value_and_created_fn, object value, bint early, double seen):
    """Holding the lock: create unless someone else just did."""
    cdef double createdtime
    cdef bint handed_off = False
    cdef object stale
    cdef _Handoff handoff
    try:
        if early and _log.isEnabledFor(_DEBUG):
            _log.debug("%r: refreshing early", self)
        if value_and_created_fn is not None:
            try:
                value = _pair(value_and_created_fn(), "value_and_created_fn", &createdtime)
            except NeedRegenerationException:
                value = _NO_VALUE
                createdtime = -1.0
            self._createdtime = createdtime
            if value is not _NO_VALUE and _done_by_another(createdtime, early, seen, self._expiretime):
                return value
            stale = value if createdtime > 0 else _NO_VALUE
        elif value_fn is not None:
            if _done_by_another(self._createdtime, early, seen, self._expiretime):
                try:
                    return value_fn()
                except NeedRegenerationException:
                    value = _NO_VALUE
            stale = value
        else:
            if _done_by_another(self._createdtime, early, seen, self._expiretime):
                return self._value
            stale = self._value if self._createdtime > 0 else _NO_VALUE
        if stale is not _NO_VALUE and self._opts is not None and self._opts.background is not None:
            handoff = _Handoff.__new__(_Handoff)
            handoff.dogpile = self
            handoff.tag = tag
            handoff.state = _HELD
            try:
                future = self._opts.background.submit(
                    _create_in_background, handoff, creator, value_fn, value_and_created_fn
                )
            except RuntimeError:
                # Shut down: create here instead, and make sure a job that
                # got queued anyway never runs without the lock.
                handoff.state = _RELEASED
                _log.debug("%r: background executor refused the job", self)
            except BaseException:
                # Maybe queued before the failure: whichever of this and the
                # job comes first releases, once.
                handed_off = True
                handoff.release()
                raise
            else:
                handed_off = True
                add_done_callback = getattr(future, "add_done_callback", None)
                if add_done_callback is not None:
                    add_done_callback(handoff.release_logged)
                if not early:
                    self._stale += 1
                return stale
        return _run_creator(self, creator, value_fn, value_and_created_fn)
    finally:
        if not handed_off:
            _give(self, tag)


cdef object _run_creator(Dogpile self, object creator, object value_fn, object value_and_created_fn):
    cdef _Attempt attempt = _Attempt.__new__(_Attempt)
    cdef double createdtime
    cdef double started = dp_monotonic()
    cdef bint debug = False
    attempt.owner = PyThread_get_thread_ident()
    attempt.state = _PENDING
    try:
        # In the try, so that the finally clears the attempt whatever
        # happens from here on (even in the logging).
        self._attempt = attempt
        self._created += 1
        debug = _log.isEnabledFor(_DEBUG)
        if debug:
            _log.debug("%r: calling the creator", self)
        result = creator()
        if value_and_created_fn is not None:
            value = _pair(result, "creator", &createdtime)
            self._createdtime = createdtime
        else:
            value = result
            if value_fn is None:
                self._value = value
            self._createdtime = dp_now()
    except Exception as exc:
        self._failed += 1
        attempt.result = exc
        attempt.state = _FAILED
        if debug:
            _log.debug("%r: the creator failed: %r", self, exc)
        raise
    except BaseException:
        attempt.state = _ABANDONED
        raise
    else:
        attempt.result = value
        attempt.state = _CREATED
        return value
    finally:
        if self._opts is not None:
            self._opts.delta = dp_monotonic() - started
        self._attempt = None


# States of a handoff to a background job.
cdef enum:
    _HELD = 0
    _RUNNING = 1
    _RELEASED = 2


@cython.final
cdef class _Handoff:
    """The creation lock, handed from the caller that found the value
    expired to a background job.  Released exactly once: by the job when it
    ends or, when the job never runs (cancelled, or the executor failed to
    start it), by its future's done callback."""

    cdef Dogpile dogpile
    cdef dp_word tag
    cdef int state

    cdef int release(self) except -1:
        if self.state != _RELEASED:
            self.state = _RELEASED
            _give(self.dogpile, self.tag)
        return 0

    def release_logged(self, *_future):
        """release() where no caller would see an error (a custom lock that
        may not be released from this thread, say)."""
        try:
            self.release()
        except Exception:
            _log.warning("could not release a Dogpile's creation lock after a background "
                         "creation", exc_info=True)


def _create_in_background(_Handoff handoff, creator, value_fn, value_and_created_fn):
    cdef Dogpile self = handoff.dogpile
    if handoff.state != _HELD:
        return
    handoff.state = _RUNNING
    try:
        _run_creator(self, creator, value_fn, value_and_created_fn)
    except Exception:
        # Nobody waits on a background creation, so its failure would go
        # unseen; the next caller to find the value expired retries.
        _log.warning("%r: background creation failed", self, exc_info=True)
    finally:
        handoff.release_logged()


cdef inline bint _optional_fns_ok(object value_fn, object value_and_created_fn):
    if value_fn is None:
        return callable(value_and_created_fn)
    return value_and_created_fn is None and callable(value_fn)


# One of these is made per acquire(), so it is kept cheap: a freelist
# instead of malloc, and no GC tracking (it references only the Dogpile and
# the caller's functions; a cycle through it would need a caller to store
# it inside one of those).  Caching one per Dogpile would save a little
# more, but the cache would reference the Dogpile back, and a Dogpile in a
# cycle outlives its last reference until the collector runs, which keeps
# NameRegistry entries alive.
@cython.final
@cython.no_gc
@cython.freelist(32)
cdef class _Acquisition:
    """The context manager that Dogpile.acquire() returns."""

    cdef Dogpile dogpile
    cdef object creator
    cdef object value_fn
    cdef object value_and_created_fn
    cdef ReadWriteMutex rw  # SyncReaderDogpile's: held for the block

    def __enter__(self):
        value = _enter(self.dogpile, self.creator, self.value_fn, self.value_and_created_fn)
        if self.rw is not None:
            self.rw._acquire_read(True)
        return value

    def __exit__(self, exc_type, exc, tb):
        if self.rw is not None:
            self.rw._release_read()


cdef class SyncReaderDogpile(Dogpile):
    """A Dogpile whose ``acquire()`` block also holds a read lock, so that a
    writer (``acquire_write_lock()``) can exclude every reader while it
    changes the value in place."""

    cdef ReadWriteMutex _rw

    def __init__(self, expiretime, init=False, lock=None, **options):
        Dogpile.__init__(self, expiretime, init, lock, **options)
        self._rw = ReadWriteMutex()

    @property
    def readwritelock(self):
        """The ReadWriteMutex that acquire() reads under."""
        return self._rw

    def acquire(self, creator, value_fn=None, value_and_created_fn=None):
        """Like Dogpile.acquire(), with the read lock held for the block."""
        cdef _Acquisition acq = Dogpile.acquire(self, creator, value_fn, value_and_created_fn)
        acq.rw = self._rw
        return acq

    def acquire_write_lock(self):
        """Return a context manager that holds the write lock."""
        return _WriteLock(self._rw)


@cython.final
cdef class _WriteLock:
    cdef ReadWriteMutex _rw

    def __cinit__(self, ReadWriteMutex rw):
        self._rw = rw

    def __enter__(self):
        self._rw._acquire_write(True)

    def __exit__(self, exc_type, exc, tb):
        self._rw._release_write()


@cython.freelist(16)
cdef class Lock:
    """The dogpile.core 0.4 / dogpile.cache lock: ``with Lock(...) as value``.

    :param mutex: an object with ``acquire()``, ``acquire(False)`` and
        ``release()``.
    :param creator: returns a new ``(value, createdtime)``.
    :param value_and_created_fn: returns the stored ``(value, createdtime)``
        or raises NeedRegenerationException.
    :param expiretime: seconds a value stays fresh, or None for never.
    :param async_creator: if given, called with the (acquired) mutex instead
        of ``creator`` when a stale value exists; it must release the mutex
        itself, and the stale value is returned at once.
    """

    cdef public object mutex
    cdef public object creator
    cdef public object value_and_created_fn
    cdef public object async_creator
    cdef double _expiretime

    def __init__(self, mutex, creator, value_and_created_fn, expiretime, async_creator=None):
        # The functions are checked when they are first needed, before
        # anything is locked, as in the Python twin (where checks here would
        # tax every use).
        self._expiretime = _seconds(expiretime)
        self.mutex = mutex
        self.creator = creator
        self.value_and_created_fn = value_and_created_fn
        self.async_creator = async_creator

    @property
    def expiretime(self):
        """Seconds a value stays fresh, or None for never."""
        return expiretime_public(self._expiretime)

    def __enter__(self):
        cdef double createdtime
        try:
            pair = self.value_and_created_fn()
        except NeedRegenerationException:
            return self._create(_NO_VALUE, -1.0)
        except TypeError:
            check_callable("value_and_created_fn", self.value_and_created_fn)
            raise
        value = _pair(pair, "value_and_created_fn", &createdtime)
        if not _expired(createdtime, self._expiretime):
            return value
        return self._create(value, createdtime)

    cdef object _create(self, object value, double createdtime):
        cdef object mutex = self.mutex
        cdef bint has_value = createdtime > 0 and value is not _NO_VALUE
        cdef bint handed_off = False
        if not callable(self.creator):
            check_callable("creator", self.creator)
        if self.async_creator is not None and not callable(self.async_creator):
            check_callable("async_creator", self.async_creator)
        # Not checked at construction: that would tax every fresh hit.  An
        # asyncio lock is refused before its acquire() returns a (truthy)
        # coroutine that would pass for the lock.
        check_lock(mutex, "mutex")
        try:
            if has_value:
                if not mutex.acquire(False):
                    return value
            else:
                mutex.acquire()
        except AttributeError:
            check_lock(mutex, "mutex")
            raise
        try:
            # Another thread or process may have created meanwhile.
            try:
                value = _pair(self.value_and_created_fn(), "value_and_created_fn", &createdtime)
            except NeedRegenerationException:
                value = _NO_VALUE
                createdtime = -1.0
            has_value = createdtime > 0 and value is not _NO_VALUE
            if has_value and not _expired(createdtime, self._expiretime):
                return value
            if has_value and self.async_creator is not None:
                handed_off = True
                self.async_creator(mutex)
                return value
            return _pair(self.creator(), "creator", &createdtime)
        finally:
            if not handed_off:
                _release(mutex)

    def __exit__(self, exc_type, exc, tb):
        pass


cdef _release(object mutex):
    try:
        mutex.release()
    except AttributeError:
        check_lock(mutex, "mutex")
        raise


cdef class NameRegistry:
    """Keeps one object per identifier for as long as anything references it.

    ``get(identifier, *args, **kw)`` returns that object, calling
    ``creator(identifier, *args, **kw)`` to make it when there is none; the
    entry goes away once the object is no longer referenced elsewhere, so
    the object must support weak references.
    """

    cdef public object creator
    cdef dict _values
    cdef object _mutex
    cdef object __weakref__

    def __init__(self, creator):
        check_callable("creator", creator)
        self.creator = creator
        self._values = {}
        # Reentrant: a creator may look up another identifier.
        self._mutex = _threading.RLock()

    def get(self, identifier, *args, **kw):
        """Return the object for ``identifier``, creating it if needed."""
        ref = self._values.get(identifier)
        if ref is not None:
            obj = ref()
            if obj is not None:
                return obj
        return self._sync_get(identifier, args, kw)

    cdef object _sync_get(self, object identifier, tuple args, dict kw):
        with self._mutex:
            ref = self._values.get(identifier)
            if ref is not None:
                obj = ref()
                if obj is not None:
                    return obj
            obj = self.creator(identifier, *args, **kw)
            try:
                self._values[identifier] = _weakref_ref(obj, _Forget(self._values, identifier))
            except TypeError:
                raise TypeError(
                    "NameRegistry's creator must return an object that "
                    f"supports weak references, not {type(obj).__name__!r}"
                ) from None
            return obj

    def __len__(self):
        return len(self._values)


cdef class ReadWriteMutex:
    """A lock that many readers or one writer can hold.

    Writers are preferred: once a writer waits, new readers wait behind it,
    so a stream of readers cannot starve it.  A thread must not take a read
    lock again while it holds one if a writer may be waiting.
    """

    cdef dp_rwstate _state
    cdef object __weakref__

    def acquire_read_lock(self, wait=True):
        """Take a read lock; with ``wait=False`` return False if busy."""
        return self._acquire_read(wait)

    def release_read_lock(self):
        """Release one read lock."""
        self._release_read()

    def acquire_write_lock(self, wait=True):
        """Take the write lock; with ``wait=False`` return False if busy."""
        return self._acquire_write(wait)

    def release_write_lock(self):
        """Release the write lock held by this thread."""
        self._release_write()

    cdef bint _acquire_read(self, bint wait) except -1:
        cdef double slice
        cdef int got
        if dp_rw_read_slice(&self._state, 0):
            return True
        if not wait:
            return False
        slice = _SIGNAL_SLICE if _in_main_thread() else _FOREVER
        while True:
            with nogil:
                got = dp_rw_read_slice(&self._state, slice)
            if got:
                return True
            PyErr_CheckSignals()

    cdef int _release_read(self) except -1:
        if dp_rw_read_release(&self._state) < 0:
            raise LockError("release_read_lock(): no read lock is held")
        return 0

    cdef bint _acquire_write(self, bint wait) except -1:
        cdef double slice
        cdef int got
        cdef unsigned long me = PyThread_get_thread_ident()
        if dp_rw_write_slice(&self._state, me, 0):
            return True
        if not wait:
            return False
        slice = _SIGNAL_SLICE if _in_main_thread() else _FOREVER
        while True:
            with nogil:
                got = dp_rw_write_slice(&self._state, me, slice)
            if got:
                return True
            PyErr_CheckSignals()

    cdef int _release_write(self) except -1:
        if dp_rw_write_release(&self._state, PyThread_get_thread_ident()) < 0:
            raise LockError(
                "release_write_lock(): this thread does not hold the write lock"
            )
        return 0
