"""RedisMutex and AsyncRedisMutex over a client whose pool has fewer
connections than there are waiters, as pools configured with
``max_connections`` have: the threads (or tasks) of one process waiting in
acquire_or_wait() share one blocking XREAD, so they hold one connection
between them, and the holder's own commands (the write of the value, the
release) still find one.  With one XREAD each, the waiters took every
connection and the holder queued behind them for a connection, until a
waiter's wait ran out.

The pools are BlockingConnectionPool with a DEADLINE timeout: brief
commands queue for a connection instead of failing, so only connections
held for long (the blocking XREADs) can starve anyone.  Real server
(tests/redis_server.py); waiters seen blocked there before the release.
"""

import asyncio
import json
import threading
import time

import pytest
import redis_server
from conftest import DEADLINE
from redis_server import aclose, unique_key
from test_acquire_or_wait import blocked_xreads, counting, finish, names, no_cap, poll, start, tag

from dogpile import NeedRegenerationException
from dogpile.mutexes import AsyncRedisMutex, RedisMutex
from dogpile.mutexes._protocol import _stream_key, _wake_key

redis_url = redis_server.redis_url
redis_client = redis_server.redis_client
no_cap = no_cap  # a fixture of test_acquire_or_wait's, used here too

redis = pytest.importorskip("redis", reason='needs the redis client (pip install ".[test]")')

CONNECTIONS = 3
WAITERS = 8


@pytest.fixture
def key(redis_client):
    name = unique_key("pool")
    yield name
    redis_client.delete(name, name + ":value", _stream_key(name), _wake_key(name))


def bounded_client(redis_url, key):
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=CONNECTIONS, timeout=DEADLINE, client_name=tag(key)
    )
    return counting(redis.Redis)(connection_pool=pool)



def test_threads_waiting_share_one_xread_and_leave_connections_to_the_holder(
    redis_url, redis_client, key, no_cap
):
    client = bounded_client(redis_url, key)
    try:
        holder = RedisMutex(client, key, lease=30)
        waiter = RedisMutex(client, key, lease=30)
        assert holder.acquire(blocking=False)
        outs = [start(waiter.acquire_or_wait, DEADLINE) for _ in range(WAITERS)]
        # Every waiter's script answered (the holder's take was the first
        # EVAL), and one of them blocked in XREAD: the rest wait for it.
        poll(
            lambda: len(client.__dict__.get("replies", ())) >= 1 + WAITERS
            and blocked_xreads(redis_client, key) == 1,
            "the waiters' scripts and one XREAD",
        )
        # The holder's commands, through the same pool of 3.
        client.set(key + ":value", "made")
        holder.release()
        assert [finish(out) for out in outs] == [False] * WAITERS
        assert names(client).count("XREAD") == 1
        assert not holder.locked()
    finally:
        client.close()


def test_a_dogpile_cold_key_on_a_bounded_pool(impl, redis_url, redis_client, key, no_cap):
    """Both cores: threads of one process on a cold key, a pool of 3: one
    creation, every thread gets the value, one XREAD between the waiters."""
    waiters = WAITERS
    client = bounded_client(redis_url, key)
    d = impl.Dogpile(60, lock=RedisMutex(client, key, lease=30))
    created = []

    def stored():
        raw = client.get(key + ":value")
        if raw is None:
            raise NeedRegenerationException()
        value, createdtime = json.loads(raw)
        return value, createdtime

    def create():
        created.append(threading.current_thread().name)
        # Made once every other thread waits: their scripts answered and
        # one XREAD blocked (the others wait for it in the process).
        poll(
            lambda: names(client).count("EVAL") >= waiters
            and blocked_xreads(redis_client, key) == 1,
            "the other threads waiting",
        )
        pair = ["v", time.time()]
        client.set(key + ":value", json.dumps(pair))
        return tuple(pair)

    def get():
        with d.acquire(create, value_and_created_fn=stored) as value:
            return value

    try:
        outs = [start(get) for _ in range(waiters)]
        assert [finish(out) for out in outs] == ["v"] * waiters
        assert len(created) == 1
        assert names(client).count("XREAD") == 1
    finally:
        client.close()


def test_async_tasks_waiting_share_one_xread(redis_url, redis_client, key, no_cap):
    import redis.asyncio

    async def main():
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            redis_url, max_connections=CONNECTIONS, timeout=DEADLINE, client_name=tag(key)
        )
        client = counting(redis.asyncio.Redis)(connection_pool=pool)
        try:
            holder = AsyncRedisMutex(client, key, lease=30)
            waiter = AsyncRedisMutex(client, key, lease=30)
            assert await holder.acquire(blocking=False)
            tasks = [
                asyncio.ensure_future(waiter.acquire_or_wait(DEADLINE)) for _ in range(WAITERS)
            ]
            deadline = time.monotonic() + DEADLINE
            while not (
                len(client.__dict__.get("replies", ())) >= 1 + WAITERS
                and blocked_xreads(redis_client, key) == 1
            ):
                assert time.monotonic() < deadline, "the waiters never lined up"
                await asyncio.sleep(0.005)
            await client.set(key + ":value", "made")
            await holder.release()
            results = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
            assert results == [False] * WAITERS
            assert names(client).count("XREAD") == 1
        finally:
            await aclose(client)

    asyncio.run(main())


KEYS = 4


def test_waits_on_many_keys_leave_half_a_bounded_pool_to_commands(
    redis_url, redis_client, no_cap
):
    """One waiter on each of 4 keys over a pool of 4: two block on the
    server, the other two poll, so a command of the same pool (a creator's
    write) finds a connection at once.  With every wait blocked, it would
    queue for a connection until a wait ended (here, with the safety net at
    DEADLINE, longer than the test waits for it)."""
    keys = [unique_key("pool-many") for _ in range(KEYS)]
    holder_client = redis.Redis.from_url(redis_url)
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=KEYS, timeout=DEADLINE, client_name=tag(keys[0])
    )
    client = counting(redis.Redis)(connection_pool=pool)
    holders = [RedisMutex(holder_client, k, lease=30) for k in keys]
    try:
        for holder in holders:
            assert holder.acquire(blocking=False)
        outs = [start(RedisMutex(client, k, lease=30).acquire_or_wait) for k in keys]
        poll(
            lambda: len(client.__dict__.get("replies", ())) >= KEYS
            and blocked_xreads(redis_client, keys[0]) >= KEYS // 2,
            "every waiter's script, and half the pool blocked in XREAD",
        )
        write = start(client.set, keys[0] + ":value", "made")
        assert write["done"].wait(DEADLINE / 2), "the write still queues for a connection"
        assert finish(write) is True
        assert blocked_xreads(redis_client, keys[0]) <= KEYS // 2
        for holder in holders:
            holder.release()
        assert [finish(out) for out in outs] == [False] * KEYS
    finally:
        for holder in holders:
            if holder.locked():
                try:
                    holder.release()
                except Exception:
                    pass
        redis_client.delete(*keys, keys[0] + ":value")
        for k in keys:
            redis_client.delete(_stream_key(k), _wake_key(k))
        client.close()
        holder_client.close()


def test_async_waits_on_many_keys_leave_half_a_bounded_pool_to_commands(
    redis_url, redis_client, no_cap
):
    import redis.asyncio

    keys = [unique_key("pool-many-async") for _ in range(KEYS)]

    async def main():
        holder_client = redis.asyncio.Redis.from_url(redis_url)
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            redis_url, max_connections=KEYS, timeout=DEADLINE, client_name=tag(keys[0])
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        holders = [AsyncRedisMutex(holder_client, k, lease=30) for k in keys]
        try:
            for holder in holders:
                assert await holder.acquire(blocking=False)
            tasks = [
                asyncio.ensure_future(AsyncRedisMutex(client, k, lease=30).acquire_or_wait())
                for k in keys
            ]
            deadline = time.monotonic() + DEADLINE
            while blocked_xreads(redis_client, keys[0]) < KEYS // 2:
                assert time.monotonic() < deadline, "half the pool never blocked in XREAD"
                await asyncio.sleep(0.005)
            done, _ = await asyncio.wait(
                [asyncio.ensure_future(client.set(keys[0] + ":value", "made"))],
                timeout=DEADLINE / 2,
            )
            assert done, "the write still queues for a connection"
            assert blocked_xreads(redis_client, keys[0]) <= KEYS // 2
            for holder in holders:
                await holder.release()
            results = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
            assert results == [False] * KEYS
        finally:
            for c in (client, holder_client):
                await aclose(c)
            redis_client.delete(*keys, keys[0] + ":value")
            for k in keys:
                redis_client.delete(_stream_key(k), _wake_key(k))

    asyncio.run(main())
