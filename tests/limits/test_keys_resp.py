"""The limiter's small Redis client: RESP replies split anywhere, errors as values, a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.redis.resp import _INCOMPLETE, ReplyError, RespClient, encode, parse
from tests.conftest import RedisServer

REPLY = b"*4\r\n$0\r\n\r\n:3\r\n$-1\r\n*2\r\n+OK\r\n-NOSCRIPT No matching script\r\n"


def test_parse_every_reply_kind_and_every_split() -> None:
    value, end = parse(bytearray(REPLY), 0)
    assert end == len(REPLY)
    assert value[:3] == [b"", 3, None]
    assert value[3][0] == b"OK" and isinstance(value[3][1], ReplyError)
    assert str(value[3][1]).startswith("NOSCRIPT")
    for cut in range(len(REPLY)):
        assert parse(bytearray(REPLY[:cut]), 0) == (_INCOMPLETE, 0)


def test_encode_is_resp_bulk_strings() -> None:
    assert encode(("SET", "k", 1, b"\x00")) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$1\r\n\x00\r\n"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def test_client_pipelines_selects_the_db_and_reconnects(redis: RedisServer) -> None:
    client = RespClient(redis.url, timeout_s=1)
    try:
        ok, value, error = await client.pipeline([("SET", "k", "v"), ("GET", "k"), ("INCR", "k")])
        assert (ok, value) == (b"OK", b"v")
        assert isinstance(error, ReplyError) and "not an integer" in str(error)  # a value, not a raise
        assert await client.call("GET", "k") == b"v"  # still in step after the error reply
        assert b"db=13" in await client.call("CLIENT", "INFO")
        redis.stop()
        with pytest.raises(OSError):
            await client.call("PING")
        redis.start()
        assert await client.call("PING") == b"PONG"  # a new connection after the old one was lost
    finally:
        await client.close()
