"""The limiter's small Redis client: RESP replies split anywhere, errors as values, a real Redis."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Iterator
from typing import Any

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


async def test_a_connect_that_times_out_after_its_callers_leaves_nothing_unretrieved() -> None:
    # A Redis that accepts the connection and never answers its AUTH: the caller's own timeout and
    # the connect's end at the same moment. The caller gets TimeoutError; the connect's own failure,
    # which nobody awaits any more, must not be reported as "Task exception was never retrieved"
    # (one traceback in the log per attempt, for as long as Redis hangs).
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))

    async def calls() -> None:
        client = RespClient(f"redis://:secret@127.0.0.1:{port}", timeout_s=0.05)
        try:
            for _ in range(3):
                with pytest.raises(TimeoutError):
                    await client.call("PING")
            await asyncio.sleep(0.1)  # every connect attempt has ended by now
        finally:
            await client.close()

    try:
        await calls()
        gc.collect()  # the client and its connect tasks are gone: the collector reports what they held
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
        silent.close()
    assert [c.get("message") for c in reported] == []


async def test_a_connection_whose_reply_is_overdue_is_replaced() -> None:
    # A Redis that went away without a word (a failover to another address, a flow dropped on the
    # way): the first connection is accepted and never answered, as a dead peer's would be until the
    # kernel gives up on it; a new connection reaches a Redis that answers. Kept, the first would make
    # every command time out for a quarter of an hour, the breaker's probe included.
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        silent = connections == 1
        try:
            while data := await reader.read(4096):
                if not silent:
                    writer.write(b"+PONG\r\n" * data.count(b"PING"))
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(f"redis://127.0.0.1:{port}", timeout_s=0.2)
    try:
        with pytest.raises(TimeoutError):
            await client.call("PING")
        await asyncio.sleep(0.05)  # the unanswered PING is now owed for longer than the bound
        assert await client.call("PING") == b"PONG"
        assert connections == 2
        assert await client.pipeline([("PING",), ("PING",)]) == [b"PONG", b"PONG"]
        assert connections == 2  # an answering connection is kept
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_a_reply_late_within_the_bound_keeps_the_connection(redis: RedisServer) -> None:
    # A slow reply (a busy Redis) that its caller gave up on but that comes within the bound does not
    # cost the connection: only one owed for longer than any caller waits does.
    client = RespClient(redis.url, timeout_s=1)
    try:
        assert await client.call("PING") == b"PONG"
        first = await client.call("CLIENT", "ID")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.call("BLPOP", "nothing-here", "0.2")  # the caller leaves; the reply comes later
        assert await client.call("CLIENT", "ID") == first  # the same connection, the replies in step
    finally:
        await client.close()
