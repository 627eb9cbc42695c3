"""Liveness and readiness (API.md 5)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency

from app.settings import Settings


@get("/health/live", summary="200 while the process serves", sync_to_thread=False)
def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", summary="200 when configuration is loaded and every backend answers")
async def ready(request: Request[Any, Any, Any], settings: NamedDependency[Settings]) -> Response[dict[str, Any]]:
    checks: dict[str, str] = {"config": "ok"}
    services = getattr(request.app.state, "services", None)
    checks["providers"] = "ok" if services is not None else "starting"
    for name, check in getattr(request.app.state, "ready_checks", {}).items():
        checks[name] = "ok" if await check() else "unavailable"
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        # Draining (API.md 1.4): the load balancer must stop sending, whatever the checks say.
        return Response({"status": "draining", "checks": checks}, status_code=503)
    healthy = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )
