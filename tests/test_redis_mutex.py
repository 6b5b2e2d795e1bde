"""RedisMutex's own behaviour, on a real server (see redis_server.py): the
lease and its renewal, a lost or stolen lock, the renewer thread's life,
bad input and an unreachable server, and the redis client as an optional
import.  What it shares with FileMutex is in test_mutexes.py.

Leases that must run out are short (0.3 s) so that what happens then is
seen in well under a second; waits for the server's clock poll with a
deadline instead of sleeping.  Leases that must be renewed are 1 s: a
renewal more than 2/3 s late (a loaded machine starving the renewer) lets
the key lapse, where 0.3 s leases lapsed about once in 40 runs under
heavy load.
"""

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis_server
from conftest import DEADLINE
from redis_server import free_port, unique_key

import dogpile
from dogpile import LockError, NeedRegenerationException
from dogpile.mutexes import LeaseLost, RedisMutex

# The session's Redis server, as fixtures of this module (see redis_server.py).
redis_url = redis_server.redis_url
redis_client = redis_server.redis_client

if os.environ.get("DOGPILE_REQUIRE_REDIS") == "1":
    import redis  # a missing client is a failure, as a missing server is
else:
    redis = pytest.importorskip("redis", reason='needs the redis client (pip install ".[test]")')

SRC = os.path.dirname(os.path.dirname(dogpile.__file__))


@pytest.fixture
def key(redis_client):
    name = unique_key("lock")
    yield name
    redis_client.delete(name)


def poll(condition, what):
    """Wait for ``condition()`` to hold, up to DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {DEADLINE}s"
        time.sleep(0.005)


def renewer_threads(key):
    return [t for t in threading.enumerate() if t.name.endswith(repr(key)) and "renewer" in t.name]


# -- the key ----------------------------------------------------------------------------


def test_the_key_holds_a_random_token_with_the_lease(redis_client, key):
    mutex = RedisMutex(redis_client, key, lease=5)
    mutex.acquire()
    token = redis_client.get(key)
    assert token and len(token) >= 16
    assert 0 < redis_client.pttl(key) <= 5000
    mutex.release()
    assert redis_client.exists(key) == 0
    mutex.acquire()
    assert redis_client.get(key) != token, "a new token for each acquisition"
    mutex.release()


def test_name_may_be_bytes_and_client_may_decode_responses(redis_url, key):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        mutex = RedisMutex(client, key.encode(), lease=5)
        with mutex:
            assert client.exists(key)
        assert not client.exists(key)
    finally:
        client.close()


def test_properties_and_repr(redis_client, key):
    mutex = RedisMutex(redis_client, key, lease=2.5, auto_renew=False)
    assert (mutex.name, mutex.lease, mutex.auto_renew) == (key, 2.5, False)
    assert "free" in repr(mutex) and key in repr(mutex)
    with mutex:
        assert "held" in repr(mutex)


def test_a_waiter_backs_off_instead_of_spinning(redis_client, key):
    """A blocking acquire polls the key with growing pauses: over 0.3 s of
    waiting it sends a few dozen commands, not thousands."""
    holder, waiter = RedisMutex(redis_client, key), RedisMutex(redis_client, key)
    holder.acquire()
    def evals():
        return redis_client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)

    before = evals()
    assert waiter.acquire(timeout=0.3) is False
    after = evals()
    # 2 ms doubling up to 100 ms: about 8 tries in 0.3 s; allow for other
    # clients of a shared server.
    assert after - before < 40
    holder.release()


# -- the lease --------------------------------------------------------------------------


def test_auto_renew_keeps_the_lock_for_a_creator_slower_than_the_lease(impl, redis_client, key):
    """A creator that runs for a lease and a half keeps the lock: another
    holder cannot take it at any point, and the release finds it still its
    own."""
    lease = 1.0
    mutex = RedisMutex(redis_client, key, lease=lease)
    rival = RedisMutex(redis_client, key, lease=lease)
    tries = []

    def slow_creator():
        end = time.monotonic() + 1.5 * lease
        while time.monotonic() < end:
            tries.append(rival.acquire(False))
            assert redis_client.pttl(key) > 0
            time.sleep(0.02)  # a slow creator's work, between checks
        return "value"

    with impl.Dogpile(60, lock=mutex).acquire(slow_creator) as value:
        assert value == "value"
    assert tries and not any(tries)
    assert not redis_client.exists(key)


def test_without_auto_renew_release_raises_lease_lost(impl, redis_client, key):
    mutex = RedisMutex(redis_client, key, lease=0.3, auto_renew=False)

    def creator_slower_than_the_lease():
        poll(lambda: not redis_client.exists(key), "the lease to run out")
        return "value"

    dogpile_ = impl.Dogpile(60, lock=mutex)
    with pytest.raises(LeaseLost, match="lost its lock") as raised:
        with dogpile_.acquire(creator_slower_than_the_lease):
            pass
    assert isinstance(raised.value, dogpile.LockError)
    # The mutex counts as released, and the Dogpile goes on.
    assert mutex.acquire(False)
    mutex.release()
    with dogpile_.acquire(lambda: "again") as value:
        assert value == "value"  # created above, and fresh


def test_a_lock_taken_over_after_the_lease_is_not_deleted_by_the_old_holder(redis_client, key):
    old = RedisMutex(redis_client, key, lease=0.3, auto_renew=False)
    new = RedisMutex(redis_client, key, lease=10)
    old.acquire()
    poll(lambda: new.acquire(False), "the old lease to run out")
    token = redis_client.get(key)
    with pytest.raises(LeaseLost):
        old.release()
    assert redis_client.get(key) == token
    new.release()


@pytest.mark.parametrize("auto_renew", [True, False], ids=["auto_renew", "no-renew"])
def test_a_stolen_lock_is_never_deleted_or_extended_by_its_old_holder(
    redis_client, key, auto_renew
):
    mutex = RedisMutex(redis_client, key, lease=0.3, auto_renew=auto_renew)
    mutex.acquire()
    redis_client.set(key, "thief", px=60_000)
    if auto_renew:
        # The renewer's compare-and-expire fails on the thief's token and it
        # stops, leaving the thief's expiry alone.
        threads = renewer_threads(key)
        assert len(threads) == 1
        threads[0].join(DEADLINE)
        assert not threads[0].is_alive()
        assert redis_client.pttl(key) > 30_000
    with pytest.raises(LeaseLost):
        mutex.release()
    assert redis_client.get(key) == b"thief"
    assert redis_client.pttl(key) > 30_000


# -- the renewer thread -------------------------------------------------------------------


def test_the_renewer_stops_at_release(redis_client, key):
    mutex = RedisMutex(redis_client, key, lease=0.3)
    mutex.acquire()
    threads = renewer_threads(key)
    assert len(threads) == 1 and threads[0].daemon
    mutex.release()
    threads[0].join(DEADLINE)
    assert not threads[0].is_alive()
    assert renewer_threads(key) == []


def test_no_renewer_without_auto_renew(redis_client, key):
    with RedisMutex(redis_client, key, auto_renew=False):
        assert renewer_threads(key) == []


def test_the_renewer_stops_when_a_held_mutex_is_dropped(redis_client, key):
    """A mutex garbage-collected while held must not leave a thread renewing
    its lease for ever: the renewer ends, and the lease runs out."""
    mutex = RedisMutex(redis_client, key, lease=0.3)
    mutex.acquire()
    (thread,) = renewer_threads(key)
    del mutex
    gc.collect()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    poll(lambda: not redis_client.exists(key), "the dropped mutex's lease to run out")


def test_exit_with_a_held_mutex_does_not_hang(redis_url, key):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import redis
                from dogpile.mutexes import RedisMutex
                mutex = RedisMutex(redis.Redis.from_url({redis_url!r}), {key!r}, lease=0.5)
                mutex.acquire()
                print("held")
                """
            ),
        ],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "held"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_a_forked_child_does_not_release_the_parents_lock(redis_url, key):
    script = f"""
        import os, redis
        from dogpile import LockError
        from dogpile.mutexes import RedisMutex
        client = redis.Redis.from_url({redis_url!r})
        mutex = RedisMutex(client, {key!r}, lease=10, auto_renew=False)
        mutex.acquire()
        token = client.get({key!r})
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                mutex.release()
                code = 3
            except LockError:
                pass
            if mutex.acquire(False):
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert client.get({key!r}) == token
        mutex.release()
        assert not client.exists({key!r})
        print("ok")
        """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# -- bad input ---------------------------------------------------------------------------


class NotAClient:
    def set(self, *args, **kwargs):
        return True


@pytest.mark.parametrize(
    "client", [object(), "redis://localhost:6379", NotAClient()], ids=["object", "url", "set-only"]
)
def test_a_client_that_is_not_a_redis_client_is_a_type_error(client):
    with pytest.raises(TypeError, match="redis client"):
        RedisMutex(client, "k")


def test_an_asyncio_client_is_a_type_error():
    import redis.asyncio

    async def make():
        return redis.asyncio.Redis()

    # Made in a running loop: on 3.9, asyncio.Lock() outside one needs an
    # event loop set, and an earlier asyncio.run() left none.
    client = asyncio.run(make())
    with pytest.raises(TypeError, match="synchronous"):
        RedisMutex(client, "k")


@pytest.mark.parametrize(
    "lease, error",
    [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     (0.0001, ValueError), ("30", TypeError), (None, TypeError), (True, TypeError)],
    ids=["zero", "negative", "nan", "inf", "under-1ms", "str", "None", "bool"],
)
def test_bad_lease(redis_client, lease, error):
    with pytest.raises(error, match="lease"):
        RedisMutex(redis_client, "k", lease=lease)


@pytest.mark.parametrize("name, error", [("", ValueError), (5, TypeError), (None, TypeError)])
def test_bad_name(redis_client, name, error):
    with pytest.raises(error, match="name"):
        RedisMutex(redis_client, name)


@pytest.fixture
def unreachable():
    """A client of a loopback port that nothing listens on."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    port = free_port()
    # No retries: redis-py's default (three, with back-off up to seconds)
    # would only make the test slow; the error is the same.
    client = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    yield client, f"127.0.0.1:{port}"
    client.close()


def test_an_unreachable_server_is_a_clear_error_naming_it(unreachable):
    client, address = unreachable
    mutex = RedisMutex(client, "k", lease=1)  # no round trip yet
    for attempt in (lambda: mutex.acquire(), lambda: mutex.acquire(False), mutex.locked):
        with pytest.raises(redis.ConnectionError) as raised:
            attempt()
        assert address in str(raised.value)
        assert "'k'" in str(raised.value)
        assert isinstance(raised.value.__cause__, redis.ConnectionError)
    # Nothing is held: not the local lock, not a token.
    with pytest.raises(LockError):
        mutex.release()


def test_an_unreachable_server_reaches_the_dogpile_caller_and_holds_nothing(impl, unreachable):
    client, address = unreachable
    dogpile_ = impl.Dogpile(60, lock=RedisMutex(client, "k", lease=1))
    calls = []
    for _ in range(2):  # the second call fails the same way: nothing was left held
        with pytest.raises(redis.ConnectionError, match=address):
            with dogpile_.acquire(lambda: calls.append(1)):
                pass
    assert calls == []


def test_a_timed_out_acquire_leaves_no_lock_behind(redis_client, key):
    """The SET may reach the server and its reply be lost (here: a timeout
    raised after it ran); the mutex takes back what is its own."""
    mutex = RedisMutex(redis_client, key, lease=30)
    original_eval = redis_client.eval
    calls = []

    def eval_then_time_out(*args):
        result = original_eval(*args)
        if not calls:
            calls.append(args)
            raise redis.TimeoutError("Timeout reading from socket")
        return result

    redis_client.eval = eval_then_time_out
    try:
        with pytest.raises(redis.TimeoutError, match="Timeout reading") as raised:
            mutex.acquire()
    finally:
        del redis_client.eval
    assert "cannot reach the Redis server" in str(raised.value)
    assert not redis_client.exists(key)
    assert mutex.acquire(False)
    mutex.release()


def test_a_resent_acquire_finds_its_own_key(redis_client, key):
    """redis-py resends a command whose reply a broken connection lost; the
    second SET must not find the first one's key busy."""
    mutex = RedisMutex(redis_client, key, lease=30)
    original_eval = redis_client.eval

    def eval_twice(*args):
        original_eval(*args)
        return original_eval(*args)

    redis_client.eval = eval_twice
    try:
        assert mutex.acquire(False) is True
    finally:
        del redis_client.eval
    assert RedisMutex(redis_client, key).acquire(False) is False
    mutex.release()
    assert not redis_client.exists(key)


def test_the_client_is_imported_only_for_redis_mutex_and_named_when_missing(tmp_path):
    script = f"""
        import sys
        import dogpile.mutexes
        from dogpile.mutexes import FileMutex, RedisMutex
        with FileMutex({str(tmp_path / 'x.lock')!r}):
            pass
        assert "redis" not in sys.modules, "imported without need"
        sys.modules["redis"] = None  # as if not installed
        try:
            RedisMutex(object(), "k")
        except ImportError as exc:
            print(exc)
        """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "dogpile[redis]"' in proc.stdout


# -- with Dogpile and Lock -----------------------------------------------------------------


def test_lock_api_no_value_waits_then_reads_what_another_holder_created(impl, redis_client, key):
    """dogpile.cache's pattern: the value in Redis, read again once the
    mutex is taken, so a creation by another holder is not repeated."""
    value_key = key + ":value"
    holder = RedisMutex(redis_client, key, lease=5)
    holder.acquire()
    created = []

    def value_and_created():
        raw = redis_client.get(value_key)
        if raw is None:
            raise NeedRegenerationException()
        return raw.decode(), float(redis_client.get(value_key + ":t"))

    def creator():
        created.append(1)
        return "mine", time.time()

    result = []

    def wait():
        mutex = RedisMutex(redis_client, key, lease=5)
        with impl.Lock(mutex, creator, value_and_created, 60) as value:
            result.append(value)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    redis_client.set(value_key + ":t", time.time())
    redis_client.set(value_key, "theirs")
    holder.release()
    waiter.join(DEADLINE)
    redis_client.delete(value_key, value_key + ":t")
    assert result == ["theirs"]
    assert created == []


# -- an asyncio lock given to the threading front ------------------------------------------


class _PartialLock:
    """acquire() and release() are functools.partial objects of coroutine
    functions, set on the instance."""

    def __init__(self):
        import functools

        lock = asyncio.Lock()
        self.acquire = functools.partial(lock.acquire)
        self.release = lock.release


@pytest.mark.parametrize("kind", ["AsyncRedisMutex", "asyncio.Lock", "partial"])
def test_an_asyncio_lock_is_refused_by_dogpile_and_lock(impl, redis_url, redis_client, key, kind):
    """Its acquire(False) would return a coroutine, which is truthy: the
    Dogpile would believe it held a lock that another client holds, and run
    the creator.  Refused with a message naming the asyncio front."""
    import redis.asyncio

    from dogpile.mutexes import AsyncRedisMutex

    redis_client.set(key, "another client", px=60_000)
    created = []

    def creator():
        created.append(1)
        return "value", time.time()

    def stored():
        return "stale", time.time() - 3600

    async def check():
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            lock = {
                "AsyncRedisMutex": lambda: AsyncRedisMutex(client, key),
                "asyncio.Lock": asyncio.Lock,
                "partial": _PartialLock,
            }[kind]()
            expected = r"coroutine function .*use it with dogpile\.aio\.AsyncDogpile"
            with pytest.raises(TypeError, match=expected):
                impl.Dogpile(60, lock=lock)
            for stale in (stored, lambda: (_ for _ in ()).throw(NeedRegenerationException())):
                with pytest.raises(TypeError, match=expected):
                    with impl.Lock(lock, creator, stale, 60):
                        pass
        finally:
            await client.connection_pool.disconnect()

    asyncio.run(check())
    assert created == []
    assert redis_client.get(key) == b"another client"


# -- a client of one connection --------------------------------------------------------


def test_a_single_connection_client_keeps_its_connection_to_itself(redis_url, redis_client, key):
    """redis.Redis(single_connection_client=True) has one connection, which
    redis-py before 5.3 did not guard against two threads: the renewer's
    EVAL and the caller's own commands crossed replies.  From 5.3 a lock
    guards it, and a renewer waiting for it behind the caller's blocking
    command lets the lease run out.  The mutex's commands go through
    connections of their own from the client's pool."""
    # Not from_url(..., single_connection_client=True): redis-py 4.2 passes
    # that on to the connections.
    pool = redis.ConnectionPool.from_url(redis_url, socket_timeout=DEADLINE)
    client = redis.Redis(connection_pool=pool, single_connection_client=True)
    side = key + ":side"
    try:
        mutex = RedisMutex(client, key, lease=1.0)  # renewed every 1/3 s
        assert mutex.acquire()
        token = redis_client.get(key)
        # The caller holds its connection for a lease and a half.
        assert client.blpop([side], timeout=1.5) is None
        assert redis_client.get(key) == token, "the lease ran out: the renewer was kept waiting"
        wrong = []
        end = time.monotonic() + 0.5
        i = 0
        while time.monotonic() < end:
            i += 1
            client.set(side, i)
            got = client.get(side)
            if got != str(i).encode():
                wrong.append(got)
        assert wrong == [], f"{len(wrong)} of {i} replies were another command's"
        mutex.release()
        assert not redis_client.exists(key)
    finally:
        client.close()
        pool.disconnect()
        redis_client.delete(side)


# -- a release whose reply was lost ----------------------------------------------------------


@pytest.fixture
def proxy(redis_url):
    import redis_proxy

    p = redis_proxy.proxy_for(redis_url)
    yield p
    p.close()


def test_a_release_whose_reply_was_lost_is_resent_and_succeeds(impl, redis_client, key, proxy):
    """The release script runs, its reply is lost (the proxy drops it), the
    client times out and resends it: the second run finds the key gone,
    deleted by the first, and must not call that a lost lease.  Through a
    Dogpile, the caller gets the value it created."""
    from redis_proxy import Rule, is_eval_of, resending

    rule = proxy.add(Rule(is_eval_of(b"'del'"), "drop-reply"))
    client = redis.Redis(host="127.0.0.1", port=proxy.port, **resending(socket_timeout=0.5))
    try:
        mutex = RedisMutex(client, key, lease=5)
        with impl.Dogpile(60, lock=mutex).acquire(lambda: "made") as value:
            assert value == "made"
        assert rule.seen == 2, "the release was not resent: no test"
        assert not redis_client.exists(key)
        assert mutex.acquire(False)
        mutex.release()
    finally:
        client.close()


def test_a_resent_release_of_a_lock_taken_meanwhile_is_still_lease_lost(redis_client, key, proxy):
    """Idempotent for its own token only: a lock that was another holder's
    before the release ran is reported, resent or not, and left alone."""
    from redis_proxy import Rule, is_eval_of, resending

    rule = proxy.add(Rule(is_eval_of(b"'del'"), "drop-reply"))
    client = redis.Redis(host="127.0.0.1", port=proxy.port, **resending(socket_timeout=0.5))
    try:
        mutex = RedisMutex(client, key, lease=5, auto_renew=False)
        mutex.acquire()
        redis_client.set(key, "thief", px=60_000)
        with pytest.raises(LeaseLost):
            mutex.release()
        assert rule.seen == 2, "the release was not resent: no test"
        assert redis_client.get(key) == b"thief"
    finally:
        client.close()


# -- waiters woken by the server --------------------------------------------------------------


def command_counts(client):
    stats = client.info("commandstats")
    return {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("eval", "blpop", "xread")
    }


def blocked(client, command="blpop"):
    """How many clients wait in ``command`` now (this server is the tests'):
    blocked in it (``b`` flag), not idle after it."""
    return sum(
        1 for c in client.client_list() if c.get("cmd") == command and "b" in c.get("flags", "")
    )


def poll_blocked(client, n, command="blpop"):
    poll(lambda: blocked(client, command) >= n, f"{n} client(s) blocked in {command.upper()}")


def test_a_waiter_is_woken_by_the_release_not_by_polling(redis_url, redis_client, key):
    """acquire() tries the key once, blocks on the server until the
    holder's release wakes it, and takes the lock: two tries and a BLPOP,
    however long the holder held the lock."""
    holder = RedisMutex(redis_client, key, lease=30)
    holder.acquire()
    taken = []

    def wait():
        client = redis.Redis.from_url(redis_url)
        try:
            mutex = RedisMutex(client, key, lease=30)
            taken.append(mutex.acquire(timeout=DEADLINE))
            mutex.release()
        finally:
            client.close()

    waiter = threading.Thread(target=wait, daemon=True)
    before = command_counts(redis_client)
    waiter.start()
    poll_blocked(redis_client, 1)
    holder.release()
    waiter.join(DEADLINE)
    assert not waiter.is_alive()
    after = command_counts(redis_client)
    assert taken == [True]
    # The waiter's two tries and its release, the holder's release.  (A
    # BLPOP that reached its 1 s cap on a slow machine before the release
    # would add one try.)
    blpops = after["blpop"] - before["blpop"]
    assert 1 <= blpops <= 2
    assert after["eval"] - before["eval"] == 3 + blpops
    assert not redis_client.exists(key)


def test_a_lock_without_a_value_reads_it_after_the_release_without_taking_the_key(
    impl, redis_url, redis_client, key
):
    """Through Lock (dogpile.cache's API), a caller with no value tries the
    key once, blocks on the server (XREAD) until the holder's release, and
    reads the value the holder created without taking the key: one try,
    one XREAD, two reads, however long the holder held the lock."""
    value_key = key + ":value"
    holder = RedisMutex(redis_client, key, lease=30)
    holder.acquire()
    created = []
    result = []
    reads = []

    def stored():
        reads.append(1)
        raw = redis_client.get(value_key)
        if raw is None:
            raise NeedRegenerationException()
        return raw.decode(), time.time()

    def wait():
        client = redis.Redis.from_url(redis_url)
        try:
            mutex = RedisMutex(client, key, lease=30)
            with impl.Lock(mutex, lambda: created.append(1), stored, 60) as value:
                result.append(value)
        finally:
            client.close()

    waiter = threading.Thread(target=wait, daemon=True)
    before = command_counts(redis_client)
    waiter.start()
    poll_blocked(redis_client, 1, "xread")
    redis_client.set(value_key, "theirs")
    holder.release()
    waiter.join(DEADLINE)
    assert not waiter.is_alive()
    after = command_counts(redis_client)
    redis_client.delete(value_key)
    assert result == ["theirs"] and created == []
    # The waiter's try and the holder's release; the waiter's XREAD and its
    # two reads.  (An XREAD that reached its 1 s cap on a slow machine
    # before the release would add a read and a try.)
    xreads = after["xread"] - before["xread"]
    assert 1 <= xreads <= 2
    assert after["eval"] - before["eval"] == 1 + xreads
    assert len(reads) == 1 + xreads
    assert after["blpop"] == before["blpop"]
    assert not redis_client.exists(key)


def test_a_socket_timeout_too_short_to_block_on_the_server_polls_instead(
    redis_url, redis_client, key
):
    """The server ends a blocked BLPOP or XREAD at its next tick after the
    timeout (hz 10: up to 0.1 s late), so a waiter whose client has a 0.2 s
    socket_timeout, which blocked 0.1 s at a time, had the reply cut off:
    TimeoutError, "cannot reach the Redis server" (in most waits after the
    first, once they fell in step with the ticks; redis-py 6+ resends by
    default, and the wait overran its timeout instead).  Too short to block
    in: the waiter polls, and its waits end as asked."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    holder = RedisMutex(redis_client, key, lease=30)
    assert holder.acquire()
    # No retries, as redis-py before 6 by default: a cut-off reply raises.
    client = redis.Redis.from_url(redis_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    waiter = RedisMutex(client, key, lease=30)
    try:
        for _ in range(2):
            assert waiter.acquire(timeout=0.3) is False
            assert waiter.acquire_or_wait(timeout=0.3) is False
        got = []
        thread = threading.Thread(target=lambda: got.append(waiter.acquire(timeout=DEADLINE)))
        thread.start()
        holder.release()
        thread.join(DEADLINE)
        assert got == [True]
        waiter.release()
    finally:
        client.close()


def test_a_waiter_is_woken_when_a_dead_holders_lease_ends(redis_client, key):
    """Nobody releases (the holder died): the waiter blocks until the
    lease ends, not polling meanwhile."""
    dead = RedisMutex(redis_client, key, lease=0.3, auto_renew=False)
    dead.acquire()
    waiter = RedisMutex(redis_client, key, lease=5)
    before = command_counts(redis_client)
    assert waiter.acquire(timeout=DEADLINE)
    after = command_counts(redis_client)
    # A try, a BLPOP until the lease ends, the try that takes it (and, when
    # the wait ended a millisecond early, one more of each).
    assert after["eval"] - before["eval"] <= 4
    assert after["blpop"] - before["blpop"] <= 2
    waiter.release()


def test_a_lost_wake_up_is_recovered_by_the_safety_net(
    redis_url, redis_client, key, monkeypatch
):
    """Another client blocked on the wake-up list first takes the one
    wake-up (the server serves the longest waiter first): the waiter still
    gets the lock, at the latest after its BLPOP's cap (0.2 s here)."""
    from dogpile.mutexes import _protocol
    from dogpile.mutexes._protocol import _wake_key

    monkeypatch.setattr(_protocol, "_WAKE_CAP", 0.2)

    holder = RedisMutex(redis_client, key, lease=30)
    holder.acquire()
    rival = redis.Redis.from_url(redis_url)
    got = []
    rival_thread = threading.Thread(
        target=lambda: got.append(rival.blpop([_wake_key(key)], timeout=DEADLINE)), daemon=True
    )
    rival_thread.start()
    poll_blocked(redis_client, 1)
    result = []
    client = redis.Redis.from_url(redis_url)
    waiter = RedisMutex(client, key, lease=30)
    thread = threading.Thread(target=lambda: result.append(waiter.acquire(timeout=DEADLINE)))
    thread.start()
    poll_blocked(redis_client, 2)
    holder.release()
    rival_thread.join(DEADLINE)
    thread.join(DEADLINE)
    rival.close()
    assert got and got[0] is not None, "the rival did not take the wake-up: no test"
    assert result == [True]
    waiter.release()
    client.close()


def test_a_release_that_wakes_nobody_is_caught_by_the_safety_net(
    impl, redis_url, redis_client, key, monkeypatch
):
    """A holder whose release does not signal (a process still on 1.0.0a1
    during a rolling deploy, or a key deleted by hand): the Dogpile's wait
    ends at the mutex's cap (1 s; 0.2 s here), not at the 30 s lease, and
    it reads the value then, without taking the key."""
    from dogpile.mutexes import _protocol

    monkeypatch.setattr(_protocol, "_WAKE_CAP", 0.2)
    value_key = key + ":value"
    redis_client.set(key, "a foreign holder's token", px=30_000)
    result, reads, xreads = [], [], []

    def stored():
        reads.append(1)
        raw = redis_client.get(value_key)
        if raw is None:
            raise NeedRegenerationException()
        return raw.decode(), time.time()

    class ReleasedAfterTheTry(redis.Redis):
        """The foreign holder stores the value and deletes the key (no
        wake-up) right after the waiter's try saw it held, before its
        XREAD: the order is forced.  (Done from the test thread once the
        XREAD was seen, it had to land within the 0.2 s cap, and a loaded
        machine could miss that: a second try, or the key taken.)"""

        def execute_command(self, *args, **options):
            reply = super().execute_command(*args, **options)
            command = str(args[0]).upper()
            if command == "EVAL" and not reads[1:]:
                redis_client.set(value_key, "theirs")
                redis_client.delete(key)  # released without a wake-up
            elif command == "XREAD":
                xreads.append(reply)
            return reply

    def wait():
        client = ReleasedAfterTheTry.from_url(redis_url)
        try:
            d = impl.Dogpile(60, lock=RedisMutex(client, key, lease=30))
            result.append(d.get(lambda: pytest.fail("created"), value_and_created_fn=stored))
        finally:
            client.close()

    waiter = threading.Thread(target=wait, daemon=True)
    before = command_counts(redis_client)
    waiter.start()
    waiter.join(DEADLINE)
    assert not waiter.is_alive()
    after = command_counts(redis_client)
    redis_client.delete(value_key)
    assert result == ["theirs"]
    # One try, one XREAD that ran out at the cap (no entry: nobody woke
    # it), the read after it.
    assert len(xreads) == 1 and not xreads[0]
    assert after["xread"] - before["xread"] == 1
    assert after["eval"] - before["eval"] == 1
    assert len(reads) == 2
