"""Liveness and readiness (API.md 5)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency

from app.config.settings import Settings


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
    balancer = getattr(services, "balancer", None)
    cooling: dict[str, list[str]] = balancer.cooling() if balancer is not None else {}
    if balancer is not None and any(len(g.members) > 1 for g in balancer.groups.values()):
        # Ready while every group has a deployment that is not resting (a group of one never rests).
        whole = [name for name, ids in cooling.items() if len(ids) == len(balancer.groups[name].members)]
        checks["deployments"] = "ok" if not whole else "unavailable"
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        # Draining (API.md 1.4): the load balancer must stop sending, whatever the checks say.
        return Response({"status": "draining", "checks": checks}, status_code=503)
    healthy = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "unavailable", "checks": checks}
    if cooling:
        body["cooling_down"] = cooling  # group -> ids of its resting deployments
    return Response(body, status_code=200 if healthy else 503)
