"""Bad requests against the live gateway: every one gets the contract's error body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerThread
from tests.helpers.fake_provider import FakeProvider

CHAT = "/v1/chat/completions"
CHAT_PATHS = ["/v1/chat/completions", "/api/chat/completions"]
HELLO = "Hello, world! This is the fake provider."
#: conftest's settings_dict sets server.max_body_bytes to this.
MAX_BODY_BYTES = 65536


def chat_body(model: str = "normal", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def chat_bytes(model: str = "normal", **extra: Any) -> bytes:
    return json.dumps(chat_body(model, **extra)).encode()


def oversized_body() -> bytes:
    payload = chat_bytes(messages=[{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1024)}])
    assert len(payload) > MAX_BODY_BYTES
    return payload


def assert_error(
    response: httpx.Response,
    status: int,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """The exact error shape of docs/errors.md, plus the X-Request-ID every response must carry."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["type"] == type_, error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    assert response.headers.get("x-request-id"), f"no X-Request-ID on a {status} response"
    return error


def assert_completion(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == HELLO
    assert response.headers.get("x-request-id")


# ---- the body ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_non_json_body(client: httpx.AsyncClient, fake: FakeProvider, path: str) -> None:
    response = await client.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(response, 400, code="invalid_request")
    assert fake.calls() == 0


async def test_invalid_utf8_in_a_json_string(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    payload = b'{"model": "normal", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    response = await client.post(CHAT, content=payload, headers={"Content-Type": "application/json"})
    assert_error(response, 400, code="invalid_request")
    assert fake.calls() == 0


async def test_invalid_utf8_outside_strings(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, content=b"\xff\xfe{}", headers={"Content-Type": "application/json"})
    assert_error(response, 400, code="invalid_request")
    assert fake.calls() == 0


async def test_empty_body(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, content=b"", headers={"Content-Type": "application/json"})
    assert_error(response, 400)
    assert fake.calls() == 0


@pytest.mark.parametrize("payload", [[chat_body()], "normal", 42, None], ids=["array", "string", "number", "null"])
async def test_json_that_is_not_an_object(client: httpx.AsyncClient, fake: FakeProvider, payload: Any) -> None:
    response = await client.post(
        CHAT, content=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, code="invalid_request")
    assert fake.calls() == 0


async def test_stream_not_a_bool(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, json=chat_body(stream="yes"))
    assert_error(response, 400, code="stream", param="stream")
    assert fake.calls() == 0


async def test_empty_messages(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, json={"model": "normal", "messages": []})
    assert_error(response, 400, code="messages", param="messages")
    assert fake.calls() == 0


async def test_missing_messages(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, json={"model": "normal"})
    assert_error(response, 400, code="messages", param="messages")
    assert fake.calls() == 0


async def test_message_without_role(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, json={"model": "normal", "messages": [{"content": "hi"}]})
    error = assert_error(response, 400)
    assert str(error["param"]).startswith("messages[0]")
    assert fake.calls() == 0


async def test_message_without_role_names_the_field(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, json={"model": "normal", "messages": [{"content": "hi"}]})
    assert_error(response, 400, code="messages[0].role", param="messages[0].role")


async def test_missing_model(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    assert_error(response, 400, code="model", param="model")
    assert fake.calls() == 0


async def test_out_of_range_temperature(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, json=chat_body(temperature=5))
    assert_error(response, 400, param="temperature")
    assert fake.calls() == 0


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "text": ""}, "messages[0].content[1].image_url"),
        ({"type": "image_url", "image_url": {"detail": "low"}}, "messages[0].content[1].image_url"),
        ({"type": "text"}, "messages[0].content[1].text"),
        ({"type": "text", "text": 5}, "messages[0].content[1].text"),
        ({"type": "input_audio", "input_audio": "x"}, "messages[0].content[1].input_audio"),
        ({"type": "file"}, "messages[0].content[1].file"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_content_part_without_what_its_type_needs(
    client: httpx.AsyncClient, fake: FakeProvider, part: dict[str, Any], param: str, stream: bool
) -> None:
    """Found by fuzzing: ``{"type": "image_url"}`` without an ``image_url`` was a KeyError in
    LiteLLM's translation (a 502); OpenAI's own part types are checked for their member."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "see"}, part]}]
    response = await client.post(CHAT, json=chat_body(messages=messages, stream=stream))
    assert_error(response, 400, code=param, param=param)
    assert fake.calls() == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_content_part_of_a_type_litellm_does_not_take(
    client: httpx.AsyncClient, gateway: ServerThread, fake: FakeProvider, stream: bool
) -> None:
    """Found by fuzzing: LiteLLM refuses a user part of a type it does not know with a bare Exception
    (a 502). Through LiteLLM it is a 400 naming the part; the relay leaves the judgement to the provider."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "x"}]}]
    response = await client.post(CHAT, json=chat_body(messages=messages, stream=stream))
    if gateway.app.state.settings.models.deployments[1].fast_path:
        assert response.status_code == 200, response.text
        assert fake.calls() == 1
    else:
        assert_error(response, 400, code="unsupported_content", param="messages[0].content[1].type")
        assert fake.calls() == 0


# ---- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model(client: httpx.AsyncClient, fake: FakeProvider, stream: bool) -> None:
    response = await client.post(CHAT, json=chat_body("nope", stream=stream))
    assert_error(response, 404, code="model_not_found", param="model")
    assert fake.calls() == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_raw_provider_string_is_not_a_model(client: httpx.AsyncClient, fake: FakeProvider, stream: bool) -> None:
    response = await client.post(CHAT, json=chat_body("openai/gpt-4o-mini", stream=stream))
    assert_error(response, 404, code="model_not_found")
    assert fake.calls() == 0


async def test_litellm_model_string_of_a_configured_deployment_is_not_a_model(
    client: httpx.AsyncClient, fake: FakeProvider
) -> None:
    # `openai/normal` is what the `normal` deployment calls upstream; only the public name is served.
    response = await client.post(CHAT, json=chat_body("openai/normal"))
    assert_error(response, 404, code="model_not_found")
    assert fake.calls() == 0


# ---- size --------------------------------------------------------------------------------------


async def test_body_over_limit_with_content_length(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    payload = oversized_body()
    request = client.build_request("POST", CHAT, content=payload, headers={"Content-Type": "application/json"})
    assert request.headers["content-length"] == str(len(payload))
    response = await client.send(request)
    assert_error(response, 413, code="payload_too_large")
    assert fake.calls() == 0


async def test_body_over_limit_chunked(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    payload = oversized_body()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    request = client.build_request("POST", CHAT, content=pieces(), headers={"Content-Type": "application/json"})
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await client.send(request)
    assert_error(response, 413, code="payload_too_large")
    assert fake.calls() == 0


async def test_body_just_under_limit_is_accepted(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    filler = "x" * (MAX_BODY_BYTES - len(chat_bytes()) - 512)
    payload = chat_bytes(messages=[{"role": "user", "content": filler}])
    assert MAX_BODY_BYTES - 1024 < len(payload) <= MAX_BODY_BYTES
    response = await client.post(CHAT, content=payload, headers={"Content-Type": "application/json"})
    assert_completion(response)


async def test_chunked_body_under_limit_is_accepted(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    payload = chat_bytes()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    response = await client.post(CHAT, content=pieces(), headers={"Content-Type": "application/json"})
    assert_completion(response)


# ---- Content-Type --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "application/jsonx"],
)
async def test_unsupported_content_type(client: httpx.AsyncClient, fake: FakeProvider, content_type: str) -> None:
    response = await client.post(CHAT, content=chat_bytes(), headers={"Content-Type": content_type})
    assert_error(response, 415, code="unsupported_media_type")
    assert fake.calls() == 0


async def test_form_upload_is_unsupported(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, data={"model": "normal"})
    assert_error(response, 415, code="unsupported_media_type")
    response = await client.post(CHAT, files={"body": ("body.json", chat_bytes(), "application/json")})
    assert_error(response, 415, code="unsupported_media_type")
    assert fake.calls() == 0


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json"])
async def test_json_content_type_variants_accepted(
    client: httpx.AsyncClient, fake: FakeProvider, content_type: str
) -> None:
    response = await client.post(CHAT, content=chat_bytes(), headers={"Content-Type": content_type})
    assert_completion(response)
    assert fake.calls("normal") == 1


async def test_no_content_type_is_read_as_json(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    request = client.build_request("POST", CHAT, content=chat_bytes())
    assert "content-type" not in request.headers
    response = await client.send(request)
    assert_completion(response)


# ---- request ids, routes, operations -------------------------------------------------------------


async def test_client_request_id_is_echoed_on_errors(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, content=b"[]", headers={"X-Request-ID": "abc-123"})
    assert_error(response, 400)
    assert response.headers["x-request-id"] == "abc-123"


async def test_client_request_id_is_echoed_on_success(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    response = await client.post(CHAT, json=chat_body(), headers={"X-Request-ID": "abc-123"})
    assert_completion(response)
    assert response.headers["x-request-id"] == "abc-123"


async def test_request_ids_are_generated_and_distinct(client: httpx.AsyncClient) -> None:
    first = await client.post(CHAT, content=b"[]")
    second = await client.post(CHAT, content=b"[]")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_overlong_client_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, content=b"[]", headers={"X-Request-ID": "r" * 500})
    assert response.headers["x-request-id"]
    assert response.headers["x-request-id"] != "r" * 500


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("POST", "/v1/chat/completion", 404), ("DELETE", CHAT, 405)],
)
async def test_unroutable_requests_carry_request_id(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, headers={"X-Request-ID": "abc-123"})
    assert response.status_code == status
    assert response.headers.get("x-request-id") == "abc-123"


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("POST", "/v1/chat/completion"), ("GET", "/v2/models")])
async def test_unknown_route_is_404_in_error_shape(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert isinstance(body["error"]["message"], str)


async def test_wrong_method_is_405_in_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.delete(CHAT)
    assert response.status_code == 405
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "method_not_allowed"


async def test_health_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.headers.get("x-request-id")


async def test_health_ready(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert all(value == "ok" for value in body.get("checks", {}).values()), body


async def test_schema_is_openapi_with_the_chat_path(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema")
    assert response.status_code == 200
    document = response.json()
    assert "openapi" in document
    assert str(document["openapi"]).startswith("3.")
    assert "/v1/chat/completions" in document["paths"]
    assert "post" in document["paths"]["/v1/chat/completions"]


# ---- still alive ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_server_still_serves_after_bad_input(
    client: httpx.AsyncClient, fake: FakeProvider, gateway: ServerThread, path: str
) -> None:
    response = await client.post(path, json=chat_body())
    assert_completion(response)
    async with client.stream("POST", path, json=chat_body(stream=True)) as stream:
        assert stream.status_code == 200
        text = await stream.aread()
    assert b"data: [DONE]" in text
    assert fake.calls("normal") == 2
    assert (await client.get("/health/live")).status_code == 200


# ---- the Responses API's fields where a string belongs ---------------------------------------------

RESPONSES = "/v1/responses"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": [{"role": ["user"], "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": {"a": 1}, "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": {}}]}, "input[0].type"),
        ({"input": [{"type": ["reasoning"]}]}, "input[0].type"),
        ({"tools": [{"type": ["function"]}]}, "tools[0].type"),
        ({"reasoning": {"effort": ["low"]}}, "reasoning.effort"),
    ],
)
async def test_responses_unhashable_values_are_400_naming_the_field(
    client: httpx.AsyncClient, fake: FakeProvider, extra: dict[str, Any], param: str
) -> None:
    """A list or an object where the API wants a name (a role, a type, an effort) is the client's 400,
    not a failed set lookup's 500."""
    body = {"model": "normal", "input": "hi", **extra}
    response = await client.post(RESPONSES, json=body)
    assert_error(response, 400, param=param)
    assert fake.calls() == 0


async def test_responses_a_message_item_typed_null_is_sent(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    """``"type": null`` with a role reads as a message in the check and in the translation alike."""
    body = {"model": "normal", "input": [{"type": None, "role": "user", "content": "typed null"}], "stream": False}
    response = await client.post(RESPONSES, json=body)
    assert response.status_code == 200, response.text
    sent = fake.requests[-1].body["messages"]
    assert sent[-1] == {"role": "user", "content": "typed null"}


async def test_responses_background_without_store_is_refused(client: httpx.AsyncClient, fake: FakeProvider) -> None:
    """A background response that is not stored could be neither read nor cancelled: refused, nothing runs."""
    for stream in (False, True):
        body = {"model": "normal", "input": "hi", "background": True, "store": False, "stream": stream}
        assert_error(await client.post(RESPONSES, json=body), 400, code="unsupported_parameter", param="store")
    assert fake.calls() == 0


async def test_responses_resume_of_an_unknown_response_is_404_whatever_its_position(client: httpx.AsyncClient) -> None:
    """Ownership before the position (as chat's resume): a malformed Last-Event-ID on a response that
    is not the caller's says nothing about it."""
    for headers in ({"Last-Event-ID": "garbage"}, {"Last-Event-ID": "resp_nope:3"}, {}):
        r = await client.get(f"{RESPONSES}/resp_nope", params={"stream": "true"}, headers=headers)
        assert_error(r, 404, code="response_not_found")
