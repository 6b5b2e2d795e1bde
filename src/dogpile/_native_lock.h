/*
 * The native mutex under dogpile's compiled core.
 *
 * Every Dogpile owns one 64-bit lock word, nothing more.  The OS mutex and
 * condition variable a blocked caller sleeps on live in a small table of
 * "stripes" shared by all lock words (a parking lot, as in WebKit's
 * WTF::ParkingLot or Rust's parking_lot).  Why not a pthread_mutex_t per
 * Dogpile: a mutex plus a condition variable is 88 bytes on glibc, and a
 * NameRegistry can hold a hundred thousand Dogpiles; waiting is rare (only
 * when no value exists yet), so sharing the sleeping machinery costs nothing
 * on the paths that matter.  A plain pthread mutex also may not be released
 * by another thread than its owner, and dogpile.core's async_creator does
 * exactly that.
 *
 * A lock word is 0 or the fork generation of its holder.  It is held only if
 * it equals the current generation, so a fork (which bumps the generation in
 * the child) frees, in the child, every lock that a parent thread held: that
 * thread does not exist there and would never release it.  The check costs
 * one comparison on the acquire paths and nothing on the fresh-hit path,
 * which never touches the lock.
 *
 * Acquire and release are single atomic operations; only a caller that must
 * wait takes its stripe's mutex.  The handshake that keeps a wake-up from
 * being lost: a waiter registers itself in the stripe's waiter count (under
 * the stripe mutex) before it retries the word, and a releaser clears the
 * word before it reads the count, both sequentially consistent.  Either the
 * releaser sees the waiter and broadcasts under the stripe mutex (which the
 * waiter holds until its condition wait releases it atomically), or the
 * waiter's retry sees the cleared word.
 *
 * Only this header knows the platform: POSIX threads, or Windows SRW locks
 * and condition variables.
 */
#ifndef DOGPILE_NATIVE_LOCK_H
#define DOGPILE_NATIVE_LOCK_H

#include <stdint.h>
#include <math.h>

#ifdef _WIN32
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  ifndef _WIN32_WINNT
#    define _WIN32_WINNT 0x0602 /* Windows 8: GetSystemTimePreciseAsFileTime */
#  endif
#  include <windows.h>
#else
#  include <errno.h>
#  include <pthread.h>
#  include <time.h>
#  include <unistd.h>
#endif

typedef uint64_t dp_word;

#define DP_STRIPES 64

typedef struct {
#ifdef _WIN32
    SRWLOCK mutex;
    CONDITION_VARIABLE cond;
#else
    pthread_mutex_t mutex;
    pthread_cond_t cond;
#endif
    /* Changed under mutex, but atomically: a releaser reads it without the
       mutex, and the increment must be ordered before the waiter's retry. */
    volatile long waiters;
} dp_stripe;

static dp_stripe dp_stripes[DP_STRIPES];
static volatile dp_word dp_generation = 1;

/* ---- atomics ---------------------------------------------------------- */

#ifdef _WIN32
static inline dp_word dp_load(volatile dp_word *p) {
    return (dp_word)InterlockedCompareExchange64((volatile LONG64 *)p, 0, 0);
}
static inline int dp_cas(volatile dp_word *p, dp_word expected, dp_word desired) {
    return (dp_word)InterlockedCompareExchange64(
               (volatile LONG64 *)p, (LONG64)desired, (LONG64)expected) == expected;
}
static inline long dp_load_long(volatile long *p) {
    return InterlockedCompareExchange(p, 0, 0);
}
static inline void dp_add_long(volatile long *p, long v) {
    InterlockedExchangeAdd(p, v);
}
#else
static inline dp_word dp_load(volatile dp_word *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline int dp_cas(volatile dp_word *p, dp_word expected, dp_word desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline long dp_load_long(volatile long *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline void dp_add_long(volatile long *p, long v) {
    __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST);
}
#endif

/* ---- clocks ----------------------------------------------------------- */

/* Wall-clock seconds since the epoch, the clock of time.time(): a value's
   creation time may come from another process or host, so only the epoch
   clock can compare them. */
static inline double dp_now(void) {
#ifdef _WIN32
    FILETIME ft;
    ULARGE_INTEGER t;
    GetSystemTimePreciseAsFileTime(&ft);
    t.LowPart = ft.dwLowDateTime;
    t.HighPart = ft.dwHighDateTime;
    /* 100 ns ticks since 1601-01-01 */
    return (double)(t.QuadPart - 116444736000000000ULL) * 1e-7;
#else
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#endif
}

/* Monotonic seconds, for deadlines: a wait must not stretch or end early
   when the wall clock is stepped. */
#ifdef _WIN32
static LARGE_INTEGER dp_qpc_freq; /* set once in dp_clock_init */
#endif

static inline double dp_monotonic(void) {
#ifdef _WIN32
    LARGE_INTEGER c;
    LARGE_INTEGER freq = dp_qpc_freq;
    QueryPerformanceCounter(&c);
    return (double)c.QuadPart / (double)freq.QuadPart;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#endif
}

/* The precise wall clock costs 25 ns on a VM (most of a fresh hit); the
   kernel's coarse clock costs 5 ns but lags the precise one by up to a tick
   or so.  Where a value has more freshness left than that lag could eat,
   the coarse clock settles it; otherwise the precise one does.  So the
   answer is always the precise clock's, provided the lag stays under
   dp_coarse_slack (4 ms ticks here; the slack allows 50 ms beyond two). */
static double dp_coarse_slack = -1; /* < 0: no coarse clock */

static void dp_clock_init(void) {
#if defined(_WIN32)
    QueryPerformanceFrequency(&dp_qpc_freq);
    dp_coarse_slack = 0.05 + 2.0 * 0.0156;
#elif defined(CLOCK_REALTIME_COARSE)
    struct timespec res;
    if (clock_getres(CLOCK_REALTIME_COARSE, &res) == 0 && res.tv_sec == 0)
        dp_coarse_slack = 0.05 + 2.0 * (double)res.tv_nsec * 1e-9;
#endif
}

/* Has a value created at `createdtime` (epoch seconds; <= 0 for none)
   expired after `expiretime` seconds?  A creation time further ahead than
   the expiry time comes from a clock that was stepped back or a host whose
   clock runs ahead: it counts as expired, so one regeneration repairs it
   instead of waiting for the clock to catch up. */
static inline int dp_expired(double createdtime, double expiretime) {
    double age;
    if (createdtime <= 0)
        return 1;
    if (isinf(expiretime))
        return 0;
    if (dp_coarse_slack >= 0) {
        double coarse = -1;
#if defined(_WIN32)
        FILETIME ft;
        ULARGE_INTEGER t;
        GetSystemTimeAsFileTime(&ft);
        t.LowPart = ft.dwLowDateTime;
        t.HighPart = ft.dwHighDateTime;
        coarse = (double)(t.QuadPart - 116444736000000000ULL) * 1e-7;
#elif defined(CLOCK_REALTIME_COARSE)
        struct timespec ts;
        if (clock_gettime(CLOCK_REALTIME_COARSE, &ts) == 0)
            coarse = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#endif
        /* the true age lies in [age, age + slack] */
        age = coarse - createdtime;
        if (coarse > 0 && age >= -expiretime && age + dp_coarse_slack <= expiretime)
            return 0;
    }
    age = dp_now() - createdtime;
    /* Written so that a nan expiretime (a Dogpile whose __init__ never
       ran) is always expired. */
    return !(age <= expiretime && -age <= expiretime);
}

/* Uniform in (0, 1], for early refresh (XFetch takes its logarithm, so 0
   must not come out).  xorshift64*: statistical quality is all that is
   needed here; the state is only touched with the GIL held. */
static uint64_t dp_random_state = 0x9E3779B97F4A7C15ULL;

static void dp_random_seed(uint64_t seed) {
    dp_random_state = seed ? seed : 0x9E3779B97F4A7C15ULL;
}

static inline double dp_random(void) {
    uint64_t x = dp_random_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    dp_random_state = x;
    return ((double)((x * 0x2545F4914F6CDD1DULL) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* ---- stripes ---------------------------------------------------------- */

static inline dp_stripe *dp_stripe_for(const volatile void *addr) {
    uintptr_t a = (uintptr_t)addr;
    /* Python objects are 16-byte aligned: drop the low bits, then mix so
       neighbouring allocations spread over the table. */
    a = (a >> 4) * (uintptr_t)0x9E3779B97F4A7C15ULL;
    return &dp_stripes[(a >> 24) % DP_STRIPES];
}

static int dp_stripe_init(dp_stripe *s) {
    s->waiters = 0;
#ifdef _WIN32
    InitializeSRWLock(&s->mutex);
    InitializeConditionVariable(&s->cond);
    return 0;
#else
    pthread_condattr_t attr;
    int err = pthread_mutex_init(&s->mutex, NULL);
    if (err)
        return err;
    err = pthread_condattr_init(&attr);
    if (err)
        return err;
#  if !defined(__APPLE__)
    /* Deadlines on the monotonic clock; macOS has no setclock and uses the
       relative wait below instead. */
    err = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (err) {
        pthread_condattr_destroy(&attr);
        return err;
    }
#  endif
    err = pthread_cond_init(&s->cond, &attr);
    pthread_condattr_destroy(&attr);
    return err;
#endif
}

static inline void dp_stripe_lock(dp_stripe *s) {
#ifdef _WIN32
    AcquireSRWLockExclusive(&s->mutex);
#else
    pthread_mutex_lock(&s->mutex);
#endif
}

static inline void dp_stripe_unlock(dp_stripe *s) {
#ifdef _WIN32
    ReleaseSRWLockExclusive(&s->mutex);
#else
    pthread_mutex_unlock(&s->mutex);
#endif
}

/* Sleep on the stripe (its mutex held) for at most `seconds`; returns when
   woken, when the time is up, or spuriously: callers re-check their state. */
static void dp_stripe_sleep(dp_stripe *s, double seconds) {
    if (seconds <= 0)
        return;
#ifdef _WIN32
    {
        double ms = ceil(seconds * 1000.0);
        DWORD wait = ms >= (double)(INFINITE - 1) ? INFINITE - 1 : (DWORD)ms;
        SleepConditionVariableSRW(&s->cond, &s->mutex, wait, 0);
    }
#elif defined(__APPLE__)
    {
        struct timespec rel;
        if (seconds > 1e9)
            seconds = 1e9;
        rel.tv_sec = (time_t)seconds;
        rel.tv_nsec = (long)((seconds - (double)rel.tv_sec) * 1e9);
        pthread_cond_timedwait_relative_np(&s->cond, &s->mutex, &rel);
    }
#else
    {
        struct timespec abs;
        double end = dp_monotonic() + (seconds > 1e9 ? 1e9 : seconds);
        abs.tv_sec = (time_t)end;
        abs.tv_nsec = (long)((end - (double)abs.tv_sec) * 1e9);
        if (abs.tv_nsec >= 1000000000L) {
            abs.tv_sec += 1;
            abs.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cond, &s->mutex, &abs);
    }
#endif
}

static inline void dp_stripe_wake_all(dp_stripe *s) {
#ifdef _WIN32
    WakeAllConditionVariable(&s->cond);
#else
    pthread_cond_broadcast(&s->cond);
#endif
}

/* ---- fork ------------------------------------------------------------- */

#ifndef _WIN32
/* Runs in the child, which has one thread: any stripe mutex a vanished
   thread held is reinitialised, and the new generation frees every lock
   word that was held before the fork. */
static void dp_after_fork_child(void) {
    int i;
    for (i = 0; i < DP_STRIPES; i++)
        dp_stripe_init(&dp_stripes[i]);
    dp_generation += 1;
    /* Forked workers must not all draw the same early-refresh decisions:
       that would bring back the stampede early refresh spreads out. */
    dp_random_state ^= ((uint64_t)getpid() << 32) ^ (uint64_t)(dp_monotonic() * 1e9);
    if (!dp_random_state)
        dp_random_state = 0x9E3779B97F4A7C15ULL;
}
#endif

static int dp_module_init(void) {
    int i, err;
    dp_clock_init();
    for (i = 0; i < DP_STRIPES; i++) {
        err = dp_stripe_init(&dp_stripes[i]);
        if (err)
            return err;
    }
#ifndef _WIN32
    err = pthread_atfork(NULL, NULL, dp_after_fork_child);
    if (err)
        return err;
#endif
    return 0;
}

/* ---- the lock word ---------------------------------------------------- */

static inline int dp_word_held(volatile dp_word *w) {
    return dp_load(w) == dp_generation;
}

/* Take the lock if it is free.  Returns the holder's tag (pass it to
   dp_release), or 0 when another holder has it.  Never blocks: safe to call
   with the GIL held. */
static inline dp_word dp_try_acquire(volatile dp_word *w) {
    dp_word gen = dp_generation;
    dp_word cur = dp_load(w);
    if (cur == gen)
        return 0;
    return dp_cas(w, cur, gen) ? gen : 0;
}

/* Wait for the lock for at most `seconds` (a slice: the caller loops, so
   that it can look at signals and deadlines between slices).  Returns the
   tag, or 0 when the slice ran out.  Call without the GIL. */
static dp_word dp_acquire_slice(volatile dp_word *w, double seconds) {
    dp_stripe *s = dp_stripe_for(w);
    dp_word tag;
    double end = dp_monotonic() + seconds;
    dp_stripe_lock(s);
    dp_add_long(&s->waiters, 1);
    for (;;) {
        double left;
        tag = dp_try_acquire(w);
        if (tag)
            break;
        left = end - dp_monotonic();
        if (left <= 0)
            break;
        dp_stripe_sleep(s, left);
    }
    dp_add_long(&s->waiters, -1);
    dp_stripe_unlock(s);
    return tag;
}

/* Release a lock taken with `tag`.  Returns 1 when released, 0 when a fork
   has freed it since (the child's new holders are left alone), -1 when it
   was not held under that tag. */
static inline int dp_release(volatile dp_word *w, dp_word tag) {
    dp_stripe *s;
    if (tag != dp_generation)
        return 0;
    if (!dp_cas(w, tag, 0))
        return -1;
    s = dp_stripe_for(w);
    if (dp_load_long(&s->waiters) > 0) {
        dp_stripe_lock(s);
        dp_stripe_wake_all(s);
        dp_stripe_unlock(s);
    }
    return 1;
}

/* ---- the read/write lock -------------------------------------------- */

/* State of a ReadWriteMutex, guarded by its stripe's mutex.  Writers are
   preferred: once one waits, new readers wait behind it, so a steady stream
   of readers cannot starve it. */
typedef struct {
    long readers;
    long writers_waiting;
    int writer;
    /* The holder as threading.get_ident() names it: an OS thread ident, or
       under gevent/eventlet monkey-patching the id() of a greenlet, which
       needs 64 bits where unsigned long has 32 (Windows). */
    uint64_t writer_ident;
} dp_rwstate;

/* Each returns 1 when taken, 0 when not (busy, or the slice ran out). */
static int dp_rw_read_slice(dp_rwstate *rw, double seconds) {
    dp_stripe *s = dp_stripe_for(rw);
    int got = 0;
    double end = -1;
    dp_stripe_lock(s);
    for (;;) {
        double left;
        if (!rw->writer && rw->writers_waiting == 0) {
            rw->readers++;
            got = 1;
            break;
        }
        if (seconds <= 0)
            break;
        if (end < 0)
            end = dp_monotonic() + seconds;
        left = end - dp_monotonic();
        if (left <= 0)
            break;
        dp_add_long(&s->waiters, 1);
        dp_stripe_sleep(s, left);
        dp_add_long(&s->waiters, -1);
    }
    dp_stripe_unlock(s);
    return got;
}

static int dp_rw_write_slice(dp_rwstate *rw, uint64_t ident, double seconds) {
    dp_stripe *s = dp_stripe_for(rw);
    int got = 0;
    double end = -1;
    dp_stripe_lock(s);
    rw->writers_waiting++;
    for (;;) {
        double left;
        if (!rw->writer && rw->readers == 0) {
            rw->writer = 1;
            rw->writer_ident = ident;
            got = 1;
            break;
        }
        if (seconds <= 0)
            break;
        if (end < 0)
            end = dp_monotonic() + seconds;
        left = end - dp_monotonic();
        if (left <= 0)
            break;
        dp_add_long(&s->waiters, 1);
        dp_stripe_sleep(s, left);
        dp_add_long(&s->waiters, -1);
    }
    rw->writers_waiting--;
    /* A writer that gives up may have held readers back. */
    if (!got && rw->writers_waiting == 0 && dp_load_long(&s->waiters) > 0)
        dp_stripe_wake_all(s);
    dp_stripe_unlock(s);
    return got;
}

/* A writer waiting outside dp_rw_write_slice (a greenlet, waiting
   cooperatively between zero-second slices) counts itself in with +1 for
   the whole wait, so that new readers keep waiting behind it, and out with
   -1 whatever ended the wait; readers it held back are then woken. */
static void dp_rw_writer_waiting(dp_rwstate *rw, long delta) {
    dp_stripe *s = dp_stripe_for(rw);
    dp_stripe_lock(s);
    rw->writers_waiting += delta;
    if (rw->writers_waiting == 0 && dp_load_long(&s->waiters) > 0)
        dp_stripe_wake_all(s);
    dp_stripe_unlock(s);
}

/* Returns 0, or -1 when no read lock is held. */
static int dp_rw_read_release(dp_rwstate *rw) {
    dp_stripe *s = dp_stripe_for(rw);
    int r = 0;
    dp_stripe_lock(s);
    if (rw->readers <= 0)
        r = -1;
    else if (--rw->readers == 0 && dp_load_long(&s->waiters) > 0)
        dp_stripe_wake_all(s);
    dp_stripe_unlock(s);
    return r;
}

/* Returns 0, or -1 when `ident` does not hold the write lock. */
static int dp_rw_write_release(dp_rwstate *rw, uint64_t ident) {
    dp_stripe *s = dp_stripe_for(rw);
    int r = 0;
    dp_stripe_lock(s);
    if (!rw->writer || rw->writer_ident != ident) {
        r = -1;
    } else {
        rw->writer = 0;
        if (dp_load_long(&s->waiters) > 0)
            dp_stripe_wake_all(s);
    }
    dp_stripe_unlock(s);
    return r;
}

#endif /* DOGPILE_NATIVE_LOCK_H */
