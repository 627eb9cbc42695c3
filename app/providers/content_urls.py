"""URLs in content parts: passed to providers that take them, refused for the rest; never fetched.

A client's URL is the provider's to fetch, or nobody's. LiteLLM's request transformations fetch
some of them themselves, synchronously, on the event loop (a whole worker waits on the client's
host): captured with LiteLLM 1.110.2 against a local server that counts requests
(``python -m loadtests.content_urls``),

============================  ==============================  ===================================
provider (chat config)        ``image_url`` http(s)           ``file.file_id`` URL
============================  ==============================  ===================================
OpenAI wire (OpenAIGPTConfig) passed on untouched             downloaded, sent as ``file_data``
anthropic                     https: passed as a URL source;  passed as a document URL source
                              http: downloaded
any other                     not established: refused
============================  ==============================  ===================================

(``input_audio.data`` is never fetched by the OpenAI wire; it is base64 data, so a URL there is
refused too.) So each deployment gets a ``UrlPolicy`` once, from its provider, and every request
is checked against the policy of the deployment it is sent to, before either path sees it: a
remote URL the policy does not pass is a 400 ``unsupported_content`` naming the field, and
nothing fetches it. ``data:`` URLs are inline data, not fetched by anyone, and pass. The relay
sends the client's body as it came (``relay_target.py``), so it fetches nothing itself; its
deployments get the OpenAI wire's policy all the same, so that a part means the same on both
paths (an OpenAI-wire provider takes no URL as a ``file_id``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from app.domain.errors import InvalidRequest
from app.domain.json_path import path_of

#: What LiteLLM treats as a URL to fetch (it also takes ``www.`` without a scheme), and schemes
#: that name something to read all the same.
_REMOTE: Final = ("http://", "https://", "www.", "ftp://", "file://", "//")


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs a provider is given as URLs (and fetches itself); every other one is refused."""

    name: str
    image_schemes: tuple[str, ...] = ()  # image_url.url schemes passed on
    file_schemes: tuple[str, ...] = ()  # file.file_id schemes passed on

    def check(self, messages: Any, client_body: dict[str, Any] | None = None) -> None:
        """Raise 400 ``unsupported_content`` for the first remote URL in ``messages`` not passed on,
        named where the client put it when ``messages`` are a translation of ``client_body``."""
        for path, url, kind in remote_urls(messages):
            allowed = self.image_schemes if kind == "image" else self.file_schemes if kind == "file" else ()
            if not url.lower().startswith(allowed) or not allowed:
                param: str | None = path
                where = f"`{path}`"
                if client_body is not None:
                    # The translation's indices are not the client's (a system prompt, split tool
                    # results, a stored conversation in front): the URL is found in what it sent.
                    param = path_of(client_body, url)
                    where = f"`{param}`" if param is not None else "the conversation's earlier input"
                raise InvalidRequest(
                    f"This model's provider is not given URLs in {where}, and the gateway does not fetch "
                    "them: send the content inline (a data: URL or base64 data) or use a model that takes URLs.",
                    code="unsupported_content",
                    param=param,
                )


NO_URLS: Final = UrlPolicy("none")
OPENAI_WIRE: Final = UrlPolicy("openai", image_schemes=("http://", "https://"))
ANTHROPIC: Final = UrlPolicy("anthropic", image_schemes=("https://",), file_schemes=("http://", "https://"))


def policy_for(litellm_model: str, api_base: str | None = None) -> UrlPolicy:
    """The policy of a deployment, from the chat config LiteLLM uses for its provider."""
    from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig
    from litellm.utils import ProviderConfigManager

    from app.providers.litellm_setup import import_litellm

    litellm = import_litellm()
    try:
        model, provider, _key, _base = litellm.get_llm_provider(litellm_model, api_base=api_base or None)
        config = ProviderConfigManager.get_provider_chat_config(model=model, provider=litellm.LlmProviders(provider))
    except Exception:
        return NO_URLS
    if provider == "anthropic":
        return ANTHROPIC
    # Subclasses of the OpenAI config that change how content is sent are other providers' dialects.
    if type(config) is OpenAIGPTConfig or (
        isinstance(config, OpenAIGPTConfig)
        and type(config)._transform_content_item is OpenAIGPTConfig._transform_content_item
        and type(config).transform_request is OpenAIGPTConfig.transform_request
    ):
        return OPENAI_WIRE
    return NO_URLS


def remote_urls(messages: Any) -> Iterator[tuple[str, str, str]]:
    """``(field path, url, kind)`` for every remote URL in the messages' content parts; kind is
    ``image`` (``image_url``), ``file`` (``file.file_id``) or ``other``. Text is not looked into."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            base = f"messages[{i}].content[{j}]"
            for name, value in part.items():
                if name in ("type", "text"):
                    continue
                for path, url in _strings(value, f"{base}.{name}"):
                    if not url.lstrip().lower().startswith(_REMOTE):
                        continue
                    if name == "image_url" and path in (f"{base}.image_url", f"{base}.image_url.url"):
                        yield path, url.lstrip(), "image"
                    elif path == f"{base}.file.file_id":
                        yield path, url.lstrip(), "file"
                    else:
                        yield path, url.lstrip(), "other"


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    # Bounded: the body's nesting is capped at decode (domain/chat_request.py, MAX_JSON_DEPTH).
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
