"""Chat completions over HTTP: negotiate JSON or SSE and hand the work to the chat service."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException

from app.access.keys import ANONYMOUS, Caller
from app.api.chat.sse import SSE_HEADERS, SseResponse
from app.api.intent import wants_stream
from app.api.status_window import client_gone, open_window
from app.config.settings import Settings
from app.core.context import context_of
from app.core.service import ChatService
from app.domain.chat_request import ChatCompletionInput, parse_chat_body
from app.domain.errors import UnsupportedMediaType
from app.domain.events import CLIENT_DISCONNECTED
from app.limits.limiter import Admission
from app.providers.resilient import Trail
from app.server.openapi import CHAT_RESPONSES, ChatOperation
from app.transport.disconnect import ClientGone, DisconnectWatch
from app.transport.request_parts import header, read_body

CHAT_PATHS = ["/v1/chat/completions", "/api/chat/completions"]


def check_content_type(value: str | None) -> None:
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {media or 'an empty value'!r}.", param="Content-Type"
        )


class ChatContext:
    """What the chat handler needs, as one dependency: Litestar resolves several dependencies of one
    handler in an anyio task group, which cost more than the rest of the handler's set-up."""

    __slots__ = ("caller", "chat", "settings")

    def __init__(self, chat: ChatService, settings: Settings, caller: Caller) -> None:
        self.chat = chat
        self.settings = settings
        self.caller = caller


class ChatController(Controller):
    path = ""
    tags = ["chat"]

    @post(
        path=CHAT_PATHS,
        status_code=200,
        summary="Create a chat completion (JSON or SSE)",
        operation_class=ChatOperation,
        responses=CHAT_RESPONSES,
    )
    async def create(
        self, request: Request[Any, Any, Any], chat_context: NamedDependency[ChatContext]
    ) -> Response[Any]:
        # Served by routes/direct.py (same function, without the per-request pipeline) unless CORS
        # is configured; registered here for the OpenAPI schema and as that fallback.
        return await create_chat_completion(request, chat_context)


async def create_chat_completion(request: Request[Any, Any, Any], chat_context: ChatContext) -> Response[Any]:
    """``POST /v1/chat/completions``: JSON or SSE, from the request and what the handler needs."""
    started = time.perf_counter()
    chat, settings, caller = chat_context.chat, chat_context.settings, chat_context.caller
    check_content_type(header(request.scope, b"content-type"))
    try:
        raw = await read_body(request)
    except InternalServerException:
        # The client left while its body was being read (Litestar's exception for it): not our 500.
        return client_gone(request.scope)
    body = parse_chat_body(raw)
    cache_control = header(request.scope, b"cache-control")
    context = context_of(request.scope)
    context.model = body.model
    if caller.scope != ANONYMOUS.scope:
        context.key = caller.name
    if settings.server.log_bodies:
        context.prompt = body.body["messages"]
    streaming = wants_stream(body.request.stream, header(request.scope, b"accept"))
    traceparent = header(request.scope, b"traceparent")
    if not streaming:
        return await _complete(request, chat_context, body, started, cache_control, traceparent)
    rate_headers: dict[str, str] = {}

    def admitted(admission: Admission | None) -> None:
        if admission is not None and admission.headers:
            rate_headers.update(admission.headers)
            context.rate_headers = rate_headers  # error responses from here on carry them too

    watch = DisconnectWatch(request.receive)
    try:
        # Allow-list, limits and budget, before anything reaches the provider (403 / 429 from here).
        stream = await chat.open_admitted(
            body,
            caller,
            "sse",
            started_at=started,
            cache_control=cache_control,
            traceparent=traceparent,
            admitted=admitted,
            guard=watch.guard(),
        )
        context.stream = stream
        # The status window (errors the provider reports at once still get a real status) is waited
        # out by the response; with one, the provider call goes out now (open_window).
        with watch.guard():
            window_ends = await open_window(stream, settings.streaming.status_window_s)
    except BaseException as exc:
        watch.stop()
        opened = context.stream
        if opened is not None:
            opened.close(CLIENT_DISCONNECTED)  # stops the provider call; a no-op if it ended already
        if isinstance(exc, ClientGone):
            return client_gone(request.scope)
        raise
    # From here the response owns the watch and drives the stream.
    headers = {**SSE_HEADERS, "X-Stream-ID": stream.id}
    if stream.cache_status:
        headers["X-Cache"] = stream.cache_status
    if rate_headers:
        headers.update(rate_headers)
    return SseResponse(stream, watch, headers, window_ends)


async def _complete(
    request: Request[Any, Any, Any],
    chat_context: ChatContext,
    body: ChatCompletionInput,
    started: float,
    cache_control: str | None,
    traceparent: str | None,
) -> Response[Any]:
    """The JSON answer: admitted, then one whole completion, under the request's disconnect watch."""
    chat, caller = chat_context.chat, chat_context.caller
    context = context_of(request.scope)
    # Allow-list, limits and budget, before anything reaches the provider (403 / 429 from here).
    admission = await chat.admit(body, caller)
    rate_headers = admission.headers if admission is not None else None
    if rate_headers:
        context.rate_headers = rate_headers  # error responses from here on carry them too
    watch = DisconnectWatch(request.receive)
    try:
        with watch.guard():
            context.trail = trail = Trail()  # the access log names the deployment that answered
            completion, cache_status = await chat.complete(
                body,
                started_at=started,
                caller=caller,
                cache_control=cache_control,
                traceparent=traceparent,
                trail=trail,
                admission=admission,
            )
    except ClientGone:
        return client_gone(request.scope)
    finally:
        watch.stop()
    headers = {"X-Cache": cache_status} if cache_status else None
    if rate_headers:
        headers = {**(headers or {}), **rate_headers}
    return Response(content=completion.raw, media_type="application/json", headers=headers)
