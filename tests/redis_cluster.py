"""A real Redis Cluster for the tests: never a mock.

Three masters (no replicas) from Debian's ``redis-server``, each on a free
loopback port with ``cluster-enabled yes``, its cluster config file in a
temporary directory and no persistence, joined by ``redis-cli --cluster
create``.  Started once per session by the first test that asks, and
stopped at its end.  Without ``redis-server`` or ``redis-cli`` on the PATH
(or without redis-py) the tests that need it skip, unless
``DOGPILE_REQUIRE_REDIS=1``, which makes that a failure, as
``redis_server`` does for the single server.
"""

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from redis_server import REQUIRE_VARIABLE, log_tail, spawn, stopper

MASTERS = 3
START_DEADLINE = 20.0

# ("ports": [...] or None, "why": reason when None), once per session
_cluster = {}


def _ephemeral_ports():
    """The range the kernel picks outgoing connections' local ports from."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default (macOS's starts higher)
    return low, high


def _node_port():
    """A port P on 127.0.0.1 where nothing listens, nor on P + 10000: a
    cluster node also listens on its port + 10000 (the cluster bus), so P
    must be at most 55535.  Both outside the ephemeral range where one can:
    a free port there may be taken by any outgoing connection (the suite's
    own clients, another process's) between this check and the node's
    bind, and the node then exits (EADDRINUSE)."""
    first, last = 10000, min(55535, _ephemeral_ports()[0] - 10000 - 1)
    if last - first < 1000:
        first, last = 20000, 55535  # no room below the range: any free pair
    for _ in range(200):
        port = random.randint(first, last)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports P, P + 10000 on 127.0.0.1")


def _cluster_state(port):
    """The ``cluster_state`` that CLUSTER INFO reports on ``port``, or None
    if the node does not answer."""
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1)
    try:
        return client.cluster("info").get("cluster_state")
    except redis.RedisError:
        return None
    finally:
        client.close()


def _start(config):
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        return None, "no redis-server or redis-cli on the PATH"
    workdir = tempfile.mkdtemp(prefix="dogpile-redis-cluster-")
    ports, procs = [], []
    config.add_cleanup(stopper(procs, workdir))

    def logs():
        return "\n".join(f"[{port}] " + log_tail(workdir, port, 300) for port in ports)

    for _ in range(MASTERS):
        port = _node_port()
        while port in ports:
            port = _node_port()
        ports.append(port)
        procs.append(
            spawn(
                server, port, workdir,
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(workdir, f"nodes-{port}.conf"),
                "--cluster-node-timeout", "5000",
            )
        )
    deadline = time.monotonic() + START_DEADLINE
    for port, proc in zip(ports, procs):
        while _cluster_state(port) is None:
            if proc.poll() is not None:
                return None, f"redis-server exited with status {proc.returncode}:\n{logs()}"
            if time.monotonic() > deadline:
                why = f"cluster node {port} did not answer in {START_DEADLINE:g} s"
                return None, f"{why}:\n{logs()}"
            time.sleep(0.02)  # polling for the node to come up, with a deadline
    try:
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_DEADLINE,
        )
    except subprocess.TimeoutExpired:
        return None, f"redis-cli --cluster create did not end in {START_DEADLINE:g} s"
    if created.returncode != 0:
        return None, f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
    # Every node must know every slot's owner before a client may route.
    while not all(_cluster_state(port) == "ok" for port in ports):
        if time.monotonic() > deadline:
            states = {port: _cluster_state(port) for port in ports}
            return None, f"cluster_state not ok on every node in {START_DEADLINE:g} s: {states}"
        time.sleep(0.02)
    return ports, None


def cluster_ports(config):
    """The ports of the session's cluster nodes; skips (or fails) without
    one."""
    if not _cluster:
        try:
            import redis.cluster  # noqa: F401
        except ImportError:
            _cluster["ports"] = None
            _cluster["why"] = 'the redis client is not installed (pip install ".[test]")'
        else:
            _cluster["ports"], _cluster["why"] = _start(config)
    if _cluster["ports"] is None:
        message = f"needs a Redis Cluster: {_cluster['why']}"
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{message} ({REQUIRE_VARIABLE}=1)")
        pytest.skip(message)
    return _cluster["ports"]


@pytest.fixture(scope="session")
def cluster_nodes(request):
    """The ports of a real 3-master Redis Cluster on 127.0.0.1."""
    return cluster_ports(request.config)


@pytest.fixture
def cluster_client(cluster_nodes):
    """A ``redis.cluster.RedisCluster`` client of the session's cluster."""
    from redis.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=cluster_nodes[0])
    yield client
    client.close()
