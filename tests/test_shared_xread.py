"""The one XREAD that the waiters of one process share.

A waiter whose own script ran BEFORE a release must return at once after
that release (its caller then reads what the release's holder made), as it
did with one XREAD each: its XREAD started from an id older than the
release's entry.  With the shared XREAD, a waiter that reaches the share
after a newer leader (whose script ran after that release, the key taken
again meanwhile) waits for the leader's XREAD, which waits for the NEXT
release, or the 1 s safety net.  The pause between the waiter's script
and the share is what a thread switch or a slow reply does; here a hook
of the client holds it there.  The safety net is off (``no_cap``), so a
waiter held by the wrong XREAD stays blocked until the next release, which
the tests make only after checking that the waiter has returned.
"""

import threading
import time

import pytest
import redis_server
from conftest import DEADLINE
from redis_server import aclose, unique_key
from test_acquire_or_wait import blocked_xreads, counting, finish, names, no_cap, poll, start, tag

from dogpile.mutexes import RedisMutex
from dogpile.mutexes._protocol import _stream_key, _wake_key

redis_url = redis_server.redis_url
redis_client = redis_server.redis_client
no_cap = no_cap  # a fixture of test_acquire_or_wait's

redis = pytest.importorskip("redis")


@pytest.fixture
def key(redis_client):
    name = unique_key("shared-xread")
    yield name
    redis_client.delete(name, _stream_key(name), _wake_key(name))


def test_a_waiter_whose_script_ran_before_a_release_is_not_held_by_a_newer_leader(
    redis_url, redis_client, key, no_cap
):
    first = RedisMutex(redis_client, key, lease=30)
    second = RedisMutex(redis.Redis.from_url(redis_url), key, lease=30)
    assert first.acquire(blocking=False)

    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
    late = threading.local()
    replied, go = threading.Event(), threading.Event()

    def pause_the_late_thread(args):
        # Only the late waiter's script: it has its reply (held, id X) and
        # is held here, as a preempted thread would be.
        if getattr(late, "on", False) and str(args[0]).upper() == "EVAL":
            late.on = False
            replied.set()
            go.wait(DEADLINE)

    client.after = pause_the_late_thread
    waiter = RedisMutex(client, key, lease=30)

    def late_waiter():
        late.on = True
        return waiter.acquire_or_wait()

    a = start(late_waiter)
    assert replied.wait(DEADLINE)
    # The release A must see, then another process takes the key again.
    first.release()
    assert second.acquire(blocking=False)
    # Thread B's script sees the key held and the release's entry: it
    # leads the shared XREAD from that newer id.
    b = start(waiter.acquire_or_wait)
    poll(lambda: blocked_xreads(redis_client, key) == 1, "B's XREAD")
    go.set()
    try:
        # Before the next release: held by B's XREAD, A would still wait.
        assert a["done"].wait(DEADLINE / 2), "A still waits after the release it waited for"
        assert finish(a) is False
    finally:
        second.release()
        finish(b)
        client.close()


def test_async_a_waiter_whose_script_ran_before_a_release_is_not_held_by_a_newer_leader(
    redis_url, redis_client, key, no_cap
):
    """The same with tasks of one loop: the late task's reply is read
    after the leader's (its resumption is what the loop schedules)."""
    import asyncio
    import contextvars

    import redis.asyncio

    from dogpile.mutexes import AsyncRedisMutex

    late = contextvars.ContextVar("late", default=None)

    class Pausing(redis.asyncio.Redis):
        async def execute_command(self, *args, **options):
            reply = await super().execute_command(*args, **options)
            gate = late.get()
            if gate is not None and str(args[0]).upper() == "EVAL":
                late.set(None)
                gate[0].set()
                await asyncio.wait_for(gate[1].wait(), DEADLINE)
            return reply

    async def main():
        first = AsyncRedisMutex(redis.asyncio.Redis.from_url(redis_url), key, lease=30)
        second = AsyncRedisMutex(redis.asyncio.Redis.from_url(redis_url), key, lease=30)
        client = Pausing.from_url(redis_url, client_name=tag(key))
        waiter = AsyncRedisMutex(client, key, lease=30)
        assert await first.acquire(blocking=False)
        replied, go = asyncio.Event(), asyncio.Event()

        async def late_waiter():
            late.set((replied, go))
            return await waiter.acquire_or_wait()

        a = asyncio.ensure_future(late_waiter())
        await asyncio.wait_for(replied.wait(), DEADLINE)
        await first.release()
        assert await second.acquire(blocking=False)
        b = asyncio.ensure_future(waiter.acquire_or_wait())
        deadline = time.monotonic() + DEADLINE
        while blocked_xreads(redis_client, key) != 1:
            assert time.monotonic() < deadline, "B's XREAD"
            await asyncio.sleep(0.005)
        go.set()
        try:
            # Before the next release: held by B's XREAD, A would still wait.
            done, _ = await asyncio.wait([a], timeout=DEADLINE / 2)
            assert done, "A still waits after the release it waited for"
            assert a.result() is False
        finally:
            await second.release()
            await asyncio.wait_for(b, DEADLINE)
            for c in (client, first._client, second._client):
                await aclose(c)

    asyncio.run(main())


def ask_until(wait, seconds):
    """A caller that asks again after each False, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert wait(max(0.0, end - time.monotonic())) is False


def test_a_waiter_that_finds_the_stream_expired_since_the_leaders_script_still_waits(
    redis_url, redis_client, key, no_cap
):
    """The other way round: the leader read the last entry's id, then the
    stream expired (a lease after the last release, while a slow creator
    holds the key), and a waiter's script finds no stream ("0-0").  That
    waiter must wait for the next release, not return at once for nothing
    (its caller would ask again and again, one script each, until the
    leader's XREAD ends)."""
    releaser = RedisMutex(redis_client, key, lease=0.3, auto_renew=False)
    holder = RedisMutex(redis.Redis.from_url(redis_url), key, lease=30)
    assert releaser.acquire(blocking=False)
    releaser.release()  # an entry, in a stream that expires in 0.3 s
    assert holder.acquire(blocking=False)
    client = counting(redis.Redis).from_url(redis_url, client_name=tag(key))
    waiter = RedisMutex(client, key, lease=30)
    leader = start(waiter.acquire_or_wait, DEADLINE)
    poll(lambda: blocked_xreads(redis_client, key) == 1, "the leader's XREAD")
    poll(lambda: not redis_client.exists(_stream_key(key)), "the stream's expiry")
    sent = len(client.sent)
    follower = start(ask_until, waiter.acquire_or_wait, 0.5)
    try:
        finish(follower)
        # One wait (or two, at a cap), not one script per spin.
        assert names(client)[sent:].count("EVAL") <= 2, names(client)[sent:]
    finally:
        holder.release()
        finish(leader)
        client.close()


def test_async_a_waiter_that_finds_the_stream_expired_since_the_leaders_script_still_waits(
    redis_url, redis_client, key, no_cap
):
    import asyncio

    import redis.asyncio

    from dogpile.mutexes import AsyncRedisMutex

    async def main():
        releaser = AsyncRedisMutex(
            redis.asyncio.Redis.from_url(redis_url), key, lease=0.3, auto_renew=False
        )
        holder = AsyncRedisMutex(redis.asyncio.Redis.from_url(redis_url), key, lease=30)
        client = counting(redis.asyncio.Redis).from_url(redis_url, client_name=tag(key))
        waiter = AsyncRedisMutex(client, key, lease=30)
        assert await releaser.acquire(blocking=False)
        await releaser.release()
        assert await holder.acquire(blocking=False)
        leader = asyncio.ensure_future(waiter.acquire_or_wait(DEADLINE))
        deadline = time.monotonic() + DEADLINE
        while blocked_xreads(redis_client, key) != 1 or redis_client.exists(_stream_key(key)):
            assert time.monotonic() < deadline, "the leader's XREAD, the stream's expiry"
            await asyncio.sleep(0.005)
        sent = len(client.sent)
        try:
            end = time.monotonic() + 0.5
            while time.monotonic() < end:  # a caller that asks again
                left = max(0.0, end - time.monotonic())
                assert await asyncio.wait_for(waiter.acquire_or_wait(left), DEADLINE) is False
            assert names(client)[sent:].count("EVAL") <= 2, names(client)[sent:]
        finally:
            await holder.release()
            await asyncio.wait_for(leader, DEADLINE)
            for c in (client, releaser._client, holder._client):
                await aclose(c)

    asyncio.run(main())
