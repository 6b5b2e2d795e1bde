"""The rules of the dogpile lock, written once: no I/O, no locks, no waiting.

Both Python front ends ask this module what to do, and do only the waiting
themselves: the thread driver (``_threads.py``, behind ``_core_py.Dogpile``)
takes locks and calls creators in threads, the asyncio driver
(``_aio_driver.py``, behind ``aio.AsyncDogpile``) awaits them in tasks.  The
compiled core (``_core.pyx``) keeps its hand-tuned copy of the same rules;
the differential and behaviour tests hold it to them.

Why shared functions and one attempt object, not a sans-I/O state machine
(h11's shape): the fresh hit, the path nearly every call takes, is two
attribute reads, a clock read and a comparison.  A machine fed with events
would put an object and a method call or two on that path, measurably
slower in Python, for no gain: the decisions here are few and each is taken
at one point of the drivers (before the lock, on waking, under the lock, as
the creator ends), so each rule is a function the driver calls at that
point, and the one thing with a life of its own, a creation attempt that
others wait for, is an object.  The drivers differ only in how they wait,
which is what they are for.

The rules:

- ``is_expired``: is there a fresh value?
- ``has_stale``: if not, is there a stale one to return instead of waiting?
- ``early_due``: is an early refresh due (XFetch)?
- ``done_by_another``: under the lock, did another caller create meanwhile?
- ``hands_off``: under the lock, does a background job create instead?
- ``pair``: is a ``(value, createdtime)`` result well formed?
- ``Attempt``: a creation, as the callers waiting for it see it: its
  outcome, shared (the value, or a copy of the exception with the
  creator's traceback, in each thread or task) or
  abandoned (a waiter takes over and creates).
- ``Counters``: the counts ``stats()`` reports.
"""

import copy
import math
from random import random as _random
from time import time as _now
from typing import Any, Callable, Dict, Optional, Tuple

from ._checks import unpack_pair
from ._errors import LockError

# No value yet (distinct from None, which is a value).
NO_VALUE: Any = object()

INF = float("inf")
# The expiretime of a Dogpile whose __init__ never ran: every freshness
# test fails on it, so every use reaches a check that raises.
NAN = float("nan")


def is_expired(createdtime: float, expiretime: float) -> bool:
    """True when there is no value, or it is older than ``expiretime``."""
    if createdtime <= 0:
        return True
    if expiretime == INF:
        return False
    age = _now() - createdtime
    # A creation time further ahead than the expiry time comes from a clock
    # that was stepped back or a host whose clock runs ahead: call it
    # expired, so one regeneration repairs it instead of waiting for the
    # clock to catch up.  (Written so that a nan expiretime is expired.)
    return not -expiretime <= age <= expiretime


def early_due(age: float, expiretime: float, delta: float, beta: float) -> bool:
    """XFetch: refresh when now - delta * beta * ln(U) >= created + expiry,
    U uniform in (0, 1]; ``delta`` is how long the last creation took."""
    if delta <= 0 or expiretime == INF:
        return False
    return age - delta * beta * math.log(1.0 - _random()) >= expiretime


def has_stale(value: Any, createdtime: float) -> bool:
    """With no fresh value: is there a stale one?  Then a caller that finds
    the lock taken returns it at once (whoever holds the lock is creating)
    instead of waiting: the rule that makes this a dogpile lock.  Without
    one, callers wait for the creation and share its outcome."""
    return createdtime > 0 and value is not NO_VALUE


def done_by_another(
    createdtime: float,
    seen: Optional[float],
    expiretime: float,
    expired: Callable[[float, float], bool] = is_expired,
) -> bool:
    """Under the lock: does the value no longer need creating?  ``seen`` is
    the creation time an early refresh saw (the value was fresh, so only a
    newer one means someone else refreshed); None otherwise.  ``expired``
    is the freshness rule of the core in use (the compiled one mirrors
    is_expired)."""
    if expired(createdtime, expiretime):
        return False
    return seen is None or createdtime != seen


def hands_off(stale: Any, background: Any) -> bool:
    """Under the lock, with no fresh value: is the creation handed to a
    background job while this caller returns the stale value?  Only when
    there is a stale value to return and a background to hand it to."""
    return stale is not NO_VALUE and background is not None and background is not False


def pair(result: Any, source: str) -> Tuple[Any, float]:
    """``result`` as a ``(value, createdtime)`` pair; the exact tuple with a
    float time passes straight through, anything else through _checks."""
    if type(result) is tuple and len(result) == 2:
        createdtime = result[1]
        if type(createdtime) is float and createdtime == createdtime:  # not nan
            return result
    return unpack_pair(result, source)


# -- one creation, as seen by the callers waiting for it -------------------------------

# States of a creation attempt.
PENDING, CREATED, FAILED, ABANDONED = range(4)


class Attempt:
    """One run of a creator, as seen by the callers waiting for it.

    ``owner`` is who runs it (a thread or greenlet ident, an asyncio task),
    so that a creator that asks for its own value is refused instead of
    waiting for itself.  ``generation`` is the fork generation it began in
    (threads) and ``serial`` its place among the creations of its lock:
    they tell a waiter whether the attempt is the one it waited for."""

    __slots__ = ("owner", "generation", "serial", "state", "result", "traceback", "next")

    def __init__(self, owner: Any, generation: int = 0, serial: int = 0) -> None:
        self.owner = owner
        self.generation = generation
        self.serial = serial
        self.state = PENDING
        self.result: Any = None
        self.traceback: Any = None
        # The attempt that took over when this one was abandoned.
        self.next: Optional[Attempt] = None

    def refuse_its_owner(self, me: Any, who: str) -> None:
        """A creator that asks for its own value would wait for itself."""
        if self.owner == me:
            raise LockError(
                f"{who}.acquire() called again from inside its own creator: "
                "waiting for the value would wait for this very call"
            )

    def finish(self, state: int, result: Any) -> None:
        self.result = result
        if state == FAILED:
            self.traceback = result.__traceback__
        self.state = state

    def share(self, value: Any) -> Any:
        """Finish with a value found under the lock, and return it."""
        self.finish(CREATED, value)
        return value

    def settle(self) -> None:
        """Ended without an outcome (the value functions raised, the job
        went to the background): whoever waited for it goes on to create."""
        if self.state == PENDING:
            self.finish(ABANDONED, None)

    def last(self) -> "Attempt":
        """This attempt, or the one that finally took over from it."""
        attempt = self
        while attempt.state == ABANDONED and attempt.next is not None:
            attempt = attempt.next
        return attempt

    def has_outcome(self) -> bool:
        """Over, with a value or an exception a waiter shares; otherwise
        (pending, or abandoned: its creator was interrupted or cancelled)
        the waiter that wakes takes over and creates."""
        return self.state == CREATED or self.state == FAILED

    def outcome(self) -> Any:
        """The creator's value, or a copy of its exception raised with the
        creator's traceback (see raised_again): in each waiting thread and
        each waiting task alike."""
        if self.state == FAILED:
            raise raised_again(self.result, self.traceback)
        return self.result


def raised_again(exc: BaseException, traceback: Any) -> BaseException:
    """What a waiter raises for the creator's exception: a copy of it with
    the creator's traceback.  The one object raised in many threads at once
    would gather every thread's frames in its traceback (keeping their
    locals alive), and each thread would see the others' stacks in it.  An
    exception that cannot be copied as its type is raised itself, with the
    creator's traceback."""
    try:
        again = _exception_copy(exc)
    except Exception:
        again = None
    if type(again) is not type(exc) or again is exc:
        return exc.with_traceback(traceback)
    again.__cause__ = exc.__cause__
    again.__context__ = exc.__context__
    again.__suppress_context__ = exc.__suppress_context__
    notes = getattr(exc, "__notes__", None)
    if type(notes) is list:
        # Its own list: a note a waiter adds is not the others'.
        again.__notes__ = list(notes)  # type: ignore[attr-defined]
    return again.with_traceback(traceback)


def _exception_copy(exc: BaseException) -> Any:
    """A copy of ``exc`` made without running a ``__init__`` written in
    Python: copy.copy would call it again with ``args``, and one that
    formats its own message (``super().__init__(f"failed: {code}")``) would
    format it twice, its side effects running once per waiter.  None when
    there is C-level state (an OSError's errno, set by its __init__) that
    only a built-in ``__init__`` knows how to set."""
    cls = type(exc)
    base = next(t for t in cls.__mro__ if not t.__flags__ & _HEAPTYPE)
    if cls.__init__ is base.__init__:  # type: ignore[misc]
        # No __init__ of its own: calling the built-in one again is how the
        # C-level state is remade.
        return copy.copy(exc)
    if base.__basicsize__ != BaseException.__basicsize__:
        return None
    again = cls.__new__(cls, *exc.args)
    if type(again) is not cls:
        return None
    again.args = exc.args
    state = exc.__dict__
    if state:
        again.__dict__.update(state)
    return again


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement


# -- the counts ----------------------------------------------------------------------


class Counters:
    """The counts behind ``stats()``, as slots of the lock's own state (a
    fresh hit adds one with no further lookup)."""

    __slots__ = ("_fresh", "_stale", "_created", "_waited", "_failed", "_early", "_timeouts")

    def _zero_counts(self) -> None:
        self._fresh = self._stale = self._created = self._waited = 0
        self._failed = self._early = self._timeouts = 0

    def _counts(self) -> Dict[str, int]:
        return {
            "fresh": self._fresh,
            "stale": self._stale,
            "created": self._created,
            "waited": self._waited,
            "failed": self._failed,
            "early": self._early,
            "timeouts": self._timeouts,
        }
