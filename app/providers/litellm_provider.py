"""The full path over ``litellm.Router``, for providers the relay cannot speak to (Anthropic, Bedrock, ...).

Each deployment is its own Router model, addressed by its id, with no retries, fallbacks or
cooldowns of the Router's: those sit in front of both paths (``providers/resilient.py``), so that a
group mixing both paths follows one set of rules and one set of metrics.

LiteLLM's exceptions are translated here, at the boundary, into ``GatewayError``s.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from app.config.settings import DeploymentSettings, Settings
from app.domain.chat_request import ChatCompletionInput
from app.domain.chunks import Chunk, Completion, usage_of
from app.domain.errors import GatewayError, InvalidRequest
from app.providers.anthropic_fields import ANTHROPIC_BODY_FIELDS
from app.providers.base import asking_for_usage
from app.providers.chunks import read_chunk
from app.providers.demo import is_demo
from app.providers.litellm_setup import import_litellm
from app.providers.quoting import ProviderText
from app.providers.translate import from_litellm

litellm = import_litellm()

from litellm.types.llms.openai import ValidUserMessageContentTypes  # noqa: E402  (LiteLLM is set up first)

#: Body fields that are ``Router.acompletion``'s own arguments (the deployment's name, the messages,
#: the stream flag), not parameters to pass through. The relay's set differs on purpose
#: (``relay_target.py``: the fields it rewrites in a body that otherwise goes out as sent).
_CALL_ARGUMENTS = frozenset({"model", "messages", "stream"})
_encoder = msgspec.json.Encoder()


def router_model_list(deployments: list[DeploymentSettings], environ: Mapping[str, str]) -> list[dict[str, Any]]:
    model_list = []
    for dep in deployments:
        if is_demo(dep.litellm_model):
            continue  # served in process (app/providers/demo.py), never through LiteLLM
        params: dict[str, Any] = {
            "model": dep.litellm_model,
            "timeout": dep.timeout_s,
            "stream_timeout": dep.timeout_s,
            "num_retries": 0,
        }
        if dep.api_base:
            params["api_base"] = dep.api_base
        if dep.api_key_env:
            params["api_key"] = environ.get(dep.api_key_env, "")
        elif dep.api_base:
            # OpenAI-compatible local servers (vLLM, Ollama) need no key, but the SDK insists on one.
            params["api_key"] = "no-key"
        model_list.append({"model_name": dep.id, "litellm_params": params, "model_info": {"id": dep.id}})
    return model_list


def build_router(settings: Settings, environ: Mapping[str, str] | None = None) -> Any:
    environ = os.environ if environ is None else environ
    return litellm.Router(
        model_list=router_model_list(settings.models.deployments, environ),
        num_retries=0,
        set_verbose=False,
        disable_cooldowns=True,
    )


#: OpenAI fields that are LiteLLM arguments of its own as well: passed as body fields, so that
#: LiteLLM never reads the client's value as its own (``metadata`` is its logging metadata).
_AMBIGUOUS_FIELDS = frozenset({"metadata"})


def _passthrough(request: ChatCompletionInput, *, stream: bool = False, anthropic: bool = False) -> dict[str, Any]:
    """The keyword arguments for ``Router.acompletion``: OpenAI's own fields as parameters (LiteLLM
    maps them per provider), everything else only as ``extra_body``, never as an argument.

    For an Anthropic deployment the fixed set of Anthropic request fields (``ANTHROPIC_BODY_FIELDS``:
    ``thinking``, ``top_k``, ``context_management``, ...) are parameters too: LiteLLM's Anthropic
    mapping writes them into Anthropic's body, where it would send ``extra_body`` itself as a field."""
    fields = request.openai_params(exclude=_CALL_ARGUMENTS | _AMBIGUOUS_FIELDS)
    if stream:
        fields["stream_options"] = asking_for_usage(fields.get("stream_options"))
    else:
        fields.pop("stream_options", None)
    if request.trace_headers:
        fields["extra_headers"] = dict(request.trace_headers)  # ours: clients may never set this field
    extra = request.extra_fields()
    if anthropic:
        for name in ANTHROPIC_BODY_FIELDS & extra.keys():
            fields[name] = extra.pop(name)
    for name in _AMBIGUOUS_FIELDS:
        if name in request.body:
            extra[name] = request.body[name]
    if extra:
        fields["extra_body"] = extra
    return fields


#: The user content part types LiteLLM's message check lets through; it refuses any other with a
#: bare Exception before a provider is called (that became a 502 for the client's own mistake).
_USER_PART_TYPES = frozenset(ValidUserMessageContentTypes)


def check_user_parts(request: ChatCompletionInput) -> None:
    """400 ``unsupported_content`` for a user content part of a type LiteLLM does not take."""
    for i, message in enumerate(request.request.messages):
        if message.role != "user" or not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            kind = part.get("type")
            if kind not in _USER_PART_TYPES:
                param = f"messages[{i}].content[{j}].type"
                raise InvalidRequest(
                    f"`{param}`: {str(kind)[:64]!r} is not a content part type this model's deployment takes.",
                    code="unsupported_content",
                    param=param,
                )


def chunk_from_litellm(obj: Any) -> Chunk:
    return read_chunk(_encoder.encode(obj.model_dump(exclude_none=True)))


class LiteLLMProvider:
    def __init__(self, router: Any, quote: ProviderText | None = None) -> None:
        self._router = router
        registry = getattr(router, "registry", None)
        entries = registry().all() if callable(registry) else getattr(router, "model_list", None) or ()
        #: Deployment ids of Anthropic deployments (their Anthropic request fields are parameters).
        self._anthropic = frozenset(
            m["model_name"]
            for m in entries
            if str(m.get("litellm_params", {}).get("model", "")).startswith("anthropic/")
        )
        self._quote = quote or ProviderText()

    def _error(self, exc: BaseException) -> GatewayError:
        # LiteLLM's logging object keeps the exception, and the exception's traceback runs through
        # frames that hold that logging object: a cycle, which without this would also hold the
        # frame of ours the traceback starts in (the request, the stream) until the collector runs.
        exc.__traceback__ = None
        return self._quote.quote(from_litellm(exc))

    async def complete(self, request: ChatCompletionInput, deployment: str) -> Completion:
        check_user_parts(request)
        try:
            response = await self._router.acompletion(
                model=deployment,
                messages=request.body["messages"],
                stream=False,
                **_passthrough(request, anthropic=deployment in self._anthropic),
            )
        except GatewayError as exc:
            raise self._quote.quote(exc) from None
        except Exception as exc:
            raise self._error(exc) from None  # the cause holds the provider's unredacted text
        data = response.model_dump(exclude_none=True)
        return Completion(raw=_encoder.encode(data), usage=usage_of(data.get("usage")))

    async def stream(self, request: ChatCompletionInput, deployment: str) -> AsyncIterator[Chunk]:
        check_user_parts(request)
        try:
            upstream = await self._router.acompletion(
                model=deployment,
                messages=request.body["messages"],
                stream=True,
                **_passthrough(request, stream=True, anthropic=deployment in self._anthropic),
            )
        except Exception as exc:
            raise self._error(exc) from None  # the cause holds the provider's unredacted text
        try:
            async for item in upstream:
                yield chunk_from_litellm(item)
        except GatewayError as exc:
            raise self._quote.quote(exc) from None
        except Exception as exc:
            raise self._error(exc) from None  # the cause holds the provider's unredacted text
        finally:
            # Closing the wrapper closes the provider's HTTP response at once; this is what makes
            # a client disconnect reach the provider.
            await upstream.aclose()

    async def aclose(self) -> None:
        return None
