"""The built-in browser chat page, its favicon, and the files both it and the API reference load.

Everything a browser needs is served by the gateway itself (no CDN): the page and the Swagger UI
work on a machine with no internet access.
"""

from __future__ import annotations

from pathlib import Path

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


@get("/", include_in_schema=False, sync_to_thread=False)
def chat_page() -> Response[bytes]:
    # Litestar appends "; charset=utf-8" to text/* media types itself: naming it here sent it twice.
    return Response(PAGE.read_bytes(), media_type="text/html", headers={"Cache-Control": "no-cache"})


@get("/favicon.ico", include_in_schema=False, sync_to_thread=False)
def favicon() -> Response[bytes]:
    # Pages link the SVG; this answers clients that ask for the conventional path anyway (no 404 in logs).
    return Response(FAVICON.read_bytes(), media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


def static_files() -> Router:
    # no-cache: browsers revalidate (cheap, by ETag) and see a new vendored version at once.
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
