"""The shared XREAD is per mutex: K keys with one waiter each still hold K
connections.  A BlockingConnectionPool of 3, waiters on 4 different keys
(4 RedisMutex objects, one client), the holder of key 0 releasing through
the same client: how long does its release take, and when is the waiter
of key 0 woken?

usage: python repro/pool_many_keys.py URL [keys]
"""

import sys
import threading
import time

import redis

from dogpile.mutexes import RedisMutex

URL = sys.argv[1]
K = int(sys.argv[2]) if len(sys.argv) > 2 else 4
pool = redis.BlockingConnectionPool.from_url(URL, max_connections=3, timeout=10)
client = redis.Redis(connection_pool=pool)
admin = redis.Redis.from_url(URL)
base = f"review:keys:{time.time_ns()}"
holders = [RedisMutex(admin, f"{base}:{i}", lease=30) for i in range(K)]
for h in holders:
    assert h.acquire(blocking=False)
mine = RedisMutex(client, f"{base}:0", lease=30)
# the holder of key 0 uses the pool too: take key 0 over with the pooled mutex
holders[0].release()
assert mine.acquire(blocking=False)
woken = {}


def wait(i):
    m = RedisMutex(client, f"{base}:{i}", lease=30)
    m.acquire_or_wait(timeout=5)
    woken[i] = time.monotonic()


ts = [threading.Thread(target=wait, args=(i,)) for i in range(K)]
for t in ts:
    t.start()
time.sleep(0.3)
print(
    "blocked xreads:",
    sum(1 for c in admin.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", "")),
)
t0 = time.monotonic()
client.set(base + ":value", "made")
mine.release()
t1 = time.monotonic()
for t in ts:
    t.join(10)
print(
    f"K={K}: the holder's SET+release took {(t1 - t0) * 1000:.0f} ms; "
    f"key 0's waiter woken {(woken[0] - t0) * 1000:.0f} ms after"
)
for h in holders[1:]:
    h.release()
