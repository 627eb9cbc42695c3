"""/schema describes what the gateway really does, and its UI needs nothing from the internet.

The schemas are checked against live answers of a real gateway (JSON completion, SSE chunk, error
bodies) with jsonschema, so a description that drifts from the wire fails here.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from jsonschema import Draft202012Validator

from app.domain.chat_request import ChatRequest
from app.routes.models import SEARCH_PARAMS
from app.server.openapi import CHAT_ERRORS
from tests.conftest import ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT_PATHS = ("/v1/chat/completions", "/api/chat/completions")
HELLO = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def server(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    # One gateway for the module: the schema does not depend on the fast or full provider path.
    gateway = ServerThread(make_settings(fake_provider.base_url)).start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def doc(server: ServerThread) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/schema/openapi.json", timeout=10)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """Validate against ``schema`` with the document's components reachable for its $refs."""
    return Draft202012Validator({**schema, "components": doc["components"]})


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_version_is_the_project_version(doc: dict[str, Any]) -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert doc["info"]["version"] == project["version"]


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_chat_request_body_is_the_validating_struct(doc: dict[str, Any], path: str) -> None:
    body = doc["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {f.encode_name for f in msgspec.structs.fields(ChatRequest)}
    assert set(schema["required"]) == {"model", "messages"}
    assert schema["additionalProperties"] is True  # other OpenAI fields pass through
    check = validator(doc, schema)
    check.validate({"model": "demo", **HELLO, "seed": 7, "response_format": {"type": "text"}})
    assert not check.is_valid({"model": "demo", "messages": []})  # minItems 1, as the gateway enforces
    assert not check.is_valid({"model": "demo", **HELLO, "temperature": 3})


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_chat_responses_cover_json_sse_and_every_error(doc: dict[str, Any], path: str) -> None:
    responses = doc["paths"][path]["post"]["responses"]
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert responses["200"]["content"]["application/json"]["schema"] == component("ChatCompletion")
    for status in CHAT_ERRORS:
        content = responses[str(status)]["content"]["application/json"]
        assert content["schema"] == component("ErrorBody"), status
        assert responses[str(status)]["description"]


def test_live_answers_match_the_schemas(doc: dict[str, Any], server: ServerThread, fake: FakeProvider) -> None:
    ok = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    url = f"{server.base_url}/v1/chat/completions"

    answer = httpx.post(url, json={"model": "normal", **HELLO}, timeout=10)
    assert answer.status_code == 200
    validator(doc, ok["application/json"]["schema"]).validate(answer.json())

    chunks = validator(doc, ok["text/event-stream"]["schema"])
    with httpx.stream("POST", url, json={"model": "normal", "stream": True, **HELLO}, timeout=10) as stream:
        data = [line[6:] for line in stream.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert data
    for item in data:
        chunks.validate(json.loads(item))

    errors = validator(doc, component("ErrorBody"))
    unknown = httpx.post(url, json={"model": "no-such-model", **HELLO}, timeout=10)
    assert unknown.status_code == 404
    errors.validate(unknown.json())
    down = httpx.post(url, json={"model": "server_error", **HELLO}, timeout=10)
    assert str(down.status_code) in doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    errors.validate(down.json())


def test_search_parameters_are_the_ones_the_handler_accepts(doc: dict[str, Any]) -> None:
    operation = doc["paths"]["/api/models/search"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == SEARCH_PARAMS
    assert all(p["in"] == "query" and p["required"] is False for p in params.values())
    assert params["capability"]["schema"]["type"] == "array"
    assert params["min_context"]["schema"]["type"] == "integer"
    assert params["max_input_cost"]["schema"]["type"] == "number"
    assert operation["responses"]["400"]["content"]["application/json"]["schema"] == component("ErrorBody")


def test_swagger_ui_loads_only_from_the_gateway(server: ServerThread) -> None:
    page = httpx.get(f"{server.base_url}/schema/swagger", timeout=10)
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert assets, page.text[:500]
    assert not [a for a in assets if "//" in a], f"assets from elsewhere: {assets}"
    for asset in assets:
        response = httpx.get(f"{server.base_url}{asset}", timeout=10)
        assert response.status_code == 200, asset
        assert response.content, asset


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/", "text/html; charset=utf-8"), ("/metrics", "text/plain; version=0.0.4; charset=utf-8")],
)
def test_text_responses_name_their_charset_once(server: ServerThread, path: str, content_type: str) -> None:
    response = httpx.get(f"{server.base_url}{path}", timeout=10)
    assert response.headers.get_list("content-type") == [content_type]


def test_favicon_is_served(server: ServerThread) -> None:
    for path in ("/favicon.ico", "/static/favicon.svg"):
        response = httpx.get(f"{server.base_url}{path}", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/svg+xml"
        assert response.content.startswith(b"<svg")
