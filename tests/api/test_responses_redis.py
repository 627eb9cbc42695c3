"""Stored responses and resumes shared by two replicas through Redis (``responses.store = "redis"``,
``streaming.resume_store = "redis"``): a response made on one is read, continued, resumed and
deleted on the other (docs/responses.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

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
