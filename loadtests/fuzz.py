"""Long fuzzing runs: the suite's strategies (tests/helpers/fuzz_strategies.py) with fresh seeds, for as many
examples as asked, against the gateway under real uvicorn and the fake provider, loopback only.

    .venv/bin/python -m loadtests.fuzz --examples 5000            # per target and path
    .venv/bin/python -m loadtests.fuzz --examples 500 --paths fast --targets frames

Prints, per target and provider path, the examples tried and the failures found (the first
failing example of each is shown whole by Hypothesis). Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.test_fuzz import CALL_TIMEOUT_S, KEY_ENV, PROVIDER_KEY, check_frames, post
from tests.conftest import EXTRA_BEHAVIOURS, ServerThread, settings_dict
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.fuzz_strategies import chat_bodies, client_frames, raw_bodies


def start(fake: FakeProvider, path: str) -> ServerThread:
    from app.config.settings import settings_from_dict

    data = settings_dict(fake.base_url, fast_path=path == "fast")
    for dep in data["models"]["deployments"]:
        if dep["litellm_model"].startswith("openai/"):
            dep["api_key_env"] = KEY_ENV
    environ = {KEY_ENV: PROVIDER_KEY}
    return ServerThread(settings_from_dict(data, environ=environ), environ=environ).start()


def run(target: str, server: ServerThread, examples: int) -> tuple[int, list[str]]:
    tried = 0
    failures: list[str] = []
    profile = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        report_multiple_bugs=True,
        suppress_health_check=list(HealthCheck),
    )

    client = httpx.Client(base_url=server.base_url, timeout=CALL_TIMEOUT_S)

    @profile
    @given(body=chat_bodies(), stream=st.booleans())
    def bodies(body: dict[str, Any], stream: bool) -> None:
        nonlocal tried
        tried += 1
        post(client, json.dumps(body).encode(), stream)

    @profile
    @given(raw=raw_bodies, stream=st.booleans())
    def raw(raw: bytes, stream: bool) -> None:
        nonlocal tried
        tried += 1
        post(client, raw, stream)

    @profile
    @given(frames=st.lists(client_frames(), min_size=1, max_size=6))
    def frames(frames: list[str | bytes]) -> None:
        nonlocal tried
        tried += 1
        check_frames(server.ws_url, frames)

    tests: dict[str, Callable[[], None]] = {"bodies": bodies, "raw": raw, "frames": frames}
    try:
        tests[target]()
    except Exception as exc:  # Hypothesis re-raises the (shrunk) failures after reporting them
        failures.append(f"{type(exc).__name__}: {str(exc)[:500]}")
    finally:
        client.close()
    return tried, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000, help="examples per target and path")
    parser.add_argument("--paths", default="fast,full")
    parser.add_argument("--targets", default="bodies,raw,frames")
    args = parser.parse_args(argv)
    fake = FakeProvider().start()
    for name, behaviour in EXTRA_BEHAVIOURS.items():
        fake.set_behaviour(name, behaviour)
    failed = False
    try:
        for path in args.paths.split(","):
            server = start(fake, path)
            try:
                for target in args.targets.split(","):
                    started = time.monotonic()
                    tried, failures = run(target, server, args.examples)
                    seconds = time.monotonic() - started
                    print(f"{path:4} {target:6} tried={tried} failures={len(failures)} in {seconds:.0f} s", flush=True)
                    for failure in failures:
                        print(f"    {failure}", flush=True)
                    failed |= bool(failures)
            finally:
                server.stop()
    finally:
        fake.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
