"""RedisMutex and AsyncRedisMutex under a Redis ACL user whose key
permissions cover a prefix, as on a shared server where each application
may touch only its own keys (``~app:*``): on one server the mutex's own
keys (the wake-up list and stream, the release notes) start with the lock
key's name, so the prefix that covers the name covers them; on a Redis
Cluster they must share the name's hash slot, which a hash tag in the name
(``app:{lock}``) gives without leaving the prefix.

A user that may not touch those keys is refused at acquire() and
acquire_or_wait(), with a message naming the keys and the pattern that
would allow them, before anything is taken: never at release() with the
key left held until its lease ends.  Real servers (tests/redis_server.py,
tests/redis_cluster.py) with users made by ACL SETUSER and deleted after.
"""

import asyncio
import threading
import time
import uuid

import pytest
import redis_cluster
import redis_server
from conftest import DEADLINE
from redis_server import aclose, unique_key

from dogpile import NeedRegenerationException
from dogpile.mutexes import AsyncRedisMutex, RedisMutex

redis_url = redis_server.redis_url
redis_client = redis_server.redis_client
cluster_nodes = redis_cluster.cluster_nodes

redis = pytest.importorskip("redis", reason='needs the redis client (pip install ".[test]")')

PASSWORD = "dogpile-test-password"


def make_user(admin, pattern):
    """An ACL user allowed every command on the keys ``pattern`` only."""
    user = f"dogpile-test-{uuid.uuid4().hex}"
    set_user(admin, user, pattern)
    return user


def set_user(admin, user, pattern):
    # The raw command: redis-py's acl_setuser() spells key patterns
    # differently across its versions.
    admin.execute_command("ACL", "SETUSER", user, "on", f">{PASSWORD}", pattern, "+@all")


@pytest.fixture
def prefix(redis_client):
    prefix = unique_key("acl") + ":"
    users = []
    yield prefix, users
    for client in _clients:
        client.close()
    _clients.clear()
    for user in users:
        redis_client.acl_deluser(user)
    keys = list(redis_client.scan_iter(match=prefix + "*"))
    if keys:
        redis_client.delete(*keys)


_clients = []  # the synchronous ones a test made, closed by the fixture


def as_user(redis_url, user):
    client = redis.Redis.from_url(redis_url, username=user, password=PASSWORD)
    _clients.append(client)
    return client


def wait_until_blocked(admin, user):
    """Until a connection of ``user`` is blocked on the server (BLPOP,
    XREAD): then a release is what ends its wait."""
    deadline = time.monotonic() + DEADLINE
    while not any(
        c.get("user") == user and "b" in c.get("flags", "") for c in admin.client_list()
    ):
        assert time.monotonic() < deadline, f"no connection of {user} blocked"
        time.sleep(0.005)


def test_a_user_allowed_the_names_prefix_can_use_every_part_of_the_mutex(
    redis_url, redis_client, prefix
):
    """acquire, acquire() woken by BLPOP, acquire_or_wait woken by XREAD,
    release: no NOPERM, and every key the mutex wrote is under the prefix."""
    prefix, users = prefix
    user = make_user(redis_client, f"~{prefix}*")
    users.append(user)
    name = prefix + "lock"
    holder = RedisMutex(as_user(redis_url, user), name, lease=10)
    waiter = RedisMutex(as_user(redis_url, user), name, lease=10)
    waits = [
        (lambda: waiter.acquire(timeout=DEADLINE), True),  # BLPOP, then takes
        (lambda: waiter.acquire_or_wait(DEADLINE), False),  # XREAD, does not take
    ]
    for wait, expected in waits:
        assert holder.acquire(blocking=False)
        got = []
        thread = threading.Thread(target=lambda w=wait, g=got: g.append(w()), daemon=True)
        thread.start()
        wait_until_blocked(redis_client, user)
        holder.release()
        thread.join(DEADLINE)
        assert got == [expected]
        if expected:
            waiter.release()
    assert not redis_client.exists(name)
    # The unique part of the prefix, wherever it stands in a key.
    label = prefix.rstrip(":").rsplit(":", 1)[-1]
    written = {key.decode() for key in redis_client.scan_iter(match=f"*{label}*")}
    assert written and all(key.startswith(prefix) for key in written), written


@pytest.mark.parametrize("how", ["acquire", "acquire(False)", "acquire_or_wait"])
def test_a_user_refused_the_mutexs_keys_is_told_at_acquire_and_nothing_is_held(
    redis_url, redis_client, prefix, how
):
    """Allowed the lock key alone: refused before the key is taken, with a
    message that names the keys and the pattern to grant."""
    prefix, users = prefix
    name = prefix + "lock"
    user = make_user(redis_client, f"~{name}")
    users.append(user)
    mutex = RedisMutex(as_user(redis_url, user), name, lease=10)
    call = {
        "acquire": lambda: mutex.acquire(timeout=DEADLINE),
        "acquire(False)": lambda: mutex.acquire(False),
        "acquire_or_wait": lambda: mutex.acquire_or_wait(DEADLINE),
    }[how]
    for _ in range(2):  # the in-process lock is not left held either
        with pytest.raises(redis.exceptions.ResponseError) as caught:
            call()
        message = str(caught.value)
        assert "refused" in message and "ACL" in message, message
        assert f"'{name}:dogpile-wake'" in message and f"'~{name}*'" in message, message
        assert not redis_client.exists(name)
    assert not mutex.locked()


@pytest.mark.parametrize("allowed", [True, False], ids=["prefix", "lock-key-only"])
def test_a_dogpile_over_an_acl_users_mutex(impl, redis_url, redis_client, prefix, allowed):
    """Both cores: under the prefix, a cold key is created once and served;
    refused, the caller gets the refusal and the creator never runs."""
    prefix, users = prefix
    name = prefix + "lock"
    user = make_user(redis_client, f"~{prefix}*" if allowed else f"~{name}")
    users.append(user)
    client = as_user(redis_url, user)
    d = impl.Dogpile(60, lock=RedisMutex(client, name, lease=10))
    created = []

    def stored():
        raise NeedRegenerationException()

    def create():
        created.append(1)
        return "v", time.time()

    if allowed:
        with d.acquire(create, value_and_created_fn=stored) as value:
            assert value == "v"
        assert created == [1]
    else:
        with pytest.raises(redis.exceptions.ResponseError, match="refused"):
            with d.acquire(create, value_and_created_fn=stored):
                pass
        assert created == []
    assert not redis_client.exists(name)


def test_async_a_user_allowed_the_prefix_works_and_one_refused_is_told(
    redis_url, redis_client, prefix
):
    prefix, users = prefix
    name = prefix + "lock"
    allowed = make_user(redis_client, f"~{prefix}*")
    refused = make_user(redis_client, f"~{name}")
    users += [allowed, refused]

    import redis.asyncio

    clients = []

    def as_async_user(user):
        client = redis.asyncio.Redis.from_url(redis_url, username=user, password=PASSWORD)
        clients.append(client)
        return client

    async def main():
        try:
            await asyncio.wait_for(body(), DEADLINE)
        finally:
            for client in clients:
                await aclose(client)

    async def body():
        holder = AsyncRedisMutex(as_async_user(allowed), name, lease=10)
        waiter = AsyncRedisMutex(as_async_user(allowed), name, lease=10)
        assert await holder.acquire(blocking=False)
        wait = asyncio.ensure_future(waiter.acquire_or_wait(DEADLINE))
        deadline = time.monotonic() + DEADLINE
        while not any(
            c.get("user") == allowed and "b" in c.get("flags", "")
            for c in redis_client.client_list()
        ):
            assert time.monotonic() < deadline, "the waiter never blocked"
            await asyncio.sleep(0.005)
        await holder.release()
        assert await asyncio.wait_for(wait, DEADLINE) is False
        assert await waiter.acquire(timeout=DEADLINE)
        await waiter.release()
        other = AsyncRedisMutex(as_async_user(refused), name, lease=10)
        for call in (other.acquire, other.acquire_or_wait):
            with pytest.raises(redis.exceptions.ResponseError, match=f"'~{name}\\*'"):
                await call()
            assert not await holder.locked()

    asyncio.run(main())


def test_on_a_cluster_a_hash_tagged_name_keeps_the_prefix_and_a_plain_one_is_explained(
    cluster_nodes,
):
    """On a cluster the mutex's keys of a name without a hash tag start
    with "{name}": the refusal says to add a hash tag; with one
    ("app:{lock}") the prefix covers every key."""
    from redis.cluster import RedisCluster

    prefix = unique_key("acl-cluster") + ":"
    user = f"dogpile-test-{uuid.uuid4().hex}"
    admins = [redis.Redis(port=port) for port in cluster_nodes]
    for admin in admins:  # ACL users are per node
        set_user(admin, user, f"~{prefix}*")
    client = RedisCluster(
        host="127.0.0.1", port=cluster_nodes[0], username=user, password=PASSWORD
    )
    try:
        tagged = RedisMutex(client, prefix + "{lock}", lease=10)
        assert tagged.acquire(timeout=DEADLINE)
        assert tagged.acquire_or_wait(0.05) is False
        tagged.release()
        plain = RedisMutex(client, prefix + "lock", lease=10)
        with pytest.raises(redis.exceptions.ResponseError, match="hash tag") as caught:
            plain.acquire(timeout=DEADLINE)
        assert f"'{{{prefix}lock}}:dogpile-wake'" in str(caught.value)
        assert not plain.locked()
    finally:
        client.close()
        for admin in admins:
            admin.acl_deluser(user)
            admin.close()
