"""``acquire_or_wait()`` of RedisMutex, AsyncRedisMutex and FileMutex, on a
real server and real processes: a free lock is taken (one command); a held
one is waited for and not taken (two commands: the script and an XREAD);
one release wakes every waiter, in threads, tasks and processes; a release
between the script and the XREAD is not lost; a dead holder's lease ends
the wait; threads of one process never overtake each other; timeouts,
bad input and cancellation leave nothing held.

Waiters are seen blocked on the server (CLIENT LIST, ``cmd=xread``) or in
the kernel (/proc/locks, a pending shared flock) before the holder
releases, so a False is known to come from the release.
"""

import asyncio
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis_server
from conftest import DEADLINE
from redis_server import free_port, unique_key

from dogpile import LockError
from dogpile.mutexes import FileMutex, RedisMutex
from dogpile.mutexes._protocol import _stream_key, _wake_key

redis_url = redis_server.redis_url
redis_client = redis_server.redis_client

if os.environ.get("DOGPILE_REQUIRE_REDIS") == "1":
    import redis
else:
    redis = pytest.importorskip("redis", reason='needs the redis client (pip install ".[test]")')


@pytest.fixture
def key(redis_client):
    name = unique_key("wait")
    yield name
    redis_client.delete(name, _stream_key(name), _wake_key(name))


def counting(base):
    """A redis client class (sync or asyncio) whose instances record each
    command they send: ``sent`` (names) and ``replies``."""
    if inspect.iscoroutinefunction(base.execute_command):

        class Counting(base):
            async def execute_command(self, *args, **options):
                self.__dict__.setdefault("sent", []).append(args)
                reply = await super().execute_command(*args, **options)
                self.__dict__.setdefault("replies", []).append(reply)
                return reply

    else:

        class Counting(base):
            def execute_command(self, *args, **options):
                self.__dict__.setdefault("sent", []).append(args)
                reply = super().execute_command(*args, **options)
                self.__dict__.setdefault("replies", []).append(reply)
                hook = self.__dict__.get("after")
                if hook is not None:
                    hook(args)
                return reply

    return Counting


def names(client):
    return [str(args[0]).upper() for args in client.__dict__.get("sent", [])]


def poll(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {DEADLINE}s"
        time.sleep(0.005)


def tag(key):
    """The client name of a test's waiters (CLIENT SETNAME), so that other
    clients of a shared server do not count."""
    return "aow-" + key.rsplit(":", 1)[-1]


def blocked_xreads(client, key):
    """``key``'s waiters blocked in an XREAD now (``b`` flag)."""
    return sum(
        1
        for c in client.client_list()
        if c.get("name") == tag(key) and c.get("cmd") == "xread" and "b" in c.get("flags", "")
    )


@pytest.fixture
def no_cap(monkeypatch):
    """The 1 s safety net off (DEADLINE instead) for the mutexes made in
    this process: a test that lines up waiters before the release must not
    see one return at its cap on a slow machine."""
    from dogpile.mutexes import _protocol

    monkeypatch.setattr(_protocol, "_WAKE_CAP", DEADLINE)
    return f"import dogpile.mutexes._protocol as p; p._WAKE_CAP = {DEADLINE!r}\n"


def start(target, *args):
    """Run ``target(*args)`` in a thread; its result or exception lands in
    the returned dict, with ``done`` set when it ends."""
    out = {"done": threading.Event()}

    def run():
        try:
            out["result"] = target(*args)
        except BaseException as exc:  # reported by the test
            out["error"] = exc
        finally:
            out["done"].set()

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def finish(out):
    assert out["done"].wait(DEADLINE), f"still running after {DEADLINE}s"
    if "error" in out:
        raise out["error"]
    return out["result"]


# -- RedisMutex --------------------------------------------------------------------------


def test_a_free_lock_is_taken_with_one_command(redis_url, redis_client, key):
    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
    mutex = RedisMutex(client, key, lease=30, auto_renew=False)
    assert mutex.acquire_or_wait() is True
    assert names(client) == ["EVAL"]
    assert redis_client.get(key) == mutex._token.encode()
    assert mutex._local.locked() and "held" in repr(mutex)
    assert mutex.acquire(False) is False, "held as after acquire()"
    mutex.release()
    assert redis_client.exists(key) == 0 and not mutex._local.locked()
    client.close()


def test_a_held_lock_is_waited_for_with_two_commands_and_not_taken(
    redis_url, redis_client, key, no_cap
):
    holder = RedisMutex(redis_client, key, lease=30)
    holder.acquire()
    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
    waiter = RedisMutex(client, key, lease=30, auto_renew=False)
    out = start(waiter.acquire_or_wait)
    poll(lambda: blocked_xreads(redis_client, key) >= 1, "the waiter blocked in XREAD")
    assert not out["done"].is_set(), "returned before the release"
    holder.release()
    assert finish(out) is False
    assert names(client) == ["EVAL", "XREAD"]
    assert client.replies[1], "woken by the release's entry, not by the cap"
    assert redis_client.exists(key) == 0, "the waiter took nothing"
    assert waiter._token is None and not waiter._local.locked()
    client.close()


CHILD_WAITER = """
import sys, redis
from dogpile.mutexes import RedisMutex
class Counting(redis.Redis):
    sent = []
    def execute_command(self, *args, **options):
        Counting.sent.append(str(args[0]).upper())
        return super().execute_command(*args, **options)
client = Counting.from_url(sys.argv[1], client_name=sys.argv[4])
mutex = RedisMutex(client, sys.argv[2], lease=30, auto_renew=False)
result = mutex.acquire_or_wait(timeout=float(sys.argv[3]))
print(result, " ".join(Counting.sent), mutex._token is None, flush=True)
"""


def test_one_release_wakes_every_waiting_thread_and_process(redis_url, redis_client, key, no_cap):
    """8 threads with mutexes of their own and 3 processes, all blocked in
    XREAD before the release: the one release wakes them all, each after
    its two commands, and none takes the lock."""
    holder = RedisMutex(redis_client, key, lease=30)
    holder.acquire()
    clients = [counting(redis.Redis).from_url(redis_url, client_name=tag(key)) for _ in range(8)]
    outs = [
        start(RedisMutex(c, key, lease=30, auto_renew=False).acquire_or_wait, DEADLINE)
        for c in clients
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", no_cap + CHILD_WAITER, redis_url, key, str(DEADLINE), tag(key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        poll(lambda: blocked_xreads(redis_client, key) >= 11, "11 waiters blocked in XREAD")
        assert not any(out["done"].is_set() for out in outs)
        assert all(p.poll() is None for p in procs)
        holder.release()
        assert [finish(out) for out in outs] == [False] * 8
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=DEADLINE)
            assert proc.returncode == 0, stderr
            assert stdout.split() == ["False", "EVAL", "XREAD", "True"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for client in clients:
        assert names(client) == ["EVAL", "XREAD"]
        assert client.replies[1], "woken by the release's entry"
        client.close()
    assert redis_client.exists(key) == 0


def test_a_release_between_the_script_and_the_xread_is_not_lost(redis_url, redis_client, key):
    """The holder releases right after the waiter's script returned, before
    its XREAD is sent: the XREAD starts from the id the script read, finds
    the release's entry past it and returns at once with it."""
    holder = RedisMutex(redis_client, key, lease=30)
    holder.acquire()
    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))

    def release_after_the_script(args):
        if str(args[0]).upper() == "EVAL" and holder._token is not None:
            holder.release()

    client.after = release_after_the_script
    waiter = RedisMutex(client, key, lease=30, auto_renew=False)
    assert waiter.acquire_or_wait(timeout=DEADLINE) is False
    assert holder._token is None, "the hook did not release: no test"
    assert names(client) == ["EVAL", "XREAD"]
    assert client.replies[1], "the XREAD missed the release (it waited for its cap)"
    assert redis_client.exists(key) == 0
    client.close()


CHILD_HOLDER = """
import sys, time, redis
from dogpile.mutexes import RedisMutex
mutex = RedisMutex(redis.Redis.from_url(sys.argv[1]), sys.argv[2], lease=0.5)
assert mutex.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_killed_holders_lease_ends_the_wait(redis_url, redis_client, key, no_cap):
    """The holder (another process, renewing a 0.5 s lease) is killed while
    a waiter is blocked: the waiter returns False once the lease has run
    out, without a release, and its next call takes the lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOLDER, redis_url, key],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
        waiter = RedisMutex(client, key, lease=30, auto_renew=False)
        out = start(waiter.acquire_or_wait)
        poll(lambda: blocked_xreads(redis_client, key) >= 1, "the waiter blocked in XREAD")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(DEADLINE)
        # Woken by the end of the lease (and once more if the wait ended
        # a millisecond before the key did).
        calls = 1
        while finish(out) is False and redis_client.exists(key) and calls < 3:
            out = start(waiter.acquire_or_wait)
            calls += 1
        assert names(client)[-1] == "XREAD" and not client.replies[-1], "no release"
        assert redis_client.exists(key) == 0, "the waiter returned before the lease ended"
        assert waiter.acquire_or_wait() is True, "the second call takes the lock"
        waiter.release()
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_threads_of_one_process_never_overtake_each_other(redis_url, redis_client, key, no_cap):
    """Thread A holds a RedisMutex; thread B's acquire_or_wait() on the same
    mutex only looks at the key (no SET), waits outside the in-process lock
    and returns False at A's release."""
    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
    mutex = RedisMutex(client, key, lease=30, auto_renew=False)
    assert mutex.acquire()
    token = mutex._token
    client.sent.clear()
    client.replies.clear()
    out = start(mutex.acquire_or_wait)
    poll(lambda: blocked_xreads(redis_client, key) >= 1, "thread B blocked in XREAD")
    assert mutex._token == token and redis_client.get(key) == token.encode()
    mutex.release()
    assert finish(out) is False
    assert names(client) == ["EVAL", "XREAD", "EVAL"]  # B's look, B's wait, A's release
    assert client.sent[0][-1] == "0", "B's script only looked"
    assert mutex._token is None and not mutex._local.locked()
    assert redis_client.exists(key) == 0


def test_a_thread_taking_the_mutex_with_the_key_free_is_waited_for_in_process(
    redis_url, redis_client, key, no_cap
):
    """Another thread holds the in-process lock (it is taking the key) and
    the key is free: one look, then a wait on the in-process lock, with no
    command, that this thread's release ends; False, and the key is left
    alone.  (Returning at once would have a Dogpile read and ask again in a
    busy loop.)"""
    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
    mutex = RedisMutex(client, key, lease=30, auto_renew=False)
    assert mutex._local.acquire(False)
    try:
        out = start(mutex.acquire_or_wait)
        deadline = time.monotonic() + DEADLINE
        while not client.__dict__.get("replies"):
            assert time.monotonic() < deadline, "the look never came"
            time.sleep(0.001)
        assert not out["done"].wait(0.05), "returned while the in-process lock was held"
    finally:
        mutex._local.release()
    assert finish(out) is False
    assert names(client) == ["EVAL"] and client.sent[0][-1] == "0"
    assert redis_client.exists(key) == 0


def test_without_a_stream_a_waiter_sleeps_one_step_and_releases_still_work(
    redis_url, redis_client, key
):
    """The path of a server without streams (before Redis 5), taken here
    through a stream key that holds a string: both scripts' stream commands
    fail inside pcall, the release still releases, and a waiter sleeps one
    back-off step (no XREAD) and returns False."""
    redis_client.set(_stream_key(key), "not a stream", px=60_000)
    holder = RedisMutex(redis_client, key, lease=30)
    holder.acquire()
    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
    waiter = RedisMutex(client, key, lease=30, auto_renew=False)
    assert waiter.acquire_or_wait(timeout=DEADLINE) is False
    assert names(client) == ["EVAL"]
    assert client.replies[0][1] in (b"", ""), "the script read no stream id"
    assert redis_client.get(key) == holder._token.encode()
    holder.release()
    assert redis_client.exists(key) == 0
    assert redis_client.get(_stream_key(key)) == b"not a stream"
    assert waiter.acquire_or_wait() is True
    waiter.release()
    client.close()


def test_timeout_and_bad_timeouts(redis_url, redis_client, key):
    redis_client.set(key, "another process", px=60_000)
    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
    waiter = RedisMutex(client, key, lease=30, auto_renew=False)
    assert waiter.acquire_or_wait(timeout=0) is False
    assert names(client) == ["EVAL"], "no wait after the deadline"
    client.sent.clear()
    started = time.monotonic()
    assert waiter.acquire_or_wait(timeout=0.2) is False
    assert time.monotonic() - started < DEADLINE
    assert names(client) == ["EVAL", "XREAD"]
    xread = [a.decode() if isinstance(a, bytes) else str(a) for a in client.sent[1]]
    assert 0 < int(xread[xread.index("BLOCK") + 1]) <= 200
    assert waiter._token is None and not waiter._local.locked()
    assert redis_client.get(key) == b"another process"
    for bad, error, match in [
        ("1", TypeError, "timeout must be a number of seconds, not 'str'"),
        (True, TypeError, "not 'bool'"),
        (-2, ValueError, "timeout must be -1"),
        (math.nan, ValueError, "timeout must be -1"),
    ]:
        with pytest.raises(error, match=match):
            waiter.acquire_or_wait(bad)
    assert not waiter._local.locked()
    client.close()


def test_an_unreachable_server_is_named_and_nothing_is_held(key):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py's default (three, with back-off) only makes the
    # test slow; the error is the same.
    client = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    mutex = RedisMutex(client, key)
    with pytest.raises(redis.ConnectionError, match=r":\d+/0 during acquire_or_wait\(\)"):
        mutex.acquire_or_wait()
    assert mutex._token is None and not mutex._local.locked()
    with pytest.raises(LockError, match="not held"):
        mutex.release()


# -- AsyncRedisMutex ---------------------------------------------------------------------


def run_async(url, name, body):
    """``body(make_client)`` in a new event loop under DEADLINE; the clients
    it makes (counting ones, named ``name``) are closed at its end."""
    import redis.asyncio

    async def main():
        clients = []

        def make():
            client = counting(redis.asyncio.Redis).from_url(url, client_name=name)
            clients.append(client)
            return client

        try:
            return await asyncio.wait_for(body(make), DEADLINE)
        finally:
            for client in clients:
                close = getattr(client, "aclose", None) or client.close
                await close()
                await client.connection_pool.disconnect()

    return asyncio.run(main())


async def wait_until_async(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.005)


def test_async_a_free_lock_is_taken_with_one_command(redis_url, redis_client, key):
    from dogpile.mutexes import AsyncRedisMutex

    async def body(make):
        client = make()
        mutex = AsyncRedisMutex(client, key, lease=30, auto_renew=False)
        assert await mutex.acquire_or_wait() is True
        assert names(client) == ["EVAL"]
        assert redis_client.get(key) == mutex._token.encode()
        assert await mutex.acquire(False) is False, "held as after acquire()"
        await mutex.release()
        assert redis_client.exists(key) == 0 and not mutex._local.locked()

    run_async(redis_url, tag(key), body)


def test_async_one_release_wakes_every_waiting_task(redis_url, redis_client, key, no_cap):
    """6 tasks, each with a mutex and a client of its own, blocked in XREAD
    before the release: all return False after it, with two commands each,
    and nothing is taken.  One of them times out first, after two
    commands, and holds nothing."""
    from dogpile.mutexes import AsyncRedisMutex

    holder = RedisMutex(redis_client, key, lease=30)
    holder.acquire()

    async def body(make):
        clients = [make() for _ in range(7)]
        mutexes = [AsyncRedisMutex(c, key, lease=30, auto_renew=False) for c in clients]
        # Connected first, and 0.3 s: the try must come back before the
        # deadline for the XREAD to be sent at all (with 0.05 s, which
        # also paid for the connection, it did not in 4 of 150 runs under
        # 4 busy loops).
        await clients[6].ping()
        clients[6].sent.clear()
        clients[6].replies.clear()
        assert await mutexes[6].acquire_or_wait(timeout=0.3) is False
        assert names(clients[6]) == ["EVAL", "XREAD"] and not clients[6].replies[1]
        tasks = [asyncio.ensure_future(m.acquire_or_wait()) for m in mutexes[:6]]
        await wait_until_async(
            lambda: blocked_xreads(redis_client, key) >= 6, "6 tasks blocked in XREAD"
        )
        assert not any(t.done() for t in tasks)
        holder.release()
        assert await asyncio.gather(*tasks) == [False] * 6
        for client in clients[:6]:
            assert names(client) == ["EVAL", "XREAD"] and client.replies[1]
        assert all(m._token is None for m in mutexes)
        assert redis_client.exists(key) == 0
        with pytest.raises(ValueError, match="timeout must be -1"):
            await mutexes[0].acquire_or_wait(-5)
        with pytest.raises(TypeError, match="not 'str'"):
            await mutexes[0].acquire_or_wait("1")

    run_async(redis_url, tag(key), body)


def test_async_a_task_of_the_same_mutex_only_looks(redis_url, redis_client, key, no_cap):
    from dogpile.mutexes import AsyncRedisMutex

    async def body(make):
        client = make()
        mutex = AsyncRedisMutex(client, key, lease=30, auto_renew=False)
        assert await mutex.acquire()
        client.sent.clear()
        task = asyncio.ensure_future(mutex.acquire_or_wait())
        await wait_until_async(lambda: blocked_xreads(redis_client, key) >= 1, "XREAD")
        await mutex.release()
        assert await task is False
        assert names(client)[:2] == ["EVAL", "XREAD"] and client.sent[0][-1] == "0"
        assert redis_client.exists(key) == 0 and not mutex._local.locked()

    run_async(redis_url, tag(key), body)


def test_async_cancelled_while_waiting_or_at_any_point_leaves_nothing_held(
    redis_url, redis_client, key, no_cap
):
    from dogpile import _aio_locks
    from dogpile.mutexes import AsyncRedisMutex

    async def body(make):
        client = make()
        mutex = AsyncRedisMutex(client, key, lease=30)
        redis_client.set(key, "another process", px=60_000)
        waiters = [asyncio.ensure_future(mutex.acquire_or_wait()) for _ in range(3)]
        # One task blocks in XREAD; the other two, their script answered,
        # wait for it without a command (one connection for all three).
        await wait_until_async(
            lambda: blocked_xreads(redis_client, key) == 1
            and len(getattr(client, "replies", [])) == 3,
            "one XREAD and three scripts answered",
        )
        assert sorted(names(client)) == ["EVAL", "EVAL", "EVAL", "XREAD"]
        for waiter in waiters:
            waiter.cancel()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        # redis-py may swallow a cancellation that lands as the XREAD's
        # reply arrives, and return the reply (about once in ten on 3.10
        # and 3.11): from 3.11 the mutex sees the pending cancellation and
        # raises it; before, the wait ends as if woken (False).  Either way
        # nothing is held.
        cancelled = [isinstance(r, asyncio.CancelledError) for r in results]
        if sys.version_info >= (3, 11):
            assert all(cancelled), results
        else:
            assert all(c or r is False for c, r in zip(cancelled, results)), results
        assert redis_client.get(key) == b"another process"
        assert not mutex._local.locked() and mutex._token is None
        redis_client.delete(key)
        # On a free key: cancelled after 0, 1, 2, ... turns of the loop, it
        # either took the lock (released here) or leaves no key behind,
        # even when the cancellation lands while its SET is on the wire.
        for turns in range(12):
            task = asyncio.ensure_future(mutex.acquire_or_wait())
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            try:
                assert await task is True
            except asyncio.CancelledError:
                await wait_until_async(lambda: not _aio_locks._cleanups, "the take-back")
            else:
                await mutex.release()
            assert redis_client.exists(key) == 0
            assert not mutex._local.locked()

    run_async(redis_url, tag(key), body)


_SHUTDOWN = r"""
import asyncio, sys, time
import redis.asyncio
from dogpile.mutexes import AsyncRedisMutex

port, key, flag = int(sys.argv[1]), sys.argv[2], sys.argv[3]


async def main():
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    mutex = AsyncRedisMutex(client, key, lease=30)
    asyncio.ensure_future(mutex.acquire_or_wait())
    # The proxy sets the flag when it drops the reply of the try: its SET
    # ran, and main() returns with the reply still awaited.
    deadline = time.monotonic() + 20
    while not await client.exists(flag):
        assert time.monotonic() < deadline, "the proxy never saw the command"
        await asyncio.sleep(0.005)


# The client is left open on purpose: closing it would cut the take-back
# off for its own reasons.
asyncio.run(main())
print("ok")
"""


def test_async_a_try_cut_off_by_the_end_of_asyncio_run_leaves_no_key(redis_url, redis_client, key):
    """The try's SET ran but its reply is lost (a proxy drops it) when
    main() returns: asyncio.run() cancels the task and closes the loop, and
    the take-back still deletes the key before it closes."""
    from redis_proxy import Rule, is_eval_of, proxy_for

    proxy = proxy_for(redis_url)
    flag = key + ":flag"
    try:
        rule = proxy.add(Rule(is_eval_of(b"'xrevrange'"), "drop-reply"))
        rule.on_act = lambda: redis_client.set(flag, 1)
        proc = subprocess.run(
            [sys.executable, "-c", _SHUTDOWN, str(proxy.port), key, flag],
            capture_output=True, text=True, timeout=3 * DEADLINE,
        )
    finally:
        proxy.close()
        redis_client.delete(flag)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert rule.acted.is_set(), "the reply was not dropped: no test"
    assert redis_client.exists(key) == 0, "the key stayed locked after the loop ended"


# -- FileMutex ---------------------------------------------------------------------------


def pending_shared_flocks(path):
    """Shared flock requests blocked on ``path`` (Linux's /proc/locks)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        return sum(
            1
            for line in locks
            if "->" in line and "FLOCK" in line and "READ" in line
            and line.split()[6].endswith(f":{inode}")
        )


needs_proc_locks = pytest.mark.skipif(
    not os.path.exists("/proc/locks") or sys.platform == "win32",
    reason="sees blocked flock waiters through Linux's /proc/locks",
)

CHILD_FILE_WAITER = """
import sys
from dogpile.mutexes import FileMutex
mutex = FileMutex(sys.argv[1])
print(mutex.acquire_or_wait(timeout=float(sys.argv[2])), mutex._fd[0] is None, flush=True)
"""

CHILD_TRY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, (fcntl.LOCK_SH if sys.argv[2] == "sh" else fcntl.LOCK_EX) | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy")
else:
    print("free")
"""


def other_process_finds(path, how):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_TRY, path, how],
        capture_output=True, text=True, timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_file_a_free_lock_is_taken(tmp_path):
    path = str(tmp_path / "lock")
    mutex = FileMutex(path)
    assert mutex.acquire_or_wait() is True
    assert mutex._fd[0] is not None and mutex._local.locked()
    assert other_process_finds(path, "sh") == "busy"
    mutex.release()
    assert other_process_finds(path, "ex") == "free"
    assert mutex.acquire_or_wait(timeout=0) is True
    mutex.release()
    with pytest.raises(ValueError, match="timeout must be -1"):
        mutex.acquire_or_wait(-3)
    with pytest.raises(TypeError, match="not 'NoneType'"):
        mutex.acquire_or_wait(None)
    assert not mutex._local.locked()


@needs_proc_locks
def test_file_one_release_wakes_every_waiting_process_and_thread(tmp_path):
    """Another process holds the file; 3 processes and 2 threads (with and
    without a timeout) are seen blocked in a shared flock; one release
    wakes them all, none holds anything after."""
    path = str(tmp_path / "lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOLD_FILE, path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    procs = []
    try:
        assert holder.stdout.readline().strip() == "held"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD_FILE_WAITER, path, t],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for t in ("-1", str(DEADLINE), "-1")
        ]
        mutexes = [FileMutex(path), FileMutex(path)]
        outs = [start(mutexes[0].acquire_or_wait), start(mutexes[1].acquire_or_wait, DEADLINE)]
        poll(lambda: pending_shared_flocks(path) >= 5, "5 waiters blocked in flock")
        assert not any(out["done"].is_set() for out in outs)
        assert all(p.poll() is None for p in procs)
        holder.communicate("release\n", timeout=DEADLINE)
        assert [finish(out) for out in outs] == [False, False]
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=DEADLINE)
            assert proc.returncode == 0, stderr
            assert stdout.split() == ["False", "True"]
        assert all(m._fd[0] is None and not m._local.locked() for m in mutexes)
        assert other_process_finds(path, "ex") == "free"
    finally:
        for proc in [holder, *procs]:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


CHILD_HOLD_FILE = """
import sys
from dogpile.mutexes import FileMutex
mutex = FileMutex(sys.argv[1])
assert mutex.acquire()
print("held", flush=True)
sys.stdin.readline()
mutex.release()
"""


@needs_proc_locks
def test_file_a_waiter_in_the_holders_process_leaves_its_lock_alone(tmp_path):
    """A thread holds the FileMutex; another thread of the same process
    (same mutex) and a second FileMutex of the same path wait, one with a
    timeout that ends: the holder's exclusive lock stays exclusive
    throughout (another process can take neither a shared nor an
    exclusive lock), and the release wakes the waiter that is left."""
    path = str(tmp_path / "lock")
    mutex, other = FileMutex(path), FileMutex(path)
    assert mutex.acquire()
    out = start(mutex.acquire_or_wait)
    assert other.acquire_or_wait(timeout=0.1) is False
    assert other._fd[0] is None and not other._local.locked()
    poll(lambda: pending_shared_flocks(path) >= 1, "the waiting thread blocked in flock")
    assert not out["done"].is_set()
    assert other_process_finds(path, "sh") == "busy", "the holder's lock was converted"
    assert other_process_finds(path, "ex") == "busy"
    assert mutex._fd[0] is not None
    mutex.release()
    assert finish(out) is False
    assert mutex._fd[0] is None and not mutex._local.locked()
    assert other_process_finds(path, "ex") == "free"
    # The watcher left by the timed-out call ended at the release too.
    watcher = other._watcher
    assert watcher is not None and watcher.done.wait(DEADLINE) and watcher.fd is None


# -- gevent ------------------------------------------------------------------------------

_GEVENT = r"""
import fcntl, json, os, sys, tempfile
import redis
from dogpile.mutexes import FileMutex, RedisMutex

# Made before the patching (a gunicorn app preloaded before its gevent
# worker patches): their in-process locks are remade at the first call.
path = os.path.join(tempfile.mkdtemp(), "lock")
file_mutex = FileMutex(path)
redis_mutex = RedisMutex(
    redis.Redis.from_url(sys.argv[1], client_name=sys.argv[3]), sys.argv[2], lease=10
)

from gevent import monkey

monkey.patch_all()
import gevent

# The file is locked through another open file, as another process would:
# the waiter must let the greenlet that unlocks it run.
fd = os.open(path, os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
ticks = []


def unlocker():
    for _ in range(5):
        ticks.append(1)
        gevent.sleep(0.005)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


file_waiter = gevent.spawn(file_mutex.acquire_or_wait, 20)
gevent.joinall([file_waiter, gevent.spawn(unlocker)], timeout=20, raise_error=True)
log = []


def holder():
    with redis_mutex:
        log.append("a in")
        gevent.sleep(0.05)
        log.append("a out")


def waiter():
    gevent.sleep(0.005)
    log.append(f"b {redis_mutex.acquire_or_wait(20)}")


gevent.joinall([gevent.spawn(holder), gevent.spawn(waiter)], timeout=20, raise_error=True)
print(json.dumps({
    "file": [file_waiter.value, len(ticks), file_mutex._fd[0] is None],
    "redis": log,
}))
"""


def test_under_gevent_a_waiter_lets_other_greenlets_run(redis_url, redis_client, key):
    """FileMutex polls instead of blocking the hub in flock (the greenlet
    that unlocks the file runs), and a greenlet's acquire_or_wait() on a
    RedisMutex another greenlet holds waits cooperatively and returns False
    at that release (a blocked hub would starve the holder until the 1 s
    cap: "b False" before "a out")."""
    proc = subprocess.run(
        [sys.executable, "-c", _GEVENT, redis_url, key, tag(key)],
        capture_output=True, text=True, timeout=3 * DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["file"] == [False, 5, True]
    assert report["redis"] == ["a in", "a out", "b False"]
