"""The Responses service's life: its store built at start-up (after the chat services), closed at exit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar

from app.api.responses.service import ResponsesService
from app.api.responses.store import MemoryResponseStore, RedisResponseStore, ResponseStore
from app.config.settings import Settings


def build_store(settings: Settings) -> ResponseStore:
    if settings.responses.store == "redis":
        return RedisResponseStore(settings.redis.url)
    return MemoryResponseStore(settings.responses.max_store_mb * 1024 * 1024)


def responses_lifespan(settings: Settings) -> Callable[[Litestar], Any]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        store = build_store(settings)
        service = ResponsesService(settings, app.state.chat, store, app.state.resumes)
        app.state.responses = service
        if settings.responses.store == "redis":
            app.state.ready_checks["responses_store"] = store.health
        try:
            yield
        finally:
            await service.close()

    return lifespan
