"""Natural interleavings (no hook): N threads of one process wait in
acquire_or_wait() on one RedisMutex while another process holds the key in
back-to-back rounds (hold HOLD s, release, take again at once).  For each
wait that did not take the key, lateness = its return - the first release
after its own script replied.  With one XREAD each, no wait is late by more
than a few ms; a late one waited for the NEXT round or the 1 s safety net.

usage: python repro/stale_leader_stats.py REDIS_URL [threads] [seconds] [hold]
"""

import multiprocessing as mp
import sys
import threading
import time

import redis

from dogpile.mutexes import RedisMutex

URL = sys.argv[1]
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 10
HOLD = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
NAME = f"review:stale:{time.time_ns()}"


def cycler(stop_at, q):
    m = RedisMutex(redis.Redis.from_url(URL), NAME, lease=30)
    releases = []
    while time.time() < stop_at:
        if m.acquire(timeout=5):
            time.sleep(HOLD)
            m.release()
            releases.append(time.time())
    q.put(releases)


def main():
    q = mp.Queue()
    stop_at = time.time() + SECONDS
    p = mp.Process(target=cycler, args=(stop_at, q))
    p.start()
    time.sleep(0.2)
    client = redis.Redis.from_url(URL)
    orig = client.execute_command
    local = threading.local()

    def execute_command(*args, **kw):
        r = orig(*args, **kw)
        if str(args[0]).upper() == "EVAL":
            local.script_at = time.time()
        return r

    client.execute_command = execute_command
    m = RedisMutex(client, NAME, lease=30)
    waits = []
    lock = threading.Lock()

    def waiter():
        while time.time() < stop_at - 0.3:
            r = m.acquire_or_wait(timeout=5)
            t = time.time()
            if r:
                m.release()
                continue
            with lock:
                waits.append((local.script_at, t))
            time.sleep(0.001)

    ts = [threading.Thread(target=waiter) for _ in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(SECONDS + 10)
    releases = q.get(timeout=30)
    p.join(10)
    import bisect

    late = []
    for s, r in waits:
        i = bisect.bisect_right(releases, s)
        if i < len(releases) and releases[i] <= r:
            late.append(r - releases[i])
    late.sort()
    n = len(late)
    over = [x for x in late if x > 0.1 * HOLD + 0.02]
    print(f"waits={len(waits)} woken-by-a-release={n} releases={len(releases)}")
    if n:
        print(
            f"lateness p50={late[n // 2] * 1000:.1f}ms "
            f"p99={late[int(n * 0.99)] * 1000:.1f}ms max={late[-1] * 1000:.1f}ms"
        )
    print(
        f"late by more than {(0.1 * HOLD + 0.02) * 1000:.0f} ms: {len(over)}; "
        f"worst: {[round(x, 3) for x in over[-5:]]}"
    )


if __name__ == "__main__":
    main()
