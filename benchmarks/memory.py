"""Memory: bytes per Dogpile and per key of a NameRegistry of Dogpiles.

What is counted, and what not:

* ``object``: ``sys.getsizeof`` of a new Dogpile, which for a GC-tracked
  object includes its GC header: the object itself, on top of everything
  it references.
* ``in_use``: what a Dogpile costs once it has been acquired, measured with
  tracemalloc over many of them (``harness.allocated_per_item``): the
  object plus everything it allocated for itself and keeps (the twin's
  threading.Lock and float objects, the compiled core's cached context
  manager), but not the value, the creator, or the allocator's rounding.
* ``registry_per_key``: tracemalloc over a NameRegistry filled with
  ``KEYS`` used Dogpiles, divided by ``KEYS``: the Dogpile in use plus the
  registry's share (dict slot, weak reference, its callback), but not the
  key strings, which the caller owns.
* ``lock_object``: tracemalloc per ``Lock`` object (one is made per lookup
  in dogpile.cache's usage, so this is transient memory).

peer.py measures dogpile.cache's ``Lock`` and its NameRegistry of the
per-key mutexes a CacheRegion keeps, the same way.
"""

import sys
import threading
import time
from types import ModuleType
from typing import Any, Dict

import cases
import harness

KEYS = 100_000
# Enough objects that the average is exact to the byte.
OBJECTS = 10_000


def run(mod: ModuleType, keys: int = KEYS) -> Dict[str, float]:
    def creator() -> Any:
        return "value"  # one shared value: it is not the Dogpile's to count

    def used(_: Any = None) -> Any:
        d = mod.Dogpile(cases.FRESH_SECONDS)
        with d.acquire(creator):
            pass
        return d

    store = {"key": ("value", time.time())}

    def value_and_created() -> Any:
        return store["key"]

    mutex = threading.Lock()
    names = [f"key-{i}" for i in range(keys)]
    registry = mod.NameRegistry(used)
    return {
        "object": sys.getsizeof(mod.Dogpile(cases.FRESH_SECONDS)),
        "in_use": harness.allocated_per_item(lambda i: used(), OBJECTS),
        "registry_per_key": harness.allocated_per_item(lambda i: registry.get(names[i]), keys),
        "lock_object": harness.allocated_per_item(
            lambda i: mod.Lock(mutex, creator, value_and_created, cases.FRESH_SECONDS), OBJECTS
        ),
    }
