"""create_app(settings) -> Litestar: wiring only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from litestar import Litestar, Request
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from app.access.keys import Caller, GatewayKeys
from app.api.responses.lifespan import responses_lifespan
from app.api.responses.service import ResponsesService
from app.catalogue.catalogue import Catalogue
from app.config.settings import Settings, load_settings
from app.core.drain import Drain
from app.core.service import ChatService
from app.observability.log import configure_logging
from app.observability.metrics import Metrics
from app.observability.worker_metrics import Scrape, scrape_lifespan
from app.resume.service import Resumes
from app.routes.chat import CHAT_PATHS, ChatContext, ChatController, create_chat_completion
from app.routes.chat_socket import chat_socket
from app.routes.direct import Direct, DirectRoutes
from app.routes.embeddings import EMBEDDINGS_PATHS, EmbeddingsContext, EmbeddingsController, create_embeddings
from app.routes.health import live, ready
from app.routes.messages import MESSAGES_PATHS, MessagesController, create_message
from app.routes.metrics import metrics_endpoint
from app.routes.models import ModelsController
from app.routes.page import chat_page, favicon, schema_router, static_files, swagger_ui
from app.routes.responses import RESPONSES_PATHS, ResponsesContext, ResponsesController, create_response
from app.routes.responses_socket import responses_socket
from app.routes.streams import StreamsController
from app.server.http_errors import EXCEPTION_HANDLERS
from app.server.lifespan import provider_text, services_lifespan
from app.server.middleware import ConditionalGetMiddleware, JsonCompressionMiddleware, RequestIdMiddleware
from app.server.version import version
from app.transport.request_parts import header


def create_app(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> Litestar:
    """The app for ``settings``; ``environ`` (default: the process environment) holds the keys it names."""
    environ = os.environ if environ is None else environ
    settings = settings or load_settings(environ=environ)
    info_line = configure_logging(settings.server.log_level)
    metrics = Metrics()

    def provide_settings() -> Settings:
        return settings

    keys = GatewayKeys.from_settings(settings, environ)
    quote = provider_text(settings, environ)  # redacts provider and library text for every configured secret
    drain = Drain(settings.server.shutdown_delay_s, settings.server.drain_s)

    def provide_chat_context(request: Request[Any, Any, Any]) -> ChatContext:
        # request.app.state, not a `state` parameter: Litestar builds a State copy per request for that.
        return ChatContext(request.app.state.chat, settings, provide_caller(request))

    def provide_chat(state: State) -> ChatService:
        chat: ChatService = state.chat
        return chat

    def provide_embeddings_context(request: Request[Any, Any, Any]) -> EmbeddingsContext:
        return EmbeddingsContext(request.app.state.embeddings, provide_caller(request))

    def provide_catalogue(state: State) -> Catalogue:
        catalogue: Catalogue = state.catalogue
        return catalogue

    def provide_resumes(state: State) -> Resumes:
        resumes: Resumes = state.resumes
        return resumes

    def provide_responses(state: State) -> ResponsesService:
        responses: ResponsesService = state.responses
        return responses

    def provide_responses_context(request: Request[Any, Any, Any]) -> ResponsesContext:
        return ResponsesContext(request.app.state.responses, provide_caller(request))

    def provide_metrics() -> Metrics:
        return metrics

    def provide_scrape(state: State) -> Scrape:
        scrape: Scrape = state.scrape
        return scrape

    def provide_keys() -> GatewayKeys:
        return keys

    def provide_caller(request: Request[Any, Any, Any]) -> Caller:
        return keys.from_headers(header(request.scope, b"authorization"), header(request.scope, b"x-api-key"))

    cors = CORSConfig(allow_origins=settings.server.cors_origins) if settings.server.cors_origins else None
    app = Litestar(
        route_handlers=[
            ChatController,
            MessagesController,
            EmbeddingsController,
            StreamsController,
            chat_socket,
            ModelsController,
            ResponsesController,
            responses_socket,
            live,
            ready,
            metrics_endpoint,
            chat_page,
            favicon,
            static_files(),
        ],
        dependencies={
            "settings": Provide(provide_settings, sync_to_thread=False),
            "chat": Provide(provide_chat, sync_to_thread=False),
            "catalogue": Provide(provide_catalogue, sync_to_thread=False),
            "embeddings_context": Provide(provide_embeddings_context, sync_to_thread=False),
            "keys": Provide(provide_keys, sync_to_thread=False),
            "metrics": Provide(provide_metrics, sync_to_thread=False),
            "resumes": Provide(provide_resumes, sync_to_thread=False),
            "scrape": Provide(provide_scrape, sync_to_thread=False),
            "caller": Provide(provide_caller, sync_to_thread=False),
            "chat_context": Provide(provide_chat_context, sync_to_thread=False),
            "responses": Provide(provide_responses, sync_to_thread=False),
            "responses_context": Provide(provide_responses_context, sync_to_thread=False),
        },
        lifespan=[
            services_lifespan(settings, metrics, environ, drain, quote),
            responses_lifespan(settings),
            scrape_lifespan(settings, metrics, environ),
        ],
        on_shutdown=[lambda: metrics.shutdown()],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[DefineMiddleware(JsonCompressionMiddleware), DefineMiddleware(ConditionalGetMiddleware)],
        cors_config=cors,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Chat Gateway",
            version=version(),
            path="/schema",
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), swagger_ui()],
            openapi_router=schema_router(),
        ),
        debug=False,
        # The standard library's records go through configure_logging's handler (JSON lines, as the
        # gateway's own); Litestar's default would add a queue thread writing them as plain text.
        logging_config=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.gateway_keys = keys  # not "keys": State is a mapping, whose keys() method would answer
    app.state.drain = drain
    app.state.quote = quote
    app.state.info_line = info_line  # the access line's writer, for the WebSocket requests' lines too
    # Outside the router, so that unroutable requests (404, 405) get an X-Request-ID and a log line too.
    # The hottest routes beside Litestar's pipeline (routes/direct.py), except where CORS must see them.
    handler = app.asgi_handler
    if cors is None:
        direct: list[Direct[Any]] = [
            Direct(CHAT_PATHS, create_chat_completion, provide_chat_context),
            Direct(RESPONSES_PATHS, create_response, provide_responses_context),
            Direct(MESSAGES_PATHS, create_message, provide_chat_context),
            Direct(EMBEDDINGS_PATHS, create_embeddings, provide_embeddings_context),
        ]
        handler = DirectRoutes(app, handler, direct)
    app.asgi_handler = RequestIdMiddleware(handler, observers=[metrics.http_request], drain=drain, info_line=info_line)
    return app


def app_factory() -> Any:
    """uvicorn --factory entry point."""
    return create_app()
