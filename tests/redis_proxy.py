"""A real TCP proxy in front of the real Redis server, for the tests of
lost replies and commands in flight: the client under test talks to the
proxy, and the proxy can hold back or drop what passes for one command.

It works in lockstep per connection (one command to the server, its reply
back), which is how redis-py talks to a server outside pipelines; commands
a client sends in one go are still answered one by one, in order.
"""

import socket
import threading
from urllib.parse import urlparse

from conftest import DEADLINE


def _read_line(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise EOFError
    return line


def _read_value(reader):
    """One RESP value, as the raw bytes that carried it."""
    line = _read_line(reader)
    kind = line[:1]
    if kind in (b"+", b"-", b":", b"_", b",", b"#", b"("):
        return line
    if kind in (b"$", b"=", b"!"):
        size = int(line[1:-2])
        if size < 0:
            return line
        body = reader.read(size + 2)
        if len(body) != size + 2:
            raise EOFError
        return line + body
    if kind in (b"*", b"~", b">", b"%", b"|"):
        count = int(line[1:-2])
        if kind in (b"%", b"|"):
            count *= 2
        parts = [line]
        for _ in range(max(count, 0)):
            parts.append(_read_value(reader))
        return b"".join(parts)
    raise ValueError(f"not RESP: {line!r}")


def _command_args(raw):
    """The arguments of a command sent as an array of bulk strings."""
    args = []
    lines = raw.split(b"\r\n")
    i = 1
    while i < len(lines) - 1:
        if lines[i].startswith(b"$"):
            args.append(lines[i + 1])
            i += 2
        else:
            i += 1
    return args


class Rule:
    """What to do with the first ``times`` commands (after ``skip``) for
    which ``match(args)`` is true: ``"drop-reply"`` (the server runs it, the client never hears
    back) or ``"hold-command"`` (the server does not see it until
    ``release()``, and never if the client hangs up first)."""

    def __init__(self, match, action, times=1, skip=0):
        assert action in ("drop-reply", "hold-command")
        self.match = match
        self.action = action
        self.skip = skip  # matching commands let through before it acts
        self.left = times
        self.seen = 0  # every matching command, acted on or not
        self.acted = threading.Event()  # set once the first one was acted on
        self.released = threading.Event()
        self.on_act = None  # called (in the proxy's thread) when it acts

    def release(self):
        self.released.set()


class Proxy:
    def __init__(self, host, port, rules=()):
        self.target = (host, port)
        self.rules = list(rules)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.sockets = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _rule_for(self, args):
        with self.lock:
            for rule in self.rules:
                if rule.match(args):
                    rule.seen += 1
                    if rule.seen > rule.skip and rule.left > 0:
                        rule.left -= 1
                        return rule
                    return None
        return None

    def _serve(self, client):
        server = socket.create_connection(self.target, timeout=DEADLINE)
        with self.lock:
            self.sockets += [client, server]
        client_in = client.makefile("rb")
        server_in = server.makefile("rb")
        try:
            while True:
                command = _read_value(client_in)
                rule = self._rule_for(_command_args(command))
                if rule is not None and rule.action == "hold-command":
                    if rule.on_act is not None:
                        rule.on_act()
                    rule.acted.set()
                    # Forwarded only once released, and only if the client
                    # is still there to hear the reply.
                    while not rule.released.wait(0.01):
                        if _hung_up(client):
                            return
                server.sendall(command)
                reply = _read_value(server_in)
                if rule is not None and rule.action == "drop-reply":
                    if rule.on_act is not None:
                        rule.on_act()
                    rule.acted.set()
                    continue
                client.sendall(reply)
        except (EOFError, OSError, ValueError):
            return
        finally:
            for sock in (client, server):
                try:
                    sock.close()
                except OSError:
                    pass

    def add(self, rule):
        with self.lock:
            self.rules.append(rule)
        return rule

    def close(self):
        self.closed = True
        self.listener.close()
        with self.lock:
            for rule in self.rules:
                rule.release()
            for sock in self.sockets:
                try:
                    sock.close()
                except OSError:
                    pass


def _hung_up(sock):
    """Has the peer closed ``sock``?  (Nothing else is expected on it while
    a command is held.)"""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def is_eval_of(fragment):
    """A matcher: EVAL of a script containing ``fragment`` (bytes)."""

    def match(args):
        return bool(args) and args[0].upper() == b"EVAL" and fragment in args[1]

    return match


def proxy_for(url):
    """A Proxy in front of the server at ``url`` (redis://host:port/db)."""
    parts = urlparse(url)
    return Proxy(parts.hostname, parts.port)


def resending(**kwargs):
    """Client options under which redis-py resends a command whose reply
    timed out: its default from 6.0; ``retry_on_timeout`` before (and
    deprecated after)."""
    import redis

    if int(redis.__version__.split(".")[0]) < 6:
        kwargs["retry_on_timeout"] = True
    return kwargs
