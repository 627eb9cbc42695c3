"""The Anthropic Messages API over HTTP: an adapter over the chat pipeline.

A Messages body is translated into the chat request (``app/api/messages/request.py``) and run
by the same ``ChatService`` calls as chat completions (admission, cache, groups, retries,
fallbacks, the status window, the resume log, drain, metrics, traces); what comes back is
translated into Anthropic's message object or event stream (``app/api/messages/events.py``,
``source.py``) and framed as Anthropic's named SSE events
(``app/api/messages/framing.py``). Errors on these routes are in Anthropic's shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import structlog
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, InternalServerException, NotFoundException, ValidationException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE

from app.access.keys import ANONYMOUS
from app.api.chat.sse import SSE_HEADERS, SseResponse
from app.api.framing import ANTHROPIC
from app.api.intent import wants_stream
from app.api.messages.errors import MESSAGES_PATHS, anthropic_error_body, anthropic_status
from app.api.messages.events import MessageEvents, message_object
from app.api.messages.framing import ANTHROPIC_FRAMING
from app.api.messages.request import native_request, parse_messages_body, to_chat_body, to_chat_input
from app.api.messages.source import MessagesSource
from app.api.messages.tokens import count_input_tokens
from app.api.status_window import client_gone, open_window
from app.config.settings import Settings
from app.core.context import context_of
from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk
from app.domain.errors import GatewayError, InvalidRequest, PayloadTooLarge, public_error
from app.domain.events import CLIENT_DISCONNECTED
from app.domain.ids import random_hex
from app.limits.limiter import estimate_tokens
from app.providers.anthropic_target import is_anthropic
from app.providers.resilient import Trail
from app.routes.chat import ChatContext, check_content_type
from app.transport.disconnect import ClientGone, DisconnectWatch
from app.transport.request_parts import header, read_body

logger = structlog.get_logger("chat.errors")

COUNT_TOKENS_PATHS: Final = ["/v1/messages/count_tokens", "/api/messages/count_tokens"]
#: Request headers an Anthropic deployment is sent on unchanged.
_FORWARDED_HEADERS: Final = ("anthropic-beta",)


def _request_id(request: Request[Any, Any, Any]) -> str | None:
    value = context_of(request.scope).request_id
    return value or None


def _gateway_error(request: Request[Any, Any, Any], exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            return PayloadTooLarge("The request body is larger than the server accepts.")
        if isinstance(exc, ValidationException | NotFoundException):
            return InvalidRequest(str(exc.detail))
        error = InvalidRequest(str(exc.detail))
        error.status = exc.status_code  # type: ignore[misc]
        return error
    logger.error(
        "unhandled_error", request_id=_request_id(request), route=request.scope.get("path_template"), exc_info=exc
    )
    settings = getattr(request.app.state, "settings", None)
    return public_error(exc, production=bool(settings and settings.production))


def anthropic_error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Every error on these routes, in Anthropic's shape with section 4's headers."""
    error = _gateway_error(request, exc)
    context = context_of(request.scope)
    context.error = error  # for the request's log line
    headers = dict(error.headers())
    for name, value in (context.rate_headers or {}).items():
        headers.setdefault(name, value)
    request_id = _request_id(request)
    if request_id is not None:
        headers["request-id"] = request_id
    return Response(
        content=anthropic_error_body(error),
        status_code=anthropic_status(error),
        media_type="application/json",
        headers=headers,
    )


def passthrough_for(settings: Settings, model: str) -> bool:
    """Whether every deployment of ``model`` is an Anthropic one (then Anthropic's controls go on)."""
    group = settings.group(model)
    return bool(group) and all(is_anthropic(dep.litellm_model) for dep in group)


def elsewhere(settings: Settings, model: str) -> list[str]:
    """The fallbacks of ``model`` that have a deployment that is not Anthropic's."""
    fallbacks = dict.fromkeys(name for dep in settings.group(model) for name in dep.fallbacks)
    return [name for name in fallbacks if any(not is_anthropic(dep.litellm_model) for dep in settings.group(name))]


def _forwarded(request: Request[Any, Any, Any]) -> dict[str, str] | None:
    headers = {name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers}
    return headers or None


def _reasons(request: Request[Any, Any, Any], model: str) -> bool:
    """Whether the catalogue says ``model`` takes a reasoning effort (capability ``reasoning``)."""
    catalogue = getattr(request.app.state, "catalogue", None)
    snapshot = catalogue.current() if catalogue is not None else None
    info = snapshot.by_id.get(model) if snapshot is not None else None
    return info is not None and "reasoning" in info.capabilities


def _message_id() -> str:
    return "msg_" + random_hex(12)


class MessagesController(Controller):
    path = ""
    tags = ["messages"]
    # Every key the app's handlers use (looked up by the exception's class first), so that none of
    # theirs answers in the chat shape here.
    exception_handlers = {
        GatewayError: anthropic_error_response,
        HTTPException: anthropic_error_response,
        Exception: anthropic_error_response,
    }

    @post(path=MESSAGES_PATHS, status_code=200, summary="Create a message (Anthropic Messages API; JSON or SSE)")
    async def create(
        self, request: Request[Any, Any, Any], chat_context: NamedDependency[ChatContext]
    ) -> Response[Any]:
        # Served by routes/direct.py (same function, without the per-request pipeline) unless CORS
        # is configured; registered here for the OpenAPI schema and as that fallback.
        return await create_message(request, chat_context)

    @post(
        path=COUNT_TOKENS_PATHS, status_code=200, summary="Count a Messages request's input tokens (no provider call)"
    )
    async def count_tokens(
        self, request: Request[Any, Any, Any], chat_context: NamedDependency[ChatContext]
    ) -> Response[Any]:
        check_content_type(header(request.scope, b"content-type"))
        parsed, body = parse_messages_body(await request.body(), require_max_tokens=False)
        settings = chat_context.settings
        chat_body = to_chat_body(parsed, body, passthrough=passthrough_for(settings, parsed.model), stream=False)
        model = chat_context.chat.resolve(parsed.model)
        # Free of charge, but a request like any other for the key's limits: tokenizing a large body
        # is the gateway's CPU (and the first call loads the tokenizer's files), so a key's requests
        # a minute and in flight bound it (404, 403 and 429 as for a message).
        async with chat_context.chat.unbilled(model, chat_context.caller) as admission:
            dep = settings.deployment(model)
            litellm_model = dep.litellm_model if dep is not None else model
            tokens = await asyncio.to_thread(count_input_tokens, litellm_model, chat_body)
        headers = _id_headers(request) | (admission.headers if admission is not None else {})
        return Response(content={"input_tokens": tokens}, headers=headers)


def _id_headers(request: Request[Any, Any, Any]) -> dict[str, str]:
    request_id = _request_id(request)
    return {"request-id": request_id} if request_id is not None else {}


async def create_message(request: Request[Any, Any, Any], chat_context: ChatContext) -> Response[Any]:
    """``POST /v1/messages``: JSON or SSE."""
    started = time.perf_counter()
    chat, settings, caller = chat_context.chat, chat_context.settings, chat_context.caller
    check_content_type(header(request.scope, b"content-type"))
    try:
        raw = await read_body(request)
    except InternalServerException:
        return client_gone(request.scope)
    parsed, body = parse_messages_body(raw)
    passthrough = passthrough_for(settings, parsed.model)
    streaming = wants_stream(parsed.stream, header(request.scope, b"accept"))
    reasoning = _reasons(request, parsed.model)
    chat_body = to_chat_body(parsed, body, passthrough=passthrough, stream=streaming, reasoning=reasoning)
    portable: ChatCompletionInput | InvalidRequest | None = None
    if passthrough and (others := elsewhere(settings, parsed.model)):
        # One translation serves every such fallback: ``thinking`` becomes a reasoning effort only
        # when each of them takes one (the others would refuse the field).
        effort = all(_reasons(request, name) for name in others)
        try:
            portable = to_chat_input(
                to_chat_body(parsed, body, passthrough=False, stream=streaming, reasoning=effort), client_body=body
            )
        except InvalidRequest as exc:
            portable = exc  # content only Anthropic takes (a PDF): refused if such a fallback is reached
    chat_input = to_chat_input(
        chat_body,
        _forwarded(request) if passthrough else None,
        native_request(body, request.headers) if passthrough else None,
        portable,
        client_body=body,
    )
    context = context_of(request.scope)
    context.model = parsed.model
    if caller.scope != ANONYMOUS.scope:
        context.key = caller.name
    if settings.server.log_bodies:
        context.prompt = chat_body["messages"]
    admission = await chat.admit(chat_input, caller)
    rate_headers = admission.headers if admission is not None else None
    if rate_headers:
        context.rate_headers = rate_headers
    estimate = estimate_tokens(chat_input)
    message_id = _message_id()
    headers = _id_headers(request)
    if rate_headers:
        headers.update(rate_headers)
    watch = DisconnectWatch(request.receive)
    try:
        with watch.guard():
            if not streaming:
                context.trail = trail = Trail()
                completion, cache_status = await chat.complete(
                    chat_input,
                    started_at=started,
                    caller=caller,
                    cache_control=header(request.scope, b"cache-control"),
                    traceparent=header(request.scope, b"traceparent"),
                    trail=trail,
                    admission=admission,
                )
                watch.stop()
                if cache_status:
                    headers["X-Cache"] = cache_status
                content = message_object(completion.raw, message_id, parsed.model, estimate, parsed.stop_sequences)
                return Response(content=content, media_type="application/json", headers=headers)
            stream = await chat.open_stream(
                chat_input,
                "sse",
                started_at=started,
                caller=caller,
                cache_control=header(request.scope, b"cache-control"),
                traceparent=header(request.scope, b"traceparent"),
                admission=admission,
                adapt=_adapter(message_id, parsed.model, estimate, parsed.stop_sequences),
                format=ANTHROPIC,
            )
            context.stream = stream
            # The response waits out the status window (open_window: the provider call goes out now).
            window_ends = await open_window(stream, settings.streaming.status_window_s)
    except BaseException as exc:
        watch.stop()
        opened = context.stream
        if opened is not None:
            opened.close(CLIENT_DISCONNECTED)
        if isinstance(exc, ClientGone):
            return client_gone(request.scope)
        raise
    sse_headers = {**SSE_HEADERS, "X-Stream-ID": stream.id, **headers}
    if stream.cache_status:
        sse_headers["X-Cache"] = stream.cache_status
    return SseResponse(stream, watch, sse_headers, window_ends, ANTHROPIC_FRAMING)


def _adapter(
    message_id: str, model: str, estimate: int, stop_sequences: list[str] | None
) -> Callable[[AsyncIterator[Chunk]], AsyncIterator[Chunk]]:
    def adapt(source: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        return MessagesSource(source, MessageEvents(message_id, model, estimate, stop_sequences))

    return adapt
