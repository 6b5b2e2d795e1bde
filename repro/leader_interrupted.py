"""The shared XREAD's leader interrupted: (sync) Ctrl-C in the main thread
while it leads, (asyncio) the leading task cancelled.  The followers must
neither hang nor miss the release that follows: each loops as a caller
does (acquire_or_wait until the key is released), and we measure how long
after the release they return, and the commands they sent.

usage: python repro/leader_interrupted.py URL
"""

import asyncio
import os
import signal
import sys
import threading
import time

import redis

from dogpile.mutexes import AsyncRedisMutex, RedisMutex

URL = sys.argv[1]
admin = redis.Redis.from_url(URL)


def xreading(n):
    deadline = time.monotonic() + 5
    while (
        sum(1 for c in admin.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", ""))
        < n
    ):
        assert time.monotonic() < deadline
        time.sleep(0.005)


def sync_case():
    name = f"review:int:{time.time_ns()}"
    holder = RedisMutex(admin, name, lease=30)
    assert holder.acquire()
    m = RedisMutex(redis.Redis.from_url(URL), name, lease=30)
    released = [None]
    returns = []

    def follower():
        while True:
            m.acquire_or_wait(timeout=5)
            if released[0] is not None:
                returns.append(time.time() - released[0])
                return

    def interrupt_then_release():
        xreading(1)
        time.sleep(0.1)  # the followers joined the main thread's XREAD
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        released[0] = time.time()
        holder.release()

    try:
        m.acquire_or_wait(timeout=5)  # the main thread leads first
    except KeyboardInterrupt:
        pass
    ts = [threading.Thread(target=follower) for _ in range(5)]
    # (the followers are started before the main thread's wait in a real
    # program; here: restart with the main thread leading)
    holder.release()
    assert holder.acquire()
    for t in ts:
        t.start()
    time.sleep(0.05)
    killer = threading.Thread(target=interrupt_then_release)
    killer.start()
    try:
        m.acquire_or_wait(timeout=5)
        print("sync: main thread was not the leader this run (its wait ended)")
    except KeyboardInterrupt:
        pass
    killer.join(10)
    for t in ts:
        t.join(10)
    print(
        f"sync, Ctrl-C in the leader: followers returned "
        f"{sorted(round(x * 1000, 1) for x in returns)} ms "
        f"after the release; key left {admin.exists(name)}; held by m: {m._token is not None}"
    )


async def async_case():
    import redis.asyncio as ra

    name = f"review:int:{time.time_ns()}"
    holder = AsyncRedisMutex(ra.Redis.from_url(URL), name, lease=30)
    assert await holder.acquire()
    m = AsyncRedisMutex(ra.Redis.from_url(URL), name, lease=30)
    leader = asyncio.ensure_future(m.acquire_or_wait(timeout=5))
    await asyncio.get_running_loop().run_in_executor(None, xreading, 1)
    released = [None]
    returns = []

    async def follower():
        while True:
            await m.acquire_or_wait(timeout=5)
            if released[0] is not None:
                returns.append(time.time() - released[0])
                return

    fs = [asyncio.ensure_future(follower()) for _ in range(5)]
    await asyncio.sleep(0.1)
    leader.cancel()
    await asyncio.sleep(0.2)
    released[0] = time.time()
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*fs), 10)
    print(
        f"asyncio, leader cancelled: followers returned "
        f"{sorted(round(x * 1000, 1) for x in returns)} ms "
        f"after the release; key left {admin.exists(name)}"
    )


sync_case()
asyncio.run(async_case())
