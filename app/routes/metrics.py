"""Prometheus scrape endpoint (API.md 5)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from app.metrics import CONTENT_TYPE, Metrics


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics_endpoint(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    # As a header, not a media_type: Litestar would append a second "; charset=utf-8" to this text/* type.
    return Response(metrics.render(), headers={"Content-Type": CONTENT_TYPE})
