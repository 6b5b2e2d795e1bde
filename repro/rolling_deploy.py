"""Rolling deploy between be9bd33 (sibling keys "{name}:..." on one server)
and today's ("name:..."): a holder of one version releases while a waiter
of the other waits, in acquire_or_wait() and in acquire().  Prints how long
after the release each waiter returned, and whether anything is left held.

usage: python repro/rolling_deploy.py REDIS_URL OLD_PYTHONPATH
  (OLD_PYTHONPATH: a copy of the installed package with be9bd33's mutexes)
"""

import os
import subprocess
import sys
import time

import redis

URL, OLD = sys.argv[1], sys.argv[2]
WAITER = r"""
import sys, time, redis
from dogpile.mutexes import RedisMutex
m = RedisMutex(redis.Redis.from_url(sys.argv[1]), sys.argv[2], lease=30)
how = sys.argv[3]
print("ready", flush=True)
if how == "wait":
    r = m.acquire_or_wait(timeout=5)
else:
    r = m.acquire(timeout=5)
    if r:
        m.release()
print(repr(r), time.time(), flush=True)
"""
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


def env(version):
    e = dict(os.environ)
    e.pop("PYTHONPATH", None)
    if version == "old":
        e["PYTHONPATH"] = OLD
    return e


def run(holder_v, waiter_v, how):
    name = f"app:rolling:{time.time_ns()}"
    c = redis.Redis.from_url(URL)
    h = subprocess.Popen(
        [sys.executable, "-c", HOLDER, URL, name],
        env=env(holder_v),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert h.stdout.readline().strip() == "held"
    w = subprocess.Popen(
        [sys.executable, "-c", WAITER, URL, name, how],
        env=env(waiter_v),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert w.stdout.readline().strip() == "ready"
    # the waiter blocked on the server (XREAD or BLPOP) before the release
    deadline = time.time() + 10
    while time.time() < deadline:
        if any(x.get("cmd") in ("xread", "blpop") for x in c.client_list()):
            break
        time.sleep(0.01)
    time.sleep(0.05)
    h.stdin.write("\n")
    h.stdin.flush()
    released = float(h.stdout.readline())
    result, at = w.stdout.readline().split()
    w.wait(10)
    h.wait(10)
    left = [k.decode() for k in c.keys(name + "*")] + [
        k.decode() for k in c.keys("{" + name + "}*")
    ]
    held = c.exists(name)
    print(
        f"holder {holder_v:3} waiter {waiter_v:3} {how:8}: returned {result:5} "
        f"{(float(at) - released) * 1000:7.1f} ms after the release; "
        f"lock key left: {held}; keys: {sorted(left)}"
    )


for how in ("wait", "acquire"):
    for hv, wv in (("old", "old"), ("new", "new"), ("old", "new"), ("new", "old")):
        run(hv, wv, how)
