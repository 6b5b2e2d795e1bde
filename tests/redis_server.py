"""A real Redis server for the tests: never a mock.

Where it comes from, in order:

1. ``DOGPILE_REDIS_URL`` (``.ci/run`` starts a server and sets it);
2. a ``redis-server`` on the PATH, started here on a free loopback port for
   the whole session (no persistence) and stopped at its end;
3. none: the tests that need one skip, unless ``DOGPILE_REQUIRE_REDIS=1``,
   which makes a missing server (or a missing redis client) a failure.

The test modules import the ``redis_url`` and ``redis_client`` fixtures from
here.  Each module then has fixtures of its own, so the server itself is
kept in this module and started once per session whichever module asks
first.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

URL_VARIABLE = "DOGPILE_REDIS_URL"
REQUIRE_VARIABLE = "DOGPILE_REQUIRE_REDIS"
START_DEADLINE = 10.0

# (url or None, reason when None), once per session
_server = {}


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ping(url):
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return client.ping()
    except redis.RedisError:
        return False
    finally:
        client.close()


def spawn(executable, port, workdir, *options):
    """A ``redis-server`` on 127.0.0.1:``port`` without persistence, its
    log in ``workdir/<port>.log``; ``options`` are more of its flags."""
    return subprocess.Popen(
        [
            executable,
            "--bind", "127.0.0.1",
            "--port", str(port),
            *options,
            "--save", "",
            "--appendonly", "no",
            "--dir", workdir,
            "--logfile", log_path(workdir, port),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def log_path(workdir, port):
    return os.path.join(workdir, f"{port}.log")


def log_tail(workdir, port, size):
    try:
        with open(log_path(workdir, port), errors="replace") as log:
            return log.read()[-size:]
    except OSError:
        return ""


def stopper(procs, workdir):
    """A clean-up that stops ``procs`` (killed if one ignores SIGTERM for
    START_DEADLINE) and removes ``workdir``."""

    def stop():
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(START_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(START_DEADLINE)
        shutil.rmtree(workdir, ignore_errors=True)

    return stop


def _start(config):
    executable = shutil.which("redis-server")
    if executable is None:
        return None, f"no {URL_VARIABLE} and no redis-server on the PATH"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="dogpile-redis-")
    proc = spawn(executable, port, workdir)
    config.add_cleanup(stopper([proc], workdir))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_tail(workdir, port, 500)
            return None, f"redis-server exited with status {proc.returncode}: {tail}"
        if _ping(url):
            return url, None
        time.sleep(0.02)  # polling for the server to come up, with a deadline
    return None, f"redis-server on port {port} did not answer within {START_DEADLINE:g} s"


def server_url(config):
    """The URL of the session's server; skips (or fails) without one."""
    if not _server:
        try:
            import redis  # noqa: F401
        except ImportError:
            _server["url"] = None
            _server["why"] = 'the redis client is not installed (pip install ".[test]")'
        else:
            url = os.environ.get(URL_VARIABLE)
            if url:
                if _ping(url):
                    _server["url"], _server["why"] = url, None
                else:
                    # Set on purpose and unreachable: always a failure.
                    _server["url"] = None
                    _server["why"] = f"{URL_VARIABLE}={url} does not answer PING"
                    _server["fatal"] = True
            else:
                _server["url"], _server["why"] = _start(config)
    if _server["url"] is None:
        message = f"needs a Redis server: {_server['why']}"
        if _server.get("fatal"):
            pytest.fail(message)
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{message} ({REQUIRE_VARIABLE}=1)")
        pytest.skip(message)
    return _server["url"]


@pytest.fixture(scope="session")
def redis_url(request):
    """The URL of a real Redis server for this session."""
    return server_url(request.config)


@pytest.fixture
def redis_client(redis_url):
    """A client of the session's server.  Tests name their keys with
    ``unique_key()`` and leave the database to anyone else sharing it."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


async def aclose(client):
    """Close a redis.asyncio client (``aclose`` from redis-py 5.0.1) and its
    pool's connections (which ``close()`` before 4.5 left open, to be
    collected after their loop had closed, in another test)."""
    close = getattr(client, "aclose", None) or client.close
    await close()
    await client.connection_pool.disconnect()


def unique_key(label):
    """A key no other test (or run) uses."""
    return f"dogpile-test:{label}:{uuid.uuid4().hex}"


def delete_keys(client, prefix):
    """Remove every key under ``prefix`` (a test's own keys)."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
