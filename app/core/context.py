"""One request's context: what its log line, its metrics and its error responses read, filled by
whichever transport serves it (the HTTP routes through the request-id middleware, a WebSocket
session per request)."""

from __future__ import annotations

from typing import Any

from app.core.stream import ChatStream
from app.providers.resilient import Trail

#: Where the context lives in an ASGI scope's ``state``.
CONTEXT = "context"


class RequestContext:
    __slots__ = (
        "error",
        "key",
        "model",
        "outcome",
        "prompt",
        "rate_headers",
        "reader_outcome",
        "request_id",
        "stream",
        "trail",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.model: str | None = None  # the public model name the request asked for
        self.key: str | None = None  # the gateway key's configured name, never the key
        self.prompt: Any = None  # the messages, only with server.log_bodies on
        self.outcome: str | None = None  # how a request without a stream ended (client gone)
        #: How the request ended for its reader when its stream goes on without it (a detach grace).
        self.reader_outcome: str | None = None
        self.trail: Trail | None = None  # a JSON call's attempts: which deployment answered
        self.stream: ChatStream | None = None  # a streamed request's stream, once open
        self.error: BaseException | None = None  # what an error response was made from
        #: A limited key's x-ratelimit-* headers: every response carries them, errors too.
        self.rate_headers: dict[str, str] | None = None

    def log_fields(self) -> dict[str, Any]:
        """The request's own fields of its log line (the transport adds method, route, status, time)."""
        fields: dict[str, Any] = {"request_id": self.request_id}
        stream = self.stream
        if stream is not None:
            fields.update(stream.log_fields())
            if fields.get("outcome") is None and self.reader_outcome is not None:
                # The stream runs on (detached, waiting for a resume) but this request is over.
                fields["outcome"] = self.reader_outcome
                fields["stream_running"] = True
        else:
            if self.outcome is not None:
                fields["outcome"] = self.outcome
            if self.trail is not None:
                fields.update(self.trail.log_fields())
            log_fields = getattr(self.error, "log_fields", None)
            if log_fields is not None:
                fields.update(log_fields())
        if self.model is not None:
            fields.setdefault("model", self.model)
        if self.key is not None:
            fields["key"] = self.key
        if self.prompt is not None:
            fields["prompt"] = self.prompt
        return fields

    @property
    def failure(self) -> BaseException | None:
        """The error the request ended with: its own, or its stream's."""
        if self.error is not None:
            return self.error
        return self.stream.error if self.stream is not None else None


def context_of(scope: Any) -> RequestContext:
    """The ASGI scope's request context (made on first use, for scopes the middleware did not see)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    context = state.get(CONTEXT)
    if context is None:
        context = state[CONTEXT] = RequestContext(state.get("request_id", ""))
    assert isinstance(context, RequestContext)
    return context
