"""dogpile.aio: the dogpile lock for asyncio.

``AsyncDogpile`` and ``AsyncLock`` follow the rules of ``Dogpile`` and
``Lock``, for tasks instead of threads: with no value, tasks wait for one
creation and share its outcome; with an expired value, one task creates and
every other task gets the stale value at once, without awaiting anything
that can wait.  Creators and value functions may be plain functions or
coroutine functions: whatever they return that is awaitable (a coroutine, a
future, an object with ``__await__``) is awaited.

Here are the public classes and their fresh hits; the rules they follow
are ``dogpile._rules`` (the twin's too), the waiting and creating
``_aio_driver``, the lock adapters ``_aio_locks``.

The expiry rule of the fresh path is the core's ``_is_expired``: the
compiled one when ``import dogpile`` chose it.  ``_build(core)`` makes the
classes over either core, so that the tests run them over both.

An AsyncDogpile serves one event loop at a time.  Its default lock is an
``asyncio.Lock`` made for the running loop; when the loop it was made for
has been closed (``asyncio.run()`` twice, a test per loop), the next slow
path makes a new one for the running loop.  Using it from a second loop
while the first is still open and running, or holds the lock, is a
RuntimeError that says so.
"""

import asyncio
import importlib
import sys
import types
from time import time as _now
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Type

from . import IMPLEMENTATION, _aio_driver
from ._aio_driver import _State

# The lock adapters; _aio_redis reads the re-exported three from here.
from ._aio_locks import (
    _acquire,
    _acquire_or_wait,
    _check_async_lock,
    _is_awaitable,
    _kind,
    _release,
    _try_acquirer,
)
from ._aio_locks import _acquire_within as _acquire_within
from ._aio_locks import _check_loop_switch as _check_loop_switch
from ._aio_locks import _try_acquire_now as _try_acquire_now
from ._checks import (
    check_acquire_args,
    check_callable,
    createdtime_seconds,
    early_refresh_beta,
    expiretime_public,
    expiretime_seconds,
    wait_timeout_seconds,
)
from ._errors import NeedRegenerationException
from ._rules import NO_VALUE as _NO_VALUE
from ._rules import has_stale
from ._rules import pair as _pair

__all__ = ["AsyncDogpile", "AsyncLock"]

# The core that ``import dogpile`` chose (dogpile/__init__.py decides).
_CHOSEN_CORE = importlib.import_module(
    "dogpile._core" if IMPLEMENTATION == "cython" else "dogpile._core_py"
)


def _background_flag(background: Any) -> bool:
    if background is None or background is False:
        return False
    if background is True:
        return True
    raise TypeError(
        "background must be True or False for an AsyncDogpile (the creation runs as "
        f"a task of the running event loop), not {_kind(background)!r}"
    )


class _Acquisition:
    """The async context manager of ``AsyncDogpile.acquire()``, in general
    (value functions, early refresh)."""

    __slots__ = ("_state", "_creator", "_value_fn", "_value_and_created_fn")

    def __init__(
        self,
        state: _State,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]],
        value_and_created_fn: Optional[Callable[[], Any]],
    ) -> None:
        self._state = state
        self._creator = creator
        self._value_fn = value_fn
        self._value_and_created_fn = value_and_created_fn

    async def __aenter__(self) -> Any:
        return await _aio_driver.enter(
            self._state, self._creator, self._value_fn, self._value_and_created_fn
        )

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        pass


class _PlainAcquisition(_Acquisition):
    """``acquire(creator)`` without value functions or early refresh, from
    Python 3.12 on: the fresh hit is one coroutine that awaits nothing."""

    __slots__ = ()

    async def __aenter__(self) -> Any:
        state = self._state
        createdtime = state.createdtime
        value = state.value
        if not state.expired(createdtime, state.expiretime):
            state._fresh += 1
            return value
        if createdtime > 0 and state.busy():
            # The stale fall-through, one coroutine short of create().
            state._stale += 1
            return value
        return await _aio_driver.create(state, self._creator, None, None, value, createdtime)


class _ReadyAcquisition(_Acquisition):
    """``acquire(creator)`` without value functions or early refresh, up to
    Python 3.11: ``__aenter__`` is a plain function, and a fresh hit
    returns a done asyncio.Future holding the value, made once per value,
    so the fresh hit runs no coroutine at all.  (A done Future of a closed
    loop still gives its result in another loop: only a pending one is
    tied to its loop.)

    Why two classes: awaiting a done Future costs about 60 ns up to 3.11
    and about 250 ns from 3.12 on, where a small coroutine became cheaper
    than that.  benchmarks/aio_cases.py measured, against ``async with
    lock:`` on an asyncio.Lock (2-vCPU VM): this class 0.75-0.87x on
    3.9-3.11 where the coroutine was 0.89-0.99x, and 1.23x on 3.12-3.13
    where the coroutine was 0.92-1.05x."""

    __slots__ = ()

    def __aenter__(self) -> Any:  # an awaitable of the value
        state = self._state
        ready = state.ready
        if ready is not None and not state.expired(state.createdtime, state.expiretime):
            state._fresh += 1
            return ready
        return _aio_driver.enter_plain(state, self._creator)


_Plain: Type[_Acquisition] = _ReadyAcquisition if sys.version_info < (3, 12) else _PlainAcquisition


class AsyncDogpile:
    """A dogpile lock for asyncio: one task creates a value while every
    other task keeps using the previous one.

    :param expiretime: seconds a created value stays fresh (int or float,
        >= 0), or None for never.
    :param init: if true, the value counts as created now.
    :param lock: an asyncio lock: an object with a coroutine ``acquire()``,
        and ``release()`` and ``locked()`` (either may be a coroutine), like
        ``asyncio.Lock`` or ``dogpile.mutexes.AsyncRedisMutex``.  Default:
        an ``asyncio.Lock`` for the running event loop.
    :param wait_timeout: seconds a task waits for a first value that
        another task is creating before it gives up with LockTimeout; None
        waits as long as it takes.  Any lock will do: the wait is bounded
        here, not by the lock.
    :param background: if true, the task that finds the value expired
        starts the creation as a task of its own and returns the stale value
        at once; the lock is released when that task ends, and its failure
        is logged on the ``dogpile`` logger.
    :param early_refresh: beta of probabilistic early recomputation
        (XFetch), as for Dogpile.
    """

    __slots__ = ("_state", "_creator", "_plain", "_last", "__weakref__")

    # The expiry rule of the core these classes are built over (_build).
    _is_expired: Callable[[float, float], bool] = staticmethod(_CHOSEN_CORE._is_expired)

    def __init__(
        self,
        expiretime: Optional[float],
        init: bool = False,
        lock: Any = None,
        *,
        wait_timeout: Optional[float] = None,
        background: bool = False,
        early_refresh: Optional[float] = None,
    ) -> None:
        state = _State(type(self)._is_expired, type(self).__name__)
        state.expiretime = expiretime_seconds(expiretime)
        state.wait_timeout = wait_timeout_seconds(wait_timeout)
        if lock is not None:
            _check_async_lock(lock)
            state.lock = lock
            state.custom_lock = True
            state.try_acquire = _try_acquirer(lock)
        state.background = _background_flag(background)
        state.beta = early_refresh_beta(early_refresh)
        state.createdtime = _now() if init else -1.0
        self._state = state
        # The last plain acquisition and its creator (see acquire()).
        self._creator: Any = _NO_VALUE  # matches no creator, not even None
        self._plain: Optional[_Acquisition] = None
        self._last: Optional[_Acquisition] = None  # with value functions

    @property
    def createdtime(self) -> float:
        """Epoch seconds at which the value was created; -1 when none."""
        return self._state.createdtime

    @createdtime.setter
    def createdtime(self, value: float) -> None:
        self._state.createdtime = createdtime_seconds(value)

    @property
    def expiretime(self) -> Optional[float]:
        """Seconds a value stays fresh, or None for never."""
        return expiretime_public(self._state.expiretime)

    @expiretime.setter
    def expiretime(self, value: Optional[float]) -> None:
        self._state.expiretime = expiretime_seconds(value)

    @property
    def is_expired(self) -> bool:
        """True when there is no value, or it is older than expiretime."""
        state = self._state
        return bool(state.expired(state.createdtime, state.expiretime))

    @property
    def has_value(self) -> bool:
        """True once a value has been created."""
        return self._state.createdtime > 0

    def stats(self) -> Dict[str, int]:
        """Counts since construction, with the keys of ``Dogpile.stats()``:
        ``fresh`` hits, ``stale`` values served while another task created,
        ``created`` (creator calls), ``waited`` (tasks that waited for a
        first value), ``failed`` (creator exceptions), ``early`` refreshes
        and wait ``timeouts``."""
        return self._state._counts()

    def acquire(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]] = None,
        value_and_created_fn: Optional[Callable[[], Any]] = None,
    ) -> _Acquisition:
        """Return an async context manager whose ``as`` target is the value:
        ``async with d.acquire(creator) as value``.

        The rules and the functions are those of ``Dogpile.acquire()``;
        each function may be a plain function or a coroutine function.
        """
        # The last acquisition is reused for the same functions (the usual
        # ``acquire(load)`` in a loop): a fresh hit then makes no object.
        if creator is self._creator and value_fn is None and value_and_created_fn is None:
            return self._plain  # type: ignore[return-value]
        last = self._last
        if (
            last is not None
            and last._creator is creator
            and last._value_fn is value_fn
            and last._value_and_created_fn is value_and_created_fn
        ):
            return last
        check_acquire_args(creator, value_fn, value_and_created_fn)
        state = self._state
        if value_fn is None and value_and_created_fn is None and not state.beta:
            plain = _Plain(state, creator, None, None)
            self._creator = creator
            self._plain = plain
            return plain
        last = self._last = _Acquisition(state, creator, value_fn, value_and_created_fn)
        return last

    async def get(
        self,
        creator: Callable[[], Any],
        value_fn: Optional[Callable[[], Any]] = None,
        value_and_created_fn: Optional[Callable[[], Any]] = None,
    ) -> Any:
        """Return the value that ``acquire()`` would give its ``as`` target:
        the same arguments and rules, without an ``async with`` block:
        ``value = await d.get(creator)``."""
        # __aexit__ does nothing, so entering alone is the whole acquisition.
        return await self.acquire(creator, value_fn, value_and_created_fn).__aenter__()

    def __repr__(self) -> str:
        return repr(self._state)


# -- AsyncLock -----------------------------------------------------------------------------


class AsyncLock:
    """The dogpile.core / dogpile.cache ``Lock`` for coroutines:
    ``async with AsyncLock(...) as value``.

    :param mutex: an asyncio lock (coroutine ``acquire()``; ``release()``
        and ``locked()`` plain or coroutines), like ``asyncio.Lock``.
    :param creator: returns a new ``(value, createdtime)``; a plain or a
        coroutine function.
    :param value_and_created_fn: returns the stored ``(value,
        createdtime)`` or raises NeedRegenerationException; plain or
        coroutine.
    :param expiretime: seconds a value stays fresh, or None for never.
    :param async_creator: if given, called with the (acquired) mutex
        instead of ``creator`` when a stale value exists; it must release
        the mutex itself (typically from a task it starts), and the stale
        value is returned at once.  If it returns an awaitable, that is
        awaited first.
    """

    __slots__ = ("mutex", "creator", "value_and_created_fn", "_expiretime", "async_creator")

    _is_expired: Callable[[float, float], bool] = staticmethod(_CHOSEN_CORE._is_expired)

    def __init__(
        self,
        mutex: Any,
        creator: Callable[[], Any],
        value_and_created_fn: Callable[[], Any],
        expiretime: Optional[float],
        async_creator: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        # Made for every use: the functions and the mutex are checked when
        # first needed, before anything is locked.
        kind = expiretime.__class__
        if kind is float and expiretime >= 0:  # type: ignore[operator]  # false for nan
            self._expiretime: float = expiretime  # type: ignore[assignment]
        else:
            self._expiretime = expiretime_seconds(expiretime)
        self.mutex = mutex
        self.creator = creator
        self.value_and_created_fn = value_and_created_fn
        self.async_creator = async_creator

    @property
    def expiretime(self) -> Optional[float]:
        """Seconds a value stays fresh, or None for never."""
        return expiretime_public(self._expiretime)

    @expiretime.setter
    def expiretime(self, value: Optional[float]) -> None:
        self._expiretime = expiretime_seconds(value)

    async def _stored(self) -> Tuple[Any, float]:
        try:
            result = self.value_and_created_fn()
        except NeedRegenerationException:
            return _NO_VALUE, -1.0
        except TypeError:
            check_callable("value_and_created_fn", self.value_and_created_fn)
            raise
        if _is_awaitable(result):
            try:
                result = await result
            except NeedRegenerationException:
                return _NO_VALUE, -1.0
        return _pair(result, "value_and_created_fn")

    async def __aenter__(self) -> Any:
        # _stored(), inlined: this is the fresh path.
        try:
            result = self.value_and_created_fn()
            if _is_awaitable(result):
                result = await result
        except NeedRegenerationException:
            return await self._create(_NO_VALUE, -1.0)
        except TypeError:
            check_callable("value_and_created_fn", self.value_and_created_fn)
            raise
        value, createdtime = _pair(result, "value_and_created_fn")
        if not self._is_expired(createdtime, self._expiretime):
            return value
        return await self._create(value, createdtime)

    async def _create(self, value: Any, createdtime: float) -> Any:
        mutex = self.mutex
        has_value = has_stale(value, createdtime)
        check_callable("creator", self.creator)
        check_callable("async_creator", self.async_creator, optional=True)
        for method in ("acquire", "release"):
            if not callable(getattr(mutex, method, None)):
                _check_async_lock(mutex, "mutex")
        if has_value:
            if isinstance(mutex, (asyncio.Lock, asyncio.Semaphore)):
                got = _try_acquire_now(mutex)
            else:
                got = await _try_acquirer(mutex)(mutex)
            if not got:
                return value
        else:
            wait = getattr(mutex, "acquire_or_wait", None)
            if wait is None:
                await _acquire(mutex)
            else:
                # A mutex that can wait for its holder's release without
                # taking it (AsyncRedisMutex): read the value once after
                # each release, and take the lock only to create.
                while not await _acquire_or_wait(mutex, wait, -1.0):
                    stored, createdtime = await self._stored()
                    if stored is _NO_VALUE:
                        continue
                    if not self._is_expired(createdtime, self._expiretime):
                        return stored
                    if has_stale(stored, createdtime):
                        return await self._create(stored, createdtime)
        handed_off = False
        try:
            if not has_value:
                # We waited: another task or process may have created
                # meanwhile.  Any pair counts as a value, whatever its time
                # (as in the sync Lock: dogpile.cache's contract); an
                # expired value taken without waiting is not read again.
                stored, createdtime = await self._stored()
                if stored is not _NO_VALUE:
                    value = stored
                    if not self._is_expired(createdtime, self._expiretime):
                        return value
                    has_value = True
            if has_value and self.async_creator is not None:
                result = self.async_creator(mutex)
                if _is_awaitable(result):
                    await result
                # Only now: if async_creator raised, the mutex is still ours.
                handed_off = True
                return value
            result = self.creator()
            if _is_awaitable(result):
                result = await result
            value, createdtime = _pair(result, "creator")
            return value
        finally:
            if not handed_off:
                await _release(mutex)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        pass


# -- over either core ----------------------------------------------------------------------


class Classes(NamedTuple):
    """The asyncio classes over one core (see _build)."""

    AsyncDogpile: Any
    AsyncLock: Any


def _build(core: types.ModuleType) -> Classes:
    """AsyncDogpile and AsyncLock over ``core`` (``dogpile._core`` or
    ``dogpile._core_py``): their fresh path uses that core's
    ``_is_expired``.  Over the core ``import dogpile`` chose, these are the
    public classes themselves; over the other, subclasses of them."""
    if core is _CHOSEN_CORE:
        return Classes(AsyncDogpile, AsyncLock)
    expired = staticmethod(core._is_expired)
    return Classes(
        type(
            "AsyncDogpile",
            (AsyncDogpile,),
            {"__slots__": (), "_is_expired": expired, "__module__": __name__},
        ),
        type(
            "AsyncLock",
            (AsyncLock,),
            {"__slots__": (), "_is_expired": expired, "__module__": __name__},
        ),
    )
