"""Prometheus scrape endpoint (API.md 5)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from app.metrics import CONTENT_TYPE, Metrics


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics_endpoint(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    return Response(metrics.render(), media_type=CONTENT_TYPE)
