"""A cold key on many processes at once, through a real Redis server.

N processes start together on one key with no value.  Each has
``Dogpile(60, lock=RedisMutex(client, key))`` and reads the value through
``value_and_created_fn`` from Redis; the creator takes 50 ms and stores the
value there.  One process creates; every other one must get that value.

    python benchmarks/cold_key.py --redis redis://127.0.0.1:6379/0
    python benchmarks/cold_key.py --redis URL --processes 4 16 32 --rounds 5
    python benchmarks/cold_key.py --redis URL --modes read-once
    python benchmarks/cold_key.py --redis URL --exit-at-once

Each row is run in two modes, in the same run so that the machine's load
is the same for both: ``read-once``, the mutex as it is (a waiter for the
first value waits for the creator's release, then reads the value once),
and ``queue``, the same mutex behind a wrapper that hides its
``acquire_or_wait`` (every waiter takes the lock in turn to find the value
there, as 1.0.0a1 did, though woken by the release instead of polling).
A third mode, ``floor`` (``--modes read-once queue floor``), has no
dogpile at all: the first process to ``SET NX`` a key creates, stores the
value and pushes one wake-up per other process onto a list, on which every
other one waits in ``BLPOP`` before it reads the value: the least that any
lock woken by the server can do (a waiter's four commands: the first read,
the ``SET NX``, the ``BLPOP`` and the read of the value, as in
``read-once``), and so the floor that the machine's scheduling sets.

Reported per N (over all processes of all rounds): the median and the
maximum time from the common start to the value, the Redis commands each
process sent (its client's commands: the mutex's, the value reads, the
creator's write; not the benchmark's own start signal and counters, nor
the connection's handshake: each client connects before the start), and
the number of creations per round, which must be 1.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

CREATOR_SECONDS = 0.05
START_DELAY = 0.3  # seconds from "go" to the common start, for every child to be waiting


class Queueing:
    """The mutex without its acquire_or_wait: the ``queue`` mode."""

    def __init__(self, mutex):  # type: ignore[no-untyped-def]
        self.acquire = mutex.acquire
        self.release = mutex.release
        self.locked = mutex.locked


def child(url: str, prefix: str, mode: str, exit_at_once: bool, processes: int) -> None:
    import redis

    import dogpile
    from dogpile.mutexes import RedisMutex

    class CountingRedis(redis.Redis):
        """The real client, counting the commands it sends."""

        sent = 0

        def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
            CountingRedis.sent += 1
            return super().execute_command(*args, **options)

    control = redis.Redis.from_url(url)
    client = CountingRedis.from_url(url)
    value_key = prefix + "value"
    mutex = RedisMutex(client, prefix + "lock")
    d = dogpile.Dogpile(60, lock=mutex if mode == "read-once" else Queueing(mutex))

    def stored():
        raw = client.get(value_key)
        if raw is None:
            raise dogpile.NeedRegenerationException()
        value, created = json.loads(raw)
        return value, created

    def create():
        control.incr(prefix + "creations")
        time.sleep(CREATOR_SECONDS)
        pair = [f"value-{os.getpid()}", time.time()]
        client.set(value_key, json.dumps(pair))
        return tuple(pair)

    def floor():
        # No lock object: a bare SET NX decides the creator, and a list
        # carries the wake-ups; the others read the value once, after it.
        try:
            return stored()[0]
        except dogpile.NeedRegenerationException:
            pass
        if client.set(prefix + "floor-lock", b"1", nx=True, px=60000):
            value, _ = create()
            client.rpush(prefix + "floor-wake", *[b"1"] * (processes - 1))
            return value
        client.blpop([prefix + "floor-wake"], timeout=60)
        return stored()[0]

    # Connected before the start, as a running service's pool is: the
    # figures are the lock's, not a TCP handshake's.
    client.ping()
    CountingRedis.sent = 0
    control.incr(prefix + "ready")
    deadline = time.monotonic() + 60
    while True:
        start = control.get(prefix + "start")
        if start is not None:
            break
        if time.monotonic() > deadline:
            sys.exit("never told to start")
        time.sleep(0.001)
    start_at = float(start)
    time.sleep(max(0.0, start_at - time.time()))
    if mode == "floor":
        value = floor()
        took = time.time() - start_at
    else:
        with d.acquire(create, value_and_created_fn=stored) as value:
            took = time.time() - start_at
    print(json.dumps({"took": took, "commands": CountingRedis.sent, "value": value}), flush=True)
    if not exit_at_once:
        # Stay until every process has its value: an interpreter shutting
        # down costs milliseconds of CPU, which would be taken from the
        # processes still waiting, on a machine with fewer cores than
        # processes.
        control.blpop([prefix + "done"], timeout=60)


def run(url: str, processes: int, mode: str, exit_at_once: bool = False) -> dict:
    import redis

    control = redis.Redis.from_url(url)
    prefix = f"dogpile-bench-cold:{uuid.uuid4().hex}:"
    children = [
        subprocess.Popen(
            [
                sys.executable, __file__, "--child", url, prefix, mode,
                str(int(exit_at_once)), str(processes),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        deadline = time.monotonic() + 60
        while int(control.get(prefix + "ready") or 0) < processes:
            if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                raise RuntimeError("the children did not get ready")
            time.sleep(0.01)
        control.set(prefix + "start", repr(time.time() + START_DELAY))
        lines = [c.stdout.readline() for c in children]  # type: ignore[union-attr]
        control.rpush(prefix + "done", *[b"1"] * processes)
        outputs = [c.communicate(timeout=60) for c in children]
        outputs = [(line + out, err) for line, (out, err) in zip(lines, outputs)]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    for c, (_, err) in zip(children, outputs):
        if c.returncode != 0:
            raise RuntimeError(f"a child failed: {err}")
    results = [json.loads(out) for out, _ in outputs]
    creations = int(control.get(prefix + "creations") or 0)
    keys = list(control.scan_iter(match=prefix + "*"))
    if keys:
        control.delete(*keys)
    control.close()
    values = {r["value"] for r in results}
    return {"results": results, "creations": creations, "values": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", required=True, help="redis://host:port/db of a Redis server")
    parser.add_argument("--processes", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["read-once", "queue", "floor"],
        default=["read-once", "queue"],
    )
    parser.add_argument(
        "--exit-at-once",
        action="store_true",
        help="each process exits as soon as it has its value (by default all stay until the "
        "last has its value, so that exiting ones take no CPU from those still waiting)",
    )
    args = parser.parse_args()
    print(
        f"cold key, {CREATOR_SECONDS * 1000:g} ms creator, {args.rounds} rounds per row "
        "(the modes alternate round by round)"
        f"{'; each process exits at once' if args.exit_at_once else ''}\n"
        f"{'mode':>9}  {'processes':>9}  {'p50 ms':>7}  {'max ms':>7}  {'commands/process':>16}"
        f"  {'max':>4}  {'creations/round':>15}"
    )
    for n in args.processes:
        rows = {mode: ([], [], []) for mode in args.modes}
        for _ in range(args.rounds):
            for mode in args.modes:
                outcome = run(args.redis, n, mode, args.exit_at_once)
                if outcome["values"] != 1:
                    raise RuntimeError(f"{outcome['values']} different values in one round")
                took, commands, creations = rows[mode]
                took += [r["took"] for r in outcome["results"]]
                commands += [r["commands"] for r in outcome["results"]]
                creations.append(outcome["creations"])
        for mode in args.modes:
            took, commands, creations = rows[mode]
            print(
                f"{mode:>9}  {n:>9}  {statistics.median(took) * 1000:>7.0f}"
                f"  {max(took) * 1000:>7.0f}  {statistics.mean(commands):>16.1f}"
                f"  {max(commands):>4}  {'/'.join(map(str, creations)):>15}"
            )


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1", int(sys.argv[6]))
    else:
        main()
