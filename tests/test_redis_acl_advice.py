"""The advice of the refusal's message, followed literally (review
findings): a lock name with glob characters gets a pattern that matches
it (Redis reads ACL key patterns as globs: the raw name + "*" did not
cover "app:lock[1]" itself), and a user refused a command, not a key, is
told which commands to allow instead of the key patterns that would not
help.  Real server, users made by ACL SETUSER.
"""

import asyncio
import re

import pytest
import redis_server
import test_redis_acl
from conftest import DEADLINE
from redis_server import aclose
from test_redis_acl import PASSWORD, as_user, make_user

from dogpile.mutexes import AsyncRedisMutex, RedisMutex

redis_url = redis_server.redis_url
redis_client = redis_server.redis_client
prefix = test_redis_acl.prefix  # a fixture of test_redis_acl's, used here too

redis = pytest.importorskip("redis")


def advised_pattern(message):
    found = re.search(r"ACL key pattern '(~\S*)'", message)
    assert found, message
    return found.group(1)


@pytest.mark.parametrize("front", ["sync", "asyncio"])
@pytest.mark.parametrize("tail", ["lock[1]", "lock*"])
def test_the_advised_pattern_covers_a_name_with_glob_characters(
    redis_url, redis_client, prefix, front, tail
):
    prefix, users = prefix
    name = prefix + tail
    user = make_user(redis_client, "~" + re.sub(r"([*?\[\]\\])", r"\\\1", name))
    users.append(user)

    def attempt():
        if front == "sync":
            return RedisMutex(as_user(redis_url, user), name, lease=10).acquire(False)

        async def main():
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(redis_url, username=user, password=PASSWORD)
            try:
                mutex = AsyncRedisMutex(client, name, lease=10)
                taken = await mutex.acquire(False)
                if taken:
                    await mutex.release()
                return taken
            finally:
                await aclose(client)

        return asyncio.run(asyncio.wait_for(main(), DEADLINE))

    with pytest.raises(redis.exceptions.ResponseError) as caught:
        attempt()
    assert not redis_client.exists(name)
    # Granted as the message says, and nothing more.
    redis_client.execute_command(
        "ACL", "SETUSER", user, "resetkeys", advised_pattern(str(caught.value))
    )
    assert attempt() is True


def test_a_refused_command_is_named_as_a_command(redis_url, redis_client, prefix):
    prefix, users = prefix
    name = prefix + "lock"
    user = make_user(redis_client, f"~{prefix}*")
    users.append(user)
    redis_client.execute_command("ACL", "SETUSER", user, "-eval")
    mutex = RedisMutex(as_user(redis_url, user), name, lease=10)
    with pytest.raises(redis.exceptions.ResponseError) as caught:
        mutex.acquire(False)
    message = str(caught.value)
    assert "+eval" in message and "ACL key pattern" not in message, message
    assert not redis_client.exists(name)


def test_a_command_refused_inside_the_release_script_is_named_and_nothing_is_held(
    redis_url, redis_client, prefix
):
    """RPUSH (the wake-up) refused: acquire() takes the key (its script
    runs SET first and returns), release() deletes it, then the script
    fails at the wake-up.  The caller is told which commands to allow,
    not left with the server's bare "can't run this command"."""
    prefix, users = prefix
    name = prefix + "lock"
    user = make_user(redis_client, f"~{prefix}*")
    users.append(user)
    redis_client.execute_command("ACL", "SETUSER", user, "-rpush")
    mutex = RedisMutex(as_user(redis_url, user), name, lease=10)
    assert mutex.acquire(False)
    with pytest.raises(redis.exceptions.ResponseError) as caught:
        mutex.release()
    message = str(caught.value)
    assert "refused release()" in message and "+rpush" in message, message
    assert not redis_client.exists(name)
    assert not mutex.locked()
