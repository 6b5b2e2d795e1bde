"""The edges of acquire_or_wait() that an adversarial review found broken,
on a real redis-server, both cores and the asyncio front: a waiter that
spun while a thread or task of its own process held a lapsed lease, a wait
that an undecodable reply turned into polling for good, a take taken back
without waking the waiters, and a refused asyncio lock left held."""

import asyncio
import threading
import time

import pytest
import redis_server
from conftest import DEADLINE
from redis_server import unique_key

from dogpile import NeedRegenerationException, aio
from dogpile.mutexes import AsyncRedisMutex, RedisMutex
from dogpile.mutexes._common import LeaseLost
from dogpile.mutexes._protocol import _stream_key, _wake_key

redis_url = redis_server.redis_url
redis_client = redis_server.redis_client
redis = pytest.importorskip("redis")

SPIN = 50  # value reads that show a busy loop; a waiter woken by a release reads 1-2


@pytest.fixture
def key(redis_client):
    name = unique_key("review")
    yield name
    redis_client.delete(name, _stream_key(name), _wake_key(name))


def _store():
    store = {}
    reads = [0]
    spinning = threading.Event()

    def vcf():
        reads[0] += 1
        if reads[0] >= SPIN:
            spinning.set()
        if "v" not in store:
            raise NeedRegenerationException()
        return store["v"]

    return store, reads, spinning, vcf


def _lease_gone(client, key):
    deadline = time.monotonic() + DEADLINE
    while client.exists(key):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_waiter_does_not_spin_while_a_thread_of_its_process_holds_a_lapsed_lease(
    impl, redis_client, key
):
    """One RedisMutex shared by two threads (one process); the creator's
    lease ran out (auto_renew=False) while it still holds the in-process
    lock.  The second thread's acquire_or_wait() finds the key free but the
    in-process lock held and returns False at once, with no wait: the
    Dogpile reads the value, finds none and asks again, in a busy loop (one
    EVAL and one value read each turn) until the creator ends."""
    mutex = RedisMutex(redis_client, key, lease=0.05, auto_renew=False)
    d = impl.Dogpile(60, lock=mutex)
    store, reads, spinning, vcf = _store()
    creating = threading.Event()

    def creator():
        creating.set()
        spinning.wait(0.3)  # ends at once if the waiter spins, else after 0.3 s
        store["v"] = ("v", time.time())
        return store["v"]

    def holder():
        try:
            with d.acquire(creator, value_and_created_fn=vcf):
                pass
        except LeaseLost:
            pass  # the lease ran out: expected here

    t = threading.Thread(target=holder)
    t.start()
    assert creating.wait(DEADLINE)
    _lease_gone(redis_client, key)
    before = reads[0]
    with d.acquire(creator, value_and_created_fn=vcf) as value:
        assert value == "v"
    t.join(DEADLINE)
    assert reads[0] - before <= 5, f"the waiter read the value {reads[0] - before} times"


def test_async_a_waiter_does_not_spin_while_a_task_of_its_process_holds_a_lapsed_lease(
    impl, redis_url, key
):
    """AsyncDogpile over one AsyncRedisMutex: the same busy loop as above."""
    store, reads, spinning, vcf = _store()

    async def main():
        client = redis.asyncio.Redis.from_url(redis_url)
        mutex = AsyncRedisMutex(client, key, lease=0.05, auto_renew=False)
        d = aio._build(impl).AsyncDogpile(60, lock=mutex)
        creating = asyncio.Event()

        async def creator():
            creating.set()
            for _ in range(30):  # 0.3 s, or at once if the waiter spins
                if spinning.is_set():
                    break
                await asyncio.sleep(0.01)
            store["v"] = ("v", time.time())
            return store["v"]

        async def holder():
            try:
                async with d.acquire(creator, value_and_created_fn=vcf):
                    pass
            except LeaseLost:
                pass

        task = asyncio.ensure_future(holder())
        await asyncio.wait_for(creating.wait(), DEADLINE)
        while await client.exists(key):
            await asyncio.sleep(0.01)
        before = reads[0]
        async with d.acquire(creator, value_and_created_fn=vcf) as value:
            assert value == "v"
        await asyncio.wait_for(task, DEADLINE)
        await client.aclose()
        return reads[0] - before

    spun = asyncio.run(main())
    assert spun <= 5, f"the waiter read the value {spun} times"


def _poll_blocked_xread(client, client_name):
    """Until the client named ``client_name`` is blocked in XREAD."""
    deadline = time.monotonic() + DEADLINE
    while not any(
        c.get("name") == client_name and c.get("cmd") == "xread" and "b" in c.get("flags", "")
        for c in client.client_list()
    ):
        assert time.monotonic() < deadline, f"{client_name} never blocked in XREAD"
        time.sleep(0.005)


class _CountingRedis(redis.Redis):
    def execute_command(self, *args, **options):
        self.__dict__.setdefault("sent", []).append(str(args[0]).upper())
        return super().execute_command(*args, **options)


def test_a_reply_that_cannot_be_decoded_does_not_turn_the_wake_up_stream_off(
    redis_url, redis_client
):
    """decode_responses=True and a name that is not UTF-8 (bytes names are
    accepted): XREAD's reply, which names the stream, fails to decode
    (UnicodeDecodeError).  _stream_failed reads any error but a connection
    error as "the server has no streams (Redis < 5)" and turns XREAD off for
    good: from then on every wait is a 50-100 ms sleep that returns False
    with the lock still held, and a Dogpile polls."""
    name = b"\xff\xfe" + unique_key("review").encode()
    client_name = "undecodable-" + name.rsplit(b":", 1)[-1].decode()
    try:
        holder = RedisMutex(redis_client, name)
        client = _CountingRedis.from_url(
            redis_url, decode_responses=True, client_name=client_name
        )
        waiter = RedisMutex(client, name, lease=30)
        assert holder.acquire()

        def release_once_the_waiter_blocks():
            # Not after a fixed delay: on a loaded machine the waiter's try
            # came after a 0.1 s timer's release, and took the lock.
            _poll_blocked_xread(redis_client, client_name)
            holder.release()

        released = threading.Thread(target=release_once_the_waiter_blocks, daemon=True)
        released.start()
        assert waiter.acquire_or_wait(DEADLINE) is False  # woken by the release
        released.join(DEADLINE)
        assert not released.is_alive()
        assert holder.acquire()
        client.sent = []
        waiter.acquire_or_wait(0.3)  # the lock stays held: a wait, not a sleep
        holder.release()
        assert client.sent == ["EVALSHA", "XREAD"] or client.sent == ["EVAL", "XREAD"], client.sent
    finally:
        redis_client.delete(name, _stream_key(name), _wake_key(name))


def test_async_an_asyncio_lock_with_a_plain_acquire_or_wait_is_refused_and_released(impl):
    """An asyncio lock (coroutine acquire and release) whose acquire_or_wait
    is a plain method that took the lock: _aio_locks._acquire_or_wait
    refuses it (TypeError) and calls release() to give it back, but drops
    the coroutine release() returned: never awaited (RuntimeWarning), the
    lock stays held."""

    class Lock:
        held = False

        async def acquire(self, blocking=True, timeout=-1):
            if self.held:
                return False
            self.held = True
            return True

        async def release(self):
            self.held = False

        def locked(self):
            return self.held

        def acquire_or_wait(self, timeout=-1):
            self.held = True
            return True

    lock = Lock()

    async def main():
        d = aio._build(impl).AsyncDogpile(60, lock=lock)

        async def creator():
            return 1

        with pytest.raises(TypeError, match="acquire_or_wait"):
            async with d.acquire(creator):
                pass

    asyncio.run(main())
    assert not lock.held, "the refused lock was left held"


def test_async_a_taken_back_take_wakes_the_waiters_as_a_release_does(
    redis_url, redis_client, key, monkeypatch
):
    """A task's acquire_or_wait() is cancelled after its SET reached the
    server: _take_back_later deletes the key (_DELETE_IF_OURS), but adds
    nothing to the wake-up stream, so a waiter that saw the key held in
    between stays blocked until its cap (the 1 s safety net; here the cap
    is 4 s) instead of waking at
    the delete, as it would at a release."""
    from dogpile.mutexes import _protocol

    # 4 s: under redis-py 8's default socket timeout (5 s, not in the
    # pool's connection_kwargs, which _wake_cap reads).
    monkeypatch.setattr(_protocol, "_WAKE_CAP", 4.0)
    out = {}

    def waiter():
        mutex = RedisMutex(redis.Redis.from_url(redis_url), key, lease=30)
        out["got"] = mutex.acquire_or_wait(DEADLINE)
        out["returned"] = time.monotonic()

    def xread_blocked():
        return any(b"cmd=xread" in line for line in redis_client.execute_command(
            "CLIENT", "LIST").split(b"\n"))

    async def main():
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.ping()  # connected: the take's EVAL goes out at once
        mutex = AsyncRedisMutex(client, key, lease=30)
        task = asyncio.ensure_future(mutex.acquire_or_wait(DEADLINE))
        deadline = time.monotonic() + DEADLINE
        while not redis_client.exists(key):
            await asyncio.sleep(0)  # until the SET is on the server
            assert time.monotonic() < deadline
        # From here the loop is blocked: the take's reply stays unread.
        thread = threading.Thread(target=waiter)
        thread.start()
        while not xread_blocked():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while redis_client.exists(key):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        out["deleted"] = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, DEADLINE + 5)
        await client.aclose()

    asyncio.run(main())
    assert out["got"] is False
    assert out["returned"] - out["deleted"] < 2.0, (
        f"the waiter woke {out['returned'] - out['deleted']:.2f} s after the take-back"
    )


def test_a_take_back_wakes_the_waiters_as_a_release_does(
    redis_url, redis_client, key, monkeypatch
):
    """The sync take-back (_delete_if_ours, after a failed or interrupted
    take): it wakes a waiter blocked in XREAD, through the stream, well
    before the safety net (4 s here)."""
    from dogpile.mutexes import _protocol

    monkeypatch.setattr(_protocol, "_WAKE_CAP", 4.0)
    redis_client.set(key, "a token", px=30_000)
    out = []

    def waiter():
        mutex = RedisMutex(redis.Redis.from_url(redis_url), key, lease=30)
        out.append(mutex.acquire_or_wait(DEADLINE))

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not any(c.get("cmd") == "xread" for c in redis_client.client_list()):
        assert time.monotonic() < deadline, "the waiter never blocked in XREAD"
        time.sleep(0.005)
    RedisMutex(redis_client, key)._delete_if_ours("a token")
    assert not redis_client.exists(key)
    assert redis_client.xlen(_stream_key(key)) == 1
    assert redis_client.ttl(_stream_key(key)) > 0
    thread.join(3.0)
    assert not thread.is_alive(), "the waiter slept to the safety net"
    assert out == [False]
