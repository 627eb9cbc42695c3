"""The relay fast path: which deployments take it, and how it reads an upstream's SSE."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config.settings import DeploymentSettings
from app.domain.chat_request import parse_chat_body
from app.domain.errors import ContextLengthExceeded, RateLimited, UpstreamUnavailable
from app.providers.chunks import error_from_reply, read_chunk
from app.providers.relay import Relay, RelayStream, _data_of
from app.providers.relay_target import OPENAI_WIRE, _resolve_with_litellm, request_body, resolve_target
from tests.conftest import ServerThread
from tests.helpers.fake_provider import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("litellm_model", "api_base", "fast"),
    [
        ("openai/gpt-4o-mini", "", True),
        ("hosted_vllm/llama", "http://127.0.0.1:8001/v1", True),
        ("groq/llama3-8b", "", True),
        ("deepseek/deepseek-chat", "", True),
        ("anthropic/claude-sonnet-4-5", "", False),
        ("gemini/gemini-2.5-flash", "", False),
        ("ollama_chat/llama3.1", "http://127.0.0.1:11434", False),
        ("demo/demo", "", False),
    ],
)
def test_fast_path_is_chosen_from_litellm_provider_config(litellm_model: str, api_base: str, fast: bool) -> None:
    dep = DeploymentSettings(name="m", litellm_model=litellm_model, api_base=api_base)
    assert (resolve_target(dep, {}) is not None) is fast


def test_config_forces_full_path_and_resilience_keeps_the_fast_path() -> None:
    base = {"name": "m", "litellm_model": "openai/gpt-4o-mini"}
    assert resolve_target(DeploymentSettings(**base, fast_path=False), {}) is None
    # Resilience stays on the fast path.
    assert resolve_target(DeploymentSettings(**base, fallbacks=["x"]), {}) is not None
    assert resolve_target(DeploymentSettings(**base, num_retries=2), {}) is not None


def test_resolved_target_uses_litellm_url_and_key() -> None:
    dep = DeploymentSettings(name="m", litellm_model="openai/gpt-4o-mini", api_key_env="K")
    target = resolve_target(dep, {"K": "sk-test"})
    assert target is not None
    assert str(target.url) == "https://api.openai.com/v1/chat/completions"
    head = target.request.head.decode("latin-1").split("\r\n")
    assert head[0] == "POST /v1/chat/completions HTTP/1.1"
    assert "Host: api.openai.com" in head
    assert "Authorization: Bearer sk-test" in head
    assert "Accept-Encoding: identity" in head
    assert target.model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("litellm_model", "api_base", "renamed"),
    [
        ("openai/o3", "", True),
        ("openai/gpt-4o", "https://api.openai.com/v1", True),
        ("hosted_vllm/m", "http://127.0.0.1:8001/v1", False),
        ("groq/llama3-8b", "", False),
    ],
)
def test_openais_own_api_gets_the_cap_as_max_completion_tokens(
    litellm_model: str, api_base: str, renamed: bool
) -> None:
    """OpenAI's reasoning models refuse max_tokens (which the Messages and Responses translations
    send); every OpenAI model takes max_completion_tokens. Other providers get the body as sent."""
    target = resolve_target(DeploymentSettings(name="m", litellm_model=litellm_model, api_base=api_base), {})
    assert target is not None
    asked = parse_chat_body(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}')
    sent = json.loads(request_body(target, asked, stream=True))
    assert (sent.get("max_completion_tokens"), sent.get("max_tokens")) == ((50, None) if renamed else (None, 50))
    both = parse_chat_body(
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 9}'
    )
    assert json.loads(request_body(target, both, stream=False))["max_completion_tokens"] == 9  # the client's own


def test_sse_event_parsing() -> None:
    assert _data_of(b'data: {"a":1}') == b'{"a":1}'
    assert _data_of(b'data: {"a":1}\r') == b'{"a":1}'
    assert _data_of(b": keep-alive") is None
    assert _data_of(b"event: x\ndata: [DONE]") == b"[DONE]"
    assert _data_of(b"data: line1\ndata: line2") == b"line1\nline2"


def test_chunk_view_reads_only_what_it_needs() -> None:
    raw = b'{"id":"x","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"extra":{"a":[1]}}'
    chunk = read_chunk(raw)
    assert chunk.raw is raw  # forwarded without re-encoding
    assert chunk.has_content and chunk.finish_reason is None and chunk.usage is None
    usage = read_chunk(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}')
    assert usage.usage_only and usage.usage is not None and usage.usage.completion_tokens == 4
    tool = read_chunk(b'{"choices":[{"delta":{"tool_calls":[{"index":0}]},"finish_reason":null}]}')
    assert tool.has_content
    multi = read_chunk(b'{"choices":\n[]}')
    assert b"\n" not in multi.raw and json.loads(multi.raw) == {"choices": []}


def test_error_event_and_error_replies() -> None:
    with pytest.raises(UpstreamUnavailable):
        read_chunk(b'{"error":{"message":"boom","type":"server_error"}}')
    body = b'{"error":{"message":"This model\'s maximum context length is 10","code":"context_length_exceeded"}}'
    assert isinstance(error_from_reply(400, body, {}), ContextLengthExceeded)
    limited = error_from_reply(429, b'{"error":{"message":"slow down"}}', {"retry-after": "2.5"})
    assert isinstance(limited, RateLimited) and limited.retry_after == 3
    assert isinstance(error_from_reply(502, b"<html>bad gateway</html>", {}), Exception)


def test_test_gateway_takes_the_path_it_says(gateway: ServerThread) -> None:
    provider = gateway.app.state.services.provider
    expected = "fast" if gateway.settings.models.deployments[1].fast_path else "full"
    # Providers are addressed by deployment id ("<name>-<n>" by default).
    assert provider.path_of("normal-1") == expected
    assert provider.path_of("demo-1") == "full"
    # Fallbacks no longer force the full path: resilience sits in front of both paths.
    assert provider.path_of("with_fallback-1") == "fast"


class _EndlessProvider:
    """A provider whose reply body never ends (chunked, 64 KB pieces, as fast as it is read): ``start``
    is the body's first bytes; ``closed`` is set once the relay has closed the connection."""

    def __init__(self, content_type: bytes, start: bytes) -> None:
        self.content_type, self.start = content_type, start
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nTransfer-Encoding: chunked\r\n\r\n" % self.content_type)
        piece = self.start + b"x" * 65_536
        try:
            while True:
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
                piece = b"x" * 65_536
        except ConnectionError:
            self.closed.set()

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._reply, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        dep = DeploymentSettings(name="m", litellm_model="openai/m", api_base=f"http://127.0.0.1:{port}/v1")
        target = resolve_target(dep, {})
        assert target is not None
        self.relay = Relay({"m": target})
        return self.relay

    async def __aexit__(self, *exc: object) -> None:
        await self.relay.aclose()
        assert self.server is not None
        self.server.close()


_HI = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


async def test_an_event_that_never_ends_is_refused_not_buffered() -> None:
    # A provider that streams one endless SSE event (no blank line ever): past MAX_EVENT_BYTES (4 MB) the
    # relay ends the stream with an error and closes the provider's connection.
    provider = _EndlessProvider(b"text/event-stream", b"data: ")
    async with provider as relay:
        stream = relay.stream(parse_chat_body(_HI), "m")
        try:
            async with asyncio.timeout(10):
                with pytest.raises(UpstreamUnavailable, match="larger than the gateway accepts"):
                    await anext(stream)
                await provider.closed.wait()  # the provider saw its connection closed
        finally:
            await stream.aclose()


async def test_an_answer_that_never_ends_is_refused_not_buffered() -> None:
    # The same for a whole (non-streamed) answer: read up to MAX_ANSWER_BYTES (32 MB), then an error
    # and the provider's connection closed, rather than the gateway's memory.
    provider = _EndlessProvider(b"application/json", b'{"choices": [{"message": {"content": "')
    async with provider as relay:
        async with asyncio.timeout(20):
            with pytest.raises(UpstreamUnavailable, match="larger than the gateway accepts"):
                await relay.complete(parse_chat_body(_HI), "m")
            await provider.closed.wait()


@pytest.mark.parametrize("provider", sorted(p for p, base in OPENAI_WIRE.items() if base))
def test_the_native_table_resolves_as_litellm_does(provider: str) -> None:
    dep = DeploymentSettings(name="m", litellm_model=f"{provider}/some-model", api_key_env="K")
    ours = resolve_target(dep, {"K": "sk-test"})
    theirs = _resolve_with_litellm(dep, "sk-test")
    assert ours is not None and theirs is not None
    model, url, headers = theirs
    assert (ours.model, str(ours.url)) == (model, url)
    assert {k: v for k, v in ours.headers.items() if k != "Accept-Encoding"} == headers


def test_a_relay_only_gateway_never_imports_litellm(tmp_path: Any) -> None:
    script = (
        "import sys\n"
        "from app.config.settings import settings_from_dict\n"
        "from app.server.lifespan import build_services\n"
        "s = settings_from_dict({'models': {'deployments': [{'name': 'a', 'litellm_model': 'openai/gpt-4o-mini'},"
        " {'name': 'b', 'litellm_model': 'hosted_vllm/x', 'api_base': 'http://127.0.0.1:9/v1'}]}}, {})\n"
        "services = build_services(s, environ={})\n"
        "print(sorted(m for m in sys.modules if m == 'litellm' or m.startswith('litellm.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("which", ["relay", "default"])
def test_a_server_without_litellm_deployments_starts_without_litellm(tmp_path: Path, which: str) -> None:
    """The whole start-up (`python -m app`, its provider checks included) of a relay-only config and of
    the default one (the built-in demo models, served in process)."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    if which == "default":
        config.write_text((REPO / "config" / "default.toml").read_text().replace("port = 8000", f"port = {port}", 1))
    else:
        config.write_text(
            f'[server]\nport = {port}\nlog_level = "warning"\n'
            '[[models.deployments]]\nname = "fast"\nlitellm_model = "openai/fast"\napi_base = "http://127.0.0.1:9/v1"\n'
        )
    proc = subprocess.Popen([sys.executable, "-m", "app", "--config", str(config)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            time.sleep(0.05)
        # A server that imported LiteLLM maps files of its package and of tiktoken, which it imports.
        mapped = Path(f"/proc/{proc.pid}/maps").read_text()
        assert [line for line in mapped.splitlines() if "site-packages/litellm" in line] == []
        assert "site-packages/tiktoken" not in mapped
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_the_stream_splits_events_across_reads(newline: str) -> None:
    """Reads that cut events, lines and CRLFs anywhere give the chunks the whole stream gives."""
    request = parse_chat_body(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode())
    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
        for i in range(5)
    ]
    raw = "".join(f"data: {json.dumps(c)}{newline}{newline}" for c in chunks) + f"data: [DONE]{newline}{newline}"
    stream = RelayStream(Relay({}), request, "d")
    items: list[Any] = []
    encoded = raw.encode()
    for at in range(0, len(encoded), 7):
        items.extend(stream._split(encoded[at : at + 7]))
    assert items[-1] is None
    assert [json.loads(c.raw)["choices"][0]["delta"]["content"] for c in items[:-1]] == [f"t{i}" for i in range(5)]
