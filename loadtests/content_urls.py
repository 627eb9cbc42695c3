"""What LiteLLM's chat configs do with URLs in content parts: passed on, or fetched by LiteLLM itself.

The capture behind ``app/providers/content_urls.py``'s table. A local host counts every request;
each provider's ``transform_request`` is given an ``image_url``, a ``file.file_id`` and an
``input_audio.data`` URL pointing at it (and https URLs at a port where nothing listens: a fetch
shows as LiteLLM's "Unable to fetch" error), and the script prints, per provider and part, how
many times the host was fetched and what LiteLLM would send. Nothing leaves 127.0.0.1.

    .venv/bin/python -m loadtests.content_urls
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from typing import Any

from app.providers.litellm_setup import import_litellm

PROVIDERS = ("openai/gpt-4o-mini", "anthropic/claude-3-5-sonnet-20240620", "gemini/gemini-1.5-flash", "ollama/llava")


class _CountingHost(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b"%PDF-1.4 tiny"
        self.send_response(200)
        self.send_header("Content-Type", "application/pdf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


def transform(litellm: Any, model: str, parts: list[dict[str, Any]]) -> str:
    from litellm.utils import ProviderConfigManager

    name, provider, _key, _base = litellm.get_llm_provider(model)
    config = ProviderConfigManager.get_provider_chat_config(model=name, provider=litellm.LlmProviders(provider))
    try:
        out = config.transform_request(
            name, [{"role": "user", "content": parts}], {"max_tokens": 10}, {"custom_llm_provider": provider}, {}
        )
        return json.dumps(out["messages"])
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHost)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    litellm = import_litellm()
    logging.getLogger("LiteLLM").setLevel(logging.CRITICAL)  # its failed fetches log whole tracebacks
    litellm.user_url_allowed_hosts = ["127.0.0.1", f"127.0.0.1:{port}"]  # LiteLLM refuses private hosts otherwise
    here = f"http://127.0.0.1:{port}"
    parts = {
        "image_url http": {"type": "image_url", "image_url": {"url": f"{here}/i.png"}},
        "image_url https": {"type": "image_url", "image_url": {"url": "https://127.0.0.1:1/i.png"}},
        "file_id http": {"type": "file", "file": {"file_id": f"{here}/x.pdf"}},
        "file_id https": {"type": "file", "file": {"file_id": "https://127.0.0.1:1/x.pdf"}},
        "input_audio": {"type": "input_audio", "input_audio": {"data": f"{here}/a.wav", "format": "wav"}},
    }
    try:
        for model in PROVIDERS:
            for label, part in parts.items():
                before = len(_CountingHost.hits)
                sent = transform(litellm, model, [part])
                fetched = len(_CountingHost.hits) - before
                print(f"{model:38} {label:16} fetched={fetched} -> {sent[:140]}")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
