#!/usr/bin/env bash
# The suite on the newest CPythons, 3.14 and 3.15, which no pyenv or host
# package here provides: Debian sid's python3.14 and python3.15 in a sid
# root made with debootstrap, kept and reused between runs.
#
#   bash scripts/newest_pythons.sh            # 3.14 and 3.15
#   bash scripts/newest_pythons.sh 3.15       # one of them
#   bash scripts/newest_pythons.sh --shell    # a shell in the root, for a look
#   bash scripts/newest_pythons.sh --bench 3.14 [-- compare.py options]
#       instead of the suite: benchmarks/compare.py against that wheel,
#       with dogpile.cache in a venv of the same interpreter (docs/speed.md)
#
# For each version, failing at the first thing that is wrong (a missing
# interpreter is a failure, not a skip):
#   1. an sdist of this tree, built inside the root, then a wheel from that
#      sdist with DOGPILE_REQUIRE_EXTENSIONS=1 (the compiled core or a failed
#      build);
#   2. the whole suite, both implementations (the impl fixture), against
#      that wheel installed in a fresh venv, run with `python -s` from a copy
#      of the sdist's tests, with the Redis tests on a real redis-server
#      (sid's, started in the root on a free loopback port;
#      DOGPILE_REQUIRE_REDIS=1);
#   3. the main job, `python -m dogpile`, as .ci/run runs it.
#
# The root lives at /var/tmp/dogpile-sid-root/<hash of the package list>
# (DOGPILE_SID_ROOT overrides the directory): made once, in about a minute
# (debootstrap; needs root and Debian's package mirror), then reused; a
# changed package list makes a new one.  Making it is serialized by a lock
# file, so concurrent runs share one root.  Each run works in a directory of
# its own inside the root and removes it on exit; /proc, /dev and /dev/shm
# are bind-mounted in a private mount namespace (unshare), unmounted on exit
# and invisible to the rest of the machine meanwhile.  pip's cache stays in
# the root, so a second run fetches nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
MIRROR=${DOGPILE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# debootstrap's packages, then the ones apt-get adds inside the root.
BOOTSTRAP=(python3.14 python3.14-dev python3.14-venv gcc libc6-dev redis-server)
ADDED=(python3.15 python3.15-dev python3.15-venv)
key=$(printf '%s\n' "$MIRROR" "${BOOTSTRAP[@]}" -- "${ADDED[@]}" | sha256sum | cut -c1-16)
base=${DOGPILE_SID_ROOT:-/var/tmp/dogpile-sid-root}
root=$base/$key

say() { printf 'newest_pythons: %s\n' "$*"; }
fail() { printf 'newest_pythons: FAIL: %s\n' "$*" >&2; exit 1; }

# Commands inside the root: a clean environment, nothing of the caller's.
in_root() {
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# --- inside the private mount namespace (see the end of this file) --------
if [ "${1:-}" = "--in-namespace" ]; then
    shift
    run=$1
    shift
    mounted=()
    cleanup_mounts() {
        local i
        for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
            umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" || true
        done
    }
    trap cleanup_mounts EXIT
    for m in /proc /dev /dev/shm; do
        mount --bind "$m" "$root$m"
        mounted+=("$root$m")
    done
    if [ "${1:-}" = "--shell" ]; then
        in_root bash
        exit
    fi
    # Run with bash -e inside: every step's failure ends the run.
    in_root bash -euo pipefail "$run/inside.sh" "$run" "$@"
    exit
fi

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot and mount); run it as root"
shell=""
mode=test
case "${1:-}" in
    --shell) shell=1; shift ;;
    --bench) mode=bench; shift ;;
esac
versions=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do versions+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
compare_args=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.14 3.15)
self=$here/scripts/$(basename "$0")
started=$(date +%s)

# --- the root: made once per package list -----------------------------------
mkdir -p "$base"
exec 9>"$base/$key.lock"
flock 9
if [ ! -e "$root/.dogpile-root-complete" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap on the host"
        apt-get install -y -qq debootstrap >/dev/null 2>&1 || {
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        }
    fi
    new=$root.new
    rm -rf "$new"
    say "making a Debian sid root at $root (about a minute)"
    include=$(IFS=,; echo "${BOOTSTRAP[*]}")
    # In a private mount namespace: whatever debootstrap leaves mounted on
    # a failure goes away with it.
    unshare --mount --propagation private \
        debootstrap --variant=minbase --include="$include" sid "$new" "$MIRROR" \
        >"$base/$key.debootstrap.log" 2>&1 \
        || { tail -30 "$base/$key.debootstrap.log"; rm -rf "$new"; fail "debootstrap"; }
    cp /etc/resolv.conf "$new/etc/resolv.conf"
    unshare --mount --propagation private sh -c '
        new=$1 && shift &&
        mount --bind /proc "$new/proc" &&
        chroot "$new" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "$@"' sh "$new" "${ADDED[@]}" \
        >>"$base/$key.debootstrap.log" 2>&1 \
        || { tail -30 "$base/$key.debootstrap.log"; rm -rf "$new"; fail "apt-get install ${ADDED[*]} in the root"; }
    rm -rf "$new/var/cache/apt/archives/"*.deb
    printf '%s\n' "$MIRROR" "${BOOTSTRAP[@]}" "${ADDED[@]}" >"$new/.dogpile-root-complete"
    mv "$new" "$root"
    say "root made in $(($(date +%s) - started)) s"
fi
flock -u 9
exec 9>&-
# The host's resolver, for pip inside the root (the root shares the host's
# network).
cp /etc/resolv.conf "$root/etc/resolv.conf"

for v in "${versions[@]}"; do
    in_root sh -c "command -v python$v >/dev/null" \
        || fail "python$v is not in the root $root (a missing interpreter is a failure)"
done

# --- this run's directory inside the root, removed on exit -----------------
run=$(in_root mktemp -d /tmp/dogpile-run.XXXXXX)
redis_pid=""
cleanup() {
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "${root:?}$run"
}
trap cleanup EXIT
# The working tree as it is (committed or not), without what builds and
# virtual environments leave behind; the sdist made from it decides what
# ships.
tar -C "$here" --exclude=.git --exclude='.venv*' --exclude=.nox --exclude=build \
    --exclude=dist --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.so' \
    --exclude='src/dogpile/_core.c' -cf - . >"$root$run/source.tar"
mkdir "$root$run/source"
tar -C "$root$run/source" -xf "$root$run/source.tar"
rm "$root$run/source.tar"

if [ -n "$shell" ]; then
    unshare --mount --propagation private bash "$self" --in-namespace "$run" --shell
    exit
fi

# The certificates the host's pip trusts (a machine behind an intercepting
# proxy adds its CA there), for pip inside the root.
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ -f "$ca" ] && cp "$ca" "$root$run/host-ca.crt"

# A redis-server of the root's, on a free loopback port, without persistence.
port=$(in_root "python${versions[0]}" -c \
    'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
in_root redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --dir "$run" --logfile "$run/redis.log" --daemonize yes --pidfile "$run/redis.pid"
for _ in $(seq 100); do [ -s "$root$run/redis.pid" ] && break; sleep 0.05; done
redis_pid=$(cat "$root$run/redis.pid" 2>/dev/null) || fail "redis-server did not start"

cat >"$root$run/inside.sh" <<'INSIDE'
# Runs inside the root: inside.sh RUN_DIR REDIS_PORT test|bench VERSION... [-- COMPARE_ARGS]
run=$1 port=$2 mode=$3
shift 3
versions=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do versions+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
compare_args=("$@")
set -- "${versions[@]}"
export DOGPILE_REDIS_URL=redis://127.0.0.1:$port/0 DOGPILE_REQUIRE_REDIS=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if [ -f "$run/host-ca.crt" ]; then
    export PIP_CERT=$run/host-ca.crt SSL_CERT_FILE=$run/host-ca.crt
fi
unset DOGPILE_NO_EXTENSIONS DOGPILE_REQUIRE_EXTENSIONS
for _ in $(seq 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done

# One sdist, made with the first interpreter's build tools.
first=$1
"python$first" -m venv "$run/tools"
"$run/tools/bin/python" -m pip install --quiet build
"$run/tools/bin/python" -m build --sdist --outdir "$run/dist" "$run/source" >"$run/sdist.log" 2>&1 \
    || { cat "$run/sdist.log"; exit 1; }
sdist=$(ls "$run"/dist/*.tar.gz)
echo "newest_pythons: $(basename "$sdist") built in the root"

for v in "$@"; do
    python=python$v
    echo
    echo "newest_pythons: === CPython $("$python" -c 'import platform; print(platform.python_version())') (Debian sid's $python) ==="
    tree=$run/tree-$v
    mkdir -p "$tree"
    tar -xzf "$sdist" -C "$tree" --strip-components=1
    "$python" -m venv "$run/venv-$v"
    venv=$run/venv-$v/bin/python
    "$venv" -m pip install --quiet build
    DOGPILE_REQUIRE_EXTENSIONS=1 "$venv" -m build --wheel --outdir "$run/wheels-$v" "$tree" \
        >"$run/wheel-$v.log" 2>&1 || { cat "$run/wheel-$v.log"; exit 1; }
    wheel=$(ls "$run/wheels-$v"/*.whl)
    echo "newest_pythons: built $(basename "$wheel") from the sdist"
    if [ "$mode" = bench ]; then
        "$venv" -m pip install --quiet "$wheel[bench]"
        # From the sdist's tree: benchmarks/ is on the path, src/ is not
        # (src layout), so the installed wheel is what is timed.
        cp -r "$run/source/benchmarks" "$tree/"
        cd "$tree"
        "$venv" -s benchmarks/compare.py ${compare_args[@]+"${compare_args[@]}"}
        cd /
        continue
    fi
    "$venv" -m pip install --quiet "$wheel[test]"
    mkdir -p "$run/tests-$v"
    cp -r "$tree/tests" "$tree/pyproject.toml" "$run/tests-$v/"
    cd "$run/tests-$v"
    "$venv" -s -c '
import os, sys, dogpile
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(dogpile.__file__)
print(f"newest_pythons: dogpile {dogpile.__version__}, IMPLEMENTATION={dogpile.IMPLEMENTATION}, from {where}")
assert sys.version_info[:2] == tuple(map(int, sys.argv[2].split("."))), sys.version
assert where.startswith(venv + os.sep), f"dogpile imported from outside the venv: {where}"
assert dogpile.IMPLEMENTATION == "cython", "the compiled core did not import"
' "$run/venv-$v" "$v"
    "$venv" -s -m pytest -p no:cacheprovider -q --basetemp="$run/pytest-$v" tests
    # The main job, as .ci/run runs it (a short load).
    "$venv" -s -m dogpile --duration 0.5 --threads 8
    "$venv" -s -m dogpile --redis "$DOGPILE_REDIS_URL" --processes 2 --threads 4 --duration 0.5
    "$venv" -s -m dogpile --asyncio --threads 100 --duration 0.5
    cd /
done
INSIDE

unshare --mount --propagation private bash "$self" --in-namespace "$run" "$port" "$mode" \
    "${versions[@]}" -- ${compare_args[@]+"${compare_args[@]}"}
if [ "$mode" = test ]; then
    say "OK: ${versions[*]} passed in $(($(date +%s) - started)) s"
fi
