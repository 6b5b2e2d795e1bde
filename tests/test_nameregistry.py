"""NameRegistry: one object per identifier while anything references it."""

import gc
import threading

import pytest
from conftest import DEADLINE, run_threads


class Thing:
    """A weak-referenceable object that remembers how it was made."""

    def __init__(self, serial, identifier, args, kw):
        self.serial = serial
        self.identifier = identifier
        self.args = args
        self.kw = kw


class Maker:
    def __init__(self):
        self.calls = []
        self._lock = threading.Lock()

    def __call__(self, identifier, *args, **kw):
        with self._lock:
            self.calls.append(identifier)
            serial = len(self.calls)
        return Thing(serial, identifier, args, kw)


def test_same_object_while_referenced(impl):
    maker = Maker()
    reg = impl.NameRegistry(maker)
    a = reg.get("a")
    assert reg.get("a") is a
    assert reg.get("a") is a
    b = reg.get("b")
    assert b is not a
    assert b.identifier == "b"
    assert maker.calls == ["a", "b"]


def test_args_and_kwargs_reach_the_creator(impl):
    maker = Maker()
    reg = impl.NameRegistry(maker)
    obj = reg.get("key", 1, "two", three=3)
    assert (obj.identifier, obj.args, obj.kw) == ("key", (1, "two"), {"three": 3})
    # While it lives, later arguments do not make a new one.
    assert reg.get("key", 9, nine=9) is obj
    assert maker.calls == ["key"]


def test_many_threads_get_one_object(impl):
    maker = Maker()
    reg = impl.NameRegistry(maker)
    barrier = threading.Barrier(16)
    got = []

    def worker(_):
        barrier.wait(DEADLINE)
        got.append(reg.get("shared"))

    run_threads(worker, 16)
    assert len(got) == 16
    assert all(o is got[0] for o in got)
    assert maker.calls == ["shared"]


def test_entry_goes_away_when_unreferenced(impl):
    """Unreferenced entries must not pile up, and a later get() makes a
    new object rather than resurrecting a dead reference."""
    maker = Maker()
    reg = impl.NameRegistry(maker)
    obj = reg.get("a")
    keep = reg.get("b")
    assert obj.serial == 1
    assert len(reg) == 2
    del obj
    gc.collect()
    assert len(reg) == 1
    again = reg.get("a")
    assert again.serial == 3
    assert maker.calls == ["a", "b", "a"]
    assert reg.get("b") is keep


def test_not_weak_referenceable_is_type_error(impl):
    reg = impl.NameRegistry(lambda identifier: 42)
    with pytest.raises(TypeError) as info:
        reg.get("x")
    message = str(info.value)
    assert "weak reference" in message
    assert "'int'" in message
    assert len(reg) == 0


def test_creator_not_callable_is_type_error(impl):
    with pytest.raises(TypeError, match="creator must be callable"):
        impl.NameRegistry("not a function")


def test_creator_may_get_another_identifier(impl):
    """The registry's lock must be reentrant: a creator that looks up a
    dependency through the same registry must not deadlock.  Run in a
    thread so a deadlock fails on the deadline instead of hanging."""
    reg = None

    def creator(identifier):
        if identifier == "outer":
            return Thing(0, identifier, (reg.get("inner"),), {})
        return Thing(0, identifier, (), {})

    reg = impl.NameRegistry(creator)
    got = []
    run_threads(lambda _: got.append(reg.get("outer")), 1)
    outer = got[0]
    inner = outer.args[0]
    assert outer.identifier == "outer"
    assert inner.identifier == "inner"
    assert reg.get("inner") is inner
    assert reg.get("outer") is outer


def test_creator_exception_propagates_and_leaves_no_entry(impl):
    calls = []

    def creator(identifier):
        calls.append(identifier)
        if len(calls) == 1:
            raise RuntimeError("first try fails")
        return Thing(len(calls), identifier, (), {})

    reg = impl.NameRegistry(creator)
    with pytest.raises(RuntimeError, match="first try fails"):
        reg.get("a")
    # The registry's lock was released: another thread can still get in.
    got = []
    run_threads(lambda _: got.append(reg.get("a")), 1)
    assert got[0].serial == 2
