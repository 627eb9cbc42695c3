"""Resuming and stopping a stream (API.md 1.3): GET replays and follows, DELETE stops."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from app.access.keys import Caller
from app.api.chat.sse import SSE_HEADERS
from app.api.chat.sse_replay import ReplaySseResponse
from app.config.settings import Settings
from app.core.service import ChatService
from app.domain.errors import ErrorBody
from app.resume.service import Resumes
from app.transport.disconnect import DisconnectWatch

STREAM_PATH = "/v1/chat/completions/streams/{stream_id:str}"

_ERRORS = {
    404: ResponseSpec(data_container=ErrorBody, description="`stream_not_found`: unknown, expired, or another key's"),
    409: ResponseSpec(data_container=ErrorBody, description="`invalid_resume_position`"),
    503: ResponseSpec(data_container=ErrorBody, description="The resume store is unreachable"),
}


class StreamsController(Controller):
    path = ""
    tags = ["chat"]

    @get(
        path=STREAM_PATH,
        summary="Resume a stream: replay after Last-Event-ID (or ?last_event_id=), then follow it live (SSE)",
        responses={
            200: ResponseSpec(data_container=str, media_type="text/event-stream", description="The SSE stream"),
            204: ResponseSpec(data_container=None, description="The position is the stream's last event"),
            **_ERRORS,
        },
    )
    async def resume(
        self,
        request: Request[Any, Any, Any],
        stream_id: FromPath[str],
        resumes: NamedDependency[Resumes],
        settings: NamedDependency[Settings],
        caller: NamedDependency[Caller],
        chat: NamedDependency[ChatService],
    ) -> Response[Any]:
        position = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        admission = await chat.admit_resume(caller)  # a stream slot of the key's, like the stream's own

        def done() -> None:
            if admission is not None:
                admission.settle(stream_id, None)

        try:
            replay = await resumes.open(stream_id, caller.scope, position)
        except BaseException:
            done()
            raise
        if replay.at_end:
            # Nothing left to send. 204 is also what tells a browser's EventSource to stop reconnecting.
            replay.close()
            done()
            return Response(content=b"", status_code=204)
        watch = DisconnectWatch(request.receive)
        headers = {**SSE_HEADERS, "X-Stream-ID": stream_id}
        return ReplaySseResponse(replay, watch, headers, settings.streaming.heartbeat_s, done)

    @delete(
        path=STREAM_PATH,
        status_code=204,
        summary="Stop a stream: its upstream call ends at once and its readers get `stream_cancelled`",
        responses={404: _ERRORS[404]},
    )
    async def stop(
        self, stream_id: FromPath[str], resumes: NamedDependency[Resumes], caller: NamedDependency[Caller]
    ) -> None:
        await resumes.stop(stream_id, caller.scope)
