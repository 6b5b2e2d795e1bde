"""ReadWriteMutex: shared readers, exclusive writer, misuse raises LockError,
and a waiting writer is not starved by new readers."""

import threading
import time

import pytest
from conftest import DEADLINE, run_threads

from dogpile import LockError

BLOCKED_GRACE = 0.1


def in_thread(fn):
    """Run fn() in another thread and return its result (or raise)."""
    out = []
    run_threads(lambda _: out.append(fn()), 1)
    return out[0]


def test_wait_false_on_free_mutex(impl):
    rw = impl.ReadWriteMutex()
    assert rw.acquire_read_lock(wait=False) is True
    rw.release_read_lock()
    assert rw.acquire_write_lock(wait=False) is True
    rw.release_write_lock()
    assert rw.acquire_read_lock() is True
    rw.release_read_lock()
    assert rw.acquire_write_lock() is True
    rw.release_write_lock()


def test_many_readers_at_once(impl):
    """All 8 readers must hold the lock together, or the barrier inside
    breaks on its deadline."""
    rw = impl.ReadWriteMutex()
    barrier = threading.Barrier(8)

    def reader(_):
        assert rw.acquire_read_lock()
        try:
            barrier.wait(DEADLINE)
        finally:
            rw.release_read_lock()

    run_threads(reader, 8)
    assert rw.acquire_write_lock(wait=False)
    rw.release_write_lock()


def test_reader_excludes_writer(impl):
    rw = impl.ReadWriteMutex()
    assert rw.acquire_read_lock()
    assert in_thread(lambda: rw.acquire_write_lock(wait=False)) is False
    # Another reader may still come in.
    assert in_thread(lambda: rw.acquire_read_lock(wait=False)) is True
    rw.release_read_lock()
    rw.release_read_lock()
    assert in_thread(lambda: rw.acquire_write_lock(wait=False)) is True


def test_writer_excludes_readers_and_writers(impl):
    rw = impl.ReadWriteMutex()
    assert rw.acquire_write_lock()
    assert in_thread(lambda: rw.acquire_read_lock(wait=False)) is False
    assert in_thread(lambda: rw.acquire_write_lock(wait=False)) is False
    # Not reentrant either: the holder cannot take it twice.
    assert rw.acquire_write_lock(wait=False) is False
    rw.release_write_lock()
    assert rw.acquire_read_lock(wait=False) is True
    rw.release_read_lock()


def test_blocked_writer_gets_in_after_writer_releases(impl):
    rw = impl.ReadWriteMutex()
    started = threading.Event()
    got_it = threading.Event()
    first_released = threading.Event()
    saw_release = []

    def second_writer():
        started.set()
        rw.acquire_write_lock()
        saw_release.append(first_released.is_set())
        got_it.set()
        rw.release_write_lock()

    assert rw.acquire_write_lock()
    t = threading.Thread(target=second_writer, daemon=True)
    t.start()
    assert started.wait(DEADLINE)
    assert not got_it.wait(BLOCKED_GRACE), "two writers held the lock at once"
    first_released.set()
    rw.release_write_lock()
    assert got_it.wait(DEADLINE), "waiting writer never got in"
    t.join(DEADLINE)
    assert not t.is_alive()
    assert saw_release == [True]


def test_release_write_lock_not_held(impl):
    rw = impl.ReadWriteMutex()
    with pytest.raises(LockError, match="write lock"):
        rw.release_write_lock()
    # Holding a read lock is not holding the write lock.
    rw.acquire_read_lock()
    with pytest.raises(LockError):
        rw.release_write_lock()
    rw.release_read_lock()
    assert rw.acquire_write_lock(wait=False)
    rw.release_write_lock()


def test_release_write_lock_held_by_another_thread(impl):
    """Only the holder may release; a stray release must leave it held."""
    rw = impl.ReadWriteMutex()
    assert rw.acquire_write_lock()
    errors = []

    def stray_release():
        try:
            rw.release_write_lock()
        except LockError as exc:
            errors.append(exc)

    in_thread(stray_release)
    assert len(errors) == 1
    assert in_thread(lambda: rw.acquire_read_lock(wait=False)) is False
    rw.release_write_lock()
    assert in_thread(lambda: rw.acquire_read_lock(wait=False)) is True


def test_release_more_read_locks_than_taken(impl):
    rw = impl.ReadWriteMutex()
    with pytest.raises(LockError, match="read lock"):
        rw.release_read_lock()
    rw.acquire_read_lock()
    rw.acquire_read_lock()
    rw.release_read_lock()
    rw.release_read_lock()
    with pytest.raises(LockError):
        rw.release_read_lock()
    # The count did not go negative: a writer still gets in, and a reader
    # is still excluded by it.
    assert rw.acquire_write_lock(wait=False)
    assert in_thread(lambda: rw.acquire_read_lock(wait=False)) is False
    rw.release_write_lock()


def test_lock_error_is_the_shared_class(impl):
    """``except dogpile.LockError`` must catch what either implementation
    raises: not a look-alike class defined in the compiled module."""
    rw = impl.ReadWriteMutex()
    with pytest.raises(Exception) as info:
        rw.release_read_lock()
    assert type(info.value) is LockError


def test_waiting_writer_is_not_starved_by_new_readers(impl):
    """With a reader inside, a writer waits; from then on new readers must
    queue behind the writer, or a steady stream of readers would keep it
    out for ever."""
    rw = impl.ReadWriteMutex()
    assert rw.acquire_read_lock()  # the first reader: the test thread

    writer_in = threading.Event()
    writer_go = threading.Event()
    writer_done = threading.Event()

    def writer():
        rw.acquire_write_lock()
        writer_in.set()
        try:
            assert writer_go.wait(DEADLINE)
        finally:
            writer_done.set()
            rw.release_write_lock()

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    # Wait until the writer is waiting: new read locks are then refused.
    # There is no event for "blocked inside acquire_write_lock", so poll.
    end = time.monotonic() + DEADLINE
    while rw.acquire_read_lock(wait=False):
        rw.release_read_lock()
        assert time.monotonic() < end, "writer never started waiting"
        time.sleep(0.001)
    assert not writer_in.is_set()

    # A new blocking reader now queues behind the writer.
    late_reader_started = threading.Event()
    late_reader_in = threading.Event()
    saw_writer_done = []

    def late_reader():
        late_reader_started.set()
        rw.acquire_read_lock()
        saw_writer_done.append(writer_done.is_set())
        late_reader_in.set()
        rw.release_read_lock()

    r = threading.Thread(target=late_reader, daemon=True)
    r.start()
    assert late_reader_started.wait(DEADLINE)
    assert not late_reader_in.wait(BLOCKED_GRACE), "new reader overtook the waiting writer"

    rw.release_read_lock()  # the first reader leaves: the writer goes in
    assert writer_in.wait(DEADLINE), "writer still waiting after the last reader left"
    assert not late_reader_in.is_set()
    assert rw.acquire_read_lock(wait=False) is False
    writer_go.set()
    assert late_reader_in.wait(DEADLINE), "reader never got in after the writer"
    for t in (w, r):
        t.join(DEADLINE)
        assert not t.is_alive()
    assert saw_writer_done == [True]
