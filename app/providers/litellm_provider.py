"""The provider over ``litellm.Router``: retries, fallbacks and per-deployment timeouts come from LiteLLM.

LiteLLM's exceptions are translated here, at the boundary, into ``GatewayError``s.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from app.errors import GatewayError, from_litellm
from app.protocol.openai import ChatCompletionInput
from app.providers.base import Chunk, Completion, asking_for_usage, usage_of
from app.providers.chunks import read_chunk
from app.providers.demo import register_demo_provider
from app.providers.litellm_metadata import model_metadata as _shipped_metadata  # noqa: F401 - copy the map before any Router
from app.providers.litellm_setup import import_litellm
from app.settings import DeploymentSettings, Settings

litellm = import_litellm()

#: Body fields the gateway sets itself rather than passing through.
_OWN_FIELDS = frozenset({"model", "messages", "stream"})
_encoder = msgspec.json.Encoder()


def router_model_list(deployments: list[DeploymentSettings], environ: Mapping[str, str]) -> list[dict[str, Any]]:
    model_list = []
    for dep in deployments:
        params: dict[str, Any] = {
            "model": dep.litellm_model,
            "timeout": dep.timeout_s,
            "stream_timeout": dep.timeout_s,
            "num_retries": dep.num_retries,
        }
        if dep.api_base:
            params["api_base"] = dep.api_base
        if dep.api_key_env:
            params["api_key"] = environ.get(dep.api_key_env, "")
        elif dep.api_base:
            # OpenAI-compatible local servers (vLLM, Ollama) need no key, but the SDK insists on one.
            params["api_key"] = "no-key"
        model_list.append({"model_name": dep.name, "litellm_params": params})
    return model_list


def build_router(settings: Settings, environ: Mapping[str, str] | None = None) -> Any:
    environ = os.environ if environ is None else environ
    register_demo_provider()
    deployments = settings.models.deployments
    fallbacks = [{dep.name: list(dep.fallbacks)} for dep in deployments if dep.fallbacks]
    cooldowns: dict[str, Any] = (
        {"cooldown_time": settings.models.cooldown_s} if settings.models.cooldown_s > 0 else {"disable_cooldowns": True}
    )
    return litellm.Router(
        model_list=router_model_list(deployments, environ),
        fallbacks=fallbacks,
        num_retries=0,
        set_verbose=False,
        **cooldowns,
    )


def _passthrough(request: ChatCompletionInput, *, stream: bool = False) -> dict[str, Any]:
    fields = {k: v for k, v in request.body.items() if k not in _OWN_FIELDS}
    if stream:
        fields["stream_options"] = asking_for_usage(fields.get("stream_options"))
    return fields


def chunk_from_litellm(obj: Any) -> Chunk:
    return read_chunk(_encoder.encode(obj.model_dump(exclude_none=True)))


class LiteLLMProvider:
    def __init__(self, router: Any) -> None:
        self._router = router

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        try:
            response = await self._router.acompletion(
                model=deployment, messages=request.body["messages"], stream=False, **_passthrough(request)
            )
        except GatewayError:
            raise
        except Exception as exc:
            raise from_litellm(exc) from exc
        data = response.model_dump(exclude_none=True)
        return Completion(raw=_encoder.encode(data), usage=usage_of(data.get("usage")))

    async def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        try:
            upstream = await self._router.acompletion(
                model=deployment, messages=request.body["messages"], stream=True, **_passthrough(request, stream=True)
            )
        except Exception as exc:
            raise from_litellm(exc) from exc
        try:
            async for item in upstream:
                yield chunk_from_litellm(item)
        except GatewayError:
            raise
        except Exception as exc:
            raise from_litellm(exc) from exc
        finally:
            # Closing the wrapper closes the provider's HTTP response at once; this is what makes
            # a client disconnect reach the provider.
            await upstream.aclose()

    async def aclose(self) -> None:
        return None
