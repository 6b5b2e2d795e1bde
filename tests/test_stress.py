"""Stress: a seeded random schedule drives many threads over a few
Dogpiles (and a dogpile.core ``Lock``) and checks the dogpile invariants,
against both implementations.

Each schedule (one seed) sets up four "slots", one per acquire mode (plain
``creator``, ``value_fn`` over a store, ``value_and_created_fn`` over a
shared store, and the ``Lock`` API over that kind of store), each with a
random expiry (a few ms to tens of ms, or None), random creator work (a
sleep of a few ms: that is workload, not synchronization), a random share
of creators that raise, for the store modes a random rate of evictions
(the store is emptied, so ``value_fn`` / ``value_and_created_fn`` raise
NeedRegenerationException), and either the default lock or an
instrumented ``threading.Lock``.  Sixteen threads start together on a
barrier and run random operations on random slots, each op choosing at
random between the slot's one creator object and a fresh closure.

The invariants, checked on every operation or at the end:

(a) at most one creator runs at a time per slot;
(b) a caller that had a value when it called (a mode without evictions)
    never made a blocking acquire on the lock;
(c) no value served is older than its expiry plus the creation(s) under
    way plus a scheduling allowance, and it is always a value this slot
    created (never None or an internal sentinel);
(d) no lock is left held: instrumented locks are unlocked, acquired and
    released equally often, always released by their holder, and every
    slot, once its value is made stale, lets the next caller create;
(e) every thread finishes within the deadline;
(f) no creator starts while the stored value is still fresh (that would be
    the dogpile itself).

A mode's value and its age live in one place per slot, so modes are not
mixed on one Dogpile: mixing them (say plain and value_fn) has no defined
staleness, since each keeps its own value beside one shared createdtime.

Default run: three fixed seeds, half a second each, per implementation.
Long run: ``DOGPILE_STRESS_SECONDS`` sets the time per implementation,
spent on consecutive seeds from a random one, five seconds each::

    DOGPILE_STRESS_SECONDS=60 PYTHONPATH=src \\
        python -m pytest tests/test_stress.py -p no:cacheprovider -q

A failure prints its seed and the variables that rerun it, e.g.
``DOGPILE_STRESS_SEED=1234`` (with ``DOGPILE_STRESS_SECONDS=5`` for a seed
from a long run: the seed fixes every thread's schedule, but the
interleaving is up to the OS, so a rare race may need a few reruns).
"""

import os
import random
import threading
import time

from conftest import DEADLINE

from dogpile import NeedRegenerationException

THREADS = 16
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_SEED_SECONDS = 0.5  # each seed's run in the default run
LONG_SEED_SECONDS = 5.0  # each seed's share of a long run
LONG_AGO = 7200.0  # seconds; far past every expiry used here
MAX_ERRORS = 20  # keep the first few violations, not millions

# (c): a stale value may be served only while a creation is under way, so
# its age is at most its expiry plus what Slot.staleness_allowance measures
# (the creation under way, including failed attempts and the time the lock
# holders spend waiting for the GIL), plus the time until the first caller
# after the expiry took the lock (16 threads hammer four slots:
# microseconds) and the noise of the measurements themselves; on an idle
# two-core machine those last two stay under 10 ms.  ALLOWANCE is a full
# second on top, so that a loaded machine (a preempted process, a GC pass)
# never makes this flake, while a lock left held makes the age grow without
# bound (and is caught by (d) as well).
ALLOWANCE = 1.0

MODES = ("plain", "value_fn", "value_and_created_fn", "lock_api")

_tls = threading.local()  # each worker thread's own random.Random


class StressError(Exception):
    """What a failing creator raises."""


class Record:
    """A created value: which slot made it, and when (epoch seconds, the
    clock the expiry check uses)."""

    __slots__ = ("slot", "created")

    def __init__(self, slot, created):
        self.slot = slot
        self.created = created


class InstrumentedLock:
    """A threading.Lock that counts, per thread, the acquires that may
    block, and checks that each release comes from the holder."""

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        # Written only while self._lock is held, so they need no lock of
        # their own.
        self.holder = None
        self.acquired = 0
        self.released = 0
        self.errors = []

    def blocking_acquires(self):
        """How many acquires that may block the calling thread has made."""
        return getattr(self._local, "blocking", 0)

    def acquire(self, blocking=True, timeout=-1):
        if blocking:
            self._local.blocking = self.blocking_acquires() + 1
        got = self._lock.acquire(blocking, timeout)
        if got:
            if self.holder is not None:
                self.errors.append(f"acquired while thread {self.holder} held it")
            self.holder = threading.get_ident()
            self.acquired += 1
        return got

    def release(self):
        me = threading.get_ident()
        if self.holder != me:
            self.errors.append(f"released by thread {me} while held by {self.holder}")
        self.holder = None
        self.released += 1
        self._lock.release()

    def locked(self):
        return self._lock.locked()


class Slot:
    """One Dogpile (or Lock) in one mode, its store, and its creator."""

    def __init__(self, impl, index, mode, rng):
        self.impl = impl
        self.index = index
        self.mode = mode
        self.expiry = None if rng.random() < 0.25 else rng.choice((0.002, 0.005, 0.01, 0.02, 0.04))
        self.max_work = rng.choice((0.0, 0.001, 0.003, 0.008))
        self.fail_rate = rng.choice((0.0, 0.1, 0.3))
        self.evict_rate = 0.0 if mode == "plain" else rng.choice((0.0, 0.02))
        if mode == "lock_api" or rng.random() < 0.6:
            self.lock = InstrumentedLock()
        else:
            self.lock = None  # the implementation's own (native) lock
        if mode != "lock_api":
            self.dogpile = impl.Dogpile(self.expiry, lock=self.lock)
        self.stored = None  # the store of the value modes: a Record or None
        self.creator = self._create  # one object, reused by most calls

        self._count_lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        # A creation "round" runs from the start of the operation whose
        # creator makes the first attempt after a value expired (or
        # vanished) to the end of the operation whose creator succeeds:
        # failed attempts in between extend it, and so does any time the
        # lock holder spends waiting for the GIL before it calls the creator
        # or after, before it releases the lock.
        self.current_round = None  # token of the round whose creator has not yet succeeded
        self.open_rounds = {}  # token -> start, for rounds whose operation has not ended
        self.longest_round = 0.0
        self.in_flight = {}  # token -> start of each operation under way
        self.creations = 0
        self.failures = 0

    def describe(self):
        lock = "instrumented" if self.lock is not None else "default"
        return (
            f"slot {self.index}: mode={self.mode} expiry={self.expiry} "
            f"max_work={self.max_work} fail_rate={self.fail_rate} "
            f"evict_rate={self.evict_rate} lock={lock}"
        )

    # -- the store ---------------------------------------------------------

    def value_fn(self):
        rec = self.stored
        if rec is None:
            raise NeedRegenerationException()
        return rec

    def value_and_created_fn(self):
        rec = self.stored
        # What this caller's Lock last read: see _value_is_fresh.
        _tls.lock_read = rec
        if rec is None:
            raise NeedRegenerationException()
        return rec, rec.created

    def _fresh(self, created, now):
        return created > 0 and (self.expiry is None or now - created <= self.expiry)

    def _value_is_fresh(self):
        """Would the library have served the current value without
        creating?  Creators are the only writers of the store and of a
        Dogpile's createdtime, so with (a) holding, what a running creator
        sees here is what the library saw under the lock (and time only
        moves on, which can turn fresh into stale, never back)."""
        now = time.time()
        if self.mode == "plain":
            return self._fresh(self.dogpile.createdtime, now)
        # dogpile.cache's Lock contract: an expired value whose mutex is
        # taken without waiting is not read again, so a creation that ended
        # between the read and the acquire is not seen and one more runs.
        # The Lock is judged on what it read.
        rec = _tls.lock_read if self.mode == "lock_api" else self.stored
        if rec is None:
            return False
        if self.mode == "value_fn":
            return self._fresh(self.dogpile.createdtime, now)
        return self._fresh(rec.created, now)

    def has_value(self):
        """Did a value exist when the caller came?  Meaningful only without
        evictions, when a value, once there, stays."""
        if self.mode in ("plain", "value_fn"):
            return self.dogpile.has_value
        return self.stored is not None

    # -- the creator -------------------------------------------------------

    def _create(self):
        rng = _tls.rng
        with self._count_lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.creations += 1
            if self.current_round is None:
                self.current_round = object()
                self.open_rounds[self.current_round] = _tls.op_start
        failed = True
        try:
            if self._value_is_fresh():
                _tls.errors.append(
                    f"(f) {self.describe()}: a creator started while the value was fresh"
                )
            if self.max_work:
                time.sleep(rng.uniform(0.0, self.max_work))
            if rng.random() < self.fail_rate:
                raise StressError("creator failed on purpose")
            rec = Record(self.index, time.time())
            if self.mode != "plain":
                self.stored = rec
            failed = False
            return rec if self.mode in ("plain", "value_fn") else (rec, rec.created)
        finally:
            with self._count_lock:
                self.running -= 1
                if failed:
                    self.failures += 1
                else:
                    _tls.closing = self.current_round
                    self.current_round = None

    def staleness_allowance(self, now, op_start):
        """How stale a value served at ``now`` by an operation that started
        at ``op_start`` may legitimately be: the longest creation round so
        far or one still open, plus how long the oldest operation still in
        flight (this one included) has been going.

        While a value is stale, the lock is held by a chain of holders: the
        operation that created it (until it returns), then the one that
        took the lock to replace it (from before it took it, while it waits
        for the GIL, runs failing creators...).  Each link is an operation
        that is either still in flight or has closed a round, so the two
        terms bound the chain.  They are measured, not derived from
        max_work: a creator waking from its sleep, or a lock holder between
        two bytecodes, waits for the GIL behind 15 busy threads, which can
        take a hundred times longer than the sleep."""
        with self._count_lock:
            rounds = self.longest_round
            if self.open_rounds:
                rounds = max(rounds, now - min(self.open_rounds.values()))
            first = min(self.in_flight.values(), default=op_start)
        return rounds + now - min(first, op_start)

    def _close_round(self, token):
        end = time.time()
        with self._count_lock:
            start = self.open_rounds.pop(token)
            self.longest_round = max(self.longest_round, end - start)

    # -- one operation -----------------------------------------------------

    def acquire(self, creator):
        """Enter and leave the slot's lock once; return the value served."""
        if self.mode == "plain":
            with self.dogpile.acquire(creator) as value:
                return value
        if self.mode == "value_fn":
            with self.dogpile.acquire(creator, value_fn=self.value_fn) as value:
                return value
        if self.mode == "value_and_created_fn":
            with self.dogpile.acquire(
                creator, value_and_created_fn=self.value_and_created_fn
            ) as value:
                return value
        with self.impl.Lock(self.lock, creator, self.value_and_created_fn, self.expiry) as value:
            return value

    def op(self, rng, stats):
        if self.evict_rate and rng.random() < self.evict_rate:
            self.stored = None
            stats["evictions"] += 1
            return
        creator = self.creator if rng.random() < 0.7 else (lambda: self._create())
        check_wait = self.lock is not None and not self.evict_rate and self.has_value()
        before = self.lock.blocking_acquires() if check_wait else 0
        _tls.closing = None
        token = object()
        with self._count_lock:
            _tls.op_start = op_start = self.in_flight[token] = time.time()
        try:
            value = self.acquire(creator)
            now = time.time()
            allowance = self.staleness_allowance(now, op_start)
        except StressError:
            stats["failed_ops"] += 1
            return
        finally:
            with self._count_lock:
                del self.in_flight[token]
            if _tls.closing is not None:
                self._close_round(_tls.closing)
            if check_wait and self.lock.blocking_acquires() != before:
                _tls.errors.append(
                    f"(b) {self.describe()}: a caller that had a value blocked on the lock"
                )
        stats["ops"] += 1
        if type(value) is not Record or value.slot != self.index:
            _tls.errors.append(f"(c) {self.describe()}: served {value!r}, not a value it created")
            return
        if self.expiry is None:
            return
        age = now - value.created
        if age > self.expiry:
            stats["stale_served"] += 1
        bound = self.expiry + allowance + ALLOWANCE
        if age > bound:
            _tls.errors.append(
                f"(c) {self.describe()}: served a value {age:.3f}s old (bound {bound:.3f}s)"
            )

    # -- the end -----------------------------------------------------------

    def check_lock_free(self):
        """(d): every lock is free.  Make the value stale (a stale value
        means a non-blocking acquire, so a held lock shows as "the creator
        did not run" instead of a hang) and check the next caller creates."""
        problems = []
        lock = self.lock
        if lock is not None:
            if lock.errors:
                problems.append(f"lock misuse: {lock.errors[:3]}")
            if lock.locked() or lock.holder is not None:
                problems.append(f"lock left held by thread {lock.holder}")
            if lock.acquired != lock.released:
                problems.append(f"lock acquired {lock.acquired} times, released {lock.released}")

        old = time.time() - LONG_AGO
        ran = []

        def final_creator():
            ran.append(True)
            rec = Record(self.index, time.time())
            return rec if self.mode in ("plain", "value_fn") else (rec, rec.created)

        expiry = 1.0 if self.expiry is None else self.expiry
        if self.mode == "lock_api":
            self.stored = Record(self.index, old)
            with self.impl.Lock(lock, final_creator, self.value_and_created_fn, expiry):
                pass
        else:
            self.dogpile.expiretime = expiry
            if self.mode != "plain":
                self.stored = Record(self.index, old)
            self.dogpile.createdtime = old
            self.acquire(final_creator)
        if not ran:
            problems.append("a caller of the stale value did not get to create: lock still held")
        if lock is not None and (lock.locked() or lock.acquired != lock.released):
            problems.append("lock not released after the final creation")
        return problems


def run_schedule(impl, seed, seconds):
    """Run one seeded schedule for ``seconds``; return (errors, stats,
    slot descriptions)."""
    rng = random.Random(seed)
    modes = list(MODES)
    rng.shuffle(modes)
    slots = [Slot(impl, i, mode, rng) for i, mode in enumerate(modes)]
    thread_seeds = [rng.getrandbits(64) for _ in range(THREADS)]
    errors = []
    all_stats = []
    stop_at = [0.0]

    def start_clock():
        stop_at[0] = time.monotonic() + seconds

    barrier = threading.Barrier(THREADS, action=start_clock)

    def worker(i):
        trng = random.Random(thread_seeds[i])
        _tls.rng = trng
        _tls.errors = errors
        stats = {"ops": 0, "failed_ops": 0, "stale_served": 0, "evictions": 0}
        all_stats.append(stats)
        try:
            barrier.wait(DEADLINE)
            n = 0
            while n % 16 or time.monotonic() < stop_at[0]:
                trng.choice(slots).op(trng, stats)
                n += 1
                if len(errors) >= MAX_ERRORS:
                    break
        except BaseException as exc:  # reported by the test
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    end = time.monotonic() + seconds + DEADLINE
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    if alive:
        errors.append(f"(e) {alive} of {THREADS} threads still running after the deadline")
        for s in slots:
            if s.lock is not None and s.lock.locked():
                errors.append(f"(e) {s.describe()}: its lock is held by thread {s.lock.holder}")
        # Do not touch the slots while threads may still be in them.
        return errors, {}, [s.describe() for s in slots]

    for s in slots:
        if s.max_running > 1:
            errors.append(f"(a) {s.describe()}: {s.max_running} creators ran at once")
        # In a thread of its own, so that a library that blocks where it
        # should not fails the test instead of hanging it.
        checker = threading.Thread(target=_final_check, args=(s, errors), daemon=True)
        checker.start()
        checker.join(DEADLINE)
        if checker.is_alive():
            errors.append(f"(d) {s.describe()}: the final acquire of a stale value hung")

    totals = {k: sum(st[k] for st in all_stats) for k in all_stats[0]} if all_stats else {}
    totals["creations"] = sum(s.creations for s in slots)
    totals["creator_failures"] = sum(s.failures for s in slots)
    return errors, totals, [s.describe() for s in slots]


def _final_check(slot, errors):
    try:
        errors.extend(f"(d) {slot.describe()}: {p}" for p in slot.check_lock_free())
    except BaseException as exc:  # reported by the test
        errors.append(f"(d) {slot.describe()}: final acquire raised {type(exc).__name__}: {exc}")


def _seeds_and_budget():
    seconds = float(os.environ.get("DOGPILE_STRESS_SECONDS") or 0)
    fixed = os.environ.get("DOGPILE_STRESS_SEED")
    if fixed:
        first = [int(fixed)]
    elif seconds:
        first = [random.SystemRandom().getrandbits(32)]
    else:
        first = list(DEFAULT_SEEDS)
    return first, seconds


def test_stress_random_schedules(impl):
    """Guards against the races a dogpile lock exists to prevent or could
    introduce: two creators at once, a caller with a value blocking, a
    stale value served long past its regeneration (or the sentinel served
    as a value), a creator started while the value was fresh, a lock left
    held after a creator raised or a value was evicted, and a deadlock."""
    seeds, seconds = _seeds_and_budget()
    totals = {}
    if seconds:
        deadline = time.monotonic() + seconds
        seed = seeds[0]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            run_for = min(LONG_SEED_SECONDS, left)
            rerun = f"DOGPILE_STRESS_SEED={seed} DOGPILE_STRESS_SECONDS={run_for:g}"
            _check_run(impl, seed, run_for, totals, rerun)
            seed += 1
    else:
        for seed in seeds:
            _check_run(impl, seed, DEFAULT_SEED_SECONDS, totals, f"DOGPILE_STRESS_SEED={seed}")

    if seeds == list(DEFAULT_SEEDS) and not seconds:
        # The default seeds are chosen to exercise every kind of event; a
        # change that stops them doing so would leave the checks idle.
        for key in ("ops", "creations", "creator_failures", "failed_ops", "stale_served"):
            assert totals.get(key, 0) > 0, f"the schedules never produced any {key}: {totals}"
        assert totals.get("evictions", 0) > 0, f"the schedules never evicted: {totals}"


def _check_run(impl, seed, seconds, totals, rerun):
    errors, stats, slots = run_schedule(impl, seed, seconds)
    for k, v in stats.items():
        totals[k] = totals.get(k, 0) + v
    assert not errors, (
        f"{impl.__name__}, seed {seed} (rerun with {rerun}):\n  "
        + "\n  ".join(slots)
        + "\nviolations:\n  "
        + "\n  ".join(errors[:MAX_ERRORS])
    )
