"""dogpile.cache's side of the comparison; prints one JSON object.

Runs inside dogpile.cache's own virtual environment (compare.py makes it
and runs this with its interpreter): dogpile.cache installs a top-level
package named ``dogpile``, so it cannot share an environment with ours.
Nothing here imports our package; ``import dogpile`` is dogpile.cache's.

Every time is taken in this process next to a bare ``with lock:`` block
timed the same way, interleaved with it (harness.measure); compare.py
divides by that baseline, never compares absolute times across processes.
"""

import argparse
import contextlib
import json
import platform
import sys
import threading
import time
from typing import Any, Dict

try:
    import dogpile
    import dogpile.cache  # fails unless this is dogpile.cache's environment
    from dogpile.cache import make_region
    from dogpile.cache.region import CacheRegion
    from dogpile.util import NameRegistry
except ImportError as exc:
    sys.exit(f"peer.py must run where dogpile.cache is installed ({exc}); compare.py sets that up")

import cases
import harness


@contextlib.contextmanager
def registry_get() -> Any:
    """dogpile.cache's NameRegistry holding what a CacheRegion keeps per key
    (its ``_LockWrapper`` over a threading.Lock)."""
    registry = NameRegistry(lambda key: CacheRegion._LockWrapper())
    held = registry.get("key")  # alive for the whole case: every get is a hit

    def check() -> None:
        assert registry.get("key") is held, "NameRegistry.get made a new object"

    yield cases.Case(cases.REGISTRY_GET, {"registry": registry, "held": held}, check)


def timings(repeats: int, chunk_seconds: float) -> Dict[str, Any]:
    factories = {
        "bare_lock": cases.bare_lock,
        "lock": lambda: cases.lock_fresh(dogpile),
        "lock_stale": lambda: cases.lock_stale(dogpile),
        "lock_first": lambda: cases.lock_first_creation(dogpile),
        "registry_get": registry_get,
        "region_hit": lambda: cases.region_hit(make_region),
    }
    with contextlib.ExitStack() as stack:
        made = {name: stack.enter_context(make()) for name, make in factories.items()}
        loops = {name: harness.compile_loop(c.stmt, c.namespace) for name, c in made.items()}
        results = harness.measure(loops, repeats, chunk_seconds)
        for c in made.values():
            c.check()
    return results


def memory(keys: int) -> Dict[str, float]:
    store = {"key": ("value", time.time())}

    def value_and_created() -> Any:
        return store["key"]

    def creator() -> Any:
        return ("new", time.time())

    mutex = threading.Lock()
    lock_bytes = harness.allocated_per_item(
        lambda i: dogpile.Lock(mutex, creator, value_and_created, 3600.0), 10_000
    )
    names = [f"key-{i}" for i in range(keys)]
    registry = NameRegistry(lambda key: CacheRegion._LockWrapper())
    registry_bytes = harness.allocated_per_item(lambda i: registry.get(names[i]), keys)
    return {"lock_object": lock_bytes, "registry_per_key": registry_bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--chunk-seconds", type=float, required=True)
    parser.add_argument("--keys", type=int, required=True)
    args = parser.parse_args()
    result = {
        "dogpile.cache": dogpile.cache.__version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "times": timings(args.repeats, args.chunk_seconds),
        "memory": memory(args.keys),
    }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
