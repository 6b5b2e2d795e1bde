"""gevent / eventlet: N greenlets of one monkey-patched process wait in
acquire_or_wait() on one RedisMutex (made before or after the patching)
while another process holds the key; the holder releases; every greenlet
must return False within a few ms of the release, and a ticker greenlet
must keep running meanwhile.

usage: python repro/green_shared_wait.py URL {gevent,eventlet} {before,after}
"""

import subprocess
import sys
import time

URL, LIB, WHEN = sys.argv[1:4]
name = f"review:green:{time.time_ns()}"
HOLDER = r"""
import sys, time, redis
from dogpile.mutexes import RedisMutex
m = RedisMutex(redis.Redis.from_url(sys.argv[1]), sys.argv[2], lease=30)
assert m.acquire()
print("held", flush=True)
sys.stdin.readline()
m.release()
print(time.time(), flush=True)
"""
h = subprocess.Popen(
    [sys.executable, "-c", HOLDER, URL, name],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
)
assert h.stdout.readline().strip() == "held"

if WHEN == "before":
    import redis

    from dogpile.mutexes import RedisMutex

    mutex = RedisMutex(redis.Redis.from_url(URL), name, lease=30)
if LIB == "gevent":
    from gevent import monkey

    monkey.patch_all()
    import gevent

    spawn, sleep, joinall = gevent.spawn, gevent.sleep, lambda gs: gevent.joinall(gs, timeout=10)
else:
    import eventlet

    eventlet.monkey_patch()
    spawn, sleep = eventlet.spawn, eventlet.sleep

    def joinall(gs):
        with eventlet.Timeout(10):
            for g in gs:
                g.wait()


import redis  # noqa: E402

from dogpile.mutexes import RedisMutex  # noqa: E402

if WHEN == "after":
    mutex = RedisMutex(redis.Redis.from_url(URL), name, lease=30)

out, ticks = [], [0]


def waiter():
    r = mutex.acquire_or_wait(timeout=5)
    out.append((r, time.time()))


def ticker():
    while len(out) < 20:
        ticks[0] += 1
        sleep(0.01)


gs = [spawn(waiter) for _ in range(20)] + [spawn(ticker)]
sleep(0.3)
t0 = ticks[0]
h.stdin.write("\n")
h.stdin.flush()
released = float(h.stdout.readline())
joinall(gs)
late = sorted(t - released for r, t in out)
print(
    f"{LIB} mutex {WHEN} patching: {len(out)}/20 returned {set(r for r, _ in out)}, "
    f"max {late[-1] * 1000:.1f} ms after the release; ticks while waiting {t0}; "
    f"xreads {sum(1 for c in redis.Redis.from_url(URL).client_list() if c.get('cmd') == 'xread')}"
)
