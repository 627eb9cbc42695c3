"""Two real `python -m app` replicas on one Redis: one shared limit, counted exactly under concurrent
load; a stream lease held by a replica that is killed lapses after the lease TTL (and not before, while
the replica lives); Redis going away is logged once per outage; no key text in either process's log."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from loadtests.processes import GatewayProcess
from tests.conftest import RedisServer
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body

CHAT = "/v1/chat/completions"
SHARED_KEY = "sk-shared-replicas-0123456789"
LEASE_KEY = "sk-lease-replicas-0123456789"
SHARED_RPM = 40
LEASE_TTL_S = 1.5


def replica_config(fake: FakeProvider, redis_url: str) -> str:
    deployments = "".join(
        f'[[models.deployments]]\nname = "{name}"\nlitellm_model = "openai/{name}"\napi_base = "{fake.base_url}"\n\n'
        for name in ("normal", "hang_after_headers")
    )
    return (
        f'[rate_limit]\nbackend = "redis"\nlease_ttl_s = {LEASE_TTL_S}\n\n'
        f'[redis]\nurl = "{redis_url}"\n\n'
        f'[[keys]]\nname = "shared"\nkey_env = "SHARED_KEY"\nrequests_per_minute = {SHARED_RPM}\n\n'
        '[[keys]]\nname = "lease"\nkey_env = "LEASE_KEY"\nconcurrent_streams = 1\n\n'
        f"{deployments}"
    )


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("replicas")
    redis = RedisServer().start()
    config = replica_config(fake_provider, redis.url)
    # Info: the test reads the request lines of their logs.
    env = {"SHARED_KEY": SHARED_KEY, "LEASE_KEY": LEASE_KEY, "CHAT_SERVER__LOG_LEVEL": "info"}
    pair = [GatewayProcess(tmp, config, env, name=f"replica{i}") for i in range(2)]
    try:
        for replica in pair:
            replica.wait_ready(90)
        yield pair, redis
    finally:
        for replica in pair:
            replica.stop()
        redis.stop()


def _wait_for_fresh_minute(margin_s: float = 10) -> None:
    """Limits count per clock minute: start a burst early in one so that it never spans two."""
    if time.time() % 60 > 60 - margin_s:
        time.sleep(61 - time.time() % 60)


def test_two_replicas_share_one_limit_exactly(replicas: Any) -> None:
    pair, _ = replicas
    attempts = 3 * SHARED_RPM
    headers = {"Authorization": f"Bearer {SHARED_KEY}"}

    async def burst() -> list[int]:
        clients = [httpx.AsyncClient(base_url=r.base_url, timeout=20) for r in pair]
        try:
            calls = [clients[i % 2].post(CHAT, json=chat_body("normal"), headers=headers) for i in range(attempts)]
            return [r.status_code for r in await asyncio.gather(*calls)]
        finally:
            for c in clients:
                await c.aclose()

    _wait_for_fresh_minute()
    statuses = asyncio.run(burst())
    assert statuses.count(200) == SHARED_RPM, statuses
    assert statuses.count(429) == attempts - SHARED_RPM
    refused = 0.0
    for replica in pair:
        for line in httpx.get(f"{replica.base_url}/metrics").text.splitlines():
            if line.startswith('chat_rate_limited_total{key="shared",reason="requests"}'):
                refused += float(line.split()[-1])
    assert refused == attempts - SHARED_RPM


def test_a_lease_outlives_its_keys_first_ttl_while_its_replica_lives(replicas: Any) -> None:
    """Admission gives a key's lease set a TTL (4 x lease_ttl_s + 1 = 7 s here); with no admission for
    longer than that, the refresher keeps the set alive with the running call's lease in it."""
    pair, _ = replicas
    holder, other = pair
    headers = {"Authorization": f"Bearer {LEASE_KEY}"}
    with httpx.Client(base_url=holder.base_url, timeout=20) as client:
        with client.stream("POST", CHAT, json=chat_body("hang_after_headers", stream=True), headers=headers) as sse:
            assert sse.status_code == 200
            time.sleep(int(LEASE_TTL_S * 4) + 1 + 2)
            refused = httpx.post(f"{other.base_url}{CHAT}", json=chat_body("normal"), headers=headers, timeout=10)
            assert refused.status_code == 429, "the running call's lease was gone: a second stream was admitted"
    deadline = time.monotonic() + 10
    while (
        httpx.post(f"{other.base_url}{CHAT}", json=chat_body("normal"), headers=headers, timeout=10).status_code != 200
    ):
        assert time.monotonic() < deadline, "the closed stream's lease was never released"
        time.sleep(0.1)


def test_lease_of_a_killed_replica_lapses_after_its_ttl(replicas: Any) -> None:
    pair, redis = replicas
    holder, other = pair
    headers = {"Authorization": f"Bearer {LEASE_KEY}"}
    with httpx.Client(base_url=holder.base_url, timeout=10) as client:
        with client.stream("POST", CHAT, json=chat_body("hang_after_headers", stream=True), headers=headers) as sse:
            assert sse.status_code == 200
            # Longer than the TTL: the live replica keeps its lease refreshed, so the other still refuses.
            time.sleep(LEASE_TTL_S * 1.5)
            refused = httpx.post(f"{other.base_url}{CHAT}", json=chat_body("normal"), headers=headers, timeout=10)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            holder.child.proc.send_signal(signal.SIGKILL)  # the replica dies holding the lease
            holder.child.proc.wait(10)
            killed_at = time.monotonic()
    while True:
        r = httpx.post(f"{other.base_url}{CHAT}", json=chat_body("normal"), headers=headers, timeout=10)
        if r.status_code == 200:
            break
        assert r.status_code == 429
        assert time.monotonic() - killed_at < LEASE_TTL_S + 3, "the dead replica's lease never lapsed"
        time.sleep(0.1)
    assert time.monotonic() - killed_at >= LEASE_TTL_S * 0.3  # not before the lease's time: it lapsed

    # Redis goes away: the surviving replica fails open, and says so once, not once per request.
    redis.stop()
    for _ in range(4):
        assert (
            httpx.post(f"{other.base_url}{CHAT}", json=chat_body("normal"), headers=headers, timeout=10).status_code
            == 200
        )
    ready = httpx.get(f"{other.base_url}/health/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["checks"]["rate_limit"] == "unavailable"
    other.stop()
    log = other.child.log.read_text()
    assert log.count("rate_limit_backend_unavailable") == 1, log
    assert '"key":"lease"' in log  # request lines name the key, by its configured name only
    for replica in pair:
        text = replica.child.log.read_text()
        assert SHARED_KEY not in text and LEASE_KEY not in text and SHARED_KEY[3:15] not in text
