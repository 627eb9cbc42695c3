"""Streaming intent (API.md 1): the body's ``stream`` wins, else the Accept header decides."""

from __future__ import annotations


def accepts_event_stream(accept: str | None) -> bool:
    if not accept:
        return False
    for item in accept.split(","):
        media, _, params = item.partition(";")
        if media.strip().lower() != "text/event-stream":
            continue
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def wants_stream(stream_field: bool | None, accept: str | None) -> bool:
    if stream_field is not None:
        return stream_field
    return accepts_event_stream(accept)
