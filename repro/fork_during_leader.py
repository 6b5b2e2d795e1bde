"""A child forked while a thread of the parent is the shared XREAD's leader
waits in its own XREAD and is woken by the release at once (not by the
parent's Event, which no thread of the child will set).

usage: python repro/fork_during_leader.py REDIS_URL
"""

import os
import sys
import threading
import time

import redis

from dogpile.mutexes import RedisMutex

URL = sys.argv[1]
name = f"review:fork:{time.time_ns()}"
holder = RedisMutex(redis.Redis.from_url(URL), name, lease=30)
assert holder.acquire()
client = redis.Redis.from_url(URL, client_name="forkrev")
m = RedisMutex(client, name, lease=30)
t = threading.Thread(target=m.acquire_or_wait, args=(5,))
t.start()
probe = redis.Redis.from_url(URL)
while not any(c.get("name") == "forkrev" and c.get("cmd") == "xread" for c in probe.client_list()):
    time.sleep(0.005)
assert m._server_wait is not None
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    began = time.monotonic()
    result = m.acquire_or_wait(timeout=3)
    os.write(w, f"{result} {time.time()} {time.monotonic() - began:.3f}".encode())
    os._exit(0)
os.close(w)
time.sleep(0.3)  # the child in its wait
holder.release()
released = time.time()
out = os.read(r, 200).decode().split()
os.waitpid(pid, 0)
t.join(5)
print(
    f"child returned {out[0]} {(float(out[1]) - released) * 1000:.1f} ms after the release "
    f"(its wait {out[2]} s); key left: {probe.exists(name)}"
)
