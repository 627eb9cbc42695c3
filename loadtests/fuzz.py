"""Long fuzzing runs: the suite's strategies (tests/helpers/fuzz_strategies.py) with fresh seeds, for as many
examples as asked, against the gateway under real uvicorn and the fake provider, loopback only.

    .venv/bin/python -m loadtests.fuzz --examples 5000            # per target and path
    .venv/bin/python -m loadtests.fuzz --examples 500 --paths fast --targets frames,responses_frames
    .venv/bin/python -m loadtests.fuzz --examples 1500 --aim --targets bodies,responses,messages,embeddings

Targets (``--targets``, comma-separated; all of them by default), each with the oracle of the suite's own
fuzz test for that API (tests/api/test_fuzz.py, tests/api/test_fuzz_responses.py):

    bodies            chat_bodies to POST /v1/chat/completions, JSON or SSE
    raw               raw_bodies (bytes: broken JSON, deep nesting, binary) to POST /v1/chat/completions
    frames            client_frames on the chat WebSocket (/v1/chat/completions, subprotocol chat.v1), then a probe
    responses         responses_bodies to POST /v1/responses, JSON or SSE
    responses_raw     raw_responses_bodies (bytes) to POST /v1/responses, JSON or SSE
    responses_frames  responses_frames on the Responses WebSocket mode (/v1/responses), then a probe
    messages          messages_bodies to POST /v1/messages (JSON, or SSE with "stream": true), and the same body
                      to POST /v1/messages/count_tokens
    embeddings        embeddings_bodies to POST /v1/embeddings

Every example fails on a 5xx, a provider key in the output, an error body not in the API's shape (OpenAI's
``{"error": {...}}``; Anthropic's ``{"type": "error", "error": {...}}`` on the Messages routes), a stream whose
error event is a server error, a dropped connection or socket, or a hang: each HTTP call must end (headers to
last byte) within CALL_TIMEOUT_S and each WebSocket example within twice that, whatever keep-alives it gets.

Paths (``--paths``): ``fast`` (the relay fast path) and ``full`` (LiteLLM), one gateway each.

responses_frames is the slow target (about 5 minutes for 1500 examples): when the suite's check stops reading
with more events unread than the websockets client buffers (max_queue), the client stops reading the socket,
never sees the server's close frame and waits out its 10 s close timeout. That is the client's doing, not the
gateway's, and stays within the example's bound.

Most drawn bodies are refused at validation (a 400). ``--aim`` steers Hypothesis (``hypothesis.target``)
towards examples whose HTTP calls are accepted, and from them into the provider layer; the strategies and
the oracle stay the suite's. (The WebSocket targets are not steered.)

Prints, per target and provider path, the examples tried (shrinking included), the seconds taken (and the
slowest example's) and the failures found (each with its shrunk falsifying example).
Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis import target as aim_at

from tests.api.test_fuzz import (
    CALL_TIMEOUT_S,
    KEY_ENV,
    PROVIDER_KEY,
    check_frames,
    check_http_reply,
    check_messages_reply,
    post,
)
from tests.api.test_fuzz_responses import post as post_responses
from tests.api.test_fuzz_responses import test_fuzzed_responses_frames
from tests.conftest import EXTRA_BEHAVIOURS, ServerThread, settings_dict
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.fuzz_strategies import (
    chat_bodies,
    client_frames,
    embeddings_bodies,
    messages_bodies,
    raw_bodies,
    raw_responses_bodies,
    responses_bodies,
    responses_frames,
)

TARGETS = ["bodies", "raw", "frames", "responses", "responses_raw", "responses_frames", "messages", "embeddings"]
#: A WebSocket example sends several frames and a probe, each reply bounded by CALL_TIMEOUT_S in the suite's check.
SOCKET_TIMEOUT_S = 2 * CALL_TIMEOUT_S


class Hang(AssertionError):
    """An HTTP call or WebSocket example that went past its bound."""


@contextmanager
def bounded(seconds: float, what: str) -> Iterator[None]:
    """Fail with ``Hang`` once ``seconds`` have passed: httpx's timeout is per read, so a stream kept
    alive by heartbeats would never time out. SIGALRM interrupts the blocking read in the main thread
    (Hypothesis runs the examples there)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"{what}: no end after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def start(fake: FakeProvider, path: str) -> ServerThread:
    """A gateway configured as the suite's ``fuzzed`` fixture (tests/api/test_fuzz.py), embeddings model included."""
    from app.config.settings import settings_from_dict

    data = settings_dict(fake.base_url, fast_path=path == "fast")
    data["models"]["deployments"].append(
        {"name": "embed", "litellm_model": "openai/embed", "api_base": fake.base_url, "info": {"mode": "embedding"}}
    )
    for dep in data["models"]["deployments"]:
        if dep["litellm_model"].startswith("openai/"):
            dep["api_key_env"] = KEY_ENV
    environ = {KEY_ENV: PROVIDER_KEY}
    return ServerThread(settings_from_dict(data, environ=environ), environ=environ).start()


def post_messages(client: httpx.Client, body: dict[str, Any], stream: bool) -> None:
    """As tests/api/test_fuzz.py's test_fuzzed_messages_bodies: ``"stream": true`` added when asked for
    and the body names none, the reply checked by its ``check_messages_reply``."""
    if stream and isinstance(body, dict) and "stream" not in body:
        body = {**body, "stream": True}
    with client.stream("POST", "/v1/messages", json=body) as response:
        text = response.read().decode("utf-8", "replace")
    check_messages_reply(response, text)


def count_tokens(client: httpx.Client, body: dict[str, Any]) -> None:
    """POST /v1/messages/count_tokens (the suite fuzzes no such call): the Messages oracle, and a 200
    carries an integer ``input_tokens``."""
    with client.stream("POST", "/v1/messages/count_tokens", json=body) as response:
        text = response.read().decode("utf-8", "replace")
    check_messages_reply(response, text)
    if response.status_code == 200:
        counted = json.loads(text)
        assert isinstance(counted.get("input_tokens"), int), text


def post_embeddings(client: httpx.Client, body: dict[str, Any]) -> None:
    """As tests/api/test_fuzz.py's test_fuzzed_embeddings_bodies."""
    response = client.post("/v1/embeddings", json=body)
    check_http_reply(response, response.text)


def check_responses_frames(server: ServerThread, frames: list[str | bytes]) -> None:
    """tests/api/test_fuzz_responses.py's test_fuzzed_responses_frames itself (its body, without its
    @given): the frames, then a probe the socket must still complete; no event a 5xx or the key."""
    inner: Callable[..., None] = test_fuzzed_responses_frames.hypothesis.inner_test  # type: ignore[attr-defined]
    inner(fuzzed=server, frames=frames)


def describe(exc: BaseException) -> list[str]:
    """Each failure with its (shrunk) falsifying example: Hypothesis puts that in the exception's notes
    rather than printing it, and raises an exception group when it found several distinct failures."""
    if isinstance(exc, BaseExceptionGroup):
        return [failure for sub in exc.exceptions for failure in describe(sub)]
    notes = getattr(exc, "__notes__", [])
    return ["\n".join([f"{type(exc).__name__}: {str(exc)[:500]}", *notes])]


def run(target: str, server: ServerThread, examples: int, aim: bool = False) -> tuple[int, float, list[str]]:
    """Runs one target: the examples tried, the slowest one's seconds, and the failures. ``aim``: steer
    Hypothesis towards examples whose HTTP calls the gateway accepts (status < 400; ``hypothesis.target``)."""
    tried = 0
    slowest = 0.0
    failures: list[str] = []
    profile = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        report_multiple_bugs=True,
        suppress_health_check=list(HealthCheck),
    )

    statuses: list[int] = []  # the current example's HTTP replies

    def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    client = httpx.Client(base_url=server.base_url, timeout=CALL_TIMEOUT_S, event_hooks={"response": [record]})

    @contextmanager
    def timed() -> Iterator[None]:
        nonlocal tried, slowest
        tried += 1
        statuses.clear()
        began = time.monotonic()
        try:
            yield
        finally:
            slowest = max(slowest, time.monotonic() - began)
        if aim and statuses:
            aim_at(sum(status < 400 for status in statuses) / len(statuses), label="accepted")

    def call(path: str) -> AbstractContextManager[None]:
        return bounded(CALL_TIMEOUT_S, f"POST {path}")

    @profile
    @given(body=chat_bodies(), stream=st.booleans())
    def bodies(body: dict[str, Any], stream: bool) -> None:
        with timed(), call("/v1/chat/completions"):
            post(client, json.dumps(body).encode(), stream)

    @profile
    @given(raw=raw_bodies, stream=st.booleans())
    def raw(raw: bytes, stream: bool) -> None:
        with timed(), call("/v1/chat/completions"):
            post(client, raw, stream)

    @profile
    @given(frames=st.lists(client_frames(), min_size=1, max_size=6))
    def frames(frames: list[str | bytes]) -> None:
        with timed(), bounded(SOCKET_TIMEOUT_S, "chat WebSocket example"):
            check_frames(server.ws_url, frames)

    @profile
    @given(body=responses_bodies(), stream=st.booleans())
    def responses(body: dict[str, Any], stream: bool) -> None:
        with timed(), call("/v1/responses"):
            post_responses(client, json.dumps(body).encode(), stream)

    @profile
    @given(raw=raw_responses_bodies, stream=st.booleans())
    def responses_raw(raw: bytes, stream: bool) -> None:
        with timed(), call("/v1/responses"):
            post_responses(client, raw, stream)

    @profile
    @given(frames=st.lists(responses_frames(), min_size=1, max_size=5))
    def responses_frames_(frames: list[str | bytes]) -> None:
        with timed(), bounded(SOCKET_TIMEOUT_S, "Responses WebSocket example"):
            check_responses_frames(server, frames)

    @profile
    @given(body=messages_bodies(), stream=st.booleans())
    def messages(body: dict[str, Any], stream: bool) -> None:
        with timed():
            with call("/v1/messages"):
                post_messages(client, body, stream)
            with call("/v1/messages/count_tokens"):
                count_tokens(client, body)

    @profile
    @given(body=embeddings_bodies())
    def embeddings(body: dict[str, Any]) -> None:
        with timed(), call("/v1/embeddings"):
            post_embeddings(client, body)

    tests: dict[str, Callable[[], None]] = {
        "bodies": bodies,
        "raw": raw,
        "frames": frames,
        "responses": responses,
        "responses_raw": responses_raw,
        "responses_frames": responses_frames_,
        "messages": messages,
        "embeddings": embeddings,
    }
    try:
        tests[target]()
    except Exception as exc:  # Hypothesis re-raises the (shrunk) failures after reporting them
        failures.extend(describe(exc))
    finally:
        client.close()
    return tried, slowest, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000, help="examples per target and path")
    parser.add_argument("--paths", default="fast,full")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, of: " + ", ".join(TARGETS))
    parser.add_argument(
        "--aim",
        action="store_true",
        help="steer generation towards bodies the gateway accepts, past validation into the provider layer",
    )
    args = parser.parse_args(argv)
    targets = args.targets.split(",")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}: choose from {TARGETS}")
    paths = args.paths.split(",")
    if any(path not in ("fast", "full") for path in paths):
        parser.error(f"--paths takes fast, full or both, not {args.paths!r}")
    fake = FakeProvider().start()
    for name, behaviour in EXTRA_BEHAVIOURS.items():
        fake.set_behaviour(name, behaviour)
    failed = False
    try:
        for path in paths:
            server = start(fake, path)
            try:
                for target in targets:
                    started = time.monotonic()
                    tried, slowest, failures = run(target, server, args.examples, aim=args.aim)
                    seconds = time.monotonic() - started
                    print(
                        f"{path:4} {target:16} tried={tried} failures={len(failures)} in {seconds:.0f} s"
                        f" (slowest example {slowest:.1f} s)",
                        flush=True,
                    )
                    for failure in failures:
                        print(textwrap.indent(failure, "    "), flush=True)
                    failed |= bool(failures)
            finally:
                server.stop()
    finally:
        fake.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
