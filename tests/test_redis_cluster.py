"""RedisMutex and AsyncRedisMutex over redis-py's cluster clients
(``redis.cluster.RedisCluster``, ``redis.asyncio.cluster.RedisCluster``), on
a real 3-master Redis Cluster (tests/redis_cluster.py): the mutex's own keys
share the lock key's hash slot whatever the name (str or bytes, with or
without a hash tag), so its scripts, BLPOP and XREAD are routed to the
key's node; a name whose keys cannot share a slot is refused; names spread
over every node; acquire, release, LeaseLost, the renewal, acquire_or_wait
woken by another client's release, and a Dogpile cold key shared by
threads that each have their own client (as processes would): one
creation, one take, and every waiter reads the value once after the
release without taking the key.

Waiters are seen blocked on the key's node (CLIENT LIST, ``b`` flag)
before the holder releases, so a False is known to come from the release.
"""

import asyncio
import inspect
import threading
import time

import pytest
import redis_cluster
import redis_server
from conftest import DEADLINE
from redis_server import unique_key

from dogpile import NeedRegenerationException, aio
from dogpile.mutexes import AsyncRedisMutex, LeaseLost, RedisMutex, _protocol
from dogpile.mutexes._protocol import _released_key, _stream_key, _wake_key

cluster_nodes = redis_cluster.cluster_nodes
cluster_client = redis_cluster.cluster_client
redis_url = redis_server.redis_url
redis_client = redis_server.redis_client

redis = pytest.importorskip("redis", reason='needs the redis client (pip install ".[test]")')

WAITERS = 3


def sync_client(ports, **options):
    from redis.cluster import RedisCluster

    return RedisCluster(host="127.0.0.1", port=ports[0], **options)


def async_cluster():
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:
        pytest.skip("this redis-py has no asyncio cluster client (redis.asyncio.cluster: 4.3+)")
    return RedisCluster


def async_client(ports, **options):
    return async_cluster()(host="127.0.0.1", port=ports[0], **options)


@pytest.fixture
def no_cap(monkeypatch):
    """The 1 s safety net off (DEADLINE instead): a waiter lined up before
    the release must not return at its cap on a slow machine."""
    monkeypatch.setattr(_protocol, "_WAKE_CAP", DEADLINE)


def poll(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {DEADLINE}s"
        time.sleep(0.005)


def blocked(client, name, command):
    """Clients blocked in ``command`` now on the node that holds ``name``
    (the session's cluster is this suite's alone)."""
    node = client.get_node_from_key(name)
    return sum(
        1
        for c in node.redis_connection.client_list()
        if c.get("cmd") == command and "b" in c.get("flags", "")
    )


def counting(base):
    """A cluster client class whose instances count the scripts that took
    the lock key (``takes``)."""
    takers = (_protocol._ACQUIRE, _protocol._TAKE_OR_LOOK)

    def took(args, reply):
        if args[0] != "EVAL" or args[1] not in takers:
            return 0
        return int((reply[0] if isinstance(reply, list) else reply) == 1)

    if inspect.iscoroutinefunction(base.execute_command):

        class Counting(base):
            takes = 0

            async def execute_command(self, *args, **options):
                reply = await super().execute_command(*args, **options)
                type(self).takes += took(args, reply)
                return reply

    else:

        class Counting(base):
            takes = 0
            _count = threading.Lock()

            def execute_command(self, *args, **options):
                reply = super().execute_command(*args, **options)
                with self._count:
                    type(self).takes += took(args, reply)
                return reply

    return Counting


NAMES = [
    "plain",
    b"bytes",
    "{user:1}:lock",
    b"{user:1}:bytes-lock",
    "a{b",
    "x{y}{z}",
]


@pytest.mark.parametrize("decode", [False, True], ids=["bytes-replies", "decode_responses"])
@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_every_key_of_the_mutex_shares_the_lock_keys_slot(cluster_nodes, name, decode):
    """acquire, locked, acquire_or_wait (held: looks and waits) and release
    on the name's node: the scripts with 2 and 4 keys, the XREAD and the
    BLPOP are routed there (a key of another slot fails in the client)."""
    client = sync_client(cluster_nodes, decode_responses=decode)
    label = unique_key("slot")
    name = name + (label.encode() if isinstance(name, bytes) else label)
    try:
        slot = client.keyslot(name)
        token = "0" * 32
        for key in (
            _wake_key(name, True), _stream_key(name, True), _released_key(name, token, True)
        ):
            assert client.keyslot(key) == slot, key
        holder = RedisMutex(client, name, lease=5)
        other = RedisMutex(sync_client(cluster_nodes, decode_responses=decode), name, lease=5)
        assert holder.acquire(timeout=DEADLINE)
        assert holder.locked() and other.locked()
        assert other.acquire(timeout=0.05) is False  # BLPOP on the wake list
        assert other.acquire_or_wait(timeout=0.05) is False  # XREAD on the stream
        holder.release()
        assert not other.locked()
        assert other.acquire_or_wait(timeout=DEADLINE) is True
        other.release()
    finally:
        client.close()


@pytest.mark.parametrize("name", ["a}b", b"}x", "x}{y", "{}empty-tag", "x{}y{z}"], ids=repr)
def test_a_name_whose_keys_cannot_share_its_slot_is_refused(cluster_client, name):
    """A "}" outside a hash tag (an empty tag is none): Redis hashes the
    whole name, and no other key can be given that slot by a tag."""
    with pytest.raises(ValueError, match="hash tag"):
        RedisMutex(cluster_client, name)


def test_names_spread_over_every_node(cluster_nodes, cluster_client):
    """Mutexes whose keys live on each of the three masters, held at once."""
    nodes = {}
    i = 0
    while len(nodes) < len(cluster_nodes):
        name = unique_key(f"spread{i}")
        nodes.setdefault(cluster_client.get_node_from_key(name).name, name)
        i += 1
        assert i < 1000
    mutexes = [RedisMutex(cluster_client, name, lease=5) for name in nodes.values()]
    for mutex in mutexes:
        assert mutex.acquire(timeout=DEADLINE)
    for node, name in nodes.items():
        assert cluster_client.get_node_from_key(name).name == node
        assert cluster_client.exists(name)
    for mutex in mutexes:
        mutex.release()
    assert not any(cluster_client.exists(name) for name in nodes.values())


def test_lease_lost_leaves_the_new_holders_key(cluster_nodes, cluster_client):
    name = unique_key("lost")
    first = RedisMutex(cluster_client, name, lease=0.05, auto_renew=False)
    second = RedisMutex(sync_client(cluster_nodes), name, lease=5)
    assert first.acquire()
    poll(lambda: not cluster_client.exists(name), "the lease to run out")
    assert second.acquire(timeout=DEADLINE)
    with pytest.raises(LeaseLost):
        first.release()
    assert second.locked()
    second.release()


def test_the_renewal_thread_keeps_the_key(cluster_client):
    name = unique_key("renew")
    # A lease long enough that a renewal 1 s late on a loaded machine
    # still lands in time (renewed every lease / 3; 0.5 s leases lapsed
    # under heavy load in 3 of 60 runs of the asyncio test below).
    mutex = RedisMutex(cluster_client, name, lease=1.5)
    assert mutex.acquire()
    time.sleep(1.7)  # more than a lease: renewed by the thread, or gone
    assert cluster_client.pttl(name) > 0
    mutex.release()
    assert not cluster_client.exists(name)


def test_a_socket_timeout_shorter_than_the_wait_cap_does_not_cut_waits_off(cluster_nodes):
    """The cluster client's socket_timeout bounds each BLPOP and XREAD, as a
    plain client's does: a waiter times out with False, not TimeoutError.
    (0.4 s: each blocks 0.1 s, and the server's reply may come 0.1 s after
    that; under 0.22 s the waiter polls instead.)"""
    name = unique_key("socket-timeout")
    holder = RedisMutex(sync_client(cluster_nodes), name, lease=5)
    waiter = RedisMutex(sync_client(cluster_nodes, socket_timeout=0.4), name, lease=5)
    assert holder.acquire()
    try:
        assert waiter.acquire(timeout=0.5) is False
        assert waiter.acquire_or_wait(timeout=0.5) is False
    finally:
        holder.release()
    # Errors and repr() name a node, not the client object.
    node = f"127.0.0.1:{cluster_nodes[0]}"
    assert node in repr(waiter) and "Redis Cluster" in repr(waiter)


def test_acquire_or_wait_is_woken_by_another_clients_release(cluster_nodes, cluster_client, no_cap):
    """Waiters, each with a client of its own, blocked in XREAD on the
    key's node, all return False at the release without taking the key;
    an acquire() waiter in BLPOP then takes it."""
    name = unique_key("woken")
    holder = RedisMutex(sync_client(cluster_nodes), name, lease=5)
    assert holder.acquire()
    results = []

    def wait():
        results.append(RedisMutex(sync_client(cluster_nodes), name, lease=5).acquire_or_wait())

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(WAITERS)]
    for t in threads:
        t.start()
    poll(lambda: blocked(cluster_client, name, "xread") == WAITERS, "the waiters' XREADs")
    holder.release()
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive()
    assert results == [False] * WAITERS
    assert not cluster_client.exists(name)

    assert holder.acquire()
    taker = RedisMutex(sync_client(cluster_nodes), name, lease=5)
    took = []
    t = threading.Thread(target=lambda: took.append(taker.acquire(timeout=DEADLINE)), daemon=True)
    t.start()
    poll(lambda: blocked(cluster_client, name, "blpop") == 1, "the waiter's BLPOP")
    holder.release()
    t.join(DEADLINE)
    assert took == [True]
    taker.release()


def test_a_cold_key_shared_by_clients_is_created_once_and_read_once(
    impl, cluster_nodes, cluster_client, no_cap
):
    """Threads that each have their own cluster client, RedisMutex and
    Dogpile (as processes would) on one cold key: one creation and one take;
    every other thread waits in XREAD and reads the value once after the
    release."""
    name = unique_key("cold")
    value_key = "{" + name + "}:value"
    Counting = counting(type(cluster_client))
    creations, reads = [], {}
    results = []

    def worker(i):
        client = Counting(host="127.0.0.1", port=cluster_nodes[0])
        d = impl.Dogpile(60, lock=RedisMutex(client, name, lease=5))

        def vcf():
            reads[i] = reads.get(i, 0) + 1
            raw = client.get(value_key)
            if raw is None:
                raise NeedRegenerationException()
            return raw.decode(), float(client.get(value_key + ":at"))

        def creator():
            creations.append(i)
            poll(lambda: blocked(cluster_client, name, "xread") == WAITERS, "the waiters")
            now = time.time()
            client.set(value_key + ":at", now)
            client.set(value_key, "v")
            return "v", now

        with d.acquire(creator, value_and_created_fn=vcf) as value:
            results.append(value)
        client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WAITERS + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive()
    assert results == ["v"] * (WAITERS + 1)
    assert len(creations) == 1
    assert Counting.takes == 1
    # Each: one read before the lock, one after it: the creator's, once it
    # has the key; a waiter's, once the release woke it.
    assert reads == {i: 2 for i in range(WAITERS + 1)}
    assert not cluster_client.exists(name)


# -- AsyncRedisMutex ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain", b"bytes", "{user:2}:lock"], ids=repr)
def test_async_acquire_release_lease_lost_and_renewal(cluster_nodes, name):
    label = unique_key("async")
    name = name + (label.encode() if isinstance(name, bytes) else label)

    async def main():
        client = async_client(cluster_nodes)
        other = async_client(cluster_nodes, socket_timeout=0.4)
        try:
            # Renewed every lease / 3: long enough that a renewal 1 s late
            # on a loaded machine still lands in time (0.5 s leases lapsed
            # under heavy load in 3 of 60 runs, before the first check).
            mutex = AsyncRedisMutex(client, name, lease=1.5)
            waiter = AsyncRedisMutex(other, name, lease=5)
            assert f"127.0.0.1:{cluster_nodes[0]}" in repr(waiter)
            assert await mutex.acquire()
            acquired = time.monotonic()
            assert await waiter.locked()
            # The socket timeout bounds the BLPOP and the XREAD.
            assert await waiter.acquire(timeout=0.5) is False
            assert await waiter.acquire_or_wait(timeout=0.5) is False
            await asyncio.sleep(acquired + 1.7 - time.monotonic())
            assert await client.pttl(name) > 0  # renewed past a lease
            await mutex.release()
            assert not await waiter.locked()

            lapsing = AsyncRedisMutex(client, name, lease=0.05, auto_renew=False)
            assert await lapsing.acquire()
            deadline = time.monotonic() + DEADLINE
            while await client.exists(name):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert await waiter.acquire(timeout=DEADLINE)
            with pytest.raises(LeaseLost):
                await lapsing.release()
            assert await client.exists(name)
            await waiter.release()
        finally:
            await client.aclose()
            await other.aclose()

    asyncio.run(main())


def test_async_a_cold_key_shared_by_clients_is_created_once_and_read_once(
    impl, cluster_nodes, cluster_client, no_cap
):
    """Tasks that each have their own asyncio cluster client, AsyncRedisMutex
    and AsyncDogpile on one cold key: one creation and one take; every
    other task waits in XREAD and reads the value once after the release."""
    name = unique_key("async-cold")
    value_key = "{" + name + "}:value"
    AsyncDogpile = aio._build(impl).AsyncDogpile
    creations, reads = [], {}

    async def worker(i, Counting):
        client = Counting(host="127.0.0.1", port=cluster_nodes[0])
        try:
            d = AsyncDogpile(60, lock=AsyncRedisMutex(client, name, lease=5))

            async def vcf():
                reads[i] = reads.get(i, 0) + 1
                raw = await client.get(value_key)
                if raw is None:
                    raise NeedRegenerationException()
                return raw.decode(), float(await client.get(value_key + ":at"))

            async def creator():
                creations.append(i)
                deadline = time.monotonic() + DEADLINE
                while blocked(cluster_client, name, "xread") < WAITERS:
                    assert time.monotonic() < deadline, "the waiters never blocked"
                    await asyncio.sleep(0.005)
                now = time.time()
                await client.set(value_key + ":at", now)
                await client.set(value_key, "v")
                return "v", now

            async with d.acquire(creator, value_and_created_fn=vcf) as value:
                return value
        finally:
            await client.aclose()

    async def main():
        Counting = counting(async_cluster())
        results = await asyncio.wait_for(
            asyncio.gather(*(worker(i, Counting) for i in range(WAITERS + 1))), DEADLINE
        )
        return results, Counting.takes

    results, takes = asyncio.run(main())
    assert results == ["v"] * (WAITERS + 1)
    assert len(creations) == 1 and takes == 1
    # Each: one read before the lock, one after it: the creator's, once it
    # has the key; a waiter's, once the release woke it.
    assert reads == {i: 2 for i in range(WAITERS + 1)}
    assert not cluster_client.exists(name)


def test_a_pipeline_is_refused_naming_the_client_to_pass(
    cluster_nodes, cluster_client, redis_client
):
    """A pipeline queues commands until execute(): no mutex can run on it
    (before, RedisMutex was made and failed later with an unrelated
    TypeError)."""
    for pipeline in (cluster_client.pipeline(), redis_client.pipeline()):
        with pytest.raises(TypeError, match="pipeline .*pass the client it came from"):
            RedisMutex(pipeline, unique_key("pipeline"))


def test_async_a_pipeline_is_refused_naming_the_client_to_pass(cluster_nodes):
    async def main():
        client = async_client(cluster_nodes)
        try:
            with pytest.raises(TypeError, match="pipeline .*pass the client it came from"):
                AsyncRedisMutex(client.pipeline(), unique_key("pipeline"))
        finally:
            await client.aclose()

    asyncio.run(main())
