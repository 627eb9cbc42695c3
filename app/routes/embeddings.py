"""Embeddings over HTTP (API.md 9): OpenAI's body in, OpenAI's list of embeddings out."""

from __future__ import annotations

import time
from typing import Any, Final

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException

from app.access.keys import ANONYMOUS, Caller
from app.chat.stream_events import CLIENT_DISCONNECTED
from app.embeddings.service import EmbeddingService
from app.protocol.embeddings import parse_embeddings_body
from app.providers.resilient import Trail
from app.routes.chat import check_content_type
from app.streaming.disconnect import ClientGone, DisconnectWatch

EMBEDDINGS_PATHS: Final = ["/v1/embeddings", "/api/embeddings"]
CLIENT_CLOSED_REQUEST: Final = 499


class EmbeddingsController(Controller):
    path = ""
    tags = ["embeddings"]

    @post(path=EMBEDDINGS_PATHS, status_code=200, summary="Create embeddings (OpenAI's shape; float or base64)")
    async def create(
        self,
        request: Request[Any, Any, Any],
        embeddings: NamedDependency[EmbeddingService],
        caller: NamedDependency[Caller],
    ) -> Response[Any]:
        started = time.perf_counter()
        check_content_type(request.headers.get("content-type"))
        try:
            raw = await request.body()
        except InternalServerException:
            request.state.outcome = CLIENT_DISCONNECTED
            return Response(content=b"", status_code=CLIENT_CLOSED_REQUEST)
        body = parse_embeddings_body(raw)
        request.state.model = body.model
        if caller.scope != ANONYMOUS.scope:
            request.state.key = caller.name
        admission = await embeddings.admit(body, caller)
        headers: dict[str, str] = dict(admission.headers) if admission is not None else {}
        if headers:
            request.state.rate_headers = headers
        request.state.trail = trail = Trail()
        watch = DisconnectWatch(request.receive)
        try:
            with watch.guard():
                content, cache_status = await embeddings.create(
                    body,
                    caller,
                    cache_control=request.headers.get("cache-control"),
                    admission=admission,
                    trail=trail,
                    started_at=started,
                    traceparent=request.headers.get("traceparent"),
                )
        except ClientGone:
            request.state.outcome = CLIENT_DISCONNECTED
            return Response(content=b"", status_code=CLIENT_CLOSED_REQUEST)
        finally:
            watch.stop()
        if cache_status:
            headers["X-Cache"] = cache_status
        return Response(content=content, media_type="application/json", headers=headers)
