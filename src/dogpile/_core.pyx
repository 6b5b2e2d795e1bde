# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=False, auto_pickle=False
# cython: embedsignature=True, embedsignature.format=clinic
#
# auto_pickle=False: Cython's generated __setstate_cython__ indexes its
# state tuple unchecked under boundscheck=False, so Lock().__setstate_cython__(())
# read past the tuple (a crash); the classes that can be copied or pickled
# say how with __reduce__, as the twin does.
#
# embedsignature in the clinic format: each method's docstring starts with
# its signature in the form CPython reads for inspect.signature() and
# help() and strips from __doc__ (which keeps the twin's text, its
# indentation removed); a static string, nothing at run time.  Cython
# leaves class docstrings alone, so each public class spells its
# constructor's signature there the same way ("Name(...)\n--\n\n", the
# text after it from column 0, as the twin's first line is);
# tests/test_parity.py checks those against the __init__ below and
# against the twin.
#
# Not declared freethreading_compatible: the fresh-hit path reads a
# Dogpile's value and creation time without a lock, relying on the GIL to
# make that pair of reads (and the INCREF of the value) atomic with respect
# to a creator that replaces them.  On a free-threaded build the
# interpreter therefore turns the GIL back on when it imports this module.
"""The dogpile lock, compiled.

The twin of ``_core_py.py`` (the readable specification, whose rules are
in ``_rules.py`` and slow path in ``_threads.py``): same classes,
signatures, docstrings and behaviour; the rules are mirrored here by hand,
and tests/test_rules.py and the differential test hold them equal.  What is different is underneath: a
fresh hit is a few C comparisons and one clock read, and the creation lock
is a 64-bit word over the native mutex in ``_native_lock.h``, waited on
with the GIL released.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.math cimport INFINITY, NAN, isnan, log
from libc.stdint cimport uint64_t

import _thread
import copyreg as _copyreg
import logging as _logging
import os as _os
import threading as _threading
from weakref import ref as _weakref_ref

from ._checks import (
    check_acquire_args,
    check_callable,
    check_executor,
    check_acquired,
    check_lock,
    check_lock_timeout,
    createdtime_seconds,
    early_refresh_beta,
    expiretime_public,
    expiretime_seconds,
    not_initialised,
    unpack_pair,
    wait_timeout_seconds,
)
from ._errors import LockError, LockTimeout, NeedRegenerationException
# The weakref callback of NameRegistry runs once per dead entry, never on a
# lookup, and the others only build an error: one definition of each
# serves both implementations.
from ._registry_py import _Forget, _not_copyable
from ._rules import raised_again as _raised_again

__all__ = [
    "Dogpile",
    "SyncReaderDogpile",
    "Lock",
    "NameRegistry",
    "ReadWriteMutex",
]


cdef extern from "_native_lock.h" nogil:
    ctypedef uint64_t dp_word
    dp_word dp_generation  # bumped in a forked child
    ctypedef struct dp_rwstate:
        long readers
        long writers_waiting
        int writer
        uint64_t writer_ident
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
    int dp_rw_write_slice(dp_rwstate *rw, uint64_t ident, double seconds)
    void dp_rw_writer_waiting(dp_rwstate *rw, long delta)
    int dp_rw_read_release(dp_rwstate *rw)
    int dp_rw_write_release(dp_rwstate *rw, uint64_t ident)

cdef extern from "_fastcall.h":
    ctypedef object (*dp_one_arg)(object, object)
    int dp_install_fast_method(object type, const char *name, dp_one_arg fn, Py_ssize_t nargs) except -1
    ctypedef object (*dp_make_lock)(object, object, object, object, object)
    int dp_install_lock_vectorcall(object type, dp_make_lock maker) except -1

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
            try:
                return <double>expiretime
            except OverflowError:
                pass  # beyond any float: the checked error below
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
    if _cooperative():
        return _green_wait(_TAKE_WORD, word, 0, timeout)
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


# -- gevent and eventlet --------------------------------------------------
#
# After gevent.monkey.patch_all() or eventlet.monkey_patch(), "threads" are
# greenlets sharing one OS thread.  Two things then change:
#
# - Who a caller is.  PyThread_get_thread_ident() names the OS thread, the
#   same for every greenlet in it, so a greenlet waiting for another one's
#   creator would look like that creator re-entering.  _ident() asks the
#   (patched) _thread.get_ident(), which names the greenlet; it is looked
#   up at each call because patching replaces the module's attribute.
# - How a caller waits.  Sleeping the OS thread on the stripe's condition
#   variable would stop the greenlet it waits for, for ever.  A greenlet
#   waits instead on a Condition made from the patched threading module,
#   which yields to the hub (and lets the hub deliver KeyboardInterrupt to
#   the main greenlet).  Whoever frees a lock word or a ReadWriteMutex wakes
#   the greenlets waiting on it, found by address in _gates.
#
# The world is looked at when a caller must wait, never before: a fresh hit
# does no extra work, a wait without patching stays native with the GIL
# released, and a Dogpile made before the patching (an app imported before
# a gunicorn gevent worker patches) waits cooperatively after it.  Patched
# means _thread.allocate_lock is no longer the C builtin: both libraries
# replace it, it is the primitive threading builds every lock on, and the
# test needs neither library imported, nor knows their APIs.


cdef object _BUILTIN = type(len)

# Greenlets in a cooperative wait, over all gates; a releaser that reads 0
# here (the usual case) skips the wake-up.
cdef Py_ssize_t _green_waiting = 0
# Address of the lock word or dp_rwstate -> [Condition, waiting count].
cdef dict _gates = {}


cdef inline bint _cooperative() except -1:
    return type(_thread.allocate_lock) is not _BUILTIN


cdef inline uint64_t _ident() except? 0:
    return _thread.get_ident()


# What a cooperative waiter tries to take, without waiting.
cdef enum:
    _TAKE_WORD = 0
    _TAKE_READ = 1
    _TAKE_WRITE = 2


cdef inline uint64_t _take_now(int kind, void *target, uint64_t ident) noexcept:
    if kind == _TAKE_WORD:
        return dp_try_acquire(<dp_word *>target)
    if kind == _TAKE_READ:
        return dp_rw_read_slice(<dp_rwstate *>target, 0)
    return dp_rw_write_slice(<dp_rwstate *>target, ident, 0)


cdef uint64_t _green_wait(int kind, void *target, uint64_t ident, double timeout) except? 0:
    """Take ``target`` the way ``kind`` says, yielding to the hub while it
    is busy: its tag (or 1), or 0 once ``timeout`` seconds (< 0: no limit)
    have passed.  No lost wake-up: the waiter counts itself in before it
    tries, and holds the gate's lock from its try until wait() releases it;
    a releaser frees first, then reads the count and notifies under that
    lock."""
    global _green_waiting
    cdef uint64_t got
    cdef double deadline = dp_monotonic() + timeout if timeout >= 0 else -1.0
    cdef double left
    key = <Py_ssize_t>target
    gate = _gates.get(key)
    if gate is None:
        # Made now, from the patched module; setdefault, because making it
        # ran Python code, where another thread may have made one.
        gate = _gates.setdefault(key, [_threading.Condition(_threading.Lock()), 0])
    gate[1] += 1
    _green_waiting += 1
    try:
        cond = gate[0]
        with cond:
            while True:
                got = _take_now(kind, target, ident)
                if got:
                    return got
                if deadline < 0:
                    cond.wait()
                else:
                    left = deadline - dp_monotonic()
                    if left <= 0:
                        return 0
                    cond.wait(left)
    finally:
        _green_waiting -= 1
        gate[1] -= 1
        if gate[1] == 0 and _gates.get(key) is gate:
            del _gates[key]


cdef int _green_wake(void *target) except -1:
    gate = _gates.get(<Py_ssize_t>target)
    if gate is not None:
        cond = gate[0]
        with cond:
            cond.notify_all()
    return 0


# States of a creation attempt.
cdef enum:
    _PENDING = 0
    _CREATED = 1
    _FAILED = 2
    _ABANDONED = 3


@cython.final
cdef class _Attempt:
    """One run of a creator, as seen by the callers waiting for it."""

    cdef uint64_t owner       # _ident() of the caller running the creator
    cdef dp_word generation
    cdef unsigned long long serial  # its place among its custom lock's attempts
    cdef int state
    cdef object result
    cdef object traceback
    cdef _Attempt next  # the attempt that took over when this one was abandoned

    cdef int finish(self, int state, object result) except -1:
        self.result = result
        if state == _FAILED:
            self.traceback = result.__traceback__
        self.state = state
        return 0

    cdef object share(self, object value):
        """Finish with a value found under the lock, and return it."""
        self.finish(_CREATED, value)
        return value

    cdef _Attempt last(self):
        """This attempt, or the one that finally took over from it."""
        cdef _Attempt attempt = self
        while attempt.state == _ABANDONED and attempt.next is not None:
            attempt = attempt.next
        return attempt

    cdef object outcome(self):
        """The creator's value, or its exception raised again."""
        if self.state == _FAILED:
            raise _raised_again(self.result, self.traceback)
        return self.result


cdef _Attempt _new_attempt(Dogpile self):
    """A new attempt, published for the callers that come to wait for it."""
    cdef _Attempt attempt = _Attempt.__new__(_Attempt)
    cdef _Options opts = self._opts
    attempt.owner = _ident()
    attempt.generation = dp_generation
    attempt.state = _PENDING
    attempt.serial = 0 if opts is None else opts.serial + 1
    self._attempt = attempt
    if opts is not None and opts.lock is not None:
        # Odd while an attempt is pending: see the twin's _publish.  Only
        # the lock's holder gets here, so the serial needs no lock.  The
        # last failure is kept only for callers that began waiting before
        # this attempt; they wait for this one too now.
        opts.failure = None
        opts.serial = attempt.serial
    return attempt


@cython.final
cdef class _Options:
    """What a Dogpile was built with beyond the defaults, kept apart so that
    a plain Dogpile stays small (a NameRegistry may hold 100,000)."""

    cdef object lock          # a custom lock, or None for the native word
    cdef double wait_timeout  # < 0: wait as long as it takes
    cdef object background    # an Executor, or None
    cdef double beta          # early_refresh; 0: off
    cdef double delta         # seconds the last creation took
    cdef bint retry_here      # the last background job never ran
    # With a custom lock, whose acquire() runs Python code after taking it:
    # how many attempts were published, and the last one that failed
    # (until the next is published); see _create.
    cdef unsigned long long serial
    cdef _Attempt failure


cdef class Dogpile:
    """Dogpile(expiretime, init=False, lock=None, *, wait_timeout=None, background=None, early_refresh=None)
--

A lock that lets one caller create a value while every other caller
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
        # nan until __init__ runs: no freshness test passes on it, so a
        # subclass that skips Dogpile.__init__ reaches the check in _create.
        self._expiretime = NAN
        self._word = 0

    def __init__(self, expiretime, init=False, lock=None, *,
                 wait_timeout=None, background=None, early_refresh=None):
        cdef _Options opts
        cdef double seconds = _seconds(expiretime)
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
        self._expiretime = seconds
        self._attempt = None
        self._fresh = self._stale = 0
        self._created = self._waited = self._failed = self._early = self._timeouts = 0
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

    def get(self, creator, value_fn=None, value_and_created_fn=None):
        """Return the value that ``acquire()`` would give its ``as`` target:
        the same arguments and rules, without a ``with`` block (the form for
        hot loops): ``value = d.get(creator)``."""
        if not callable(creator) or (
            (value_fn is not None or value_and_created_fn is not None)
            and not _optional_fns_ok(value_fn, value_and_created_fn)
        ):
            check_acquire_args(creator, value_fn, value_and_created_fn)
        return _enter(self, creator, value_fn, value_and_created_fn)

    def __repr__(self):
        return (
            f"<{type(self).__name__} expiretime={self.expiretime!r} "
            f"createdtime={self._createdtime!r}>"
        )

    def __reduce__(self):
        raise _not_copyable(self)


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


# The options a creation lock was taken under are handed with its tag to
# _give: __init__ may run again while a creator runs (a settings reload),
# and the lock to release is the one taken, not the one configured now.

cdef dp_word _try_take(Dogpile self, _Options opts) except? 0:
    """Take the creation lock if it is free: a tag for _give, or 0."""
    if opts is None or opts.lock is None:
        return dp_try_acquire(&self._word)
    return 1 if opts.lock.acquire(False) else 0


cdef dp_word _wait_take(Dogpile self, _Options opts) except? 0:
    """Take the creation lock, waiting at most wait_timeout: a tag, or 0."""
    if opts is None:
        return _wait_word(&self._word, -1.0)
    if opts.lock is None:
        return _wait_word(&self._word, opts.wait_timeout)
    if opts.wait_timeout < 0:
        opts.lock.acquire()
        return 1
    return 1 if opts.lock.acquire(True, timeout=opts.wait_timeout) else 0


cdef int _give(Dogpile self, dp_word tag, _Options opts) except -1:
    if opts is not None and opts.lock is not None:
        opts.lock.release()
    elif dp_release(&self._word, tag) < 0:
        raise LockError("Dogpile released a creation lock it did not hold")
    elif _green_waiting:
        _green_wake(&self._word)
    return 0


cdef object _create(Dogpile self, object creator, object value_fn,
                    object value_and_created_fn, object value, double createdtime):
    cdef dp_word tag
    cdef _Attempt attempt
    cdef _Attempt prior = None
    cdef _Options opts = self._opts
    cdef unsigned long long arrived = 0
    if isnan(self._expiretime):  # __init__ never ran
        raise not_initialised(self)
    if createdtime > 0 and value is not _NO_VALUE:
        # A stale value exists: whoever holds the lock is already
        # creating, so serve the stale value rather than wait.
        tag = _try_take(self, opts)
        if not tag:
            self._stale += 1
            return value
    else:
        if opts is not None:
            # Read before trying the lock: see _prior.
            arrived = opts.serial
            if opts.lock is not None:
                wait = getattr(opts.lock, "acquire_or_wait", None)
                if wait is not None:
                    return _wait_for_release(self, opts, wait, arrived, creator, value_fn,
                                             value_and_created_fn, value)
        tag = _try_take(self, opts)
        if not tag:
            attempt = _attempt_here(self)
            _count_wait(self)
            tag = _wait_take(self, opts)
            if not tag:
                raise _timed_out(self, opts)
            prior = _prior(self, attempt, arrived)
            if prior is not None:
                if prior.state == _CREATED or prior.state == _FAILED:
                    # The creation we waited for is over: share its outcome
                    # rather than run the creator again for each waiter.
                    _give(self, tag, opts)
                    return prior.outcome()
                # Abandoned (its creator raised KeyboardInterrupt, say):
                # this caller creates, and the others waiting for the same
                # attempt share this one's outcome through prior.next.
    return _locked(self, tag, opts, creator, value_fn, value_and_created_fn, value, False, 0.0,
                   prior)


cdef _Attempt _attempt_here(Dogpile self):
    """The attempt in progress, refused to its own creator, unless a thread
    of the parent process left it: that one will never finish here, and
    its owner's ident may be reused."""
    cdef _Attempt attempt = self._attempt
    if attempt is not None and attempt.generation != dp_generation:
        return None
    if attempt is not None and attempt.owner == _ident():
        raise LockError(
            "Dogpile.acquire() called again from inside its own creator: "
            "waiting for the value would wait for this very call"
        )
    return attempt


cdef _Attempt _prior(Dogpile self, _Attempt attempt, unsigned long long arrived):
    """The attempt a caller that arrived at serial ``arrived``, and saw
    ``attempt`` in progress then, waited for."""
    cdef _Attempt prior
    if attempt is not None:
        return attempt.last()
    if self._opts is None or self._opts.lock is None:
        return None
    # The holder had not published its attempt yet (its custom lock's
    # acquire() was still running Python code; the native lock is taken and
    # the attempt published with no Python code between), or it ended
    # before this caller looked.  A failure that had not ended when this
    # caller arrived is the one it waited for.
    prior = self._opts.failure
    if prior is not None and prior.serial < arrived:
        return None
    return prior


cdef int _count_wait(Dogpile self) except -1:
    self._waited += 1
    if _log.isEnabledFor(_DEBUG):
        _log.debug("%r: no value, waiting for the creator", self)
    return 0


cdef object _timed_out(Dogpile self, _Options opts):
    self._timeouts += 1
    return LockTimeout(
        f"no value after waiting {opts.wait_timeout} s (wait_timeout) "
        "for another caller's creator"
    )


cdef object _wait_for_release(Dogpile self, _Options opts, object wait,
                              unsigned long long arrived, object creator, object value_fn,
                              object value_and_created_fn, object value):
    """No value, and the lock can wait for its holder's release without
    taking the lock (``acquire_or_wait``: the mutexes of dogpile.mutexes).
    Take it if it is free; otherwise wait for the release and read the
    value the holder made, once.  Only a value still missing (its creator
    failed, or died) sends this caller back to the lock: waiters on other
    processes do not queue for the lock one after another just to read a
    value that is there, and a failed creation is retried once, not once
    per waiter."""
    cdef double deadline = -1.0
    cdef double left = -1.0
    cdef double createdtime
    cdef bint waited = False
    cdef _Attempt attempt
    cdef _Attempt prior
    if opts.wait_timeout >= 0:
        deadline = dp_monotonic() + opts.wait_timeout
    while True:
        attempt = _attempt_here(self)
        if deadline >= 0:
            left = max(0.0, deadline - dp_monotonic())
        got = wait(left)
        if got is not True and got is not False:
            # An awaitable is refused (an asyncio mutex); anything else
            # counts by its truth, as threading's acquire() is read.
            got = check_acquired(opts.lock, got, "lock")
        if got:
            break
        if not waited:
            waited = True
            _count_wait(self)
        # Released, or the wait ended (the holder's lease ran out, the
        # mutex's safety net, the deadline).  A creation of this process
        # shares its outcome, a failure included; another's left its value
        # where the value functions read.
        prior = _prior(self, attempt, arrived)
        if prior is not None and (prior.state == _CREATED or prior.state == _FAILED):
            return prior.outcome()
        found = _read_unlocked(self, value_fn, value_and_created_fn, &createdtime)
        if found is not _NO_VALUE:
            if not _expired(createdtime, self._expiretime):
                return found
            # Expired already: a stale value, served while whoever holds
            # the lock now recreates it (or recreated here if it is free).
            return _create(self, creator, value_fn, value_and_created_fn, found, createdtime)
        if deadline >= 0 and dp_monotonic() >= deadline:
            raise _timed_out(self, opts)
    # Taken, at once or after a wait (a custom lock may wait inside
    # acquire_or_wait): an attempt that this caller arrived before, and that
    # has ended since, is the one it waited for (see _prior).
    prior = _prior(self, attempt, arrived)
    if prior is not None and (prior.state == _CREATED or prior.state == _FAILED):
        _give(self, 1, opts)
        return prior.outcome()
    return _locked(self, 1, opts, creator, value_fn, value_and_created_fn, value, False, 0.0,
                   prior)


cdef object _read_stored(Dogpile self, object value_and_created_fn, double *createdtime):
    """The value from the caller's store and its time, or _NO_VALUE (time
    -1) when it has none; the time is kept on the Dogpile.  (_enter reads
    inline: it is the fresh path of value functions.)"""
    cdef object value
    try:
        value = _pair(value_and_created_fn(), "value_and_created_fn", createdtime)
    except NeedRegenerationException:
        value = _NO_VALUE
        createdtime[0] = -1.0
    self._createdtime = createdtime[0]
    return value


cdef object _read_unlocked(Dogpile self, object value_fn, object value_and_created_fn,
                           double *createdtime):
    """The value and its creation time, read without the lock after a
    release: what _locked reads to learn whether another caller created."""
    cdef object value
    if value_and_created_fn is not None:
        value = _read_stored(self, value_and_created_fn, createdtime)
        return value if createdtime[0] > 0 and value is not _NO_VALUE else _NO_VALUE
    createdtime[0] = self._createdtime
    if _expired(createdtime[0], self._expiretime):
        # Created in another process: this one keeps no value of its own.
        return _NO_VALUE
    if value_fn is None:
        return self._value
    try:
        return value_fn()
    except NeedRegenerationException:
        return _NO_VALUE


cdef object _refresh_early(Dogpile self, object creator, object value_fn,
                           object value_and_created_fn, object value, double createdtime):
    cdef _Options opts = self._opts
    cdef dp_word tag = _try_take(self, opts)
    if not tag:
        self._fresh += 1
        return value
    self._early += 1
    return _locked(self, tag, opts, creator, value_fn, value_and_created_fn, value, True,
                   createdtime, None)


cdef inline bint _done_by_another(double createdtime, bint early, double seen,
                                  double expiretime) noexcept:
    """Under the lock: does the value no longer need creating?  An early
    refresh saw a fresh value, so only a newer one means someone else
    refreshed."""
    if _expired(createdtime, expiretime):
        return False
    return not early or createdtime != seen


cdef object _locked(Dogpile self, dp_word tag, _Options opts, object creator,
                    object value_fn, object value_and_created_fn, object value, bint early, double seen,
                    _Attempt prior):
    """Holding the lock: create unless someone else just did.  ``prior`` is
    an abandoned attempt whose waiters this one serves."""
    cdef double createdtime
    cdef bint handed_off = False
    cdef object stale
    cdef _Handoff handoff
    cdef _Attempt attempt = None
    try:
        # Published before the value is read again, so that a caller
        # arriving meanwhile waits for this attempt and shares its outcome
        # instead of running the creator once more after it.
        attempt = _new_attempt(self)
        if prior is not None:
            prior.next = attempt
        if early and _log.isEnabledFor(_DEBUG):
            _log.debug("%r: refreshing early", self)
        if value_and_created_fn is not None:
            value = _read_stored(self, value_and_created_fn, &createdtime)
            if value is not _NO_VALUE and _done_by_another(createdtime, early, seen, self._expiretime):
                return attempt.share(value)
            stale = value if createdtime > 0 else _NO_VALUE
        elif value_fn is not None:
            if _done_by_another(self._createdtime, early, seen, self._expiretime):
                try:
                    return attempt.share(value_fn())
                except NeedRegenerationException:
                    value = _NO_VALUE
            stale = value
        else:
            if _done_by_another(self._createdtime, early, seen, self._expiretime):
                return attempt.share(self._value)
            stale = self._value if self._createdtime > 0 else _NO_VALUE
        if self._opts is not None and self._opts.retry_here:
            # The last background job never ran: create here, once.
            self._opts.retry_here = False
        elif stale is not _NO_VALUE and self._opts is not None and self._opts.background is not None:
            handoff = _Handoff.__new__(_Handoff)
            handoff.dogpile = self
            handoff.tag = tag
            handoff.opts = opts
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
        return _run_creator(self, attempt, creator, value_fn, value_and_created_fn)
    finally:
        if attempt is not None:
            _settle(self, attempt)
        if not handed_off:
            _give(self, tag, opts)


cdef int _settle(Dogpile self, _Attempt attempt) except -1:
    if attempt.state == _PENDING:
        # No outcome (the value functions raised, or the job went to the
        # background): whoever waited for it goes on to create.
        attempt.finish(_ABANDONED, None)
    elif attempt.state == _FAILED and self._opts is not None and self._opts.lock is not None:
        self._opts.failure = attempt
    if self._attempt is attempt:
        if self._opts is not None and self._opts.lock is not None:
            self._opts.serial = attempt.serial + 1
        self._attempt = None
    return 0


cdef object _run_creator(Dogpile self, _Attempt attempt, object creator, object value_fn,
                         object value_and_created_fn):
    cdef double createdtime
    cdef double started = dp_monotonic()
    cdef bint debug = False
    try:
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
        attempt.finish(_FAILED, exc)
        if debug:
            _log.debug("%r: the creator failed: %r", self, exc)
        raise
    except BaseException:
        attempt.finish(_ABANDONED, None)
        raise
    else:
        attempt.finish(_CREATED, value)
        return value
    finally:
        if self._opts is not None:
            self._opts.delta = dp_monotonic() - started


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
    cdef _Options opts  # those the lock was taken under
    cdef int state

    cdef int release(self) except -1:
        if self.dogpile is None:  # made by hand, not by a Dogpile
            raise TypeError("this _Handoff belongs to no Dogpile")
        if self.state != _RELEASED:
            self.state = _RELEASED
            _give(self.dogpile, self.tag, self.opts)
        return 0

    def release_logged(self, *future):
        """release() where no caller would see an error (a custom lock that
        may not be released from this thread, say).  Called with the future
        when its job is done, or never ran."""
        cdef bint never_ran = self.state == _HELD and len(future) > 0
        try:
            self.release()
        except Exception:
            _log.warning("could not release a Dogpile's creation lock after a background "
                         "creation", exc_info=True)
        if never_ran and self.dogpile is not None:
            _job_never_ran(self.dogpile, future[0])


cdef _job_never_ran(Dogpile self, future):
    """A background job ended without running (a ProcessPoolExecutor that
    could not pickle it, a cancelled future): say so, and have the next
    caller that finds the value expired create it in place."""
    if self._opts is not None:
        self._opts.retry_here = True
    try:
        cancelled = future.cancelled()
        error = None if cancelled else future.exception(0)
    except Exception as exc:  # a future-like object that cannot say
        cancelled, error = False, exc
    if cancelled:
        _log.warning("%r: background creation was cancelled before it ran; the next "
                     "caller to find the value expired creates it", self)
    else:
        _log.warning("%r: background creation could not run; the next caller to "
                     "find the value expired creates it", self, exc_info=error)


def _create_in_background(_Handoff handoff not None, creator, value_fn, value_and_created_fn):
    cdef Dogpile self = handoff.dogpile
    cdef _Attempt attempt = None
    if self is None or handoff.state != _HELD:
        return
    handoff.state = _RUNNING
    try:
        attempt = _new_attempt(self)
        _run_creator(self, attempt, creator, value_fn, value_and_created_fn)
    except Exception:
        # Nobody waits on a background creation, so its failure would go
        # unseen; the next caller to find the value expired retries.
        _log.warning("%r: background creation failed", self, exc_info=True)
    finally:
        if attempt is not None:
            _settle(self, attempt)
        handoff.release_logged()


cdef inline bint _optional_fns_ok(object value_fn, object value_and_created_fn):
    if value_fn is None:
        return callable(value_and_created_fn)
    return value_and_created_fn is None and callable(value_fn)


# One of these is made per acquire(), so it is kept cheap: a freelist
# instead of malloc.  It takes part in GC: a caller that keeps one (say
# ``self.read = self.dogpile.acquire(self.load)``) makes a cycle through the
# bound method.  Caching one per Dogpile would save a little more, but the
# cache would reference the Dogpile back, and a Dogpile in a cycle outlives
# its last reference until the collector runs, which keeps NameRegistry
# entries alive.
@cython.final
@cython.freelist(32)
cdef class _Acquisition:
    """The context manager that Dogpile.acquire() returns."""

    cdef Dogpile dogpile
    cdef object creator
    cdef object value_fn
    cdef object value_and_created_fn
    cdef ReadWriteMutex rw  # SyncReaderDogpile's: held for the block

    # METH_NOARGS instead of a keyword-parsing wrapper: the `with` statement
    # calls it with no arguments, every time.
    @cython.always_allow_keywords(False)
    def __enter__(self):
        if self.dogpile is None:  # type(acq)(): not made by Dogpile.acquire()
            raise TypeError("use Dogpile.acquire() to make an acquisition")
        value = _enter(self.dogpile, self.creator, self.value_fn, self.value_and_created_fn)
        if self.rw is not None:
            self.rw._acquire_read(True)
        return value

    def __exit__(self, exc_type, exc, tb):
        if self.rw is not None:
            self.rw._release_read()


cdef class SyncReaderDogpile(Dogpile):
    """SyncReaderDogpile(expiretime, init=False, lock=None, **options)
--

A Dogpile whose ``acquire()`` block also holds a read lock, so that a
    writer (``acquire_write_lock()``) can exclude every reader while it
    changes the value in place."""

    cdef ReadWriteMutex _rw

    def __cinit__(self):
        # Here rather than in __init__, which a subclass may skip.
        self._rw = ReadWriteMutex()

    def __init__(self, expiretime, init=False, lock=None, **options):
        Dogpile.__init__(self, expiretime, init, lock, **options)

    @property
    def readwritelock(self):
        """The ReadWriteMutex that acquire() reads under."""
        return self._rw

    def acquire(self, creator, value_fn=None, value_and_created_fn=None):
        """Like Dogpile.acquire(), with the read lock held for the block."""
        cdef _Acquisition acq = Dogpile.acquire(self, creator, value_fn, value_and_created_fn)
        acq.rw = self._rw
        return acq

    def get(self, creator, value_fn=None, value_and_created_fn=None):
        """Like Dogpile.get(), returning once no writer holds the write lock
        (the read lock is taken and released, as by an empty block)."""
        value = Dogpile.get(self, creator, value_fn, value_and_created_fn)
        self._rw._acquire_read(True)
        self._rw._release_read()
        return value

    def acquire_write_lock(self):
        """Return a context manager that holds the write lock."""
        if isnan(self._expiretime):  # __init__ never ran
            raise not_initialised(self)
        return _WriteLock(self._rw)


@cython.final
cdef class _WriteLock:
    cdef ReadWriteMutex _rw

    def __cinit__(self, ReadWriteMutex rw not None):
        self._rw = rw

    def __enter__(self):
        self._rw._acquire_write(True)

    def __exit__(self, exc_type, exc, tb):
        self._rw._release_write()


@cython.freelist(16)
cdef class Lock:
    """Lock(mutex, creator, value_and_created_fn, expiretime, async_creator=None)
--

The dogpile.core 0.4 / dogpile.cache lock: ``with Lock(...) as value``.

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
    # Set with the expiretime: false in a Lock whose __init__ never ran
    # (zero-filled, where a nan would cost a __cinit__ call per Lock).
    cdef bint _ready

    def __init__(self, mutex, creator, value_and_created_fn, expiretime, async_creator=None):
        # The functions are checked when they are first needed, before
        # anything is locked, as in the Python twin (where checks here would
        # tax every use).
        self._expiretime = _seconds(expiretime)
        self._ready = True
        self.mutex = mutex
        self.creator = creator
        self.value_and_created_fn = value_and_created_fn
        self.async_creator = async_creator

    @property
    def expiretime(self):
        """Seconds a value stays fresh, or None for never."""
        return expiretime_public(self._expiretime if self._ready else NAN)

    @expiretime.setter
    def expiretime(self, value):
        self._expiretime = _seconds(value)
        self._ready = True

    @cython.always_allow_keywords(False)  # METH_NOARGS, as _Acquisition's
    def __enter__(self):
        cdef double createdtime
        try:
            pair = self.value_and_created_fn()
        except NeedRegenerationException:
            return self._create(_NO_VALUE, -1.0)
        except TypeError:
            if not self._ready:
                raise not_initialised(self, "Lock") from None
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
        cdef object wait = None
        if not self._ready:
            raise not_initialised(self, "Lock")
        if not callable(self.creator):
            check_callable("creator", self.creator)
        if self.async_creator is not None and not callable(self.async_creator):
            check_callable("async_creator", self.async_creator)
        # Not checked at construction: that would tax every fresh hit.  An
        # asyncio lock's acquire() returns a (truthy) coroutine that would
        # pass for the lock: refused by what it returns (check_acquired), or
        # by check_lock when the call itself fails.
        try:
            if has_value:
                got = mutex.acquire(False)
                if got is not True and not (got is not False and check_acquired(mutex, got)):
                    return value
            else:
                wait = getattr(mutex, "acquire_or_wait", None)
                if wait is None:
                    got = mutex.acquire()
                    if got is not True and got is not False and got is not None:
                        check_acquired(mutex, got)
        except (AttributeError, TypeError):
            check_lock(mutex, "mutex")
            raise
        if wait is not None:
            # A mutex that can wait for its holder's release without taking
            # it (see _wait_for_release): read the value once after each
            # release, and take the lock only to create.
            while True:
                got = wait(-1.0)
                if got is not True and got is not False:
                    got = check_acquired(mutex, got)
                if got:
                    break
                try:
                    value = _pair(self.value_and_created_fn(), "value_and_created_fn",
                                  &createdtime)
                except NeedRegenerationException:
                    continue
                if not _expired(createdtime, self._expiretime):
                    return value
                if createdtime > 0 and value is not _NO_VALUE:
                    return self._create(value, createdtime)
        try:
            if not has_value:
                # We waited: another thread or process may have created
                # meanwhile.  Any pair counts as a value, whatever its time:
                # dogpile.cache's get_or_create_multi answers (payload, 0) to
                # have the mutex handed to its async_creator.  (An expired
                # value taken without waiting is not read again: that would
                # cost a backend round trip per regeneration.)
                try:
                    value = _pair(self.value_and_created_fn(), "value_and_created_fn",
                                  &createdtime)
                except NeedRegenerationException:
                    pass
                else:
                    if not _expired(createdtime, self._expiretime):
                        return value
                    has_value = True
            if has_value and self.async_creator is not None:
                self.async_creator(mutex)
                # Only now: if async_creator raised, the mutex is still ours.
                handed_off = True
                return value
            return _pair(self.creator(), "creator", &createdtime)
        finally:
            if not handed_off:
                _release(mutex)

    def __exit__(self, exc_type, exc, tb):
        pass

    def __reduce__(self):
        if not self._ready:
            # A copy as unready as this one, as the twin's slots give.
            return (_copyreg.__newobj__, (type(self),),
                    (None, {"mutex": self.mutex, "creator": self.creator,
                            "value_and_created_fn": self.value_and_created_fn,
                            "async_creator": self.async_creator}))
        return (Lock, (self.mutex, self.creator, self.value_and_created_fn,
                       expiretime_public(self._expiretime), self.async_creator))


cdef _release(object mutex):
    try:
        mutex.release()
    except AttributeError:
        check_lock(mutex, "mutex")
        raise


cdef class NameRegistry:
    """NameRegistry(creator)
--

Keeps one object per identifier for as long as anything references it.

    ``get(identifier, *args, **kw)`` returns that object, calling
    ``creator(identifier, *args, **kw)`` to make it when there is none; the
    entry goes away once the object is no longer referenced elsewhere, so
    the object must support weak references.
    """

    cdef public object creator
    cdef dict _values
    cdef object _mutex
    cdef object _made_with  # _thread.allocate_lock when _mutex was made
    cdef dp_word _generation  # dp_generation when _mutex was made
    cdef object __weakref__

    def __cinit__(self):
        # Here rather than in __init__, which a subclass may skip.
        self._values = {}
        # Reentrant: a creator may look up another identifier.
        self._mutex = _threading.RLock()
        self._made_with = _thread.allocate_lock
        self._generation = dp_generation

    def __init__(self, creator):
        check_callable("creator", creator)
        self.creator = creator

    def get(self, identifier, *args, **kw):
        """Return the object for ``identifier``, creating it if needed."""
        ref = self._values.get(identifier)
        if ref is not None:
            obj = ref()
            if obj is not None:
                return obj
        return self._sync_get(identifier, args, kw)

    cdef object _sync_get(self, object identifier, tuple args, dict kw):
        if _thread.allocate_lock is not self._made_with or self._generation != dp_generation:
            # gevent or eventlet patched threading after this registry was
            # made: its RLock belongs to the OS thread, which every greenlet
            # shares, so it would let them all in at once.  A new one, made
            # from the patched module, tells them apart.  (Nothing holds the
            # old one: every acquisition since the patching came here first.)
            # Or this is a forked child, where a parent thread that was
            # inside the creator holds the old one for ever.
            mutex = _threading.RLock()
            # Checked again: making it ran Python code, and another thread
            # may have renewed first (the first one must stay the only one).
            if _thread.allocate_lock is not self._made_with or self._generation != dp_generation:
                self._mutex = mutex
                self._made_with = _thread.allocate_lock
                self._generation = dp_generation
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

    def __reduce__(self):
        raise _not_copyable(self)


cdef class ReadWriteMutex:
    """ReadWriteMutex()
--

A lock that many readers or one writer can hold.

    Writers are preferred: once a writer waits, new readers wait behind it,
    so a stream of readers cannot starve it.  A thread must not take a read
    lock again while it holds one if a writer may be waiting.
    """

    cdef dp_rwstate _state
    cdef object __weakref__

    def __init__(self):
        # Without one the type took and ignored any arguments; the twin's
        # takes none.
        pass

    def __reduce__(self):
        raise _not_copyable(self)

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
        if _cooperative():
            return _green_wait(_TAKE_READ, &self._state, 0, -1.0)
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
        if _green_waiting:
            _green_wake(&self._state)
        return 0

    cdef bint _acquire_write(self, bint wait) except -1:
        cdef double slice
        cdef int got
        cdef uint64_t me = _ident()
        if dp_rw_write_slice(&self._state, me, 0):
            return True
        if not wait:
            return False
        if _cooperative():
            # Counted as waiting for the whole wait, not per try, so that
            # new readers keep waiting behind this writer.
            dp_rw_writer_waiting(&self._state, 1)
            try:
                return _green_wait(_TAKE_WRITE, &self._state, me, -1.0)
            finally:
                dp_rw_writer_waiting(&self._state, -1)
                if _green_waiting:
                    _green_wake(&self._state)
        slice = _SIGNAL_SLICE if _in_main_thread() else _FOREVER
        while True:
            with nogil:
                got = dp_rw_write_slice(&self._state, me, slice)
            if got:
                return True
            PyErr_CheckSignals()

    cdef int _release_write(self) except -1:
        if dp_rw_write_release(&self._state, _ident()) < 0:
            raise LockError(
                "release_write_lock(): this thread does not hold the write lock"
            )
        if _green_waiting:
            _green_wake(&self._state)
        return 0


@cython.final
cdef class _NoOp:
    """A context manager that does nothing, compiled like the rest of this
    module: what a ``with`` block costs on this interpreter before any work
    (benchmarks/compare.py's floor)."""

    @cython.always_allow_keywords(False)
    def __enter__(self):
        return None

    def __exit__(self, exc_type, exc, tb):
        return None

    def acquire(self, creator, /):
        """This object, to time ``with noop.acquire(creator)``."""
        return self

    def get(self, creator, /):
        """``creator``, to time ``noop.get(creator)``."""
        return creator


# `Lock(...)` and the one-argument calls, `d.acquire(creator)`,
# `d.get(creator)` and `registry.get(key)`, without
# Cython's generic argument parsing (and, for NameRegistry.get's **kw, a
# dict per call): _fastcall.h.  Any other call goes to the methods above.
cdef object _fast_dogpile_get(object self, object creator):
    if not callable(creator):
        check_acquire_args(creator, None, None)
    return _enter(<Dogpile>self, creator, None, None)


cdef object _fast_dogpile_acquire(object self, object creator):
    if not callable(creator):
        check_acquire_args(creator, None, None)
    cdef _Acquisition acq = _Acquisition.__new__(_Acquisition)
    acq.dogpile = <Dogpile>self
    acq.creator = creator
    return acq


cdef object _fast_registry_get(object self, object identifier):
    cdef NameRegistry registry = <NameRegistry>self
    ref = registry._values.get(identifier)
    if ref is not None:
        obj = ref()
        if obj is not None:
            return obj
    return registry._sync_get(identifier, (), {})


cdef object _fast_new_lock(object mutex, object creator, object value_and_created_fn,
                           object expiretime, object async_creator):
    # Lock.__init__, for the positional call (_fastcall.h).
    cdef Lock lock = Lock.__new__(Lock)
    lock._expiretime = _seconds(expiretime)
    lock._ready = True
    lock.mutex = mutex
    lock.creator = creator
    lock.value_and_created_fn = value_and_created_fn
    lock.async_creator = async_creator
    return lock


dp_install_lock_vectorcall(Lock, _fast_new_lock)
dp_install_fast_method(Dogpile, b"acquire", _fast_dogpile_acquire, 1)
dp_install_fast_method(Dogpile, b"get", _fast_dogpile_get, 1)
dp_install_fast_method(NameRegistry, b"get", _fast_registry_get, 1)
