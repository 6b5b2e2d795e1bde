"""dogpile under a type checker: ``mypy --strict examples/typed_usage.py``.

Runs as a script too (``python examples/typed_usage.py``).  The classes are
typed by the pure-Python twin, whichever implementation ``import dogpile``
picked (``dogpile._core.pyi`` re-exports the twin's types for the compiled
core).
"""

import threading
import time
from typing import Dict, Tuple

import dogpile
from dogpile import (
    Dogpile,
    Lock,
    NameRegistry,
    NeedRegenerationException,
    ReadWriteMutex,
    SyncReaderDogpile,
)

# --- Dogpile, the value kept in the Dogpile ---------------------------------

report_lock = Dogpile(expiretime=60)


def load_report() -> str:
    return f"report built at {time.time():.0f}"


def get_report() -> str:
    with report_lock.acquire(load_report) as report:
        # The `as` target is whatever the creator returned: say what it is.
        result: str = report
    return result


# --- Dogpile over your own cache, with its creation time ---------------------

store: Dict[str, Tuple[int, float]] = {}
counter_lock = Dogpile(expiretime=1.5)


def read_counter() -> Tuple[int, float]:
    try:
        return store["counter"]
    except KeyError:
        raise NeedRegenerationException() from None


def make_counter() -> Tuple[int, float]:
    value = store.get("counter", (0, 0.0))[0] + 1
    store["counter"] = (value, time.time())
    return store["counter"]


def get_counter() -> int:
    with counter_lock.acquire(make_counter, value_and_created_fn=read_counter) as value:
        counter: int = value
    return counter


# --- The dogpile.cache / dogpile.core Lock -----------------------------------

mutex = threading.Lock()


def cached_lookup() -> int:
    with Lock(mutex, make_counter, read_counter, 1.5) as value:
        result: int = value
    return result


# --- NameRegistry, ReadWriteMutex, SyncReaderDogpile ------------------------


class Connection:
    def __init__(self, name: str) -> None:
        self.name = name


connections = NameRegistry(Connection)
rw = ReadWriteMutex()
shared: Dict[str, int] = {}
shared_lock = SyncReaderDogpile(expiretime=None)


def connection(name: str) -> Connection:
    conn: Connection = connections.get(name)
    return conn


def write_shared(key: str, value: int) -> None:
    with shared_lock.acquire_write_lock():
        shared[key] = value


def read_shared(key: str) -> int:
    rw.acquire_read_lock()
    try:
        return shared.get(key, 0)
    finally:
        rw.release_read_lock()


def main() -> None:
    print(f"dogpile {dogpile.__version__} ({dogpile.IMPLEMENTATION})")
    print(get_report())
    print("counter", get_counter(), get_counter(), cached_lookup())
    a = connection("db")
    assert connection("db") is a
    write_shared("x", 1)
    print("shared x =", read_shared("x"))


if __name__ == "__main__":
    main()
