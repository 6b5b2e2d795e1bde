"""This project and dogpile.cache in one environment: every install order,
uninstall and upgrade, done with pip for real, and what each one gives.

    python scripts/dogpile_cache_installs.py WHEEL

WHEEL is this project's wheel; dogpile.cache comes from the package index.
Two fresh virtual environments, one sequence of pip commands in each; after
each command a child interpreter (warnings as errors) reports which
``dogpile/__init__.py`` is in effect, which Lock dogpile.cache's region uses
and whether it runs a get_or_create_multi, and whether this project imports.
Each state is checked against what docs/dogpile-cache.md says; any
difference fails the script.  (``nox -s dogpile_cache`` runs it.)
"""

import json
import os
import subprocess
import sys
import tempfile
import venv

# docs/dogpile-cache.md's one-line command, run in each state.
WHICH = (
    "import dogpile, dogpile.cache.region as r; "
    "print(dogpile.__file__, getattr(dogpile, 'IMPLEMENTATION', 'dogpile.cache'), r.Lock)"
)

PROBE = r"""
import json, warnings
warnings.simplefilter("error")
out = {}
try:
    import dogpile
    if hasattr(dogpile, "IMPLEMENTATION"):
        out["init"] = "ours"
    elif getattr(dogpile, "__file__", None) is None:
        out["init"] = "none"
    else:
        out["init"] = "dogpile.cache"
except Exception as exc:
    out["init"] = f"{type(exc).__name__}: {exc}"
try:
    from dogpile.cache import make_region, region
    out["region_lock"] = f"{region.Lock.__module__}.{region.Lock.__name__}"
    r = make_region().configure("dogpile.cache.memory")
    assert r.get_or_create_multi(["a", "b"], lambda *keys: [k * 2 for k in keys]) == ["aa", "bb"]
    assert r.get_or_create("c", lambda: "c1") == "c1"
    out["cache_works"] = True
except Exception as exc:
    out["cache_works"] = f"{type(exc).__name__}: {exc}"
try:
    import dogpile.mutexes
    from dogpile import Dogpile
    with Dogpile(60).acquire(lambda: "v") as value:
        assert value == "v"
    out["ours_works"] = True
except Exception as exc:
    out["ours_works"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

OURS = {"init": "ours", "region_lock": "dogpile._core.Lock", "cache_works": True,
        "ours_works": True}
THEIRS_OVER_OURS = {"init": "dogpile.cache", "region_lock": "dogpile.lock.Lock",
                    "cache_works": True, "ours_works": "DogpileCacheConflictWarning"}
NO_INIT = {"init": "none", "cache_works": "ImportError"}
OURS_ALONE = {"init": "ours", "cache_works": "ModuleNotFoundError", "ours_works": True}
THEIRS_ALONE = {"init": "dogpile.cache", "region_lock": "dogpile.lock.Lock",
                "cache_works": True, "ours_works": "ModuleNotFoundError"}


def main(wheel: str) -> int:
    wheel = os.path.abspath(wheel)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="dogpile-installs-") as tmp:
        sequences = {
            "cache first": [
                (["install", "dogpile.cache<1.5"], None),
                (["install", wheel], OURS),
                (["install", "--upgrade", "dogpile.cache"], THEIRS_OVER_OURS),
                (["install", "--force-reinstall", "--no-deps", wheel], OURS),
                (["uninstall", "-y", "dogpile"], NO_INIT),
                (["install", "--force-reinstall", "--no-deps", "dogpile.cache"], THEIRS_ALONE),
            ],
            "ours first": [
                (["install", wheel], None),
                (["install", "dogpile.cache"], THEIRS_OVER_OURS),
                (["install", "--force-reinstall", "--no-deps", wheel], OURS),
                (["uninstall", "-y", "dogpile.cache"],
                 {"init": "none", "cache_works": "ModuleNotFoundError",
                  "ours_works": "DogpileCacheConflictWarning"}),
                (["install", "--force-reinstall", "--no-deps", wheel], OURS_ALONE),
            ],
        }
        for name, steps in sequences.items():
            env_dir = os.path.join(tmp, name.replace(" ", "-"))
            venv.create(env_dir, with_pip=True)
            python = os.path.join(env_dir, "bin", "python")
            child_env = {k: v for k, v in os.environ.items()
                         if k not in ("DOGPILE_NO_EXTENSIONS", "PYTHONPATH")}
            for args, expected in steps:
                subprocess.run(
                    [python, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                    check=True, timeout=600, env=child_env, cwd=tmp,
                    stdout=subprocess.DEVNULL,
                )
                if expected is None:
                    continue
                probe = subprocess.run(
                    [python, "-c", PROBE], capture_output=True, text=True, timeout=120,
                    env=child_env, cwd=tmp, check=True,
                )
                got = json.loads(probe.stdout)
                which = subprocess.run(
                    [python, "-c", WHICH], capture_output=True, text=True, timeout=120,
                    env=child_env, cwd=tmp,
                )
                line = (which.stdout.strip() or which.stderr.strip().splitlines()[-1])
                ok = all(
                    got.get(key) == want
                    if isinstance(want, bool) or key in ("init", "region_lock")
                    else str(got.get(key, "")).startswith(want)
                    for key, want in expected.items()
                )
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name}: pip {' '.join(args[:-1])} "
                      f"{os.path.basename(args[-1])}")
                print(f"       {json.dumps(got)}")
                print(f"       which: {line.replace(env_dir, '<venv>')}")
    print(f"dogpile_cache_installs: {failures} failed" if failures else
          "dogpile_cache_installs: every state as documented")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
