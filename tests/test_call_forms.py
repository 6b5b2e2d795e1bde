"""Every way of calling the hot methods gives the same result.

The compiled core takes the usual call of ``Lock(...)``, ``d.acquire(creator)``,
``d.get(creator)`` and ``registry.get(key)`` by a shortcut (_fastcall.h) and
every other form of call the ordinary way; these tests pin down that the
other forms (keywords, extra arguments, wrong counts, subclasses) behave as
in the Python twin.
"""

import threading
import time

import pytest

from dogpile import NeedRegenerationException


def pair_store(value="stored"):
    store = {"pair": (value, time.time())}
    return store, lambda: store["pair"]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda L, m, c, v: L(m, c, v, 60), id="positional"),
        pytest.param(lambda L, m, c, v: L(m, c, v, 60, None), id="positional-async-none"),
        pytest.param(
            lambda L, m, c, v: L(mutex=m, creator=c, value_and_created_fn=v, expiretime=60),
            id="keywords",
        ),
        pytest.param(lambda L, m, c, v: L(m, c, v, expiretime=60.0), id="mixed"),
    ],
)
def test_lock_call_forms(impl, make):
    mutex = threading.Lock()
    _, stored = pair_store()
    lock = make(impl.Lock, mutex, lambda: ("new", time.time()), stored)
    assert (lock.mutex, lock.value_and_created_fn, lock.expiretime) == (mutex, stored, 60.0)
    assert lock.async_creator is None
    with lock as value:
        assert value == "stored"
    assert not mutex.locked()


def test_lock_async_creator_positional_and_keyword(impl):
    def async_creator(mutex):
        mutex.release()

    for lock in (
        impl.Lock(threading.Lock(), object, object, 60, async_creator),
        impl.Lock(threading.Lock(), object, object, 60, async_creator=async_creator),
    ):
        assert lock.async_creator is async_creator


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {}),
        ((1, 2, 3), {}),
        ((1, 2, 3, 60, None, "extra"), {}),
        ((1, 2, 3, 60), {"unknown": 1}),
        ((1, 2, 3), {"expiretime": 60, "mutex": 1}),
    ],
)
def test_lock_bad_calls_are_type_errors(impl, args, kwargs):
    with pytest.raises(TypeError):
        impl.Lock(*args, **kwargs)


@pytest.mark.parametrize("expiretime", ["60", -1, float("nan")])
def test_lock_bad_expiretime(impl, expiretime):
    with pytest.raises((TypeError, ValueError)):
        impl.Lock(threading.Lock(), object, object, expiretime)


def test_lock_subclass_with_its_own_init(impl):
    class Named(impl.Lock):
        def __init__(self, name, mutex, creator, value_and_created_fn, expiretime):
            super().__init__(mutex, creator, value_and_created_fn, expiretime)
            self.name = name

    _, stored = pair_store()
    lock = Named("report", threading.Lock(), object, stored, 60)
    assert lock.name == "report"
    with lock as value:
        assert value == "stored"


def test_dogpile_acquire_and_get_call_forms(impl):
    d = impl.Dogpile(60)
    calls = []

    def creator():
        calls.append(1)
        return "value"

    with d.acquire(creator=creator) as value:
        assert value == "value"
    with d.acquire(creator, None, None) as value:
        assert value == "value"
    assert d.get(creator=creator) == "value"
    assert d.get(creator, value_fn=None) == "value"
    assert len(calls) == 1
    with pytest.raises(TypeError):
        d.acquire()
    with pytest.raises(TypeError):
        d.get(creator, None, None, None)
    with pytest.raises(TypeError):
        d.acquire(creator, unknown=1)


def test_dogpile_subclass_overriding_get_and_acquire(impl):
    class Counting(impl.Dogpile):
        gets = 0

        def get(self, creator, value_fn=None, value_and_created_fn=None):
            type(self).gets += 1
            return super().get(creator, value_fn, value_and_created_fn)

    d = Counting(60)
    assert d.get(lambda: "v") == "v"
    assert d.get(lambda: "w") == "v"
    assert Counting.gets == 2


def test_registry_get_call_forms(impl):
    made = []

    class Thing:
        def __init__(self, key, *args, **kw):
            self.key, self.args, self.kw = key, args, kw

    def creator(key, *args, **kw):
        made.append(key)
        return Thing(key, *args, **kw)

    registry = impl.NameRegistry(creator)
    first = registry.get("a", 1, 2, flag=True)
    assert (first.args, first.kw) == ((1, 2), {"flag": True})
    assert registry.get("a") is first
    assert registry.get(identifier="a") is first
    second = registry.get("b")
    assert (second.args, second.kw) == ((), {})
    assert made == ["a", "b"]
    with pytest.raises(TypeError):
        registry.get()


def test_value_fn_raising_need_regeneration_through_get(impl):
    d = impl.Dogpile(60)

    def missing():
        raise NeedRegenerationException()

    assert d.get(lambda: "made", missing) == "made"


@pytest.mark.parametrize(
    "call",
    [
        lambda impl: impl.Dogpile.get(object(), lambda: 1),
        lambda impl: impl.Dogpile.acquire(object(), lambda: 1).__enter__(),
        lambda impl: impl.NameRegistry.get(object(), "key"),
    ],
)
def test_unbound_methods_on_a_wrong_object_are_type_errors_not_crashes(impl, call):
    with pytest.raises((TypeError, AttributeError)):
        call(impl)
