"""The Responses API (docs/responses.md) through the official openai SDK, against a real ``python -m app``
in front of the fake provider speaking chat completions: what is tested is the translation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from loadtests.processes import GatewayProcess
from tests.conftest import wait_until
from tests.helpers.fake_provider import DEFAULT_CONTENT, TOOL_NAME, FakeProvider
from tests.helpers.responses_support import (
    KEY_A,
    KEY_B,
    sse_events,
    start_gateway,
    valid_event,
    valid_item,
    valid_response,
)

HELLO = "".join(DEFAULT_CONTENT)
WEATHER = {
    "type": "function",
    "name": TOOL_NAME,
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module", params=["fast", "full"])
def gw(request: pytest.FixtureRequest, fake_provider: FakeProvider, tmp_path_factory: Any) -> Iterator[GatewayProcess]:
    """The relay fast path and the full LiteLLM path must translate the same."""
    gateway = start_gateway(tmp_path_factory.mktemp("responses"), fake_provider, fast_path=request.param == "fast")
    yield gateway
    gateway.stop()


@pytest.fixture
async def sdk(gw: GatewayProcess, fake: FakeProvider) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=KEY_A, max_retries=0, timeout=15) as client:
        yield client


@pytest.fixture
async def http(gw: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=15) as client:
        yield client


# ---- create: JSON and SSE ------------------------------------------------------------------------


async def test_create_returns_a_valid_response(sdk: AsyncOpenAI, http: httpx.AsyncClient) -> None:
    response = await sdk.responses.create(model="normal", input="hi", instructions="Be brief.", metadata={"k": "v"})
    assert response.output_text == HELLO
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.model == "normal"
    assert response.instructions == "Be brief."
    assert response.metadata == {"k": "v"}
    assert response.usage is not None and response.usage.output_tokens == len(DEFAULT_CONTENT)
    assert response.usage.input_tokens_details.cached_tokens == 0
    raw = await http.post("/v1/responses", json={"model": "normal", "input": "hi"})
    assert valid_response(raw.json()).output_text == HELLO


async def test_the_provider_gets_a_chat_request(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    await sdk.responses.create(
        model="normal",
        instructions="system words",
        input=[
            {"role": "developer", "content": "dev words"},
            {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                         {"type": "input_image", "image_url": "https://example.com/a.png"}]},
        ],
        max_output_tokens=50,
        temperature=0.5,
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}},
        reasoning={"effort": "low", "summary": "auto"},
        user="u1",
    )  # fmt: skip
    body = fake.requests[-1].body
    assert body["messages"][0] == {"role": "system", "content": "system words"}
    assert body["messages"][1] == {"role": "system", "content": "dev words"}
    assert body["messages"][2]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    assert body["max_tokens"] == 50
    assert body["temperature"] == 0.5
    assert body["response_format"]["json_schema"]["name"] == "answer"
    assert body["reasoning_effort"] == "low"


async def test_stream_events_in_openai_order(sdk: AsyncOpenAI) -> None:
    stream = await sdk.responses.create(model="normal", input="hi", stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == HELLO
    for event in events:
        valid_event(event.model_dump(mode="json", exclude_unset=True))
    final = events[-1]
    assert final.type == "response.completed" and final.response.output_text == HELLO


async def test_stream_helper_returns_the_function_call(sdk: AsyncOpenAI) -> None:
    async with sdk.responses.stream(
        model="tools", input="weather in Paris?", tools=[WEATHER, {"type": "web_search"}]
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call"
    assert call.name == TOOL_NAME
    assert call.arguments == '{"city": "Paris"}'
    assert call.call_id.startswith("call_fake_")


async def test_sse_framing_and_omitted_tools(http: httpx.AsyncClient) -> None:
    body = {"model": "tools", "input": "weather?", "stream": True, "tools": [WEATHER, {"type": "web_search"}]}
    answer = await http.post("/v1/responses", json=body)
    assert answer.status_code == 200
    assert answer.headers["x-gateway-omitted-tools"] == "web_search"
    events = sse_events(answer.text)
    rid = events[0][2]["response"]["id"]
    assert answer.headers["x-response-id"] == rid
    for kind, event_id, data in events:
        assert kind == data["type"]
        assert event_id == f"{rid}:{data['sequence_number']}"
        valid_event(data)
    assert "[DONE]" not in answer.text
    assert [d["type"] for _, _, d in events if "function_call_arguments" in d["type"]][-1] == (
        "response.function_call_arguments.done"
    )


async def test_reasoning_comes_back_as_a_reasoning_item(sdk: AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="reasoning", input="think")
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "Let me think."
    assert response.output_text == "The answer."


# ---- stored responses ----------------------------------------------------------------------------


async def test_retrieve_delete_and_input_items(sdk: AsyncOpenAI, http: httpx.AsyncClient) -> None:
    items: Any = [{"role": "user", "content": f"message {i}"} for i in range(4)]
    items.append({"role": "assistant", "content": [{"type": "output_text", "text": "message 4"}]})
    created = await sdk.responses.create(model="normal", input=items)
    again = await sdk.responses.retrieve(created.id)
    assert again.output_text == HELLO and again.id == created.id
    page = await sdk.responses.input_items.list(created.id, limit=2, order="asc")
    assert [item.content[0].text for item in page.data] == ["message 0", "message 1"]  # type: ignore[union-attr]
    assert page.has_more is True
    rest = await sdk.responses.input_items.list(created.id, limit=10, order="asc", after=page.data[-1].id)
    assert [item.content[0].text for item in rest.data] == ["message 2", "message 3", "message 4"]  # type: ignore[union-attr]
    assert rest.has_more is False
    listed = await http.get(f"/v1/responses/{created.id}/input_items", params={"limit": 100})
    for item in listed.json()["data"]:
        valid_item(item)
    newest = await sdk.responses.input_items.list(created.id, limit=1)
    assert newest.data[0].content[0].text == "message 4"  # type: ignore[union-attr]
    await sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as exc:
        await sdk.responses.retrieve(created.id)
    assert exc.value.code == "response_not_found"


async def test_previous_response_id_rebuilds_the_conversation(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    first = await sdk.responses.create(model="normal", input="one")
    second = await sdk.responses.create(model="normal", input="two", previous_response_id=first.id)
    third = await sdk.responses.create(model="normal", input="three", previous_response_id=second.id)
    assert third.previous_response_id == second.id
    messages = fake.requests[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "one"),
        ("assistant", HELLO),
        ("user", "two"),
        ("assistant", HELLO),
        ("user", "three"),
    ]


async def test_function_call_round_trip_with_previous_response(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    first = await sdk.responses.create(model="tools", input="weather?", tools=[WEATHER])  # type: ignore[list-item]
    call = first.output[0]
    assert call.type == "function_call"
    await sdk.responses.create(
        model="normal",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    messages = fake.requests[-1].body["messages"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


async def test_unknown_and_unstored_and_other_keys_responses(sdk: AsyncOpenAI, gw: GatewayProcess) -> None:
    unstored = await sdk.responses.create(model="normal", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as exc:
        await sdk.responses.create(model="normal", input="y", previous_response_id=unstored.id)
    assert exc.value.code == "previous_response_not_found"
    assert exc.value.param == "previous_response_id"
    mine = await sdk.responses.create(model="normal", input="z")
    async with AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=KEY_B, max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(mine.id)
        with pytest.raises(openai.BadRequestError):
            await other.responses.create(model="normal", input="w", previous_response_id=mine.id)
    assert (await sdk.responses.retrieve(mine.id)).output_text == HELLO


# ---- resume and background -----------------------------------------------------------------------


async def test_resume_replays_byte_for_byte(http: httpx.AsyncClient) -> None:
    answer = await http.post("/v1/responses", json={"model": "tools", "input": "w", "stream": True, "tools": [WEATHER]})
    rid = answer.headers["x-response-id"]
    blocks = [b for b in answer.text.split("\n\n") if b and not b.startswith(":")]
    replay = await http.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": "3"})
    assert replay.status_code == 200
    replayed = [b for b in replay.text.split("\n\n") if b and not b.startswith(":")]
    assert replayed == blocks[4:]
    by_header = await http.get(f"/v1/responses/{rid}?stream=true", headers={"Last-Event-ID": f"{rid}:6"})
    assert [b for b in by_header.text.split("\n\n") if b and not b.startswith(":")] == blocks[7:]
    past = await http.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": "500"})
    assert past.status_code == 409
    # Digits that are not ASCII ("²".isdigit() is true, int("²") fails) are bad positions, not 500s.
    superscript = await http.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": "²"})
    assert superscript.status_code == 400 and superscript.json()["error"]["param"] == "starting_after"
    by_bytes = await http.get(
        f"/v1/responses/{rid}?stream=true", headers={"Last-Event-ID": f"{rid}:\xb2".encode("latin-1")}
    )
    assert by_bytes.status_code == 409, by_bytes.text


async def test_resume_follows_a_live_stream(gw: GatewayProcess, http: httpx.AsyncClient) -> None:
    body = {"model": "slow_gap", "input": "hi", "stream": True}
    async with http.stream("POST", "/v1/responses", json=body) as live:
        rid = live.headers["x-response-id"]
        seen = b""
        async for piece in live.aiter_bytes():
            seen += piece
            if b"response.output_text.delta" in seen:
                break
    # The first client left; the stream's log still serves what it produced (no detach grace: it ended).
    replay = await http.get(f"/v1/responses/{rid}", params={"stream": "true"})
    events = sse_events(replay.text)
    assert events[0][2]["type"] == "response.created"
    assert events[-1][2]["type"] in ("response.failed", "response.completed")


async def test_background_runs_without_its_client_and_can_be_cancelled(sdk: AsyncOpenAI) -> None:
    queued = await sdk.responses.create(model="paced", input="hi", background=True)
    assert queued.status in ("queued", "in_progress")

    async def status() -> str:
        return (await sdk.responses.retrieve(queued.id)).status or ""

    deadline = asyncio.get_running_loop().time() + 10
    while await status() != "completed":
        assert asyncio.get_running_loop().time() < deadline, "background response never completed"
        await asyncio.sleep(0.05)
    assert (await sdk.responses.retrieve(queued.id)).output_text == HELLO
    slow = await sdk.responses.create(model="slow_gap", input="hi", background=True)
    cancelled = await sdk.responses.cancel(slow.id)
    assert cancelled.status == "cancelled"
    assert (await sdk.responses.retrieve(slow.id)).status == "cancelled"


async def test_background_stream_is_the_log_read_live(sdk: AsyncOpenAI) -> None:
    stream = await sdk.responses.create(model="paced", input="hi", background=True, stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == HELLO


# ---- WebSocket mode ------------------------------------------------------------------------------


async def test_websocket_mode_with_connect(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    async with sdk.responses.connect() as connection:
        await connection.response.create(model="normal", input="one", store=False)
        first = None
        async for event in connection:
            if event.type == "response.completed":
                first = event.response
                break
        assert first is not None and first.output_text == HELLO
        await connection.response.create(model="normal", input="two", store=False, previous_response_id=first.id)
        await connection.response.create(model="normal", input="three")  # while one runs: refused
        kinds: list[str] = []
        errors: list[Any] = []
        async for event in connection:
            kinds.append(event.type)
            if event.type == "error":
                errors.append(event)
            if event.type == "response.completed":
                break
        assert errors and errors[0].error.code == "response_in_progress"
        assert kinds[-1] == "response.completed"
    messages = fake.requests[-1].body["messages"]
    assert [m["content"] for m in messages] == ["one", HELLO, "two"]


async def test_websocket_session_lanes_get_their_events(sdk: AsyncOpenAI, fake: FakeProvider) -> None:
    """The SDK's session routes a socket's events to lanes by the create's ``stream_id``: each
    named lane's response (one after the other) reaches that lane."""
    from openai.lib.responses_websocket import AsyncResponsesWebSocketSession, ResponsesWebSocketLimits

    limits = ResponsesWebSocketLimits(
        max_lanes=4, max_events_per_lane=128, max_events=512, max_bytes_per_lane=1 << 24, max_bytes=1 << 25
    )
    async with (
        sdk.responses.connect() as connection,
        AsyncResponsesWebSocketSession(connection, limits=limits) as session,
    ):
        first, second = session.lane("first"), session.lane("second.lane-2")
        await first.send({"type": "response.create", "model": "normal", "input": "one"})
        one = await asyncio.wait_for(first.get_final_response(), 15)
        assert one.status == "completed" and one.output_text == HELLO
        await second.send(
            {"type": "response.create", "model": "normal", "input": "two", "previous_response_id": one.id}
        )
        two = await asyncio.wait_for(second.get_final_response(), 15)
        assert two.status == "completed" and two.output_text == HELLO
    assert [m["content"] for m in fake.requests[-1].body["messages"]] == ["one", HELLO, "two"]


async def test_websocket_events_carry_the_creates_stream_id(gw: GatewayProcess) -> None:
    url = f"ws://127.0.0.1:{gw.port}/v1/responses"
    auth = {"Authorization": f"Bearer {KEY_A}"}
    async with ws_connect(url, additional_headers=auth, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": "x", "stream_id": "a.b_c-1"}))
        events = []
        while not events or events[-1]["type"] != "response.completed":
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert {e.get("stream_id") for e in events} == {"a.b_c-1"}
        await ws.send(
            json.dumps({"type": "response.create", "model": "normal", "input": "x", "stream_id": "no spaces"})
        )
        refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert refused["type"] == "error" and refused["error"]["param"] == "stream_id" and "stream_id" not in refused
        await ws.send(json.dumps({"type": "response.create", "model": "nope", "input": "x", "stream_id": "lane"}))
        unknown = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert unknown["type"] == "error" and unknown["stream_id"] == "lane"
        await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": "x"}))
        plain = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert plain["type"] == "response.created" and "stream_id" not in plain


async def test_websocket_generate_false_prepares_a_turn_without_a_provider_call(
    gw: GatewayProcess, fake: FakeProvider
) -> None:
    """``generate: false`` (the Codex CLI's prewarm): a completed response with no output, no provider
    call; the next turn names it as its previous response and gets its input."""
    url = f"ws://127.0.0.1:{gw.port}/v1/responses"
    auth = {"Authorization": f"Bearer {KEY_A}"}
    calls = len(fake.requests)
    async with ws_connect(url, additional_headers=auth, open_timeout=10) as ws:
        await ws.send(
            json.dumps(
                {"type": "response.create", "model": "normal", "input": "one", "generate": False, "store": False}
            )
        )
        events = []
        while not events or events[-1]["type"] != "response.completed":
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
        prepared = events[-1]["response"]
        assert prepared["output"] == [] and prepared["status"] == "completed"
        valid_response(prepared)
        assert len(fake.requests) == calls
        await ws.send(
            json.dumps(
                {"type": "response.create", "model": "normal", "input": "two", "previous_response_id": prepared["id"]}
            )
        )
        while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "response.completed":
            pass
        assert event["response"]["output"][0]["content"][0]["text"] == HELLO
        await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": "x", "generate": "no"}))
        refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert refused["type"] == "error" and refused["error"]["param"] == "generate"
        # Admitted as any request: an unknown model is the contract's 404, prepared or not.
        await ws.send(json.dumps({"type": "response.create", "model": "nope", "input": "x", "generate": False}))
        unknown = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert unknown["type"] == "error" and unknown["error"]["code"] == "model_not_found"
    assert [m["content"] for m in fake.requests[-1].body["messages"]] == ["one", "two"]


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "input_image"}]}]},
         "input[1].content[0].image_url", "input[1].content[0].image_url"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]},
         "input[0].content[0].image_url", "input[0].content[0].image_url"),
        ({"input": [{"role": "robot", "content": "a"}]}, "input[0].role", "input[0].role"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
         "input[0].call_id", "input[0].call_id"),
        ({"input": "a", "tools": [{"type": "function"}]}, "tools[0].name", "tools[0].name"),
        ({"input": "a", "tools": [{"type": "wat"}]}, "tools[0].type", "unsupported_parameter"),
        ({"input": "a", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search_preview"}},
         "tool_choice", "unsupported_parameter"),
        ({"input": "a", "text": {"format": {"type": "json_schema", "name": "x"}}},
         "text.format.schema", "text.format.schema"),
        ({"input": "a", "reasoning": {"effort": "max"}}, "reasoning.effort", "reasoning.effort"),
        ({"input": "a", "temperature": 9}, "temperature", "temperature"),
        ({"input": "a", "api_base": "http://evil"}, "api_base", "unsupported_parameter"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/y.pdf"}]}]},
         "input[0].content[0].file_url", "unsupported_content"),
    ],
)  # fmt: skip
async def test_bad_input_names_the_field(http: httpx.AsyncClient, body: dict[str, Any], param: str, code: str) -> None:
    answer = await http.post("/v1/responses", json={"model": "normal", **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["code"] == code


async def test_unknown_model_and_key(http: httpx.AsyncClient, gw: GatewayProcess) -> None:
    answer = await http.post("/v1/responses", json={"model": "nope", "input": "a"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    async with httpx.AsyncClient(base_url=gw.base_url) as anonymous:
        refused = await anonymous.post("/v1/responses", json={"model": "normal", "input": "a"})
    assert refused.status_code == 401


async def test_provider_errors_before_the_first_token_are_http_errors(sdk: AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        await sdk.responses.create(model="server_error", input="a", stream=True)
    assert exc.value.status_code == 503


async def test_a_stream_broken_after_its_first_token_ends_failed(sdk: AsyncOpenAI) -> None:
    stream = await sdk.responses.create(model="drop", input="a", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created"
    assert any(e.type == "response.output_text.delta" for e in events)
    final = events[-1]
    assert final.type == "response.failed"
    valid_event(final.model_dump(mode="json", exclude_unset=True))
    assert final.response.error is not None and "upstream_unavailable" in final.response.error.message
    assert (await sdk.responses.retrieve(final.response.id)).status == "failed"


async def test_a_silent_provider_gets_heartbeats_then_a_failed_response(http: httpx.AsyncClient) -> None:
    answer = await http.post("/v1/responses", json={"model": "hang", "input": "a", "stream": True})
    assert answer.status_code == 200  # past the status window: the headers went out, then heartbeats
    assert ": keep-alive" in answer.text
    events = sse_events(answer.text)
    assert [e[2]["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert "upstream_timeout" in events[-1][2]["response"]["error"]["message"]
    valid_event(events[-1][2])


async def test_client_leaving_cancels_the_provider_call(http: httpx.AsyncClient, fake: FakeProvider) -> None:
    async with http.stream("POST", "/v1/responses", json={"model": "slow_gap", "input": "a", "stream": True}) as live:
        async for piece in live.aiter_bytes():
            if b"output_text.delta" in piece:
                break
    record = fake.requests[-1]
    await wait_until(lambda: record.disconnected_at is not None, 5, "the provider call to be closed")


async def test_websocket_errors_keep_the_socket_and_limits_close_it(gw: GatewayProcess) -> None:
    url = f"ws://127.0.0.1:{gw.port}/v1/responses"
    auth = {"Authorization": f"Bearer {KEY_A}"}
    async with ws_connect(url, additional_headers=auth, open_timeout=10, max_size=None) as ws:
        await ws.send("{not json")
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "error" and first["status"] == 400
        await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": [{"role": "robot"}]}))
        second = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert second["error"]["param"] == "input[0].role"
        await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": "x", "background": True}))
        third = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert third["error"]["code"] == "unsupported_parameter"
        await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": "still here?"}))
        while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "response.completed":
            pass
        assert event["response"]["output"][0]["content"][0]["text"] == HELLO
        await ws.send("x" * (1024 * 1024 + 1))  # over websocket.max_frame_bytes (default 1 MiB)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with ws_connect(url, additional_headers={"Authorization": "Bearer wrong"}, open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as refused:
            await asyncio.wait_for(ws.recv(), 10)
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 1008
