"""The built-in browser chat page, its favicon, and the files both it and the API reference load.

Everything a browser needs is served by the gateway itself (no CDN): the page and the Swagger UI
work on a machine with no internet access.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import anyio
from litestar import Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE = STATIC / "index.html"
FAVICON = STATIC / "favicon.svg"
STATIC_PATH = "/static"
FAVICON_LINK = f"<link rel='icon' type='image/svg+xml' href='{STATIC_PATH}/favicon.svg'>"
SWAGGER_UI = f"{STATIC_PATH}/vendor/swagger-ui"


_INLINE = re.compile(rb"<(script|style)(?:\s[^>]*)?>(.*?)</\1>", re.DOTALL)


def content_security_policy(page: bytes) -> str:
    """The page may run its own inline script and style (by hash) and load from this origin only.

    A second line of defence behind the sanitizer: should model output ever reach the DOM as markup,
    an inline event handler or injected script would still not run, and nothing could be fetched from
    or sent to another origin.
    """
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for kind, body in _INLINE.findall(page):
        if body.strip():  # a <script src=...></script> has nothing inline to allow
            hashes[kind].append(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'")
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {' '.join(hashes[b'script'])}",
            f"style-src 'self' {' '.join(hashes[b'style'])}",
            "img-src 'self' data:",
            "connect-src 'self'",  # fetch and the WebSocket to this gateway only
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def page_headers(page: bytes) -> dict[str, str]:
    """What every HTML page of the gateway is sent with: its CSP, and no framing, sniffing or referrer."""
    return {
        "Content-Security-Policy": content_security_policy(page),
        "X-Frame-Options": "DENY",  # frame-ancestors' equivalent for browsers that predate it
        "Referrer-Policy": "no-referrer",  # links in answers must not learn the page's address (or its ?key=)
        "X-Content-Type-Options": "nosniff",
    }


#: For what is not a page (the OpenAPI document): nothing may run, load or frame it.
DOCUMENT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@get("/", include_in_schema=False)
async def chat_page() -> Response[bytes]:
    # Read per request, so that an edited page is served without a restart; in a worker thread, as
    # every file read on the request path is (no client makes the event loop wait on a disk).
    page = await anyio.Path(PAGE).read_bytes()
    # Its ETag from its bytes: a browser's revalidation on every load gets a 304 while it is the same
    # (ConditionalGetMiddleware), and the page itself as soon as it changes.
    etag = '"' + hashlib.blake2b(page, digest_size=16).hexdigest() + '"'
    headers = {"Cache-Control": "no-cache", "ETag": etag, **page_headers(page)}
    # Litestar appends "; charset=utf-8" to text/* media types itself: naming it here sent it twice.
    return Response(page, media_type="text/html", headers=headers)


@get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response[bytes]:
    # Pages link the SVG; this answers clients that ask for the conventional path anyway (no 404 in logs).
    icon = await anyio.Path(FAVICON).read_bytes()
    return Response(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


def static_files() -> Router:
    # no-cache: browsers revalidate (by ETag: a 304 from ConditionalGetMiddleware) and see a new
    # vendored version at once.
    return create_static_files_router(
        path=STATIC_PATH, directories=[STATIC], cache_control=CacheControlHeader(no_cache=True)
    )


def swagger_ui() -> SwaggerRenderPlugin:
    """Swagger UI at /schema/swagger, its scripts and styles served by the gateway."""
    return SwaggerRenderPlugin(
        path="/swagger",
        js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
        css_url=f"{SWAGGER_UI}/swagger-ui.css",
        standalone_preset_js_url=f"{SWAGGER_UI}/swagger-ui-standalone-preset.js",
        favicon=FAVICON_LINK,
    )


def _secure_schema_response(response: Response[Any]) -> Response[Any]:
    """The /schema pages (Swagger UI, the document, the 404 page) get the chat page's protections;
    an HTML page's CSP allows exactly its own inline script and style, by hash."""
    content = response.content
    media_type = str(response.media_type or "")
    if isinstance(content, bytes) and media_type.startswith("text/html"):
        headers = page_headers(content)
    else:
        headers = DOCUMENT_HEADERS
    for name, value in headers.items():
        response.headers.setdefault(name, value)
    return response


def schema_router(path: str = "/schema") -> Router:
    """The router Litestar fills with the /schema handlers (OpenAPIConfig.openapi_router)."""
    return Router(
        path,
        route_handlers=[],
        include_in_schema=False,
        dto=None,
        return_dto=None,
        after_request=_secure_schema_response,
    )
