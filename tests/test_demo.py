"""``python -m dogpile``, run the way a user runs it: in a subprocess, from a
directory that is not the source tree.

The demo runs whichever implementation ``import dogpile`` picks (or the
twin, with ``--pure``), so these tests do not take the ``impl`` fixture.
Assertions are on counts that the lock guarantees, never on timings.

The ``--redis URL --processes N`` runs use the test session's real Redis
server (see redis_server.py) and skip without one.
"""

import os
import subprocess
import sys

import pytest
import redis_server
from redis_server import free_port

import dogpile
from dogpile.demo import cli, model, tasks

# The session's Redis server, as fixtures of this module (see redis_server.py).
redis_url = redis_server.redis_url
redis_client = redis_server.redis_client

# These need the redis client but no server; without the client they skip,
# unless DOGPILE_REQUIRE_REDIS=1, as the tests that need a server do.
try:
    import redis as _redis_client_module  # noqa: F401
except ImportError:
    _HAVE_REDIS_CLIENT = False
else:
    _HAVE_REDIS_CLIENT = True
needs_redis_client = pytest.mark.skipif(
    not _HAVE_REDIS_CLIENT and os.environ.get("DOGPILE_REQUIRE_REDIS") != "1",
    reason='needs the redis client (pip install ".[test]")',
)

SMALL = ["--threads", "4", "--duration", "0.5", "--expire", "0.1", "--backend-ms", "20"]
OPTIONS = [
    "--threads", "--duration", "--expire", "--backend-ms", "--pure", "--redis", "--processes"
]


def run_demo(tmp_path, *args, env=None, timeout=30):
    """Run ``python -m dogpile`` against the same package this test imported
    (installed or from the source tree), from a neutral directory."""
    env = dict(os.environ if env is None else env)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(dogpile.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent, *filter(None, [env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "dogpile", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table_rows(stdout):
    """{run name: [reads, calls, calls/expiry, stale, p50, p99, max]}."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in ("unprotected", "dogpile") and len(cells) == 8:
            rows[cells[0]] = [float(cell) for cell in cells[1:]]
    return rows


@pytest.mark.parametrize("pure", [False, True], ids=["default", "pure"])
def test_dogpile_calls_the_backend_about_once_per_expiry(tmp_path, pure):
    env = dict(os.environ)
    if pure:
        # --pure alone must force the twin, even where the compiled core exists.
        env.pop("DOGPILE_NO_EXTENSIONS", None)
    result = run_demo(tmp_path, *SMALL, *(["--pure"] if pure else []), env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    header = result.stdout.splitlines()[0]
    assert "4 threads" in header
    if pure:
        assert "implementation python" in header

    rows = table_rows(result.stdout)
    assert set(rows) == {"unprotected", "dogpile"}, result.stdout
    unprotected, protected = rows["unprotected"], rows["dogpile"]
    # The lock lets one caller refresh per expiry, and each refresh starts
    # at least 0.1 s after the previous one ended, so however slow the
    # machine, calls per expiry stays under 0.1 / 0.12 plus the first
    # creation's share (about 1.03 here).
    assert protected[1] >= 1
    assert protected[2] <= 1.5
    # Unprotected, every expiry costs at least one call too.
    assert unprotected[1] >= protected[1]
    # Unprotected readers never hand out an expired value.
    assert unprotected[3] == 0


@pytest.mark.parametrize("pure", [False, True], ids=["default", "pure"])
def test_asyncio_tasks_call_the_backend_about_once_per_expiry(tmp_path, pure):
    """--asyncio: the same load with 100 tasks of one event loop through
    dogpile.aio.AsyncDogpile; a stampede unprotected, one call per expiry
    protected."""
    result = run_demo(tmp_path, *SMALL, "--threads", "100", "--asyncio",
                      *(["--pure"] if pure else []))
    assert result.returncode == 0, result.stderr
    assert "100 asyncio tasks" in result.stdout.splitlines()[0]
    rows = table_rows(result.stdout)
    assert set(rows) == {"unprotected", "dogpile"}, result.stdout
    assert rows["dogpile"][1] >= 1
    assert rows["dogpile"][2] <= 1.5
    assert rows["unprotected"][2] > 10 * rows["dogpile"][2]


def test_asyncio_does_not_combine_with_redis(tmp_path):
    result = run_demo(tmp_path, "--asyncio", "--redis", "redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert "--asyncio" in result.stderr and "Traceback" not in result.stderr


def test_default_run(tmp_path):
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"implementation {dogpile.IMPLEMENTATION}" in result.stdout
    assert "16 threads" in result.stdout
    assert set(table_rows(result.stdout)) == {"unprotected", "dogpile"}


def test_a_reader_gone_away_ends_the_run_without_a_traceback(tmp_path):
    """``python -m dogpile | head -1``: once stdout's reader has gone, the
    demo stops with status 1 and says nothing more (the pipe is closed
    before the demo starts, so its first line already fails)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(dogpile.__file__)))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dogpile", *SMALL],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=package_parent),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""


def test_help_explains_each_option(tmp_path):
    result = run_demo(tmp_path, "--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--threads", "0"],
        ["--threads", "x"],
        ["--threads", "2.5"],
        ["--duration", "-1"],
        ["--duration", "0"],
        ["--expire", "nan"],
        ["--backend-ms", "-5"],
        ["--no-such-option"],
        ["--processes", "0"],
        ["--processes", "65"],
        ["--processes", "2"],  # without --redis
        ["--redis"],
        ["--redis", "foo://host"],
        ["--redis", "redis://:secret@127.0.0.1:0/0"],
    ],
    ids=lambda args: " ".join(args),
)
def test_bad_values_get_one_line_and_status_2(tmp_path, args):
    result = run_demo(tmp_path, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]


def test_error_names_the_option_and_the_value(capsys):
    assert cli.main(["--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "0" in err


def test_the_runtime_does_not_load_the_demo(tmp_path):
    """The demo is a package of its own, loaded by ``python -m dogpile``
    only: importing the library's modules leaves it out."""
    script = (
        "import sys, dogpile, dogpile.aio, dogpile.mutexes\n"
        "print(sorted(m for m in sys.modules if m.startswith('dogpile.demo')))\n"
    )
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(dogpile.__file__)))
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=package_parent),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_percentile_is_nearest_rank():
    values = [float(i) for i in range(1, 101)]
    assert model.percentile(values, 50) == 50.0
    assert model.percentile(values, 99) == 99.0
    assert model.percentile(values, 100) == 100.0
    assert model.percentile([7.0], 99) == 7.0
    assert model.percentile([], 50) == 0.0


# -- across processes, through Redis --------------------------------------------------


def demo_keys(client):
    return set(client.scan_iter(match="dogpile-demo:*", count=1000))


def test_processes_sharing_redis_call_the_backend_about_once_per_expiry(
    tmp_path, redis_url, redis_client
):
    # The implementations each run across processes in test_cross_process;
    # this is the demo's own run, with the pure one (--pure must reach the
    # child processes).
    pure = True
    before = demo_keys(redis_client)
    env = dict(os.environ)
    env.pop("DOGPILE_NO_EXTENSIONS", None)
    args = ["--redis", redis_url, "--processes", "3", *SMALL, *(["--pure"] if pure else [])]
    result = run_demo(tmp_path, *args, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    header = result.stdout.splitlines()[0]
    assert "3 processes of 4 threads" in header
    assert f"implementation {'python' if pure else dogpile.IMPLEMENTATION}" in header
    address = redis_url.split("//", 1)[1]
    assert f"Redis at {address}" in result.stdout

    rows = table_rows(result.stdout)
    assert set(rows) == {"unprotected", "dogpile"}, result.stdout
    unprotected, protected = rows["unprotected"], rows["dogpile"]
    # One RedisMutex for all three processes: one refresh per expiry across
    # them all, as for threads in one process (see the test above for the
    # bound).  Twelve unprotected readers refresh for themselves.
    assert protected[1] >= 1
    assert protected[2] <= 1.5
    assert unprotected[1] >= protected[1]
    assert unprotected[3] == 0
    # Its keys are gone.
    assert demo_keys(redis_client) <= before


@needs_redis_client
def test_an_unreachable_redis_gets_one_line_naming_it_and_status_2(tmp_path):
    port = free_port()
    result = run_demo(tmp_path, "--redis", f"redis://127.0.0.1:{port}/0", "--processes", "2")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0]


@needs_redis_client
def test_a_password_in_a_bad_url_is_not_printed(capsys):
    assert cli.main(["--redis", "foo://user:hunter2@host"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "***" in err


def test_redis_without_the_client_says_which_extra_to_install(tmp_path):
    script = (
        "import sys; sys.modules['redis'] = None\n"
        "from dogpile.demo import main\n"
        "sys.exit(main(['--redis', 'redis://127.0.0.1:6379/0']))\n"
    )
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(dogpile.__file__)))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=package_parent),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'python -m dogpile: error: --redis needs the redis client: pip install "dogpile[redis]"'
    ]


# -- --asyncio, in this process --------------------------------------------------------


@pytest.mark.parametrize("pure", [False, True], ids=["default", "pure"])
def test_the_asyncio_demo_shows_one_backend_call_per_expiry(pure):
    config = model.Config(threads=64, duration=0.6, expire=0.1, backend_ms=20.0, pure=pure)
    unprotected, protected = tasks.run_tasks(config)
    assert (unprotected.name, protected.name) == ("unprotected", "dogpile")
    assert unprotected.reads > 0 and protected.reads > 0
    # Unprotected, every task that finds the value expired calls the backend.
    assert unprotected.backend_calls > 3 * protected.backend_calls
    assert protected.calls_per_expiry <= 1.5
    assert protected.stale > 0
    # Over the twin for --pure, over the core ``import dogpile`` chose otherwise.
    cls = tasks.async_dogpile_class(pure)
    expected = "python" if pure else dogpile.IMPLEMENTATION
    # (Identity, not __module__: the twin's rule is defined in dogpile._rules.)
    assert cls._is_expired is dogpile._load_core(expected)._is_expired
