"""Embeddings over HTTP: OpenAI's body in, OpenAI's list of embeddings out."""

from __future__ import annotations

import time
from typing import Any, Final

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException

from app.access.keys import ANONYMOUS, Caller
from app.api.embeddings.wire import parse_embeddings_body
from app.api.status_window import client_gone
from app.core.context import context_of
from app.embeddings.service import EmbeddingService
from app.providers.resilient import Trail
from app.routes.chat import check_content_type
from app.transport.disconnect import ClientGone, DisconnectWatch
from app.transport.request_parts import header, read_body

EMBEDDINGS_PATHS: Final = ["/v1/embeddings", "/api/embeddings"]


class EmbeddingsContext:
    """What the create handler needs, as one dependency (see ``ChatContext`` in ``routes/chat.py``)."""

    __slots__ = ("caller", "embeddings")

    def __init__(self, embeddings: EmbeddingService, caller: Caller) -> None:
        self.embeddings = embeddings
        self.caller = caller


class EmbeddingsController(Controller):
    path = ""
    tags = ["embeddings"]

    @post(path=EMBEDDINGS_PATHS, status_code=200, summary="Create embeddings (OpenAI's shape; float or base64)")
    async def create(
        self, request: Request[Any, Any, Any], embeddings_context: NamedDependency[EmbeddingsContext]
    ) -> Response[Any]:
        # Served by routes/direct.py (same function, without the per-request pipeline) unless CORS
        # is configured; registered here for the OpenAPI schema and as that fallback.
        return await create_embeddings(request, embeddings_context)


async def create_embeddings(request: Request[Any, Any, Any], embeddings_context: EmbeddingsContext) -> Response[Any]:
    """``POST /v1/embeddings``, from the request and what the handler needs."""
    started = time.perf_counter()
    embeddings, caller = embeddings_context.embeddings, embeddings_context.caller
    check_content_type(header(request.scope, b"content-type"))
    try:
        raw = await read_body(request)
    except InternalServerException:
        return client_gone(request.scope)
    body = parse_embeddings_body(raw)
    context = context_of(request.scope)
    context.model = body.model
    if caller.scope != ANONYMOUS.scope:
        context.key = caller.name
    admission = await embeddings.admit(body, caller)
    headers: dict[str, str] = dict(admission.headers) if admission is not None else {}
    if headers:
        context.rate_headers = headers
    context.trail = trail = Trail()
    watch = DisconnectWatch(request.receive)
    try:
        with watch.guard():
            content, cache_status = await embeddings.create(
                body,
                caller,
                cache_control=header(request.scope, b"cache-control"),
                admission=admission,
                trail=trail,
                started_at=started,
                traceparent=header(request.scope, b"traceparent"),
            )
    except ClientGone:
        return client_gone(request.scope)
    finally:
        watch.stop()
    if cache_status:
        headers["X-Cache"] = cache_status
    return Response(content=content, media_type="application/json", headers=headers)
