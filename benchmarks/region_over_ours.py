"""dogpile.cache's region over this project's Lock; prints one JSON object.

    python region_over_ours.py PEER_DOGPILE_DIR --repeats N --chunk-seconds S

Run by compare.py with this project's interpreter.  PEER_DOGPILE_DIR is the
``dogpile`` folder of compare.py's dogpile.cache environment: added to our
package's ``__path__`` (and its site-packages to the end of ``sys.path``,
for dogpile.cache's dependencies), it gives what installing dogpile.cache
first and this project over it gives: dogpile.cache's files under our
``dogpile/__init__.py``, its region on our ``Lock``, without a third
environment to build.  ``DOGPILE_NO_EXTENSIONS=1`` times the Python twin.
Times are taken next to a bare ``with lock:``, as in peer.py.
"""

import argparse
import contextlib
import json
import os
import sys

import dogpile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer_dogpile_dir")
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--chunk-seconds", type=float, required=True)
    args = parser.parse_args()
    if not hasattr(dogpile, "IMPLEMENTATION"):
        sys.exit(f"region_over_ours.py: {dogpile.__file__} is not this project's dogpile")
    dogpile.__path__.append(args.peer_dogpile_dir)
    sys.path.append(os.path.dirname(args.peer_dogpile_dir))
    from dogpile.cache import make_region, region

    if region.Lock is not dogpile.Lock:
        sys.exit(f"region_over_ours.py: dogpile.cache's region uses {region.Lock}, not ours")

    import cases
    import harness

    factories = {"bare_lock": cases.bare_lock, "region_hit": lambda: cases.region_hit(make_region)}
    with contextlib.ExitStack() as stack:
        made = {name: stack.enter_context(make()) for name, make in factories.items()}
        loops = {name: harness.compile_loop(c.stmt, c.namespace) for name, c in made.items()}
        times = harness.measure(loops, args.repeats, args.chunk_seconds)
        for c in made.values():
            c.check()
    json.dump({"implementation": dogpile.IMPLEMENTATION, "times": times}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
