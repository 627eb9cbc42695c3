"""Stored responses and resumes shared by two replicas through Redis (``responses.store = "redis"``,
``streaming.resume_store = "redis"``): a response made on one is read, continued, resumed and
deleted on the other (docs/responses.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from loadtests.processes import GatewayProcess
from tests.helpers.fake_provider import DEFAULT_CONTENT, FakeProvider
from tests.helpers.responses_support import KEY_A, start_gateway

HELLO = "".join(DEFAULT_CONTENT)


@pytest.fixture(scope="module")
def replicas(fake_provider: FakeProvider, redis_url: str, tmp_path_factory: Any) -> Iterator[list[GatewayProcess]]:
    extra = f'[redis]\nurl = "{redis_url}"\n\n[responses]\nstore = "redis"\n\n'
    workdir = tmp_path_factory.mktemp("responses-redis")
    gateways: list[GatewayProcess] = []
    try:
        for name in ("replica-a", "replica-b"):
            gateways.append(
                start_gateway(workdir, fake_provider, extra=extra, streaming='resume_store = "redis"\n', name=name)
            )
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


def client(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=15)


def test_a_response_made_on_one_replica_serves_on_the_other(replicas: list[GatewayProcess], fake: FakeProvider) -> None:
    a, b = replicas
    with client(a) as on_a, client(b) as on_b:
        first = on_a.post("/v1/responses", json={"model": "normal", "input": "one"}).json()
        assert on_b.get(f"/v1/responses/{first['id']}").json()["output"][0]["content"][0]["text"] == HELLO
        second = on_b.post(
            "/v1/responses", json={"model": "normal", "input": "two", "previous_response_id": first["id"]}
        )
        assert second.status_code == 200, second.text
        assert [m["content"] for m in fake.requests[-1].body["messages"]] == ["one", HELLO, "two"]
        items = on_a.get(f"/v1/responses/{second.json()['id']}/input_items").json()
        assert [i["content"][0]["text"] for i in items["data"]] == ["two"]
        assert on_b.delete(f"/v1/responses/{first['id']}").json()["deleted"] is True
        assert on_a.get(f"/v1/responses/{first['id']}").status_code == 404
        gone = on_a.post("/v1/responses", json={"model": "normal", "input": "x", "previous_response_id": first["id"]})
        assert gone.status_code == 400 and gone.json()["error"]["code"] == "previous_response_not_found"


def test_a_stream_made_on_one_replica_resumes_on_the_other(replicas: list[GatewayProcess]) -> None:
    a, b = replicas
    with client(a) as on_a, client(b) as on_b:
        live = on_a.post("/v1/responses", json={"model": "normal", "input": "hi", "stream": True})
        rid = live.headers["x-response-id"]
        blocks = [x for x in live.text.split("\n\n") if x and not x.startswith(":")]
        replay = on_b.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": "2"})
        assert replay.status_code == 200, replay.text
        assert [x for x in replay.text.split("\n\n") if x and not x.startswith(":")] == blocks[3:]


def mget_calls(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url) as r:
        stats: dict[str, Any] = r.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


def test_a_long_chain_is_read_in_one_or_two_round_trips(
    replicas: list[GatewayProcess], fake: FakeProvider, redis_url: str
) -> None:
    """Continuing a chain made on both replicas: the replica that made the previous response knows
    the chain's links and reads it in one MGET; the other reads the previous response, then the rest
    of the chain it names, in a second. A deleted hop is still seen."""
    a, b = replicas
    ids: list[str] = []
    with client(a) as on_a, client(b) as on_b:
        for turn in range(6):
            body: dict[str, Any] = {"model": "normal", "input": f"turn {turn}"}
            if ids:
                body["previous_response_id"] = ids[-1]
            made = (on_a if turn % 2 else on_b).post("/v1/responses", json=body)
            assert made.status_code == 200, made.text
            ids.append(made.json()["id"])
        expected = [content for turn in range(6) for content in (f"turn {turn}", HELLO)] + ["last"]
        for on, round_trips in ((on_a, 1), (on_b, 2)):  # ids[-1] was made on a
            before = mget_calls(redis_url)
            body = {"model": "normal", "input": "last", "previous_response_id": ids[-1], "store": False}
            last = on.post("/v1/responses", json=body)
            assert last.status_code == 200, last.text
            assert mget_calls(redis_url) - before == round_trips
            assert [m["content"] for m in fake.requests[-1].body["messages"]] == expected

        assert on_b.delete(f"/v1/responses/{ids[2]}").json()["deleted"] is True
        gone = on_a.post("/v1/responses", json={"model": "normal", "input": "x", "previous_response_id": ids[-1]})
        assert gone.status_code == 400 and gone.json()["error"]["code"] == "previous_response_not_found"
        assert ids[2] in gone.json()["error"]["message"]
