"""A cold key: P processes x T threads (or T asyncio tasks) each, one
Dogpile (compiled core, twin, or AsyncDogpile) per process over one
RedisMutex / AsyncRedisMutex, value read from Redis via value_and_created_fn.
Reports creations (must be 1 per round), callers without the value, and the
latest caller's delay after the creator stored the value (the release
follows the store at once): > ~100 ms on this 2-core machine hints at a
wake-up missed until the 1 s safety net.

usage: python repro/cold_key_threads.py URL {core,py,aio} [P] [T] [rounds]
"""

import json
import multiprocessing as mp
import sys
import threading
import time
import uuid


def child(url, key, impl, threads, start_at, q):
    import redis

    client = redis.Redis.from_url(url)
    vk, ck, sk = key + ":value", key + ":creations", key + ":stored"

    def creator():
        time.sleep(0.05)
        client.incr(ck)
        now = time.time()
        client.set(vk, json.dumps(["v", now]))
        client.set(sk, repr(now))
        return "v", now

    def vac():
        from dogpile import NeedRegenerationException

        raw = client.get(vk)
        if raw is None:
            raise NeedRegenerationException()
        v, t = json.loads(raw)
        return v, t

    got = []
    if impl == "aio":
        import asyncio

        import redis.asyncio as ra

        from dogpile.aio import AsyncDogpile
        from dogpile.mutexes import AsyncRedisMutex

        async def main():
            ac = ra.Redis.from_url(url)
            d = AsyncDogpile(60, lock=AsyncRedisMutex(ac, key, lease=30))

            async def acreator():
                return creator()

            async def avac():
                return vac()

            async def one():
                while time.time() < start_at:
                    await asyncio.sleep(0.001)
                async with d.acquire(acreator, value_and_created_fn=avac) as v:
                    got.append((v, time.time()))

            await asyncio.wait_for(asyncio.gather(*[one() for _ in range(threads)]), 30)
            await (getattr(ac, "aclose", None) or ac.close)()

        asyncio.run(main())
    else:
        import importlib

        from dogpile.mutexes import RedisMutex

        core = importlib.import_module("dogpile._core" if impl == "core" else "dogpile._core_py")
        d = core.Dogpile(60, lock=RedisMutex(client, key, lease=30))

        def one():
            while time.time() < start_at:
                time.sleep(0.001)
            with d.acquire(creator, value_and_created_fn=vac) as v:
                got.append((v, time.time()))

        ts = [threading.Thread(target=one) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
    q.put(got)


def main():
    url, impl = sys.argv[1], sys.argv[2]
    P = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    T = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    import redis

    c = redis.Redis.from_url(url)
    ctx = mp.get_context("spawn")
    worst = []
    for r in range(rounds):
        key = f"app:cold:{uuid.uuid4().hex[:8]}"
        q = ctx.Queue()
        start_at = time.time() + 1.5
        ps = [ctx.Process(target=child, args=(url, key, impl, T, start_at, q)) for _ in range(P)]
        for p in ps:
            p.start()
        got = [x for _ in ps for x in q.get(timeout=60)]
        for p in ps:
            p.join(10)
        stored = float(c.get(key + ":stored"))
        creations = int(c.get(key + ":creations"))
        delays = sorted(t - stored for v, t in got)
        bad = sum(1 for v, t in got if v != "v")
        worst.append(delays[-1])
        print(
            f"{impl} round {r}: creations={creations} callers={len(got)}/{P * T} wrong={bad} "
            f"after-store p50={delays[len(delays) // 2] * 1000:.1f}ms "
            f"max={delays[-1] * 1000:.1f}ms "
            f"held={c.exists(key)}"
        )
    print(f"{impl}: worst max {max(worst) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
