"""One caller polling with a short timeout leads the shared XREAD over and
over; the other threads (long timeouts, asking again after each False, as
the Dogpile cores do) return each time it ends: count their scripts while
the key is held for 2 s, against one XREAD each (be9bd33).

usage: python repro/short_timeout_leader.py URL [short_timeout] [threads]
"""

import sys
import threading
import time

import redis

from dogpile.mutexes import RedisMutex

URL = sys.argv[1]
SHORT = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
N = int(sys.argv[3]) if len(sys.argv) > 3 else 8
name = f"review:short:{time.time_ns()}"
holder = RedisMutex(redis.Redis.from_url(URL), name, lease=30)
assert holder.acquire()
m = RedisMutex(redis.Redis.from_url(URL), name, lease=30)
stop = threading.Event()
calls = {"short": 0, "long": 0}
lock = threading.Lock()


def loop(kind, timeout):
    while not stop.is_set():
        m.acquire_or_wait(timeout=timeout)
        with lock:
            calls[kind] += 1


ts = [threading.Thread(target=loop, args=("long", 5)) for _ in range(N)]
ts.append(threading.Thread(target=loop, args=("short", SHORT)))
for t in ts:
    t.start()
time.sleep(2)
stop.set()
holder.release()
for t in ts:
    t.join(10)
print(
    f"key held 2 s: {N} long-timeout waiters made {calls['long']} calls (scripts); "
    f"the short-timeout ({SHORT}s) caller {calls['short']}"
)
