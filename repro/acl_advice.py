"""The NOPERM message's advice, followed literally.

1. A lock name with glob characters ("[", "*", "?"): the suggested ACL
   pattern is the raw name + "*", which Redis reads as a glob, so a user
   set up as advised is still refused.
2. A user refused a command the mutex needs (not a key): the message
   still says to allow the keys.
3. decode_responses=True and a bytes name: the message and a working mutex.

usage: python repro/acl_advice.py REDIS_URL
"""

import re
import sys
import uuid

import redis

from dogpile.mutexes import RedisMutex

URL = sys.argv[1]
admin = redis.Redis.from_url(URL)
PW = "review-pw"


def user(*rules):
    name = f"review-{uuid.uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", name, "on", f">{PW}", *rules)
    return name, redis.Redis.from_url(URL, username=name, password=PW)


def try_acquire(client, name):
    m = RedisMutex(client, name, lease=30)
    try:
        ok = m.acquire(blocking=False)
        if ok:
            m.release()
        return "ok", None
    except Exception as exc:
        return type(exc).__name__, str(exc)


made = []
# 1. glob characters in the name
name = f"app:{uuid.uuid4().hex[:6]}:lock[1]"
u, c = user(f"~{name}", "+@all")
made.append(u)
kind, msg = try_acquire(c, name)
print("1. first try:", kind)
pattern = re.search(r"ACL key pattern '~(\S*)'", msg).group(1)
print("   advised pattern: ~" + pattern)
admin.execute_command("ACL", "SETUSER", u, "resetkeys", "~" + pattern)
kind2, msg2 = try_acquire(c, name)
print("   after following the advice:", kind2, "(key left held:", admin.exists(name), ")")

# 2. a command refused, the keys allowed
name = f"app:{uuid.uuid4().hex[:6]}:lock"
u, c = user("~app:*", "+@all", "-evalsha", "-eval")
made.append(u)
kind, msg = try_acquire(c, name)
print("2.", kind, ":", msg[:400])

# 3. decode_responses=True, bytes name
u, c = user("~app:*", "+@all")
made.append(u)
c = redis.Redis.from_url(URL, username=u, password=PW, decode_responses=True)
name = f"app:{uuid.uuid4().hex[:6]}:lock".encode()
m = RedisMutex(c, name, lease=30)
assert m.acquire(blocking=False)
other = RedisMutex(c, name, lease=30)
print("3. acquire_or_wait held ->", other.acquire_or_wait(timeout=0.2))
m.release()
print("   acquire_or_wait free ->", other.acquire_or_wait(timeout=0.2))
other.release()
c2 = redis.Redis.from_url(URL, username=u, password=PW, decode_responses=True)
bad = RedisMutex(c2, b"other:" + name, lease=30)
try:
    bad.acquire(blocking=False)
except Exception as exc:
    print("   refused:", type(exc).__name__, str(exc)[:300])
for u in made:
    admin.acl_deluser(u)
