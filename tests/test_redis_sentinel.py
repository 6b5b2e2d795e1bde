"""RedisMutex and AsyncRedisMutex over a client from a real Redis
Sentinel's ``master_for()``: the mutex works through it (acquire,
acquire_or_wait woken by the release, the shared XREAD), and its repr and
errors name the Sentinel service, whose address moves with failovers.
The sentinel is ``redis-server --sentinel`` on a free port, monitoring the
session's server (tests/redis_server.py), started for this module."""

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from urllib.parse import urlparse

import pytest
import redis_server
from conftest import DEADLINE
from redis_server import aclose, free_port, log_tail, stopper, unique_key

from dogpile.mutexes import AsyncRedisMutex, RedisMutex

redis_url = redis_server.redis_url
redis_client = redis_server.redis_client

redis = pytest.importorskip("redis", reason='needs the redis client (pip install ".[test]")')

SERVICE = "dogpile-test-master"


@pytest.fixture(scope="module")
def sentinel(redis_url):
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("no redis-server on the PATH, though a Redis server is given")
    server = urlparse(redis_url)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="dogpile-sentinel-")
    config = os.path.join(workdir, "sentinel.conf")
    with open(config, "w") as f:
        f.write(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"logfile {os.path.join(workdir, f'{port}.log')}\n"
            f"sentinel monitor {SERVICE} {server.hostname} {server.port or 6379} 1\n"
        )
    proc = subprocess.Popen(
        [executable, config, "--sentinel"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stop = stopper([proc], workdir)
    try:
        from redis.sentinel import Sentinel

        deadline = time.monotonic() + DEADLINE
        while True:
            assert proc.poll() is None, f"sentinel exited: {log_tail(workdir, port, 500)}"
            probe = Sentinel([("127.0.0.1", port)], socket_timeout=1)
            try:
                if probe.discover_master(SERVICE):
                    break
            except redis.RedisError:
                pass
            finally:
                for s in probe.sentinels:
                    s.close()
            assert time.monotonic() < deadline, "the sentinel never knew its master"
            time.sleep(0.02)  # polling for the sentinel to come up, with a deadline
        yield port
    finally:
        stop()


def blocked_in_xread(admin, key):
    """A connection named after ``key``'s unique part is blocked in XREAD."""
    name = key.rsplit(":", 1)[-1]
    return any(c.get("name") == name and c.get("cmd") == "xread" for c in admin.client_list())


def test_a_mutex_over_a_sentinels_master(sentinel, redis_client):
    from redis.sentinel import Sentinel

    key = unique_key("sentinel")
    sentinels = Sentinel([("127.0.0.1", sentinel)], socket_timeout=DEADLINE)
    holder_client = sentinels.master_for(SERVICE, socket_timeout=DEADLINE)
    waiter_client = sentinels.master_for(
        SERVICE, socket_timeout=DEADLINE, client_name=key.rsplit(":", 1)[-1]
    )
    try:
        holder = RedisMutex(holder_client, key, lease=30)
        waiter = RedisMutex(waiter_client, key, lease=30)
        assert f"Sentinel service '{SERVICE}'" in repr(holder)
        assert holder.acquire(blocking=False)
        assert redis_client.exists(key)  # on the session's server, the master
        got = []
        thread = threading.Thread(target=lambda: got.append(waiter.acquire_or_wait(DEADLINE)))
        thread.start()
        deadline = time.monotonic() + DEADLINE
        while not blocked_in_xread(redis_client, key):
            assert time.monotonic() < deadline, "the waiter never blocked in XREAD"
            time.sleep(0.005)
        holder.release()
        thread.join(DEADLINE)
        assert got == [False]
        assert not redis_client.exists(key)
    finally:
        holder_client.close()
        waiter_client.close()
        for s in sentinels.sentinels:
            s.close()


def test_an_unknown_service_is_named_in_the_error(sentinel):
    from redis.sentinel import Sentinel

    sentinels = Sentinel([("127.0.0.1", sentinel)], socket_timeout=DEADLINE)
    client = sentinels.master_for("no-such-service", socket_timeout=DEADLINE)
    try:
        mutex = RedisMutex(client, unique_key("sentinel"))
        with pytest.raises(redis.ConnectionError, match="Sentinel service 'no-such-service'"):
            mutex.acquire(blocking=False)
    finally:
        client.close()
        for s in sentinels.sentinels:
            s.close()


def test_async_a_mutex_over_a_sentinels_master(sentinel, redis_client):
    from redis.asyncio.sentinel import Sentinel

    key = unique_key("sentinel-async")

    async def main():
        sentinels = Sentinel([("127.0.0.1", sentinel)], socket_timeout=DEADLINE)
        clients = [
            sentinels.master_for(SERVICE, client_name=key.rsplit(":", 1)[-1]) for _ in range(2)
        ]
        try:
            holder = AsyncRedisMutex(clients[0], key, lease=30)
            waiter = AsyncRedisMutex(clients[1], key, lease=30)
            assert f"Sentinel service '{SERVICE}'" in repr(waiter)
            assert await holder.acquire(blocking=False)
            wait = asyncio.ensure_future(waiter.acquire_or_wait(DEADLINE))
            deadline = time.monotonic() + DEADLINE
            while not blocked_in_xread(redis_client, key):
                assert time.monotonic() < deadline, "the waiter never blocked in XREAD"
                await asyncio.sleep(0.005)
            await holder.release()
            assert await asyncio.wait_for(wait, DEADLINE) is False
        finally:
            for client in [*clients, *sentinels.sentinels]:
                await aclose(client)

    asyncio.run(main())
