"""Prometheus scrape endpoint (API.md 5): this worker's metrics, or every worker's merged."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from app.observability.metrics import CONTENT_TYPE
from app.observability.worker_metrics import Scrape, WorkerUnavailable


@get("/metrics", include_in_schema=False)
async def metrics_endpoint(scrape: NamedDependency[Scrape]) -> Response[bytes]:
    # Content-Type as a header, not a media_type: Litestar would append a second "; charset=utf-8".
    try:
        body = await scrape()
    except WorkerUnavailable as exc:
        # A failed scrape, not a partial sum: Prometheus would read the missing worker as a reset.
        return Response(
            f"# a worker did not answer: {exc}\n".encode(), status_code=503, headers={"Content-Type": CONTENT_TYPE}
        )
    return Response(body, headers={"Content-Type": CONTENT_TYPE})
