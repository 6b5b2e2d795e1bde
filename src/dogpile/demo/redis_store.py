"""Redis for a ``--redis`` run: the client (or a one-line reason there is
none), the server check, and the cache and backend call count kept there so
that every process sees the same ones.
"""

import time
from typing import Any, Optional

from .model import DemoSetupError, Record

# Keys of a --redis run live under a prefix of their own, are deleted at the
# end, and expire by themselves if the demo is killed before that.
REDIS_KEY_TTL_SECONDS = 3600


class RedisBackend:
    """The same slow backend, its calls counted in Redis so that every
    process's calls add up in one place."""

    def __init__(self, client: Any, key: str, delay: float) -> None:
        self._client = client
        self._key = key
        self._delay = delay

    def fetch(self) -> int:
        pipe = self._client.pipeline()
        pipe.incr(self._key)
        pipe.expire(self._key, REDIS_KEY_TTL_SECONDS)
        answer = int(pipe.execute()[0])
        time.sleep(self._delay)
        return answer

    @property
    def calls(self) -> int:
        return int(self._client.get(self._key) or 0)


class RedisCache:
    """The cache as ``dict``-like ``get``/``[]=`` of Records over Redis keys,
    so the thread load's readers work unchanged on either."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def get(self, key: str) -> Optional[Record]:
        raw = self._client.get(self._prefix + key)
        if raw is None:
            return None
        data, created = raw.split()
        return Record(int(data), float(created))

    def __setitem__(self, key: str, record: Record) -> None:
        self._client.set(
            self._prefix + key, f"{record.data} {record.created!r}", ex=REDIS_KEY_TTL_SECONDS
        )


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise DemoSetupError(
            '--redis needs the redis client: pip install "dogpile[redis]"'
        ) from None
    return redis


def redis_client(url: str, **options: Any) -> Any:
    """A redis-py client for ``url``, or DemoSetupError saying why not."""
    redis = _import_redis()
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:  # not a redis://, rediss:// or unix:// URL
        raise DemoSetupError(f"--redis {_without_password(url)!r}: {exc}") from None


def _without_password(url: str) -> str:
    """``url`` fit to print: any password replaced by ``***``."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparsable URL>"


def check_server(url: str) -> str:
    """PING the server at ``url`` once, without the client's retries (a
    wrong address should fail in a moment); return its address."""
    _import_redis()
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry

    from ..mutexes._protocol import _server_address

    client = redis_client(
        url, socket_connect_timeout=5, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    address = _server_address(client)
    try:
        client.ping()
    except RedisError as exc:
        raise DemoSetupError(f"--redis: cannot use the Redis server at {address}: {exc}") from None
    finally:
        client.close()
    return address


def delete_run_keys(url: str, prefix: str) -> None:
    client = redis_client(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
