"""A small Locust file for people who want Locust's web UI (Locust is not a project dependency).

    pip install locust    # in a separate venv: the gateway's venv does not carry it
    LOADTEST_MODEL=fast locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Two users: ``JsonUser`` (plain POST) and ``SseUser`` (``stream: true``; it also reports the time to
the first content chunk as a separate ``SSE ttfb`` entry and the whole stream as ``SSE stream``).
Locust's gevent client is far slower than ``loadtests.loadgen``; use it for exploring, not for the
numbers in ``results.md``. Nothing in the test-suite imports this file.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import HttpUser, between, task  # type: ignore[import-not-found]

MODEL = os.environ.get("LOADTEST_MODEL", "fast")
PATH = "/v1/chat/completions"


def _body(stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "stream": stream}


class JsonUser(HttpUser):  # type: ignore[misc]
    wait_time = between(0, 0.1)
    weight = 1

    @task
    def chat_json(self) -> None:
        with self.client.post(PATH, json=_body(False), name="JSON", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return
            try:
                content = resp.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError) as exc:
                resp.failure(f"bad body: {exc}")
                return
            if not content:
                resp.failure("empty content")


class SseUser(HttpUser):  # type: ignore[misc]
    wait_time = between(0, 0.1)
    weight = 3

    @task
    def chat_sse(self) -> None:
        events = self.environment.events
        start = time.perf_counter()
        first: float | None = None
        chunks = 0
        done = False
        error: str | None = None
        headers = {"Accept": "text/event-stream"}
        with self.client.post(
            PATH, json=_body(True), headers=headers, name="SSE stream", stream=True, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            event_is_error = False
            for raw in resp.iter_lines():
                line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                if not line:
                    event_is_error = False
                    continue
                if line.startswith("event:") and line[6:].strip() == "error":
                    event_is_error = True
                    continue
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if event_is_error:
                    error = data[:200]
                    break
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    error = "bad chunk JSON"
                    break
                choices = chunk.get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
                        events.request.fire(
                            request_type="SSE",
                            name="ttfb",
                            response_time=(first - start) * 1000,
                            response_length=0,
                            exception=None,
                            context={},
                        )
            if error is not None:
                resp.failure(f"error event: {error}")
            elif not done:
                resp.failure(f"stream ended without [DONE] after {chunks} chunks")
            else:
                resp.success()
