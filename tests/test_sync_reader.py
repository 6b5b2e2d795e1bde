"""SyncReaderDogpile: the acquire() block holds a read lock, and
acquire_write_lock() excludes every reader."""

import threading
import time

import pytest
from conftest import DEADLINE, run_threads

# How long a thread that must stay blocked is given to (wrongly) get through.
# Only ever waited out in full when the code is right, so keep it short.
BLOCKED_GRACE = 0.1


def write_lock_free(d):
    """True if the write lock can be taken right now (and leave it free)."""
    if d.readwritelock.acquire_write_lock(wait=False):
        d.readwritelock.release_write_lock()
        return True
    return False


def test_is_a_dogpile(impl):
    d = impl.SyncReaderDogpile(3600)
    assert isinstance(d, impl.Dogpile)
    calls = []
    with d.acquire(lambda: calls.append(1) or "v") as value:
        assert value == "v"
    with d.acquire(lambda: calls.append(1) or "w") as value:
        assert value == "v"
    assert calls == [1]


def test_acquire_block_holds_a_read_lock(impl):
    """Without the read lock a writer could change the value under a reader."""
    d = impl.SyncReaderDogpile(3600)
    assert write_lock_free(d)
    with d.acquire(lambda: "v"):
        assert d.readwritelock.acquire_write_lock(wait=False) is False
    assert write_lock_free(d)
    # The fresh-hit path must take the read lock too, not only creation.
    with d.acquire(lambda: "unused"):
        assert d.readwritelock.acquire_write_lock(wait=False) is False
    assert write_lock_free(d)


def test_read_lock_released_when_block_raises(impl):
    d = impl.SyncReaderDogpile(3600)
    with pytest.raises(KeyError):
        with d.acquire(lambda: "v"):
            raise KeyError("in the block")
    assert write_lock_free(d)


def test_no_read_lock_leaked_when_creator_fails(impl):
    d = impl.SyncReaderDogpile(3600)

    def fail():
        raise RuntimeError("creator failed")

    with pytest.raises(RuntimeError, match="creator failed"):
        with d.acquire(fail):
            pass
    assert write_lock_free(d)
    # In a thread: if the failed creation leaked the Dogpile's own lock,
    # this fails on the deadline instead of hanging.
    got = []

    def retry(_):
        with d.acquire(lambda: "v") as value:
            got.append(value)

    run_threads(retry, 1)
    assert got == ["v"]


def test_write_lock_excludes_readers(impl):
    """A reader that starts while the writer is inside must not enter its
    block until the writer has left."""
    d = impl.SyncReaderDogpile(3600)
    with d.acquire(lambda: "v"):
        pass
    d.createdtime = time.time() - 7200  # the reader regenerates first

    writer_done = threading.Event()
    reader_creating = threading.Event()
    reader_entered = threading.Event()
    saw_writer_done = []

    def creator():
        # Runs before the read lock is taken: the reader is about to block.
        reader_creating.set()
        return "v2"

    def reader():
        with d.acquire(creator) as value:
            saw_writer_done.append(writer_done.is_set())
            reader_entered.set()
            assert value == "v2"

    t = threading.Thread(target=reader, daemon=True)
    # Fail here, not hang below, if the acquire() above leaked its read lock.
    assert write_lock_free(d)
    with d.acquire_write_lock():
        # While the writer holds it, no reader gets in, from any thread.
        assert d.readwritelock.acquire_read_lock(wait=False) is False
        t.start()
        assert reader_creating.wait(DEADLINE), "reader thread never started"
        assert not reader_entered.wait(BLOCKED_GRACE), "reader entered during the write lock"
        writer_done.set()
    assert reader_entered.wait(DEADLINE), "reader still blocked after the writer left"
    t.join(DEADLINE)
    assert not t.is_alive()
    assert saw_writer_done == [True]
    assert write_lock_free(d)


def test_write_lock_waits_for_reader(impl):
    """A writer must wait until a reader in its acquire() block leaves."""
    d = impl.SyncReaderDogpile(3600)
    writer_started = threading.Event()
    writer_in = threading.Event()
    reader_left = threading.Event()
    saw_reader_left = []

    def writer():
        writer_started.set()
        with d.acquire_write_lock():
            saw_reader_left.append(reader_left.is_set())
            writer_in.set()

    t = threading.Thread(target=writer, daemon=True)
    with d.acquire(lambda: "v"):
        t.start()
        assert writer_started.wait(DEADLINE)
        assert not writer_in.wait(BLOCKED_GRACE), "writer got in while a reader was inside"
        reader_left.set()
    assert writer_in.wait(DEADLINE), "writer still blocked after the reader left"
    t.join(DEADLINE)
    assert not t.is_alive()
    assert saw_reader_left == [True]
    assert write_lock_free(d)
