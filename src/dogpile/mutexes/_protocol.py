"""The Redis key protocol of RedisMutex and AsyncRedisMutex, written once:
the scripts, the names of the mutex's own keys, the lease and client
checks, how long a waiter blocks, and every error message.  The drivers
(``_redis`` over threads, ``_aio_redis`` over asyncio) only send the
commands and wait.  redis-py is imported only when a mutex is made."""

import inspect
import math
import random
import threading
import time
import weakref
from typing import Any, Dict, Optional, Tuple, Type, Union

from .._errors import LockError
from ._common import _BACKOFF_CAP, LeaseLost

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
#
# Both wake the waiters when they delete (_WAKE: see _RELEASE): a take
# that is taken back was seen held by whoever tried the key meanwhile, and
# they wait for a release that will never come otherwise.
_WAKE = """
    redis.call('del', KEYS[3])
    redis.call('rpush', KEYS[3], '1')
    redis.call('pexpire', KEYS[3], ARGV[3])
    local added = redis.pcall('xadd', KEYS[4], 'MAXLEN', '1', '*', 'released', '1')
    if type(added) ~= 'table' then
        redis.call('pexpire', KEYS[4], ARGV[3])
    end
"""
_DELETE_IF_OURS = (
    """
if redis.call('get', KEYS[1]) == ARGV[1] then
    local deleted = redis.call('del', KEYS[1])
"""
    + _WAKE
    + """
    return deleted
end
return 0
"""
)

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
# It also wakes the waiters.  KEYS[3] is a list that acquire()'s waiters
# block on (BLPOP) instead of polling the key: a pop wakes one of them, the
# one that will take the lock next.  It holds one element after a release
# (any number of releases), and expires after a lease (ARGV[3]) so that
# nothing is left behind; a waiter that pops a stale one tries the key once
# more and waits again.  KEYS[4] is a stream that acquire_or_wait()'s
# waiters read (XREAD BLOCK) from the last entry id they saw: one entry
# wakes every one of them (see _TAKE_OR_LOOK).  It keeps only its last
# entry and expires after a lease too.  pcall: a server without streams
# (before Redis 5) still releases; its waiters poll (see _wake_plan).
_RELEASE = (
    """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('set', KEYS[2], '1', 'PX', ARGV[2])
    local deleted = redis.call('del', KEYS[1])
"""
    + _WAKE
    + """
    return deleted
end
return redis.call('exists', KEYS[2])
"""
)

# acquire_or_wait()'s one try, atomic: _ACQUIRE's SET NX (ARGV[3] = '1'),
# or only a look at the key (ARGV[3] = '0': a thread or task of this
# process holds the key or is taking it, and must not be overtaken), and
# when the key is not taken, the id of the wake-up stream's last entry.
# The waiter's XREAD starts from that id, so a release that lands after
# this script, even before the XREAD is sent, has added an entry past it
# and the XREAD returns at once: no wake-up is lost between the look and
# the wait, and every waiter reads the same entry (a broadcast, where
# BLPOP wakes one).
#
# Reply {code, id}.  code: 1 taken (also when the key is already this
# token's: a resent command), 2 the key is free and was only looked at,
# 0 held without an expiry, <= -1 held with -1 - code ms of lease left.
# id: the last entry's id, "0-0" before the first release (any entry is
# past it), "" on a server without streams.  The keys are numbered as
# _RELEASE's (_RedisKey._all_keys); KEYS[2] and KEYS[3] are unused here.
_TAKE_OR_LOOK = """
if ARGV[3] == '1' then
    if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
        return {1, ''}
    end
    if redis.call('get', KEYS[1]) == ARGV[1] then
        return {redis.call('pexpire', KEYS[1], ARGV[2]), ''}
    end
end
local left = redis.call('pttl', KEYS[1])
if left == -2 then
    return {2, ''}
end
local id = '0-0'
local last = redis.pcall('xrevrange', KEYS[4], '+', '-', 'COUNT', 1)
if last.err then
    id = ''
elseif last[1] then
    id = last[1][1]
end
if left < 0 then
    return {0, id}
end
return {-1 - left, id}
"""
_RELEASED_MS = 60_000

# A waiter blocks on the wake-up list until a release pushes to it, or at
# most until the holder's lease ends (the holder died: nobody releases), and
# never longer than this: the safety net for a wake-up that was lost (taken
# by a waiter that then lost the key to a newcomer, or cut off with its
# connection), and for a lease that was renewed meanwhile.
_WAKE_CAP = 1.0


def _released_key(name: Union[str, bytes], token: str, cluster: bool = False) -> bytes:
    """The note a release leaves for ``token`` (see _RELEASE)."""
    return _sibling_key(name, b":dogpile-released:" + token.encode(), cluster)


def _wake_key(name: Union[str, bytes], cluster: bool = False) -> bytes:
    """The list that waiters for ``name`` block on (see _RELEASE)."""
    return _sibling_key(name, b":dogpile-wake", cluster)


def _stream_key(name: Union[str, bytes], cluster: bool = False) -> bytes:
    """The stream that acquire_or_wait()'s waiters for ``name`` read (see
    _RELEASE and _TAKE_OR_LOOK)."""
    return _sibling_key(name, b":dogpile-released-stream", cluster)


def _sibling_key(name: Union[str, bytes], suffix: bytes, cluster: bool) -> bytes:
    """A key of the mutex's own, named after the lock key ``name``.

    On one server, ``name`` + ``suffix``: the name stays a prefix, so that
    an ACL user allowed ``name``'s prefix (``~app:*`` for ``app:lock``) may
    use the mutex's keys too.  On a Redis Cluster the key must also share
    ``name``'s hash slot, since a cluster runs a script only on keys of one
    slot: a name with a hash tag ``{...}`` gives its slot to any key that
    starts with it; a name without one is hashed whole, which ``{name}``
    reproduces unless the name holds a "}" (such a name is refused: see
    _RedisKey._set_key)."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if not cluster:
        return raw + suffix
    start = raw.find(b"{")
    if start >= 0 and raw.find(b"}", start + 1) > start + 1:
        return raw + suffix
    if b"}" not in raw:
        return b"{" + raw + b"}" + suffix
    return raw + suffix  # no key shares its slot: refused by _set_key


def _no_permission(exc: BaseException) -> bool:
    """Did the server refuse a command to the client's ACL user, before it
    ran?  (redis-py and valkey raise NoPermissionError for a NOPERM reply.)"""
    return type(exc).__name__ == "NoPermissionError" or str(exc).startswith("NOPERM")


def _refused_in_script(exc: BaseException) -> bool:
    """Did a script fail at a command it calls that the client's ACL user may
    not run?  (A plain error, after the script's earlier commands ran: a
    key it took is still taken back.)"""
    text = str(exc)
    # Redis 7.0's words, then 7.2's and 8's.
    return "can't run this command" in text or "ACL failure in script" in text


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


def _connection_kwargs(client: Any) -> Dict[str, Any]:
    """The options the client opens its connections with: its pool's, or a
    cluster client's (redis-py's RedisCluster has no connection_pool: each
    node has its own, made with these options)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:
        kwargs = getattr(client, "connection_kwargs", None)  # redis.asyncio.cluster
    if kwargs is None:
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else {}


def _cluster(client: Any) -> bool:
    """Is ``client`` a Redis Cluster client (redis-py's RedisCluster, sync or
    asyncio): it routes each command by the hash slot of its keys."""
    return callable(getattr(client, "keyslot", None)) and getattr(
        client, "nodes_manager", None
    ) is not None


# A server ends a blocked BLPOP or XREAD whose timeout has passed at its
# next tick, hz times a second (10 by default): up to 0.1 s late.  (Seen on
# Redis 7.0: a 0.1 s BLPOP answered after 0.2008 s.)
_SERVER_LATE = 0.1

# A cap shorter than this leaves no wait worth blocking on the server for.
_SHORTEST_BLOCK = 0.01


def _wake_cap(client: Any) -> float:
    """The longest a waiter blocks in one BLPOP or XREAD: _WAKE_CAP, and short
    enough that the reply, which the server may send _SERVER_LATE after the
    wait's end, still comes within half the client's socket timeout, which
    would otherwise cut the wait off (a TimeoutError, or a resend that
    overruns the caller's timeout).  Under _SHORTEST_BLOCK when the socket
    timeout is too short to block at all (under 0.22 s)."""
    timeout = _connection_kwargs(client).get("socket_timeout")
    if isinstance(timeout, (int, float)) and timeout > 0:
        return min(_WAKE_CAP, timeout / 2 - _SERVER_LATE)
    return _WAKE_CAP


def _wake_wait(taken: int, deadline: Optional[float], cap: float) -> Optional[float]:
    """Seconds a waiter may block after ``_ACQUIRE`` (or ``_TAKE_OR_LOOK``)
    returned ``taken`` (<= 0):
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


def _wake_plan(
    reply: Any, deadline: Optional[float], cap: float
) -> "Optional[Tuple[Optional[bytes], int, float]]":
    """How acquire_or_wait() waits after ``_TAKE_OR_LOOK`` replied ``reply``
    and did not take the key: None to return at once (the key was free and
    only looked at, or the deadline has passed); else (the stream id to
    XREAD from, or None on a server without streams, the XREAD's BLOCK in
    ms, the seconds to sleep instead when there is no stream to read: one
    back-off step, as acquire() polls there, after which the caller looks
    at the value and asks again)."""
    code = int(reply[0])
    if code == 2:
        return None
    wait = _wake_wait(code, deadline, cap)
    if wait is None:
        return None
    # XREAD's BLOCK 0 would wait for ever; it counts whole milliseconds.
    block = max(1, math.ceil(wait * 1000))
    sleep = min(wait, _BACKOFF_CAP * (0.5 + 0.5 * random.random()))
    last = reply[1]
    if isinstance(last, str):
        last = last.encode()
    # "": a server without streams, before Redis 5 (untested).
    return (bytes(last) if last else None), block, sleep


# The waits of this process blocked on the server now (BLPOP, XREAD), per
# connection pool: each holds one of the pool's connections until it
# returns.  See _RedisKey._may_block.
_blocked: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_blocked_guard = threading.Lock()


def _join_the_leader(mine: bytes, leaders: bytes) -> Optional[bool]:
    """May a waiter whose script read the stream id ``mine`` wait for the
    XREAD that this process's leader sent from ``leaders``?  True: that
    XREAD returns at the first release past ``mine`` too (the same id, or
    ``mine`` newer: an entry past ``leaders`` is there).  False: return at
    once, a release has added an entry since this waiter's script (its id
    older: the stream only grows, by releases), and the leader's XREAD would
    wait for the next one.  None: no stream at this waiter's script ("0-0")
    but one at the leader's: the stream may have expired since the leader's
    script, or a first release landed since this one's, which the ids
    cannot tell apart: an XREAD of its own."""
    if mine == leaders:
        return True
    if mine == b"0-0":
        return None
    try:
        mine_ms, _, mine_seq = mine.partition(b"-")
        ms, _, seq = leaders.partition(b"-")
        newer = (int(mine_ms), int(mine_seq or 0)) > (int(ms), int(seq or 0))
    except ValueError:  # pragma: no cover - not a stream id
        return None
    return True if newer else False


def _unknown_command(exc: BaseException) -> bool:
    """Is ``exc`` the server's answer to a command it does not have (XREAD
    before Redis 5)?"""
    return "unknown command" in str(exc).lower()


def _key_free(reply: Any) -> bool:
    """Did acquire_or_wait()'s look (``_TAKE_OR_LOOK`` with ARGV[3] '0')
    find the key free?"""
    return int(reply[0]) == 2


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
    """host:port/db (or the socket path) of the client's server, for errors;
    for a cluster client, the first node it was given."""
    if _cluster(client):
        nodes = getattr(client.nodes_manager, "startup_nodes", None)
        first = next(iter(nodes), None) if isinstance(nodes, dict) else None
        return f"{first} (Redis Cluster)" if first else "a Redis Cluster"
    kwargs = _connection_kwargs(client)
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}?db={db}"
    if "host" in kwargs:
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}/{db}"
    service = getattr(getattr(client, "connection_pool", None), "service_name", None)
    if isinstance(service, str):
        # A Sentinel's master_for(): the address changes with failovers.
        return f"the master of Sentinel service {service!r} (db {db})"
    text = repr(client)
    return text if len(text) <= 80 else text[:77] + "..."


# The commands the mutex sends, then those its scripts call (an ACL user
# refused one of those is refused the script).
_COMMANDS = (
    "EVAL", "BLPOP", "XREAD", "EXISTS",
    "SET", "GET", "PEXPIRE", "PTTL", "DEL", "RPUSH", "XADD", "XREVRANGE",
)


def _glob_escape(raw: bytes) -> bytes:
    """``raw`` matched literally by an ACL key pattern (a glob)."""
    for special in (b"\\", b"*", b"?", b"[", b"]"):
        raw = raw.replace(special, b"\\" + special)
    return raw


def _same_kind(exc: BaseException, message: str, fallback: Type[Exception]) -> BaseException:
    """``exc``'s own class with ``message``, so that the caller's ``except
    redis.ConnectionError`` (or ResponseError) still catches it."""
    try:
        return type(exc)(message)
    except Exception:  # pragma: no cover - a class with another signature
        return fallback(message)


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


class _RedisKey:
    """What RedisMutex and AsyncRedisMutex share: the key, its lease, their
    checks, the decisions of acquire(), release() and the renewal, and the
    error messages.  How they wait differs (threads and a renewal thread,
    or tasks and a renewal task), and so does ``_renewal``, which each sets
    up."""

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
        "_wake_stream",
        "_cluster_keys",
        "_pool",
        "_streams",
        "_wake",
        "_wake_cap",
        "__weakref__",
    )
    # The client's "unreachable" errors, ConnectionError first.
    _errors: Tuple[Type[BaseException], ...]

    def _set_key(
        self,
        client: Any,
        name: Union[str, bytes],
        lease: float,
        auto_renew: bool,
        asynchronous: bool,
    ) -> None:
        self._errors = _client_errors(client)
        self._check_client(client, asynchronous)
        if not isinstance(name, (str, bytes)):
            raise TypeError(f"name must be a str or bytes key, not {type(name).__name__!r}")
        if not name:
            raise ValueError("name must be a non-empty key")
        self._lease_ms = _lease_ms(lease)
        self._lease = float(lease)
        self._client = _mutex_client(client)
        pool = getattr(self._client, "connection_pool", None)
        limit = getattr(pool, "max_connections", None)
        # A bounded pool (max_connections), or None: any number of waits
        # may block (redis-py's default bound is 2**31; a cluster client has
        # a pool per node, and no connection_pool).
        self._pool = pool if isinstance(limit, int) and limit < 2**20 else None
        cluster = _cluster(client)
        self._cluster_keys = cluster
        self._wake_list = _wake_key(name, cluster)
        if cluster and client.keyslot(name) != client.keyslot(self._wake_list):
            # Its scripts could not run: a cluster runs one only on keys of
            # one slot (see _sibling_key).
            raise ValueError(
                f"name {name!r} has a '}}' outside a hash tag: on a Redis Cluster the "
                "mutex's own keys cannot share its hash slot; put a hash tag in it "
                "(e.g. '{...}') or leave out the '}'"
            )
        self._wake = True  # False once the server refused a BLPOP (Redis < 6)
        self._wake_stream = _stream_key(name, cluster)
        self._streams = True  # False once the server refused an XREAD (Redis < 5)
        self._wake_cap = _wake_cap(self._client)
        if self._wake_cap < _SHORTEST_BLOCK:
            # A socket timeout too short to block on the server: wait as
            # without BLPOP and XREAD, by polling and sleeping, each step
            # at most a back-off step.
            self._wake = self._streams = False
            self._wake_cap = _BACKOFF_CAP
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

    def _check_client(self, client: Any, asynchronous: bool) -> None:
        """``client`` must be a redis client of the mutex's kind."""
        kind = type(self).__name__
        wanted = (
            "an asyncio redis client (redis.asyncio.Redis, redis.asyncio.cluster."
            "RedisCluster or valkey.asyncio.Valkey)"
            if asynchronous
            else "a redis client (redis.Redis, redis.cluster.RedisCluster or valkey.Valkey)"
        )
        if callable(getattr(client, "execute", None)):
            # A pipeline (plain or cluster) queues each command until
            # execute(): its eval() returns the pipeline, or is refused.
            raise TypeError(
                f"{kind} needs {wanted}, not the pipeline {type(client).__name__!r}, whose "
                "commands wait for execute(): pass the client it came from"
            )
        # redis.asyncio's command methods are plain functions that return
        # the coroutine of an async execute_command.
        coroutines = inspect.iscoroutinefunction(getattr(client, "execute_command", None))
        # eval and exists are what the mutex calls (its SET runs inside a
        # script); set is there to tell a Redis client from other objects
        # that happen to have an eval().
        for method in ("set", "eval", "exists"):
            function = getattr(client, method, None)
            if not callable(function):
                raise TypeError(
                    f"{kind} needs {wanted}, not {type(client).__name__!r}, which has "
                    f"no {method}()"
                )
            if not asynchronous and (coroutines or inspect.iscoroutinefunction(function)):
                raise TypeError(
                    f"{kind} needs a synchronous redis client, not the asyncio "
                    f"{type(client).__name__!r}: its calls return coroutines that "
                    "a lock cannot wait for"
                )
        if asynchronous and not coroutines:
            raise TypeError(
                f"{kind} needs an asyncio redis client (redis.asyncio.Redis or "
                "redis.asyncio.cluster.RedisCluster), not the synchronous "
                f"{type(client).__name__!r}: use dogpile.mutexes.RedisMutex for it"
            )

    def _acquire_command(self, token: str) -> Tuple[Any, ...]:
        """The arguments of ``eval`` that try to take the key for ``token``.
        The keys that release() will need are declared too, unused: a
        client whose ACL user may not touch them is refused here, before
        anything is taken, not at release() with the key left held."""
        return (_ACQUIRE, *self._all_keys(token), token, self._lease_ms)

    def _take_or_look_command(self, token: str, take: bool) -> Tuple[Any, ...]:
        """The arguments of ``eval`` of acquire_or_wait()'s try: take the key
        for ``token`` (or only look, if not ``take``), and if not taken, read
        the wake-up stream's last id."""
        # All four keys declared, as in _acquire_command; the script reads
        # the lock key and the stream.
        return (_TAKE_OR_LOOK, *self._all_keys(token), token, self._lease_ms, "1" if take else "0")

    def _released_note(self, token: str) -> bytes:
        return _released_key(self._name, token, self._cluster_keys)

    def _all_keys(self, token: str) -> Tuple[Any, ...]:
        """``numkeys`` and the mutex's keys, in the order every script
        numbers them: the lock key, ``token``'s release note, the wake-up
        list, the wake-up stream."""
        return (4, self._name, self._released_note(token), self._wake_list, self._wake_stream)

    @staticmethod
    def _taken(reply: Any) -> bool:
        """Did the script that replied ``reply`` take the key: ``_ACQUIRE``
        (a number) or ``_TAKE_OR_LOOK`` (a pair)?"""
        if isinstance(reply, (list, tuple)):
            return int(reply[0]) == 1
        return bool(reply > 0)

    def _may_block(self) -> bool:
        """May a wait block on the server now?  A BLPOP or XREAD holds a
        connection of the client's pool until it returns, and a creator
        needs one to write its value and release.  So on a bounded pool the
        waits of this process that block at once take at most half its
        ``max_connections`` (none of a pool of one); the others poll, one
        back-off step at a time.  True: call _blocked_done() after it."""
        pool = self._pool
        if pool is None:
            return True
        with _blocked_guard:
            blocked = _blocked.get(pool, 0)
            if blocked >= pool.max_connections // 2:
                return False
            _blocked[pool] = blocked + 1
        return True

    def _blocked_done(self) -> None:
        pool = self._pool
        if pool is not None:
            with _blocked_guard:
                _blocked[pool] = _blocked.get(pool, 1) - 1

    def _wake_plan(
        self, reply: Any, deadline: Optional[float]
    ) -> "Optional[Tuple[Optional[Dict[bytes, bytes]], int, float]]":
        """How acquire_or_wait() waits for a release after its try replied
        ``reply`` (not taken): None to return False at once; else (the
        ``streams`` argument of XREAD, or None to sleep instead, its BLOCK
        in ms, the seconds to sleep instead of the XREAD or after it
        failed)."""
        plan = _wake_plan(reply, deadline, self._wake_cap)
        if plan is None:
            return None
        last, block, sleep = plan
        if last is None or not self._streams:
            return None, block, sleep
        return {self._wake_stream: last}, block, sleep

    def _stream_failed(self, exc: Exception) -> None:
        """An XREAD failed with ``exc``: raise if the server is unreachable.
        A server that does not know the command (before Redis 5) has no
        streams: sleep from now on (see _wake_plan).  Any other failure (a
        reply the client cannot decode, a key of another type) ends this
        wait only: the caller sleeps one back-off step, never spins, and the
        next wait reads the stream again."""
        if isinstance(exc, self._errors):
            raise self._unreachable(exc, "acquire_or_wait()") from exc
        if _unknown_command(exc):
            self._streams = False

    def _release_command(self, token: str) -> Tuple[Any, ...]:
        """The arguments of ``eval`` that release ``token``'s key."""
        return (_RELEASE, *self._all_keys(token), token, _RELEASED_MS, self._lease_ms)

    def _delete_command(self, token: str) -> Tuple[Any, ...]:
        """The arguments of ``eval`` that take back a key ``token`` may hold,
        waking the waiters if it did (KEYS[2] and ARGV[2] unused: the keys
        and arguments are numbered as _RELEASE's, for _WAKE)."""
        return (_DELETE_IF_OURS, *self._all_keys(token), token, 0, self._lease_ms)

    def _take_back_after(self, exc: Optional[BaseException]) -> bool:
        """May the SET of an acquire() that failed with ``exc`` have reached
        the server?  (Not after a ConnectionError: the client has already
        retried and failed to reach the server, another try would only
        double the caller's wait, and the lease ends the key anyway.  Nor
        after a NOPERM: the server refused the script before it ran.)"""
        return not isinstance(exc, self._errors[0]) and not (
            exc is not None and _no_permission(exc)
        )

    def _wait_after(
        self, taken: int, blocking: bool, deadline: Optional[float]
    ) -> Optional[float]:
        """Seconds to wait for a release after ``_ACQUIRE`` returned
        ``taken`` (<= 0), or None to give up."""
        if not blocking:
            return None
        return _wake_wait(taken, deadline, self._wake_cap)

    def _wake_failed(self, exc: Exception) -> None:
        """A BLPOP failed with ``exc``: raise if the server is unreachable.
        A server before Redis 6, which takes whole seconds only, refuses
        the timeout: poll with back-off from now on, as before wake-ups.
        Any other failure (a reply the client cannot decode, say) costs
        this turn one back-off step; the next turn blocks again."""
        if isinstance(exc, self._errors):
            raise self._unreachable(exc, "acquire()") from exc
        if "not an integer" in str(exc) or _unknown_command(exc):
            self._wake = False

    def _lease_lost(self, renewal: "Optional[_RenewalState]") -> LeaseLost:
        """The error of a release() that found the key no longer its own."""
        how = (
            "the lease was not renewed"
            if renewal is None
            else "the renewer found it gone or taken"
            if renewal.lost
            else "the key was gone or held another token at release"
        )
        if renewal is not None and renewal.error is not None:
            how += f"; the last renewal failed: {renewal.error}"
        return LeaseLost(
            f"{type(self).__name__} {self._name!r} lost its lock before release() "
            f"(lease {self._lease:g} s; {how}); the key was left alone"
        )

    def _not_held(self) -> LockError:
        return LockError(f"release(): {type(self).__name__} {self._name!r} is not held")

    def _failure(self, exc: BaseException, during: str) -> Optional[BaseException]:
        """What to raise for a command that failed with ``exc``, or None to
        let ``exc`` through: the server unreachable, or the client's ACL user
        refused the mutex's keys."""
        if isinstance(exc, self._errors):
            return self._unreachable(exc, during)
        if _no_permission(exc) or _refused_in_script(exc):
            return self._refused(exc, during)
        return None

    def _refused(self, exc: BaseException, during: str) -> BaseException:
        def show(key: Union[str, bytes]) -> str:
            return repr(key.decode(errors="backslashreplace") if isinstance(key, bytes) else key)

        def pattern(raw: bytes, star: str) -> str:
            # As typed in ACL SETUSER (a repr would double the escapes).
            return "'~" + _glob_escape(raw).decode(errors="backslashreplace") + star + "'"

        name = self._name
        head = (
            f"{type(self).__name__} {name!r}: the Redis server at "
            f"{_server_address(self._client)} refused {during} to the client's ACL "
            f"user ({exc}); "
        )
        if "command" in str(exc):
            # A command refused, not a key: the key patterns would not help.
            return _same_kind(
                exc,
                head + "the mutex sends " + ", ".join(_COMMANDS[:4]) + " and, in its "
                "scripts, " + ", ".join(_COMMANDS[4:]) + ": allow them, e.g. with "
                + " ".join("+" + command.lower() for command in _COMMANDS),
                PermissionError,
            )
        raw = name.encode() if isinstance(name, str) else bytes(name)
        released = _released_key(name, "", self._cluster_keys)
        keys = [show(name), show(self._wake_list), show(self._wake_stream), show(released + b"*")]
        if self._wake_list.startswith(raw):
            advice = f"e.g. with the ACL key pattern {pattern(raw, '*')}"
        else:
            # A cluster's {name}: prefix; a hash tag inside the name
            # ("app:{lock}") keeps the name a prefix of every key.
            prefix = self._wake_list[: self._wake_list.index(b"}") + 1]
            patterns = f"{pattern(raw, '')} and {pattern(prefix, '*')}"
            advice = (
                f"e.g. with the ACL key patterns {patterns}, "
                "or give the name a hash tag (\"app:{lock}\" for \"app:lock\") so that "
                "its prefix covers them all"
            )
        message = head + f"the mutex uses the keys {', '.join(keys)}: allow them, {advice}"
        return _same_kind(exc, message, PermissionError)

    def _unreachable(self, exc: BaseException, during: str) -> BaseException:
        message = (
            f"{type(self).__name__} {self._name!r}: cannot reach the Redis server at "
            f"{_server_address(self._client)} during {during}: {exc}"
        )
        return _same_kind(exc, message, ConnectionError)

    def __repr__(self) -> str:
        state = "held" if self._token is not None else "free"
        return (
            f"<{type(self).__name__} {self._name!r} at {_server_address(self._client)} "
            f"lease={self._lease:g} auto_renew={self._auto_renew} {state} here>"
        )


def _renew_command(name: Any, token: str, lease_ms: int) -> Tuple[Any, ...]:
    """The arguments of ``eval`` that extend ``token``'s lease, if the key
    is still its own."""
    return (_RENEW, 1, name, token, lease_ms)


class _RenewalState:
    """What one acquisition's renewer (a thread or a task) tells release()."""

    __slots__ = ("lost", "error")

    def __init__(self) -> None:
        self.lost = False  # the renewer found the key gone or someone else's
        self.error: Optional[BaseException] = None  # its last failure, if any

    def failed(self, exc: BaseException) -> None:
        # A passing network failure: try again next interval, while the
        # lease still runs.  If it runs out, release() reports it.
        self.error = exc

    def go_on(self, renewed: Any) -> bool:
        """Renew again after a renewal that returned ``renewed``?"""
        if not renewed:
            self.lost = True
            return False
        return True
