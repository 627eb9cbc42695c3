"""The Responses API over HTTP (docs/responses.md): create (JSON, SSE, background), retrieve (or resume its
stream), delete, list input items, cancel. The WebSocket mode on the same paths is
``routes/responses_socket.py``; the work is ``app/api/responses/service.py``'s.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException
from litestar.params import FromPath

from app.access.keys import ANONYMOUS, Caller
from app.api.chat.sse import SSE_HEADERS
from app.api.intent import wants_stream
from app.api.responses.events import ResponseEvents
from app.api.responses.request import parse_create
from app.api.responses.service import Prepared, ResponseRun, ResponsesService
from app.api.responses.sse import ResponseReplay, ResponsesReplayResponse, ResponsesSseResponse
from app.api.responses.store import StoredResponse
from app.api.status_window import client_gone, open_window
from app.config.settings import Settings
from app.core.context import context_of
from app.domain.errors import InvalidRequest, InvalidResumePosition
from app.domain.events import CLIENT_DISCONNECTED
from app.providers.resilient import Trail
from app.routes.chat import check_content_type
from app.transport.disconnect import ClientGone, DisconnectWatch
from app.transport.request_parts import header, read_body

RESPONSES_PATHS = ["/v1/responses", "/api/responses"]
_ONE = ["/v1/responses/{response_id:str}", "/api/responses/{response_id:str}"]
_INPUT_ITEMS = ["/v1/responses/{response_id:str}/input_items", "/api/responses/{response_id:str}/input_items"]
_CANCEL = ["/v1/responses/{response_id:str}/cancel", "/api/responses/{response_id:str}/cancel"]
OMITTED_HEADER = "X-Gateway-Omitted-Tools"
MAX_PAGE = 100
_encode = msgspec.json.encode


def _json(obj: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(content=_encode(obj), media_type="application/json", headers=headers)


def _query_int(request: Request[Any, Any, Any], name: str, default: int | None) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise InvalidRequest(f"`{name}` must be a non-negative integer.", code="invalid_parameter", param=name)
    return int(value)


class ResponsesContext:
    """What the create handler needs, as one dependency (several are resolved in a task group, which
    costs more per request than the rest of the handler's set-up: see ``routes/chat.py``)."""

    __slots__ = ("caller", "responses")

    def __init__(self, responses: ResponsesService, caller: Caller) -> None:
        self.responses = responses
        self.caller = caller


class ResponsesController(Controller):
    path = ""
    tags = ["responses"]

    @post(path=RESPONSES_PATHS, status_code=200, summary="Create a response (JSON, SSE or background)")
    async def create(
        self, request: Request[Any, Any, Any], responses_context: NamedDependency[ResponsesContext]
    ) -> Response[Any]:
        # Served by routes/direct.py (same function, without the per-request pipeline)
        # unless CORS is configured; registered here for the OpenAPI schema and as that fallback.
        return await create_response(request, responses_context)

    @get(path=_ONE, summary="Retrieve a response, or resume its event stream (?stream=true&starting_after=n)")
    async def retrieve(
        self,
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
        responses: NamedDependency[ResponsesService],
        settings: NamedDependency[Settings],
        caller: NamedDependency[Caller],
    ) -> Response[Any]:
        if request.query_params.get("stream") in ("true", "1"):
            # Whose it is first: an unknown or another key's response is a 404 whatever the position says.
            record = await responses.owned(response_id, caller, stored_only=False)
            after = _query_int(request, "starting_after", None)
            last_event_id = header(request.scope, b"last-event-id")
            if after is None and last_event_id:
                rid, _, seq = last_event_id.strip().rpartition(":")
                if rid != response_id or not (seq.isascii() and seq.isdigit()) or len(seq) > 12:
                    raise InvalidResumePosition(
                        "Last-Event-ID must be `<response id>:<sequence number>` of this response.",
                        param="Last-Event-ID",
                    )
                after = int(seq)
            return await _replay(request, responses, settings, record, caller, -1 if after is None else after)
        record = await responses.owned(response_id, caller)
        return _json(record.response)

    @delete(path=_ONE, status_code=200, summary="Delete a stored response")
    async def remove(
        self, response_id: FromPath[str], responses: NamedDependency[ResponsesService], caller: NamedDependency[Caller]
    ) -> Response[Any]:
        await responses.delete(response_id, caller)
        return _json({"id": response_id, "object": "response.deleted", "deleted": True})

    @get(path=_INPUT_ITEMS, summary="List a stored response's input items")
    async def input_items(
        self,
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
        responses: NamedDependency[ResponsesService],
        caller: NamedDependency[Caller],
    ) -> Response[Any]:
        limit = _query_int(request, "limit", 20) or 20
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"`limit` must be between 1 and {MAX_PAGE}.", code="invalid_parameter", param="limit")
        order = request.query_params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise InvalidRequest("`order` must be asc or desc.", code="invalid_parameter", param="order")
        record = await responses.owned(response_id, caller)
        items = list(record.input) if order == "asc" else list(reversed(record.input))
        after = request.query_params.get("after")
        if after:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise InvalidRequest(
                    f"No input item {after[:128]!r} in this response.", code="invalid_parameter", param="after"
                )
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return _json(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    @post(path=_CANCEL, status_code=200, summary="Cancel a background response")
    async def cancel(
        self, response_id: FromPath[str], responses: NamedDependency[ResponsesService], caller: NamedDependency[Caller]
    ) -> Response[Any]:
        record = await responses.cancel(response_id, caller)
        return _json(record.response)


async def _background(
    request: Request[Any, Any, Any],
    responses: ResponsesService,
    settings: Settings,
    prepared: Prepared,
    caller: Caller,
    admission: Any,
    streaming: bool,
    headers: dict[str, str],
) -> Response[Any]:
    if streaming and (responses.resumes is None or not responses.resumes.enabled):
        if admission is not None:
            admission.settle(prepared.chat.model, None)
        raise InvalidRequest(
            "A streamed background response needs stream logs (streaming.resume_max_events > 0).",
            code="unsupported_parameter",
            param="background",
        )
    run = await responses.start_background(
        prepared, caller, admission, "sse" if streaming else "json", traceparent=header(request.scope, b"traceparent")
    )
    headers["X-Response-ID"] = run.id
    if not streaming:
        response = run.events.snapshot()
        response["status"] = "queued" if not run.events.started else response["status"]
        return _json(response, headers)
    record = run.record(run.events.snapshot())
    try:
        # The run holds this call's admission (its stream slot): reading its log is the same call.
        return await _replay(request, responses, settings, record, caller, -1, headers, admitted=True)
    except BaseException:
        # Its event stream cannot be served: the client has no response id to follow or cancel it by.
        if run.stream is not None:
            run.stream.stop("The response's event stream could not be served.")
        raise


async def _replay(
    request: Request[Any, Any, Any],
    responses: ResponsesService,
    settings: Settings,
    record: StoredResponse,
    caller: Caller,
    after: int,
    headers: dict[str, str] | None = None,
    *,
    admitted: bool = False,
) -> Response[Any]:
    """The response's events after ``after`` from its stream's log, then live (docs/responses.md, resuming).
    ``admitted``: the reader is the call that started the response, already holding its admission."""
    resumes = responses.resumes
    if record.stream_id is None or resumes is None:
        raise InvalidRequest("This response was not streamed: it has no event stream to resume.", param="stream")
    admission = None if admitted else await responses.chat.admit_resume(caller)

    def done() -> None:
        if admission is not None:
            admission.settle(record.stream_id or "", None)

    try:
        replay = await resumes.open(record.stream_id, caller.scope, None)
        skeleton = dict(record.response)
        skeleton.update(status="in_progress", output=[], usage=None, error=None, incomplete_details=None)
        reader = ResponseReplay(replay, ResponseEvents(skeleton, record.namespaces), after)
        first = reader.ready()
        if reader.done and after > reader.events.seq:
            replay.close()
            raise InvalidResumePosition(f"Event {after} is past the end of the response's events.")
    except BaseException:
        done()
        raise
    out = {**(headers or {}), **SSE_HEADERS, "X-Stream-ID": record.stream_id, "X-Response-ID": record.id}
    return ResponsesReplayResponse(
        reader, first, DisconnectWatch(request.receive), out, settings.streaming.heartbeat_s, done
    )


async def create_response(request: Request[Any, Any, Any], responses_context: ResponsesContext) -> Response[Any]:
    """``POST /v1/responses``: JSON, SSE or background, from the request and what the handler needs."""
    started = time.perf_counter()
    responses, caller = responses_context.responses, responses_context.caller
    settings = responses.settings
    check_content_type(header(request.scope, b"content-type"))
    try:
        raw = await read_body(request)
    except InternalServerException:
        return client_gone(request.scope)
    create, _ = parse_create(raw)
    if create.background and create.store is False:
        # A background response is followed, read and cancelled through its record (as at OpenAI).
        raise InvalidRequest(
            "A background response must be stored (`store` true).", code="unsupported_parameter", param="store"
        )
    context = context_of(request.scope)
    context.model = create.model
    if caller.scope != ANONYMOUS.scope:
        context.key = caller.name
    streaming = wants_stream(create.stream, header(request.scope, b"accept"))
    prepared = await responses.prepare(create, caller)
    chat = responses.chat
    admission = await chat.admit(prepared.chat, caller)
    headers: dict[str, str] = {}
    if admission is not None and admission.headers:
        context.rate_headers = admission.headers
        headers.update(admission.headers)
    if prepared.omitted:
        headers[OMITTED_HEADER] = ", ".join(dict.fromkeys(prepared.omitted))
    traceparent = header(request.scope, b"traceparent")
    if create.background:
        return await _background(request, responses, settings, prepared, caller, admission, streaming, headers)
    watch = DisconnectWatch(request.receive)
    run: ResponseRun | None = None
    try:
        with watch.guard():
            if not streaming:
                context.trail = trail = Trail()
                response, cache_status = await responses.complete(
                    prepared,
                    caller,
                    admission,
                    started_at=started,
                    cache_control=header(request.scope, b"cache-control"),
                    traceparent=traceparent,
                    trail=trail,
                )
                watch.stop()
                if cache_status:
                    headers["X-Cache"] = cache_status
                return _json(response, headers)
            run = await responses.open(
                prepared,
                caller,
                admission,
                "sse",
                started_at=started,
                cache_control=header(request.scope, b"cache-control"),
                traceparent=traceparent,
            )
            assert run.stream is not None
            context.stream = run.stream
            # The response waits out the status window (open_window: the provider call goes out now).
            window_ends = await open_window(run.stream, settings.streaming.status_window_s)
    except BaseException as exc:
        watch.stop()
        if run is not None and run.stream is not None:
            run.stream.close(CLIENT_DISCONNECTED)
        if isinstance(exc, ClientGone):
            return client_gone(request.scope)
        raise
    stream = run.stream
    headers.update(SSE_HEADERS)
    headers["X-Stream-ID"] = stream.id
    headers["X-Response-ID"] = run.id
    if stream.cache_status:
        headers["X-Cache"] = stream.cache_status
    return ResponsesSseResponse(run, watch, headers, window_ends)
