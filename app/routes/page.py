"""The built-in browser chat page."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get

PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"


@get("/", include_in_schema=False, sync_to_thread=False)
def chat_page() -> Response[bytes]:
    # Litestar appends "; charset=utf-8" to text/* media types itself: naming it here sent it twice.
    return Response(PAGE.read_bytes(), media_type="text/html", headers={"Cache-Control": "no-cache"})
