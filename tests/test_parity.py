"""The compiled core and its twin show users the same API: the same public
names, the same signatures and the same docstrings; ``dogpile.aio`` takes
the options of the thread classes under the same names.

The twin (``_core_py.py``) is the readable specification; where they
differ, the twin says what was meant.  What users see is what is
compared: ``inspect.signature()`` and ``__doc__`` on the compiled side
after the fast paths of ``_fastcall.h`` have replaced its hottest
methods.  Annotations are not compared: the compiled core has none at
run time, and its stub ``_core.pyi`` re-exports the twin's types.
"""

import ast
import inspect
import pathlib
import re
import threading
import time

import pytest

import dogpile
from dogpile import aio

PYX = pathlib.Path(__file__).resolve().parent.parent / "src" / "dogpile" / "_core.pyx"

# The compiled side of every comparison; deselected, with the other
# compiled tests, only when a pure run was asked for (tests/conftest.py).
needs_compiled = pytest.mark.c_extension

CLASSES = ["Dogpile", "SyncReaderDogpile", "Lock", "NameRegistry", "ReadWriteMutex"]

# Names a class has without them being part of its API: what the language
# or Cython adds (``__new__`` and ``__pyx_vtable__`` on every cdef class,
# ``__weakref__``, ``__slots__`` and the annotations on the twin's), and
# two whose difference is how, not what: ``__init__`` (compared through the class's signature,
# as ``inspect.signature(Lock)`` is what users see), and ``__reduce__``
# (auto_pickle=False makes the compiled Lock spell out the copy that the
# twin's Lock inherits from ``object``).
NOT_API = {
    "__annotate__",
    "__annotate_func__",
    "__annotations__",
    "__annotations_cache__",
    "__dict__",
    "__doc__",
    "__firstlineno__",
    "__init__",
    "__module__",
    "__new__",
    "__pyx_vtable__",
    "__reduce__",
    "__reduce_cython__",
    "__setstate_cython__",
    "__slots__",
    "__static_attributes__",
    "__weakref__",
}


@pytest.fixture(scope="module")
def twin():
    return dogpile._load_core("python")


@pytest.fixture(scope="module")
def compiled():
    return dogpile._load_core("cython")


def public_names(cls):
    """The attributes a class offers callers, its bases' included (but not
    ``object``'s): public names and the special methods it defines."""
    names = set()
    for klass in cls.__mro__[:-1]:
        for name, value in vars(klass).items():
            if name in NOT_API:
                continue
            if not name.startswith("_") or (name.startswith("__") and callable(value)):
                names.add(name)
    return names


def find(cls, name):
    """The attribute ``name`` as stored in the class or a base (a function,
    a method descriptor, a property or a getset descriptor)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    raise AttributeError(name)


def signature(obj, bound):
    """The parameters users see: (name, kind, default) each, without
    annotations, and without ``self`` when ``bound`` (the compiled side
    shows it positional-only, the twin positional-or-keyword)."""
    params = list(inspect.signature(obj).parameters.values())
    if bound:
        assert params and params[0].name == "self", params
        params = params[1:]
    return [(p.name, p.kind.name, p.default) for p in params]


def doc(obj):
    """The docstring as help() shows it: indentation removed; None as ''."""
    return inspect.cleandoc(obj.__doc__ or "")


def kind(attr):
    """What sort of attribute users get: a method or a data attribute
    (a property on one side may be a getset or member descriptor on the
    other)."""
    return "method" if callable(attr) else "data"


# -- module level -------------------------------------------------------------------------


@needs_compiled
def test_same_module_names(twin, compiled):
    assert twin.__all__ == compiled.__all__ == CLASSES


@pytest.mark.parametrize("module", ["python", pytest.param("cython", marks=needs_compiled)])
def test_every_public_definition_is_exported(module):
    """A public class or function defined in a core is in its ``__all__``
    (so that the comparison above sees it), or starts with ``_``."""
    core = dogpile._load_core(module)
    defined = {
        name
        for name, value in vars(core).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == core.__name__
    }
    assert defined <= set(core.__all__)


# -- per class: names, signatures, docstrings --------------------------------------------


@needs_compiled
@pytest.mark.parametrize("name", CLASSES)
def test_same_class_docstring(twin, compiled, name):
    # Compared as help() shows them: CPython 3.13 and later remove the
    # indentation of the twin's docstrings when compiling, and Cython that
    # of a method's when it prepends the signature.
    assert doc(getattr(compiled, name)) == doc(getattr(twin, name))


@needs_compiled
@pytest.mark.parametrize("name", CLASSES)
def test_same_constructor_signature(twin, compiled, name):
    assert signature(getattr(compiled, name), bound=False) == signature(
        getattr(twin, name), bound=False
    )


@needs_compiled
@pytest.mark.parametrize("name", CLASSES)
def test_same_attribute_names(twin, compiled, name):
    in_twin, in_compiled = public_names(getattr(twin, name)), public_names(getattr(compiled, name))
    assert sorted(in_twin - in_compiled) == [], "in the twin only"
    assert sorted(in_compiled - in_twin) == [], "in the compiled core only"


# The twin's names, one test each; the compiled side's are checked equal above.
ATTRIBUTES = [
    pytest.param(name, attr, id=f"{name}.{attr}")
    for name in CLASSES
    for attr in sorted(public_names(getattr(dogpile._load_core("python"), name)))
]


@needs_compiled
@pytest.mark.parametrize(("name", "attr"), ATTRIBUTES)
def test_same_attribute(twin, compiled, name, attr):
    spec = find(getattr(twin, name), attr)
    if not hasattr(getattr(compiled, name), attr):
        pytest.fail(f"{name}.{attr} is in the twin only")
    built = find(getattr(compiled, name), attr)
    assert kind(built) == kind(spec)
    if kind(spec) == "method":
        assert signature(built, bound=True) == signature(spec, bound=True)
    # A special method without a docstring of its own shows the one of the
    # slot it fills (``Return repr(self).``): nothing to keep in step.
    if doc(spec) or not attr.startswith("__"):
        assert doc(built) == doc(spec)


@needs_compiled
@pytest.mark.parametrize("name", CLASSES)
def test_same_weak_referencing(twin, compiled, name):
    """Whether instances can be weakly referenced (NameRegistry relies on
    it) is part of the class, though no name shows it on the compiled side."""
    assert bool(getattr(compiled, name).__weakrefoffset__) == bool(
        getattr(twin, name).__weakrefoffset__
    )


def pyx_constructors():
    """Each public class of _core.pyx and the parameters of its
    ``__init__`` (``(self)`` when it has none), read from the source."""
    source = PYX.read_text(encoding="utf-8")
    found = {}
    for block in re.split(r"^cdef class ", source, flags=re.MULTILINE)[1:]:
        name = re.match(r"\w+", block).group()
        if name.startswith("_"):
            continue
        init = re.search(r"^    def __init__(\(.*?\)):", block, re.MULTILINE | re.DOTALL)
        found[name] = init.group(1) if init else "(self)"
    return found


@needs_compiled
def test_class_signatures_are_those_of_the_pyx(compiled):
    """Cython does not write a class's signature: _core.pyx spells it at
    the top of the class docstring, where it could drift from the
    ``__init__`` it describes; this holds the two together."""
    if not PYX.is_file():
        pytest.skip(
            "src/dogpile/_core.pyx is not beside tests/ (a run from a copy of the tests "
            "against an installed wheel); the source-tree runs of .ci/run check it, and "
            "test_class_signatures_are_accepted below runs everywhere"
        )
    constructors = pyx_constructors()
    assert sorted(constructors) == sorted(CLASSES)
    for name, params in constructors.items():
        tree = ast.parse(f"def __init__{params}: pass")
        written = inspect.Signature.from_callable(_function_of(tree))
        assert signature(getattr(compiled, name), bound=False) == [
            (p.name, p.kind.name, p.default) for p in list(written.parameters.values())[1:]
        ], name


def _function_of(tree):
    """The function an ``ast`` module of one ``def`` defines."""
    namespace = {}
    exec(compile(tree, str(PYX), "exec"), namespace)
    return namespace["__init__"]


def _arguments():
    """A valid value for each constructor parameter, by name."""
    return {
        "expiretime": 60,
        "init": False,
        "lock": threading.Lock(),
        "wait_timeout": None,
        "background": None,
        "early_refresh": None,
        "mutex": threading.Lock(),
        "creator": lambda *args: ("value", time.time()),
        "value_and_created_fn": lambda: ("value", time.time()),
        "async_creator": None,
    }


@pytest.mark.parametrize("name", CLASSES)
def test_class_signatures_are_accepted(impl, name):
    """The constructor takes every parameter its signature names, by the
    name and in the place it gives, and no positional argument more (on
    the compiled side this holds the written signature to the ``__init__``
    without the source)."""
    cls = getattr(impl, name)
    values = _arguments()
    positional, keywords = [], {}
    for param in inspect.signature(cls).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            keywords["wait_timeout"] = None  # SyncReaderDogpile's **options
        elif param.kind is param.KEYWORD_ONLY:
            keywords[param.name] = values[param.name]
        else:
            positional.append(values[param.name])
            keywords[param.name] = values[param.name]
    cls(*positional)
    if not any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(cls).parameters.values()):
        with pytest.raises(TypeError):
            cls(*positional, None)
    cls(**keywords)


# -- the asyncio front end against the thread classes ------------------------------------

# The one option whose value differs: a thread Dogpile's ``background`` is
# an executor, AsyncDogpile's a flag (the event loop runs the task), so the
# defaults differ (None, False).
ASYNC_DEFAULTS_DIFFER = {("AsyncDogpile", "background")}


@pytest.mark.parametrize(
    ("async_name", "sync_name"), [("AsyncDogpile", "Dogpile"), ("AsyncLock", "Lock")]
)
def test_async_constructor_takes_the_same_options(twin, async_name, sync_name):
    sync = signature(getattr(twin, sync_name), bound=False)
    asyncio = signature(getattr(aio, async_name), bound=False)
    assert [p[:2] for p in asyncio] == [p[:2] for p in sync]
    for (param, _, async_default), (_, _, sync_default) in zip(asyncio, sync):
        if (async_name, param) not in ASYNC_DEFAULTS_DIFFER:
            assert async_default == sync_default, param


def test_async_dogpile_offers_what_dogpile_does(twin):
    """Every public name of Dogpile and no other; methods with the same
    parameters (``get`` a coroutine function), properties with the same
    docstrings."""
    sync_names = {n for n in public_names(twin.Dogpile) if not n.startswith("__")}
    async_names = {n for n in public_names(aio.AsyncDogpile) if not n.startswith("__")}
    assert async_names == sync_names
    for attr in sorted(sync_names):
        sync, asyncio = find(twin.Dogpile, attr), find(aio.AsyncDogpile, attr)
        assert kind(asyncio) == kind(sync), attr
        if kind(sync) == "method":
            assert signature(asyncio, bound=True) == signature(sync, bound=True), attr
        else:
            assert doc(asyncio) == doc(sync), attr
    assert inspect.iscoroutinefunction(aio.AsyncDogpile.get)


def test_async_lock_offers_what_lock_does(twin):
    """Lock's names, with ``__enter__``/``__exit__`` as ``__aenter__``/
    ``__aexit__``."""
    sync_names = public_names(twin.Lock)
    async_names = public_names(aio.AsyncLock)
    renamed = {"__enter__": "__aenter__", "__exit__": "__aexit__"}
    assert async_names == {renamed.get(n, n) for n in sync_names}
    assert signature(aio.AsyncLock.__aexit__, bound=True) == signature(
        twin.Lock.__exit__, bound=True
    )
    assert doc(aio.AsyncLock.expiretime) == doc(twin.Lock.expiretime)
