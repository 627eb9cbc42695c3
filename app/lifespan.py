"""Shared services, built when the app starts and closed when it stops; handlers get them injected."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar

from app.chat.catalogue import Catalogue, Snapshot, build_snapshot
from app.chat.service import ChatService
from app.metrics import Metrics
from app.providers.base import Provider
from app.settings import Settings


@dataclass
class Services:
    settings: Settings
    provider: Provider
    catalogue: Catalogue
    chat: ChatService
    closers: list[Callable[[], Any]] = field(default_factory=list)


def build_services(
    settings: Settings, metrics: Metrics | None = None, environ: Mapping[str, str] | None = None
) -> Services:
    # Imported here so that importing the app (and --help, and config errors) never pays for LiteLLM.
    from app.providers.litellm_metadata import model_metadata, provider_of
    from app.providers.litellm_provider import LiteLLMProvider, build_router

    environ = os.environ if environ is None else environ
    provider = LiteLLMProvider(build_router(settings, environ))

    async def build() -> Snapshot:
        return build_snapshot(settings.models.deployments, model_metadata, provider_of)

    catalogue = Catalogue(build, settings.models.refresh_s)

    def model_names() -> frozenset[str]:
        snapshot = catalogue.current()
        return snapshot.names if snapshot is not None else frozenset()

    chat = ChatService(settings, provider, model_names=model_names, observer=metrics)
    return Services(settings=settings, provider=provider, catalogue=catalogue, chat=chat, closers=[provider.aclose])


def services_lifespan(settings: Settings, metrics: Metrics) -> Callable[[Litestar], Any]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = build_services(settings, metrics)
        await services.catalogue.get()
        app.state.services = services
        app.state.chat = services.chat
        app.state.catalogue = services.catalogue
        try:
            yield
        finally:
            for close in reversed(services.closers):
                result = close()
                if hasattr(result, "__await__"):
                    await result

    return lifespan
